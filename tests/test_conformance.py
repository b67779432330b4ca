"""Tests of the conformance suite (``estproto.conformance``).

The suite must be able to fail, so it runs against deliberately broken
servers as well as correct ones, all real servers on loopback with real TLS:

* correct: the embedded CA served by ``estproto.trio.serve`` (a label, HTTP
  users, every operation): every check passes, except ``pop.linked``, which
  is skipped because that server does not require linking;
* correct with PoP linking required (csrattrs lists challengePassword):
  ``pop.linked`` runs and passes;
* wraps base64 (``line_policy=WRAP_64``): ``base64.response-single-line``
  fails, and nothing else;
* skips PoP verification while advertising it (EST layer ``PoPPolicy.OFF``,
  CA ``REQUIRE``): ``pop.wrong-binding`` fails;
* refuses the CSRs its csrattrs asks for (PoP required, but the handler
  answers 400 to any CSR with a challengePassword): ``pop.linked`` fails;
* renews anything (no client certificate asked for, re-enrollment allowed
  without one, and the handler issues a renewal like an enrollment):
  ``reenroll.subject-mismatch`` fails;
* hand-written stdlib ``ssl`` servers: one that frames responses by closing
  (no Content-Length), one that speaks HTTP/1.0 and answers 500 to
  everything but /cacerts, one labelling /cacerts text/plain
  (``cacerts.response``), one sending a CSR as /cacerts and /csrattrs
  bodies under the right media types (``cacerts.decode``,
  ``csrattrs.decode``), and one keeping connections open that answers 500
  to a connection's second request (``http.keep-alive``).

Together these make every check FAIL somewhere.

Servers are module-scoped and each runs in its own thread (``trio.run`` for
estproto, ``socketserver`` threads for the raw ones); the suite itself runs
in the test's thread through :func:`estproto.conformance.main`.
"""

from __future__ import annotations

import json
import re
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import estproto
import estproto.trio as est_trio
from estproto import LinePolicyChoice
from estproto.auth import PoPPolicy
from estproto.ca import CASettings, EmbeddedCA
from estproto.codecs import pkcs7, pkcs10, transfer
from estproto.conformance import CHECKS, GROUPS, main

USER, PASSWORD = "conformance", "s3cret-pass"
LABEL = "lab"
START_TIMEOUT = 15.0
LINE_RE = re.compile(r"^(PASS|FAIL|SKIP) (\S+) \((RFC \d+ [\d.]+)\) (.*)$")
SUMMARY_RE = re.compile(r"^(\d+) passed, (\d+) failed, (\d+) skipped$")
ALL_IDS = [c.id for c in CHECKS]


# ---------------------------------------------------------------------------
# Servers


class TrioServer:
    """``estproto.trio.serve`` in a background thread running ``trio.run``."""

    def __init__(self, handler: Any, config: estproto.ServerConfig) -> None:
        self.handler, self.config = handler, config
        self.port = 0
        self._server: est_trio.ESTServer | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: trio.run(self._serve), daemon=True)

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        try:
            async with trio.open_nursery() as nursery:
                self._server = await nursery.start(
                    lambda task_status: est_trio.serve(self.handler, self.config, "127.0.0.1", 0,
                                                       task_status=task_status))
                self.port = self._server.port
                self._ready.set()
        finally:
            self._ready.set()

    def __enter__(self) -> TrioServer:
        self._thread.start()
        assert self._ready.wait(START_TIMEOUT) and self.port, "server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None and self._token is not None:
            trio.from_thread.run_sync(self._server.close, trio_token=self._token)
        self._thread.join(START_TIMEOUT)
        assert not self._thread.is_alive(), "server did not stop"


def _read_request(conn: ssl.SSLSocket) -> str | None:
    """Read one request (head and Content-Length body); its target, or None at EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    length = int(match.group(1)) if match else 0
    while len(body) < length:  # read it all: no reset before our answer
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head.split(b" ")[1].decode("latin-1")


class _RawHandler(socketserver.BaseRequestHandler):
    server: RawServer

    def handle(self) -> None:
        conn: ssl.SSLSocket = self.request
        conn.settimeout(5)
        try:
            target = _read_request(conn)
            if target is None:
                return
            conn.sendall(self.server.answer(target))
            reuse = self.server.on_reuse
            # Claiming keep-alive, the connection's next request gets *reuse*.
            if reuse is not None and _read_request(conn) is not None:
                conn.sendall(reuse)
            conn.unwrap()
        except (OSError, ValueError):
            pass


class RawServer(socketserver.ThreadingTCPServer):
    """A hand-written HTTPS server with broken framing or status lines.

    Args:
        ca: gives the TLS identity (the CA's server certificate) and /cacerts.
        version: the status line's HTTP version.
        content_length: send Content-Length (else frame by closing).
        other_status: the answer to everything but /cacerts.
        answers: hand-written ``(status line, Content-Type, body)`` by the
            last path segment, e.g. ``{"cacerts": ("200 OK", "text/plain", b"")}``.
        on_reuse: None: close after each answer (``Connection: close``);
            else keep the connection open and answer its second request with
            these bytes.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, ca: EmbeddedCA, *, version: str = "1.1", content_length: bool = True,
        other_status: int = 404, answers: dict[str, tuple[str, str, bytes]] | None = None,
        on_reuse: bytes | None = None,
    ) -> None:
        super().__init__(("127.0.0.1", 0), _RawHandler)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(ca.data_dir / "server.pem", ca.data_dir / "server.key")
        self.version, self.content_length, self.other_status = version, content_length, other_status
        self.answers, self.on_reuse = answers or {}, on_reuse
        self.cacerts = transfer.encode_base64(pkcs7.encode_certs_only(ca.ca_certificates))
        self.port = self.server_address[1]
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        sock.settimeout(5)
        try:
            return self.context.wrap_socket(sock, server_side=True), address
        except (OSError, ssl.SSLError):
            sock.close()
            raise

    def answer(self, target: str) -> bytes:
        op = target.rsplit("/", 1)[-1]
        if op in self.answers:
            status, ctype, body = self.answers[op]
        elif op == "cacerts":
            status, ctype, body = "200 OK", "application/pkcs7-mime", self.cacerts
        else:
            status, ctype, body = f"{self.other_status} Broken", "text/plain", b"broken server\n"
        head = f"HTTP/{self.version} {status}\r\nContent-Type: {ctype}\r\n"
        if self.on_reuse is None:
            head += "Connection: close\r\n"
        if self.content_length:
            head += f"Content-Length: {len(body)}\r\n"
        return head.encode("ascii") + b"\r\n" + body

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


# ---------------------------------------------------------------------------
# Fixtures


def _ca(directory: Path, settings: CASettings) -> EmbeddedCA:
    ca = EmbeddedCA.init(directory, hostnames=("127.0.0.1",), settings=settings)
    ca.add_user(USER, PASSWORD)
    return ca


@pytest.fixture(scope="module")
def plain_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCA]:
    ca = _ca(tmp_path_factory.mktemp("ca"), CASettings(labels=frozenset({LABEL})))
    yield ca
    ca.close()


@pytest.fixture(scope="module")
def pop_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCA]:
    # REQUIRE: csrattrs lists challengePassword (RFC 7030 4.5.2).
    ca = _ca(tmp_path_factory.mktemp("popca"), CASettings(pop_policy=PoPPolicy.REQUIRE))
    yield ca
    ca.close()


def _serve(ca: EmbeddedCA, **est: Any) -> TrioServer:
    config = estproto.ServerConfig(tls=ca.server_tls_context(), est=ca.est_settings(**est))
    return TrioServer(ca.handler(), config)


@pytest.fixture(scope="module")
def correct(plain_ca: EmbeddedCA) -> Iterator[TrioServer]:
    with _serve(plain_ca) as server:
        yield server


@pytest.fixture(scope="module")
def wrapping(plain_ca: EmbeddedCA) -> Iterator[TrioServer]:
    with _serve(plain_ca, line_policy=LinePolicyChoice.WRAP_64) as server:
        yield server


@pytest.fixture(scope="module")
def pop_required(pop_ca: EmbeddedCA) -> Iterator[TrioServer]:
    with _serve(pop_ca) as server:
        yield server


@pytest.fixture(scope="module")
def pop_unchecked(pop_ca: EmbeddedCA) -> Iterator[TrioServer]:
    # Advertises challengePassword (CA settings) but never verifies it.
    with _serve(pop_ca, pop_policy=PoPPolicy.OFF) as server:
        yield server


@pytest.fixture(scope="module")
def digest_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedCA, TrioServer]]:
    ca = _ca(tmp_path_factory.mktemp("digestca"), CASettings(accept_basic=False))
    with _serve(ca) as server:
        yield ca, server
    ca.close()


def _sloppy_handler(ca: EmbeddedCA) -> Any:
    """The CA's handler, broken in two places a typed response allows: a
    renewal crashes (500), and /serverkeygen sends a key that is not the
    certificate's."""
    inner = ca.handler()

    def handle(request: estproto.ServerRequest) -> estproto.ServerResponse:
        if isinstance(request, estproto.SimpleReenrollRequest):
            return estproto.ErrorResponse(500, "renewal crashed")
        response = inner(request)
        if isinstance(response, estproto.ServerKeygenResponse):
            return estproto.ServerKeygenResponse(
                response.certificate, private_key=ec.generate_private_key(ec.SECP256R1()))
        return response

    return handle


@pytest.fixture(scope="module")
def sloppy(plain_ca: EmbeddedCA) -> Iterator[TrioServer]:
    config = estproto.ServerConfig(tls=plain_ca.server_tls_context(), est=plain_ca.est_settings())
    with TrioServer(_sloppy_handler(plain_ca), config) as server:
        yield server


@pytest.fixture(scope="module")
def no_length(plain_ca: EmbeddedCA) -> Iterator[RawServer]:
    with RawServer(plain_ca, version="1.1", content_length=False, other_status=404) as server:
        yield server


@pytest.fixture(scope="module")
def http10_500(plain_ca: EmbeddedCA) -> Iterator[RawServer]:
    with RawServer(plain_ca, version="1.0", content_length=True, other_status=500) as server:
        yield server


def _csr_b64() -> bytes:
    """Base64 of a CSR: well-formed DER that is neither PKCS#7 nor CsrAttrs."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = pkcs10.build_csr(key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not-a-ca")]))
    return transfer.encode_base64(csr)


@pytest.fixture(scope="module")
def cacerts_as_text(plain_ca: EmbeddedCA) -> Iterator[RawServer]:
    # The right certificates, labelled text/plain.
    cacerts = transfer.encode_base64(pkcs7.encode_certs_only(plain_ca.ca_certificates))
    with RawServer(plain_ca, answers={"cacerts": ("200 OK", "text/plain", cacerts)}) as server:
        yield server


@pytest.fixture(scope="module")
def wrong_bodies(plain_ca: EmbeddedCA) -> Iterator[RawServer]:
    # The right media types around a CSR instead of certs-only / CsrAttrs.
    body = _csr_b64()
    answers = {"cacerts": ("200 OK", "application/pkcs7-mime", body),
               "csrattrs": ("200 OK", "application/csrattrs", body)}
    with RawServer(plain_ca, answers=answers) as server:
        yield server


@pytest.fixture(scope="module")
def breaks_on_reuse(plain_ca: EmbeddedCA) -> Iterator[RawServer]:
    # Keeps the connection open (no Connection: close), then fails its
    # second request with a 500.
    reason = b"connection reuse broke\n"
    on_reuse = (b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(reason), reason))
    with RawServer(plain_ca, on_reuse=on_reuse) as server:
        yield server


@pytest.fixture(scope="module")
def garbage_on_reuse(plain_ca: EmbeddedCA) -> Iterator[RawServer]:
    # Keeps the connection open, then answers its second request with bytes
    # that are not HTTP. The client must report that, not silently reconnect
    # (it resends only when a reused connection closed before any response).
    with RawServer(plain_ca, on_reuse=b"this is not an HTTP response\r\n\r\n") as server:
        yield server


def _refuses_linked_handler(ca: EmbeddedCA) -> Any:
    """The CA's handler refusing every CSR carrying a challengePassword:
    the very CSRs its own csrattrs (challengePassword, PoP required) asks for."""
    inner = ca.handler()

    def handle(request: estproto.ServerRequest) -> estproto.ServerResponse:
        if isinstance(request, estproto.SimpleEnrollRequest) and request.csr.challenge_password is not None:
            return estproto.ErrorResponse(400, "challengePassword attribute not supported")
        return inner(request)

    return handle


@pytest.fixture(scope="module")
def refuses_linked(pop_ca: EmbeddedCA) -> Iterator[TrioServer]:
    # The EST layer still requires and verifies the binding (a wrong one is
    # refused before the handler); the handler then refuses the right one.
    config = estproto.ServerConfig(tls=pop_ca.server_tls_context(), est=pop_ca.est_settings())
    with TrioServer(_refuses_linked_handler(pop_ca), config) as server:
        yield server


def _renews_anything_handler(ca: EmbeddedCA) -> Any:
    """The CA's handler issuing every renewal as a new enrollment of the
    authenticated user, whatever the subject (no certificate to compare)."""
    inner = ca.handler()

    def handle(request: estproto.ServerRequest) -> estproto.ServerResponse:
        if isinstance(request, estproto.SimpleReenrollRequest):
            decision = ca.authorize(request)  # the user's password, as for enrollment
            if isinstance(decision, estproto.ServerResponse):
                return decision
            return ca.enroll(estproto.SimpleEnrollRequest(
                label=request.label, credentials=request.credentials, facts=request.facts,
                is_ra=request.is_ra, user_agent=request.user_agent, target=request.target,
                csr=request.csr, pop_linked=request.pop_linked), decision)
        return inner(request)

    return handle


@pytest.fixture(scope="module")
def renews_anything(plain_ca: EmbeddedCA) -> Iterator[TrioServer]:
    # Never asks for a client certificate and lets /simplereenroll through
    # without one, so the EST layer has no certificate to hold the CSR to.
    key = serialization.load_pem_private_key((plain_ca.data_dir / "server.key").read_bytes(), None)
    tls = estproto.ServerTLSContext([plain_ca.server_certificate], key,  # type: ignore[arg-type]
                                    request_client_certificate=False)
    config = estproto.ServerConfig(
        tls=tls, est=plain_ca.est_settings(reenroll_requires_certificate=False))
    with TrioServer(_renews_anything_handler(plain_ca), config) as server:
        yield server


@pytest.fixture(autouse=True)
def _password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESTPROTO_PASSWORD", PASSWORD)


# ---------------------------------------------------------------------------
# Running the suite


class Report:
    def __init__(self, code: int, out: str) -> None:
        self.code, self.out = code, out
        self.lines: dict[str, tuple[str, str, str]] = {}
        self.summary: tuple[int, int, int] | None = None
        for line in out.splitlines():
            m = LINE_RE.match(line)
            if m:
                self.lines[m.group(2)] = (m.group(1), m.group(3), m.group(4))
            elif (s := SUMMARY_RE.match(line)) is not None:
                self.summary = (int(s.group(1)), int(s.group(2)), int(s.group(3)))

    def having(self, result: str) -> set[str]:
        return {k for k, v in self.lines.items() if v[0] == result}


def run_suite(capsys: pytest.CaptureFixture[str], ca: EmbeddedCA, port: int, *extra: str) -> Report:
    capsys.readouterr()
    code = main([f"https://127.0.0.1:{port}", "--cacert", str(ca.data_dir / "ca.pem"),
                 "--user", USER, "--timeout", "5", *extra])
    out = capsys.readouterr().out
    report = Report(code, out)
    assert report.summary is not None, out
    return report


def test_correct_server_passes_everything(
    capsys: pytest.CaptureFixture[str], correct: TrioServer, plain_ca: EmbeddedCA, tmp_path: Path,
) -> None:
    out_json = tmp_path / "results.json"
    report = run_suite(capsys, plain_ca, correct.port, "--label", LABEL, "--json", str(out_json))
    assert set(report.lines) == set(ALL_IDS), report.out
    # The one justified SKIP: this server does not require PoP linking.
    assert report.having("SKIP") == {"pop.linked"}, report.out
    assert report.having("FAIL") == set(), report.out
    assert report.summary == (len(ALL_IDS) - 1, 0, 1)
    assert report.code == 0
    assert f"{len(ALL_IDS) - 1} passed, 0 failed, 1 skipped" in report.out.splitlines()
    # Every line names its RFC section, as registered.
    sections = {c.id: c.section for c in CHECKS}
    assert all(v[1] == sections[k] for k, v in report.lines.items())
    data = json.loads(out_json.read_text())
    assert [d["id"] for d in data] == ALL_IDS
    assert {d["result"] for d in data} == {"PASS", "SKIP"}
    assert set(data[0]) == {"id", "section", "result", "detail"}
    # What was seen is reported, not just a verdict.
    assert "single-line" in report.lines["base64.response-single-line"][2]
    assert "401 offering" in report.lines["auth.challenge"][2]
    assert "one connection" in report.lines["http.keep-alive"][2]


def test_pop_linking_required_server_passes(
    capsys: pytest.CaptureFixture[str], pop_required: TrioServer, pop_ca: EmbeddedCA,
) -> None:
    report = run_suite(capsys, pop_ca, pop_required.port, "--only", "pop", "enroll", "csrattrs")
    assert report.having("FAIL") == set(), report.out
    assert report.having("SKIP") == set(), report.out
    assert {"pop.linked", "pop.wrong-binding", "enroll.issued"} <= report.having("PASS")
    assert report.code == 0


def test_digest_only_server_is_answered(
    capsys: pytest.CaptureFixture[str], digest_only: tuple[EmbeddedCA, TrioServer],
) -> None:
    # Basic goes up front and is refused; the suite answers the Digest
    # challenge, for raw requests too.
    ca, server = digest_only
    report = run_suite(capsys, ca, server.port, "--only", "enroll", "auth", "reenroll")
    assert report.having("FAIL") == set() and report.having("SKIP") == set(), report.out
    assert "basic" not in report.lines["auth.challenge"][2]
    assert report.code == 0


def test_wrapping_server_fails_single_line_check(
    capsys: pytest.CaptureFixture[str], wrapping: TrioServer, plain_ca: EmbeddedCA,
) -> None:
    report = run_suite(capsys, plain_ca, wrapping.port, "--only", "base64", "cacerts")
    assert report.having("FAIL") == {"base64.response-single-line"}, report.out
    assert "wrapped" in report.lines["base64.response-single-line"][2]
    assert report.code == 1
    assert report.summary is not None and report.summary[1] == 1


def test_unchecked_pop_server_fails_wrong_binding(
    capsys: pytest.CaptureFixture[str], pop_unchecked: TrioServer, pop_ca: EmbeddedCA,
) -> None:
    report = run_suite(capsys, pop_ca, pop_unchecked.port, "--only", "pop")
    assert report.having("FAIL") == {"pop.wrong-binding"}, report.out
    assert "challengePassword" in report.lines["pop.wrong-binding"][2]
    # The linked enrollment itself still works on that server.
    assert report.lines["pop.linked"][0] == "PASS"
    assert report.code == 1


def test_sloppy_handler_fails_renewal_and_key_match(
    capsys: pytest.CaptureFixture[str], sloppy: TrioServer, plain_ca: EmbeddedCA,
) -> None:
    report = run_suite(capsys, plain_ca, sloppy.port, "--only", "reenroll", "serverkeygen")
    assert report.having("FAIL") == {"reenroll.renew", "serverkeygen.key-match"}, report.out
    assert "500" in report.lines["reenroll.renew"][2]
    assert "no certificate in the response holds the generated key" in (
        report.lines["serverkeygen.key-match"][2])
    # The EST layer still refuses a mismatching subject before the handler.
    assert {"reenroll.subject-mismatch", "serverkeygen.response"} <= report.having("PASS")
    assert report.code == 1


def test_no_content_length_server_fails_framing(
    capsys: pytest.CaptureFixture[str], no_length: RawServer, plain_ca: EmbeddedCA,
) -> None:
    report = run_suite(capsys, plain_ca, no_length.port, "--label", LABEL)
    failed = report.having("FAIL")
    assert "http.content-length" in failed, report.out
    assert "read until close" in report.lines["http.content-length"][2]
    # /cacerts itself is served correctly apart from framing.
    assert {"http.status-line", "cacerts.response", "cacerts.decode", "http.keep-alive",
            "labels.unknown-op", "csrattrs.response", "base64.response-single-line",
            } <= report.having("PASS"), report.out
    # It answers /cacerts for any path ending in it, "simpleenroll" label too.
    assert "labels.op-name-label" in failed
    # Every enrollment is answered 404: each check that needs one fails (a
    # 404 is no refusal of a bad request, nor a key-type policy).
    assert {"enroll.response", "enroll.issued", "base64.request-wrapped",
            "base64.request-single-line", "base64.request-no-newline", "base64.request-no-cte",
            "auth.challenge", "labels.labelled", "labels.wrong-method", "keys.p256", "keys.p384",
            "keys.ed25519", "keys.rsa2048", "pop.wrong-binding", "concurrency.parallel-enroll",
            "errors.bad-signature", "errors.garbage-der", "errors.garbage-base64",
            "errors.oversized"} <= failed, report.out
    # ... and what depends on an issued certificate is skipped, saying why.
    assert {"reenroll.renew", "reenroll.subject-mismatch"} <= report.having("SKIP")
    assert report.code == 1


def test_http10_500_server_fails_status_line_and_errors(
    capsys: pytest.CaptureFixture[str], http10_500: RawServer, plain_ca: EmbeddedCA,
) -> None:
    report = run_suite(capsys, plain_ca, http10_500.port, "--only", "http", "errors", "labels",
                       "keys", "serverkeygen", "fullcmc", "csrattrs")
    failed = report.having("FAIL")
    assert {"http.status-line", "errors.bad-signature", "errors.garbage-der",
            "errors.garbage-base64", "errors.oversized", "labels.op-name-label",
            "labels.unknown-op", "labels.wrong-method", "keys.p256", "serverkeygen.response",
            "fullcmc.response", "csrattrs.response"} <= failed, report.out
    assert "HTTP/1.0" in report.lines["http.status-line"][2]
    assert "500" in report.lines["errors.garbage-der"][2]
    # Content-Length is there and the connection-per-request server still
    # answers all 20 requests.
    assert {"http.content-length", "http.keep-alive"} <= report.having("PASS"), report.out
    assert report.code == 1


def test_cacerts_as_text_server_fails_cacerts_response(
    capsys: pytest.CaptureFixture[str], cacerts_as_text: RawServer, plain_ca: EmbeddedCA,
) -> None:
    report = run_suite(capsys, plain_ca, cacerts_as_text.port, "--only", "cacerts")
    assert report.having("FAIL") == {"cacerts.response"}, report.out
    assert "'text/plain'" in report.lines["cacerts.response"][2]
    # The body itself is a good certs-only PKCS#7.
    assert report.lines["cacerts.decode"][0] == "PASS", report.out
    assert report.code == 1


def test_wrong_bodies_server_fails_cacerts_and_csrattrs_decode(
    capsys: pytest.CaptureFixture[str], wrong_bodies: RawServer, plain_ca: EmbeddedCA,
) -> None:
    report = run_suite(capsys, plain_ca, wrong_bodies.port, "--only", "cacerts", "csrattrs")
    assert report.having("FAIL") == {"cacerts.decode", "csrattrs.decode"}, report.out
    assert "not a certs-only PKCS#7" in report.lines["cacerts.decode"][2]
    assert "not a CsrAttrs SEQUENCE" in report.lines["csrattrs.decode"][2]
    # Status and media types are right; only the contents are wrong.
    assert report.having("PASS") == {"cacerts.response", "csrattrs.response"}, report.out
    assert report.code == 1


def test_breaks_on_reuse_server_fails_keep_alive(
    capsys: pytest.CaptureFixture[str], breaks_on_reuse: RawServer, plain_ca: EmbeddedCA,
) -> None:
    report = run_suite(capsys, plain_ca, breaks_on_reuse.port, "--only", "http", "cacerts")
    assert report.having("FAIL") == {"http.keep-alive"}, report.out
    assert "request 2 answered 500" in report.lines["http.keep-alive"][2]
    # One request per connection is answered correctly.
    assert {"http.status-line", "http.content-length", "cacerts.response",
            "cacerts.decode"} <= report.having("PASS"), report.out
    assert report.code == 1


def test_garbage_on_reuse_server_fails_keep_alive(
    capsys: pytest.CaptureFixture[str], garbage_on_reuse: RawServer, plain_ca: EmbeddedCA,
) -> None:
    report = run_suite(capsys, plain_ca, garbage_on_reuse.port, "--only", "http")
    assert "http.keep-alive" in report.having("FAIL"), report.out
    assert report.code == 1


def test_refusing_linked_csrs_server_fails_pop_linked(
    capsys: pytest.CaptureFixture[str], refuses_linked: TrioServer, pop_ca: EmbeddedCA,
) -> None:
    report = run_suite(capsys, pop_ca, refuses_linked.port, "--only", "pop")
    assert report.having("FAIL") == {"pop.linked"}, report.out
    assert "challengePassword attribute not supported" in report.lines["pop.linked"][2]
    # A wrong binding is still refused (by the EST layer, before the handler).
    assert report.lines["pop.wrong-binding"][0] == "PASS", report.out
    assert report.code == 1


def test_renews_anything_server_fails_subject_mismatch(
    capsys: pytest.CaptureFixture[str], renews_anything: TrioServer, plain_ca: EmbeddedCA,
) -> None:
    report = run_suite(capsys, plain_ca, renews_anything.port, "--only", "reenroll")
    assert report.having("FAIL") == {"reenroll.subject-mismatch"}, report.out
    assert "different subject was issued" in report.lines["reenroll.subject-mismatch"][2]
    assert report.lines["reenroll.renew"][0] == "PASS", report.out
    assert report.code == 1


def test_client_certificate_options(
    capsys: pytest.CaptureFixture[str], correct: TrioServer, plain_ca: EmbeddedCA,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # --cert/--key without --user: re-enrollment uses that certificate (with
    # its subjectAltName, which the renewal CSR must repeat: RFC 7030 4.2.2).
    key = ec.generate_private_key(ec.SECP256R1())
    csr = pkcs10.build_csr(key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")]),
                           subject_alt_names=[x509.DNSName("device.example")])

    async def enroll() -> x509.Certificate:
        tls = estproto.ClientTLSContext(trust_anchors=plain_ca.ca_certificates)
        creds = estproto.Credentials(USER, PASSWORD, preemptive_basic=True)
        async with est_trio.ESTClient("127.0.0.1", correct.port, tls, credentials=creds) as client:
            return await client.simpleenroll(csr)

    cert = trio.run(enroll)
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    monkeypatch.delenv("ESTPROTO_PASSWORD")
    capsys.readouterr()
    code = main([f"https://127.0.0.1:{correct.port}", "--cacert", str(plain_ca.data_dir / "ca.pem"),
                 "--cert", str(tmp_path / "c.pem"), "--key", str(tmp_path / "k.pem"),
                 "--only", "reenroll", "auth"])
    report = Report(code, capsys.readouterr().out)
    assert report.having("PASS") == {"reenroll.renew", "reenroll.subject-mismatch",
                                     "auth.challenge"}, report.out
    assert code == 0


# ---------------------------------------------------------------------------
# Command line


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], plain_ca: EmbeddedCA,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    cacert = str(plain_ca.data_dir / "ca.pem")
    assert main(["http://127.0.0.1:1", "--cacert", cacert]) == 2
    assert main(["https://127.0.0.1:1/other", "--cacert", cacert]) == 2
    assert main(["https://127.0.0.1:1"]) == 2  # no trust anchors
    assert main(["https://127.0.0.1:1", "--cacert", cacert, "--only", "nosuch"]) == 2
    assert main(["https://127.0.0.1:1", "--cacert", cacert, "--cert", cacert]) == 2
    monkeypatch.delenv("ESTPROTO_PASSWORD")
    assert main(["https://127.0.0.1:1", "--cacert", cacert, "--user", USER]) == 2
    # Nothing listens: a connection error, not a list of FAILs.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    capsys.readouterr()
    assert main([f"https://127.0.0.1:{port}", "--cacert", cacert, "--timeout", "2"]) == 2
    captured = capsys.readouterr()
    assert "cannot reach" in captured.err and "passed" not in captured.out


def test_insecure_bootstrap_and_module_entry_point(
    correct: TrioServer, tmp_path: Path,
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "estproto.conformance", f"https://127.0.0.1:{correct.port}",
         "--insecure", "--only", "cacerts", "labels", "--json", "-"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("PASS cacerts.decode (RFC 7030 4.1.3) ") for line in lines)
    # No --label: the labelled-path check says why it was skipped.
    assert any(line.startswith("SKIP labels.labelled ") and "--label" in line for line in lines)
    assert "5 passed, 0 failed, 1 skipped" in lines
    data = json.loads(proc.stdout[proc.stdout.index("["):])
    assert len(data) == 6


def test_every_group_selectable() -> None:
    assert set(GROUPS) == {c.group for c in CHECKS}
    assert len(ALL_IDS) == len(set(ALL_IDS))
    assert all(re.fullmatch(r"RFC \d+ [\d.]+", c.section) for c in CHECKS)


def test_estproto_conformance_command_is_wired() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "estproto", "conformance", "--help"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "url" in result.stdout and "--cacert" in result.stdout
