"""The fuzzing example (examples/fuzz_est_server.py) against real servers on loopback.

The fuzzer must be quiet on a correct server and loud on broken ones:

* the embedded CA served by ``estproto.trio.serve`` (users, every
  operation): zero findings over a fixed seed;
* the same CA behind a handler that crashes on every enrollment (the
  adapter answers 500): ``server-error`` findings;
* a hand-written stdlib ``http.server`` + ``ssl`` server answering 200 to
  everything (an independent peer, not estproto): ``accepted-invalid``
  findings, and nothing else, because it answers every request;
* a Digest-only CA: the fuzzer answers the challenge (enrollments get
  past 401 and reach the CSR parser);
* the command line, run as a user would (a subprocess), exits 0 and prints
  the summary line.

Plus the two pure parts: the case sequence is a function of the seed, and
the oracle's validity check tells a valid CSR from a broken one.

Servers run in the test's own ``trio.run`` (estproto) or a thread
(stdlib); each test stops what it starts.
"""

from __future__ import annotations

import http.server
import os
import re
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import pytest
import trio
import trustme
from cryptography import x509

import estproto
import estproto.trio as est_trio
from estproto import ClientTLSContext
from estproto.ca import CASettings, EmbeddedCA
from estproto.client import Credentials
from estproto.codecs import transfer
from examples_helper import EXAMPLES, load_example

USER, PASSWORD = "fuzzer", "fuzz-pass"
SEED = 20240
#: No test may run longer than this (seconds): a hang fails the test.
DEADLINE = 30.0
SUMMARY_RE = re.compile(r"^(\d+) requests, (\d+) findings$")



fuzzer = load_example("fuzz_est_server")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCA]:
    ca = EmbeddedCA.init(tmp_path_factory.mktemp("fuzzca"), hostnames=("127.0.0.1",))
    ca.add_user(USER, PASSWORD)
    yield ca
    ca.close()


def _anchors(ca: EmbeddedCA) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates((ca.data_dir / "ca.pem").read_bytes())


def _target(port: int, anchors: list[x509.Certificate], timeout: float = 5.0) -> Any:
    return fuzzer.Target("127.0.0.1", port, ClientTLSContext(trust_anchors=anchors),
                         Credentials(USER, PASSWORD, preemptive_basic=True), timeout)


def _with_estproto_server(ca: EmbeddedCA, handler: Any, body: Callable[[int], Awaitable[Any]]) -> Any:
    """Serve *handler* with the CA's TLS on 127.0.0.1, run *body(port)*, stop."""
    config = estproto.ServerConfig(tls=ca.server_tls_context(), est=ca.est_settings())
    outcome: list[Any] = []

    async def scenario() -> None:
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                server = await nursery.start(est_trio.serve, handler, config, "127.0.0.1", 0)
                try:
                    outcome.append(await body(server.port))
                finally:
                    server.close()

    trio.run(scenario)
    return outcome[0]


# ---------------------------------------------------------------------------
# Pure parts


def test_cases_depend_on_the_seed_only() -> None:
    def shape(seed: int) -> list[tuple[str, str, str, str, tuple[str, ...]]]:
        maker = fuzzer.CaseMaker(seed)
        return [(c.mutation, c.op, c.method, c.target, tuple(k for k, _ in c.headers))
                for c in map(maker.case, range(1, 61))]

    assert shape(SEED) == shape(SEED)
    assert shape(SEED) != shape(SEED + 1)
    # One run covers every kind of mutation and every operation.
    cases = [fuzzer.CaseMaker(SEED).case(n) for n in range(1, 201)]
    assert {c.mutation for c in cases} == {
        "der-bitflip", "der-truncate", "der-append", "b64-badchar", "b64-padding",
        "b64-linebreaks", "b64-nul", "content-type", "transfer-encoding", "method", "path",
        "oversized-header", "oversized-body", "empty-body"}
    assert {c.op for c in cases} == set(fuzzer.OPERATIONS)


def test_validity_check_tells_valid_from_broken() -> None:
    maker = fuzzer.CaseMaker(SEED)
    csr = maker.csr
    ok = transfer.encode_base64(csr, transfer.WRAP_64)
    assert fuzzer.could_be_valid("simpleenroll", ok)
    assert fuzzer.could_be_valid("fullcmc", transfer.encode_base64(maker.cmc))
    # Lenient readings a real server may apply are still valid ...
    assert fuzzer.could_be_valid("simpleenroll", ok.replace(b"\n", b"\r\n\t"))
    assert fuzzer.could_be_valid("simpleenroll", csr)  # raw DER
    assert fuzzer.could_be_valid("simpleenroll", b"!" + ok)  # RFC 2045 6.8
    assert fuzzer.could_be_valid("simpleenroll", transfer.encode_base64(csr + b"\x00\x00"))
    # ... a broken signature, a truncation or nothing at all is not.
    flipped = csr[:-3] + bytes([csr[-3] ^ 1]) + csr[-2:]
    assert not fuzzer.could_be_valid("simpleenroll", transfer.encode_base64(flipped))
    # serverkeygen ignores the CSR's signature (RFC 7030 4.4.1).
    assert fuzzer.could_be_valid("serverkeygen", transfer.encode_base64(flipped))
    assert not fuzzer.could_be_valid("simpleenroll", transfer.encode_base64(csr[:40]))
    assert not fuzzer.could_be_valid("simpleenroll", b"")
    assert not fuzzer.could_be_valid("fullcmc", ok)  # a CSR is not a Full PKI Request


# ---------------------------------------------------------------------------
# Against servers


def test_correct_server_gives_no_findings(ca: EmbeddedCA) -> None:
    anchors = _anchors(ca)

    async def run(port: int) -> Any:
        return await fuzzer.fuzz(_target(port, anchors), iterations=80, seed=SEED)

    started = time.monotonic()
    result = _with_estproto_server(ca, ca.handler(), run)
    assert [str(f) for f in result.findings] == []
    assert result.requests >= 80 + 8  # every case plus a check every 10
    assert time.monotonic() - started < DEADLINE


def test_crashing_handler_is_found(ca: EmbeddedCA) -> None:
    inner = ca.handler()

    def crashing(request: estproto.ServerRequest) -> estproto.ServerResponse:
        if isinstance(request, (estproto.CACertsRequest, estproto.CSRAttrsRequest)):
            return inner(request)
        raise RuntimeError("enrollment backend crashed")  # the adapter answers 500

    anchors = _anchors(ca)

    async def run(port: int) -> Any:
        return await fuzzer.fuzz(_target(port, anchors), iterations=60, seed=SEED)

    result = _with_estproto_server(ca, crashing, run)
    kinds = {f.kind for f in result.findings}
    assert kinds == {fuzzer.SERVER_ERROR}, [str(f) for f in result.findings]
    # Only requests that reach the handler crash it: valid enrollments.
    for finding in result.findings:
        assert finding.case.op in fuzzer.ENROLL_OPS
        assert finding.detail.startswith("500")


def test_digest_challenge_is_answered(tmp_path: Path) -> None:
    # A Digest-only server: without an answer to its challenge every
    # enrollment would stop at 401 and the CSR parser would never be reached.
    digest_ca = EmbeddedCA.init(tmp_path / "ca", hostnames=("127.0.0.1",),
                                settings=CASettings(accept_basic=False))
    try:
        digest_ca.add_user(USER, PASSWORD)
        anchors = _anchors(digest_ca)
        method, path, headers, body = fuzzer.CaseMaker(SEED).valid("simpleenroll")

        async def run(port: int) -> Any:
            return await fuzzer.send(_target(port, anchors), method, path, headers, body)

        response = _with_estproto_server(digest_ca, digest_ca.handler(), run)
    finally:
        digest_ca.close()
    assert response.status == 200


class _YesHandler(http.server.BaseHTTPRequestHandler):
    """Reads the request, answers 200 whatever it was."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = b"OK\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_FUZZ = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def yes_server() -> Iterator[tuple[int, trustme.CA]]:
    authority = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _YesHandler)
    httpd.daemon_threads = True
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], authority
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
        assert not thread.is_alive()


def test_server_accepting_everything_is_found(yes_server: tuple[int, trustme.CA]) -> None:
    port, authority = yes_server
    anchors = [x509.load_pem_x509_certificate(authority.cert_pem.bytes())]

    async def run() -> Any:
        with trio.fail_after(DEADLINE):
            return await fuzzer.fuzz(_target(port, anchors), iterations=60, seed=SEED)

    result = trio.run(run)
    by_kind: dict[str, list[Any]] = {}
    for finding in result.findings:
        by_kind.setdefault(finding.kind, []).append(finding)
    assert set(by_kind) == {fuzzer.ACCEPTED_INVALID}, [str(f) for f in result.findings]
    # Every flagged body really is broken, and a broken CSR is among them.
    for finding in by_kind[fuzzer.ACCEPTED_INVALID]:
        assert not fuzzer.could_be_valid(finding.case.op, finding.case.body)
    assert {"der-bitflip", "der-truncate"} & {f.case.mutation for f in result.findings}


def test_command_line_runs_and_summarises(ca: EmbeddedCA) -> None:
    env = dict(os.environ, ESTPROTO_PASSWORD=PASSWORD)

    async def run(port: int) -> Any:
        return await trio.run_process(
            [sys.executable, str(EXAMPLES / "fuzz_est_server.py"), f"https://127.0.0.1:{port}",
             "--cacert", str(ca.data_dir / "ca.pem"), "--user", USER,
             "--iterations", "6", "--seed", "3", "--timeout", "5"],
            env=env, capture_stdout=True, capture_stderr=True, check=False)

    proc = _with_estproto_server(ca, ca.handler(), run)
    out = proc.stdout.decode()
    assert proc.returncode == 0, (out, proc.stderr.decode())
    last = out.strip().splitlines()[-1]
    match = SUMMARY_RE.match(last)
    assert match is not None, out
    assert int(match.group(1)) >= 6 + 2 and match.group(2) == "0"


def test_command_line_refuses_a_server_that_is_not_there(tmp_path: Path, ca: EmbeddedCA) -> None:
    # A closed port: nothing to fuzz, a usage-class error (exit 2).
    code = fuzzer.main(["https://127.0.0.1:9", "--cacert", str(ca.data_dir / "ca.pem"),
                        "--iterations", "1", "--timeout", "2"])
    assert code == 2
