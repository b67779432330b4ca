"""A blocking EST client: stdlib sockets driving :class:`estproto.ClientSession`.

For scripts and devices with neither trio nor asyncio. It makes the same
decisions as the async clients, because it runs the same session (keep-alive,
reconnects, the 401 retry, Retry-After, PoP linking, the same exceptions); this
module only moves bytes and sleeps, as h11's own examples do::

    from estproto.sync import ESTClient

    with ESTClient("est.example", 443, tls, credentials=creds) as client:
        ca_certs = client.cacerts()
        cert = client.simpleenroll_linked(key, subject)

Every wait is bounded: reads by the core's deadlines, writes by
:data:`~estproto._adapter_common.WRITE_TIMEOUT`, the connect by
``connect_timeout``, closing by :data:`~estproto.CLOSE_TIMEOUT`. Not
thread-safe: one client per thread (one request at a time per client).
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any, Callable, TypeVar

from cryptography import x509

from ._adapter_common import RECEIVE_SIZE, WRITE_TIMEOUT
from ._client_session import CLOSE_TIMEOUT, ClientSession, Steps, drive
from ._events import ClientRequest, ClientResultEvent, FullCMCReceived, ServerKeyReceived
from ._tls import ClientTLSContext
from .client import ClientConnection
from .codecs import pkcs10
from .codecs.csrattrs import CsrAttributes

__all__ = ["ESTClient", "SocketTransport"]

_T = TypeVar("_T")
_Self = TypeVar("_Self", bound="ESTClient")


class SocketTransport:
    """A blocking TCP socket as the :class:`estproto.Transport` of :func:`estproto.drive`."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None

    def connect(self, host: str, port: int, timeout: float) -> None:
        try:
            self._sock = socket.create_connection((host, port), timeout=timeout)
        except socket.timeout:
            raise TimeoutError(f"connecting to {host}:{port} timed out") from None
        # A request goes out in one write; don't let Nagle hold its tail.
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def write(self, data: bytes) -> None:
        sock = self._connected()
        sock.settimeout(WRITE_TIMEOUT)
        try:
            sock.sendall(data)
        except socket.timeout:
            raise TimeoutError("write timed out: the peer stopped reading") from None

    def read(self, deadline: float | None) -> bytes | None:
        sock = self._connected()
        if deadline is None:
            sock.settimeout(None)
        else:
            remaining = deadline - self.clock()
            if remaining <= 0:
                return None
            sock.settimeout(remaining)
        try:
            return sock.recv(RECEIVE_SIZE)
        except socket.timeout:
            return None

    def disconnect(self, final: bytes) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.settimeout(CLOSE_TIMEOUT)
            if final:
                sock.sendall(final)
            sock.shutdown(socket.SHUT_WR)
        sock.close()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def clock(self) -> float:
        return time.monotonic()

    def _connected(self) -> socket.socket:
        if self._sock is None:
            raise ConnectionError("not connected")
        return self._sock


class ESTClient:
    """A blocking EST client; use as ``with ESTClient(...) as client``.

    Args, operations and errors: those of :class:`estproto.ClientSession`
    (host, port, tls, credentials, label, max_retries, max_retry_wait,
    lenient, request_timeout, connect_timeout), each called directly.
    """

    def __init__(self, host: str, port: int, tls: ClientTLSContext, **settings: Any) -> None:
        self.session = ClientSession(host, port, tls, **settings)
        self._transport = SocketTransport()

    def _drive(self, steps: Steps[_T]) -> _T:
        return drive(steps, self._transport)

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (close_notify, then the socket). Idempotent."""
        self._drive(self.session.close())

    def request(self, event: ClientRequest) -> ClientResultEvent:
        """See :meth:`ClientSession.request`."""
        return self._drive(self.session.request(event))

    def request_built(self, build: Callable[[ClientConnection], ClientRequest]) -> ClientResultEvent:
        """See :meth:`ClientSession.request_built`."""
        return self._drive(self.session.request_built(build))

    def cacerts(self) -> tuple[x509.Certificate, ...]:
        """See :meth:`ClientSession.cacerts`."""
        return self._drive(self.session.cacerts())

    def csrattrs(self) -> CsrAttributes | None:
        """See :meth:`ClientSession.csrattrs`."""
        return self._drive(self.session.csrattrs())

    def simpleenroll(self, csr_der: bytes) -> x509.Certificate:
        """See :meth:`ClientSession.simpleenroll`."""
        return self._drive(self.session.simpleenroll(csr_der))

    def simplereenroll(self, csr_der: bytes) -> x509.Certificate:
        """See :meth:`ClientSession.simplereenroll`."""
        return self._drive(self.session.simplereenroll(csr_der))

    def simpleenroll_linked(
        self, key: pkcs10.PrivateKey, subject: x509.Name, **csr_kwargs: Any
    ) -> x509.Certificate:
        """See :meth:`ClientSession.simpleenroll_linked`."""
        return self._drive(self.session.simpleenroll_linked(key, subject, **csr_kwargs))

    def simplereenroll_linked(
        self, key: pkcs10.PrivateKey, subject: x509.Name, **csr_kwargs: Any
    ) -> x509.Certificate:
        """See :meth:`ClientSession.simplereenroll_linked`."""
        return self._drive(self.session.simplereenroll_linked(key, subject, **csr_kwargs))

    def serverkeygen(
        self,
        csr_der: bytes,
        *,
        kek: bytes | None = None,
        kek_id: bytes | None = None,
        decryption_key: pkcs10.PrivateKey | None = None,
    ) -> ServerKeyReceived:
        """See :meth:`ClientSession.serverkeygen`."""
        return self._drive(self.session.serverkeygen(
            csr_der, kek=kek, kek_id=kek_id, decryption_key=decryption_key))

    def serverkeygen_linked(
        self,
        key: pkcs10.PrivateKey,
        subject: x509.Name,
        *,
        kek: bytes | None = None,
        kek_id: bytes | None = None,
        decryption_key: pkcs10.PrivateKey | None = None,
        **csr_kwargs: Any,
    ) -> ServerKeyReceived:
        """See :meth:`ClientSession.serverkeygen_linked`."""
        return self._drive(self.session.serverkeygen_linked(
            key, subject, kek=kek, kek_id=kek_id, decryption_key=decryption_key, **csr_kwargs))

    def fullcmc(self, request_der: bytes) -> FullCMCReceived:
        """See :meth:`ClientSession.fullcmc`."""
        return self._drive(self.session.fullcmc(request_der))
