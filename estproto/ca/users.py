"""The user directory: HTTP users and their Basic and Digest checks.

Users live in the store (scrypt hash plus the Digest HA1 values, which
depend on the realm fixed at init). Basic checks cost one scrypt (~80 ms);
successful checks are remembered for a short time under HMAC(process secret,
user, password), so a client sending Basic on every request pays once.
Unknown users are checked against a dummy hash and cost the same as a wrong
password. Credentials count only in a scheme the 401 offers (RFC 7235 4.1:
the server orders the challenges).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import secrets
import struct
import threading
import time
from typing import Mapping, Sequence

from .. import auth
from .._events import AuthenticationRequired, ErrorResponse, ServerRequest, ServerResponse
from .._paths import WELL_KNOWN_PREFIX, format_est_path
from .store import Store, UserRecord

__all__ = ["UserDirectory", "AUTH_SCHEMES", "DEFAULT_AUTH_SCHEMES", "MAX_BASIC_CACHE", "length_prefixed"]

#: HTTP authentication schemes the embedded CA can offer, with the Digest
#: algorithm each stands for (RFC 7617, RFC 7616).
AUTH_SCHEMES: Mapping[str, str | None] = {
    "basic": None, "digest-sha256": "SHA-256", "digest-md5": "MD5",
}
DEFAULT_AUTH_SCHEMES = ("basic", "digest-sha256", "digest-md5")

#: Most remembered successful Basic checks; beyond it the cache is cleared.
#: Bounds memory when many distinct users authenticate.
MAX_BASIC_CACHE = 4096


def length_prefixed(*parts: bytes) -> bytes:
    """Length-prefixed concatenation: unambiguous input for a hash."""
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


class UserDirectory:
    """HTTP users of one realm, and the password checks against them.

    Args:
        store: where users are kept.
        realm: the authentication realm (fixed at init).
        digest_secret: HMAC key of Digest nonces (shared by every worker).
        schemes: the schemes a 401 offers, in order (see
            :attr:`~estproto.ca.CASettings.challenge_schemes`).
        digest_algorithms: Digest algorithms accepted.
        basic_cache_seconds: how long a successful Basic check is
            remembered (0: never).
    """

    def __init__(self, store: Store, realm: str, digest_secret: bytes, *, schemes: Sequence[str],
                 digest_algorithms: Sequence[str], basic_cache_seconds: float) -> None:
        self.store = store
        self.realm = realm
        self.schemes = tuple(schemes)
        self.basic_offered = "basic" in self.schemes
        self.digest_offered = any(a != "basic" for a in self.schemes)
        self._digest = auth.DigestAuthority(digest_secret, realm, algorithms=list(digest_algorithms))
        self._cache_seconds = basic_cache_seconds
        self._cache_secret = secrets.token_bytes(32)
        self._cache: dict[bytes, float] = {}
        self._cache_lock = threading.Lock()

    # -- users -------------------------------------------------------------

    def add(self, name: str, password: str, actor: str) -> None:
        """Create or replace a user (scrypt hash plus Digest HA1s).

        Raises:
            ValueError: empty name or password, ':' or control characters
                in the name (RFC 7617 section 2).
        """
        if not name or ":" in name or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
            raise ValueError("a user name must be non-empty, without ':' or control characters")
        if not password:
            raise ValueError("the password must not be empty")
        record = UserRecord(
            name=name,
            password_hash=auth.hash_password(password),
            realm=self.realm,
            ha1_sha256=auth.digest_ha1(name, self.realm, password, "SHA-256"),
            ha1_md5=auth.digest_ha1(name, self.realm, password, "MD5"),
            created_at=datetime.datetime.now(datetime.timezone.utc),
        )
        self.store.put_user(record, actor)
        self._forget()

    def remove(self, name: str, actor: str) -> bool:
        """Delete a user; False if there was none."""
        removed = self.store.delete_user(name, actor)
        self._forget()
        return removed

    def names(self) -> list[str]:
        return self.store.list_users()

    def _forget(self) -> None:
        with self._cache_lock:
            self._cache.clear()

    # -- checks ------------------------------------------------------------

    def basic_recently_verified(self, creds: auth.BasicCredentials) -> bool:
        """Whether these credentials passed the password check within the
        cache time (no store read, no scrypt): the event loop may ask."""
        return self.basic_offered and self._cached(self._cache_key(creds), time.monotonic())

    def check_basic(self, creds: auth.BasicCredentials) -> bool:
        """The password check (scrypt, or the cache)."""
        key = self._cache_key(creds)
        now = time.monotonic()
        if self._cached(key, now):
            return True
        user = self.store.get_user(creds.username)
        # An unknown user is checked against a dummy hash: same cost.
        ok = auth.check_password_hash(user.password_hash if user else None, creds.password)
        ttl = self._cache_seconds
        if ok and ttl > 0:
            with self._cache_lock:
                if len(self._cache) >= MAX_BASIC_CACHE:
                    self._cache = {k: v for k, v in self._cache.items() if v > now}
                    if len(self._cache) >= MAX_BASIC_CACHE:
                        self._cache.clear()
                self._cache[key] = now + ttl
        return ok

    def check_digest(self, creds: auth.DigestCredentials, request: ServerRequest) -> auth.DigestResult:
        return self._digest.verify(creds, request.operation.method,
                                   self._digest_uri(request, creds.uri), self._ha1, time.time())

    def _cache_key(self, creds: auth.BasicCredentials) -> bytes:
        return hmac.new(
            self._cache_secret,
            length_prefixed(creds.username.encode("utf-8", "surrogatepass"),
                            creds.password.encode("utf-8", "surrogatepass")),
            hashlib.sha256,
        ).digest()

    def _cached(self, key: bytes, now: float) -> bool:
        if self._cache_seconds <= 0:
            return False
        with self._cache_lock:
            expiry = self._cache.get(key)
        return expiry is not None and expiry > now

    def _ha1(self, username: str, algorithm: str) -> str | None:
        user = self.store.get_user(username)
        if user is None or user.realm != self.realm:
            return None
        return {"SHA-256": user.ha1_sha256, "MD5": user.ha1_md5}.get(algorithm)

    @staticmethod
    def _digest_uri(request: ServerRequest, sent: str) -> str:
        """The request-target Digest must match (RFC 7616 3.4.6).

        ServerRequest does not carry the target, so it is rebuilt from the
        operation and label; the ``uri`` the client sent is accepted when
        its path is that (an absolute URI or a query string do not change
        the resource: the EST layer ignores both).
        """
        expected = format_est_path(request.operation, request.label)
        path = sent.split("?", 1)[0]
        if path.startswith(("https://", "http://")):
            slash = path.find("/", path.index("//") + 2)
            path = path[slash:] if slash >= 0 else "/"
        return sent if path == expected and path.startswith(WELL_KNOWN_PREFIX) else expected

    # -- challenges --------------------------------------------------------

    def challenges(self) -> tuple[str, ...]:
        """The ``WWW-Authenticate`` values of a 401, in the configured
        order; empty when no password is taken."""
        digest = {}
        if self.digest_offered:
            digest = dict(zip(self._digest.algorithms, self._digest.challenges(time.time())))
        out = []
        for scheme in self.schemes:
            algorithm = AUTH_SCHEMES[scheme]
            out.append(auth.basic_challenge(self.realm) if algorithm is None else digest[algorithm])
        return tuple(out)

    def refuse(self, stale: bool = False) -> ServerResponse:
        """401 with the challenges (only Digest's, marked stale, for an
        expired nonce), or 403 when no password is accepted."""
        if stale and self.digest_offered:
            return AuthenticationRequired(tuple(self._digest.challenges(time.time(), stale=True)))
        challenges = self.challenges()
        if not challenges:
            return ErrorResponse(403, "a valid client certificate issued by this CA is required")
        return AuthenticationRequired(challenges)
