"""The server side of one EST connection: EST over HTTP/1.1 over TLS, sans I/O.

:class:`ServerConnection` stacks three layers, each usable on its own:

* :class:`~estproto._tls.TLSLayer` (pyOpenSSL memory BIOs) turns ciphertext
  into plaintext and back, and knows the channel binding and client
  certificate;
* :class:`~estproto._http.HTTPServer` (h11 plus our limits) turns plaintext
  into complete requests and responses into plaintext;
* :class:`~estproto._est_server.ESTServerProtocol` turns requests into EST events and
  EST responses into HTTP responses.

Use (the adapters in :mod:`estproto.trio` and :mod:`estproto.asyncio` do
exactly this)::

    conn = ServerConnection(config, now=clock())
    while not conn.closed:
        conn.receive_data(sock.recv(65536), now=clock())   # b"" at EOF
        while (event := conn.next_event()) not in (NEED_DATA, PAUSED):
            if isinstance(event, ServerRequest):
                conn.send(answer(event))
            elif isinstance(event, (ConnectionClosed, ConnectionTerminated)):
                break
        sock.sendall(conn.data_to_send())
        # and: when clock() reaches conn.get_timer(), call conn.handle_timer(clock())

Peer faults never raise out of :meth:`next_event`: malformed HTTP, limits
and deadlines are answered on the wire (400, 408, 413, 431 ...) and reported
as :class:`ConnectionTerminated`; TLS failures close the connection with an
alert. Only misuse raises (:class:`LocalProtocolError`).
"""

from __future__ import annotations

from collections import deque
from typing import Union

from ._errors import LocalProtocolError, RemoteProtocolError
from ._est_server import ESTServerProtocol, RequestRejected
from ._events import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    ConnectionFacts,
    ConnectionTerminated,
    Sentinel,
    ServerRequest,
    ServerResponse,
)
from ._http import NEED_BYTES
from ._http import HTTPServer, Request, Response
from ._config import ServerConfig
from ._state import SERVER_TRANSITIONS, ConnectionState, ConnectionStateMachine, Input
from ._tls import TLSError, TLSLayer

__all__ = ["ServerConnection", "ServerEvent"]

ServerEvent = Union[ServerRequest, RequestRejected, ConnectionClosed, ConnectionTerminated]

_CLOSED = ConnectionClosed()


class ServerConnection:
    """One EST server connection.

    Args:
        config: shared server configuration (TLS context, limits, settings).
        now: the time the connection was accepted, in the caller's clock
            (any monotonic seconds); deadlines are measured from it.
        peer: the peer's address for :class:`ConnectionFacts` and logs.
    """

    def __init__(self, config: ServerConfig, *, now: float = 0.0, peer: str | None = None) -> None:
        self.config = config
        self._peer = peer
        self._now = now
        self._tls = (
            TLSLayer(config.tls, max_handshake_bytes=config.max_handshake_bytes)
            if config.tls is not None
            else None
        )
        self._http = HTTPServer(config.http)
        self._est = ESTServerProtocol(config.est)
        initial = ConnectionState.HANDSHAKING if self._tls is not None else ConnectionState.IDLE
        self._sm = ConnectionStateMachine(SERVER_TRANSITIONS, initial)
        self._events: deque[ConnectionTerminated] = deque()
        self._plain_out: list[bytes] = []
        self._facts: ConnectionFacts | None = None
        self._cut_short = False
        self._deadline: float | None = now + (
            config.handshake_timeout if self._tls is not None else config.idle_timeout
        )

    # -- state ---------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        """The connection's state (see :class:`ConnectionState`)."""
        return self._sm.state

    @property
    def closed(self) -> bool:
        """True once nothing more will be read: write the last
        :meth:`data_to_send` and close the transport."""
        return self._sm.state in (ConnectionState.CLOSING, ConnectionState.CLOSED)

    @property
    def request_cut_short(self) -> bool:
        """True once the connection was closed after answering a request it
        had not read to the end (an early 400, 408, 413 or 431): the peer
        may still be sending it. RFC 9112 section 9.6: closing at once can
        make the peer's TCP reset destroy that answer, so the transport
        should half-close and keep reading (and dropping) for a while."""
        return self._cut_short

    @property
    def facts(self) -> ConnectionFacts | None:
        """TLS facts of this connection, once the handshake is complete."""
        if self._facts is None and (self._tls is None or self._tls.handshake_complete):
            self._facts = self._build_facts()
        return self._facts

    def _build_facts(self) -> ConnectionFacts:
        tls = self._tls
        if tls is None:
            return ConnectionFacts(is_tls=False, peer=self._peer)
        binding = tls.channel_binding
        peer = tls.peer_certificate
        # Every value comes typed from our TLS layer, so the instance is
        # filled in one step, without the field checks a caller's
        # ConnectionFacts gets (~3 us a connection; tests compare the two).
        facts: ConnectionFacts = object.__new__(ConnectionFacts)
        facts.__dict__.update(
            is_tls=True,
            tls_version=tls.version,
            channel_binding=binding.value if binding is not None else None,
            channel_binding_type=binding.kind if binding is not None else None,
            client_certificate=peer.certificate if peer is not None else None,
            client_chain=peer.chain if peer is not None else (),
            client_certificate_verified=peer.verified if peer is not None else False,
            client_certificate_errors=tuple(str(e) for e in peer.errors) if peer is not None else (),
            peer=self._peer,
        )
        return facts

    # -- input ---------------------------------------------------------------

    def receive_data(self, data: bytes, now: float | None = None) -> None:
        """Feed bytes read from the transport; ``b""`` means EOF.

        Args:
            data: ciphertext (or plaintext when the config has no TLS).
            now: the current time in the caller's clock, for deadlines.

        Bytes arriving after the connection started closing are discarded.
        """
        if now is not None:
            self._now = now
        sm = self._sm
        if sm.state is ConnectionState.CLOSING or sm.state is ConnectionState.CLOSED:
            return
        tls = self._tls
        http = self._http
        if tls is None:
            http.receive_data(data)
        else:
            was_complete = tls.handshake_complete
            try:
                tls.receive_data(data)
            except TLSError as exc:
                self._terminate(f"TLS: {exc}", None)
                return
            complete = tls.handshake_complete
            if not was_complete and complete:
                sm.process(Input.HANDSHAKE_DONE)
                self._deadline = self._now + self.config.idle_timeout
            plaintext = tls.read()
            if plaintext:
                http.receive_data(plaintext)
            if tls.peer_closed:
                http.receive_data(b"")
            elif not complete and not data:
                self._terminate("peer closed during the TLS handshake", None)
                return
        if sm.state is ConnectionState.IDLE and http.request_in_progress:
            sm.process(Input.REQUEST_STARTED)
            self._deadline = self._now + self.config.request_timeout

    def next_event(self) -> ServerEvent | Sentinel:
        """The next event, or :data:`NEED_DATA` / :data:`PAUSED`.

        Returns:
            a :class:`ServerRequest` subclass to answer with :meth:`send`;
            :class:`RequestRejected` (already answered, for logs);
            :class:`ConnectionTerminated` or :class:`ConnectionClosed` once the
            connection is over; :data:`PAUSED` while a request is unanswered;
            :data:`NEED_DATA` when more bytes are needed.
        """
        if self._events:
            return self._events.popleft()
        state = self._sm.state
        if state is ConnectionState.CLOSING or state is ConnectionState.CLOSED:
            return _CLOSED
        if state is ConnectionState.HANDSHAKING:
            return NEED_DATA
        if state is ConnectionState.AWAITING_RESPONSE:
            return PAUSED
        try:
            result = self._http.next_request()
        except RemoteProtocolError as exc:
            return self._fail_request(exc.error_status_hint, str(exc))
        if result is NEED_BYTES:
            interim = self._http.data_to_send()  # 100 Continue, if asked for
            if interim:
                self._write(interim)
            return NEED_DATA
        if not isinstance(result, Request):
            self._close()
            return _CLOSED
        sm = self._sm
        if sm.state is ConnectionState.IDLE:
            sm.process(Input.REQUEST_STARTED)
        facts = self._facts
        if facts is None:
            facts = self._facts = self._build_facts()
        event = self._est.receive_request(
            result.method, result.target, result.headers, result.body, facts
        )
        if isinstance(event, RequestRejected):
            self._reply(Response(event.reply.status, event.reply.headers, event.reply.body))
        else:
            sm.process(Input.REQUEST_RECEIVED)
            self._deadline = None  # the application's turn: no deadline of ours
        return event

    # -- output --------------------------------------------------------------

    def send(self, response: ServerResponse) -> int:
        """Answer the request last returned by :meth:`next_event`.

        If the connection was closed meanwhile because of the peer (a TLS
        failure, EOF, a deadline), the answer is still checked, then dropped:
        the peer's fault never raises here.

        Returns:
            the HTTP status sent (for the caller's request log).

        Raises:
            LocalProtocolError: no request is waiting, or *response* does not
                answer it or cannot be sent (the request stays unanswered).
        """
        state = self._sm.state
        if state is not ConnectionState.AWAITING_RESPONSE:
            if self.closed and self._est.current_request is not None:
                return self._est.respond(response).status  # nowhere to send it
            raise LocalProtocolError(f"no request to answer in state {state.value}")
        reply = self._est.prepare_reply(response)
        # Serialise before committing, so a response the HTTP layer refuses
        # (e.g. a non-latin-1 challenge) leaves the request pending.
        data = self._http.send_response(Response(reply.status, reply.headers, reply.body))
        self._est.reply_sent()
        self._after_reply(data)
        return reply.status

    def _reply(self, response: Response) -> None:
        self._after_reply(self._http.send_response(response))

    def _after_reply(self, data: bytes) -> None:
        self._write(data)
        if self.closed:
            return  # the write failed and closed the connection
        self._sm.process(Input.RESPONSE_DONE)
        self._deadline = self._now + self.config.idle_timeout
        if not self._http.keep_alive:
            self._close()
        elif self._http.request_in_progress:
            # Part of a pipelined request already arrived: its clock runs.
            self._sm.process(Input.REQUEST_STARTED)
            self._deadline = self._now + self.config.request_timeout

    def _fail_request(self, status: int, reason: str) -> ConnectionTerminated:
        if not 400 <= status < 600:
            status = 400
        try:
            self._write(self._http.send_error(status, reason))
            sent: int | None = status
            self._cut_short = True
        except LocalProtocolError:
            sent = None  # a response already went out; just close
        self._close()
        return ConnectionTerminated(reason, sent)

    def _write(self, data: bytes) -> None:
        if self._tls is None:
            self._plain_out.append(data)
            return
        try:
            self._tls.write(data)
        except (TLSError, LocalProtocolError) as exc:
            self._terminate(f"TLS: {exc}", None)

    def _terminate(self, reason: str, status: int | None) -> None:
        self._events.append(ConnectionTerminated(reason, status))
        self._close()

    def _close(self) -> None:
        if self.closed:
            return
        self._sm.process(Input.CLOSE)
        self._deadline = None
        if self._tls is not None:
            try:
                self._tls.close()
            except (TLSError, LocalProtocolError):
                pass  # the TLS layer is already closed; nothing more to send

    def close(self) -> None:
        """Close the connection from our side (close_notify when TLS is up)."""
        self._close()

    def data_to_send(self) -> bytes:
        """Bytes to write to the transport now (maybe ``b""``).

        Once :attr:`closed` is true and this returned everything, close the
        transport.
        """
        if self._tls is None:
            out = b"".join(self._plain_out)
            self._plain_out.clear()
        else:
            out = self._tls.data_to_send()
        if self._sm.state is ConnectionState.CLOSING and not out:
            self._sm.process(Input.FINISHED)
        return out

    # -- time ----------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called (caller's clock), or None."""
        return self._deadline

    def handle_timer(self, now: float) -> None:
        """Enforce the deadline if *now* has reached it.

        A handshake deadline closes the connection; a request deadline answers
        408 and closes; an idle deadline closes quietly with close_notify.
        Each is reported by :class:`ConnectionTerminated` from
        :meth:`next_event`.
        """
        self._now = now
        deadline = self._deadline
        if deadline is None or now < deadline:
            return
        state = self._sm.state
        if state is ConnectionState.HANDSHAKING:
            self._terminate("TLS handshake timed out", None)
        elif state is ConnectionState.IN_REQUEST:
            self._events.append(self._fail_request(408, "request timed out"))
        elif state is ConnectionState.IDLE:
            self._terminate("idle keep-alive connection timed out", None)
        else:
            self._deadline = None
