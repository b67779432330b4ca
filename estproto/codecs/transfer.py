"""EST transfer encoding: DER <-> base64 text bodies.

Implements RFC 8951 section 3 (which replaces the Content-Transfer-Encoding
wording of RFC 7030 sections 4.1.3, 4.3.1, 4.3.2, 4.4.2 and 4.5.2) with the
base64 alphabet of RFC 4648 section 4.

RFC 8951 section 3: "This format is to be used regardless of any
Content-Transfer-Encoding header, and any value in such a header MUST be
ignored."  So nothing here reads that header: every EST body is base64 of DER,
whatever the peer labels it. (Senders still add ``Content-Transfer-Encoding:
base64`` for old peers; that is the HTTP layer's business.)

Strategy
--------
Both directions are on every request, so each is a handful of C calls:

* encoding is one ``binascii.b2a_base64`` plus, for wrapped output, one
  slice-and-join;
* decoding is one ``bytes.translate`` that deletes the four whitespace bytes
  RFC 8951 section 3.1 tells receivers to tolerate, then one strict
  ``binascii.a2b_base64``. Only when that fails do we look closer, to give a
  precise error or, in *lenient* mode, to recover from the quirks real peers
  have (see :func:`decode_base64`).

Line policy. Senders may or may not wrap (RFC 8951 section 3.1: "Senders are
not required to insert any kind of white space"), and the two most common
clients disagree: strongSwan cannot read wrapped base64, while libest's client
(OpenSSL's base64 BIO) fails on a single line longer than about 1 KB. Hence
:class:`LinePolicy`: :data:`SINGLE_LINE` by default, :data:`WRAP_64` for
libest-style peers. Line breaks are LF, not CRLF: LF is what libest emits, what
``openssl base64`` emits and what curl sends, and every tolerant reader accepts
it. Output always ends in exactly one LF, because libest rejects a body with
no newline at all.
"""

from __future__ import annotations

import base64
import binascii
import sys
from dataclasses import dataclass

from .._errors import DecodeError, LocalProtocolError
from .._limits import MAX_BODY_SIZE
from ._der import check_size

__all__ = [
    "LinePolicy",
    "SINGLE_LINE",
    "WRAP_64",
    "encode_base64",
    "decode_base64",
    "body_is_wrapped",
]

# RFC 8951 section 3.1: "white space including CR, LF, spaces (ASCII 32), and
# tabs (ASCII 9) SHOULD be tolerated by receivers."
_WHITESPACE = b" \t\r\n"
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_NUL_AND_WHITESPACE = b"\x00" + _WHITESPACE
_PEM_BEGIN = b"-----BEGIN "
_PEM_END = b"-----END "
_DASHES = b"-----"


@dataclass(frozen=True)
class LinePolicy:
    """How :func:`encode_base64` lays out its base64 text.

    Attributes:
        width: characters per line, or ``None`` for one unbroken line. Every
            line (the last one too) ends in a single LF.

    Raises:
        LocalProtocolError: *width* is not ``None`` or a positive int.
    """

    width: int | None = None

    def __post_init__(self) -> None:
        w = self.width
        if w is not None and (type(w) is not int or w < 1):
            raise LocalProtocolError(
                f"line width must be None or a positive int, not {w!r}"
            )


#: One line plus a trailing LF: the default, because strongSwan's ``pki --est``
#: cannot read wrapped base64 (a single trailing newline is fine).
SINGLE_LINE = LinePolicy(None)

#: 64 columns, LF line ends: what libest and ``openssl base64`` emit, and what
#: libest's client needs once a body passes about 1 KB (OpenSSL's base64 BIO).
WRAP_64 = LinePolicy(64)


def encode_base64(der: bytes, policy: LinePolicy = SINGLE_LINE) -> bytes:
    """Encode a DER object as an EST body (RFC 8951 section 3, RFC 4648 section 4).

    Args:
        der: the DER bytes (any non-empty bytes-like object; not parsed).
        policy: line layout; :data:`SINGLE_LINE` or :data:`WRAP_64` usually.

    Returns:
        ASCII base64 text with padding, lines of ``policy.width`` characters
        separated by LF, ending in exactly one LF.

    Raises:
        LocalProtocolError: *der* is empty (no EST message is) or not bytes.
    """
    if not isinstance(der, (bytes, bytearray, memoryview)):
        raise LocalProtocolError(f"DER must be bytes, not {type(der).__name__}")
    if not der:
        raise LocalProtocolError("cannot encode an empty DER object")
    width = policy.width
    if width is None:
        return binascii.b2a_base64(der)  # appends the one trailing LF
    text = binascii.b2a_base64(der, newline=False)
    if len(text) <= width:
        return text + b"\n"
    lines = [text[i : i + width] for i in range(0, len(text), width)]
    lines.append(b"")
    return b"\n".join(lines)


if sys.version_info >= (3, 11):

    def _strict_b64decode(data: bytes) -> bytes:
        # strict_mode rejects non-alphabet bytes, misplaced and excess padding
        # in C; it still accepts "QUFB=" (a '=' after a full quantum), which
        # the caller's length check rejects.
        return binascii.a2b_base64(data, strict_mode=True)

else:  # pragma: no cover - exercised on 3.10 only

    def _strict_b64decode(data: bytes) -> bytes:
        return base64.b64decode(data, validate=True)


def decode_base64(
    body: bytes, *, lenient: bool = False, max_size: int = MAX_BODY_SIZE
) -> bytes:
    """Decode an EST base64 body into DER bytes (RFC 8951 section 3).

    CR, LF, space and tab are ignored anywhere (RFC 8951 section 3.1). Anything
    else outside the RFC 4648 section 4 alphabet, missing or misplaced ``=``
    padding, and an empty body are errors. Any Content-Transfer-Encoding the
    peer sent is irrelevant here: RFC 8951 section 3 says it "MUST be ignored".
    The DER itself is not parsed.

    With ``lenient=True`` three real-world deviations are also accepted, tried
    only after the strict decode fails (so valid base64 always wins):

    * raw DER: the body starts with 0x30 (a DER SEQUENCE, as every EST payload
      is). Base64 text of a DER SEQUENCE starts with ``M``; text starting with
      ``0`` would decode to a first byte 0xD0-0xD3, a tag no EST message uses,
      so a body that starts with 0x30 and is not valid base64 is taken to be
      binary DER and returned unchanged for the DER decoder to check.
    * a PEM-armoured body (RFC 7468 ``-----BEGIN <label>-----`` ...
      ``-----END <label>-----``, any label, text around it ignored): the
      popular Python EST client sends its CSR this way.
    * trailing NUL bytes (and whitespace around them): libest's csrattrs
      response can end in a stray NUL.

    Args:
        body: the HTTP body (bytes-like).
        lenient: accept the deviations above.
        max_size: largest *body* accepted, checked before anything else.

    Returns:
        The decoded bytes (non-empty).

    Raises:
        MessageTooLarge: *body* is longer than *max_size*.
        DecodeError: the body is not valid base64 (nor, when lenient, PEM or
            raw DER). The message says which byte or rule failed.
        TypeError: *body* is not bytes-like (a programming error).
    """
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise TypeError(f"body must be bytes, not {type(body).__name__}")
    check_size(body, max_size, "base64 body")
    data = bytes(body)
    stripped = data.translate(None, _WHITESPACE)
    # Fast path: valid base64 has a length that is a multiple of 4 (RFC 4648
    # section 4 always pads the final quantum).
    if stripped and not len(stripped) & 3:
        try:
            return _strict_b64decode(stripped)
        except binascii.Error:
            pass
    if lenient:
        recovered = _recover(data)
        if recovered is not None:
            return recovered
    raise DecodeError(_diagnose(data, stripped))


def _recover(data: bytes) -> bytes | None:
    """Lenient fall-backs, tried in order; None if none applies."""
    if data[:1] == b"\x30":
        return data
    # Drop trailing NULs (and the whitespace that may surround them).
    trimmed = data.rstrip(_NUL_AND_WHITESPACE)
    changed = len(trimmed) != len(data)
    begin = trimmed.find(_PEM_BEGIN)
    if begin >= 0:
        inner = _pem_payload(trimmed, begin)
        if inner is None:
            return None
        trimmed, changed = inner, True
    if not changed:
        return None
    stripped = trimmed.translate(None, _WHITESPACE)
    if not stripped or len(stripped) & 3:
        return None
    try:
        return _strict_b64decode(stripped)
    except binascii.Error:
        return None


def _pem_payload(data: bytes, begin: int) -> bytes | None:
    """The base64 text between a PEM BEGIN line and its matching END line."""
    label_start = begin + len(_PEM_BEGIN)
    label_end = data.find(_DASHES, label_start)
    if label_end < 0:
        return None
    label = data[label_start:label_end]
    if b"\n" in label or b"\r" in label:
        return None
    end_line = _PEM_END + label + _DASHES
    end = data.find(end_line, label_end + len(_DASHES))
    if end < 0:
        return None
    return data[label_end + len(_DASHES) : end]


def _diagnose(data: bytes, stripped: bytes) -> str:
    """Explain why *data* is not acceptable strict base64 (slow path only)."""
    if not stripped:
        return "invalid base64 body: empty"
    if _PEM_BEGIN in data:
        return (
            "body is PEM, not base64 DER (RFC 8951 section 3); "
            "strip the -----BEGIN/END----- lines"
        )
    if data[:1] == b"\x30" and stripped.translate(None, _ALPHABET + b"="):
        return "body is binary DER, not base64 (RFC 8951 section 3)"
    if data.rstrip(_WHITESPACE).endswith(b"\x00"):
        return "invalid base64 body: ends in NUL bytes"
    bad = stripped.translate(None, _ALPHABET + b"=")
    if bad:
        offset = data.find(bad[:1])
        return (
            f"invalid base64 body: byte {bad[:1]!r} at offset {offset} is "
            "outside the RFC 4648 section 4 alphabet"
        )
    return (
        "invalid base64 body: bad length or padding "
        f"({len(stripped)} characters without whitespace)"
    )


def body_is_wrapped(body: bytes) -> bool:
    """Whether base64 text has line breaks before its last line.

    A server uses this to answer a client that wrapped its own request with
    wrapped (:data:`WRAP_64`) base64: such a client (libest) may not read one
    long line. Trailing whitespace and NULs do not count.

    Args:
        body: the base64 text as received.

    Returns:
        True if a CR or LF occurs before the end of the text.
    """
    text = (body if type(body) is bytes else bytes(body)).rstrip(_NUL_AND_WHITESPACE)
    return b"\n" in text or b"\r" in text
