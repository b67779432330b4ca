"""The CA backend interface a server calls, and the request handler built on it.

RFC 7030 separates the EST server from the CA behind it ("the EST server
... is assumed to be an RA or CA", section 1 and 3.7). This module is that
seam: :class:`CABackend` is what an application replaces to put estproto in
front of its own PKI, as globalsign/est's ``CA`` interface and libest's
callbacks do; :class:`estproto.ca.EmbeddedCA` is the implementation shipped.

:func:`make_handler` turns a backend into the ``handler(request) -> response``
callable the trio and asyncio servers run (in a worker thread: a backend may
block on its database or on an HSM). It fixes the order every backend gets:

1. ``/cacerts`` and ``/csrattrs`` are answered without authentication:
   "The EST server SHOULD NOT require client authentication or
   authorization to reply to this request" (RFC 7030 4.1.2 and 4.5.1).
2. Every other operation first calls :meth:`CABackend.authorize`, which
   returns the authenticated :class:`Principal` or the response refusing
   the request (401 with challenges, 403). The operation receives the
   principal, so an operation can never run unauthenticated, and the record
   of what was issued can name who asked.
3. An exception from the backend becomes a 5xx with a generic reason (the
   detail goes to :mod:`logging`, never to the client): a
   :class:`~estproto.ca.store.StoreError` or a
   :class:`~estproto.ca.errors.SignerError` is 503 (try again later), anything
   else 500. A response of the wrong kind for the operation is a backend
   bug and is answered 500 too, instead of breaking the connection.
"""

from __future__ import annotations

import abc
import concurrent.futures
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from cryptography import x509

from .._events import (
    AuthenticationRequired,
    CACertsRequest,
    CACertsResponse,
    CertificateResponse,
    CSRAttrsRequest,
    CSRAttrsResponse,
    ErrorResponse,
    FullCMCRequest,
    FullCMCResponse,
    RetryLater,
    ServerKeygenRequest,
    ServerKeygenResponse,
    ServerRequest,
    ServerResponse,
    SimpleEnrollRequest,
    SimpleReenrollRequest,
)
from .._paths import Operation
from .._response_future import InlineHandler, ResponseFuture
from ..codecs.csrattrs import CsrAttributes
from .errors import SignerError
from .store import StoreError

__all__ = ["Principal", "CABackend", "make_handler", "make_inline_handler", "Handler"]

#: What the trio/asyncio servers call for each request.
Handler = Callable[[ServerRequest], ServerResponse]

#: Threads of an inline handler's pool, for the requests without a fast path
#: (password checks, store reads, key generation).
INLINE_HANDLER_THREADS = 8

_log = logging.getLogger("estproto.ca")


@dataclass(frozen=True)
class Principal:
    """Who an authorized request comes from.

    Attributes:
        name: a stable identity for records and logs, e.g. ``"user:alice"``
            or ``"cert:<serial hex>"``; never a secret.
        method: how it was established: ``"basic"``, ``"digest"``,
            ``"certificate"`` (TLS client certificate), or a backend's own.
        certificate: the TLS client certificate when ``method`` is
            ``"certificate"``.
    """

    name: str
    method: str
    certificate: x509.Certificate | None = None


class CABackend(abc.ABC):
    """What an EST server needs from the CA behind it.

    Each method may block (the server runs handlers in worker threads) and
    may raise; :func:`make_handler` turns exceptions into 5xx answers.
    Responses allowed per operation (RFC 7030 4.2.3, 4.3.2, 4.4.2):
    CertificateResponse / ServerKeygenResponse / FullCMCResponse for
    success, RetryLater for a deferred request, ErrorResponse (or for
    fullcmc a FullCMCResponse with a 4xx/5xx status) for a refusal.
    """

    @abc.abstractmethod
    def authorize(self, request: ServerRequest) -> Principal | ServerResponse:
        """Decide whether *request* may proceed.

        Args:
            request: any request but /cacerts and /csrattrs; it carries the
                parsed HTTP credentials and the TLS facts (client
                certificate, whether it verified).

        Returns:
            The :class:`Principal` when allowed; otherwise the response to
            send: :class:`AuthenticationRequired` (401 with challenges) when
            nothing authenticated, or :class:`ErrorResponse` (403) when the
            requester is known but not allowed.
        """

    @abc.abstractmethod
    def cacerts(self, label: str) -> tuple[x509.Certificate, ...]:
        """The CA certificates for *label* (RFC 7030 4.1.3).

        Raises:
            LookupError: unknown label (answered 404).
        """

    @abc.abstractmethod
    def csrattrs(self, label: str) -> CsrAttributes | None:
        """The CSR attributes for *label*, or None for "none" (204, 4.5.2).

        Raises:
            LookupError: unknown label (answered 404).
        """

    @abc.abstractmethod
    def enroll(self, request: SimpleEnrollRequest, principal: Principal) -> ServerResponse:
        """Answer /simpleenroll (RFC 7030 4.2.1)."""

    @abc.abstractmethod
    def reenroll(self, request: SimpleReenrollRequest, principal: Principal) -> ServerResponse:
        """Answer /simplereenroll (RFC 7030 4.2.2)."""

    def answer_inline(self, request: ServerRequest) -> ServerResponse | ResponseFuture | None:
        """Answer *request* on the server's event loop, if that can be done
        without blocking; None (the default) sends it down the blocking
        path. Used by ``make_handler(backend, inline=True)``: a response, or
        a :class:`~estproto.ResponseFuture` another thread finishes (e.g.
        after a commit). Must not block, and must authorize as
        :meth:`authorize` would."""
        return None

    def serverkeygen(self, request: ServerKeygenRequest, principal: Principal) -> ServerResponse:
        """Answer /serverkeygen (RFC 7030 4.4); optional, 501 by default."""
        return ErrorResponse(501, "server-side key generation is not offered")

    def fullcmc(self, request: FullCMCRequest, principal: Principal) -> ServerResponse:
        """Answer /fullcmc (RFC 7030 4.3); optional, 501 by default
        ("a client interprets an HTTP 404 or 501 response to indicate that
        this service is not implemented", 4.3.2)."""
        return ErrorResponse(501, "full CMC is not offered")


_COMMON: tuple[type[ServerResponse], ...] = (AuthenticationRequired, ErrorResponse)
_ALLOWED: Mapping[Operation, tuple[type[ServerResponse], ...]] = {
    Operation.CACERTS: (CACertsResponse, ErrorResponse),
    Operation.CSRATTRS: (CSRAttrsResponse, ErrorResponse),
    Operation.SIMPLEENROLL: (CertificateResponse, RetryLater) + _COMMON,
    Operation.SIMPLEREENROLL: (CertificateResponse, RetryLater) + _COMMON,
    Operation.SERVERKEYGEN: (ServerKeygenResponse, RetryLater) + _COMMON,
    Operation.FULLCMC: (FullCMCResponse, RetryLater) + _COMMON,
}


def _describe(request: ServerRequest) -> str:
    """A log-safe description: operation, label, peer (never credentials)."""
    label = f" label={request.label!r}" if request.label else ""
    return f"{request.operation.value}{label} peer={request.facts.peer or '-'}"


def make_handler(backend: CABackend, *, logger: logging.Logger | None = None) -> Handler:
    """Build the request handler for the trio/asyncio servers (run in
    their worker threads).

    Args:
        backend: the CA backend.
        logger: where failures are logged (default ``estproto.ca``).

    Returns:
        ``handler(request) -> response``. It never raises for a backend
        failure: those become ErrorResponse 500/503, logged with their
        traceback (which holds no request secrets: credentials never reach
        exception messages).
    """
    return _blocking_handler(backend, logger or _log)


def make_inline_handler(
    backend: CABackend, *, logger: logging.Logger | None = None, threads: int = INLINE_HANDLER_THREADS,
) -> InlineHandler:
    """The handler of :func:`make_handler` as an :class:`~estproto.InlineHandler`:
    the server calls it on its event loop; it tries
    :meth:`CABackend.answer_inline` and runs everything else (the blocking
    path) in a pool of *threads* of its own, answering with a future. This
    saves the hand-off to a worker thread and back on every request the
    backend has a fast path for. Failures become 500/503 as there.
    """
    log = logger or _log
    blocking = _blocking_handler(backend, log)
    pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="estproto-ca")

    def in_thread(request: ServerRequest) -> ResponseFuture:
        future = ResponseFuture()

        def run() -> None:
            try:
                response = blocking(request)
            except BaseException as exc:  # blocking() maps errors; this is a last resort
                future.set_error(exc)
            else:
                future.set_response(response)

        pool.submit(run)
        return future

    def checked(request: ServerRequest, inner: ResponseFuture) -> ResponseFuture:
        outer = ResponseFuture()

        def finished() -> None:  # on the thread that finished *inner*
            outer.set_response(_answer(request, log, inner.result))

        inner.on_done(finished)
        outer.flush = inner.flush
        return outer

    def handler(request: ServerRequest) -> ServerResponse | ResponseFuture:
        answer = _answer(request, log, lambda: backend.answer_inline(request), allow_none=True)
        if answer is None:
            return in_thread(request)
        if isinstance(answer, ResponseFuture):
            return checked(request, answer)
        assert isinstance(answer, ServerResponse)
        return answer

    return InlineHandler(handler)


def _answer(
    request: ServerRequest, log: logging.Logger, produce: Callable[[], Any], *, allow_none: bool = False,
) -> Any:
    """What *produce* answers to *request*, its failures and wrong kinds of
    response turned into 5xx as the blocking handler does."""
    try:
        response = produce()
        if response is None and allow_none:
            return None
        if isinstance(response, ResponseFuture):
            return response
        if not isinstance(response, _ALLOWED[request.operation]):
            raise TypeError(f"backend answered {request.operation.value} with {type(response).__name__}")
        return response
    except StoreError:
        log.exception("certificate store failure on %s", _describe(request))
        return ErrorResponse(503, "certificate store unavailable, try again later")
    except SignerError:
        log.exception("CA signer failure on %s", _describe(request))
        return ErrorResponse(503, "CA signer unavailable, try again later")
    except Exception:
        log.exception("CA backend failure on %s", _describe(request))
        return ErrorResponse(500, "internal CA error")


def _blocking_handler(backend: CABackend, log: logging.Logger) -> Handler:
    def handler(request: ServerRequest) -> ServerResponse:
        response: ServerResponse = _answer(request, log, lambda: _dispatch(backend, request))
        return response

    return handler


def _dispatch(backend: CABackend, request: ServerRequest) -> ServerResponse:
    """The backend's answer to *request*, authorized first (module docstring)."""
    if isinstance(request, CACertsRequest):
        try:
            return CACertsResponse(backend.cacerts(request.label))
        except LookupError:
            return ErrorResponse(404, "unknown CA label")
    if isinstance(request, CSRAttrsRequest):
        try:
            return CSRAttrsResponse(backend.csrattrs(request.label))
        except LookupError:
            return ErrorResponse(404, "unknown CA label")
    decision = backend.authorize(request)
    if isinstance(decision, ServerResponse):
        if not isinstance(decision, _COMMON):
            raise TypeError(f"authorize returned {type(decision).__name__}")
        return decision
    if isinstance(request, SimpleEnrollRequest):
        return backend.enroll(request, decision)
    if isinstance(request, SimpleReenrollRequest):
        return backend.reenroll(request, decision)
    if isinstance(request, ServerKeygenRequest):
        return backend.serverkeygen(request, decision)
    if isinstance(request, FullCMCRequest):
        return backend.fullcmc(request, decision)
    return ErrorResponse(404, "unknown EST operation")
