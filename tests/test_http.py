"""Tests for estproto._http: h11 with our limits.

Wire cases are a table (h11's tests/test_io.py SIMPLE_CASES style); each one is
fed whole and one byte at a time and must give the same result. Independent
peers check both sides: raw ``h11.Connection`` and stdlib ``http.client``
against our server, raw h11 and hand-written libest-style bytes against our
client.
"""

from __future__ import annotations

import email.utils
import http.client
import io
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import h11
import pytest
from hypothesis import given, strategies as st

from estproto import LocalProtocolError, RemoteProtocolError
from estproto._http import (
    MAX_HEAD_SIZE,
    NEED_BYTES,
    PeerClosed,
    HTTPClient,
    HTTPLimits,
    HTTPServer,
    Request,
    Response,
)

SMALL = HTTPLimits(max_head_size=256, max_body_size=64, max_headers=8)

Outcome = Union[Request, PeerClosed, RemoteProtocolError, str]


def ok_response(request: Request) -> Response:
    body = f"{request.method} {request.target} {len(request.body)}".encode()
    return Response(200, (("Content-Type", "text/plain"),), body)


@dataclass
class Run:
    events: list[Outcome] = field(default_factory=list)
    output: bytes = b""


def drive(
    server: HTTPServer,
    chunks: list[bytes],
    respond: Callable[[Request], Response] = ok_response,
) -> Run:
    """Feed *chunks*, answer every request; stop at the first error/close."""
    run = Run()
    out: list[bytes] = []
    for chunk in chunks:
        server.receive_data(chunk)
        while True:
            try:
                event = server.next_request()
            except RemoteProtocolError as exc:
                run.events.append(exc)
                run.output = b"".join(out)
                return run
            if event is NEED_BYTES:
                out.append(server.data_to_send())
                break
            run.events.append(event)
            if isinstance(event, PeerClosed):
                run.output = b"".join(out)
                return run
            out.append(server.send_response(respond(event)))
    run.events.append("need-data")
    run.output = b"".join(out)
    return run


def bytewise(chunks: list[bytes]) -> list[bytes]:
    data = b"".join(chunks)
    split = [data[i : i + 1] for i in range(len(data))]
    return split + ([b""] if chunks and chunks[-1] == b"" else [])


def summary(events: list[Outcome]) -> list[Any]:
    out: list[Any] = []
    for e in events:
        if isinstance(e, Request):
            out.append((e.method, e.target, e.body, e.http_version))
        elif isinstance(e, PeerClosed):
            out.append("closed")
        elif isinstance(e, RemoteProtocolError):
            out.append(("error", e.error_status_hint))
        else:
            out.append(e)
    return out


def status_lines(output: bytes) -> list[bytes]:
    # Bodies here never contain "HTTP/1.1 ".
    return re.findall(rb"HTTP/1\.1 \d{3} [^\r]*", output)


GET = b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: est\r\n\r\n"
POST = (
    b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: est\r\n"
    b"Content-Type: application/pkcs10\r\nContent-Length: 5\r\n\r\nMIIB\n"
)
CHUNKED = (
    b"POST /c HTTP/1.1\r\nHost: est\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n"
)
R_GET = ("GET", "/.well-known/est/cacerts", b"", "1.1")
R_POST = ("POST", "/.well-known/est/simpleenroll", b"MIIB\n", "1.1")

# (id, chunks, limits, expected summary, expected status lines)
SIMPLE_CASES: list[tuple[str, list[bytes], HTTPLimits, list[Any], int]] = [
    ("get", [GET], SMALL, [R_GET, "need-data"], 1),
    ("post", [POST], SMALL, [R_POST, "need-data"], 1),
    ("keepalive-3", [GET, POST, GET], SMALL, [R_GET, R_POST, R_GET, "need-data"], 3),
    ("pipelined-3", [GET + POST + GET], SMALL, [R_GET, R_POST, R_GET, "need-data"], 3),
    ("eof-between", [GET, b""], SMALL, [R_GET, "closed"], 1),
    ("eof-at-start", [b""], SMALL, ["closed"], 0),
    (
        "connection-close",
        [b"GET / HTTP/1.1\r\nHost: e\r\nConnection: keep-alive, close\r\n\r\n" + GET],
        SMALL,
        [("GET", "/", b"", "1.1"), "closed"],
        1,
    ),
    ("http10", [b"GET / HTTP/1.0\r\n\r\n" + GET], SMALL, [("GET", "/", b"", "1.0"), "closed"], 1),
    ("chunked", [CHUNKED], SMALL, [("POST", "/c", b"abcde", "1.1"), "need-data"], 1),
    (
        "head-over-limit",
        [b"GET / HTTP/1.1\r\nHost: e\r\nX: " + b"a" * 300 + b"\r\n\r\n"],
        SMALL,
        [("error", 431)],
        0,
    ),
    (
        "pipelined-head-over-limit",
        [GET + b"GET / HTTP/1.1\r\nHost: e\r\nX: " + b"a" * 300 + b"\r\n\r\n"],
        SMALL,
        [R_GET, ("error", 431)],
        1,
    ),
    (
        "content-length-over-limit-no-body-sent",
        [b"POST / HTTP/1.1\r\nHost: e\r\nContent-Length: 65\r\n\r\n"],
        SMALL,
        [("error", 413)],
        0,
    ),
    (
        "chunked-over-limit",
        [b"POST / HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\n\r\n"
         + b"20\r\n" + b"x" * 32 + b"\r\n" + b"21\r\n" + b"y" * 33 + b"\r\n0\r\n\r\n"],
        SMALL,
        [("error", 413)],
        0,
    ),
    (
        "too-many-headers",
        [b"GET / HTTP/1.1\r\nHost: e\r\n" + b"".join(b"X%d: 1\r\n" % i for i in range(8)) + b"\r\n"],
        SMALL,
        [("error", 431)],
        0,
    ),
    ("eof-mid-head", [GET[:20], b""], SMALL, [("error", 400)], 0),
    ("eof-mid-body", [POST[:-2], b""], SMALL, [("error", 400)], 0),
    ("eof-mid-chunked", [CHUNKED[:-7], b""], SMALL, [("error", 400)], 0),
    ("bad-request-line", [b"GET\r\n\r\n"], SMALL, [("error", 400)], 0),
    ("tls-client-hello", [b"\x16\x03\x01\x02\x00\x01"], SMALL, [("error", 400)], 0),
    ("bad-header", [b"GET / HTTP/1.1\r\nHost: e\r\nBad Name: x\r\n\r\n"], SMALL, [("error", 400)], 0),
    ("no-host", [b"GET / HTTP/1.1\r\n\r\n"], SMALL, [("error", 400)], 0),
    (
        "bad-chunk",
        [b"POST / HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],
        SMALL,
        [("error", 400)],
        0,
    ),
    (
        "transfer-encoding-gzip",
        [b"POST / HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: gzip\r\n\r\n"],
        SMALL,
        [("error", 501)],
        0,
    ),
    ("connect", [b"CONNECT e:443 HTTP/1.1\r\nHost: e:443\r\n\r\n"], SMALL, [("error", 501)], 0),
    (
        "max-requests",
        [GET * 3],
        HTTPLimits(max_requests_per_connection=2),
        [R_GET, R_GET, "closed"],
        2,
    ),
]


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
@pytest.mark.parametrize(
    "chunks, limits, expected, n_responses",
    [case[1:] for case in SIMPLE_CASES],
    ids=[case[0] for case in SIMPLE_CASES],
)
def test_simple_cases(
    mode: str, chunks: list[bytes], limits: HTTPLimits, expected: list[Any], n_responses: int
) -> None:
    fed = chunks if mode == "whole" else bytewise(chunks)
    server = HTTPServer(limits)
    run = drive(server, fed)
    assert summary(run.events) == expected
    lines = status_lines(run.output)
    assert len(lines) == n_responses
    assert all(line.startswith(b"HTTP/1.1 200 OK") for line in lines)
    if run.events and isinstance(run.events[-1], RemoteProtocolError):
        assert server.closed and not server.keep_alive
        # The error sticks ...
        with pytest.raises(RemoteProtocolError):
            server.next_request()
        # ... the caller can still answer, and the answer closes.
        hint = run.events[-1].error_status_hint
        error = server.send_error(hint, str(run.events[-1]))
        parsed = parse_with_http_client(error)
        assert parsed.status == hint and parsed.will_close
        assert server.next_request() == PeerClosed()
    if run.events and run.events[-1] == PeerClosed():
        assert server.closed and not server.keep_alive
        assert server.next_request() == PeerClosed()


def test_connection_close_and_limit_responses_say_close() -> None:
    for chunks, limits in [
        ([b"GET / HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n"], SMALL),
        ([b"GET / HTTP/1.0\r\n\r\n"], SMALL),
        ([GET * 2], HTTPLimits(max_requests_per_connection=2)),
    ]:
        run = drive(HTTPServer(limits), chunks)
        last = run.output.rsplit(b"HTTP/1.1 ", 1)[1]
        assert b"\r\nConnection: close\r\n" in last
    run = drive(HTTPServer(), [GET * 2])
    assert b"Connection" not in run.output


def test_head_limit_is_exact_whatever_the_split() -> None:
    # h11 issue 182: the same head must get the same answer in one read or
    # byte by byte. A head of exactly the limit passes, one byte more fails.
    prefix = b"GET / HTTP/1.1\r\nHost: e\r\nX: "
    limit = 200
    cases: list[tuple[int, list[Any]]] = [
        (limit, [("GET", "/", b"", "1.1"), "need-data"]),
        (limit + 1, [("error", 431)]),
    ]
    for size, expected in cases:
        head = prefix + b"a" * (size - len(prefix) - 4) + b"\r\n\r\n"
        assert len(head) == size
        for chunks in ([head], bytewise([head]), [head[:50], head[50:]], [GET + head]):
            server = HTTPServer(HTTPLimits(max_head_size=limit))
            got = summary(drive(server, chunks).events)
            assert got[-len(expected):] == expected, (size, len(chunks))


def test_body_limit_is_exact() -> None:
    for size, ok in [(64, True), (65, False)]:
        body = b"b" * size
        data = b"POST / HTTP/1.1\r\nHost: e\r\nContent-Length: %d\r\n\r\n%s" % (size, body)
        chunked = (b"POST / HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + b"%x\r\n%s\r\n0\r\n\r\n" % (size, body))
        for wire in (data, chunked):
            events = drive(HTTPServer(SMALL), bytewise([wire])).events
            if ok:
                assert isinstance(events[0], Request) and events[0].body == body
            else:
                assert summary(events) == [("error", 413)]


def test_oversized_content_length_fails_before_100_continue() -> None:
    server = HTTPServer(SMALL)
    server.receive_data(
        b"POST / HTTP/1.1\r\nHost: e\r\nExpect: 100-continue\r\nContent-Length: 1000\r\n\r\n"
    )
    with pytest.raises(RemoteProtocolError) as info:
        server.next_request()
    assert info.value.error_status_hint == 413
    assert server.data_to_send() == b""
    assert server.send_error(413, "too large").startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n")


@given(st.binary(max_size=300), st.booleans())
def test_garbage_gives_only_events_or_remote_errors(data: bytes, eof: bool) -> None:
    for chunks in ([data] + ([b""] if eof else []), bytewise([data] + ([b""] if eof else []))):
        run = drive(HTTPServer(SMALL), chunks)
        for event in run.events:
            assert isinstance(event, (Request, PeerClosed, RemoteProtocolError, str))


@given(
    st.lists(st.sampled_from([GET, POST, CHUNKED, b"GET / HTTP/1.0\r\n\r\n"]), min_size=1, max_size=4),
    st.binary(max_size=40),
    st.lists(st.integers(min_value=0, max_value=600), max_size=6),
)
def test_any_split_gives_the_same_result(messages: list[bytes], tail: bytes, cuts: list[int]) -> None:
    data = b"".join(messages) + tail
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0] + points, points + [len(data)]) if data[a:b]]
    whole = drive(HTTPServer(SMALL), [data])
    split = drive(HTTPServer(SMALL), chunks)
    assert summary(whole.events) == summary(split.events)
    assert whole.output == split.output


# -- server state and misuse --------------------------------------------------


def test_request_in_progress_and_awaiting_response() -> None:
    server = HTTPServer()
    assert not server.request_in_progress and not server.awaiting_response
    server.receive_data(POST[:10])
    assert server.next_request() is NEED_BYTES
    assert server.request_in_progress
    server.receive_data(POST[10:])
    request = server.next_request()
    assert isinstance(request, Request)
    assert not server.request_in_progress and server.awaiting_response
    with pytest.raises(LocalProtocolError):
        server.next_request()
    server.send_response(ok_response(request))
    assert not server.request_in_progress and not server.awaiting_response
    assert server.requests_handled == 1 and server.keep_alive and not server.closed


def test_server_misuse_raises_local_protocol_error() -> None:
    server = HTTPServer()
    with pytest.raises(LocalProtocolError):
        server.send_response(Response(200))
    server.receive_data(GET)
    assert isinstance(server.next_request(), Request)
    for bad in [
        Response(100),
        Response(200, (), b"body without content type"),
        Response(200, (("Content-Length", "3"), ("Content-Type", "a/b")), b"abc"),
        Response(200, (("Transfer-Encoding", "chunked"),)),
        Response(204, (("Content-Type", "a/b"),), b"x"),
    ]:
        with pytest.raises(LocalProtocolError):
            server.send_response(bad)
    # The request is still pending and can be answered.
    assert server.awaiting_response
    server.send_response(Response(204))
    with pytest.raises(LocalProtocolError):
        server.send_response(Response(200))
    server.receive_data(b"")
    assert server.next_request() == PeerClosed()
    with pytest.raises(LocalProtocolError):
        server.receive_data(b"more")
    with pytest.raises(LocalProtocolError):
        server.send_error(200, "not an error")


def test_send_error_once_then_closed() -> None:
    server = HTTPServer()
    server.receive_data(GET)
    assert isinstance(server.next_request(), Request)
    out = server.send_error(503, "busy", headers=[("Retry-After", "10")])
    assert out == (
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 10\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 5\r\n"
        b"Connection: close\r\n\r\nbusy\n"
    )
    assert server.closed and not server.keep_alive
    with pytest.raises(LocalProtocolError):
        server.send_error(500, "again")
    assert server.next_request() == PeerClosed()


def test_send_error_on_idle_connection_for_a_deadline() -> None:
    server = HTTPServer()
    server.receive_data(b"GET / HT")
    assert server.next_request() is NEED_BYTES
    out = server.send_error(408, "request timeout")
    assert parse_with_http_client(out).status == 408


def test_send_error_when_h11_refuses_writes_the_same_bytes() -> None:
    # If our side of h11 is in ERROR (a send failed), h11 refuses to write;
    # send_error must still produce exactly what h11 would have produced.
    expected = HTTPServer()
    expected.receive_data(b"GET / HTTP/1.1\r\nHost: e\r\nContent-Length: 99999999\r\n\r\n")
    refused = HTTPServer()
    refused.receive_data(b"GET / HTTP/1.1\r\nHost: e\r\nContent-Length: 99999999\r\n\r\n")
    for server in (expected, refused):
        with pytest.raises(RemoteProtocolError):
            server.next_request()
    refused._conn.send_failed()  # public h11 API: marks our side ERROR
    assert refused._conn.our_state is h11.ERROR
    assert refused.send_error(413, "too big") == expected.send_error(413, "too big")


def test_401_has_no_body_and_content_length_zero() -> None:
    server = HTTPServer()
    server.receive_data(GET)
    assert isinstance(server.next_request(), Request)
    out = server.send_response(Response(401, (("WWW-Authenticate", 'Basic realm="est"'),)))
    assert out == (
        b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"est\"\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    assert server.keep_alive
    server.receive_data(GET)
    assert isinstance(server.next_request(), Request)
    out = server.send_error(401, "who are you?")
    assert out.endswith(b"Content-Length: 0\r\nConnection: close\r\n\r\n")


def test_response_head_is_short_and_exact() -> None:
    # strongSwan reads the head in one 1024-byte read and wants HTTP/1.1.
    server = HTTPServer()
    server.receive_data(POST)
    assert isinstance(server.next_request(), Request)
    body = b"A" * 3000
    out = server.send_response(
        Response(
            200,
            (("Content-Type", "application/pkcs7-mime; smime-type=certs-only"),
             ("Content-Transfer-Encoding", "base64")),
            body,
        ),
        now=1_700_000_000,
    )
    head, rest = out.split(b"\r\n\r\n", 1)
    assert rest == body and len(head) < 1024
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 200 OK",
        b"Content-Type: application/pkcs7-mime; smime-type=certs-only",
        b"Content-Transfer-Encoding: base64",
        b"Content-Length: 3000",
        b"Date: Tue, 14 Nov 2023 22:13:20 GMT",
    ]
    date = parse_with_http_client(out).getheader("Date")
    assert date is not None
    assert email.utils.parsedate_to_datetime(date).timestamp() == 1_700_000_000


def test_204_has_no_content_length() -> None:
    server = HTTPServer()
    server.receive_data(GET)
    assert isinstance(server.next_request(), Request)
    assert server.send_response(Response(204)) == b"HTTP/1.1 204 No Content\r\n\r\n"


# -- value classes ------------------------------------------------------------


def test_value_classes_validate() -> None:
    r = Request("GET", "/x", (("Accept", "a"), ("accept", "b")))
    assert r.header("ACCEPT") == "a, b" and r.header_values("accept") == ("a", "b")
    assert r.header("missing") is None
    assert Request("GET", "/", [("A", "b")]).headers == (("A", "b"),)  # type: ignore[arg-type]
    assert Response(200, reason="Fine").reason == "Fine"
    bads: list[Callable[[], object]] = [
        lambda: Request("G T", "/"),
        lambda: Request("GET", "/a b"),
        lambda: Request("GET", ""),
        lambda: Request("GET", "/", (("X", "a\r\nInjected: 1"),)),
        lambda: Request("GET", "/", (("X", " lead"),)),
        lambda: Request("GET", "/", (("X", "\u20ac"),)),
        lambda: Request("GET", "/", (("Bad Name", "v"),)),
        lambda: Request("GET", "/", (("X",),)),  # type: ignore[arg-type]
        lambda: Request("GET", "/", "X: y"),  # type: ignore[arg-type]
        lambda: Request("GET", "/", body="text"),  # type: ignore[arg-type]
        lambda: Request("GET", "/", http_version="2"),
        lambda: Response(99),
        lambda: Response(600),
        lambda: Response(True),  # type: ignore[arg-type]
        lambda: Response(200, reason="a\nb"),
        lambda: HTTPLimits(max_body_size=0),
        lambda: HTTPLimits(max_head_size=1.5),  # type: ignore[arg-type]
        lambda: HTTPServer("limits"),  # type: ignore[arg-type]
        lambda: HTTPClient("bad host"),
    ]
    for bad in bads:
        with pytest.raises(LocalProtocolError):
            bad()
    with pytest.raises(Exception):
        r.method = "POST"  # type: ignore[misc]
    assert HTTPLimits().max_head_size == MAX_HEAD_SIZE == 16 * 1024


# -- independent peers against our server ------------------------------------


class FakeSocket:
    """Just enough of a socket for http.client to read a response from bytes."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.sent = b""

    def makefile(self, mode: str, *args: Any, **kwargs: Any) -> io.BytesIO:
        return io.BytesIO(self._data)

    def sendall(self, data: bytes) -> None:
        self.sent += data


def parse_with_http_client(data: bytes, method: str = "GET") -> http.client.HTTPResponse:
    response = http.client.HTTPResponse(FakeSocket(data), method=method)  # type: ignore[arg-type]
    response.begin()
    return response


def test_http_client_parses_our_responses() -> None:
    server = HTTPServer()
    server.receive_data(POST + b"HEAD /h HTTP/1.1\r\nHost: e\r\n\r\n" + GET)
    cases = [
        (Response(200, (("Content-Type", "application/pkcs7-mime"),), b"MIIC\n"), "POST", b"MIIC\n"),
        (Response(200, (("Content-Type", "text/plain"),), b"head body"), "HEAD", b""),
        (Response(202, (("Retry-After", "60"),)), "GET", b""),
    ]
    for response, method, body in cases:
        request = server.next_request()
        assert isinstance(request, Request) and request.method == method
        parsed = parse_with_http_client(server.send_response(response), method)
        assert parsed.status == response.status
        assert parsed.version == 11 and not parsed.will_close
        assert parsed.read() == body
    assert parsed.getheader("Retry-After") == "60"


def test_http_client_requests_are_parsed() -> None:
    # stdlib http.client writes the requests; our server reads them.
    sock = FakeSocket(b"")
    conn = http.client.HTTPConnection("est.example", 8443)
    conn.sock = sock  # type: ignore[assignment]
    conn.request("POST", "/.well-known/est/simpleenroll", body=b"MIIB\n",
                 headers={"Content-Type": "application/pkcs10"})
    conn._HTTPConnection__state = http.client._CS_IDLE  # type: ignore[attr-defined]
    conn.request("GET", "/.well-known/est/cacerts")
    server = HTTPServer()
    server.receive_data(sock.sent)
    first, second = server.next_request(), None
    assert isinstance(first, Request)
    assert first.header("host") == "est.example:8443"
    assert first.header("content-type") == "application/pkcs10" and first.body == b"MIIB\n"
    server.send_response(Response(202, (("Retry-After", "1"),)))
    second = server.next_request()
    assert isinstance(second, Request) and second.target == "/.well-known/est/cacerts"


def h11_roundtrip(server: HTTPServer, client: h11.Connection, *events: h11.Event) -> list[h11.Event]:
    """Send *events* from a raw h11 client, let our server answer, return what
    the h11 client reads back."""
    for event in events:
        data = client.send(event)
        if data:
            server.receive_data(data)
    request = server.next_request()
    assert isinstance(request, Request)
    client.receive_data(server.send_response(ok_response(request)))
    got: list[h11.Event] = []
    while True:
        received = client.next_event()
        if received is h11.NEED_DATA or received is h11.PAUSED:
            return got
        assert isinstance(received, h11.Event)
        got.append(received)
        if type(received) is h11.EndOfMessage:
            return got


def test_raw_h11_client_keepalive_chunked_and_close() -> None:
    server = HTTPServer()
    client = h11.Connection(h11.CLIENT)
    for i in range(3):
        got = h11_roundtrip(
            server, client,
            h11.Request(method="POST", target=f"/{i}",
                        headers=[("Host", "e"), ("Transfer-Encoding", "chunked")]),
            h11.Data(data=b"x" * i), h11.Data(data=b"yz"), h11.EndOfMessage(),
        )
        response = got[0]
        assert isinstance(response, h11.Response) and response.status_code == 200
        assert b"".join(bytes(e.data) for e in got if isinstance(e, h11.Data)) == f"POST /{i} {i + 2}".encode()
        assert client.our_state is h11.DONE and client.their_state is h11.DONE
        client.start_next_cycle()
    got = h11_roundtrip(
        server, client,
        h11.Request(method="GET", target="/last", headers=[("Host", "e"), ("Connection", "close")]),
        h11.EndOfMessage(),
    )
    assert client.their_state is h11.MUST_CLOSE
    assert server.closed and server.requests_handled == 4


def test_raw_h11_client_expect_100_continue() -> None:
    server = HTTPServer()
    client = h11.Connection(h11.CLIENT)
    server.receive_data(client.send(h11.Request(
        method="POST", target="/e",
        headers=[("Host", "e"), ("Content-Length", "3"), ("Expect", "100-continue")])))
    assert server.next_request() is NEED_BYTES
    client.receive_data(server.data_to_send())
    assert server.data_to_send() == b""  # once
    informational = client.next_event()
    assert isinstance(informational, h11.InformationalResponse)
    assert informational.status_code == 100
    server.receive_data(client.send(h11.Data(data=b"abc")) + client.send(h11.EndOfMessage()))
    request = server.next_request()
    assert isinstance(request, Request) and request.body == b"abc"


def test_raw_h11_client_pipelined_answers_in_order() -> None:
    server = HTTPServer()
    client = h11.Connection(h11.CLIENT)
    wire = b"".join(
        b"GET /%d HTTP/1.1\r\nHost: e\r\n\r\n" % i for i in range(3)
    )
    server.receive_data(wire)
    out = b""
    while True:
        request = server.next_request()
        if request is NEED_BYTES:
            break
        assert isinstance(request, Request)
        out += server.send_response(ok_response(request))
    client.receive_data(out)
    bodies = []
    for i in range(3):
        client.send(h11.Request(method="GET", target=f"/{i}", headers=[("Host", "e")]))
        client.send(h11.EndOfMessage())
        body = b""
        while True:
            event = client.next_event()
            if isinstance(event, h11.Data):
                body += event.data
            if isinstance(event, h11.EndOfMessage):
                break
        bodies.append(body)
        client.start_next_cycle()
    assert bodies == [b"GET /0 0", b"GET /1 0", b"GET /2 0"]


# -- our client against independent servers ---------------------------------


def h11_server_answer(request_bytes: bytes, *events: h11.Event) -> bytes:
    server = h11.Connection(h11.SERVER)
    server.receive_data(request_bytes)
    while type(server.next_event()) is not h11.EndOfMessage:
        pass
    return b"".join(server.send(e) or b"" for e in events)


def receive(client: HTTPClient, chunks: list[bytes]) -> Response | RemoteProtocolError:
    try:
        for chunk in chunks:
            client.receive_data(chunk)
            result = client.next_response()
            if isinstance(result, Response):
                return result
    except RemoteProtocolError as exc:
        return exc
    raise AssertionError("no response")


CLIENT_CASES: list[tuple[str, list[h11.Event], bytes, int, bool]] = [
    (
        "content-length",
        [h11.Response(status_code=200, headers=[("Content-Type", "a/b"), ("Content-Length", "4")]),
         h11.Data(data=b"cert"), h11.EndOfMessage()],
        b"cert", 200, True,
    ),
    (
        "chunked",
        [h11.Response(status_code=200, headers=[("Content-Type", "a/b")]),
         h11.Data(data=b"ce"), h11.Data(data=b"rt"), h11.EndOfMessage()],
        b"cert", 200, True,
    ),
    (
        "100-then-final",
        [h11.InformationalResponse(status_code=100, headers=[]),
         h11.Response(status_code=202, headers=[("Retry-After", "5"), ("Content-Length", "0")]),
         h11.EndOfMessage()],
        b"", 202, True,
    ),
    (
        "close",
        [h11.Response(status_code=200, headers=[("Connection", "close"), ("Content-Length", "2")]),
         h11.Data(data=b"ok"), h11.EndOfMessage()],
        b"ok", 200, False,
    ),
]


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
@pytest.mark.parametrize(
    "events, body, status, keep_alive",
    [c[1:] for c in CLIENT_CASES],
    ids=[c[0] for c in CLIENT_CASES],
)
def test_client_against_raw_h11_server(
    mode: str, events: list[h11.Event], body: bytes, status: int, keep_alive: bool
) -> None:
    client = HTTPClient("est.example")
    wire = h11_server_answer(client.send_request("POST", "/e", [("Content-Type", "x/y")], b"csr"), *events)
    response = receive(client, [wire] if mode == "whole" else bytewise([wire]))
    assert isinstance(response, Response)
    assert (response.status, response.body, client.keep_alive) == (status, body, keep_alive)
    assert client.closed is not keep_alive


def test_client_keepalive_three_requests_one_connection() -> None:
    client = HTTPClient("est.example:8443")
    server = h11.Connection(h11.SERVER)
    for i in range(3):
        server.receive_data(client.send_request("GET", f"/{i}"))
        request = server.next_event()
        assert isinstance(request, h11.Request)
        assert request.headers[0] == (b"host", b"est.example:8443")
        assert type(server.next_event()) is h11.EndOfMessage
        client.receive_data(
            server.send(h11.Response(status_code=200, headers=[("Content-Length", "1")]))
            + server.send(h11.Data(data=b"%d" % i)) + server.send(h11.EndOfMessage())
        )
        server.start_next_cycle()
        response = client.next_response()
        assert isinstance(response, Response) and response.body == b"%d" % i
        assert client.keep_alive


def test_client_request_bytes() -> None:
    client = HTTPClient("est")
    assert client.send_request("POST", "/e", [("Content-Type", "application/pkcs10")], b"") == (
        b"POST /e HTTP/1.1\r\nHost: est\r\nContent-Type: application/pkcs10\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    with pytest.raises(LocalProtocolError):
        client.send_request("GET", "/")  # response outstanding
    for bad in [("GET", "/", [("Host", "x")]), ("CONNECT", "e:1", []), ("GET", "/", [("Expect", "100-continue")])]:
        with pytest.raises(LocalProtocolError):
            HTTPClient("est").send_request(*bad)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        HTTPClient("est").next_response()


LIBEST_202 = b"HTTP/1.1 202 Accepted\r\nStatus: 202 Accepted\r\nContent-Type: text/plain\r\nRetry-After: 60\r\n\r\n"


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_client_read_until_close_like_libest(mode: str) -> None:
    client = HTTPClient("est")
    client.send_request("POST", "/.well-known/est/simpleenroll", [("Content-Type", "application/pkcs10")], b"x")
    chunks = [LIBEST_202 + b"pending", b""]
    response = receive(client, chunks if mode == "whole" else bytewise(chunks))
    assert isinstance(response, Response)
    assert response.status == 202 and response.body == b"pending"
    assert response.header("retry-after") == "60"
    assert client.closed and not client.keep_alive
    with pytest.raises(LocalProtocolError):
        client.send_request("GET", "/")


CLIENT_ERROR_CASES = [
    ("head-over-limit", [b"HTTP/1.1 200 OK\r\nX: " + b"a" * 300 + b"\r\nContent-Length: 0\r\n\r\n"], 431),
    ("too-many-headers", [b"HTTP/1.1 200 OK\r\n" + b"X: 1\r\n" * 9 + b"\r\n"], 431),
    ("content-length-over-limit", [b"HTTP/1.1 200 OK\r\nContent-Length: 65\r\n\r\n"], 413),
    ("chunked-over-limit",
     [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n" + b"z" * 65 + b"\r\n0\r\n\r\n"], 413),
    ("until-close-over-limit", [b"HTTP/1.1 200 OK\r\n\r\n" + b"z" * 65, b""], 413),
    ("eof-before-response", [b""], 400),
    ("eof-mid-head", [b"HTTP/1.1 200 OK\r\n", b""], 400),
    ("eof-mid-body", [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", b""], 400),
    ("bad-status-line", [b"HTTP/1.1 OK\r\n\r\n"], 400),
    ("unrequested-101", [b"HTTP/1.1 101 Switching Protocols\r\n\r\n"], 400),
]


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
@pytest.mark.parametrize("chunks, hint", [c[1:] for c in CLIENT_ERROR_CASES], ids=[c[0] for c in CLIENT_ERROR_CASES])
def test_client_errors(mode: str, chunks: list[bytes], hint: int) -> None:
    client = HTTPClient("est", SMALL)
    client.send_request("GET", "/")
    result = receive(client, chunks if mode == "whole" else bytewise(chunks))
    assert isinstance(result, RemoteProtocolError) and result.error_status_hint == hint
    assert client.closed and not client.keep_alive
    with pytest.raises(RemoteProtocolError):
        client.next_response()


def test_client_head_request_ignores_content_length() -> None:
    client = HTTPClient("est", SMALL)
    client.send_request("HEAD", "/")
    response = receive(client, [b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"])
    assert isinstance(response, Response) and response.body == b"" and client.keep_alive


@given(st.binary(max_size=300), st.booleans())
def test_client_garbage_gives_only_responses_or_remote_errors(data: bytes, eof: bool) -> None:
    for chunks in ([data, b""] if eof else [data], bytewise([data, b""] if eof else [data])):
        client = HTTPClient("est", SMALL)
        client.send_request("GET", "/")
        try:
            for chunk in chunks:
                client.receive_data(chunk)
                result = client.next_response()
                assert result is NEED_BYTES or isinstance(result, Response)
                if isinstance(result, Response):
                    break
        except RemoteProtocolError:
            pass


def test_head_accounting_matches_h11_public_view() -> None:
    # The head limit reads the size of h11's private buffer; check it against
    # the public (copying) trailing_data so an h11 change cannot go unnoticed.
    from estproto._http import _unparsed_size

    server = HTTPServer()
    server.receive_data(GET + POST + b"GET /partial HT")
    for _ in range(2):
        assert _unparsed_size(server._conn) == len(server._conn.trailing_data[0])
        request = server.next_request()
        assert isinstance(request, Request)
        assert _unparsed_size(server._conn) == len(server._conn.trailing_data[0])
        server.send_response(ok_response(request))
    assert server.next_request() is NEED_BYTES and server.request_in_progress
    assert _unparsed_size(server._conn) == len(server._conn.trailing_data[0]) == 15
