"""HTTP/1.1 for EST: one :class:`h11.Connection` per role, plus our own limits.

EST runs over HTTP/1.1 (RFC 7030 section 3.2: "EST uses the HTTPS ...
HTTP/1.1 [RFC2616]"), so this module turns bytes into whole requests and
responses, and back, for the EST layer stacked on top of it. It never touches a
socket or a clock: bytes go in through ``receive_data`` (``b""`` means EOF, as
in h11), complete messages come out of ``next_request``/``next_response``, and
the ``send_*`` methods return the bytes to write.

Strategy. h11 does the parsing, framing and keep-alive bookkeeping; this layer
adds what h11 lacks, the way wsproto's handshake layers itself on h11:

* Whole messages. EST bodies are small (a CSR, a certificate bundle), so a
  request or response is buffered until complete and returned as one frozen
  value with its body. The body limit is checked as the data arrives: an
  announced ``Content-Length`` above the limit fails as soon as the head is
  parsed, a chunked or read-until-close body as soon as the total passes it.
* The head limit, enforced on complete heads too. h11's
  ``max_incomplete_event_size`` only fires while a head is *incomplete*, so a
  complete oversized head that arrives in one read slips through (h11 issue
  182). We count the bytes h11 consumes between the start of a head and its
  event, so the same head is rejected however TCP splits it.
* Header count, and ``CONNECT`` refused (501): we are an origin server, not a
  tunnel.
* Every h11 error translated once, at this edge, into our
  :class:`~estproto.RemoteProtocolError` with h11's ``error_status_hint``.
* Responses always framed by ``Content-Length`` (never chunked) behind a
  literal ``HTTP/1.1`` status line: strongSwan's ``pki --est`` needs both, and
  the whole head within its first 1024-byte read, so heads stay short.
* ``Expect: 100-continue`` (curl sends it for large POSTs, then stalls for a
  second without an answer) is answered through :meth:`HTTPServer.data_to_send`
  only after the head passed our limits: RFC 7231 section 5.1.1 lets a server
  refuse the body with a final status instead.

Keep-alive and pipelining follow h11: requests are answered one at a time in
order; bytes of the next pipelined request wait in h11's buffer until the
current one is answered (stop reading while :attr:`HTTPServer.awaiting_response`
is true: that is the flow control, h11's ``PAUSED``). HTTP/1.0 peers get one
request per connection (h11 drops keep-alive for them).

Time is an input: pass ``now`` (a POSIX timestamp) to the ``send_*`` methods to
get a ``Date`` header. RFC 7231 section 7.1.1.2: "An origin server MUST NOT
send a Date header field if it does not have a clock capable of providing a
reasonable approximation of the current instance"; the caller has the clock.

Cost. h11 is most of this layer's time, so we avoid work around it: between
requests with nothing buffered, ``next_request`` answers NEED_BYTES (or, at
EOF, PeerClosed) without a trip through h11 (h11 would say the same,
and nothing observable through this layer differs); response
headers are validated once, by us, before anything is committed, and handed
to h11 as already parsed (``_parsed=True``, so h11 does not run the same
regexes again); header pairs that passed validation are remembered in a small
bounded table (servers send the same few on every response).

Limitation, plainly: the head measurement reads the length of h11's private
receive buffer (O(1)), and received headers are read from h11's private
``Headers._full_items``; if a future h11 renames either, we fall back to the
public ``trailing_data`` (a copy) and the public Sequence interface, and stay
correct, just slower.
"""

from __future__ import annotations

import abc
import enum
import re
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Final, Iterable, Union

import h11

from ._errors import ClosedBeforeResponse, LocalProtocolError, RemoteProtocolError
from ._limits import MAX_BODY_SIZE

__all__ = [
    "MAX_HEAD_SIZE",
    "MAX_HEADERS",
    "MAX_REQUESTS_PER_CONNECTION",
    "HTTPLimits",
    "Request",
    "Response",
    "NeedBytes",
    "NEED_BYTES",
    "PeerClosed",
    "ClosedBeforeResponse",
    "HTTPServer",
    "HTTPClient",
    "http_date",
]

#: Largest message head (request or status line, headers and the blank line)
#: we accept. h11's default, with the precedents it lists: node.js 80 KiB,
#: tomcat 8 KiB, IIS 16 KiB, Apache 8 KiB per line. An EST request head with
#: Basic or Digest credentials is well under 1 KiB.
MAX_HEAD_SIZE = 16 * 1024

#: Most header fields in one head. Apache's LimitRequestFields defaults to 100;
#: EST peers send fewer than 15. Bounds per-header work on a head that fits in
#: MAX_HEAD_SIZE but is made of thousands of tiny fields.
MAX_HEADERS = 100

#: Requests served on one connection before we answer with
#: ``Connection: close``. nginx's keepalive_requests default (1000 since
#: 1.19.10), for the same reason: bound the state one client can pin.
MAX_REQUESTS_PER_CONNECTION = 1000

_TOKEN_RE: Final = re.compile(r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
# h11's field-value grammar (on latin-1 bytes): no NUL, no CR/LF, no leading or
# trailing whitespace; obs-text allowed.
_FIELD_VALUE_RE: Final = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")
# The same grammar on str, for values not yet encoded: h11's ``[^\x00\s]`` on
# latin-1 bytes is every character from U+0001 to U+00FF except the ASCII
# whitespace (HT, LF, VT, FF, CR, SP), so this also refuses non-latin-1 text.
_FIELD_CHAR = r"[\x01-\x08\x0e-\x1f\x21-\xff]"
_FIELD_VALUE_STR_RE: Final = re.compile(rf"(?:{_FIELD_CHAR}+(?:[ \t]+{_FIELD_CHAR}+)*)?")
_TARGET_RE: Final = re.compile(r"[\x21-\x7e]+")
_VERSION_RE: Final = re.compile(r"[0-9]\.[0-9]")
_REASON_RE: Final = re.compile(r"[\t \x21-\x7e\x80-\xff]*")

_REASONS: Final = {status.value: status.phrase for status in HTTPStatus}

# Framing is ours: callers must not set these.
_FRAMING_HEADERS: Final = frozenset({"content-length", "transfer-encoding"})


def http_date(now: float) -> str:
    """Format *now* (a POSIX timestamp) as an IMF-fixdate (RFC 7231 7.1.1.1).

    Args:
        now: seconds since the epoch, from the caller's clock.

    Returns:
        e.g. ``"Sun, 06 Nov 1994 08:49:37 GMT"``.
    """
    return formatdate(now, usegmt=True)


def _check_int(name: str, value: object) -> None:
    if type(value) is not int or value < 1:
        raise LocalProtocolError(f"{name} must be a positive int, not {value!r}")


@dataclass(frozen=True)
class HTTPLimits:
    """Limits applied to every message one connection receives.

    Attributes:
        max_head_size: most bytes in a request/status line plus headers (431).
        max_body_size: most body bytes, however framed (413).
        max_requests_per_connection: server only: after this many requests the
            response carries ``Connection: close``.
        max_headers: most header fields in one head (431).

    Raises:
        LocalProtocolError: a limit is not a positive int.
    """

    max_head_size: int = MAX_HEAD_SIZE
    max_body_size: int = MAX_BODY_SIZE
    max_requests_per_connection: int = MAX_REQUESTS_PER_CONNECTION
    max_headers: int = MAX_HEADERS

    def __post_init__(self) -> None:
        _check_int("max_head_size", self.max_head_size)
        _check_int("max_body_size", self.max_body_size)
        _check_int("max_requests_per_connection", self.max_requests_per_connection)
        _check_int("max_headers", self.max_headers)


Headers = tuple[tuple[str, str], ...]


# Header fields already found valid. Servers send the same few fields
# (content types, challenges) on every response; remembering that a given
# (name, value) of plain str passed the grammar saves two regex runs per
# field. Bounded in count and value length, so a peer cannot grow it: once
# full, fields are simply checked every time.
_VALID_PAIRS: dict[tuple[str, str], None] = {}
_VALID_PAIRS_MAX = 512
_VALID_PAIR_MAX_LENGTH = 256


def _check_headers(headers: object) -> Headers:
    """Validate *headers* (pairs of str) and return them as a tuple of tuples."""
    if isinstance(headers, (str, bytes)):
        raise LocalProtocolError("headers must be (name, value) pairs")
    try:
        pairs = tuple((name, value) for name, value in headers)  # type: ignore[attr-defined]  # caller input: iterating is the check
    except (TypeError, ValueError):
        raise LocalProtocolError("headers must be (name, value) pairs") from None
    token, field_value = _TOKEN_RE.fullmatch, _FIELD_VALUE_STR_RE.fullmatch
    for pair in pairs:
        name, value = pair
        if type(name) is str and type(value) is str and pair in _VALID_PAIRS:
            continue
        if not isinstance(name, str) or token(name) is None:
            raise LocalProtocolError(f"illegal header name {name!r}")
        if not isinstance(value, str):
            raise LocalProtocolError(f"header value for {name!r} must be str")
        if field_value(value) is None:
            try:
                value.encode("latin-1")
            except UnicodeEncodeError:
                raise LocalProtocolError(f"header {name!r} is not latin-1") from None
            raise LocalProtocolError(f"illegal value for header {name!r}: {value!r}")
        if (
            type(name) is str
            and type(value) is str
            and len(name) + len(value) <= _VALID_PAIR_MAX_LENGTH
            and len(_VALID_PAIRS) < _VALID_PAIRS_MAX
        ):
            _VALID_PAIRS[pair] = None
    return pairs


def _check_version(version: object) -> None:
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        raise LocalProtocolError(f"illegal HTTP version {version!r}")


class _HeaderLookup:
    """Case-insensitive lookups shared by :class:`Request` and :class:`Response`."""

    headers: Headers

    def header_values(self, name: str) -> tuple[str, ...]:
        """Every value of header *name* (case-insensitive), in order received."""
        name = name.lower()
        return tuple(v for n, v in self.headers if n.lower() == name)

    def header(self, name: str) -> str | None:
        """The value of header *name* (case-insensitive), or ``None``.

        Repeated fields are joined with ``", "``, as RFC 7230 section 3.2.2
        allows: "A recipient MAY combine multiple header fields with the same
        field name into one "field-name: field-value" pair ... by appending
        each subsequent field value to the combined field value in order,
        separated by a comma."
        """
        values = self.header_values(name)
        return ", ".join(values) if values else None


@dataclass(frozen=True)
class Request(_HeaderLookup):
    """A complete HTTP request, body included.

    Received requests have lowercase header names and latin-1 decoded values;
    requests you build keep the names as given (lookups ignore case).

    Attributes:
        method: e.g. ``"POST"`` (an HTTP token).
        target: the request-target as sent, e.g. ``"/.well-known/est/cacerts"``.
        headers: ``(name, value)`` pairs in order.
        body: the whole body (``b""`` when none).
        http_version: ``"1.1"`` or ``"1.0"``.

    Raises:
        LocalProtocolError: a field is malformed (bad token, CR/LF in a value,
            non-latin-1 text ...).
    """

    method: str
    target: str
    headers: Headers = ()
    body: bytes = b""
    http_version: str = "1.1"

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not _TOKEN_RE.fullmatch(self.method):
            raise LocalProtocolError(f"illegal method {self.method!r}")
        if not isinstance(self.target, str) or not _TARGET_RE.fullmatch(self.target):
            raise LocalProtocolError(f"illegal request target {self.target!r}")
        object.__setattr__(self, "headers", _check_headers(self.headers))
        if not isinstance(self.body, bytes):
            raise LocalProtocolError("body must be bytes")
        _check_version(self.http_version)


@dataclass(frozen=True)
class Response(_HeaderLookup):
    """A complete HTTP response, body included.

    Attributes:
        status: 100..599.
        headers: ``(name, value)`` pairs in order; never ``Content-Length`` or
            ``Transfer-Encoding`` when you send it (framing is ours).
        body: the whole body (``b""`` when none).
        reason: the reason phrase; empty means "the standard phrase" when sent.
        http_version: ``"1.1"`` (we only send 1.1; received ones may say 1.0).

    Raises:
        LocalProtocolError: a field is malformed.
    """

    status: int
    headers: Headers = ()
    body: bytes = b""
    reason: str = ""
    http_version: str = "1.1"

    def __post_init__(self) -> None:
        if type(self.status) is not int or not 100 <= self.status <= 599:
            raise LocalProtocolError(f"illegal status {self.status!r}")
        object.__setattr__(self, "headers", _check_headers(self.headers))
        if not isinstance(self.body, bytes):
            raise LocalProtocolError("body must be bytes")
        reason = self.reason
        if reason != "" and (not isinstance(reason, str) or not _REASON_RE.fullmatch(reason)):
            raise LocalProtocolError(f"illegal reason phrase {reason!r}")
        if self.http_version != "1.1":
            _check_version(self.http_version)


def _unchecked(cls: type[Any], **values: Any) -> Any:
    # Values parsed by h11 already passed its grammar (the same one the
    # constructors check), so skip a second validation on the hot path.
    obj = object.__new__(cls)
    for name, value in values.items():
        object.__setattr__(obj, name, value)
    return obj


_setattr = object.__setattr__


def _new_request(method: str, target: str, headers: Headers, body: bytes, version: str) -> Request:
    # _unchecked, spelled out for the one call made per received request.
    obj: Request = object.__new__(Request)
    _setattr(obj, "method", method)
    _setattr(obj, "target", target)
    _setattr(obj, "headers", headers)
    _setattr(obj, "body", body)
    _setattr(obj, "http_version", version)
    return obj


class NeedBytes(enum.Enum):
    """Type of :data:`NEED_BYTES`: feed more bytes before asking again."""

    NEED_BYTES = "NEED_BYTES"


#: Returned by ``next_request``/``next_response`` when no complete message is
#: buffered: call ``receive_data`` with more bytes (or ``b""`` at EOF).
NEED_BYTES: Final = NeedBytes.NEED_BYTES


@dataclass(frozen=True)
class PeerClosed:
    """No more requests will arrive on this connection.

    The peer closed it cleanly between messages, or our last response closed
    it (``Connection: close``). Close the transport.
    """


_CLOSED: Final = PeerClosed()


def _lowered_items(headers: Any) -> list[tuple[bytes, bytes]]:
    """(lowercase name, value) pairs of an h11 ``Headers`` object.

    Read from h11's private list of triples when it is there: iterating the
    public Sequence goes through one Python-level ``__getitem__`` per field.
    """
    full = getattr(headers, "_full_items", None)
    if full is None:  # pragma: no cover - only if h11 renames it
        return list(headers)
    return [(name, value) for _, name, value in full]


def _decode_headers(raw: Iterable[tuple[bytes, bytes]]) -> Headers:
    return tuple([(n.decode("ascii"), v.decode("latin-1")) for n, v in raw])


def _encode_headers(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(n.encode("ascii"), v.encode("latin-1")) for n, v in headers]


def _has(headers: Headers, name: str) -> bool:
    return any(n.lower() == name for n, _ in headers)


def _unparsed_size(conn: h11.Connection) -> int:
    """Bytes h11 holds that it has not turned into events yet."""
    try:
        return len(conn._receive_buffer)
    except AttributeError:  # pragma: no cover - only if h11 renames its buffer
        return len(conn.trailing_data[0])


_HeadEvent = Union[h11.Request, h11.Response]


class _Reader(abc.ABC):
    """Drives one h11 connection's input side: whole messages, our limits.

    Subclass hooks (``_on_head``) add the role-specific checks.
    """

    def __init__(self, role: type[h11.CLIENT] | type[h11.SERVER], limits: HTTPLimits) -> None:
        if not isinstance(limits, HTTPLimits):
            raise LocalProtocolError("limits must be an HTTPLimits")
        self._limits = limits
        # h11's own check covers incomplete heads; we cover complete ones.
        self._conn = h11.Connection(role, max_incomplete_event_size=limits.max_head_size)
        self._fed = 0  # bytes given to h11 so far
        self._head_start = -1  # h11's consumed-byte count when the head began
        self._head: _HeadEvent | None = None
        self._body: list[bytes] = []
        self._body_size = 0
        self._eof = False
        self._error: RemoteProtocolError | None = None

    def receive_data(self, data: bytes) -> None:
        """Hand bytes received from the peer to the parser; ``b""`` means EOF.

        Nothing is parsed until the next ``next_request``/``next_response``.

        Raises:
            LocalProtocolError: data after EOF, or *data* is not bytes.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise LocalProtocolError("receive_data() takes bytes")
        if data and self._eof:
            raise LocalProtocolError("receive_data() called with data after EOF (b'')")
        self._conn.receive_data(data)
        if data:
            self._fed += len(data)
        else:
            self._eof = True

    def _fail(self, exc: RemoteProtocolError) -> RemoteProtocolError:
        self._error = exc
        return exc

    def _raise_stored_error(self) -> None:
        if self._error is not None:
            raise RemoteProtocolError(str(self._error), self._error.error_status_hint)

    @abc.abstractmethod
    def _on_head(self, event: _HeadEvent) -> None:
        """Role-specific checks of a request or response head."""

    def _check_content_length(self, event: _HeadEvent) -> None:
        # h11 already rejected malformed or conflicting values.
        for name, value in _lowered_items(event.headers):
            if name == b"content-length":
                self._check_length_value(value)

    def _check_length_value(self, value: bytes) -> None:
        if int(value) > self._limits.max_body_size:
            raise RemoteProtocolError(
                f"body of {int(value)} bytes exceeds the limit of "
                f"{self._limits.max_body_size}",
                error_status_hint=413,
            )

    def _read_message(self) -> tuple[_HeadEvent, bytes] | NeedBytes | PeerClosed:
        """Advance h11 to the next complete message, enforcing the limits.

        Raises:
            RemoteProtocolError: the peer broke HTTP or a limit; stored, so
                later calls raise it again.
        """
        self._raise_stored_error()
        conn = self._conn
        limits = self._limits
        try:
            while True:
                if self._head_start < 0:
                    self._head_start = self._fed - _unparsed_size(conn)
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    raise RemoteProtocolError(
                        f"bad HTTP message: {exc}", exc.error_status_hint
                    ) from None
                kind = type(event)
                if kind is h11.Data:
                    data = event.data  # type: ignore[union-attr]  # kind is h11.Data (type() dispatch: hot path)
                    self._body_size += len(data)
                    if self._body_size > limits.max_body_size:
                        raise RemoteProtocolError(
                            f"body exceeds the limit of {limits.max_body_size} bytes",
                            error_status_hint=413,
                        )
                    self._body.append(data)
                elif kind is h11.EndOfMessage:
                    head = self._head
                    assert head is not None
                    body = b"".join(self._body)
                    self._head = None
                    self._head_start = -1
                    self._body = []
                    self._body_size = 0
                    return head, body
                elif kind is h11.Request or kind is h11.Response or kind is h11.InformationalResponse:
                    head_size = self._fed - _unparsed_size(conn) - self._head_start
                    if head_size > limits.max_head_size:
                        raise RemoteProtocolError(
                            f"message head of {head_size} bytes exceeds the limit of "
                            f"{limits.max_head_size}",
                            error_status_hint=431,
                        )
                    if len(event.headers) > limits.max_headers:  # type: ignore[union-attr]  # a head event, as above
                        raise RemoteProtocolError(
                            f"more than {limits.max_headers} header fields",
                            error_status_hint=431,
                        )
                    if kind is h11.InformationalResponse:
                        # 1xx: skipped; the final response's head is measured
                        # on its own.
                        self._head_start = -1
                        continue
                    self._head = event  # type: ignore[assignment]  # as above
                    self._on_head(event)  # type: ignore[arg-type]  # as above
                elif event is h11.NEED_DATA:
                    return NEED_BYTES
                elif kind is h11.ConnectionClosed:
                    return _CLOSED
                else:  # pragma: no cover - PAUSED: our callers never let h11 pause
                    raise RemoteProtocolError(f"unexpected HTTP state: {event!r}")
        except RemoteProtocolError as exc:
            raise self._fail(exc)


def _raw_response(status: int, reason: str, headers: Headers, body: bytes) -> bytes:
    # The same bytes h11 writes, for when h11 refuses to send (our side is in
    # its ERROR state after a failed send; nothing reached the wire).
    lines = [f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1")]
    lines.extend(b"%s: %s\r\n" % pair for pair in _encode_headers(headers))
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)


class HTTPServer(_Reader):
    """The server side of one HTTP/1.1 connection.

    Use: ``receive_data(bytes)``; ``next_request()`` until it returns a
    :class:`Request`, :data:`NEED_BYTES` (read more; write :meth:`data_to_send`
    first) or :class:`PeerClosed` (close); answer each request with
    :meth:`send_response`, or :meth:`send_error` after a
    :class:`~estproto.RemoteProtocolError`; close the transport once
    :attr:`closed` is true and the bytes are written.

    Args:
        limits: the limits for this connection.

    Raises:
        LocalProtocolError: *limits* is not an :class:`HTTPLimits`.
    """

    def __init__(self, limits: HTTPLimits = HTTPLimits()) -> None:
        super().__init__(h11.SERVER, limits)
        self._pending: Request | None = None  # returned, not yet answered
        self._method: str | None = None  # method of the request being read/answered
        self._requests_received = 0
        self._requests_handled = 0
        self._keep_alive = True
        # No further request: our last response closed the connection, or
        # the peer closed it between requests.
        self._done = False
        self._continue_sent = False

    # -- state ---------------------------------------------------------------

    @property
    def keep_alive(self) -> bool:
        """False once this connection will close after the current response:
        either side said ``Connection: close``, HTTP/1.0, the request limit,
        EOF or an error."""
        return self._keep_alive and not self._done and self._error is None and not self._eof

    @property
    def closed(self) -> bool:
        """True when no further request will be read: close the transport once
        the last bytes are written (a closing response or :meth:`send_error` was
        sent, the peer closed, or the peer broke the protocol)."""
        state = self._conn.their_state
        return (
            self._done
            or self._error is not None
            or state is h11.CLOSED
            or state is h11.ERROR
        )

    @property
    def awaiting_response(self) -> bool:
        """True while a request returned by :meth:`next_request` is unanswered."""
        return self._pending is not None

    @property
    def request_in_progress(self) -> bool:
        """True from the first byte of a request until :meth:`next_request`
        returns it (for the caller's request deadline; idle time between
        requests is not counted)."""
        if self._pending is not None or self.closed:
            return False
        state = self._conn.their_state
        return state is h11.SEND_BODY or (state is h11.IDLE and _unparsed_size(self._conn) > 0)

    @property
    def requests_handled(self) -> int:
        """Responses sent so far (``send_error`` included)."""
        return self._requests_handled

    # -- input ---------------------------------------------------------------

    def _on_head(self, event: _HeadEvent) -> None:
        assert isinstance(event, h11.Request)
        self._requests_received += 1
        self._method = event.method.decode("ascii")
        self._continue_sent = False
        if event.method == b"CONNECT":
            # RFC 7231 section 4.3.6 CONNECT asks for a tunnel; an origin
            # server that does not offer one answers 501.
            raise RemoteProtocolError("CONNECT is not supported", error_status_hint=501)
        # One pass for the body limit and h11's keep-alive rule, mirrored so
        # keep_alive is known before we answer: close on "Connection: close",
        # and never keep an HTTP/1.0 peer alive.
        close = event.http_version < b"1.1"
        for name, value in _lowered_items(event.headers):
            if name == b"content-length":
                self._check_length_value(value)
            elif name == b"connection" and not close:
                close = b"close" in (t.strip() for t in value.lower().split(b","))
        if close:
            self._keep_alive = False
        if self._requests_received >= self._limits.max_requests_per_connection:
            self._keep_alive = False

    def next_request(self) -> Request | NeedBytes | PeerClosed:
        """Parse the next complete request out of the received bytes.

        Returns:
            a :class:`Request` with its whole body; :data:`NEED_BYTES` when more
            bytes are needed; :class:`PeerClosed` when the peer closed
            cleanly between requests or our last response closed the
            connection.

        Raises:
            RemoteProtocolError: the peer broke HTTP (``error_status_hint``
                from h11: 400, 501 for an unknown Transfer-Encoding ...), sent a
                head over the limit or too many headers (431), a body over the
                limit (413, as soon as the head announces it), or closed in the
                middle of a request (400). The connection is then unusable
                except for :meth:`send_error`; later calls raise again.
            LocalProtocolError: the previous request is still unanswered.
        """
        if self._pending is not None:
            raise LocalProtocolError("answer the pending request before reading the next")
        if self._done:
            return _CLOSED
        conn = self._conn
        if self._error is None and conn.their_state is h11.IDLE and not _unparsed_size(conn):
            # Between requests with nothing buffered, h11's answer is known
            # without a trip through it: NEED_BYTES (no state change), or at
            # EOF PeerClosed, after which it reads nothing more (what
            # _done means here).
            if not self._eof:
                return NEED_BYTES
            self._done = True
            self._keep_alive = False
            return _CLOSED
        result = self._read_message()
        if isinstance(result, tuple):
            head, body = result
            assert isinstance(head, h11.Request)
            request: Request = _new_request(
                head.method.decode("ascii"),
                head.target.decode("ascii"),
                _decode_headers(_lowered_items(head.headers)),
                body,
                "1.1" if head.http_version == b"1.1" else head.http_version.decode("ascii"),
            )
            self._pending = request
            return request
        if result is _CLOSED:
            self._keep_alive = False
        return result

    def data_to_send(self) -> bytes:
        """Bytes to write while a request is still arriving.

        Today: ``HTTP/1.1 100 Continue`` once, when the client sent
        ``Expect: 100-continue`` and the head passed our limits (RFC 7231
        section 5.1.1: "A server that receives a 100-continue expectation ...
        MAY ... send a 100 (Continue) response"). Call it after
        :meth:`next_request` returns :data:`NEED_BYTES`.

        Returns:
            the bytes, or ``b""``.
        """
        conn = self._conn
        if (
            self._continue_sent
            or self._error is not None
            or not conn.they_are_waiting_for_100_continue
            or conn.our_state is not h11.SEND_RESPONSE
        ):
            return b""
        self._continue_sent = True
        return conn.send(h11.InformationalResponse(status_code=100, reason=b"Continue", headers=[]))

    # -- output --------------------------------------------------------------

    def _serialize(self, response: Response, headers: Headers) -> bytes:
        conn = self._conn
        status = response.status
        reason = response.reason or _REASONS.get(status, "")
        # RFC 7231 section 4.3.2: the server MUST NOT send a body in the
        # response to HEAD; Content-Length still gives the GET body's length.
        body = b"" if self._method == "HEAD" else response.body
        if conn.our_state is h11.ERROR:
            # A previous send failed before anything was returned, so nothing
            # of this response is on the wire; h11 refuses, we write it.
            return _raw_response(status, reason, headers, body)
        try:
            # Every header here passed _check_headers (the grammar h11 checks)
            # or is one we format ourselves, so h11 is told not to validate
            # them again (``_parsed=True``, its path for parsed input); it
            # still normalises names and checks Content-Length.
            out = conn.send(
                h11.Response(
                    status_code=status,
                    headers=_encode_headers(headers),
                    reason=reason.encode("latin-1"),
                    _parsed=True,
                )
            )
            if body:
                out += conn.send(h11.Data(data=body))
            out += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise LocalProtocolError(f"cannot send response: {exc}") from None
        return out

    def _finish_cycle(self) -> None:
        self._pending = None
        self._method = None
        self._requests_handled += 1
        conn = self._conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            # Ready for the next (maybe already buffered) pipelined request.
            conn.start_next_cycle()
        else:
            self._done = True

    def send_response(self, response: Response, *, now: float | None = None) -> bytes:
        """Serialise the answer to the pending request.

        The head is ``HTTP/1.1 <status> <reason>``, the caller's headers, then
        ``Content-Length`` (except 204 and 304, RFC 7230 section 3.3.2: "A
        server MUST NOT send a Content-Length header field in any response
        with a status code of ... 204"), ``Date`` when *now* is given, and
        ``Connection: close`` when the connection ends after it. Never chunked.
        A 401 with an empty body goes out with ``Content-Length: 0``
        (Bouncy Castle fails on a 401 that has a body).

        Args:
            response: a final response (status >= 200). A non-empty body needs
                a ``Content-Type``; no ``Content-Length``/``Transfer-Encoding``.
            now: the caller's clock (POSIX timestamp), for the ``Date`` header.

        Returns:
            the bytes to write. If :attr:`keep_alive` is now false, close after
            writing them.

        Raises:
            LocalProtocolError: no request is awaiting a response, or the
                response breaks a rule above. The pending request stays
                pending; :meth:`send_error` still works.
        """
        if self._pending is None:
            raise LocalProtocolError("no request is awaiting a response")
        if not isinstance(response, Response):
            raise LocalProtocolError("send_response() takes a Response")
        status = response.status
        if status < 200:
            raise LocalProtocolError("only final responses (status >= 200) can be sent")
        # One pass over the caller's headers for every rule below.
        has_type = has_date = has_connection = False
        for name, _ in response.headers:
            lowered = name.lower()
            if lowered == "content-type":
                has_type = True
            elif lowered == "date":
                has_date = True
            elif lowered == "connection":
                has_connection = True
            elif lowered in _FRAMING_HEADERS:
                raise LocalProtocolError(f"{name} is set by the HTTP layer, not the caller")
        if response.body and not has_type:
            raise LocalProtocolError("a response with a body needs a Content-Type")
        if status in (204, 304) and response.body:
            raise LocalProtocolError(f"a {status} response cannot have a body")
        headers = response.headers
        if status not in (204, 304):
            headers += (("Content-Length", str(len(response.body))),)
        if now is not None and not has_date:
            headers += (("Date", http_date(now)),)
        if not self._keep_alive and not has_connection:
            # h11 adds it for Connection: close / HTTP/1.0 requests; the request
            # limit is ours.
            headers += (("Connection", "close"),)
        out = self._serialize(response, headers)
        self._finish_cycle()
        return out

    def send_error(
        self,
        status: int,
        reason_text: str,
        *,
        headers: Iterable[tuple[str, str]] = (),
        now: float | None = None,
    ) -> bytes:
        """Serialise an error response and mark the connection to close.

        For a :class:`~estproto.RemoteProtocolError` (use its
        ``error_status_hint``), a request deadline (408), or any 4xx/5xx the
        caller decides on, whether or not a request is pending. The body is
        *reason_text* as ``text/plain`` (RFC 8951 section 5: "Servers MAY use
        the "text/plain" content-type [RFC2046] for human-readable errors"),
        except for 401, which goes out with no body and ``Content-Length: 0``.

        Args:
            status: 400..599.
            reason_text: a short human-readable reason.
            headers: extra headers, e.g. ``WWW-Authenticate`` or ``Retry-After``.
            now: the caller's clock (POSIX timestamp), for the ``Date`` header.

        Returns:
            the bytes to write; then close the transport.

        Raises:
            LocalProtocolError: bad arguments, or this request (or the
                connection) was already answered.
        """
        if type(status) is not int or not 400 <= status <= 599:
            raise LocalProtocolError(f"send_error() needs a 4xx or 5xx status, not {status!r}")
        if not isinstance(reason_text, str):
            raise LocalProtocolError("reason_text must be str")
        state = self._conn.our_state
        if self._done or state is h11.DONE or state is h11.MUST_CLOSE or state is h11.CLOSED:
            raise LocalProtocolError("a response was already sent on this connection cycle")
        extra = _check_headers(headers)
        for name, _ in extra:
            if name.lower() in _FRAMING_HEADERS or name.lower() == "connection":
                raise LocalProtocolError(f"{name} is set by the HTTP layer, not the caller")
        body = b"" if status == 401 else reason_text.rstrip("\r\n").encode("utf-8") + b"\n"
        all_headers = extra
        if body:
            all_headers += (("Content-Type", "text/plain; charset=utf-8"),)
        all_headers += (("Content-Length", str(len(body))),)
        if now is not None and not _has(all_headers, "date"):
            all_headers += (("Date", http_date(now)),)
        all_headers += (("Connection", "close"),)
        response: Response = _unchecked(
            Response, status=status, headers=all_headers, body=body, reason="", http_version="1.1"
        )
        out = self._serialize(response, all_headers)
        self._keep_alive = False
        self._pending = None
        self._method = None
        self._requests_handled += 1
        self._done = True
        return out


class HTTPClient(_Reader):
    """The client side of one HTTP/1.1 connection: one request at a time.

    Use: ``send_request(...)`` and write the bytes; ``receive_data(bytes)``;
    ``next_response()`` until it returns a :class:`Response`; reuse the
    connection while :attr:`keep_alive` is true, else close it.

    Responses may be framed by Content-Length, chunked, or end at EOF (libest
    answers 202 without Content-Length and closes). 1xx responses are skipped.
    The head and body limits apply to responses too.

    Args:
        host: the ``Host`` header value, e.g. ``"est.example.com:8443"``.
        limits: the limits for received responses.

    Raises:
        LocalProtocolError: *host* is not a valid header value.
    """

    def __init__(self, host: str, limits: HTTPLimits = HTTPLimits()) -> None:
        if not isinstance(host, str) or not host or not _TARGET_RE.fullmatch(host):
            raise LocalProtocolError(f"illegal host {host!r}")
        super().__init__(h11.CLIENT, limits)
        self._host = host
        self._method: str | None = None  # of the outstanding request
        self._fed_at_request = 0  # bytes received when it was sent

    @property
    def keep_alive(self) -> bool:
        """False once this connection cannot carry another request."""
        return not self.closed and self._conn.our_state is not h11.MUST_CLOSE

    @property
    def closed(self) -> bool:
        """True when the connection is finished: close the transport."""
        conn = self._conn
        return (
            self._error is not None
            or (self._eof and self._method is None)
            or conn.our_state in (h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)
            or conn.their_state in (h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)
        )

    def send_request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> bytes:
        """Serialise one request.

        ``Host`` comes first; a body (or any POST/PUT/PATCH) gets a
        ``Content-Length``, never chunked encoding.

        Args:
            method: e.g. ``"POST"``.
            target: e.g. ``"/.well-known/est/simpleenroll"``.
            headers: extra headers (not Host, Content-Length,
                Transfer-Encoding, Upgrade or Expect).
            body: the request body.

        Returns:
            the bytes to write.

        Raises:
            LocalProtocolError: a response is still outstanding, the connection
                cannot be reused, or an argument is invalid.
        """
        if self._method is not None:
            raise LocalProtocolError("read the outstanding response first")
        if not self.keep_alive:
            raise LocalProtocolError("this connection is closed; open a new one")
        request = Request(method, target, tuple(headers), body)
        if method == "CONNECT":
            raise LocalProtocolError("CONNECT is not supported")
        for name, _ in request.headers:
            if name.lower() in ("host", "content-length", "transfer-encoding", "upgrade", "expect"):
                raise LocalProtocolError(f"{name} is set by the HTTP layer, not the caller")
        all_headers: Headers = (("Host", self._host),) + request.headers
        if body or method in ("POST", "PUT", "PATCH"):
            all_headers += (("Content-Length", str(len(body))),)
        conn = self._conn
        try:
            out = conn.send(
                h11.Request(
                    method=method.encode("ascii"),
                    target=target.encode("ascii"),
                    headers=_encode_headers(all_headers),
                )
            )
            if body:
                out += conn.send(h11.Data(data=body))
            out += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:  # pragma: no cover - validated above
            raise LocalProtocolError(f"cannot send request: {exc}") from None
        self._method = method
        self._fed_at_request = self._fed
        return out

    def _on_head(self, event: _HeadEvent) -> None:
        assert isinstance(event, h11.Response)
        # RFC 7230 section 3.3.3: responses to HEAD and 204/304 have no body,
        # whatever Content-Length says.
        if self._method != "HEAD" and event.status_code not in (204, 304):
            self._check_content_length(event)

    def next_response(self) -> Response | NeedBytes:
        """Parse the response to the outstanding request.

        Returns:
            a :class:`Response` with its whole body, or :data:`NEED_BYTES`.

        Raises:
            RemoteProtocolError: the server broke HTTP or a limit, or closed
                the connection before a complete response. Later calls raise
                again.
            LocalProtocolError: no request is outstanding.
        """
        if self._method is None:
            raise LocalProtocolError("no request is outstanding")
        try:
            result = self._read_message()
        except RemoteProtocolError:
            if self._eof and self._fed == self._fed_at_request:
                # EOF before any byte of the response: h11 calls that a
                # protocol error; for the caller it is the keep-alive race.
                self._error = None
                raise self._fail(
                    ClosedBeforeResponse("server closed the connection without responding")
                ) from None
            raise
        if result is NEED_BYTES:
            return NEED_BYTES
        if isinstance(result, PeerClosed):
            raise self._fail(ClosedBeforeResponse("server closed the connection without responding"))
        head, body = result
        assert isinstance(head, h11.Response)
        response: Response = _unchecked(
            Response,
            status=head.status_code,
            headers=_decode_headers(head.headers),
            body=body,
            reason=head.reason.decode("latin-1"),
            http_version=head.http_version.decode("ascii"),
        )
        self._method = None
        conn = self._conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        return response
