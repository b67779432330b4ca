"""Configuration of server and client connections, with named deadlines.

Size limits live in :mod:`estproto._limits` (codecs) and
:class:`~estproto._http.HTTPLimits` (HTTP); this module adds the deadlines,
which the connections enforce through the time their callers pass in
(``receive_data(..., now=)`` and ``handle_timer(now)``): the core never reads
a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._errors import LocalProtocolError
from ._est_server import ESTServerSettings
from ._http import HTTPLimits
from ._tls import MAX_HANDSHAKE_BYTES, ClientTLSContext, ServerTLSContext

__all__ = [
    "ServerConfig",
    "ClientConfig",
    "HANDSHAKE_TIMEOUT",
    "REQUEST_TIMEOUT",
    "IDLE_TIMEOUT",
]

#: Seconds a client has to complete the TLS handshake. A real handshake takes
#: milliseconds even on slow links; 10 s stops ClientHello trickling
#: (slowloris) from holding a connection (nginx's ssl_handshake_timeout is 60 s,
#: but it runs event-driven with no per-connection cost we need to bound).
HANDSHAKE_TIMEOUT = 10.0

#: Seconds from the first byte of a request to its last. A CSR is a few KiB;
#: 30 s is generous for any link and bounds slow-body attacks (Apache's
#: mod_reqtimeout default is 20-40 s for the head, nginx client_header_timeout
#: and client_body_timeout 60 s).
REQUEST_TIMEOUT = 30.0

#: Seconds an idle keep-alive connection stays open between requests. EST
#: clients make a few requests in a row and go away; nginx's keepalive_timeout
#: is 75 s, Apache's KeepAliveTimeout 5 s. 15 s sits between.
IDLE_TIMEOUT = 15.0


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise LocalProtocolError(f"{name} must be positive")


@dataclass(frozen=True)
class ServerConfig:
    """Everything one :class:`ServerConnection` needs, shared by all of them.

    Attributes:
        tls: the TLS context; None means TLS is terminated elsewhere and bytes
            arrive in the clear (HTTP credentials are then ignored, RFC 7030
            3.2.3).
        est: EST-level settings (labels, PoP policy, line policy ...).
        http: HTTP limits (head size, body size, requests per connection).
        handshake_timeout, request_timeout, idle_timeout: deadlines, seconds.
        max_handshake_bytes: ciphertext accepted before the handshake ends.
    """

    tls: ServerTLSContext | None
    est: ESTServerSettings = field(default_factory=ESTServerSettings)
    http: HTTPLimits = field(default_factory=HTTPLimits)
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    request_timeout: float = REQUEST_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    max_handshake_bytes: int = MAX_HANDSHAKE_BYTES

    def __post_init__(self) -> None:
        for name in ("handshake_timeout", "request_timeout", "idle_timeout"):
            _check_positive(name, getattr(self, name))
        if self.tls is not None and not isinstance(self.tls, ServerTLSContext):
            raise LocalProtocolError("ServerConfig.tls must be a ServerTLSContext or None")


@dataclass(frozen=True)
class ClientConfig:
    """Everything one :class:`ClientConnection` needs.

    Attributes:
        tls: the client TLS context (trust anchors, client certificate).
        host: the server's DNS name or IP address, checked against its
            certificate and sent as Host and SNI.
        port: the server's port, for the Host header.
        http: HTTP limits applied to responses.
        request_timeout: seconds from sending a request to the end of its
            response.
        handshake_timeout: seconds for the TLS handshake.
    """

    tls: ClientTLSContext | None
    host: str
    port: int = 443
    http: HTTPLimits = field(default_factory=HTTPLimits)
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    request_timeout: float = REQUEST_TIMEOUT

    def __post_init__(self) -> None:
        _check_positive("handshake_timeout", self.handshake_timeout)
        _check_positive("request_timeout", self.request_timeout)
        if not self.host:
            raise LocalProtocolError("ClientConfig.host is required")
        if not 0 < self.port < 65536:
            raise LocalProtocolError("ClientConfig.port out of range")
