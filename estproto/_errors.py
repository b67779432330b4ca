"""The one exception family of estproto.

Modelled on h11: an abstract :class:`ProtocolError` with two concrete branches.

* :class:`LocalProtocolError`: *you* (the caller) misused the API or asked for
  something the protocol forbids, e.g. encoding a certs-only message with no
  certificate.
* :class:`RemoteProtocolError`: the *peer* sent something invalid. It carries
  ``error_status_hint``, the HTTP status a server should answer with (400 by
  default, 413 for an oversized body, 415 for a wrong media type ...).

Lower-layer exceptions (asn1crypto's ``ValueError``/``TypeError``, OpenSSL
errors, ``binascii.Error``, h11's errors) are translated into these at each
layer's edge, so nothing else escapes the public API.

The whole family, by where it comes from::

    ProtocolError
    +-- LocalProtocolError             misuse of the API
    +-- RemoteProtocolError            the peer broke the protocol
        +-- DecodeError                a payload did not decode (codecs)
        |   +-- MessageTooLarge        ... because a size limit was hit
        |   +-- BadSignature           ... because a signature did not verify
        +-- TLSError                   the peer broke TLS (alert, bad record)
        |   +-- TLSVerificationError   the server's certificate was refused
        +-- ClosedBeforeResponse       server closed before any byte of a response
        +-- ESTError                   the EST server refused (client side)
            +-- ESTAuthenticationError 401 that could not be answered
            +-- ESTPendingError        still 202 when the client stopped waiting
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._events import EnrollmentPending
    from ._tls import CertificateProblem

__all__ = [
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "DecodeError",
    "MessageTooLarge",
    "BadSignature",
    "TLSError",
    "TLSVerificationError",
    "ClosedBeforeResponse",
    "ESTError",
    "ESTAuthenticationError",
    "ESTPendingError",
]


class ProtocolError(Exception):
    """Base class for every error estproto raises on purpose.

    Attributes:
        error_status_hint: the HTTP status code that fits this error if a
            server has to answer it (h11's convention).
    """

    def __init__(self, msg: str, error_status_hint: int = 400) -> None:
        if type(self) is ProtocolError:
            raise TypeError("tried to directly instantiate ProtocolError")
        super().__init__(msg)
        self.error_status_hint = error_status_hint


class LocalProtocolError(ProtocolError):
    """The caller asked for something the API or the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something that violates the protocol."""


class DecodeError(RemoteProtocolError):
    """A payload (base64, DER, media type, multipart ...) could not be decoded.

    Raised by every decoder in :mod:`estproto.codecs`. The message names what
    was being decoded and why it failed, short enough for a ``text/plain``
    error body (RFC 8951 section 5).
    """


class MessageTooLarge(DecodeError):
    """A payload exceeded a configured size limit before it was decoded."""

    def __init__(self, msg: str, error_status_hint: int = 413) -> None:
        super().__init__(msg, error_status_hint)


class BadSignature(DecodeError):
    """A signature (CSR, CMC SignedData) did not verify."""


class TLSError(RemoteProtocolError):
    """The peer broke TLS: an alert, a bad record, a failed handshake, garbage.

    Attributes:
        reason: OpenSSL's reason string(s), e.g. ``"wrong version number"``.
    """

    def __init__(self, msg: str, reason: str = "") -> None:
        super().__init__(msg)
        self.reason = reason


class TLSVerificationError(TLSError):
    """The client rejected the server's certificate (chain or identity).

    Attributes:
        errors: what OpenSSL found, deepest first as reported.
    """

    def __init__(self, msg: str, errors: tuple[CertificateProblem, ...]) -> None:
        super().__init__(msg, reason="certificate verify failed")
        self.errors = errors


class ClosedBeforeResponse(RemoteProtocolError):
    """The server closed the connection cleanly before sending any byte of
    the response. On a reused keep-alive connection this is the race RFC 9112
    section 9.3 describes (the server closed an idle connection as the request
    went out), so a client may resend the request on a new connection."""


class ESTError(RemoteProtocolError):
    """The EST server answered with an error (or not with what was asked).

    Raised by the clients' typed operations (``simpleenroll`` ...), never by
    the connections, which report answers as events.

    Attributes:
        status: the HTTP status the server sent.
        reason: the server's reason text (RFC 8951 section 5), shortened.
    """

    def __init__(self, status: int, reason: str) -> None:
        # A gateway relaying this error answers 502 Bad Gateway.
        super().__init__(f"EST server answered {status}: {reason}", error_status_hint=502)
        self.status = status
        self.reason = reason


class ESTAuthenticationError(ESTError):
    """401: the server refused our credentials, or we had none to give
    (or must not give them: RFC 7030 3.2.3, unauthorized server)."""

    def __init__(self, reason: str = "authentication required") -> None:
        super().__init__(401, reason)


class ESTPendingError(ESTError):
    """202 still: the retries allowed ran out, or the server asked for a
    longer wait than ``max_retry_wait``.

    Attributes:
        pending: the last :class:`EnrollmentPending` event.
    """

    def __init__(self, pending: EnrollmentPending) -> None:
        super().__init__(202, f"still pending (Retry-After: {pending.retry_after})")
        self.pending = pending
