"""HTTP Digest access authentication (RFC 7616), server and client side.

RFC 7030 section 3.2.3: "Clients SHOULD support the Basic and Digest
authentication mechanism." Digest keeps the password off the wire; EST only
runs it inside TLS.

Supported: algorithms MD5, SHA-256, SHA-512-256 and their ``-sess`` variants
(RFC 7616 section 3.4.2), qop=auth (qop=auth-int is not offered: EST bodies
are already integrity-protected by TLS), ``username*`` (RFC 8187 ext-value)
for non-ASCII user names, and ``userhash`` on the client side. Servers do not
offer userhash, and a credential using it is rejected.

Server strategy (:class:`DigestAuthority`):

* Stateless nonces: ``base64url(timestamp || 12 random bytes || tag)`` where
  tag = HMAC-SHA256(secret, timestamp || random || realm) cut to 16 bytes. A
  nonce is verified by recomputing the tag and checking its age against
  ``nonce_lifetime``; the server keeps no per-client memory.
* Replays inside the lifetime are accepted, nc is not tracked. Bouncy
  Castle's EST client, polling after a 202, resends the very same Digest
  header (same nonce and nc) a minute later, and a server with nonce-count
  tracking would reject it. The trade-off: a replay needs the header, which
  only travels inside TLS (RFC 7030 section 3.2.3 forbids Digest outside TLS),
  so an attacker able to replay has already broken TLS; the nonce lifetime
  (default 300 s) still bounds the window. The response also binds method
  and request-target, so a captured header authorizes only the same request.
* ``opaque`` is sent (RFC 7616 makes it a server hint) but not checked:
  Bouncy Castle sends an opaque the server never issued, and all the
  integrity lives in the nonce's HMAC.
* ``stale=true`` only when the response was right for an expired nonce
  (RFC 7616 section 3.3: the server "SHOULD only set stale to TRUE if it
  receives a request for which the nonce is invalid and the response is
  valid for that nonce").
* The user store may keep plaintext or, better, precomputed HA1 values
  (:func:`digest_ha1`) per base algorithm; see :meth:`DigestAuthority.verify`.
  An unknown user is checked against a random dummy HA1 so the work (and
  time) is the same as for a wrong password; the response is compared with
  :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import math
import re
import secrets
import struct
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from .._errors import LocalProtocolError, RemoteProtocolError
from ._syntax import Challenge, is_token, quote

__all__ = [
    "DigestCredentials",
    "DigestResult",
    "DigestAuthority",
    "digest_ha1",
    "digest_response",
    "digest_authorization",
    "digest_challenge_key",
    "password_ha1_lookup",
    "HA1Lookup",
]

#: get_ha1(username, base_algorithm) -> lowercase hex HA1, or None if the
#: user is unknown. base_algorithm is "MD5", "SHA-256" or "SHA-512-256".
HA1Lookup = Callable[[str, str], Optional[str]]


@dataclass(frozen=True)
class _Algorithm:
    name: str  # canonical spelling, as sent in challenges
    base: str  # the algorithm without "-sess": selects the stored HA1
    hash_name: str  # hashlib name
    sess: bool


def _build_algorithms() -> dict[str, _Algorithm]:
    table: dict[str, _Algorithm] = {}
    for base, hash_name in (("MD5", "md5"), ("SHA-256", "sha256"), ("SHA-512-256", "sha512_256")):
        if hash_name not in hashlib.algorithms_available:
            continue  # SHA-512/256 needs OpenSSL 1.1.1+
        for sess in (False, True):
            name = base + ("-sess" if sess else "")
            table[name.upper()] = _Algorithm(name, base, hash_name, sess)
    return table


# RFC 7616 section 3.3: algorithm names compare case-insensitively.
_ALGORITHMS = _build_algorithms()


def _algorithm(name: str | None) -> _Algorithm | None:
    # RFC 7616 section 3.3: "If the algorithm parameter is not present, it
    # is assumed to be 'MD5'."
    return _ALGORITHMS.get((name or "MD5").upper())


def _h(alg: _Algorithm, text: str) -> str:
    data = text.encode("utf-8", "surrogatepass")
    # usedforsecurity=False keeps MD5 usable under a FIPS OpenSSL; Digest
    # needs it for interoperability, not as a security primitive of ours.
    return hashlib.new(alg.hash_name, data, usedforsecurity=False).hexdigest()


def _require_algorithm(name: str) -> _Algorithm:
    alg = _algorithm(name)
    if alg is None:
        raise LocalProtocolError(f"unsupported Digest algorithm {name!r}")
    return alg


def digest_ha1(username: str, realm: str, password: str, algorithm: str = "SHA-256") -> str:
    """Return HA1 = H(username ":" realm ":" password) as lowercase hex.

    This is what a user store keeps instead of the plaintext password, one
    value per base algorithm (RFC 7616 section 3.4.2). For a ``-sess``
    algorithm the same value is used: the session part is added per request.

    Raises:
        LocalProtocolError: for an unknown algorithm.
    """
    alg = _require_algorithm(algorithm)
    return _h(alg, f"{username}:{realm}:{password}")


def digest_response(
    *,
    algorithm: str,
    ha1: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None = "auth",
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """Compute the Digest ``response`` value (RFC 7616 section 3.4.1).

    Args:
        algorithm: e.g. "SHA-256", "MD5", "MD5-sess".
        ha1: H(username:realm:password) as hex (see :func:`digest_ha1`).
        nonce, nc, cnonce: as sent; *nc* is the 8-hex-digit string.
        method, uri: the request method and the ``uri`` parameter.
        qop: "auth", or None for the RFC 2069 form without qop.

    Returns:
        The lowercase hex response.

    Raises:
        LocalProtocolError: for an unknown algorithm, qop other than auth,
            or qop/-sess without nc and cnonce.
    """
    alg = _require_algorithm(algorithm)
    if qop is not None and qop.lower() != "auth":
        raise LocalProtocolError(f"unsupported Digest qop {qop!r}")
    if (qop is not None or alg.sess) and (nc is None or cnonce is None):
        raise LocalProtocolError("Digest qop and -sess need nc and cnonce")
    ha1 = ha1.lower()
    if alg.sess:
        # RFC 7616 section 3.4.2: A1 = H(user:realm:passwd) ":" nonce ":" cnonce.
        ha1 = _h(alg, f"{ha1}:{nonce}:{cnonce}")
    ha2 = _h(alg, f"{method}:{uri}")
    if qop is None:
        return _h(alg, f"{ha1}:{nonce}:{ha2}")
    return _h(alg, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop.lower()}:{ha2}")


def password_ha1_lookup(realm: str, get_password: Callable[[str], str | None]) -> HA1Lookup:
    """Adapt a plaintext password store to :meth:`DigestAuthority.verify`.

    Args:
        realm: the authority's realm.
        get_password: username -> plaintext password, or None if unknown.

    Returns:
        A ``get_ha1(username, algorithm)`` callable.
    """
    def get_ha1(username: str, algorithm: str) -> str | None:
        password = get_password(username)
        if password is None:
            return None
        return digest_ha1(username, realm, password, algorithm)

    return get_ha1


# ---------------------------------------------------------------------------
# Credentials (server side parsing)

_HEX = re.compile(r"[0-9a-fA-F]+")
_NC = re.compile(r"[0-9a-fA-F]{8}")
# RFC 8187 section 3.2.1: ext-value = charset "'" [ language ] "'" value-chars
_EXT_VALUE = re.compile(
    r"(?i:(utf-8|iso-8859-1))'[A-Za-z0-9\-]*'((?:[A-Za-z0-9!#$&+\-.^_`|~]|%[0-9A-Fa-f]{2})*)"
)
_ATTR_CHAR_SAFE = "!#$&+-.^_`|~"


@dataclass(frozen=True)
class DigestCredentials:
    """A parsed ``Authorization: Digest`` value (RFC 7616 section 3.4).

    Values are as received (unquoted): the response is recomputed from them.

    Attributes:
        username: from ``username`` or the decoded ``username*``.
        realm, nonce, uri: as sent.
        response: the hex response; hidden from repr.
        algorithm: as sent, or None (meaning MD5).
        qop, nc, cnonce: as sent, or None.
        opaque: as sent, or None (not checked, see module docstring).
        userhash: True if the client hashed the username.
    """

    username: str
    realm: str
    nonce: str
    uri: str
    response: str = field(repr=False)
    algorithm: str | None = None
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    opaque: str | None = None
    userhash: bool = False


def parse_digest_credentials(item: Challenge) -> DigestCredentials:
    """Turn the parsed auth-params of a Digest ``Authorization`` into credentials.

    Parameters may be quoted or not (RFC 7616 section 3.4: recipients accept
    both forms; Bouncy Castle quotes qop, nc and algorithm).

    Raises:
        RemoteProtocolError: (400) for a missing required parameter, both or
            neither of username/username*, a bad ``nc``, a non-hex response,
            or a bad ``userhash`` flag.
    """
    def fail(detail: str) -> RemoteProtocolError:
        return RemoteProtocolError(f"malformed Digest credentials: {detail}", 400)

    if item.token68 is not None:
        raise fail("expected auth-params, got a token68")
    p = dict(item.params)
    username = p.get("username")
    ext = p.get("username*")
    if (username is None) == (ext is None):
        # RFC 7616 section 3.4.4: username* MUST NOT be used together with username.
        raise fail("need exactly one of username and username*")
    if ext is not None:
        username = _decode_ext_value(ext)
        if username is None:
            raise fail("bad username* encoding")
    assert username is not None
    missing = [k for k in ("realm", "nonce", "uri", "response") if k not in p]
    if missing:
        raise fail("missing " + ", ".join(missing))
    response = p["response"]
    if _HEX.fullmatch(response) is None or len(response) > 128:
        raise fail("response is not hex")
    qop, nc, cnonce = p.get("qop"), p.get("nc"), p.get("cnonce")
    if qop is not None:
        if not is_token(qop):
            raise fail("bad qop")
        # RFC 7616 section 3.4: with qop, cnonce and nc MUST be sent.
        if nc is None or cnonce is None:
            raise fail("qop without nc and cnonce")
    if nc is not None and _NC.fullmatch(nc) is None:
        raise fail("nc is not 8 hex digits")
    flag = p.get("userhash", "false").lower()
    if flag not in ("true", "false"):
        raise fail("userhash is neither true nor false")
    return DigestCredentials(
        username=username,
        realm=p["realm"],
        nonce=p["nonce"],
        uri=p["uri"],
        response=response,
        algorithm=p.get("algorithm"),
        qop=qop,
        nc=nc,
        cnonce=cnonce,
        opaque=p.get("opaque"),
        userhash=flag == "true",
    )


def _decode_ext_value(value: str) -> str | None:
    m = _EXT_VALUE.fullmatch(value)
    if m is None:
        return None
    raw = urllib.parse.unquote_to_bytes(m.group(2))
    try:
        return raw.decode("utf-8" if m.group(1).lower() == "utf-8" else "latin-1")
    except UnicodeDecodeError:
        return None


# ---------------------------------------------------------------------------
# Server side


class DigestResult(enum.Enum):
    """Outcome of :meth:`DigestAuthority.verify`."""

    #: The response is right and the nonce is ours and fresh.
    OK = "ok"
    #: Anything else: wrong response, unknown user, realm or uri mismatch,
    #: forged nonce, unsupported algorithm or qop. Answer 401 with fresh
    #: challenges.
    BAD = "bad"
    #: The response is right but the nonce expired: answer 401 with
    #: ``challenges(now, stale=True)`` so the client retries without asking
    #: the user again.
    STALE = "stale"


_NONCE_TS = struct.Struct(">d")
_NONCE_RANDOM = 12
_NONCE_TAG = 16
_NONCE_BYTES = _NONCE_TS.size + _NONCE_RANDOM + _NONCE_TAG
_NONCE_CHARS = (_NONCE_BYTES * 4 + 2) // 3
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{%d}" % _NONCE_CHARS)


class DigestAuthority:
    """Issues Digest challenges and verifies Digest credentials (server side).

    Stateless: everything needed to check a nonce is inside it and the
    secret. Several server processes sharing *secret* accept each other's
    nonces.

    Args:
        secret: HMAC key for nonces, at least 16 bytes (e.g.
            ``secrets.token_bytes(32)``); rotating it invalidates nonces.
        realm: the protection space shown to users.
        algorithms: offered in this order (RFC 7616 section 3.7: most
            preferred first); one challenge per algorithm.
        nonce_lifetime: seconds a nonce stays fresh.

    Raises:
        LocalProtocolError: for a short secret, a realm with control
            characters, no or unknown algorithms, or a non-positive lifetime.
    """

    def __init__(
        self,
        secret: bytes,
        realm: str,
        *,
        algorithms: Sequence[str] = ("SHA-256", "MD5"),
        nonce_lifetime: float = 300.0,
    ) -> None:
        if len(secret) < 16:
            raise LocalProtocolError("Digest nonce secret must be at least 16 bytes")
        quote(realm, "realm")
        if not algorithms:
            raise LocalProtocolError("DigestAuthority needs at least one algorithm")
        if not (math.isfinite(nonce_lifetime) and nonce_lifetime > 0):
            raise LocalProtocolError("nonce_lifetime must be a positive number of seconds")
        self.realm = realm
        self.nonce_lifetime = float(nonce_lifetime)
        self.algorithms = tuple(_require_algorithm(a).name for a in algorithms)
        self._secret = bytes(secret)
        self._realm_bytes = realm.encode("utf-8", "surrogatepass")
        opaque = hmac.new(self._secret, b"estproto-digest-opaque\0" + self._realm_bytes, "sha256")
        self._opaque = base64.urlsafe_b64encode(opaque.digest()[:12]).decode("ascii")
        # Random per instance: nobody knows a password matching it.
        self._dummy_ha1 = {
            a.hash_name: _h(a, secrets.token_hex(32)) for a in _ALGORITHMS.values()
        }

    def _tag(self, body: bytes) -> bytes:
        data = b"estproto-digest-nonce\0" + body + self._realm_bytes
        mac = hmac.new(self._secret, data, "sha256")
        return mac.digest()[:_NONCE_TAG]

    def make_nonce(self, now: float) -> str:
        """Return a fresh nonce stamped with *now* (seconds, any epoch).

        Raises:
            LocalProtocolError: if *now* is not a finite number.
        """
        if not math.isfinite(now):
            raise LocalProtocolError("now must be a finite number")
        body = _NONCE_TS.pack(float(now)) + secrets.token_bytes(_NONCE_RANDOM)
        return base64.urlsafe_b64encode(body + self._tag(body)).decode("ascii")

    def check_nonce(self, nonce: str, now: float) -> DigestResult:
        """Classify *nonce*: OK (ours, fresh), STALE (ours, expired), BAD."""
        if _NONCE_RE.fullmatch(nonce) is None:
            return DigestResult.BAD
        raw = base64.urlsafe_b64decode(nonce)
        body, tag = raw[:-_NONCE_TAG], raw[-_NONCE_TAG:]
        if not hmac.compare_digest(tag, self._tag(body)):
            return DigestResult.BAD
        (issued,) = _NONCE_TS.unpack(body[: _NONCE_TS.size])
        age = now - issued
        # A negative age means the clock moved back (or another server's
        # clock is ahead): within one lifetime that is tolerated.
        if not math.isfinite(age) or abs(age) > self.nonce_lifetime:
            return DigestResult.STALE
        return DigestResult.OK

    def challenges(self, now: float, stale: bool = False) -> list[str]:
        """Return ``WWW-Authenticate`` values, one per algorithm, best first.

        Each carries realm, ``qop="auth"``, the algorithm, a nonce and an
        opaque, plus ``stale="true"`` when *stale*. Send each as its own
        header field: some clients read only the first challenge of a field.

        Every parameter is a quoted-string and RFC 7616's optional
        ``charset`` is left out: RFC 7235 allows tokens too, but Bouncy
        Castle's EST client (1.72) rejects an unquoted parameter and any
        parameter besides realm, nonce, opaque, algorithm and qop. Clients
        then assume usernames are not UTF-8 beyond ASCII (RFC 7616 3.4.4).
        """
        nonce = self.make_nonce(now)
        out = []
        for name in self.algorithms:
            value = (
                f"Digest realm={quote(self.realm)}, qop=\"auth\", algorithm=\"{name}\", "
                f'nonce="{nonce}", opaque="{self._opaque}"'
            )
            if stale:
                value += ', stale="true"'
            out.append(value)
        return out

    def verify(
        self,
        credentials: DigestCredentials,
        method: str,
        request_uri: str,
        get_ha1: HA1Lookup,
        now: float,
    ) -> DigestResult:
        """Check Digest credentials for one request.

        Args:
            credentials: from :func:`estproto.auth.parse_authorization`.
            method: the request method, e.g. "POST".
            request_uri: the request-target exactly as received; RFC 7616
                section 3.4.6 has the server check that ``uri`` names the
                same resource, and a mismatch is BAD.
            get_ha1: ``(username, base_algorithm) -> hex HA1 | None``, where
                base_algorithm drops any ``-sess`` ("MD5", "SHA-256",
                "SHA-512-256"). Use :func:`password_ha1_lookup` for a
                plaintext store.
            now: current time in seconds, same epoch as for challenges.

        Returns:
            :class:`DigestResult` OK, STALE or BAD.
        """
        alg = _algorithm(credentials.algorithm)
        if alg is None or alg.name not in self.algorithms:
            return DigestResult.BAD
        # We offer qop="auth" only, never userhash.
        if credentials.userhash or (credentials.qop or "").lower() != "auth":
            return DigestResult.BAD
        if credentials.nc is None or credentials.cnonce is None:
            return DigestResult.BAD
        if credentials.realm != self.realm or credentials.uri != request_uri:
            return DigestResult.BAD
        freshness = self.check_nonce(credentials.nonce, now)
        if freshness is DigestResult.BAD:
            return DigestResult.BAD
        ha1 = get_ha1(credentials.username, alg.base)
        known = ha1 is not None
        expected = digest_response(
            algorithm=alg.name,
            ha1=ha1 if ha1 is not None else self._dummy_ha1[alg.hash_name],
            nonce=credentials.nonce,
            method=method,
            uri=credentials.uri,
            qop="auth",
            nc=credentials.nc,
            cnonce=credentials.cnonce,
        )
        received = credentials.response.lower().encode("utf-8", "surrogatepass")
        matches = hmac.compare_digest(expected.encode("ascii"), received)
        if not (matches and known):
            return DigestResult.BAD
        return freshness


# ---------------------------------------------------------------------------
# Client side


def _qop_options(challenge: Challenge) -> list[str] | None:
    qop = challenge.param("qop")
    if qop is None:
        return None
    return [q.strip().lower() for q in qop.split(",") if q.strip()]


def digest_challenge_key(challenge: Challenge) -> str | None:
    """Name a usable Digest challenge as "digest-<algorithm>", lowercased.

    Returns None if *challenge* is not Digest, lacks realm or nonce, uses an
    algorithm we do not implement, or offers qop without "auth".
    """
    if challenge.scheme != "digest" or challenge.token68 is not None:
        return None
    if challenge.param("realm") is None or challenge.param("nonce") is None:
        return None
    alg = _algorithm(challenge.param("algorithm"))
    qops = _qop_options(challenge)
    if alg is None or (qops is not None and "auth" not in qops):
        return None
    return "digest-" + alg.name.lower()


def digest_authorization(
    challenge: Challenge,
    username: str,
    password: str,
    method: str,
    uri: str,
    *,
    cnonce: str | None = None,
    nc: int = 1,
) -> str:
    """Answer a Digest challenge: return the ``Authorization`` value.

    Uses qop=auth when offered and the RFC 2069 form when the challenge has
    no qop; echoes opaque; hashes the username when the challenge asks for
    ``userhash=true``; sends ``username*`` (RFC 8187) for a name that is not
    printable ASCII. algorithm, qop and nc go out unquoted (RFC 7616 section
    3.4: "a sender MUST NOT generate the quoted string syntax" for them).

    Call only after authorizing the server (RFC 7030 section 3.2.3).

    Args:
        challenge: a Digest challenge, e.g. from :func:`choose_challenge`.
        username, password: the client's credentials.
        method, uri: the request method and request-target.
        cnonce: client nonce; 16 random bytes (base64url) when None.
        nc: nonce count, 1 for the first use of this nonce.

    Raises:
        LocalProtocolError: if the challenge is not a usable Digest challenge
            (see :func:`digest_challenge_key`), or a value cannot be quoted.
    """
    if digest_challenge_key(challenge) is None:
        raise LocalProtocolError("not a usable Digest challenge")
    realm = challenge.param("realm")
    nonce = challenge.param("nonce")
    assert realm is not None and nonce is not None
    alg = _algorithm(challenge.param("algorithm"))
    assert alg is not None
    if not 1 <= nc <= 0xFFFFFFFF:
        raise LocalProtocolError("Digest nc must be in 1..2**32-1")
    qops = _qop_options(challenge)
    qop = "auth" if qops is not None else None
    if cnonce is None:
        cnonce = secrets.token_urlsafe(16)
    nc_text = f"{nc:08x}"
    ha1 = digest_ha1(username, realm, password, alg.name)
    response = digest_response(
        algorithm=alg.name, ha1=ha1, nonce=nonce, method=method, uri=uri,
        qop=qop, nc=nc_text, cnonce=cnonce,
    )
    parts = []
    userhash = (challenge.param("userhash") or "").lower() == "true"
    if userhash:
        # RFC 7616 section 3.4.4: username = H(unq(username) ":" unq(realm)).
        parts.append(f'username="{_h(alg, f"{username}:{realm}")}"')
    elif re.fullmatch(r"[\x20-\x7e]*", username):
        parts.append(f"username={quote(username, 'username')}")
    else:
        raw = username.encode("utf-8", "surrogatepass")
        encoded = urllib.parse.quote(raw, safe=_ATTR_CHAR_SAFE)
        parts.append(f"username*=UTF-8''{encoded}")
    parts += [f"realm={quote(realm)}", f"uri={quote(uri, 'uri')}"]
    if challenge.param("algorithm") is not None:
        parts.append(f"algorithm={alg.name}")
    parts.append(f"nonce={quote(nonce)}")
    if qop is not None:
        parts += [f"nc={nc_text}", f"cnonce={quote(cnonce, 'cnonce')}", f"qop={qop}"]
    parts.append(f'response="{response}"')
    opaque = challenge.param("opaque")
    if opaque is not None:
        parts.append(f"opaque={quote(opaque)}")
    if userhash:
        parts.append("userhash=true")
    return "Digest " + ", ".join(parts)
