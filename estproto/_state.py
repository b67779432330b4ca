"""Connection states and the one table of transitions between them.

As in h11's ``_state.py``: every state change of a connection goes through
:meth:`ConnectionStateMachine.process`, which looks the pair (state, input) up
in :data:`SERVER_TRANSITIONS` or :data:`CLIENT_TRANSITIONS`. A pair that is not
in the table raises :class:`LocalProtocolError`: an impossible transition is a
bug to surface, never a state to drift into. A hypothesis test walks these
tables.
"""

from __future__ import annotations

import enum
from typing import Mapping

from ._errors import LocalProtocolError

__all__ = [
    "ConnectionState",
    "Input",
    "SERVER_TRANSITIONS",
    "CLIENT_TRANSITIONS",
    "EST_LAYER_TRANSITIONS",
    "ConnectionStateMachine",
]


class ConnectionState(enum.Enum):
    """Where one EST connection is, seen from our side."""

    # Members are singletons compared by identity, so identity hashing is
    # consistent with equality; Enum's own __hash__ (hash of the name) is a
    # Python-level call on every transition-table lookup.
    __hash__ = object.__hash__

    #: TLS handshake in progress (no HTTP yet).
    HANDSHAKING = "handshaking"
    #: Between requests: the connection is open and nothing is in flight.
    IDLE = "idle"
    #: Server: part of a request has arrived. Client: a request was sent and
    #: its response is awaited.
    IN_REQUEST = "in-request"
    #: Server: a request event was emitted; the application owes its answer.
    AWAITING_RESPONSE = "awaiting-response"
    #: We decided to close: remaining bytes (a last response, an alert,
    #: close_notify) are in data_to_send(); nothing more is read.
    CLOSING = "closing"
    #: Finished: nothing more will be sent or received.
    CLOSED = "closed"


class Input(enum.Enum):
    """What can happen to a connection."""

    __hash__ = object.__hash__  # see ConnectionState

    #: The TLS handshake completed.
    HANDSHAKE_DONE = "handshake-done"
    #: The first bytes of a request (server) arrived / a request was sent (client).
    REQUEST_STARTED = "request-started"
    #: A complete request was turned into an event for the application.
    REQUEST_RECEIVED = "request-received"
    #: A response was sent (server) or received (client); keep-alive continues.
    RESPONSE_DONE = "response-done"
    #: We are closing: error reply, limit, deadline, Connection: close, close().
    CLOSE = "close"
    #: Everything we had to send is handed over and the peer is done, or the
    #: transport is gone.
    FINISHED = "finished"


_S = ConnectionState
_I = Input

#: The server's (state, input) -> new state table.
SERVER_TRANSITIONS: Mapping[tuple[ConnectionState, Input], ConnectionState] = {
    (_S.HANDSHAKING, _I.HANDSHAKE_DONE): _S.IDLE,
    (_S.HANDSHAKING, _I.CLOSE): _S.CLOSING,
    (_S.HANDSHAKING, _I.FINISHED): _S.CLOSED,
    (_S.IDLE, _I.REQUEST_STARTED): _S.IN_REQUEST,
    # A whole request can arrive in one read.
    (_S.IDLE, _I.REQUEST_RECEIVED): _S.AWAITING_RESPONSE,
    # A request rejected by the EST layer itself is answered at once.
    (_S.IDLE, _I.RESPONSE_DONE): _S.IDLE,
    (_S.IDLE, _I.CLOSE): _S.CLOSING,
    (_S.IDLE, _I.FINISHED): _S.CLOSED,
    (_S.IN_REQUEST, _I.REQUEST_RECEIVED): _S.AWAITING_RESPONSE,
    (_S.IN_REQUEST, _I.RESPONSE_DONE): _S.IDLE,
    (_S.IN_REQUEST, _I.CLOSE): _S.CLOSING,
    (_S.IN_REQUEST, _I.FINISHED): _S.CLOSED,
    (_S.AWAITING_RESPONSE, _I.RESPONSE_DONE): _S.IDLE,
    (_S.AWAITING_RESPONSE, _I.CLOSE): _S.CLOSING,
    (_S.AWAITING_RESPONSE, _I.FINISHED): _S.CLOSED,
    (_S.CLOSING, _I.CLOSE): _S.CLOSING,
    (_S.CLOSING, _I.FINISHED): _S.CLOSED,
    (_S.CLOSED, _I.CLOSE): _S.CLOSED,
    (_S.CLOSED, _I.FINISHED): _S.CLOSED,
}

#: The client's (state, input) -> new state table.
CLIENT_TRANSITIONS: Mapping[tuple[ConnectionState, Input], ConnectionState] = {
    (_S.HANDSHAKING, _I.HANDSHAKE_DONE): _S.IDLE,
    # A request may be queued before the handshake ends; it is sent after.
    (_S.HANDSHAKING, _I.REQUEST_STARTED): _S.HANDSHAKING,
    (_S.HANDSHAKING, _I.CLOSE): _S.CLOSING,
    (_S.HANDSHAKING, _I.FINISHED): _S.CLOSED,
    (_S.IDLE, _I.REQUEST_STARTED): _S.IN_REQUEST,
    (_S.IDLE, _I.CLOSE): _S.CLOSING,
    (_S.IDLE, _I.FINISHED): _S.CLOSED,
    (_S.IN_REQUEST, _I.RESPONSE_DONE): _S.IDLE,
    (_S.IN_REQUEST, _I.CLOSE): _S.CLOSING,
    (_S.IN_REQUEST, _I.FINISHED): _S.CLOSED,
    (_S.CLOSING, _I.CLOSE): _S.CLOSING,
    (_S.CLOSING, _I.FINISHED): _S.CLOSED,
    (_S.CLOSED, _I.CLOSE): _S.CLOSED,
    (_S.CLOSED, _I.FINISHED): _S.CLOSED,
}


#: The bare EST layer's table (:class:`~estproto.ESTServerProtocol`, used
#: alone by hosts that terminate HTTP themselves, and inside
#: :class:`~estproto.ServerConnection`): the server's request cycle without
#: the transport states.
EST_LAYER_TRANSITIONS: Mapping[tuple[ConnectionState, Input], ConnectionState] = {
    (_S.IDLE, _I.REQUEST_RECEIVED): _S.AWAITING_RESPONSE,
    (_S.AWAITING_RESPONSE, _I.RESPONSE_DONE): _S.IDLE,
}


class ConnectionStateMachine:
    """Holds one connection's state and applies the transition table."""

    __slots__ = ("state", "_table")

    def __init__(
        self,
        table: Mapping[tuple[ConnectionState, Input], ConnectionState],
        initial: ConnectionState = ConnectionState.HANDSHAKING,
    ) -> None:
        self._table = table
        self.state = initial

    def can(self, event: Input) -> bool:
        """Whether *event* is allowed in the current state."""
        return (self.state, event) in self._table

    def process(self, event: Input) -> ConnectionState:
        """Apply *event*.

        Raises:
            LocalProtocolError: the table has no entry for (state, event); the
                state is left unchanged.
        """
        try:
            self.state = self._table[(self.state, event)]
        except KeyError:
            raise LocalProtocolError(
                f"cannot handle {event.value} in state {self.state.value}"
            ) from None
        return self.state
