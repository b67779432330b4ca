"""Revocation that relying parties see: CRLs (RFC 5280 section 5), issue 12 part 4.

* build_crl / CRLPublisher on their own: what a CRL holds, when it is re-signed.
* ``estproto ca crl``: a CRL file that ``openssl verify -crl_check`` uses.
* ``estproto serve --crl-url``: issued certificates name the URL; the server
  publishes the CRL there over plain HTTP (fetched by curl and by OpenSSL's
  own ``-crl_download`` from the certificate's cRLDistributionPoints);
  ``estproto ca revoke`` in another process shows in the next CRL; a
  revoked certificate is refused for /simplereenroll over TLS.
"""

from __future__ import annotations

import datetime
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from estproto._events import CertificateResponse, ConnectionFacts, SimpleEnrollRequest
from estproto.ca import EmbeddedCA
from estproto.ca.backend import Principal
from estproto.ca.crl import CRLPublisher, build_crl
from estproto.chain import chain_verifies
from estproto.codecs import pkcs10

from pki import name
from test_cli import PASSWORD, run, serving

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def _enroll(ca: EmbeddedCA, cn: str) -> x509.Certificate:
    csr = pkcs10.decode_csr(pkcs10.build_csr(ec.generate_private_key(ec.SECP256R1()), name(cn)))
    request = SimpleEnrollRequest(label="", credentials=None, facts=ConnectionFacts(is_tls=True), csr=csr)
    response = ca.enroll(request, Principal("user:t", "basic"))
    assert isinstance(response, CertificateResponse)
    return response.certificate


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the CRL itself -------------------------------------------------------------


def test_crl_lists_revoked_certificates_with_their_reasons(tmp_path: Path) -> None:
    with EmbeddedCA.init(tmp_path / "ca", hostnames=("127.0.0.1",)) as ca:
        keep, compromised, plain = (_enroll(ca, cn) for cn in ("keep", "compromised", "plain"))
        ca.revoke(compromised.serial_number, "keyCompromise")
        ca.revoke(plain.serial_number)  # unspecified
        crl = ca.crl()
        assert crl.is_signature_valid(ca.issuer_certificate.public_key())  # type: ignore[arg-type]
        assert crl.issuer == ca.issuer_certificate.subject
        assert crl.get_revoked_certificate_by_serial_number(keep.serial_number) is None
        entry = crl.get_revoked_certificate_by_serial_number(compromised.serial_number)
        assert entry is not None
        assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is \
            x509.ReasonFlags.key_compromise
        unspecified = crl.get_revoked_certificate_by_serial_number(plain.serial_number)
        assert unspecified is not None
        # RFC 5280 5.3.1: no reasonCode rather than "unspecified".
        with pytest.raises(x509.ExtensionNotFound):
            unspecified.extensions.get_extension_for_class(x509.CRLReason)
        # RFC 5280 5.2.1 / 5.2.3: AKI and cRLNumber are present.
        crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
        first = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        time.sleep(0.01)
        assert ca.crl().extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > first
        assert crl.next_update_utc is not None and crl.last_update_utc is not None
        assert crl.next_update_utc - crl.last_update_utc == datetime.timedelta(hours=24)


def test_expired_certificates_leave_the_crl(tmp_path: Path) -> None:
    with EmbeddedCA.init(tmp_path / "ca", hostnames=("127.0.0.1",)) as ca:
        cert = _enroll(ca, "old")
        record = ca.revoke(cert.serial_number, "superseded")
        later = cert.not_valid_after_utc + datetime.timedelta(days=1)
        assert build_crl(ca.signer, [record], this_update=later).get_revoked_certificate_by_serial_number(
            cert.serial_number) is None
        assert build_crl(ca.signer, [record], this_update=datetime.datetime.now(datetime.timezone.utc)) \
            .get_revoked_certificate_by_serial_number(cert.serial_number) is not None


def test_the_publisher_re_signs_after_a_revocation_and_before_next_update(tmp_path: Path) -> None:
    with EmbeddedCA.init(tmp_path / "ca", hostnames=("127.0.0.1",)) as ca:
        now = [time.time()]
        publisher = CRLPublisher(ca.signer, ca.store, lifetime=datetime.timedelta(hours=2),
                                 check_seconds=1.0, clock=lambda: now[0])
        first = publisher.current()
        assert publisher.current() is first  # cached
        cert = _enroll(ca, "dev")
        ca.revoke(cert.serial_number, "keyCompromise")
        assert publisher.current() is first  # not asked again within check_seconds
        now[0] += 1.5
        second = publisher.current()
        crl = x509.load_der_x509_crl(second)
        assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
        now[0] += 1.5
        assert publisher.current() is second  # nothing changed, still young
        now[0] += 3600  # half the lifetime
        third = x509.load_der_x509_crl(publisher.current())
        assert third.last_update_utc > crl.last_update_utc
        assert third.next_update_utc is not None
        assert third.next_update_utc.timestamp() == pytest.approx(now[0] + 7200, abs=1)


# -- the command line and the published CRL, with real peers -----------------------


def _verify(ca_pem: Path, cert: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", "verify", "-crl_check", "-CAfile", str(ca_pem), *args, str(cert)],
                          capture_output=True, text=True, timeout=60)


def test_ca_crl_file_works_with_openssl_verify(tmp_path: Path) -> None:
    data = tmp_path / "ca"
    assert run("ca", "init", "--data-dir", str(data), "--hostname", "127.0.0.1").returncode == 0
    good, bad = tmp_path / "good.pem", tmp_path / "bad.pem"
    for cn, out in (("good", good), ("bad", bad)):
        made = run("ca", "issue", "--data-dir", str(data), "--subject", f"CN={cn}",
                   "--key-out", str(tmp_path / f"{cn}.key"), "--out", str(out))
        assert made.returncode == 0, made.stderr
    serial = format(x509.load_pem_x509_certificate(bad.read_bytes()).serial_number, "x")
    assert run("ca", "revoke", "--data-dir", str(data), serial, "--reason", "keyCompromise").returncode == 0
    crl = tmp_path / "crl.pem"
    written = run("ca", "crl", "--data-dir", str(data), "--out", str(crl))
    assert written.returncode == 0, written.stderr
    assert "1 revoked certificate" in written.stderr
    ok = _verify(data / "ca.pem", good, "-CRLfile", str(crl))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    refused = _verify(data / "ca.pem", bad, "-CRLfile", str(crl))
    assert refused.returncode != 0 and "certificate revoked" in refused.stdout + refused.stderr
    der_file = tmp_path / "crl.der"
    der = run("ca", "crl", "--data-dir", str(data), "--format", "der", "--hours", "2", "--out", str(der_file))
    assert der.returncode == 0, der.stderr
    in_der = x509.load_der_x509_crl(der_file.read_bytes())
    assert in_der.next_update_utc is not None and in_der.last_update_utc is not None
    assert in_der.next_update_utc - in_der.last_update_utc == datetime.timedelta(hours=2)
    text = subprocess.run(["openssl", "crl", "-in", str(crl), "-noout", "-text"], capture_output=True,
                          text=True, timeout=60).stdout
    assert "Key Compromise" in text
    assert run("ca", "crl", "--data-dir", str(data), "--hours", "0").returncode == 1


@pytest.mark.parametrize("framework", ["trio", "asyncio"])
def test_served_crl_is_what_relying_parties_check(tmp_path: Path, framework: str) -> None:
    data = tmp_path / "ca"
    crl_port = _free_port()
    url = f"http://127.0.0.1:{crl_port}/est.crl"
    with serving(data, "--framework", framework, "--crl-url", url) as server:
        assert run("ca", "add-user", "--data-dir", str(data), "dev", password=PASSWORD).returncode == 0
        certs = {}
        for cn in ("stays", "goes"):
            key, out = tmp_path / f"{cn}.key", tmp_path / f"{cn}.pem"
            enrolled = run("enroll", server.url, "--cacert", str(data / "ca.pem"), "--user", "dev",
                           "--subject", f"CN={cn}", "--key-out", str(key), "--out", str(out),
                           password=PASSWORD)
            assert enrolled.returncode == 0, enrolled.stderr
            certs[cn] = (key, out, x509.load_pem_x509_certificate(out.read_bytes()))
        points = certs["stays"][2].extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        assert [n.value for p in points for n in (p.full_name or [])] == [url]

        # OpenSSL fetches the CRL itself from the cRLDistributionPoints URL.
        ok = _verify(data / "ca.pem", certs["goes"][1], "-crl_download")
        assert ok.returncode == 0, ok.stdout + ok.stderr

        serial = format(certs["goes"][2].serial_number, "x")
        assert run("ca", "revoke", "--data-dir", str(data), serial, "--reason", "keyCompromise").returncode == 0
        crl_file = tmp_path / "crl.der"
        deadline = time.monotonic() + 20
        while True:  # the server re-reads revocations at most once a second
            fetched = subprocess.run(["curl", "-sS", "-f", "-o", str(crl_file), "-w", "%{content_type}", url],
                                     capture_output=True, text=True, timeout=60)
            assert fetched.returncode == 0, fetched.stderr
            assert fetched.stdout == "application/pkix-crl"
            crl = x509.load_der_x509_crl(crl_file.read_bytes())
            if crl.get_revoked_certificate_by_serial_number(certs["goes"][2].serial_number) is not None:
                break
            assert time.monotonic() < deadline, "the revocation never reached the published CRL"
            time.sleep(0.3)
        pem = tmp_path / "crl.pem"
        pem.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        refused = _verify(data / "ca.pem", certs["goes"][1], "-CRLfile", str(pem))
        assert refused.returncode != 0 and "certificate revoked" in refused.stdout + refused.stderr
        downloaded = _verify(data / "ca.pem", certs["goes"][1], "-crl_download")
        assert downloaded.returncode != 0 and "certificate revoked" in downloaded.stdout + downloaded.stderr
        still = _verify(data / "ca.pem", certs["stays"][1], "-crl_download")
        assert still.returncode == 0, still.stdout + still.stderr

        # A revoked certificate cannot renew itself over TLS; the other can.
        for cn, expect in (("goes", False), ("stays", True)):
            key, cert_file, _ = certs[cn]
            renewed = run("reenroll", server.url, "--cacert", str(data / "ca.pem"), "--cert", str(cert_file),
                          "--key", str(key), "--out", str(tmp_path / f"{cn}-new.pem"))
            assert (renewed.returncode == 0) is expect, renewed.stderr
            if not expect:
                assert "revoked" in renewed.stderr
            else:
                new = x509.load_pem_x509_certificate((tmp_path / f"{cn}-new.pem").read_bytes())
                old = certs[cn][2]
                assert new.subject == old.subject and new.serial_number != old.serial_number
                assert chain_verifies(new, x509.load_pem_x509_certificates((data / "ca.pem").read_bytes()))
        # Anything but GET/HEAD of the CRL path is refused; the server keeps serving.
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{crl_port}/other", timeout=30)
        assert missing.value.code == 404
        again = urllib.request.urlopen(url, timeout=30)
        assert again.status == 200 and again.headers["Content-Type"] == "application/pkix-crl"
        assert server.stop() == 0


def test_serve_refuses_unusable_crl_flags(tmp_path: Path) -> None:
    data = str(tmp_path / "ca")
    for flags, word in ((["--crl-url", "https://127.0.0.1/x.crl"], "--crl-url"),
                        (["--crl-url", "http://127.0.0.1"], "--crl-url"),
                        (["--crl-url", "http://127.0.0.1:0/x.crl"], "--crl-url"),
                        (["--crl-url", "http://127.0.0.1:1/x.crl", "--crl-listen", "127.0.0.1:0",
                          "--workers", "2"], "--workers"),
                        (["--crl-listen", "127.0.0.1:8080"], "--crl-url"),
                        (["--crl-url", "http://127.0.0.1:1/x.crl", "--crl-listen", "nope"], "--crl-listen")):
        result = run("serve", "--data-dir", data, "--port", "0", *flags)
        assert result.returncode == 1, (flags, result.stderr)
        assert word in result.stderr
