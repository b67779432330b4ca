"""The adapter examples (examples/*.py) run end to end over loopback with real TLS.

* ``trio_custom_backend``: a trio server with a custom CABackend and its
  naming policy;
* ``gateway_ra``: devices enroll through an RA gateway that forwards to an
  embedded CA, authenticating upstream with an id-kp-cmcRA certificate;
* ``renewing_client``: enroll, then renew at two thirds of the lifetime on a
  simulated clock.

Each example is imported from its file and driven in-process on 127.0.0.1
port 0; the two server scripts are also started as a user would (their
``main``) and stopped with SIGINT. The certificates are checked for what
matters: the CSR's key, the requested subject, a chain that verifies to the
CA (cryptography's RFC 5280 client verifier), and who issued them.
"""

from __future__ import annotations

import asyncio
import datetime
import http.client
import os
import select
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder
from cryptography.x509.verification import Store as TrustStore

import estproto.asyncio as est_asyncio
import estproto.trio as est_trio
from estproto import ClientTLSContext
from estproto.auth import is_ra_certificate
from estproto.ca import EmbeddedCA
from estproto.client import Credentials
from estproto.codecs import pkcs10
from examples_helper import EXAMPLES, load_example


#: No test may run longer than this (seconds): a hang fails the test.
DEADLINE = 20.0

ID_KP_CMC_RA = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.28")
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo



trio_custom_backend = load_example("trio_custom_backend")
gateway_ra = load_example("gateway_ra")
renewing_client = load_example("renewing_client")


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def spki(obj: Any) -> bytes:
    return obj.public_key().public_bytes(serialization.Encoding.DER, SPKI)  # type: ignore[no-any-return]


def verify_chain(cert: x509.Certificate, roots: Sequence[x509.Certificate],
                 intermediates: Sequence[x509.Certificate] = ()) -> None:
    """RFC 5280 path validation for a TLS client certificate (raises if bad);
    cryptography's verifier insists on a subjectAltName in the leaf."""
    verifier = PolicyBuilder().store(TrustStore(list(roots))).build_client_verifier()
    verifier.verify(cert, list(intermediates))


def assert_issued(cert: x509.Certificate, key: Any, subject: x509.Name, issuer: x509.Certificate,
                  roots: Sequence[x509.Certificate], intermediates: Sequence[x509.Certificate] = ()) -> None:
    assert spki(cert) == spki(key), "the certificate must certify the CSR's key"
    assert cert.subject == subject
    assert cert.issuer == issuer.subject
    cert.verify_directly_issued_by(issuer)
    verify_chain(cert, roots, intermediates)


@pytest.fixture(scope="module")
def keys() -> list[ec.EllipticCurvePrivateKey]:
    return [ec.generate_private_key(ec.SECP256R1()) for _ in range(6)]


# ---------------------------------------------------------------------------
# trio server with a custom CA backend


def test_trio_custom_backend_enrolls_renews_and_applies_its_policy(
    keys: list[ec.EllipticCurvePrivateKey],
) -> None:
    example = trio_custom_backend
    ca = example.ExampleCA()
    trust = ClientTLSContext(trust_anchors=[ca.certificate])
    creds = Credentials("device", "device-password", preemptive_basic=True)

    async def scenario() -> None:
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                server = await nursery.start(example.serve, ca, "127.0.0.1", 0)
                assert server.port > 0
                async with est_trio.ESTClient("127.0.0.1", server.port, trust,
                                              credentials=creds) as client:
                    assert await client.cacerts() == (ca.certificate,)
                    subject = name("sensor1.example")
                    csr = pkcs10.build_csr(keys[0], subject,
                                           subject_alt_names=[x509.DNSName("sensor1.example")])
                    cert = await client.simpleenroll(csr)
                    assert_issued(cert, keys[0], subject, ca.certificate, [ca.certificate])
                    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                    assert list(sans) == [x509.DNSName("sensor1.example")]
                    assert cert.serial_number in ca.issued

                    # The backend's policy: names outside .example are refused.
                    for bad_subject, bad_sans in (
                        (name("sensor1.other"), []),
                        (name("sensor2.example"), [x509.DNSName("evil.other")]),
                        (x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a.example"),
                                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")]), []),
                    ):
                        with pytest.raises(est_trio.ESTError) as refused:
                            await client.simpleenroll(
                                pkcs10.build_csr(keys[1], bad_subject, subject_alt_names=bad_sans))
                        assert refused.value.status == 403
                    # Basic alone cannot renew (RFC 7030 4.2.2).
                    with pytest.raises(est_trio.ESTError) as refused:
                        await client.simplereenroll(csr)
                    assert refused.value.status == 403

                # Renewal with the certificate as TLS client certificate, new key.
                renew_tls = ClientTLSContext(trust_anchors=[ca.certificate],
                                             client_certificate_chain=[cert],
                                             client_private_key=keys[0])
                async with est_trio.ESTClient("127.0.0.1", server.port, renew_tls) as renewer:
                    renewed = await renewer.simplereenroll_linked(
                        keys[2], subject, subject_alt_names=[x509.DNSName("sensor1.example")])
                assert_issued(renewed, keys[2], subject, ca.certificate, [ca.certificate])
                assert renewed.serial_number != cert.serial_number

                # Wrong password: 401 that the client cannot answer.
                wrong = Credentials("device", "wrong", preemptive_basic=True)
                async with est_trio.ESTClient("127.0.0.1", server.port, trust,
                                              credentials=wrong) as intruder:
                    with pytest.raises(est_trio.ESTAuthenticationError):
                        await intruder.simpleenroll(csr)
                nursery.cancel_scope.cancel()

    trio.run(scenario)


# ---------------------------------------------------------------------------
# RA gateway


@pytest.fixture(scope="module")
def upstream_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("upstream") / "ca"
    EmbeddedCA.init(d, hostnames=("127.0.0.1",)).close()
    return d


def test_provisioned_ra_certificate_carries_cmc_ra(upstream_dir: Path) -> None:
    chain, key = gateway_ra.provision_ra(upstream_dir, ("127.0.0.1",))
    ra_cert = chain[0]
    assert spki(ra_cert) == spki(key)
    eku = list(ra_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert ID_KP_CMC_RA in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku
    with EmbeddedCA.open(upstream_dir) as ca:
        assert is_ra_certificate(ra_cert, issued_by=[ca.issuer_certificate])
        # The CA's store knows it: required for certificate authentication.
        assert ca.known_certificate(ra_cert) is not None
        # The CA's normal profile is unchanged: no cmcRA for ordinary devices.
        assert ca.settings.profile.extended_key_usages == (ExtendedKeyUsageOID.CLIENT_AUTH,)


#: RFC 5280 client verification (cryptography's verifier) needs a SAN.
SANS = [x509.DNSName("meter-17.example")]


def test_gateway_forwards_enrollments_as_an_ra(
    upstream_dir: Path, keys: list[ec.EllipticCurvePrivateKey],
) -> None:
    chain, ra_key = gateway_ra.provision_ra(upstream_dir, ("127.0.0.1",))
    ra_serial = format(chain[0].serial_number, "x")

    async def scenario() -> None:
        with EmbeddedCA.open(upstream_dir) as ca:
            roots = [ca.root_certificate]
            upstream = await gateway_ra.start_upstream(ca)
            async with upstream, gateway_ra.Gateway(
                "127.0.0.1", upstream.port, ca.ca_certificates, chain, ra_key,
            ) as gateway:
                server = await gateway_ra.start_gateway(gateway)
                async with server:
                    device_tls = ClientTLSContext(trust_anchors=ca.ca_certificates)
                    creds = Credentials("device", "device-password")
                    async with est_asyncio.ESTClient("127.0.0.1", server.port, device_tls,
                                                     credentials=creds) as device:
                        # /cacerts through the RA: the upstream CA's certificates.
                        assert await device.cacerts() == ca.ca_certificates
                        # A PoP-linked CSR (RFC 7030 3.5), linked to the
                        # device-gateway session: the RA exemption (3.7)
                        # lets the CA accept it from the gateway.
                        subject = name("meter-17")
                        cert = await device.simpleenroll_linked(keys[3], subject,
                                                                subject_alt_names=SANS)
                    assert_issued(cert, keys[3], subject, ca.issuer_certificate, roots)
                    assert gateway.forwarded == 1
                    record = ca.store.get_issued(format(cert.serial_number, "x"))
                    assert record is not None
                    assert record.requester == f"cert:{ra_serial}"  # the RA asked
                    assert record.operation == "simpleenroll"

                    # Renewal through the gateway with the device certificate.
                    renew_tls = ClientTLSContext(trust_anchors=ca.ca_certificates,
                                                 client_certificate_chain=[cert],
                                                 client_private_key=keys[3])
                    async with est_asyncio.ESTClient("127.0.0.1", server.port, renew_tls) as renewer:
                        renewed = await renewer.simplereenroll_linked(keys[4], subject,
                                                                      subject_alt_names=SANS)
                    assert_issued(renewed, keys[4], subject, ca.issuer_certificate, roots)
                    assert gateway.forwarded == 2

                    # A wrong device password stops at the gateway.
                    wrong = Credentials("device", "nope", preemptive_basic=True)
                    async with est_asyncio.ESTClient("127.0.0.1", server.port, device_tls,
                                                     credentials=wrong) as intruder:
                        with pytest.raises(est_asyncio.ESTAuthenticationError):
                            await intruder.simpleenroll(pkcs10.build_csr(keys[5], name("x")))
                    assert gateway.forwarded == 2

    asyncio.run(asyncio.wait_for(scenario(), DEADLINE))


def test_gateway_without_reachable_upstream_answers_502(
    upstream_dir: Path, keys: list[ec.EllipticCurvePrivateKey],
) -> None:
    chain, ra_key = gateway_ra.provision_ra(upstream_dir, ("127.0.0.1",))

    async def scenario() -> None:
        with EmbeddedCA.open(upstream_dir) as ca:
            upstream = await gateway_ra.start_upstream(ca)
            port = upstream.port
            upstream.close()
            await upstream.wait_closed()  # nothing listens on *port* now
            async with gateway_ra.Gateway("127.0.0.1", port, ca.ca_certificates,
                                          chain, ra_key) as gateway:
                async with await gateway_ra.start_gateway(gateway) as server:
                    tls = ClientTLSContext(trust_anchors=ca.ca_certificates)
                    creds = Credentials("device", "device-password", preemptive_basic=True)
                    async with est_asyncio.ESTClient("127.0.0.1", server.port, tls,
                                                     credentials=creds) as device:
                        with pytest.raises(est_asyncio.ESTError) as failed:
                            await device.simpleenroll(pkcs10.build_csr(keys[5], name("y")))
                    assert failed.value.status == 502

    asyncio.run(asyncio.wait_for(scenario(), DEADLINE))


# ---------------------------------------------------------------------------
# Renewing client


@pytest.fixture(scope="module")
def renew_ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("renew") / "ca"
    with EmbeddedCA.init(d, hostnames=("127.0.0.1",)) as ca:
        ca.add_user("alice", "secret")
    return d


async def _wait_next_second() -> None:
    # The CA stamps notAfter with its real clock at one-second resolution.
    await asyncio.sleep(1.02 - time.time() % 1.0)


@pytest.mark.parametrize("rekey", [True, False], ids=["rekey", "same-key"])
def test_renewing_client_renews_at_two_thirds(renew_ca_dir: Path, tmp_path: Path, rekey: bool) -> None:
    example = renewing_client

    async def scenario() -> None:
        with EmbeddedCA.open(renew_ca_dir) as ca:
            async with await gateway_ra.start_upstream(ca) as server:
                clock = example.SimulatedClock()
                subject = name(f"renewing-{rekey}")
                sans = [x509.DNSName("renewing.example")]
                client = example.RenewingClient(
                    "127.0.0.1", server.port, ca.ca_certificates, subject,
                    credentials=Credentials("alice", "secret"), subject_alt_names=sans,
                    now=clock, rekey=rekey, state_dir=tmp_path / "state",
                )
                assert client.due()
                assert await client.step() == "enrolled"
                first, first_key = client.certificate, client.key
                assert first is not None and first_key is not None
                assert_issued(first, first_key, subject, ca.issuer_certificate, [ca.root_certificate])

                due = example.renewal_time(first)
                lifetime = first.not_valid_after_utc - first.not_valid_before_utc
                assert due == first.not_valid_before_utc + lifetime * 2 / 3
                # Just before two thirds: nothing to do.
                clock.time = due - datetime.timedelta(seconds=1)
                assert not client.due()
                assert await client.step() == "valid"
                assert client.seconds_until_due() == pytest.approx(1.0)
                # Past two thirds: renew with the certificate as TLS identity.
                clock.time = due + datetime.timedelta(seconds=1)
                await _wait_next_second()
                assert await client.step() == "renewed"
                second, second_key = client.certificate, client.key
                assert second is not None and second_key is not None
                assert_issued(second, second_key, subject, ca.issuer_certificate, [ca.root_certificate])
                assert second.subject == first.subject
                assert list(second.extensions.get_extension_for_class(
                    x509.SubjectAlternativeName).value) == sans
                assert second.not_valid_after_utc > first.not_valid_after_utc
                assert second.serial_number != first.serial_number
                assert (spki(second) != spki(first)) is rekey
                assert client.history == [first, second]
                record = ca.store.get_issued(format(second.serial_number, "x"))
                assert record is not None and record.operation == "simplereenroll"
                assert record.requester == f"cert:{first.serial_number:x}"
                # (The simulated clock runs months ahead of the CA's real
                # one, so "not due" cannot be checked against it here.)
                assert example.renewal_time(second) > example.renewal_time(first)

                # The state directory holds the current pair; a restart (on
                # the real clock) resumes with nothing to do.
                again = example.RenewingClient("127.0.0.1", server.port, ca.ca_certificates,
                                               subject, state_dir=tmp_path / "state")
                assert again.certificate == second
                assert again.key is not None and spki(again.key) == spki(second)
                assert await again.step() == "valid"

    asyncio.run(asyncio.wait_for(scenario(), DEADLINE))


def test_renewing_client_demo_main(capsys: pytest.CaptureFixture[str]) -> None:
    renewing_client.main(["--demo"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert all("CN=demo-device" in line for line in lines)
    assert lines[0].split()[1] != lines[1].split()[1]  # two serials


# ---------------------------------------------------------------------------
# The server scripts run as a user runs them


@pytest.fixture
def script() -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(stem: str) -> tuple[int, Path]:
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / f"{stem}.py"), "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0,
        )
        procs.append(proc)
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        output = b""
        end = time.monotonic() + DEADLINE
        # select + os.read: a script that hangs before printing fails the
        # test at the deadline instead of blocking a readline forever.
        while time.monotonic() < end:
            ready, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            output += chunk
            lines = output.decode().splitlines()
            trust = [line.split(" ", 1)[1] for line in lines if line.startswith("trust ")]
            listening = [line for line in lines if line.startswith("listening on https://127.0.0.1:")]
            if trust and listening:
                return int(listening[0].split(":")[2].split("/")[0]), Path(trust[0].strip())
        raise AssertionError(f"{stem} did not report its port: {output!r}")

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.parametrize("stem", ["trio_custom_backend", "gateway_ra"])
def test_server_script_main_serves_cacerts(script: Any, stem: str) -> None:
    port, trust = script(stem)
    # An independent client: stdlib ssl + http.client.
    context = ssl.create_default_context(cafile=str(trust))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        conn.request("GET", "/.well-known/est/cacerts")
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 200
    assert response.getheader("Content-Type", "").startswith("application/pkcs7-mime")
    assert body
