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


# -- the serve command's log line ----------------------------------------------


@pytest.mark.parametrize("created", [0.0, 1.0005, 1700000000.9999, 1733500000.5, 1733500001.001])
def test_line_formatter_matches_loggings_default(created: float) -> None:
    import logging

    from estproto.cli._common import LineFormatter

    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    ours, stdlib = LineFormatter(fmt), logging.Formatter(fmt)
    for when in (created, created + 0.25, created + 1.0, created):  # same second, next, back
        record = logging.LogRecord("estproto.server", logging.INFO, "", 0, "GET %s", ("/x",), None)
        record.created, record.msecs = when, (when - int(when)) * 1000.0
        assert ours.format(record) == stdlib.format(record)
    record.msecs = 999.9996  # never rounds up into the next second
    assert ours.format(record) == stdlib.format(record)
    assert ours.formatTime(record, "%H") == stdlib.formatTime(record, "%H")


def test_serve_logging_skips_the_caller_lookup() -> None:
    # In a child: setup_logging changes the process's logging. If a Python
    # release drops logging._srcfile, records carry the caller again and
    # this fails: the switch (and its saving) is gone.
    import subprocess
    import sys

    code = (
        "import io, logging, sys\n"
        "from estproto.cli._common import setup_logging\n"
        "setup_logging(0)\n"
        "seen = []\n"
        "logging.getLogger().handlers[0].addFilter(lambda r: seen.append(r) or True)\n"
        "logging.getLogger('estproto.server').info('x')\n"
        "r = seen[0]\n"
        "print(r.lineno, r.funcName, r.pathname)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "(unknown", "function)", "(unknown", "file)"]
    assert result.stderr.endswith(" INFO estproto.server: x\n")
