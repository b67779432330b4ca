"""Interop: strongSwan's ``pki --estca`` / ``pki --est`` against estproto's server.

Issue 5, "Interop tests". strongSwan's EST client (Debian strongswan-pki,
its own TLS stack ``libtls``, TLS 1.2) is the strictest common client
(EST-NOTES): it cannot read wrapped base64, needs Content-Length, a literal
``HTTP/1.1`` status line and the whole response head within its first
1024-byte read. Its CSRs (``pki --req``) put the attribute SET out of DER
order when they carry both extensionRequest and challengePassword, which
``cryptography`` refuses; estproto's decoder must take them.

What is covered, each checked with openssl (not estproto): the fetched CA
certificate is ``ca.pem``; enrollment with ``--userpass``; re-enrollment
with ``--cert/--key`` (TLS client certificate = the certificate being
renewed), with a new key and with the same key; 202 polling against a
manual-approval server (``retry_after=1``, ``--interval 1``) that the test
approves while ``pki --est`` waits. A CSR with a strongSwan
``--password`` (a challengePassword that is no tls-unique value) is refused
per RFC 7030 3.5 ("If tls-unique information is included by the client, the
server MUST verify it") and accepted by a server whose PoP policy is OFF.

``pki --est --url`` takes the server's base URL: it appends
``/.well-known/est/<op>`` itself.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import require_tool
from estproto import LinePolicyChoice
from estproto.auth import PoPPolicy
from estproto.ca import CASettings, PendingRecord, PendingState
from interop_server import (
    PASSWORD,
    TOOL_TIMEOUT,
    USER,
    RunningServer,
    check_issued,
    describe,
    pubkey_of,
    run,
)

#: strongSwan's poll interval in the 202 test (its default is 60 s).
POLL_INTERVAL = "1"


@pytest.fixture(scope="module")
def tools() -> tuple[str, str]:
    return require_tool("pki"), require_tool("openssl")


@pytest.fixture
def pki(tools: tuple[str, str]) -> str:
    return tools[0]


@pytest.fixture
def openssl(tools: tuple[str, str]) -> str:
    return tools[1]


def _serve(tmp_path_factory: pytest.TempPathFactory, framework: str, name: str,
           settings: CASettings | None = None, **est_overrides: object) -> Iterator[RunningServer]:
    srv = RunningServer(tmp_path_factory.mktemp(name), settings=settings, framework=framework,
                        **est_overrides).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tools: tuple[str, str],
           server_framework: str) -> Iterator[RunningServer]:
    yield from _serve(tmp_path_factory, server_framework, "sw-ca")


@pytest.fixture(scope="module")
def manual_server(tmp_path_factory: pytest.TempPathFactory,
                  tools: tuple[str, str], server_framework: str) -> Iterator[RunningServer]:
    yield from _serve(tmp_path_factory, server_framework, "sw-manual-ca",
                      CASettings(manual_approval=True, retry_after=1))


@pytest.fixture(scope="module")
def pop_off_server(tmp_path_factory: pytest.TempPathFactory,
                   tools: tuple[str, str], server_framework: str) -> Iterator[RunningServer]:
    yield from _serve(tmp_path_factory, server_framework, "sw-popoff-ca",
                      CASettings(pop_policy=PoPPolicy.OFF))


@pytest.fixture(scope="module")
def wrapping_server(tmp_path_factory: pytest.TempPathFactory,
                    tools: tuple[str, str], server_framework: str) -> Iterator[RunningServer]:
    yield from _serve(tmp_path_factory, server_framework, "sw-wrap-ca",
                      line_policy=LinePolicyChoice.WRAP_64)


def base_url(server: RunningServer) -> str:
    return f"https://127.0.0.1:{server.port}"


def gen_key(pki: str, path: Path) -> Path:
    """``pki --gen --type ecdsa --size 256`` (DER on stdout)."""
    path.write_bytes(run([pki, "--gen", "--type", "ecdsa", "--size", "256"]).stdout)
    return path


def gen_req(pki: str, key: Path, dn: str, path: Path, *, san: str | None = None,
            password: str | None = None) -> Path:
    """``pki --req --type priv`` (DER on stdout)."""
    args = [pki, "--req", "--type", "priv", "--in", str(key), "--dn", dn]
    if san:
        args += ["--san", san]
    if password:
        args += ["--password", password]
    path.write_bytes(run(args).stdout)
    return path


def est(pki: str, server: RunningServer, req: Path, *extra: str | Path,
        timeout: float = TOOL_TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    """``pki --est`` with PEM output on stdout; not checked."""
    return run([pki, "--est", "--url", base_url(server), "--cacert", server.trust, "--in", req,
                "--outform", "pem", *extra], check=False, timeout=timeout)


def save_cert(proc: subprocess.CompletedProcess[bytes], path: Path) -> Path:
    assert proc.stdout.startswith(b"-----BEGIN CERTIFICATE-----"), proc.stdout[:200]
    assert proc.stdout.count(b"BEGIN CERTIFICATE") == 1
    path.write_bytes(proc.stdout)
    return path


# ---------------------------------------------------------------------------


def test_estca_fetches_our_ca(pki: str, openssl: str, server: RunningServer, tmp_path: Path) -> None:
    out = tmp_path / "fetched.pem"
    proc = run([pki, "--estca", "--url", base_url(server), "--cacert", server.trust,
                "--caout", out, "--outform", "pem"], check=False)
    assert proc.returncode == 0, describe(proc, server)
    assert b"Root CA cert is trusted" in proc.stderr, proc.stderr[-500:]
    fingerprint = [openssl, "x509", "-noout", "-fingerprint", "-sha256", "-in"]
    assert run([*fingerprint, out]).stdout == run([*fingerprint, server.trust]).stdout


def test_enroll_userpass_then_reenroll(pki: str, openssl: str, server: RunningServer,
                                       tmp_path: Path) -> None:
    """simpleenroll with Basic, then simplereenroll authenticated by the
    issued certificate: first with a new key (rekey), then with that key
    again (renew)."""
    dn, san = "CN=sw-device, O=Example", "sw-device.example"
    subject, san_text = "O=Example,CN=sw-device", "DNS:sw-device.example"
    key = gen_key(pki, tmp_path / "key.der")
    req = gen_req(pki, key, dn, tmp_path / "req.der", san=san)
    proc = est(pki, server, req, "--userpass", f"{USER}:{PASSWORD}")
    assert proc.returncode == 0, describe(proc, server)
    cert = save_cert(proc, tmp_path / "cert.pem")
    check_issued(openssl, server.trust, cert, subject=subject, san=san_text,
                 pubkey=pubkey_of(openssl, "req", req, "-inform", "DER"))
    assert any("POST /.well-known/est/simpleenroll 200" in line for line in server.log)

    # Rekey: the old certificate and key authenticate TLS, the CSR has a new key.
    new_key = gen_key(pki, tmp_path / "key2.der")
    req2 = gen_req(pki, new_key, dn, tmp_path / "req2.der", san=san)
    proc = est(pki, server, req2, "--cert", cert, "--key", key)
    assert proc.returncode == 0, describe(proc, server)
    rekeyed = save_cert(proc, tmp_path / "cert2.pem")
    check_issued(openssl, server.trust, rekeyed, subject=subject, san=san_text,
                 pubkey=pubkey_of(openssl, "req", req2, "-inform", "DER"))
    assert pubkey_of(openssl, "x509", rekeyed) != pubkey_of(openssl, "x509", cert)
    assert any("POST /.well-known/est/simplereenroll 200" in line for line in server.log)

    # Renew: same key as the certificate being renewed.
    req3 = gen_req(pki, new_key, dn, tmp_path / "req3.der", san=san)
    proc = est(pki, server, req3, "--cert", rekeyed, "--key", new_key)
    assert proc.returncode == 0, describe(proc, server)
    renewed = save_cert(proc, tmp_path / "cert3.pem")
    check_issued(openssl, server.trust, renewed, subject=subject, san=san_text,
                 pubkey=pubkey_of(openssl, "x509", rekeyed))
    serials = {run([openssl, "x509", "-noout", "-serial", "-in", c]).stdout
               for c in (cert, rekeyed, renewed)}
    assert len(serials) == 3


def test_forced_64_column_base64_breaks_strongswan(pki: str, wrapping_server: RunningServer,
                                                   tmp_path: Path) -> None:
    """Why the default response line policy matters (EST-NOTES): the same
    enrollment against a server forced to wrap base64 at 64 columns fails
    in strongSwan's PKCS#7 parser. This also proves the enrollment tests
    above can fail on a response-format regression."""
    key = gen_key(pki, tmp_path / "key.der")
    req = gen_req(pki, key, "CN=sw-wrapped, O=Example", tmp_path / "req.der")
    proc = est(pki, wrapping_server, req, "--userpass", f"{USER}:{PASSWORD}")
    assert any("simpleenroll 200" in line for line in wrapping_server.log), wrapping_server.log_text()
    assert proc.returncode != 0 and not proc.stdout, describe(proc, wrapping_server)
    assert b"could not parse pkcs7" in proc.stderr, describe(proc, wrapping_server)


def test_reenroll_with_changed_subject_is_refused(pki: str, openssl: str, server: RunningServer,
                                                  tmp_path: Path) -> None:
    """RFC 7030 4.2.2: "the Subject field and SubjectAltName extension MUST
    be identical to the corresponding fields in the certificate being
    renewed or rekeyed"."""
    key = gen_key(pki, tmp_path / "key.der")
    req = gen_req(pki, key, "CN=sw-fixed, O=Example", tmp_path / "req.der")
    proc = est(pki, server, req, "--userpass", f"{USER}:{PASSWORD}")
    assert proc.returncode == 0, describe(proc, server)
    cert = save_cert(proc, tmp_path / "cert.pem")
    other = gen_req(pki, key, "CN=sw-other, O=Example", tmp_path / "other.der")
    proc = est(pki, server, other, "--cert", cert, "--key", key)
    assert proc.returncode != 0 and not proc.stdout, describe(proc, server)
    assert b"EST request failed: HTTP 4" in proc.stderr, describe(proc, server)


def test_challenge_password_that_is_not_tls_unique_is_refused(
        pki: str, server: RunningServer, tmp_path: Path) -> None:
    """A strongSwan ``--password`` CSR has an unsorted attribute SET: it must
    be parsed (the refusal is about PoP, not about the encoding), then
    refused: RFC 7030 3.5, "If tls-unique information is included by the
    client, the server MUST verify it" (the challengePassword's presence
    "indicates the inclusion of tls-unique information")."""
    key = gen_key(pki, tmp_path / "key.der")
    req = gen_req(pki, key, "CN=sw-password, O=Example", tmp_path / "req.der",
                  san="sw-password.example", password="not-a-channel-binding")
    proc = est(pki, server, req, "--userpass", f"{USER}:{PASSWORD}")
    assert proc.returncode != 0 and not proc.stdout, describe(proc, server)
    assert b"EST request failed: HTTP 4" in proc.stderr, describe(proc, server)
    assert any("simpleenroll 4" in line for line in server.log), server.log_text()


def test_unsorted_attribute_set_enrolls_without_pop_checks(
        pki: str, openssl: str, pop_off_server: RunningServer, tmp_path: Path) -> None:
    """The same kind of CSR (extensionRequest before challengePassword, not
    DER order) is issued by a server with PoP linking OFF."""
    key = gen_key(pki, tmp_path / "key.der")
    req = gen_req(pki, key, "CN=sw-unsorted, O=Example", tmp_path / "req.der",
                  san="sw-unsorted.example", password="otp-123456")
    parsed = run([openssl, "asn1parse", "-inform", "DER", "-in", req]).stdout.decode()
    assert parsed.index(":Extension Request") < parsed.index(":challengePassword"), \
        "this strongSwan builds sorted attribute SETs: the test lost its point"
    run([openssl, "req", "-inform", "DER", "-in", req, "-noout", "-verify"])
    proc = est(pki, pop_off_server, req, "--userpass", f"{USER}:{PASSWORD}")
    assert proc.returncode == 0, describe(proc, pop_off_server)
    cert = save_cert(proc, tmp_path / "cert.pem")
    check_issued(openssl, pop_off_server.trust, cert, subject="O=Example,CN=sw-unsorted",
                 san="DNS:sw-unsorted.example",
                 pubkey=pubkey_of(openssl, "req", req, "-inform", "DER"))


def test_202_polling_until_approved(pki: str, openssl: str, manual_server: RunningServer,
                                    tmp_path: Path) -> None:
    """RFC 7030 4.2.3: 202 with Retry-After; strongSwan polls (``--interval
    1``) until the operator approves, then receives the certificate."""
    key = gen_key(pki, tmp_path / "key.der")
    req = gen_req(pki, key, "CN=sw-polled, O=Example", tmp_path / "req.der", san="sw-polled.example")
    args = [pki, "--est", "--url", base_url(manual_server), "--cacert", str(manual_server.trust),
            "--in", str(req), "--outform", "pem", "--userpass", f"{USER}:{PASSWORD}",
            "--interval", POLL_INTERVAL, "--maxpolltime", "20"]
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            deadline = time.monotonic() + 10
            pending: list[PendingRecord] = []
            while not pending and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
                pending = manual_server.ca.list_pending()
            assert len(pending) == 1, manual_server.log_text()
            # Let it poll at least once more while still pending.
            time.sleep(1.2)
            assert proc.poll() is None, "pki --est gave up while the request was pending"
            assert manual_server.ca.list_pending()[0].id == pending[0].id, "a poll made a new request"
            manual_server.ca.approve(pending[0].id)
            stdout, stderr = proc.communicate(timeout=TOOL_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    done = subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)
    assert done.returncode == 0, describe(done, manual_server)
    accepted = [line for line in manual_server.log if "simpleenroll 202" in line]
    assert len(accepted) >= 2, manual_server.log_text()
    cert = save_cert(done, tmp_path / "cert.pem")
    check_issued(openssl, manual_server.trust, cert, subject="O=Example,CN=sw-polled",
                 san="DNS:sw-polled.example",
                 pubkey=pubkey_of(openssl, "req", req, "-inform", "DER"))
    issued = manual_server.ca.list_pending(state=PendingState.ISSUED)
    assert [p.id for p in issued] == [pending[0].id]


def test_strongswan_close_is_logged_as_a_close(pki: str, server: RunningServer, tmp_path: Path) -> None:
    before = len(server.log)
    proc = run([pki, "--estca", "--url", base_url(server), "--cacert", server.trust,
                "--caout", tmp_path / "ca.pem", "--outform", "pem"], check=False)
    assert proc.returncode == 0, describe(proc, server)
    time.sleep(0.2)  # the server logs the end of the connection after pki exits
    new = server.log[before:]
    assert any("cacerts 200" in line for line in new), new
    assert not any("TLS failure: Error" in line for line in new), new
