"""Interop: curl (a real process, real TLS over loopback) against estproto's server.

Issue 5, "Interop tests": curl fetches /cacerts; enrolls with HTTP Basic
using the classic command line (``--data @device.b64``, which strips the
newlines of ``openssl base64`` output, so the server must take single-line
base64: EST-NOTES); enrolls with a TLS client certificate issued earlier;
re-enrolls (RFC 7030 4.2.2: client certificate = the certificate being
renewed, same subject), both renew (same key) and rekey (new key); reads
/csrattrs; and asks /serverkeygen, whose multipart/mixed answer is split
with the standard library's ``email`` parser (not estproto's) and checked
with openssl: the key part's public key equals the certificate's.

Every enrollment is checked by openssl, not by estproto: the issued
certificate's public key equals the CSR's, the chain verifies to ``ca.pem``
(the trust anchor file of the embedded CA), the subject is the one asked.
Keys are P-256, made by ``openssl genpkey`` (cheap); one server per module.
"""

from __future__ import annotations

import base64
import email.message
import email.parser
import email.policy
import re
from pathlib import Path
from typing import Iterator

import pytest

from conftest import require_tool
from interop_server import (
    EST_PATH,
    PASSWORD,
    USER,
    RunningServer,
    certs_from_pkcs7,
    check_issued,
    describe,
    pubkey_of,
    run,
    subject_of,
    verify_chain,
)

#: Seconds curl may spend on one exchange.
CURL_TIMEOUT = "15"


@pytest.fixture(scope="module")
def tools() -> tuple[str, str]:
    return require_tool("curl"), require_tool("openssl")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tools: tuple[str, str],
           server_framework: str) -> Iterator[RunningServer]:
    srv = RunningServer(tmp_path_factory.mktemp("curl-ca"), framework=server_framework).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def curl(tools: tuple[str, str]) -> str:
    return tools[0]


@pytest.fixture
def openssl(tools: tuple[str, str]) -> str:
    return tools[1]


def make_key(openssl: str, path: Path) -> Path:
    run([openssl, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path])
    return path


def make_csr_b64(openssl: str, key: Path, subject: str, out: Path, *, san: str | None = None) -> Path:
    """``openssl req`` (DER) then ``openssl base64`` (64-column lines): the
    ``device.b64`` of the classic command line. Also writes ``out.csr.pem``."""
    pem = out.with_suffix(".csr.pem")
    args: list[str | Path] = [openssl, "req", "-new", "-key", key, "-subj", subject, "-out", pem]
    if san:
        args += ["-addext", f"subjectAltName={san}"]
    run(args)
    der = out.with_suffix(".csr.der")
    run([openssl, "req", "-in", pem, "-outform", "DER", "-out", der])
    run([openssl, "base64", "-in", der, "-out", out])
    assert b"\n" in out.read_bytes().rstrip(b"\n"), "expected wrapped base64 from openssl"
    return out


def p7_b64_to_der(b64_file: Path) -> Path:
    """Decode a base64 body (any line layout) into ``<name>.der``."""
    der = b64_file.with_suffix(".der")
    der.write_bytes(base64.b64decode(b"".join(b64_file.read_bytes().split()), validate=True))
    return der


def curl_get(curl: str, server: RunningServer, op: str, out: Path, *extra: str | Path) -> tuple[int, dict[str, str]]:
    """GET an EST operation with curl; returns status and headers."""
    headers = out.with_suffix(".headers")
    proc = run([curl, "-sS", "--max-time", CURL_TIMEOUT, "--cacert", server.trust, *extra,
                "-D", headers, "-o", out, f"{server.url}/{op}"], check=False)
    assert proc.returncode == 0, describe(proc, server)
    return parse_head(headers.read_bytes())


def parse_head(raw: bytes) -> tuple[int, dict[str, str]]:
    """Status and headers (lower-case names) of the last response head."""
    head = raw.strip().split(b"\r\n\r\n")[-1].decode("latin-1")
    lines = head.split("\r\n")
    version, status = lines[0].split(" ")[:2]
    assert version == "HTTP/1.1", lines[0]
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return int(status), fields


# ---------------------------------------------------------------------------


def test_cacerts(curl: str, openssl: str, server: RunningServer, tmp_path: Path) -> None:
    """RFC 7030 4.1.3: 200, application/pkcs7-mime, certs-only holding our CA."""
    out = tmp_path / "cacerts.b64"
    status, headers = curl_get(curl, server, "cacerts", out)
    assert status == 200
    assert headers["content-type"].split(";")[0].strip() == "application/pkcs7-mime"
    assert int(headers["content-length"]) == out.stat().st_size
    der = p7_b64_to_der(out)
    certs = certs_from_pkcs7(openssl, der, "-inform", "DER")
    trust = server.trust.read_bytes()
    anchor = tmp_path / "anchor.pem"
    anchor.write_bytes(certs[0])
    # The same certificate as ca.pem (compared by openssl's fingerprint).
    fp = run([openssl, "x509", "-in", anchor, "-noout", "-fingerprint", "-sha256"]).stdout
    fp_trust = run([openssl, "x509", "-in", server.trust, "-noout", "-fingerprint", "-sha256"]).stdout
    assert fp == fp_trust and trust.count(b"BEGIN CERTIFICATE") == len(certs)


def enroll_basic(curl: str, openssl: str, server: RunningServer, folder: Path, name: str,
                 *, san: str | None = None, auth: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """The well-known curl enrollment, verbatim (with *auth* flags such as
    ``--digest`` added); returns (cert.pem, key)."""
    key = make_key(openssl, folder / f"{name}.key")
    make_csr_b64(openssl, key, f"/O=Example/CN={name}", folder / "device.b64", san=san)
    cmd: list[str | Path] = [curl, "--cacert", server.trust, *auth, "--user", f"{USER}:{PASSWORD}", "--data", "@device.b64",
           "-o", "device-p7.b64", "-H", "Content-Type: application/pkcs10",
           "-H", "Content-Transfer-Encoding: base64",
           f"https://127.0.0.1:{server.port}{EST_PATH}/simpleenroll"]
    proc = run(cmd, cwd=folder, check=False)
    assert proc.returncode == 0, describe(proc, server)
    (folder / "curl.stderr").write_bytes(proc.stderr)
    body = (folder / "device-p7.b64").read_bytes()
    assert not body.startswith(b"HTTP") and b"-----" not in body, body[:200]
    der = p7_b64_to_der(folder / "device-p7.b64")
    certs = certs_from_pkcs7(openssl, der, "-inform", "DER")
    assert len(certs) == 1, "RFC 7030 4.2.3: the response holds only the issued certificate"
    cert = folder / f"{name}.pem"
    cert.write_bytes(certs[0])
    return cert, key


def test_simpleenroll_basic_classic_command_line(curl: str, openssl: str, server: RunningServer,
                                                  tmp_path: Path) -> None:
    cert, key = enroll_basic(curl, openssl, server, tmp_path, "curl-basic",
                             san="DNS:curl-basic.example,IP:192.0.2.7")
    check_issued(openssl, server.trust, cert,
                 pubkey=pubkey_of(openssl, "req", tmp_path / "device.csr.pem"),
                 subject="CN=curl-basic,O=Example",
                 san="DNS:curl-basic.example, IP Address:192.0.2.7")


@pytest.mark.parametrize(("flags", "scheme"), [
    ((), "Basic"),               # --user alone: Basic, sent up front
    (("--digest",), "Digest"),   # probes with an empty body first
    (("--anyauth",), "Digest"),  # picks the safest scheme the 401 offers
], ids=["user", "digest", "anyauth"])
def test_simpleenroll_with_each_curl_auth_mode(curl: str, openssl: str, server: RunningServer,
                                               tmp_path: Path, flags: tuple[str, ...], scheme: str) -> None:
    """The default server works with every way curl authenticates; the
    unauthenticated probe gets a 401, not a 400 for its empty body."""
    cert, _ = enroll_basic(curl, openssl, server, tmp_path, "curl-auth", auth=("-v", *flags))
    check_issued(openssl, server.trust, cert, subject="CN=curl-auth,O=Example",
                 pubkey=pubkey_of(openssl, "req", tmp_path / "device.csr.pem"))
    sent = re.findall(rb"> Authorization: (\w+)", (tmp_path / "curl.stderr").read_bytes())
    assert sent and {s.decode() for s in sent} == {scheme}


def test_simpleenroll_wrong_password_is_401(curl: str, openssl: str, server: RunningServer,
                                            tmp_path: Path) -> None:
    key = make_key(openssl, tmp_path / "k.key")
    make_csr_b64(openssl, key, "/CN=nobody", tmp_path / "device.b64")
    status_file = tmp_path / "body"
    proc = run([curl, "-sS", "--max-time", CURL_TIMEOUT, "--cacert", server.trust,
                "--user", f"{USER}:wrong", "--data", "@device.b64", "-o", status_file,
                "-w", "%{http_code}", "-H", "Content-Type: application/pkcs10",
                f"{server.url}/simpleenroll"], cwd=tmp_path, check=False)
    assert proc.returncode == 0 and proc.stdout == b"401", describe(proc, server)


def test_simpleenroll_with_client_certificate(curl: str, openssl: str, server: RunningServer,
                                              tmp_path: Path) -> None:
    """RFC 7030 3.3.2: a certificate the CA issued authenticates the client;
    no HTTP credentials are sent."""
    first = tmp_path / "first"
    first.mkdir()
    cert, key = enroll_basic(curl, openssl, server, first, "curl-tls-auth")
    new_key = make_key(openssl, tmp_path / "second.key")
    b64 = make_csr_b64(openssl, new_key, "/O=Example/CN=curl-second-device", tmp_path / "second.b64")
    out = tmp_path / "second-p7.b64"
    proc = run([curl, "-sS", "--max-time", CURL_TIMEOUT, "--cacert", server.trust,
                "--cert", cert, "--key", key, "--data", f"@{b64}", "-o", out, "-w", "%{http_code}",
                "-H", "Content-Type: application/pkcs10", f"{server.url}/simpleenroll"], check=False)
    assert proc.returncode == 0 and proc.stdout == b"200", describe(proc, server)
    issued = tmp_path / "second.pem"
    issued.write_bytes(certs_from_pkcs7(openssl, p7_b64_to_der(out), "-inform", "DER")[0])
    check_issued(openssl, server.trust, issued,
                 pubkey=pubkey_of(openssl, "req", tmp_path / "second.csr.pem"),
                 subject="CN=curl-second-device,O=Example")


@pytest.mark.parametrize("rekey", [False, True], ids=["renew-same-key", "rekey-new-key"])
def test_simplereenroll(curl: str, openssl: str, server: RunningServer, tmp_path: Path,
                        rekey: bool) -> None:
    """RFC 7030 4.2.2: authenticated by the certificate being renewed, CSR
    with the same subject and subjectAltName."""
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    name = f"curl-reenroll-{'rekey' if rekey else 'renew'}"
    san = f"DNS:{name}.example"
    cert, key = enroll_basic(curl, openssl, server, old_dir, name, san=san)
    csr_key = make_key(openssl, tmp_path / "new.key") if rekey else key
    b64 = make_csr_b64(openssl, csr_key, f"/O=Example/CN={name}", tmp_path / "renew.b64", san=san)
    out = tmp_path / "renew-p7.b64"
    proc = run([curl, "-sS", "--max-time", CURL_TIMEOUT, "--cacert", server.trust,
                "--cert", cert, "--key", key, "--data", f"@{b64}", "-o", out, "-w", "%{http_code}",
                "-H", "Content-Type: application/pkcs10", "-H", "Content-Transfer-Encoding: base64",
                f"{server.url}/simplereenroll"], check=False)
    assert proc.returncode == 0 and proc.stdout == b"200", describe(proc, server) + out.read_text("latin-1")
    renewed = tmp_path / "renewed.pem"
    renewed.write_bytes(certs_from_pkcs7(openssl, p7_b64_to_der(out), "-inform", "DER")[0])
    check_issued(openssl, server.trust, renewed,
                 pubkey=pubkey_of(openssl, "req", tmp_path / "renew.csr.pem"),
                 subject=f"CN={name},O=Example", san=f"DNS:{name}.example")
    serial = run([openssl, "x509", "-in", renewed, "-noout", "-serial"]).stdout
    assert serial != run([openssl, "x509", "-in", cert, "-noout", "-serial"]).stdout
    assert (pubkey_of(openssl, "x509", renewed) == pubkey_of(openssl, "x509", cert)) is not rekey


def test_simplereenroll_without_client_certificate_is_refused(
        curl: str, openssl: str, server: RunningServer, tmp_path: Path) -> None:
    """Basic alone is not the certificate being renewed (RFC 7030 4.2.2)."""
    key = make_key(openssl, tmp_path / "k.key")
    b64 = make_csr_b64(openssl, key, "/CN=no-cert", tmp_path / "r.b64")
    proc = run([curl, "-sS", "--max-time", CURL_TIMEOUT, "--cacert", server.trust,
                "--user", f"{USER}:{PASSWORD}", "--data", f"@{b64}", "-o", tmp_path / "body",
                "-w", "%{http_code}", "-H", "Content-Type: application/pkcs10",
                f"{server.url}/simplereenroll"], check=False)
    assert proc.returncode == 0 and proc.stdout in (b"400", b"403"), describe(proc, server)


def test_csrattrs(curl: str, openssl: str, server: RunningServer, tmp_path: Path) -> None:
    """RFC 7030 4.5.2: application/csrattrs, base64 of a DER SEQUENCE that
    openssl parses; the embedded P-256 CA asks for ecdsa-with-SHA256 and an
    EC key on prime256v1."""
    out = tmp_path / "csrattrs.b64"
    status, headers = curl_get(curl, server, "csrattrs", out)
    assert status == 200, out.read_bytes()
    assert headers["content-type"].split(";")[0].strip().lower() == "application/csrattrs"
    der = p7_b64_to_der(out)
    parsed = run([openssl, "asn1parse", "-inform", "DER", "-in", der]).stdout.decode()
    outer = re.match(r"\s*0:d=0\s+hl=(\d+)\s+l=\s*(\d+)\s+cons: SEQUENCE", parsed)
    assert outer, parsed
    assert int(outer[1]) + int(outer[2]) == der.stat().st_size, "one SEQUENCE, nothing after it"
    assert ":ecdsa-with-SHA256" in parsed
    assert ":id-ecPublicKey" in parsed and ":prime256v1" in parsed


def test_serverkeygen(curl: str, openssl: str, server: RunningServer, tmp_path: Path) -> None:
    """RFC 7030 4.4.2: multipart/mixed with an application/pkcs8 part and a
    certs-only part; the key matches the certificate, the subject is the
    CSR's, the chain verifies."""
    key = make_key(openssl, tmp_path / "placeholder.key")
    b64 = make_csr_b64(openssl, key, "/O=Example/CN=curl-serverkeygen", tmp_path / "skg.b64")
    out = tmp_path / "skg.body"
    status, headers = curl_post(curl, server, "serverkeygen", b64, out)
    assert status == 200, describe_body(out, server)
    content_type = headers["content-type"]
    assert content_type.lower().startswith("multipart/mixed")
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + out.read_bytes())
    assert message.is_multipart()
    payload = message.get_payload()
    assert isinstance(payload, list)
    parts: dict[str, email.message.Message] = {}
    for part in payload:
        assert isinstance(part, email.message.Message)
        parts[part.get_content_type()] = part
    assert set(parts) == {"application/pkcs8", "application/pkcs7-mime"}, list(parts)
    assert parts["application/pkcs7-mime"].get_param("smime-type") == "certs-only"

    key_der = tmp_path / "server-key.der"
    key_der.write_bytes(base64.b64decode(b"".join(_payload(parts["application/pkcs8"]).split()),
                                         validate=True))
    cert_p7 = tmp_path / "server-cert.p7"
    cert_p7.write_bytes(base64.b64decode(b"".join(_payload(parts["application/pkcs7-mime"]).split()),
                                         validate=True))
    certs = certs_from_pkcs7(openssl, cert_p7, "-inform", "DER")
    assert len(certs) == 1
    cert = tmp_path / "server-cert.pem"
    cert.write_bytes(certs[0])
    # The key is real PKCS#8 (openssl reads it as such) and belongs to the cert.
    run([openssl, "pkey", "-inform", "DER", "-in", key_der, "-noout", "-check"])
    assert run([openssl, "asn1parse", "-inform", "DER", "-in", key_der]).stdout.count(b"INTEGER") >= 1
    key_pub = pubkey_of(openssl, "pkey", key_der, "-inform", "DER")
    check_issued(openssl, server.trust, cert, pubkey=key_pub, subject="CN=curl-serverkeygen,O=Example")
    # RFC 7030 4.4.1: the server ignores the CSR's key.
    assert key_pub != pubkey_of(openssl, "req", tmp_path / "skg.csr.pem")


def _payload(part: email.message.Message) -> bytes:
    # compat32 gives the raw part body as text when decode=False.
    payload = part.get_payload(decode=False)
    assert isinstance(payload, str)
    return payload.encode("ascii")


def curl_post(curl: str, server: RunningServer, op: str, b64: Path, out: Path,
              *extra: str | Path, data_flag: str = "--data") -> tuple[int, dict[str, str]]:
    """POST a base64 CSR with Basic; returns status and headers. ``--data``
    strips newlines, ``--data-binary`` sends the file as it is."""
    headers = out.with_suffix(".headers")
    proc = run([curl, "-sS", "--max-time", CURL_TIMEOUT, "--cacert", server.trust,
                "--user", f"{USER}:{PASSWORD}", data_flag, f"@{b64}", "-D", headers, "-o", out,
                "-H", "Content-Type: application/pkcs10", *extra, f"{server.url}/{op}"], check=False)
    assert proc.returncode == 0, describe(proc, server)
    return parse_head(headers.read_bytes())


def describe_body(out: Path, server: RunningServer) -> str:
    return f"body: {out.read_bytes()[:500]!r}\nserver log:\n{server.log_text()}"


def test_tls_client_certificate_from_another_ca_is_not_authentication(
        curl: str, openssl: str, server: RunningServer, tmp_path: Path) -> None:
    """A self-signed client certificate must not authorize an enrollment
    (RFC 7030 3.3.2); the server answers 401 (asking for credentials)."""
    key = make_key(openssl, tmp_path / "self.key")
    cert = tmp_path / "self.pem"
    run([openssl, "req", "-x509", "-new", "-key", key, "-subj", "/CN=self-signed", "-days", "1",
         "-out", cert])
    b64 = make_csr_b64(openssl, key, "/CN=self-signed", tmp_path / "self.b64")
    proc = run([curl, "-sS", "--max-time", CURL_TIMEOUT, "--cacert", server.trust,
                "--cert", cert, "--key", key, "--data", f"@{b64}", "-o", tmp_path / "body",
                "-w", "%{http_code}", "-H", "Content-Type: application/pkcs10",
                f"{server.url}/simpleenroll"], check=False)
    assert proc.returncode == 0 and proc.stdout in (b"401", b"403"), describe(proc, server)
    # The subject helper still reads the refused cert (sanity of the fixture).
    assert subject_of(openssl, cert) == "CN=self-signed"
    with pytest.raises(AssertionError):
        verify_chain(openssl, server.trust, cert)


def test_wrapped_request_gets_wrapped_response(curl: str, openssl: str, server: RunningServer,
                                               tmp_path: Path) -> None:
    """``--data-binary`` keeps openssl's 64-column lines: the server takes
    them (RFC 8951 3.1: whitespace tolerated) and answers in 64-column lines
    too (the response line policy of EST-NOTES, for libest's base64 BIO)."""
    key = make_key(openssl, tmp_path / "w.key")
    b64 = make_csr_b64(openssl, key, "/O=Example/CN=curl-wrapped", tmp_path / "w.b64")
    out = tmp_path / "w-p7.b64"
    status, _ = curl_post(curl, server, "simpleenroll", b64, out, data_flag="--data-binary")
    assert status == 200, describe_body(out, server)
    lines = [line.rstrip(b"\r") for line in out.read_bytes().split(b"\n") if line]
    assert len(lines) > 1 and all(len(line) == 64 for line in lines[:-1]), lines[:3]
    # openssl's base64 BIO (what libest uses) reads it as it is.
    der = run([openssl, "base64", "-d", "-in", out]).stdout
    issued = tmp_path / "w.pem"
    issued.write_bytes(certs_from_pkcs7(openssl, _write(tmp_path / "w-p7.der", der), "-inform", "DER")[0])
    check_issued(openssl, server.trust, issued, pubkey=pubkey_of(openssl, "req", tmp_path / "w.csr.pem"),
                 subject="CN=curl-wrapped,O=Example")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
