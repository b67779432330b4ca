"""multipart/mixed bodies and the /serverkeygen response built from them.

Implements RFC 2046 section 5.1.1 (common multipart syntax) as far as EST needs
it, and RFC 7030 section 4.4.2 as updated by RFC 8951 section 3.2.4: the
server-side key generation response, "a content-type of "multipart/mixed"
consisting of two parts: one part is the private key data and the other part
is the certificate data" (example in RFC 7030 Appendix A.4).

Strategy
--------
:func:`build_multipart` writes CRLF line ends and a boundary that is checked to
be absent from every part body (RFC 2046 section 5.1.1: "the boundary
delimiter MUST NOT appear inside any of the encapsulated parts"). The default
boundary contains ``-``, which base64 text never does.

:func:`parse_multipart` finds delimiter lines with one regex built from the
boundary and tolerates what real peers send: LF-only line ends, a preamble and
an epilogue (both ignored), transport padding (spaces, tabs) after a delimiter,
a close delimiter at the very end without CRLF. The CRLF before a delimiter
belongs to the delimiter, so a part body is returned exactly as it was built.

The serverkeygen layer identifies parts by media type, never by position
(RFC 7030 does not fix the order; libest sends the key first). The DER inside
is only base64-decoded here: :mod:`estproto.codecs` has other modules that
parse PrivateKeyInfo, EnvelopedData and certs-only SignedData. Every part
carries ``Content-Transfer-Encoding: base64`` for old peers, and on input that
header is ignored: RFC 8951 section 3 says "any value in such a header MUST be
ignored".
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Sequence

from .._errors import DecodeError, LocalProtocolError
from .._limits import MAX_BODY_SIZE, MAX_MULTIPART_PARTS
from ._der import check_size
from .mediatype import (
    CERTS_ONLY,
    MULTIPART_MIXED,
    PKCS8,
    SERVER_GENERATED_KEY,
    MediaType,
    format_media_type,
    parse_media_type,
)
from .transfer import SINGLE_LINE, LinePolicy, decode_base64, encode_base64

__all__ = [
    "Part",
    "build_multipart",
    "parse_multipart",
    "ServerKeygenResponse",
    "encode_serverkeygen_response",
    "decode_serverkeygen_response",
]

# RFC 2046 section 5.1.1: boundary := 0*69<bchars> bcharsnospace
_BOUNDARY_RE = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
# RFC 5322 section 3.6.8: field-name is printable ASCII except ':'; optional
# whitespace before the colon is the obsolete syntax of section 4.5.
_HEADER_RE = re.compile(rb"([!-9;-~]+)[ \t]*:[ \t]*(.*?)[ \t]*")
_FIELD_NAME_RE = re.compile(r"[!-9;-~]+")
# Header values are written as Latin-1 and must not break the line.
_FIELD_VALUE_RE = re.compile(r"[\x00-\x09\x0b\x0c\x0e-\xff]*")
_FOLD = b" \t"
_PKCS7_MIME = "application/pkcs7-mime"

# DER of the ContentInfo content types that tell an untyped pkcs7-mime part
# apart (RFC 5652 section 5.1 signedData, section 6.1 envelopedData), with the
# OBJECT IDENTIFIER tag and length.
_OID_SIGNED_DATA = bytes.fromhex("06092a864886f70d010702")
_OID_ENVELOPED_DATA = bytes.fromhex("06092a864886f70d010703")


@dataclass(frozen=True)
class Part:
    """One body part of a multipart message.

    Attributes:
        headers: ``(name, value)`` pairs in order; names lower case, values
            without surrounding whitespace.
        body: the part body, exactly as between the header block and the CRLF
            of the next delimiter.

    Raises:
        LocalProtocolError: a header name is not an RFC 5322 field name, or a
            value contains CR, LF or a character above U+00FF.
    """

    headers: tuple[tuple[str, str], ...]
    body: bytes

    def __post_init__(self) -> None:
        normalised: list[tuple[str, str]] = []
        for item in self.headers:
            if not isinstance(item, tuple) or len(item) != 2:
                raise LocalProtocolError(f"part header {item!r} is not a pair")
            name, value = item
            if not isinstance(name, str) or not _FIELD_NAME_RE.fullmatch(name):
                raise LocalProtocolError(f"invalid part header name {name!r}")
            if not isinstance(value, str) or not _FIELD_VALUE_RE.fullmatch(value):
                raise LocalProtocolError(f"invalid value for part header {name!r}")
            normalised.append((name.lower(), value.strip(" \t")))
        object.__setattr__(self, "headers", tuple(normalised))
        if not isinstance(self.body, (bytes, bytearray, memoryview)):
            raise LocalProtocolError(f"part body must be bytes, not {type(self.body).__name__}")
        object.__setattr__(self, "body", bytes(self.body))

    def header(self, name: str) -> str | None:
        """The first value of header *name* (case-insensitive), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def content_type(self) -> MediaType | None:
        """The parsed Content-Type header, or None when the part has none.

        Raises:
            DecodeError: the header is malformed (status hint 415).
        """
        value = self.header("content-type")
        return None if value is None else parse_media_type(value)


def _header_name(name: str) -> str:
    # Content-Transfer-Encoding, not content-transfer-encoding: some peers
    # compare part header names case-sensitively.
    return "-".join(word.capitalize() for word in name.split("-"))


def build_multipart(
    parts: Sequence[Part], boundary: str | None = None
) -> tuple[MediaType, bytes]:
    """Build a multipart/mixed body (RFC 2046 section 5.1.1) with CRLF line ends.

    Args:
        parts: the parts, in order; at least one.
        boundary: the boundary to use, or None for a random one (128 bits from
            :mod:`secrets`) that is absent from every body.

    Returns:
        ``(media type with its boundary parameter, body bytes)``.

    Raises:
        LocalProtocolError: no parts, a boundary that breaks RFC 2046's syntax
            (1-70 bchars, not ending in space), or a boundary found inside a
            part body.
    """
    if not parts:
        raise LocalProtocolError("a multipart body needs at least one part")
    bodies = [part.body for part in parts]
    if boundary is None:
        while True:
            boundary = "estproto-" + secrets.token_hex(16)
            raw = boundary.encode("ascii")
            if not any(raw in body for body in bodies):
                break
    else:
        if not isinstance(boundary, str) or not _BOUNDARY_RE.fullmatch(boundary):
            raise LocalProtocolError(f"invalid multipart boundary {boundary!r}")
        raw = boundary.encode("ascii")
        # RFC 2046 section 5.1.1: "the boundary delimiter MUST NOT appear
        # inside any of the encapsulated parts".
        for index, body in enumerate(bodies):
            if raw in body:
                raise LocalProtocolError(f"boundary {boundary!r} occurs in part {index}")
    delimiter = b"--" + raw
    chunks: list[bytes] = []
    for part in parts:
        chunks.append(delimiter)
        chunks.append(b"\r\n")
        for name, value in part.headers:
            chunks.append(f"{_header_name(name)}: {value}\r\n".encode("latin-1"))
        chunks.append(b"\r\n")
        chunks.append(part.body)
        chunks.append(b"\r\n")
    chunks.append(delimiter + b"--\r\n")
    media_type = MediaType(MULTIPART_MIXED.essence, (("boundary", boundary),))
    return media_type, b"".join(chunks)


def parse_multipart(
    body: bytes,
    content_type: MediaType,
    *,
    max_parts: int = MAX_MULTIPART_PARTS,
    max_size: int = MAX_BODY_SIZE,
) -> tuple[Part, ...]:
    """Split a multipart body (RFC 2046 section 5.1.1) into its parts.

    Any ``multipart/*`` subtype is read the same way (RFC 2046 section 5.1.3:
    unknown subtypes are treated as mixed). Header values are read as Latin-1;
    folded header lines (RFC 5322 section 2.2.3) are unfolded.

    Args:
        body: the HTTP body.
        content_type: its media type; must carry a ``boundary`` parameter.
        max_parts: most parts accepted.
        max_size: largest *body* accepted, checked first.

    Returns:
        The parts in order (preamble and epilogue dropped).

    Raises:
        MessageTooLarge: *body* is longer than *max_size*.
        DecodeError: not a multipart type or no boundary (status hint 415),
            no part, more than *max_parts* parts, no close delimiter, or a
            malformed part header block.
        TypeError: *body* is not bytes-like (a programming error).
    """
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise TypeError(f"body must be bytes, not {type(body).__name__}")
    check_size(body, max_size, "multipart body")
    if not content_type.essence.startswith("multipart/"):
        raise DecodeError(f"expected a multipart body, got {content_type.essence}", 415)
    boundary = content_type.boundary
    if not boundary:
        raise DecodeError("multipart media type has no boundary parameter", 415)
    data = bytes(body)
    # RFC 2046 section 5.1.1: a delimiter is CRLF "--" boundary, then
    # transport padding, then CRLF; the first one may start the body. We also
    # take a bare LF, and a close delimiter may end the body without CRLF.
    delimiter_re = re.compile(
        rb"(?:\A|\r?\n)--"
        + re.escape(boundary.encode("latin-1"))
        + rb"(--)?[ \t]*(?=\r?\n|\Z)"
    )
    parts: list[Part] = []
    start = -1  # end of the previous delimiter; -1 while in the preamble
    closed = False
    for m in delimiter_re.finditer(data):
        if start >= 0:
            if len(parts) >= max_parts:
                raise DecodeError(f"multipart body has more than {max_parts} parts")
            parts.append(_parse_part(data[start : m.start()], len(parts)))
        if m.group(1):
            closed = True
            break
        start = m.end()
    if not closed:
        if start < 0:
            raise DecodeError(f"multipart body has no delimiter for boundary {boundary!r}")
        raise DecodeError("multipart body has no close delimiter (truncated?)")
    if not parts:
        raise DecodeError("multipart body has no parts")
    return tuple(parts)


def _parse_part(segment: bytes, index: int) -> Part:
    """Parse one encapsulation: the bytes after a delimiter line's padding."""
    # Skip the line end that finishes the delimiter line.
    if segment.startswith(b"\r\n"):
        pos = 2
    elif segment.startswith(b"\n"):
        pos = 1
    else:
        pos = 0  # empty segment: "--b" immediately followed by the next delimiter
    headers: list[tuple[str, str]] = []
    end = len(segment)
    body_start = end  # headers only, no body (RFC 2046 allows it)
    while pos < end:
        nl = segment.find(b"\n", pos)
        line_end = end if nl < 0 else nl
        next_pos = end if nl < 0 else nl + 1
        line = segment[pos:line_end]
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            body_start = next_pos
            break
        if line[:1] in (b" ", b"\t"):
            if not headers:
                raise DecodeError(f"multipart part {index}: header block starts with a folded line")
            name, value = headers[-1]
            headers[-1] = (name, (value + " " + _header_text(line.strip(_FOLD), index)).strip())
        else:
            m = _HEADER_RE.fullmatch(line)
            if m is None:
                raise DecodeError(
                    f"multipart part {index}: malformed header line {line[:60]!r}"
                )
            name = m.group(1).decode("ascii").lower()
            headers.append((name, _header_text(m.group(2), index)))
        pos = next_pos
    return Part(tuple(headers), segment[body_start:])


def _header_text(value: bytes, index: int) -> str:
    if b"\r" in value:
        raise DecodeError(f"multipart part {index}: bare CR in a header value")
    return value.decode("latin-1")


# -- /serverkeygen (RFC 7030 section 4.4.2) -----------------------------------


@dataclass(frozen=True)
class ServerKeygenResponse:
    """A decoded /serverkeygen response (RFC 7030 section 4.4.2).

    Attributes:
        key_der: the key part, base64-decoded: DER of a PrivateKeyInfo
            (``application/pkcs8``) or of a CMS ContentInfo holding
            EnvelopedData (``smime-type=server-generated-key``). Not parsed.
        key_media_type: the key part's media type as received.
        certs_only_der: the certificate part, base64-decoded: a certs-only
            CMS SignedData, as a /simpleenroll response. Not parsed.
    """

    key_der: bytes
    key_media_type: MediaType
    certs_only_der: bytes

    @property
    def key_encrypted(self) -> bool:
        """Whether the key came with additional encryption (EnvelopedData)."""
        return self.key_media_type.essence != PKCS8.essence


def encode_serverkeygen_response(
    key_der: bytes,
    certs_only_der: bytes,
    *,
    key_encrypted: bool = False,
    policy: LinePolicy = SINGLE_LINE,
    boundary: str | None = None,
    key_first: bool = True,
) -> tuple[MediaType, bytes]:
    """Build a /serverkeygen response body (RFC 7030 section 4.4.2).

    RFC 7030 section 4.4.2: "If additional encryption is not being employed,
    the private key data MUST be placed in an "application/pkcs8"" part; with
    encryption it "is returned in the response as an "application/pkcs7-mime"
    part with an smime-type parameter of "server-generated-key"". "The
    certificate data part is an "application/pkcs7-mime" and exactly matches
    the certificate response to /simpleenroll."

    Args:
        key_der: DER PrivateKeyInfo, or DER ContentInfo(EnvelopedData) when
            *key_encrypted*. Not checked here.
        certs_only_der: DER certs-only SignedData (ContentInfo).
        key_encrypted: label the key part ``server-generated-key``.
        policy: base64 line layout of both parts.
        boundary: multipart boundary, or None for a random one.
        key_first: put the key part first (as libest and the RFC example do).

    Returns:
        ``(multipart/mixed media type with boundary, body bytes)``.

    Raises:
        LocalProtocolError: an empty DER argument or a bad *boundary*.
    """
    key_type = SERVER_GENERATED_KEY if key_encrypted else PKCS8
    key_part = Part(
        (
            ("content-type", format_media_type(key_type)),
            ("content-transfer-encoding", "base64"),
        ),
        encode_base64(key_der, policy),
    )
    cert_part = Part(
        (
            ("content-type", format_media_type(CERTS_ONLY)),
            ("content-transfer-encoding", "base64"),
        ),
        encode_base64(certs_only_der, policy),
    )
    parts = (key_part, cert_part) if key_first else (cert_part, key_part)
    return build_multipart(parts, boundary)


def _peek_content_type(der: bytes) -> bytes | None:
    """The encoded OID of a DER ContentInfo, read from its first bytes only."""
    if len(der) < 2 or der[0] != 0x30:
        return None
    first = der[1]
    if first < 0x80:
        pos = 2
    else:
        pos = 2 + (first & 0x7F)
    if len(der) < pos + 2 or der[pos] != 0x06:
        return None
    return der[pos : pos + 2 + der[pos + 1]]


def decode_serverkeygen_response(
    body: bytes,
    content_type: MediaType | bytes | str,
    *,
    lenient: bool = False,
    max_size: int = MAX_BODY_SIZE,
) -> ServerKeygenResponse:
    """Decode a /serverkeygen response (RFC 7030 section 4.4.2, Appendix A.4).

    Parts are identified by media type, in any order:

    * ``application/pkcs8``, or ``application/pkcs7-mime`` with
      ``smime-type=server-generated-key``: the key part;
    * ``application/pkcs7-mime`` with ``smime-type=certs-only``: the
      certificate part;
    * ``application/pkcs7-mime`` without smime-type (peers omit it, see
      :func:`~estproto.codecs.mediatype.matches`): ignored when both roles
      are already taken by typed parts; if one role is open and one part is
      untyped, that part takes it; otherwise the DER decides: a ContentInfo of signedData is the certificate part, one of
      envelopedData the (encrypted) key. Only the ContentInfo's first OID is
      looked at.
    * anything else (other types, parts without Content-Type) is ignored.

    Content-Transfer-Encoding headers are ignored (RFC 8951 section 3); every
    part body is base64 (lenient mode: also PEM or raw DER, see
    :func:`~estproto.codecs.transfer.decode_base64`).

    Args:
        body: the HTTP body.
        content_type: the response's Content-Type (parsed or raw).
        lenient: accept any ``multipart/*`` type and the lenient base64
            deviations in the parts.
        max_size: largest *body* accepted, checked first.

    Returns:
        The key and certificate DER, base64-decoded but not parsed.

    Raises:
        MessageTooLarge: *body* is longer than *max_size*.
        DecodeError: a malformed body or media type, not exactly one key part
            and one certificate part, or bad base64 in either.
        TypeError: *body* is not bytes-like (a programming error).
    """
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise TypeError(f"body must be bytes, not {type(body).__name__}")
    check_size(body, max_size, "serverkeygen response")
    mt = content_type if isinstance(content_type, MediaType) else parse_media_type(content_type)
    if mt.essence != MULTIPART_MIXED.essence and not (
        lenient and mt.essence.startswith("multipart/")
    ):
        raise DecodeError(
            f"serverkeygen response must be multipart/mixed, not {mt.essence}", 415
        )
    parts = parse_multipart(body, mt, max_size=max_size)

    keys: list[tuple[Part, MediaType]] = []
    certs: list[Part] = []
    untyped: list[tuple[Part, MediaType]] = []
    for part in parts:
        ct = part.content_type
        if ct is None:
            continue  # RFC 2046 default text/plain: not ours
        if ct.essence == PKCS8.essence:
            keys.append((part, ct))
        elif ct.essence == _PKCS7_MIME:
            smime = ct.smime_type
            if smime == SERVER_GENERATED_KEY.smime_type:
                keys.append((part, ct))
            elif smime == CERTS_ONLY.smime_type:
                certs.append(part)
            elif smime is None:
                untyped.append((part, ct))
    decoded: dict[int, bytes] = {}
    if untyped and not (keys and certs):
        if len(untyped) == 1 and len(keys) + len(certs) == 1:
            # One role is taken by a typed part: the untyped one has the other.
            part, ct = untyped[0]
            if keys:
                certs.append(part)
            else:
                keys.append((part, ct))
        else:
            for part, ct in untyped:
                der = decode_base64(part.body, lenient=lenient, max_size=max_size)
                decoded[id(part)] = der
                oid = _peek_content_type(der)
                if oid == _OID_SIGNED_DATA:
                    certs.append(part)
                elif oid == _OID_ENVELOPED_DATA:
                    keys.append((part, ct))
                # else: neither; ignored like any unknown part
    if len(keys) != 1 or len(certs) != 1:
        raise DecodeError(
            "serverkeygen response needs exactly one key part and one certificate "
            f"part (RFC 7030 section 4.4.2); found {len(keys)} and {len(certs)}"
        )
    key_part, key_type = keys[0]
    cert_part = certs[0]
    key_der = decoded.get(id(key_part)) or decode_base64(
        key_part.body, lenient=lenient, max_size=max_size
    )
    cert_der = decoded.get(id(cert_part)) or decode_base64(
        cert_part.body, lenient=lenient, max_size=max_size
    )
    return ServerKeygenResponse(key_der, key_type, cert_der)
