"""Authentication and authorization for EST (RFC 7030 sections 3.2.3, 3.3, 3.5, 3.7, 4.2.2).

Pure functions and small value classes: no I/O and no clock (time comes in as
``now``, seconds). The package is split by concern:

* :mod:`._syntax`: RFC 7235 challenge / credentials syntax.
* :mod:`.basic`: HTTP Basic (RFC 7617) and scrypt password hashes.
* :mod:`.digest`: HTTP Digest (RFC 7616), server and client.
* :mod:`.certs`: RA detection, re-enrollment subject/SAN identity, and
  proof-of-possession linking.

This module adds the entry points that span schemes: :func:`parse_authorization`
(server), :func:`choose_challenge` and :func:`answer_challenge` (client).

Interop notes (from measurements, see EST-NOTES): libest answers a wrong
password with 401 and no ``WWW-Authenticate`` (a client sees an empty
challenge list: treat it as a final failure); Bouncy Castle quotes every
Digest parameter and resends the same Digest header when polling after 202
(both accepted by :class:`DigestAuthority`).
"""

from __future__ import annotations

import re
from typing import Sequence

from .._errors import LocalProtocolError, RemoteProtocolError
from ._syntax import (
    MAX_AUTH_HEADER_LENGTH,
    MAX_CHALLENGES,
    Challenge,
    parse_auth_items,
    parse_challenges,
)
from .basic import (
    DUMMY_PASSWORD_HASH,
    BasicCredentials,
    basic_authorization,
    basic_challenge,
    check_password_hash,
    hash_password,
    parse_basic_credentials,
    verify_basic,
)
from .certs import (
    ID_KP_CMC_RA,
    PoPOutcome,
    PoPPolicy,
    check_pop,
    is_ra_certificate,
    mismatch_reason,
    same_subject_and_san,
)
from .digest import (
    DigestAuthority,
    DigestCredentials,
    DigestResult,
    HA1Lookup,
    digest_authorization,
    digest_challenge_key,
    digest_ha1,
    digest_response,
    parse_digest_credentials,
    password_ha1_lookup,
)

__all__ = [
    "MAX_AUTH_HEADER_LENGTH",
    "MAX_CHALLENGES",
    "Challenge",
    "parse_challenges",
    "parse_authorization",
    "challenge_key",
    "choose_challenge",
    "answer_challenge",
    "DEFAULT_PREFERENCE",
    # Basic
    "BasicCredentials",
    "basic_challenge",
    "basic_authorization",
    "verify_basic",
    "hash_password",
    "check_password_hash",
    "DUMMY_PASSWORD_HASH",
    # Digest
    "DigestCredentials",
    "DigestResult",
    "DigestAuthority",
    "HA1Lookup",
    "digest_ha1",
    "digest_response",
    "digest_authorization",
    "password_ha1_lookup",
    # certificates and PoP
    "ID_KP_CMC_RA",
    "is_ra_certificate",
    "same_subject_and_san",
    "mismatch_reason",
    "PoPPolicy",
    "PoPOutcome",
    "check_pop",
]

#: Client preference: Digest with SHA-256, then Digest with MD5, then Basic.
#: Both run inside TLS, so Digest mainly keeps the password from the server
#: application; SHA-256 first as RFC 7616 section 3.7 asks.
DEFAULT_PREFERENCE = ("digest-sha-256", "digest-md5", "basic")


# RFC 7235 section 2.1 credentials: the Basic auth-scheme (case-insensitive),
# 1*SP, a token68.
_BASIC_TOKEN68 = re.compile(r"[Bb][Aa][Ss][Ii][Cc] +([A-Za-z0-9\-._~+/]+=*)")


def parse_authorization(header_value: str) -> BasicCredentials | DigestCredentials | None:
    """Parse an ``Authorization`` field value (server side).

    Args:
        header_value: the field value as str.

    Returns:
        :class:`BasicCredentials` or :class:`DigestCredentials`, or None for
        any other scheme (Bearer, Negotiate ...), whose contents are not
        examined.

    Raises:
        RemoteProtocolError: (400) for malformed Basic or Digest credentials,
            an empty value, or one over :data:`MAX_AUTH_HEADER_LENGTH`.
    """
    if not isinstance(header_value, str):
        raise RemoteProtocolError("malformed Authorization: not text", 400)
    if len(header_value) > MAX_AUTH_HEADER_LENGTH:
        raise RemoteProtocolError(
            f"Authorization is {len(header_value)} characters, over the "
            f"{MAX_AUTH_HEADER_LENGTH}-character limit",
            400,
        )
    fast = _BASIC_TOKEN68.fullmatch(header_value)
    if fast is not None:
        # "Basic <token68>", the form clients send: the general parser below
        # would find exactly this one token68 (a token68 never reads as an
        # auth-param: its "=" come last), so skip straight to decoding it.
        return parse_basic_credentials(fast.group(1))
    scheme = header_value.strip(" \t").split(" ", 1)[0].split("\t", 1)[0].lower()
    if not scheme:
        raise RemoteProtocolError("malformed Authorization: empty", 400)
    if scheme not in ("basic", "digest"):
        return None
    items = parse_auth_items(header_value, "Authorization")
    # RFC 7235 section 4.2: Authorization = credentials (exactly one).
    if len(items) != 1:
        raise RemoteProtocolError("malformed Authorization: more than one credentials", 400)
    item = items[0]
    if scheme == "basic":
        if item.params:
            raise RemoteProtocolError("malformed Basic credentials: expected a base64 token", 400)
        return parse_basic_credentials(item.token68)
    return parse_digest_credentials(item)


def challenge_key(challenge: Challenge) -> str | None:
    """Name a challenge we can answer: "basic", "digest-sha-256", "digest-md5" ...

    Returns None for schemes or Digest variants we cannot answer.
    """
    if challenge.scheme == "basic":
        return "basic"
    return digest_challenge_key(challenge)


def choose_challenge(
    challenges: Sequence[Challenge], prefer: Sequence[str] = DEFAULT_PREFERENCE
) -> Challenge | None:
    """Pick the challenge to answer, following *prefer* (client side).

    Args:
        challenges: from :func:`parse_challenges`.
        prefer: keys as returned by :func:`challenge_key`, best first; keys
            not listed are never chosen (so ``("digest-sha-256",)`` refuses
            Basic and MD5).

    Returns:
        The first challenge of the best-ranked key, or None if none fits.
    """
    by_key: dict[str, Challenge] = {}
    for c in challenges:
        key = challenge_key(c)
        if key is not None and key not in by_key:
            by_key[key] = c
    for key in prefer:
        if key.lower() in by_key:
            return by_key[key.lower()]
    return None


def answer_challenge(
    challenges: Sequence[Challenge],
    username: str,
    password: str,
    method: str,
    uri: str,
    *,
    server_authorized: bool,
    prefer: Sequence[str] = DEFAULT_PREFERENCE,
    cnonce: str | None = None,
    nc: int = 1,
) -> str | None:
    """Build the ``Authorization`` value answering a 401 (client side).

    RFC 7030 section 3.2.3: "The client MUST NOT respond to the server's HTTP
    authentication request unless the client has authorized the EST server
    (as per Section 3.6)." *server_authorized* makes the caller state it.

    Returns:
        The header value, or None if no challenge fits *prefer* (RFC 7030
        section 3.2.3: then the client "MUST terminate the connection").

    Raises:
        LocalProtocolError: if *server_authorized* is False, or the
            credentials cannot be encoded (':' in a Basic user-id ...).
    """
    if not server_authorized:
        raise LocalProtocolError(
            "refusing to answer HTTP authentication before the EST server is "
            "authorized (RFC 7030 section 3.2.3)"
        )
    chosen = choose_challenge(challenges, prefer)
    if chosen is None:
        return None
    if chosen.scheme == "basic":
        return basic_authorization(username, password)
    return digest_authorization(chosen, username, password, method, uri, cnonce=cnonce, nc=nc)
