"""``estproto ca issue``: offline issuance by the operator, RA certificates (RFC 7030 3.7).

Real processes, as tests/test_cli.py runs them (its helpers are reused): the
command issues through the embedded CA's public enroll path, so the
certificate is in the store (``ca list``), chains to ``ca.pem`` and can
authenticate as a TLS client certificate. The end-to-end test serves the CA
with ``--pop require`` and checks the RA exemption of RFC 7030 3.7 as the
server implements it: linking information that does not match the RA's own
TLS session is accepted from an RA and refused from any other client.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from estproto.cli import ExitCode, main
from estproto.chain import chain_verifies
from estproto.codecs import pkcs10
from pki import make_key, name
from test_cli import free_port, load_cert, run, serving, spki

CMC_RA = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.28")


def ekus(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def listed(data_dir: Path) -> str:
    result = run("ca", "list", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("ca-issue") / "DIR"
    result = run("ca", "init", "--data-dir", str(data), "--hostname", "127.0.0.1")
    assert result.returncode == 0, result.stderr
    return data


def issue(data_dir: Path, out: Path, *args: str) -> x509.Certificate:
    result = run("ca", "issue", "--data-dir", str(data_dir), *args, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "issued" in result.stderr
    return load_cert(out)


def test_help() -> None:
    with pytest.raises(SystemExit) as exited:
        main(["ca", "issue", "--help"])
    assert exited.value.code == 0


def test_ra_certificate(ca_dir: Path, tmp_path: Path) -> None:
    key_out, out = tmp_path / "gw.key", tmp_path / "gw.pem"
    cert = issue(ca_dir, out, "--subject", "CN=gateway,O=Example", "--san", "DNS:gw.example,IP:127.0.0.1",
                 "--ra", "--key-out", str(key_out), "--days", "30")
    trust = x509.load_pem_x509_certificates((ca_dir / "ca.pem").read_bytes())
    assert chain_verifies(cert, trust)
    # --san: the gateway is also a TLS server for its devices.
    assert set(ekus(cert)) == {ExtendedKeyUsageOID.CLIENT_AUTH, CMC_RA, ExtendedKeyUsageOID.SERVER_AUTH}
    assert cert.subject == x509.Name.from_rfc4514_string("CN=gateway,O=Example")
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["gw.example"]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 29 <= lifetime.days <= 31
    assert stat.S_IMODE(key_out.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(key_out.read_bytes(), password=None)
    assert spki(key) == spki(cert)
    serial = format(cert.serial_number, "x")
    row = next(line for line in listed(ca_dir).splitlines() if line.startswith(serial))
    assert "\tvalid\t" in row and "\toperator" in row and "CN=gateway" in row


def test_ra_without_names_is_not_a_server(ca_dir: Path, tmp_path: Path) -> None:
    cert = issue(ca_dir, tmp_path / "ra.pem", "--subject", "CN=ra-only", "--ra", "--key-type", "ed25519",
                 "--key-out", str(tmp_path / "ra.key"))
    assert set(ekus(cert)) == {ExtendedKeyUsageOID.CLIENT_AUTH, CMC_RA}
    plain = issue(ca_dir, tmp_path / "plain.pem", "--subject", "CN=plain", "--san", "DNS:plain.example",
                  "--key-out", str(tmp_path / "plain.key"))
    assert ekus(plain) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_csr_from_openssl_keeps_subject_and_key(ca_dir: Path, tmp_path: Path, openssl: str) -> None:
    import subprocess

    key_file, csr_file = tmp_path / "dev.key", tmp_path / "dev.csr"
    subprocess.run([openssl, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(key_file), "-out", str(csr_file),
                    "-subj", "/CN=device-7/O=Example"], check=True, capture_output=True, timeout=60)
    cert = issue(ca_dir, tmp_path / "dev.pem", "--csr", str(csr_file))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "device-7"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Example"
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert spki(key) == spki(cert)
    assert ekus(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_csr_with_bad_signature_is_refused_and_not_recorded(ca_dir: Path, tmp_path: Path) -> None:
    der = bytearray(pkcs10.build_csr(make_key("p256"), name("forged-device")))
    der[-1] ^= 0x01  # inside the signature value: still well-formed DER
    forged = tmp_path / "forged.csr"
    forged.write_bytes(b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(bytes(der))
                       + b"-----END CERTIFICATE REQUEST-----\n")
    out = tmp_path / "forged.pem"
    result = run("ca", "issue", "--data-dir", str(ca_dir), "--csr", str(forged), "--out", str(out))
    assert result.returncode == ExitCode.REFUSED, result.stderr
    assert "signature does not verify" in result.stderr
    assert not out.exists()
    assert "forged-device" not in listed(ca_dir)


def test_usage_errors(ca_dir: Path, tmp_path: Path) -> None:
    csr = tmp_path / "ok.csr"
    csr.write_bytes(pkcs10.build_csr(make_key("p256"), name("x")))
    for args in (["--subject", "CN=no-key-out"],               # generated key with nowhere to go
                 ["--key-out", str(tmp_path / "k")],            # no subject
                 ["--csr", str(csr), "--subject", "CN=both"],   # --csr carries the subject
                 ["--subject", "CN=x", "--key-out", str(tmp_path / "k2"), "--san", "FTP:x"],
                 ["--subject", "CN=x", "--key-out", str(tmp_path / "k3"), "--days", "0"],
                 ["--csr", str(tmp_path / "missing.csr")]):
        result = run("ca", "issue", "--data-dir", str(ca_dir), *args)
        assert result.returncode == ExitCode.USAGE, (args, result.stderr)
        assert result.stdout == ""
    assert not (tmp_path / "k2").exists() and not (tmp_path / "k3").exists()
    not_a_ca = run("ca", "issue", "--data-dir", str(tmp_path / "nothing"), "--csr", str(csr))
    assert not_a_ca.returncode == ExitCode.REFUSED


def test_intermediate_ca_writes_the_chain(tmp_path: Path) -> None:
    data = tmp_path / "DIR"
    assert run("ca", "init", "--data-dir", str(data), "--intermediate").returncode == 0
    out = tmp_path / "leaf.pem"
    result = run("ca", "issue", "--data-dir", str(data), "--subject", "CN=leaf",
                 "--key-out", str(tmp_path / "leaf.key"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    chain = x509.load_pem_x509_certificates(out.read_bytes())
    trust = x509.load_pem_x509_certificates((data / "ca.pem").read_bytes())
    roots = [c for c in trust if c.subject == c.issuer]
    assert len(chain) == 2 and chain[1] in trust and chain[1] not in roots
    assert chain[0].issuer == chain[1].subject
    assert chain_verifies(chain[0], trust)


def test_ra_is_exempt_from_pop_linking_to_its_own_session(ca_dir: Path, tmp_path: Path) -> None:
    ca_pem = str(ca_dir / "ca.pem")
    issue(ca_dir, tmp_path / "ra.pem", "--subject", "CN=gateway", "--san", "IP:127.0.0.1", "--ra",
          "--key-out", str(tmp_path / "ra.key"))
    issue(ca_dir, tmp_path / "client.pem", "--subject", "CN=not-an-ra",
          "--key-out", str(tmp_path / "client.key"))
    # A device's CSR, linked (RFC 7030 3.5) to the device's TLS session with
    # the gateway: it cannot match any session the gateway opens upstream.
    device_key = make_key("p256")
    device_csr = tmp_path / "device.csr"
    device_csr.write_bytes(pkcs10.build_csr(
        device_key, name("device-via-ra"),
        challenge_password=pkcs10.channel_binding_password(os.urandom(32))))

    def enroll(who: str, *request: str) -> tuple[int, str, Path]:
        out = tmp_path / f"{who}-{len(request)}.pem"
        result = run("enroll", server.url, "--cacert", ca_pem, "--cert", str(tmp_path / f"{who}.pem"),
                     "--key", str(tmp_path / f"{who}.key"), *request, "--out", str(out))
        return result.returncode, result.stderr, out

    with serving(ca_dir, "--pop", "require", port=free_port()) as server:
        # RFC 7030 3.7: the server "could be configured to accept POP linking
        # information that does not match the current TLS session because the
        # authenticated EST client RA has verified this information".
        code, err, out = enroll("ra", "--csr", str(device_csr))
        assert code == 0, err
        cert = load_cert(out)
        assert spki(cert) == spki(device_key)
        assert cert.subject == name("device-via-ra")
        # The same request from a client certificate without id-kp-cmcRA.
        code, err, _ = enroll("client", "--csr", str(device_csr))
        assert code == ExitCode.REFUSED, err
        assert "does not match the TLS channel binding" in err
        # The exemption covers mismatching linking, not its absence: under
        # --pop require an RA's CSR must still carry a linking value.
        code, err, _ = enroll("ra", "--no-pop", "--subject", "CN=device-unlinked", "--key-type", "p256",
                              "--key-out", str(tmp_path / "d.key"))
        assert code == ExitCode.REFUSED, err
        assert "carries no challengePassword" in err
        assert server.stop() == 0
    log = listed(ca_dir)
    assert "CN=device-via-ra" in log and "CN=device-unlinked" not in log
