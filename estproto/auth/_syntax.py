"""HTTP authentication header syntax (RFC 7235 section 2.1, RFC 7230 section 3.2.6).

Parses ``WWW-Authenticate`` and ``Authorization`` field values into schemes with
either a token68 or a list of auth-params, and formats quoted strings.

Grammar (RFC 7235 section 2.1 and 4.1)::

    WWW-Authenticate = 1#challenge
    challenge   = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
    credentials = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
    auth-param  = token BWS "=" BWS ( token / quoted-string )
    token68     = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="

Strategy: a single left-to-right scan with anchored regular expressions, linear
in the input. The one ambiguity of the grammar (after a comma, does a new
challenge start or another auth-param follow?) is settled by looking ahead:
``token BWS "="`` followed by a value is an auth-param, anything else starts a
new challenge. Every syntax error raises :class:`RemoteProtocolError` (400);
nothing else escapes. Values longer than :data:`MAX_AUTH_HEADER_LENGTH` are
refused before they are scanned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from .._errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "MAX_AUTH_HEADER_LENGTH",
    "MAX_CHALLENGES",
    "Challenge",
    "parse_challenges",
    "quote",
]

#: Longest Authorization / WWW-Authenticate value we parse. A Digest answer
#: with SHA-256, a 64-byte username and our nonce is under 500 bytes; Apache's
#: and nginx's whole-header-line limits are 8 KiB, so nothing legitimate is longer.
MAX_AUTH_HEADER_LENGTH = 8192

#: Most challenges we read from the WWW-Authenticate fields of one response.
#: Real servers offer 1 to 4 (Basic, Digest per algorithm, Bearer, Negotiate).
MAX_CHALLENGES = 32

# RFC 7230 section 3.2.6: tchar.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A run of qdtext: anything but DQUOTE, backslash and CTLs other than HTAB.
# obs-text (%x80-FF) is widened to any non-ASCII character because callers
# may have decoded the header as UTF-8.
_QDTEXT_RUN = re.compile(r'[^"\\\x00-\x08\x0a-\x1f\x7f]*')
_CTL_CHARS = frozenset(chr(c) for c in range(0x20) if c != 0x09) | {"\x7f"}
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_OWS = re.compile(r"[ \t]*")
# Skips OWS and empty list elements: RFC 7230 section 7 says a recipient
# MUST accept (and ignore) empty elements such as "a, , b".
_LIST_GAP = re.compile(r"[ \t,]*")
# Characters that may appear inside a quoted-string we generate (no CTLs
# other than HTAB). Non-ASCII is allowed: it goes out as UTF-8 obs-text.
_QUOTABLE = re.compile(r"[\t \x21-\x7e\x80-\U0010ffff]*")


def _skip(run: re.Pattern[str], s: str, i: int) -> int:
    """The index after the run of *run* at *i* (patterns that match empty)."""
    m = run.match(s, i)
    assert m is not None  # a starred pattern always matches
    return m.end()


@dataclass(frozen=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` field (RFC 7235 section 2.1).

    Attributes:
        scheme: the auth-scheme, lowercased (schemes are case-insensitive).
        params: the auth-params in received order as ``(name, value)`` pairs;
            names lowercased, values unquoted and unescaped.
        token68: the token68 form (e.g. ``Negotiate <blob>``), or None.
    """

    scheme: str
    params: tuple[tuple[str, str], ...] = ()
    token68: str | None = None

    def param(self, name: str) -> str | None:
        """Return the value of auth-param *name* (case-insensitive), or None."""
        key = name.lower()
        for k, v in self.params:
            if k == key:
                return v
        return None


def _fail(what: str, detail: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"malformed {what}: {detail}", error_status_hint=400)


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _fail(what, f"expected str, got {type(value).__name__}")
    if len(value) > MAX_AUTH_HEADER_LENGTH:
        raise RemoteProtocolError(
            f"{what} is {len(value)} characters, over the "
            f"{MAX_AUTH_HEADER_LENGTH}-character limit",
            error_status_hint=400,
        )
    return value


def _quoted_at(s: str, i: int, what: str, name: str) -> tuple[str, int]:
    """Read the quoted-string starting at s[i] == '"'; return (value, end).

    Scans runs of qdtext with one regex call each and handles quoted-pairs
    in between, so the cost is linear with a small constant even for a
    value made only of escapes.
    """
    n = len(s)
    parts: list[str] = []
    i += 1
    while True:
        run = _QDTEXT_RUN.match(s, i)
        assert run is not None  # the pattern matches the empty string
        parts.append(run.group())
        i = run.end()
        if i >= n:
            raise _fail(what, f"unterminated quoted-string for parameter {name!r}")
        c = s[i]
        if c == '"':
            return "".join(parts), i + 1
        # quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
        if c == "\\" and i + 1 < n and s[i + 1] not in _CTL_CHARS:
            parts.append(s[i + 1])
            i += 2
            continue
        raise _fail(what, f"bad character in quoted-string for parameter {name!r}")


def _param_at(s: str, i: int, what: str) -> tuple[str, str, int] | None:
    """Read ``token BWS "=" BWS (token / quoted-string)`` at *i*, or None."""
    m = _TOKEN.match(s, i)
    if m is None:
        return None
    name = m.group().lower()
    j = _skip(_OWS, s, m.end())
    if j >= len(s) or s[j] != "=":
        return None
    j = _skip(_OWS, s, j + 1)
    if j < len(s) and s[j] == '"':
        value, end = _quoted_at(s, j, what, name)
        return name, value, end
    t = _TOKEN.match(s, j)
    if t is None:
        # "abc==" is a token68, not a parameter with an empty value.
        return None
    return name, t.group(), t.end()


def parse_auth_items(value: str, what: str) -> list[Challenge]:
    """Parse a comma-separated list of challenges (or one credentials value).

    Args:
        value: one field value.
        what: names the field in error messages.

    Returns:
        The items in order; an empty value gives an empty list.

    Raises:
        RemoteProtocolError: (400) on any syntax error, duplicated parameter,
            or a value over :data:`MAX_AUTH_HEADER_LENGTH`.
    """
    s = _check_text(value, what)
    n = len(s)
    items: list[Challenge] = []
    i = _skip(_LIST_GAP, s, 0)
    while i < n:
        m = _TOKEN.match(s, i)
        if m is None:
            raise _fail(what, f"expected an auth-scheme at offset {i}")
        scheme = m.group().lower()
        i = m.end()
        j = _skip(_OWS, s, i)
        params: list[tuple[str, str]] = []
        token68: str | None = None
        if j < n and s[j] != ",":
            if j == i:
                raise _fail(what, f"auth-scheme {scheme!r} not followed by a space")
            i = j
            p = _param_at(s, i, what)
            if p is None:
                t = _TOKEN68.match(s, i)
                if t is None:
                    raise _fail(what, f"expected token68 or auth-param at offset {i}")
                token68 = t.group()
                i = _skip(_OWS, s, t.end())
                if i < n and s[i] != ",":
                    raise _fail(what, f"unexpected {s[i]!r} after token68")
            else:
                while p is not None:
                    name, val, i = p
                    # RFC 7235 section 2.1: "Each parameter name MUST only
                    # occur once per challenge."
                    if any(k == name for k, _ in params):
                        raise _fail(what, f"parameter {name!r} repeated")
                    params.append((name, val))
                    i = _skip(_OWS, s, i)
                    if i >= n:
                        break
                    if s[i] != ",":
                        raise _fail(what, f"unexpected {s[i]!r} at offset {i}")
                    i = _skip(_LIST_GAP, s, i)
                    if i >= n:
                        break
                    p = _param_at(s, i, what)
                    # p is None: a new challenge starts at i.
        else:
            i = j
        items.append(Challenge(scheme, tuple(params), token68))
        if len(items) > MAX_CHALLENGES:
            raise _fail(what, f"more than {MAX_CHALLENGES} challenges")
        i = _skip(_LIST_GAP, s, i)
    return items


def parse_challenges(www_authenticate_values: Sequence[str]) -> list[Challenge]:
    """Parse every ``WWW-Authenticate`` field of a response (client side).

    Several challenges may share one field value, and a response may carry
    several fields (RFC 7235 section 4.1); the result keeps their order,
    which RFC 7616 section 3.7 says is the server's preference.

    Args:
        www_authenticate_values: the field values, already decoded to str
            (latin-1 or UTF-8).

    Returns:
        The challenges, schemes lowercased. No fields gives an empty list.

    Raises:
        RemoteProtocolError: on a syntax error, an empty field, or more than
            :data:`MAX_CHALLENGES` challenges in total.
    """
    if isinstance(www_authenticate_values, str):
        # A bare str is a Sequence[str] of characters: almost surely a mistake.
        www_authenticate_values = [www_authenticate_values]
    out: list[Challenge] = []
    for value in www_authenticate_values:
        items = parse_auth_items(value, "WWW-Authenticate")
        if not items:
            # RFC 7235 section 4.1: WWW-Authenticate = 1#challenge.
            raise _fail("WWW-Authenticate", "empty field value")
        out.extend(items)
        if len(out) > MAX_CHALLENGES:
            raise _fail("WWW-Authenticate", f"more than {MAX_CHALLENGES} challenges")
    return out


def quote(value: str, what: str = "value") -> str:
    """Return *value* as an RFC 7230 quoted-string.

    Raises:
        LocalProtocolError: if *value* holds a control character (CR, LF, NUL
            ...), which no quoted-string can carry.
    """
    if _QUOTABLE.fullmatch(value) is None:
        raise LocalProtocolError(f"{what} contains a control character")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def is_token(value: str) -> bool:
    """True if *value* is a non-empty RFC 7230 token."""
    return _TOKEN.fullmatch(value) is not None
