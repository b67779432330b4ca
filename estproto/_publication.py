"""Plain-HTTP publication of a CA's public files (the CRL), sans-I/O.

Relying parties fetch a CRL from the URL in a certificate's
cRLDistributionPoints over plain HTTP (RFC 5280 4.2.1.13: "the URI MUST
point to a single DER encoded CRL ... HTTP server implementations accessed
via the URI SHOULD specify the media type application/pkix-crl"). TLS would
not help (a CRL is signed) and would get in the way (a client checking the
server's certificate may need the CRL first).

:class:`PublicationConnection` is one such HTTP/1.1 connection, over h11:
bytes in through :meth:`receive_data` (``b""`` at EOF), a
:class:`PublicationRequest` out of :meth:`next_request` for a GET or HEAD
of a published path, the answer in through :meth:`send_file`, bytes out of
:meth:`data_to_send`. Everything else is answered here: 404 for other
paths, 405 (with ``Allow``) for other methods, 400 for what h11 cannot
parse, 413 for a request with a body; after an error the connection closes.
Limits: heads of at most :data:`MAX_HEAD_BYTES`, at most
:data:`MAX_REQUESTS` requests per connection. Time limits are the adapter's
(it knows the clock).
"""

from __future__ import annotations

import http
from dataclasses import dataclass
from typing import Collection

import h11

__all__ = ["PublicationConnection", "PublicationRequest", "MAX_HEAD_BYTES", "MAX_REQUESTS"]

#: Largest request head accepted: a GET of a short path needs a few hundred
#: bytes; 8 KiB is what common servers allow for a whole head.
MAX_HEAD_BYTES = 8192

#: Requests served on one connection before it is closed (fetchers make one).
MAX_REQUESTS = 100


@dataclass(frozen=True)
class PublicationRequest:
    """A GET (or HEAD, ``head=True``) of a published *path*."""

    path: str
    head: bool


class PublicationConnection:
    """One plain-HTTP connection serving a fixed set of paths (module docstring)."""

    def __init__(self, paths: Collection[str]) -> None:
        self._paths = frozenset(paths)
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._out: list[bytes] = []
        self._head: PublicationRequest | None = None  # judged, its end not yet read
        self._owed: PublicationRequest | None = None  # handed out, not yet answered
        self._served = 0
        self.closed = False

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; ``b""`` when it closed its side."""
        if not self.closed:
            self._h11.receive_data(data)

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def next_request(self) -> PublicationRequest | None:
        """The next request to answer with :meth:`send_file`, or None: more
        bytes are needed, an answer is still owed, or the connection is
        done (:attr:`closed`; errors were answered here)."""
        while not self.closed and self._owed is None:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                self._fail(exc.error_status_hint, "bad request")
                return None
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return None
            if isinstance(event, h11.ConnectionClosed):
                self.closed = True
            elif isinstance(event, h11.Request):
                judged = self._judge(event)
                if isinstance(judged, tuple):
                    self._fail(*judged, allow=judged[0] == 405)
                else:
                    self._head = judged
            elif isinstance(event, h11.EndOfMessage) and self._head is not None:
                self._owed, self._head = self._head, None
                return self._owed
        return None

    def _judge(self, request: h11.Request) -> PublicationRequest | tuple[int, str]:
        method = request.method.decode("ascii", "replace")
        target = request.target.decode("ascii", "replace")
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "only GET and HEAD"
        # Refused by its head, so no body is ever read (h11 yields Data only
        # for a request with one of these).
        for name, value in request.headers:
            if (name == b"content-length" and value.strip() != b"0") or name == b"transfer-encoding":
                return 413, "a request body is not accepted here"
        if path not in self._paths:
            return 404, "not found"
        return PublicationRequest(path, method == "HEAD")

    def send_file(self, body: bytes, content_type: str) -> None:
        """Answer the pending request with 200 and *body*."""
        request = self._owed
        if request is None:
            raise RuntimeError("no request is waiting for an answer")
        self._owed = None
        self._served += 1
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body))),
                   ("Cache-Control", "no-cache")]
        last = self._served >= MAX_REQUESTS
        if last:
            headers.append(("Connection", "close"))
        self._send(h11.Response(status_code=200, headers=headers, reason=b"OK"))
        if not request.head:
            self._send(h11.Data(data=body))
        self._send(h11.EndOfMessage())
        self._next_cycle(last)

    def send_error(self, status: int, reason: str) -> None:
        """Answer the pending request with *status* (e.g. 503) and close."""
        if self._owed is None:
            raise RuntimeError("no request is waiting for an answer")
        self._owed = None
        self._fail(status, reason)

    def _fail(self, status: int, reason: str, *, allow: bool = False) -> None:
        body = reason.encode() + b"\n"
        headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
                   ("Connection", "close")]
        if allow:
            headers.append(("Allow", "GET, HEAD"))
        if self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            try:
                self._send(h11.Response(status_code=status, headers=headers, reason=_phrase(status)))
                self._send(h11.Data(data=body))
                self._send(h11.EndOfMessage())
            except h11.LocalProtocolError:
                pass  # h11 will not send to this peer any more: just close
        self._head = self._owed = None
        self.closed = True

    def _send(self, event: h11.Event) -> None:
        data = self._h11.send(event)
        if data:
            self._out.append(data)

    def _next_cycle(self, last: bool) -> None:
        if last or self._h11.our_state is not h11.DONE or self._h11.their_state is not h11.DONE:
            self.closed = True
            return
        self._h11.start_next_cycle()


def _phrase(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""
