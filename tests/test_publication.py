"""The plain-HTTP publication connection (estproto._publication), sans-I/O."""

from __future__ import annotations

import h11
import pytest

from estproto._publication import MAX_HEAD_BYTES, MAX_REQUESTS, PublicationConnection, PublicationRequest

CRL = b"\x30\x03\x02\x01\x00"


def _responses(data: bytes, *, head: bool = False) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Parse what the server sent with an independent h11 client."""
    client = h11.Connection(h11.CLIENT)
    client.receive_data(data)
    out = []
    while True:
        client.send(h11.Request(method="HEAD" if head else "GET", target="/x",
                                headers=[("Host", "t")]))
        client.send(h11.EndOfMessage())
        status, headers, body = 0, {}, b""
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                return out
            if isinstance(event, h11.Response):
                status, headers = event.status_code, dict(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                out.append((status, headers, body))
                break
        if client.our_state is not h11.DONE or client.their_state is not h11.DONE:
            return out
        client.start_next_cycle()


def _serve(raw: bytes, paths: tuple[str, ...] = ("/est.crl",)) -> tuple[PublicationConnection, list[PublicationRequest]]:
    conn = PublicationConnection(paths)
    conn.receive_data(raw)
    seen = []
    while (request := conn.next_request()) is not None:
        seen.append(request)
        conn.send_file(CRL, "application/pkix-crl")
    return conn, seen


def test_get_answers_the_file_and_keeps_the_connection() -> None:
    conn, seen = _serve(b"GET /est.crl HTTP/1.1\r\nHost: a\r\n\r\n")
    assert seen == [PublicationRequest("/est.crl", False)]
    [(status, headers, body)] = _responses(conn.data_to_send())
    assert (status, body) == (200, CRL)
    assert headers[b"content-type"] == b"application/pkix-crl"
    assert headers[b"content-length"] == str(len(CRL)).encode()
    assert not conn.closed


def test_pipelined_requests_are_answered_in_order_and_a_query_is_ignored() -> None:
    conn, seen = _serve(b"GET /est.crl HTTP/1.1\r\nHost: a\r\n\r\n"
                        b"GET /est.crl?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert len(seen) == 2
    assert [r[0] for r in _responses(conn.data_to_send())] == [200, 200]


def test_head_has_no_body() -> None:
    conn, seen = _serve(b"HEAD /est.crl HTTP/1.1\r\nHost: a\r\n\r\n")
    assert seen == [PublicationRequest("/est.crl", True)]
    [(status, headers, body)] = _responses(conn.data_to_send(), head=True)
    assert status == 200 and body == b"" and headers[b"content-length"] == str(len(CRL)).encode()


@pytest.mark.parametrize("raw, status", [
    (b"GET /other HTTP/1.1\r\nHost: a\r\n\r\n", 404),
    (b"POST /est.crl HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", 405),
    (b"DELETE /est.crl HTTP/1.1\r\nHost: a\r\n\r\n", 405),
    (b"GET /est.crl HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", 413),
    (b"GET /est.crl HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 413),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /est.crl HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
])
def test_everything_else_is_refused_and_closes(raw: bytes, status: int) -> None:
    conn, seen = _serve(raw)
    assert seen == []
    data = conn.data_to_send()
    assert data.startswith(b"HTTP/1.1 %d " % status)
    assert b"connection: close" in data.lower()
    if status == 405:
        assert b"Allow: GET, HEAD" in data
    assert conn.closed


def test_an_oversized_head_is_refused() -> None:
    conn = PublicationConnection(["/est.crl"])
    conn.receive_data(b"GET /est.crl HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD_BYTES + 1))
    assert conn.next_request() is None
    assert conn.closed and conn.data_to_send().startswith(b"HTTP/1.1 431 ")


def test_requests_per_connection_are_capped() -> None:
    raw = b"GET /est.crl HTTP/1.1\r\nHost: a\r\n\r\n" * (MAX_REQUESTS + 5)
    conn, seen = _serve(raw)
    assert len(seen) == MAX_REQUESTS
    assert conn.closed


def test_http10_gets_one_answer_then_the_close() -> None:
    conn, seen = _serve(b"GET /est.crl HTTP/1.0\r\n\r\n")
    assert len(seen) == 1 and conn.closed
    assert conn.data_to_send().startswith(b"HTTP/1.1 200 ")


def test_answers_only_what_was_asked() -> None:
    conn = PublicationConnection(["/est.crl"])
    with pytest.raises(RuntimeError):
        conn.send_file(CRL, "application/pkix-crl")
    conn.receive_data(b"GET /est.crl HTTP/1.1\r\nHost: a\r\n\r\n")
    assert conn.next_request() is not None
    assert conn.next_request() is None  # the answer is still owed
    conn.send_error(503, "temporarily unavailable")
    assert conn.closed and conn.data_to_send().startswith(b"HTTP/1.1 503 Service Unavailable")


def test_eof_closes() -> None:
    conn = PublicationConnection(["/est.crl"])
    conn.receive_data(b"")
    assert conn.next_request() is None and conn.closed
