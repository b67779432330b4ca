"""The client side of one EST connection: EST over HTTP/1.1 over TLS, sans I/O.

:class:`ClientConnection` mirrors :class:`~estproto.server.ServerConnection`:
a :class:`~estproto._tls.TLSLayer` (client role), an
:class:`~estproto._http.HTTPClient` and an
:class:`~estproto._est_client.ESTClientProtocol`. Use::

    conn = ClientConnection(config, now=clock())
    conn.send(SimpleEnroll(csr=csr_der))       # queued until the handshake ends
    sock.sendall(conn.data_to_send())
    while (event := conn.next_event()) is NEED_DATA:
        conn.receive_data(sock.recv(65536), now=clock())
        sock.sendall(conn.data_to_send())
    # event is CertificateIssued, EnrollmentPending, ErrorReceived, ...

One request at a time (EST needs no pipelining). The connection answers an
HTTP authentication challenge by itself when it has credentials and the
server is authorized (RFC 7030 3.2.3: "The client MUST NOT respond to the
server's HTTP authentication request unless the client has authorized the EST
server"): on the same connection when the server keeps it open, otherwise by
handing back a ready ``retry`` request in :class:`AuthenticationChallenged`
for a new connection. A server may also close right after a 401 that did not
say ``Connection: close`` (libest's estserver does; RFC 9112 9.3 lets a server
close at any time): when the answer sent in place gets no byte of response
before the connection ends, :meth:`next_event` hands back the same
``AuthenticationChallenged`` with its ``retry``, exactly as if the 401 had
announced the close. An adapter whose transport fails outright (a reset)
feeds EOF (``receive_data(b"")``) and asks :meth:`next_event` the same way.

Bootstrap (7030 4.1.1): with a context that does not verify the server, the
connection only sends /cacerts (and /fullcmc, which 4.1.1 also allows) and
never answers authentication challenges; check the CA certificates out of
band (:func:`check_fingerprint`) before trusting them.

Errors: a broken response raises :class:`RemoteProtocolError` (a
:class:`DecodeError` for bodies) from :meth:`next_event`, after which the
connection is closed; TLS failures raise :class:`~estproto._tls.TLSError`
(server certificate problems: :class:`~estproto._tls.TLSVerificationError`).
Misuse raises :class:`LocalProtocolError`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Sequence, Union

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from . import auth
from ._config import ClientConfig
from ._errors import LocalProtocolError, RemoteProtocolError
from ._est_client import ESTClientProtocol
from ._events import (
    NEED_DATA,
    AuthenticationChallenged,
    ClientRequest,
    ClientResultEvent,
    ConnectionClosed,
    ConnectionTerminated,
    RawRequest,
    Sentinel,
)
from ._http import NEED_BYTES
from ._http import ClosedBeforeResponse, HTTPClient, Response
from ._paths import Operation
from ._state import CLIENT_TRANSITIONS, ConnectionState, ConnectionStateMachine, Input
from ._tls import ChannelBinding, PeerCertificate, TLSError, TLSLayer, TLSSession
from .codecs.pkcs10 import channel_binding_password

__all__ = ["ClientConnection", "Credentials", "ClientEvent", "check_fingerprint"]

ClientEvent = Union[ClientResultEvent, ConnectionClosed, ConnectionTerminated]

_CLOSED = ConnectionClosed()

# RFC 7030 4.1.1: a provisional (unverified) TLS session may carry only these.
_BOOTSTRAP_OPERATIONS = (Operation.CACERTS, Operation.FULLCMC)


@dataclass(frozen=True)
class Credentials:
    """HTTP credentials a client answers 401 challenges with.

    Attributes:
        username, password: the account; the password never appears in repr.
        preemptive_basic: send Basic with the first request, as curl
            ``--user`` does (only to an authorized server; never in bootstrap).
        prefer: challenge preference, best first (see :func:`auth.choose_challenge`).
    """

    username: str
    password: str = field(repr=False)
    preemptive_basic: bool = False
    prefer: tuple[str, ...] = tuple(auth.DEFAULT_PREFERENCE)


def check_fingerprint(certificates: Sequence[x509.Certificate], sha256_hex: str) -> x509.Certificate:
    """Find the certificate whose SHA-256 fingerprint is *sha256_hex*.

    The out-of-band check of RFC 7030 4.1.1 ("the client MUST ... verify the
    CA certificate(s) ... e.g., by comparing fingerprints"). Colons, spaces
    and case in *sha256_hex* are ignored.

    Raises:
        RemoteProtocolError: no certificate has that fingerprint.
    """
    wanted = bytes.fromhex(sha256_hex.replace(":", "").replace(" ", ""))
    for cert in certificates:
        if hmac.compare_digest(hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest(), wanted):
            return cert
    raise RemoteProtocolError("no CA certificate matches the expected fingerprint (RFC 7030 4.1.1)")


class ClientConnection:
    """One EST client connection.

    Args:
        config: the client configuration (TLS context, host, port, limits).
        credentials: for HTTP authentication, or None.
        now: the time the connection starts, in the caller's clock.
        session: a :class:`TLSSession` from an earlier connection to resume.
        lenient: tolerate known server quirks in responses.
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        credentials: Credentials | None = None,
        now: float = 0.0,
        session: TLSSession | None = None,
        lenient: bool = True,
    ) -> None:
        self.config = config
        self._credentials = credentials
        self._now = now
        self._tls = (
            TLSLayer(config.tls, server_hostname=config.host, session=session)
            if config.tls is not None
            else None
        )
        host = config.host if ":" not in config.host else f"[{config.host}]"
        self._http = HTTPClient(host if config.port == 443 else f"{host}:{config.port}", config.http)
        self._est = ESTClientProtocol(lenient=lenient)
        initial = ConnectionState.HANDSHAKING if self._tls is not None else ConnectionState.IDLE
        self._sm = ConnectionStateMachine(CLIENT_TRANSITIONS, initial)
        self._plain_out: list[bytes] = []
        self._queued: bytes | None = None  # request bytes waiting for the handshake
        self._current: ClientRequest | None = None  # sent, response awaited
        self._answered_challenge = False
        # The 401 answered in place on this connection, until a byte of the
        # response to that answer arrives: handed back for a new connection
        # if the server closes first.
        self._challenge: AuthenticationChallenged | None = None
        self._error: RemoteProtocolError | None = None
        self._terminated: ConnectionTerminated | None = None
        self._deadline: float | None = (
            now + config.handshake_timeout if self._tls is not None else None
        )

    # -- facts ---------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._sm.state

    @property
    def closed(self) -> bool:
        """True once nothing more will be sent or read."""
        return self._sm.state in (ConnectionState.CLOSING, ConnectionState.CLOSED)

    @property
    def server_authorized(self) -> bool:
        """The server passed certificate verification (RFC 7030 3.6)."""
        if self._tls is None or not self._tls.handshake_complete:
            return False
        peer = self._tls.peer_certificate
        return peer is not None and peer.verified

    @property
    def server_certificate(self) -> PeerCertificate | None:
        """The server's certificate and chain, once the handshake is done."""
        return self._tls.peer_certificate if self._tls is not None else None

    @property
    def channel_binding(self) -> ChannelBinding | None:
        """tls-unique (TLS 1.2) or tls-exporter (TLS 1.3), after the handshake."""
        return self._tls.channel_binding if self._tls is not None else None

    @property
    def pop_challenge_password(self) -> str:
        """The challengePassword value linking a CSR to this connection (3.5).

        Raises:
            LocalProtocolError: the handshake is not complete.
        """
        binding = self.channel_binding
        if binding is None:
            raise LocalProtocolError("no channel binding yet: wait for the TLS handshake")
        return channel_binding_password(binding.value)

    @property
    def tls_summary(self) -> str:
        """What the handshake agreed, for logs: version, cipher, whether the
        session was resumed and which server certificate was shown."""
        tls = self._tls
        if tls is None:
            return "plain TCP (no TLS)"
        if not tls.handshake_complete:
            return "TLS handshake not complete"
        peer = tls.peer_certificate
        shown = peer.certificate.subject.rfc4514_string() if peer is not None else "none"
        trust = "verified" if peer is not None and peer.verified else "NOT verified"
        resumed = ", resumed" if tls.session_reused else ""
        return f"{tls.version} {tls.cipher}{resumed}, server certificate {shown!r} ({trust})"

    @property
    def tls_session(self) -> TLSSession | None:
        """The TLS session, for resuming on a new connection."""
        return self._tls.session if self._tls is not None else None

    @property
    def _bootstrap(self) -> bool:
        context = self.config.tls
        return context is not None and not context.verify

    # -- requests ------------------------------------------------------------

    def send(self, request: ClientRequest) -> None:
        """Send *request* (queued until the TLS handshake completes).

        Raises:
            LocalProtocolError: a request is already outstanding, the
                connection is closed, the request cannot be encoded (a bad
                label, header or method), or a bootstrap connection was asked
                for anything but /cacerts or /fullcmc (RFC 7030 4.1.1). The
                connection is left unchanged.
        """
        if not isinstance(request, ClientRequest):
            raise LocalProtocolError("send() takes a ClientRequest event")
        if self.closed:
            raise LocalProtocolError("the connection is closed")
        if self._current is not None or self._queued is not None:
            raise LocalProtocolError("one request at a time: read the response first")
        if self._bootstrap and not isinstance(request, RawRequest) and (
            request.operation not in _BOOTSTRAP_OPERATIONS
        ):
            raise LocalProtocolError(
                "an unverified (bootstrap) connection may only fetch /cacerts (RFC 7030 4.1.1)"
            )
        if self._credentials is not None and self._credentials.preemptive_basic:
            if request.authorization is None and self._may_authenticate():
                request = dataclasses.replace(
                    request,
                    authorization=auth.basic_authorization(
                        self._credentials.username, self._credentials.password
                    ),
                )
        # Build the bytes first: a request the HTTP layer refuses (a bad
        # label, header or method) must leave the connection unchanged.
        data = self._build(request)
        self._sm.process(Input.REQUEST_STARTED)
        self._answered_challenge = request.authorization is not None
        self._current = request
        if self._sm.state is ConnectionState.HANDSHAKING:
            # Held back (not handed to TLS, which would flush it the moment
            # the handshake ends) so credentials can be checked against the
            # server's authorization first.
            self._queued = data
        else:
            self._deadline = self._now + self.config.request_timeout
            self._write(data)

    def _may_authenticate(self) -> bool:
        # Before the handshake we cannot know; preemptive Basic is then
        # attached only if the context verifies (the handshake will fail
        # otherwise before any byte of the request is sent).
        if self._tls is None:
            return False
        if self._tls.handshake_complete:
            return self.server_authorized
        return not self._bootstrap

    def _build(self, request: ClientRequest) -> bytes:
        method, target, headers, body = self._est.build_request(request)
        return self._http.send_request(method, target, headers, body)

    def _write_request(self, request: ClientRequest) -> None:
        data = self._build(request)
        self._current = request
        self._deadline = self._now + self.config.request_timeout
        self._write(data)

    def _write(self, data: bytes) -> None:
        if self._tls is None:
            self._plain_out.append(data)
        else:
            self._tls.write(data)

    # -- input ---------------------------------------------------------------

    def receive_data(self, data: bytes, now: float | None = None) -> None:
        """Feed bytes read from the transport; ``b""`` means EOF.

        Errors are not raised here but from the next :meth:`next_event`.
        """
        if now is not None:
            self._now = now
        if self.closed:
            return
        tls = self._tls
        if tls is None:
            self._http.receive_data(data)
            return
        was_complete = tls.handshake_complete
        try:
            tls.receive_data(data)
        except TLSError as exc:
            self._fail(exc)
            return
        if not was_complete and tls.handshake_complete:
            self._sm.process(Input.HANDSHAKE_DONE)
            self._deadline = None
            queued, self._queued = self._queued, None
            if queued is not None:
                self._sm.process(Input.REQUEST_STARTED)
                request = self._current
                assert request is not None
                if request.authorization is not None and not self.server_authorized:
                    # 3.2.3: never send credentials to an unauthorized server.
                    self._fail(RemoteProtocolError(
                        "server not authorized: credentials withheld (RFC 7030 3.2.3)"
                    ))
                    return
                self._deadline = self._now + self.config.request_timeout
                self._write(queued)
        plaintext = tls.read()
        if plaintext:
            self._http.receive_data(plaintext)
        if tls.peer_closed or (not data and tls.handshake_complete):
            self._http.receive_data(b"")
        elif not data:
            self._fail(TLSError("server closed the connection during the TLS handshake"))

    def _fail(self, exc: RemoteProtocolError) -> None:
        if self._error is None:
            self._error = exc
        self._close()

    def next_event(self) -> ClientEvent | Sentinel:
        """The result of the outstanding request, or :data:`NEED_DATA`.

        Returns:
            a result event (:class:`CertificateIssued`, :class:`ErrorReceived`
            ...), :class:`ConnectionClosed` when the server closed an idle
            connection, :class:`ConnectionTerminated` after a deadline, or
            :data:`NEED_DATA`.

        Raises:
            RemoteProtocolError: the server broke TLS, HTTP or EST (raised
                once; the connection is closed afterwards).
        """
        if self._error is not None:
            # A fault found while sending (e.g. in a TLS read): reported here,
            # once, like every other fault of the server.
            error, self._error = self._error, None
            self._current = None
            raise error
        if self._terminated is not None:
            event, self._terminated = self._terminated, None
            return event
        while True:
            if self.closed:
                return _CLOSED
            request = self._current
            if request is None:
                if self._http.closed:
                    self._close()
                    return _CLOSED
                return NEED_DATA
            try:
                result = self._next_result(request)
            except RemoteProtocolError:
                # The one place a server's fault becomes our exception: the
                # request is over and so is the connection.
                self._current = None
                self._close()
                raise
            if result is not None:
                return result

    def _next_result(self, request: ClientRequest) -> ClientEvent | Sentinel | None:
        """The result for *request*, NEED_DATA, or None when a 401 was just
        answered on this connection (read on: the answer's result follows).

        Raises:
            RemoteProtocolError: the server broke HTTP or EST.
        """
        challenge, self._challenge = self._challenge, None
        try:
            response = self._http.next_response()
        except ClosedBeforeResponse:
            if challenge is None:
                raise
            # The server closed after its 401 without saying so: our answer
            # never reached it. Hand it back for a new connection.
            self._current = None
            self._close()
            return challenge
        if response is NEED_BYTES:
            self._challenge = challenge
            return NEED_DATA
        assert isinstance(response, Response)
        result = self._est.parse_response(request, response.status, response.headers, response.body)
        self._current = None
        self._deadline = None
        if isinstance(result, AuthenticationChallenged):
            retry = self._answer(request, result)
            result = AuthenticationChallenged(result.challenges, retry)
            if retry is not None and self._http.keep_alive:
                self._answered_challenge = True
                self._write_request(retry)
                self._challenge = result
                return None
        self._sm.process(Input.RESPONSE_DONE)
        if not self._http.keep_alive:
            self._close()
        return result

    def _answer(self, request: ClientRequest, challenged: AuthenticationChallenged) -> ClientRequest | None:
        creds = self._credentials
        if creds is None or self._answered_challenge or not self.server_authorized:
            return None
        method, target, _, _ = self._est.build_request(request)
        challenges = [c for c in challenged.challenges if isinstance(c, auth.Challenge)]
        try:
            value = auth.answer_challenge(
                challenges, creds.username, creds.password, method, target,
                server_authorized=True, prefer=creds.prefer,
            )
        except LocalProtocolError:
            return None
        if value is None:
            return None
        return dataclasses.replace(request, authorization=value)

    # -- output, closing, time -----------------------------------------------

    def data_to_send(self) -> bytes:
        """Bytes to write to the transport now (maybe ``b""``)."""
        if self._tls is None:
            out = b"".join(self._plain_out)
            self._plain_out.clear()
        else:
            out = self._tls.data_to_send()
        if self._sm.state is ConnectionState.CLOSING and not out:
            self._sm.process(Input.FINISHED)
        return out

    def _close(self) -> None:
        if self.closed:
            return
        self._sm.process(Input.CLOSE)
        self._deadline = None
        if self._tls is not None:
            try:
                self._tls.close()
            except (TLSError, LocalProtocolError):
                pass  # already closed: no close_notify to send

    def close(self) -> None:
        """Close from our side (close_notify when TLS is up)."""
        self._close()

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called, or None."""
        return self._deadline

    def handle_timer(self, now: float) -> None:
        """Enforce the handshake and response deadlines."""
        self._now = now
        if self._deadline is None or now < self._deadline:
            return
        what = "TLS handshake" if self._sm.state is ConnectionState.HANDSHAKING else "response"
        self._current = None
        self._queued = None
        self._terminated = ConnectionTerminated(f"{what} timed out")
        self._close()
