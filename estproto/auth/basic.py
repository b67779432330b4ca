"""HTTP Basic authentication (RFC 7617) and password hashing for user stores.

RFC 7030 section 3.2.3 lets an EST server ask for HTTP Basic authentication
(only over TLS); curl and the common Python EST client send it up front.

Strategy:

* Parsing is strict about structure (token68 that is valid base64, exactly
  one colon separating user-id and password) and raises only
  :class:`RemoteProtocolError` (400).
* Charset: RFC 7617 section 2.1 defines UTF-8 only when the server sent
  ``charset="UTF-8"``, which :func:`basic_challenge` always does. We decode
  UTF-8 and, if the bytes are not UTF-8, fall back to ISO-8859-1 (the
  historical default, RFC 7617 appendix B.3). Latin-1 decodes any byte
  string, so such a password is simply compared and fails unless it was
  ASCII; it never raises.
* Secrets never reach a repr or a log: the password field is ``repr=False``.
* :func:`verify_basic` compares both fields in constant time and evaluates
  both before combining, so the timing does not tell which one was wrong.
* :func:`hash_password` / :func:`check_password_hash` store scrypt hashes with
  their parameters. An unknown user is checked against
  :data:`DUMMY_PASSWORD_HASH`, so "no such user" costs the same as "wrong
  password". scrypt at n=2**14 costs ~80 ms per check on the reference
  machine: a server doing Basic on every request should cache successful
  checks (keyed by an HMAC of the credentials) rather than lower the cost.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field

from .._errors import LocalProtocolError, RemoteProtocolError
from ._syntax import quote

__all__ = [
    "BasicCredentials",
    "basic_challenge",
    "basic_authorization",
    "verify_basic",
    "hash_password",
    "check_password_hash",
    "DUMMY_PASSWORD_HASH",
    "SCRYPT_N",
    "SCRYPT_R",
    "SCRYPT_P",
]

#: scrypt cost parameters for new hashes: n=2**14, r=8, p=1 uses 16 MiB and
#: is the interactive-login setting of the scrypt paper and Python's docs.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_SCRYPT_DKLEN = 32

#: Largest scrypt memory a stored hash may demand (n * r * 128 bytes); bounds
#: the damage of a corrupted or hostile entry in a user store.
_SCRYPT_MAX_MEMORY = 256 * 1024 * 1024

#: A hash of a random password nobody knows, made with the default
#: parameters above. check_password_hash(None, pw) verifies against it so an
#: unknown user takes as long as a known one.
DUMMY_PASSWORD_HASH = (
    "scrypt$16384$8$1$ghih1EITUcI/YG/jU6AtFg$7PZAqgH3bb13IOFimnDLsE9xo4EPAGfwyj4JEHfmWak"
)

# RFC 5234 appendix B.1: CTL = %x00-1F / %x7F.
_CTL = re.compile(r"[\x00-\x1f\x7f]")
_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


@dataclass(frozen=True)
class BasicCredentials:
    """A decoded ``Authorization: Basic`` value (RFC 7617 section 2).

    Attributes:
        username: the user-id (never contains ':'; may be "" per RFC 7030
            section 3.2.3, "A client MAY set the username to the empty
            string").
        password: the password; hidden from repr.
    """

    username: str
    password: str = field(repr=False)


def _encode(text: str) -> bytes:
    # surrogatepass: a str with lone surrogates must not raise here.
    return text.encode("utf-8", "surrogatepass")


def parse_basic_credentials(token68: str | None) -> BasicCredentials:
    """Decode the token68 of a Basic ``Authorization`` value.

    Raises:
        RemoteProtocolError: (400) if the token is missing, not base64, has
            no colon, or holds control characters.
    """
    def fail(detail: str) -> RemoteProtocolError:
        return RemoteProtocolError(f"malformed Basic credentials: {detail}", 400)

    if token68 is None:
        raise fail("expected a base64 token")
    # Tolerate missing padding; reject anything else that is not base64.
    padded = token68 + "=" * (-len(token68) % 4)
    if _B64.fullmatch(padded) is None:
        raise fail("not base64")
    try:
        raw = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise fail("not base64") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    # RFC 7617 section 2: "a user-id containing a colon character is
    # invalid", so the first colon is the separator.
    username, sep, password = text.partition(":")
    if not sep:
        raise fail("no ':' between user-id and password")
    # RFC 7617 section 2: "The user-id and password MUST NOT contain any
    # control characters".
    if _CTL.search(text) is not None:
        raise fail("control character in user-id or password")
    return BasicCredentials(username, password)


def basic_challenge(realm: str) -> str:
    """Return a ``WWW-Authenticate`` value asking for Basic credentials.

    The value carries ``charset="UTF-8"`` (RFC 7617 section 2.1), so clients
    encode non-ASCII user-ids and passwords as UTF-8.

    Raises:
        LocalProtocolError: if *realm* holds a control character.
    """
    return f'Basic realm={quote(realm, "realm")}, charset="UTF-8"'


def basic_authorization(username: str, password: str) -> str:
    """Return an ``Authorization`` value for Basic (client side, RFC 7617).

    Call this only after the server has been authorized: RFC 7030 section
    3.2.3, "The client MUST NOT respond to the server's HTTP authentication
    request unless the client has authorized the EST server".

    Raises:
        LocalProtocolError: if *username* contains ':' or either value holds
            a control character.
    """
    if ":" in username:
        raise LocalProtocolError("a Basic user-id must not contain ':' (RFC 7617 section 2)")
    if _CTL.search(username) or _CTL.search(password):
        raise LocalProtocolError("Basic user-id and password must not contain control characters")
    token = base64.b64encode(_encode(f"{username}:{password}")).decode("ascii")
    return f"Basic {token}"


def verify_basic(
    credentials: BasicCredentials, expected_username: str, expected_password: str
) -> bool:
    """Check Basic credentials against one known user, in constant time.

    Both comparisons always run and are combined without short-circuit, so
    the time taken does not reveal which field was wrong.

    Returns:
        True if both username and password match exactly.
    """
    user_ok = hmac.compare_digest(_encode(credentials.username), _encode(expected_username))
    pass_ok = hmac.compare_digest(_encode(credentials.password), _encode(expected_password))
    return user_ok & pass_ok


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    if _B64.fullmatch(padded) is None:
        raise ValueError("not base64")
    return base64.b64decode(padded, validate=True)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    # OpenSSL needs 128*r*(n+2) + 128*r*p bytes; give exactly that plus slack.
    maxmem = 128 * r * (n + 2 + p) + 1024 * 1024
    return hashlib.scrypt(_encode(password), salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=maxmem)


def hash_password(
    password: str,
    *,
    salt: bytes | None = None,
    n: int = SCRYPT_N,
    r: int = SCRYPT_R,
    p: int = SCRYPT_P,
) -> str:
    """Hash *password* for a user store with scrypt.

    Args:
        password: the plaintext password (encoded as UTF-8).
        salt: 16 random bytes are drawn when None.
        n, r, p: scrypt parameters; *n* must be a power of two > 1.

    Returns:
        ``"scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>"`` (unpadded base64).

    Raises:
        LocalProtocolError: for parameters out of range or a salt under
            8 bytes.
    """
    _check_params(n, r, p)
    if salt is None:
        salt = secrets.token_bytes(16)
    if len(salt) < 8:
        raise LocalProtocolError("scrypt salt must be at least 8 bytes")
    digest = _scrypt(password, salt, n, r, p, _SCRYPT_DKLEN)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def _check_params(n: int, r: int, p: int) -> None:
    if n < 2 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 64:
        raise LocalProtocolError(f"bad scrypt parameters n={n} r={r} p={p}")
    if 128 * r * (n + p) > _SCRYPT_MAX_MEMORY:
        raise LocalProtocolError(f"scrypt parameters n={n} r={r} p={p} need too much memory")


def check_password_hash(stored: str | None, password: str) -> bool:
    """Check *password* against a hash from :func:`hash_password`.

    Args:
        stored: the stored hash, or None when the user does not exist: then
            the password is checked against :data:`DUMMY_PASSWORD_HASH` (so
            the call takes as long) and the result is False.
        password: the candidate password.

    Returns:
        True only if *stored* is not None and the password matches.

    Raises:
        LocalProtocolError: if *stored* is not a well-formed scrypt hash (a
            corrupted user store is a local fault, reported rather than
            silently treated as "wrong password").
    """
    known = stored is not None
    parts = (stored if stored is not None else DUMMY_PASSWORD_HASH).split("$")
    try:
        if len(parts) != 6 or parts[0] != "scrypt":
            raise ValueError("not scrypt$n$r$p$salt$hash")
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, expected = _unb64(parts[4]), _unb64(parts[5])
        if len(salt) < 8 or not 16 <= len(expected) <= 64:
            raise ValueError("bad salt or hash length")
    except (ValueError, binascii.Error) as exc:
        raise LocalProtocolError(f"malformed stored password hash: {exc}") from None
    _check_params(n, r, p)
    actual = _scrypt(password, salt, n, r, p, len(expected))
    return hmac.compare_digest(actual, expected) and known

