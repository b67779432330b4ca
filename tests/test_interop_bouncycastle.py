"""Interop: Bouncy Castle's EST client (bcpkix 1.72, Debian) against estproto's server.

Issue 5, "Interop tests": getCACerts, simpleEnroll with Basic and with
Digest, simpleEnrollPoP with tls-unique over BCJSSE (TLS 1.2),
simpleEnrollWithServersideCreation, getCSRAttributes.

Strategy: ``tests/java/EstHarness.java`` is compiled once per module with
javac against the Debian jars (bcprov, bcutil, bcpkix, bctls in
``/usr/share/java``) and run once per operation against a real estproto
server on loopback (:class:`interop_server.RunningServer`). The harness
writes what it generated and what came back as PEM/DER files, and the
checks read those files with openssl: the certificate's public key equals
the harness's key, the chain verifies to ``ca.pem``, the subject is the one
requested, the server-generated PKCS#8 key matches its certificate and
signs, the csrattrs OIDs are what the CA asked for (and Bouncy Castle's
re-encoding of them is byte-identical to what the CA sent).

Bouncy Castle never sends credentials up front: it reads the first
``WWW-Authenticate`` field of a 401 and answers on a new TLS connection that
resumes the session (EST-NOTES, "Interop facts"). So Basic and Digest are
chosen by the server's configuration (``accept_digest`` / ``accept_basic``),
and the PoP test checks that both connections share one TLS session: the
server verified tls-unique on a resumed TLS 1.2 session, where it is the
server's Finished (RFC 5929 section 3.1).

Known failures would be marked ``xfail(strict=True)`` with the diagnosis, so
they turn into errors once fixed.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import require_tool
from estproto.auth import PoPPolicy
from estproto.ca import CASettings
from estproto.codecs.csrattrs import encode_csrattrs
from interop_server import (
    PASSWORD,
    TOOL_TIMEOUT,
    USER,
    RunningServer,
    check_issued,
    pubkey_of,
    run,
)

#: Where Debian's lib*-java packages put their jars.
JAVA_DIR = Path("/usr/share/java")
#: bcpkix (the EST client) needs bcutil and bcprov; BCJSSE is bctls.
BC_JARS = ("bcprov.jar", "bcutil.jar", "bcpkix.jar", "bctls.jar")
HARNESS_SRC = Path(__file__).parent / "java" / "EstHarness.java"

#: A JVM start plus Bouncy Castle's provider setup takes 1-2 s; give room.
JAVA_TIMEOUT = TOOL_TIMEOUT + 20

SUBJECT_DN = "CN=bc-device,O=Example"  # as Bouncy Castle's X500Name reads it
SUBJECT = "O=Example,CN=bc-device"  # RFC 2253 order, as openssl prints it

OID_CHALLENGE_PASSWORD = "1.2.840.113549.1.9.7"
OID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
OID_ECDSA_SHA256 = "1.2.840.10045.4.3.2"

def enroll_with_password(harness: "Harness", server: RunningServer, out: Path) -> None:
    """Run ``enroll`` (Bouncy Castle picks Basic or Digest from the 401).

    Bouncy Castle 1.72 accepts a Digest challenge only when every parameter
    is a quoted-string and no parameter besides realm/nonce/opaque/algorithm/
    qop appears; estproto's challenges are written that way
    (estproto/auth/digest.py DigestAuthority.challenges).
    """
    proc = harness.run("enroll", server, out, "--subject", SUBJECT_DN)
    assert ok(proc, server, "enroll ok") == "enroll ok certs=1"


def require_jars() -> list[Path]:
    """The Bouncy Castle jars, or skip (fail under ``CI=true``, like
    :func:`conftest.require_tool`)."""
    jars = [JAVA_DIR / name for name in BC_JARS]
    missing = [j.name for j in jars if not j.is_file()]
    if missing:
        message = f"Bouncy Castle jars missing in {JAVA_DIR}: {', '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (required under CI=true)")
        pytest.skip(message)
    return jars


class Harness:
    """The compiled EstHarness and how to run it."""

    def __init__(self, java: str, classpath: str) -> None:
        self.java = java
        self.classpath = classpath

    def run(self, op: str, server: Any, out: Path, *extra: str,
            auth: bool = True) -> subprocess.CompletedProcess[bytes]:
        """Run one operation; not checked (see :func:`ok`)."""
        out.mkdir(parents=True, exist_ok=True)
        args = [self.java, "-XX:TieredStopAtLevel=1", "-cp", self.classpath, "EstHarness", op,
                "--server", f"127.0.0.1:{server.port}", "--trust", str(server.trust),
                "--out", str(out), *extra]
        if auth:
            args += ["--user", USER, "--password", PASSWORD]
        return run(args, check=False, timeout=JAVA_TIMEOUT)


def ok(proc: subprocess.CompletedProcess[bytes], server: Any, expect: str) -> str:
    """Assert the harness succeeded; return its summary line."""
    summary = proc.stdout.decode(errors="replace").strip()
    assert proc.returncode == 0 and summary.startswith(expect), (
        f"exit {proc.returncode}\nstdout: {summary[-2000:]}\n"
        f"stderr: {proc.stderr.decode(errors='replace')[-4000:]}\n"
        f"server log:\n{server.log_text()}"
    )
    return summary


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Harness:
    javac, java = require_tool("javac"), require_tool("java")
    jars = require_jars()
    classes = tmp_path_factory.mktemp("bc-harness")
    classpath = os.pathsep.join(str(j) for j in jars)
    run([javac, "-nowarn", "-cp", classpath, "-d", classes, HARNESS_SRC], timeout=JAVA_TIMEOUT)
    return Harness(java, os.pathsep.join([str(classes), classpath]))


@pytest.fixture(scope="module")
def openssl_tool() -> str:
    return require_tool("openssl")


def _serve(tmp_path_factory: pytest.TempPathFactory, framework: str, name: str,
           settings: CASettings) -> Iterator[RunningServer]:
    srv = RunningServer(tmp_path_factory.mktemp(name), settings=settings, framework=framework).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory, harness: Harness,
                   server_framework: str) -> Iterator[RunningServer]:
    """Out-of-the-box settings: a 401 offers Basic, then Digest (SHA-256, MD5)."""
    yield from _serve(tmp_path_factory, server_framework, "bc-default", CASettings())


@pytest.fixture(scope="module")
def basic_server(tmp_path_factory: pytest.TempPathFactory, harness: Harness,
                 server_framework: str) -> Iterator[RunningServer]:
    yield from _serve(tmp_path_factory, server_framework, "bc-basic", CASettings(accept_digest=False))


@pytest.fixture(scope="module")
def digest_server(tmp_path_factory: pytest.TempPathFactory, harness: Harness,
                  server_framework: str) -> Iterator[RunningServer]:
    yield from _serve(tmp_path_factory, server_framework, "bc-digest", CASettings(accept_basic=False))


@pytest.fixture(scope="module")
def pop_server(tmp_path_factory: pytest.TempPathFactory, harness: Harness,
               server_framework: str) -> Iterator[RunningServer]:
    """PoP linking required (RFC 7030 3.5); Basic only, so Bouncy Castle can log in."""
    yield from _serve(tmp_path_factory, server_framework, "bc-pop",
                      CASettings(accept_digest=False, pop_policy=PoPPolicy.REQUIRE))


def statuses(server: RunningServer, start: int, op: str) -> list[str]:
    """HTTP statuses the server logged for *op* since log line *start*."""
    pattern = re.compile(rf"/\.well-known/est/{op} (\d{{3}}) ")
    return [m.group(1) for line in server.log[start:] if (m := pattern.search(line))]


def openssl_objects(openssl: str, der: Path) -> list[str]:
    """The OBJECT identifiers in *der*, in order, as ``openssl asn1parse``
    names them."""
    out = run([openssl, "asn1parse", "-inform", "DER", "-in", der]).stdout.decode()
    return re.findall(r"OBJECT\s+:(\S+)", out)


# ---------------------------------------------------------------------------


def test_get_cacerts(harness: Harness, openssl_tool: str, default_server: RunningServer,
                     tmp_path: Path) -> None:
    """getCACerts: no authentication asked (RFC 7030 4.1.1); the store
    holds exactly our root."""
    proc = harness.run("cacerts", default_server, tmp_path, auth=False)
    assert ok(proc, default_server, "cacerts ok") == "cacerts ok certs=1 trusted=true"
    fingerprint = [openssl_tool, "x509", "-noout", "-fingerprint", "-sha256", "-in"]
    assert run([*fingerprint, tmp_path / "cacerts.pem"]).stdout == \
        run([*fingerprint, default_server.trust]).stdout


def test_simple_enroll_basic(harness: Harness, openssl_tool: str, basic_server: RunningServer,
                             tmp_path: Path) -> None:
    """simpleEnroll with Basic: 401 first (Bouncy Castle sends no
    credentials up front), then 200 on the retry."""
    start = len(basic_server.log)
    proc = harness.run("enroll", basic_server, tmp_path, "--subject", SUBJECT_DN)
    assert ok(proc, basic_server, "enroll ok") == "enroll ok certs=1"
    pubkey = pubkey_of(openssl_tool, "req", tmp_path / "csr.pem")
    assert pubkey == pubkey_of(openssl_tool, "pkey", tmp_path / "pubkey.pem", "-pubin")
    check_issued(openssl_tool, basic_server.trust, tmp_path / "cert.pem", pubkey=pubkey, subject=SUBJECT)
    assert statuses(basic_server, start, "simpleenroll") == ["401", "200"]


def test_simple_enroll_digest(harness: Harness, openssl_tool: str, digest_server: RunningServer,
                              tmp_path: Path) -> None:
    """simpleEnroll with Digest (the server offers no Basic)."""
    start = len(digest_server.log)
    enroll_with_password(harness, digest_server, tmp_path)
    check_issued(openssl_tool, digest_server.trust, tmp_path / "cert.pem", subject=SUBJECT,
                 pubkey=pubkey_of(openssl_tool, "req", tmp_path / "csr.pem"))
    assert statuses(digest_server, start, "simpleenroll") == ["401", "200"]


def test_simple_enroll_default_server(harness: Harness, openssl_tool: str,
                                      default_server: RunningServer, tmp_path: Path) -> None:
    """A password enrollment against an out-of-the-box server."""
    enroll_with_password(harness, default_server, tmp_path)
    check_issued(openssl_tool, default_server.trust, tmp_path / "cert.pem", subject=SUBJECT,
                 pubkey=pubkey_of(openssl_tool, "req", tmp_path / "csr.pem"))


def test_simple_enroll_pop_tls_unique(harness: Harness, openssl_tool: str, pop_server: RunningServer,
                                      tmp_path: Path) -> None:
    """simpleEnrollPoP over BCJSSE, TLS 1.2: Bouncy Castle puts
    base64(tls-unique) in challengePassword and signs the CSR once each
    connection is up. The server requires PoP, so a 200 means it verified
    the value; the retry after the 401 resumed the first session, so the
    binding checked was the server's Finished (RFC 5929 3.1)."""
    start = len(pop_server.log)
    proc = harness.run("enroll-pop", pop_server, tmp_path, "--subject", SUBJECT_DN,
                       "--jsse", "bc", "--tls", "TLSv1.2")
    assert ok(proc, pop_server, "enroll-pop ok") == "enroll-pop ok certs=1"
    check_issued(openssl_tool, pop_server.trust, tmp_path / "cert.pem", subject=SUBJECT,
                 pubkey=pubkey_of(openssl_tool, "pkey", tmp_path / "pubkey.pem", "-pubin"))
    assert statuses(pop_server, start, "simpleenroll") == ["401", "200"]

    bindings = re.findall(rb"channel-binding tls-unique (\S+) session ([0-9a-f]+)", proc.stderr)
    assert len(bindings) == 2, proc.stderr[-2000:]
    (first, session1), (second, session2) = bindings
    assert first != second, "each TLS connection has its own tls-unique"
    assert session1 == session2, "the retry did not resume the session"


def test_simple_enroll_without_pop_is_refused(harness: Harness, pop_server: RunningServer,
                                              tmp_path: Path) -> None:
    """Control for the PoP test: the same server refuses a CSR without
    the tls-unique challengePassword (RFC 7030 3.5: the server "MAY
    reject all requests that do not include the tls-unique value")."""
    start = len(pop_server.log)
    proc = harness.run("enroll", pop_server, tmp_path, "--subject", SUBJECT_DN)
    assert proc.returncode == 2, proc.stdout
    assert proc.stdout.startswith(b"error status=400 body=proof-of-possession linking"), proc.stdout
    # The EST layer checks the CSR before authentication, so no 401 first.
    seen = statuses(pop_server, start, "simpleenroll")
    assert seen and seen[-1] == "400" and "200" not in seen
    assert not (tmp_path / "cert.pem").exists()


def test_serverside_key_generation(harness: Harness, openssl_tool: str, basic_server: RunningServer,
                                   tmp_path: Path) -> None:
    """simpleEnrollWithServersideCreation: Bouncy Castle parses the
    multipart response and the PKCS#8 key (it fails on anything else);
    the key belongs to the certificate, not to the CSR (RFC 7030 4.4.1)."""
    proc = harness.run("serverkeygen", basic_server, tmp_path, "--subject", SUBJECT_DN)
    summary = ok(proc, basic_server, "serverkeygen ok")
    assert summary == f"serverkeygen ok certs=1 key={OID_EC_PUBLIC_KEY}"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    key_pub = pubkey_of(openssl_tool, "pkey", key)
    assert pubkey_of(openssl_tool, "x509", cert) == key_pub
    assert key_pub != pubkey_of(openssl_tool, "pkey", tmp_path / "pubkey.pem", "-pubin")
    check_issued(openssl_tool, basic_server.trust, cert, pubkey=key_pub, subject=SUBJECT)
    # The key signs, and the certificate's key verifies it.
    data = tmp_path / "data"
    data.write_bytes(b"estproto serverkeygen interop")
    sig = tmp_path / "sig"
    run([openssl_tool, "dgst", "-sha256", "-sign", key, "-out", sig, data])
    certpub = tmp_path / "certpub.pem"
    certpub.write_bytes(pubkey_of(openssl_tool, "x509", cert))
    run([openssl_tool, "dgst", "-sha256", "-verify", certpub, "-signature", sig, data])


@pytest.mark.parametrize("which", ["default", "pop"])
def test_get_csr_attributes(harness: Harness, openssl_tool: str, default_server: RunningServer,
                            pop_server: RunningServer, tmp_path: Path, which: str) -> None:
    """getCSRAttributes: what Bouncy Castle decoded (its requirement list
    and kinds) and re-encoded (byte-identical DER) matches what the CA
    offers; challengePassword is listed only when PoP is required."""
    server = default_server if which == "default" else pop_server
    proc = harness.run("csrattrs", server, tmp_path, auth=False)
    summary = ok(proc, server, "csrattrs ok").split()[2:]
    wanted = {f"{OID_EC_PUBLIC_KEY}=attribute", f"{OID_ECDSA_SHA256}=oid"}
    if which == "pop":
        wanted.add(f"{OID_CHALLENGE_PASSWORD}=oid")
    assert set(summary) == wanted and len(summary) == len(wanted)

    der = tmp_path / "csrattrs.der"
    offered = server.ca.csrattrs("")
    assert offered is not None
    assert der.read_bytes() == encode_csrattrs(offered)
    expected = ["ecdsa-with-SHA256", "id-ecPublicKey", "prime256v1"]
    if which == "pop":
        expected.insert(0, "challengePassword")
    assert openssl_objects(openssl_tool, der) == expected


# ---------------------------------------------------------------------------
# `estproto serve` as an operator starts it, and Bouncy Castle as its docs
# show it: plain `new HttpAuth(user, password)` answers Basic only (it has
# no digest calculators) and only the first challenge of a 401.


class ServeProcess:
    """A real ``estproto serve`` process on a new data directory, with
    *args* added to its defaults; one user (USER/PASSWORD)."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        estproto = [sys.executable, "-m", "estproto"]
        env = {**os.environ, "ESTPROTO_PASSWORD": PASSWORD}
        run([*estproto, "ca", "init", "--data-dir", data_dir, "--hostname", "127.0.0.1"])
        subprocess.run([*estproto, "ca", "add-user", "--data-dir", str(data_dir), USER],
                       env=env, check=True, capture_output=True, timeout=TOOL_TIMEOUT)
        self.trust = data_dir / "ca.pem"
        self.log = data_dir.with_name(data_dir.name + "-serve.log")
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                [*estproto, "serve", "--data-dir", str(data_dir), "--port", "0", *args],
                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], JAVA_TIMEOUT)
        line = self.proc.stdout.readline().decode() if ready else ""
        match = re.match(r"listening on https://127\.0\.0\.1:(\d+)/", line)
        if match is None:
            self.stop()
            raise AssertionError(f"serve did not start: {line!r}\n{self.log_text()}")
        self.port = int(match.group(1))

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _serve_process(tmp_path_factory: pytest.TempPathFactory, name: str, *args: str) -> Iterator[ServeProcess]:
    server = ServeProcess(tmp_path_factory.mktemp(name) / "DIR", *args)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def serve_defaults(tmp_path_factory: pytest.TempPathFactory, harness: Harness,
                   server_framework: str) -> Iterator[ServeProcess]:
    yield from _serve_process(tmp_path_factory, "bc-serve", "--framework", server_framework)


@pytest.fixture(scope="module")
def serve_digest_only(tmp_path_factory: pytest.TempPathFactory, harness: Harness,
                      server_framework: str) -> Iterator[ServeProcess]:
    yield from _serve_process(tmp_path_factory, "bc-serve-digest", "--framework", server_framework,
                              "--auth-schemes", "digest-sha256,digest-md5")


AUTH_KINDS = ["plain", "builder"]


@pytest.mark.parametrize("auth_kind", AUTH_KINDS)
def test_serve_defaults_enroll_then_reenroll(harness: Harness, openssl_tool: str, serve_defaults: ServeProcess,
                                             tmp_path: Path, auth_kind: str) -> None:
    """simpleenroll with a password, then simplereenroll (new key) over TLS
    client authentication with the certificate just issued, both with
    BC's plain HttpAuth and with its digest-capable builder."""
    first = tmp_path / "enroll"
    proc = harness.run("enroll", serve_defaults, first, "--subject", SUBJECT_DN, "--auth-kind", auth_kind)
    assert ok(proc, serve_defaults, "enroll ok") == "enroll ok certs=1"
    check_issued(openssl_tool, serve_defaults.trust, first / "cert.pem", subject=SUBJECT,
                 pubkey=pubkey_of(openssl_tool, "req", first / "csr.pem"))
    second = tmp_path / "reenroll"
    proc = harness.run("reenroll", serve_defaults, second, "--subject", SUBJECT_DN,
                       "--auth-kind", auth_kind, "--client-dir", str(first))
    assert ok(proc, serve_defaults, "reenroll ok") == "reenroll ok certs=1"
    new_key = pubkey_of(openssl_tool, "req", second / "csr.pem")
    assert new_key != pubkey_of(openssl_tool, "req", first / "csr.pem")
    check_issued(openssl_tool, serve_defaults.trust, second / "cert.pem", subject=SUBJECT, pubkey=new_key)


@pytest.mark.parametrize("auth_kind", AUTH_KINDS)
def test_serve_defaults_serverkeygen(harness: Harness, openssl_tool: str, serve_defaults: ServeProcess,
                                     tmp_path: Path, auth_kind: str) -> None:
    proc = harness.run("serverkeygen", serve_defaults, tmp_path, "--subject", SUBJECT_DN,
                       "--auth-kind", auth_kind)
    assert ok(proc, serve_defaults, "serverkeygen ok").startswith("serverkeygen ok certs=1")
    key_pub = run([openssl_tool, "pkey", "-in", tmp_path / "key.pem", "-pubout"]).stdout
    check_issued(openssl_tool, serve_defaults.trust, tmp_path / "cert.pem", subject=SUBJECT, pubkey=key_pub)


def test_serve_digest_only_takes_the_builder_not_plain_httpauth(
        harness: Harness, openssl_tool: str, serve_digest_only: ServeProcess, tmp_path: Path) -> None:
    """``--auth-schemes digest-sha256,digest-md5`` offers no Basic: the
    digest builder enrolls; plain HttpAuth cannot (why Basic leads by default)."""
    proc = harness.run("enroll", serve_digest_only, tmp_path / "builder", "--subject", SUBJECT_DN,
                       "--auth-kind", "builder")
    assert ok(proc, serve_digest_only, "enroll ok") == "enroll ok certs=1"
    proc = harness.run("enroll", serve_digest_only, tmp_path / "plain", "--subject", SUBJECT_DN,
                       "--auth-kind", "plain")
    assert proc.returncode != 0
    assert not (tmp_path / "plain" / "cert.pem").exists()
