"""Fast paths must behave exactly like the slow paths they skip.

HTTPServer.next_request answers EOF between requests without a trip through
h11; everything observable through the layer must match what h11's
PeerClosed leads to.
"""

from __future__ import annotations

import pytest

from estproto._errors import LocalProtocolError, RemoteProtocolError
from estproto._http import NEED_BYTES, PeerClosed, HTTPServer, Request, Response

GET = b"GET /a HTTP/1.1\r\nHost: e\r\n\r\n"


def _answered(requests: int) -> HTTPServer:
    server = HTTPServer()
    for _ in range(requests):
        server.receive_data(GET)
        assert isinstance(server.next_request(), Request)
        server.send_response(Response(204))
    assert server.next_request() is NEED_BYTES
    return server


@pytest.mark.parametrize("requests", [0, 1, 3])
def test_eof_between_requests_closes_like_h11(requests: int) -> None:
    server = _answered(requests)
    assert server.keep_alive and not server.closed
    server.receive_data(b"")
    assert server.next_request() == PeerClosed()
    assert server.closed and not server.keep_alive
    assert not server.request_in_progress and not server.awaiting_response
    assert server.requests_handled == requests
    assert server.data_to_send() == b""
    assert server.next_request() == PeerClosed()  # and again
    with pytest.raises(LocalProtocolError):
        server.receive_data(GET)
    with pytest.raises(LocalProtocolError):
        server.send_error(400, "nothing to answer")
    with pytest.raises(LocalProtocolError):
        server.send_response(Response(204))


@pytest.mark.parametrize("tail", [GET[:10], b"\r\n", GET])
def test_eof_with_bytes_buffered_still_goes_through_h11(tail: bytes) -> None:
    server = _answered(1)
    server.receive_data(tail)
    server.receive_data(b"")
    if tail == GET:
        # A complete request before EOF is served; then the close is seen.
        assert isinstance(server.next_request(), Request)
        assert not server.keep_alive
        server.send_response(Response(204))
        assert server.next_request() == PeerClosed()
        return
    # Part of a request, even a blank line, then EOF: h11 says 400.
    with pytest.raises(RemoteProtocolError) as info:
        server.next_request()
    assert info.value.error_status_hint == 400
    assert server.closed
