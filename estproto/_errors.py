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
"""

from __future__ import annotations

__all__ = [
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "DecodeError",
    "MessageTooLarge",
    "BadSignature",
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
