"""Media types (Content-Type values) for EST messages.

Implements the media type syntax of RFC 9110 section 8.3.1 (RFC 7231 section
3.1.1.1, itself from RFC 2045 section 5.1) and the EST media types of RFC 7030
section 3.2.4 and sections 4.1-4.5 (table in RFC 7030 Figure 6).

Strategy
--------
:func:`parse_media_type` is a small regex scanner: one match for
``type/subtype``, one per parameter. It is strict about structure (a parameter
value is a token or a quoted-string; anything else is a 415) and lenient about
what real peers vary: case of the type and of parameter names (RFC 9110
section 8.3.1: "The type and subtype tokens are case-insensitive", "Parameter
names are case-insensitive"), whitespace around ``;`` *and* around ``=`` (RFC
9110 does not allow the latter, some EST clients send it), empty parameters
(``;;``, allowed by RFC 9110's ``[ parameter ]``). Parameter values keep their
case: whether a value is case-sensitive depends on the parameter
(``smime-type`` is compared case-insensitively by :func:`matches`; a
``boundary`` is case-sensitive).

:func:`matches` is how EST layers compare a received type with the expected
one: the ``smime-type`` may be missing (Bouncy Castle issue 901: an exact match
rejected real servers) and other parameters are ignored.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from .._errors import DecodeError, LocalProtocolError, MessageTooLarge
from .._limits import MAX_MEDIA_TYPE_LENGTH

__all__ = [
    "MediaType",
    "parse_media_type",
    "format_media_type",
    "matches",
    "PKCS10",
    "PKCS7_MIME",
    "CERTS_ONLY",
    "CMC_REQUEST",
    "CMC_RESPONSE",
    "SERVER_GENERATED_KEY",
    "CSRATTRS",
    "PKCS8",
    "MULTIPART_MIXED",
    "TEXT_PLAIN",
]

# RFC 9110 section 5.6.2: tchar; section 5.6.4: qdtext and quoted-pair
# (obs-text, 0x80-0xFF, included: we read header bytes as Latin-1).
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QDTEXT = r"[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]"
_QPAIR = r"\\[\t \x21-\x7e\x80-\xff]"
_TYPE_RE = re.compile(rf"[ \t]*({_TOKEN})/({_TOKEN})[ \t]*")
_PARAM_RE = re.compile(
    rf";[ \t]*(?:({_TOKEN})[ \t]*=[ \t]*(?:({_TOKEN})|\"((?:{_QDTEXT}|{_QPAIR})*)\")[ \t]*)?"
)
_TOKEN_RE = re.compile(_TOKEN)
_ESSENCE_RE = re.compile(rf"{_TOKEN}/{_TOKEN}")
# What a parameter value may hold at all: anything a quoted-string can carry.
_VALUE_RE = re.compile(r"[\t \x21-\x7e\x80-\xff]*")
_UNESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)
_ESCAPE_RE = re.compile(r'(["\\])')


@dataclass(frozen=True)
class MediaType:
    """A parsed media type such as ``application/pkcs7-mime; smime-type=certs-only``.

    The constructor normalises ``essence`` and parameter names to lower case
    and validates them, so a MediaType that exists can always be formatted.

    Attributes:
        essence: ``type/subtype``, lower case.
        params: ``(name, value)`` pairs in received order; names lower case,
            values unquoted with their original case.

    Raises:
        LocalProtocolError: *essence* is not ``token/token``, a name is not a
            token, a name repeats, or a value holds a control character other
            than tab (or a character above U+00FF).
    """

    essence: str
    params: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        essence = self.essence
        if not isinstance(essence, str) or not _ESSENCE_RE.fullmatch(essence):
            raise LocalProtocolError(f"invalid media type essence {essence!r}")
        if not essence.islower():
            object.__setattr__(self, "essence", essence.lower())
        params = tuple(self.params)
        normalised: list[tuple[str, str]] = []
        seen: set[str] = set()
        for item in params:
            if not isinstance(item, tuple) or len(item) != 2:
                raise LocalProtocolError(f"media type parameter {item!r} is not a pair")
            name, value = item
            if not isinstance(name, str) or not _TOKEN_RE.fullmatch(name):
                raise LocalProtocolError(f"invalid media type parameter name {name!r}")
            if not isinstance(value, str) or not _VALUE_RE.fullmatch(value):
                raise LocalProtocolError(f"invalid value for media type parameter {name!r}")
            name = name.lower()
            if name in seen:
                raise LocalProtocolError(f"media type parameter {name!r} repeats")
            seen.add(name)
            normalised.append((name, value))
        object.__setattr__(self, "params", tuple(normalised))

    def param(self, name: str) -> str | None:
        """The value of parameter *name* (case-insensitive), or None."""
        name = name.lower()
        for key, value in self.params:
            if key == name:
                return value
        return None

    @property
    def smime_type(self) -> str | None:
        """The ``smime-type`` parameter in lower case (RFC 8551 section 3.2.2), or None."""
        value = self.param("smime-type")
        return None if value is None else value.lower()

    @property
    def boundary(self) -> str | None:
        """The multipart ``boundary`` parameter (RFC 2046 section 5.1.1), case kept."""
        return self.param("boundary")

    def __str__(self) -> str:
        return format_media_type(self)


def parse_media_type(
    value: bytes | str, *, max_size: int = MAX_MEDIA_TYPE_LENGTH
) -> MediaType:
    """Parse a Content-Type header value (RFC 9110 section 8.3.1).

    Args:
        value: the header value; bytes are read as Latin-1, as h11 hands
            them over.
        max_size: longest value accepted, checked first.

    Returns:
        The parsed :class:`MediaType`.

    Raises:
        MessageTooLarge: *value* is longer than *max_size* (status hint 415:
            the body may be fine, the media type is what we refuse).
        DecodeError: the value is malformed or a parameter repeats (status
            hint 415).
        TypeError: *value* is neither bytes nor str (a programming error).
    """
    if isinstance(value, (bytearray, memoryview)):
        value = bytes(value)
    elif not isinstance(value, (bytes, str)):
        raise TypeError(f"media type must be bytes or str, not {type(value).__name__}")
    if len(value) > max_size:
        raise MessageTooLarge(
            f"media type is {len(value)} characters, over the {max_size} limit", 415
        )
    if len(value) > MAX_MEDIA_TYPE_LENGTH:
        return _parse(value)  # a raised max_size: keep long values out of the cache
    return _parse_cached(value)


def _parse(value: bytes | str) -> MediaType:
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    m = _TYPE_RE.match(text)
    if m is None:
        raise DecodeError(f"malformed media type {_shorten(text)!r}: expected type/subtype", 415)
    essence = f"{m.group(1)}/{m.group(2)}".lower()
    pos = m.end()
    end = len(text)
    params: list[tuple[str, str]] = []
    seen: set[str] = set()
    while pos < end:
        p = _PARAM_RE.match(text, pos)
        if p is None:
            raise DecodeError(
                f"malformed media type {_shorten(text)!r} at offset {pos}", 415
            )
        pos = p.end()
        name = p.group(1)
        if name is None:  # empty parameter, e.g. "a/b;;c=d" (RFC 9110 allows it)
            continue
        name = name.lower()
        if name in seen:
            # Two values for one name: which one counts is anyone's guess.
            raise DecodeError(f"media type parameter {name!r} repeats", 415)
        seen.add(name)
        token = p.group(2)
        if token is not None:
            params.append((name, token))
        else:
            quoted = p.group(3)
            if "\\" in quoted:
                quoted = _UNESCAPE_RE.sub(r"\1", quoted)
            params.append((name, quoted))
    # The regexes admit nothing above U+00FF, so the constructor cannot fail.
    return MediaType(essence, tuple(params))


# A peer sends the same few media types on every request and a MediaType is
# immutable, so parsed values are cached (bounded: a peer sending endless
# distinct values only evicts entries). Errors are not cached.
_parse_cached = functools.lru_cache(maxsize=256)(_parse)


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _quote(value: str) -> str:
    if _TOKEN_RE.fullmatch(value):
        return value
    return '"' + _ESCAPE_RE.sub(r"\\\1", value) + '"'


def format_media_type(mt: MediaType) -> str:
    """Format *mt* as a header value: ``type/subtype; name=value; ...``.

    Values are quoted (RFC 9110 section 5.6.4) only when they are not tokens;
    ``parse_media_type(format_media_type(mt)) == mt`` for every MediaType.

    Args:
        mt: the media type.

    Returns:
        The header value (Latin-1 encodable).
    """
    if not mt.params:
        return mt.essence
    return mt.essence + "".join(f"; {name}={_quote(value)}" for name, value in mt.params)


def matches(actual: MediaType, expected: MediaType) -> bool:
    """Whether a received media type is acceptable where *expected* is wanted.

    The essences must be equal (both are lower case, RFC 9110 section 8.3.1
    makes them case-insensitive). If *expected* names an ``smime-type``,
    *actual*'s must equal it case-insensitively or be missing: Bouncy Castle
    issue 901 and real servers omit it. Every other parameter is ignored.

    Args:
        actual: the media type the peer sent.
        expected: one of the constants of this module, usually.

    Returns:
        True if *actual* is acceptable.
    """
    if actual.essence != expected.essence:
        return False
    wanted = expected.smime_type
    if wanted is None:
        return True
    got = actual.smime_type
    return got is None or got == wanted


#: RFC 7030 section 4.2.1 (RFC 5967): the body of /simpleenroll, /simplereenroll
#: and /serverkeygen requests.
PKCS10 = MediaType("application/pkcs10")

#: RFC 7030 section 4.1.3: the /cacerts response (RFC 8551), no smime-type.
PKCS7_MIME = MediaType("application/pkcs7-mime")

#: RFC 7030 section 4.2.3: an enrollment response (certs-only Simple PKI Response).
CERTS_ONLY = MediaType("application/pkcs7-mime", (("smime-type", "certs-only"),))

#: RFC 7030 section 4.3.1 (RFC 5273): a Full PKI Request to /fullcmc.
CMC_REQUEST = MediaType("application/pkcs7-mime", (("smime-type", "CMC-request"),))

#: RFC 7030 section 4.3.2 (RFC 5273): a Full PKI Response from /fullcmc.
CMC_RESPONSE = MediaType("application/pkcs7-mime", (("smime-type", "CMC-response"),))

#: RFC 7030 section 4.4.2: the encrypted key part of a /serverkeygen response.
SERVER_GENERATED_KEY = MediaType(
    "application/pkcs7-mime", (("smime-type", "server-generated-key"),)
)

#: RFC 7030 section 4.5.2: the /csrattrs response.
CSRATTRS = MediaType("application/csrattrs")

#: RFC 7030 section 4.4.2 (RFC 5958): the unencrypted key part of /serverkeygen.
PKCS8 = MediaType("application/pkcs8")

#: RFC 7030 section 4.4.2 (RFC 2046 section 5.1.3): the /serverkeygen response,
#: without its boundary parameter (see :mod:`estproto.codecs.multipart`).
MULTIPART_MIXED = MediaType("multipart/mixed")

#: RFC 8951 section 5 / RFC 7030 section 4.2.3: short error reasons.
TEXT_PLAIN = MediaType("text/plain")
