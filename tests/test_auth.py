"""Tests for estproto.auth: Basic, Digest, challenges, RA / re-enroll checks, PoP linking."""

from __future__ import annotations

import base64
import datetime
import hashlib
from typing import Sequence

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st

from estproto import LocalProtocolError, RemoteProtocolError
from estproto.auth import (
    DUMMY_PASSWORD_HASH,
    MAX_AUTH_HEADER_LENGTH,
    BasicCredentials,
    Challenge,
    DigestAuthority,
    DigestCredentials,
    DigestResult,
    PoPPolicy,
    answer_challenge,
    basic_authorization,
    basic_challenge,
    check_password_hash,
    check_pop,
    choose_challenge,
    digest_authorization,
    digest_ha1,
    digest_response,
    hash_password,
    is_ra_certificate,
    mismatch_reason,
    parse_authorization,
    parse_challenges,
    password_ha1_lookup,
    same_subject_and_san,
    verify_basic,
)
from estproto.auth.digest import _ALGORITHMS

import pki

# ---------------------------------------------------------------------------
# Basic


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


BASIC_VALID = [
    (f"Basic {b64('Aladdin:open sesame')}", "Aladdin", "open sesame"),
    (f"basic {b64('Aladdin:open sesame')}", "Aladdin", "open sesame"),
    (f"BASIC   {b64('u:p')}  ", "u", "p"),
    (f"Basic {b64('test:123£')}", "test", "123£"),  # RFC 7617 section 2.1 example
    (f"Basic {b64('Jäsøn:pässwörd')}", "Jäsøn", "pässwörd"),
    (f"Basic {b64('user:pa:ss:word')}", "user", "pa:ss:word"),
    (f"Basic {b64(':only-password')}", "", "only-password"),  # RFC 7030 3.2.3
    (f"Basic {b64('user:')}", "user", ""),
    (f"Basic {b64('u:p').rstrip('=')}", "u", "p"),  # missing padding tolerated
    ("Basic " + b64(b'caf\xe9:mot'), "caf\xe9", "mot"),  # latin-1 fallback
]


@pytest.mark.parametrize(("header", "user", "password"), BASIC_VALID)
def test_basic_valid(header: str, user: str, password: str) -> None:
    creds = parse_authorization(header)
    assert creds == BasicCredentials(user, password)


BASIC_BAD = [
    "Basic",  # no token
    f"Basic {b64('nocolon')}",
    "Basic !!!notbase64",
    "Basic abc*",
    "Basic a",  # impossible base64 length
    f"Basic {b64('u:p')} extra",
    f"Basic realm={b64('u:p')}x",
    'Basic realm="x"',  # params instead of a token
    f"Basic {b64('u:p')}, Basic {b64('v:q')}",
    f"Basic {b64('u:p' + chr(10) + 'x')}",  # control character
    f"Basic {b64(chr(0) + 'u:p')}",
    "",
    "   ",
    "Basic " + "A" * (MAX_AUTH_HEADER_LENGTH + 4),
]


@pytest.mark.parametrize("header", BASIC_BAD)
def test_basic_malformed(header: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_authorization(header)
    assert info.value.error_status_hint == 400


def test_unknown_scheme_is_none() -> None:
    assert parse_authorization("Bearer abc.def.ghi") is None
    assert parse_authorization("Negotiate YIIB===") is None
    assert parse_authorization("Weird ((( garbage") is None


def test_basic_repr_hides_password() -> None:
    creds = BasicCredentials("alice", "hunter2-secret")
    assert "hunter2-secret" not in repr(creds)
    assert "hunter2-secret" not in str(creds)
    assert "alice" in repr(creds)


def test_verify_basic() -> None:
    creds = BasicCredentials("alice", "s3cret")
    assert verify_basic(creds, "alice", "s3cret") is True
    assert verify_basic(creds, "alice", "s3creT") is False
    assert verify_basic(creds, "bob", "s3cret") is False
    assert verify_basic(creds, "bob", "x") is False
    assert verify_basic(BasicCredentials("Jäsøn", "pä"), "Jäsøn", "pä") is True


def test_basic_challenge() -> None:
    value = basic_challenge('EST "prod"')
    assert value == 'Basic realm="EST \\"prod\\"", charset="UTF-8"'
    [c] = parse_challenges([value])
    assert c.scheme == "basic" and c.param("realm") == 'EST "prod"' and c.param("charset") == "UTF-8"
    with pytest.raises(LocalProtocolError):
        basic_challenge("bad\r\nrealm")


def test_basic_authorization_roundtrip_and_errors() -> None:
    assert basic_authorization("Aladdin", "open sesame") == "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
    assert parse_authorization(basic_authorization("Jäsøn", "a:b")) == BasicCredentials("Jäsøn", "a:b")
    with pytest.raises(LocalProtocolError):
        basic_authorization("a:b", "x")
    with pytest.raises(LocalProtocolError):
        basic_authorization("a", "x\ny")


_printable = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40)


@given(user=_printable.filter(lambda s: ":" not in s), password=_printable)
def test_basic_roundtrip(user: str, password: str) -> None:
    assert parse_authorization(basic_authorization(user, password)) == BasicCredentials(user, password)


_header_alphabet = st.sampled_from(list('Basic Digest ="\\,\t;:/+=-_~.abcXYZ019\x00\x7f\u00e9\u20ac'))


@given(st.one_of(st.text(max_size=200), st.text(_header_alphabet, max_size=200)))
def test_parse_authorization_garbage(value: str) -> None:
    for candidate in (value, "Basic " + value, "Digest " + value):
        try:
            result = parse_authorization(candidate)
        except RemoteProtocolError as exc:
            assert exc.error_status_hint == 400
        else:
            assert result is None or isinstance(result, (BasicCredentials, DigestCredentials))


@given(st.lists(st.one_of(st.text(max_size=120), st.text(_header_alphabet, max_size=120)), max_size=4))
def test_parse_challenges_garbage(values: list[str]) -> None:
    try:
        result = parse_challenges(values)
    except RemoteProtocolError:
        return
    assert all(isinstance(c, Challenge) for c in result)


def test_huge_header_values_rejected_quickly() -> None:
    huge = "Digest " + 'a="' + "\\x" * 100_000 + '"'
    with pytest.raises(RemoteProtocolError):
        parse_authorization(huge)
    with pytest.raises(RemoteProtocolError):
        parse_challenges([huge])
    with pytest.raises(RemoteProtocolError):
        parse_challenges(["Basic, " * 100])  # too many challenges


# ---------------------------------------------------------------------------
# Password hashes



def test_password_hash_roundtrip() -> None:
    stored = hash_password("correct horse", n=16, r=8, p=1)
    assert stored.startswith("scrypt$16$8$1$")
    assert check_password_hash(stored, "correct horse") is True
    assert check_password_hash(stored, "correct horsE") is False
    assert hash_password("x", salt=b"0123456789abcdef", n=16, r=8, p=1) == hash_password(
        "x", salt=b"0123456789abcdef", n=16, r=8, p=1
    )
    assert hash_password("x", n=16, r=8, p=1) != hash_password("x", n=16, r=8, p=1)  # random salt


def test_password_hash_default_parameters_and_dummy() -> None:
    stored = hash_password("pw")
    assert stored.split("$")[1:4] == ["16384", "8", "1"]
    assert stored.split("$")[1:4] == DUMMY_PASSWORD_HASH.split("$")[1:4]
    assert check_password_hash(stored, "pw") is True
    # Unknown user: checked against the dummy, always False.
    assert check_password_hash(None, "pw") is False
    assert check_password_hash(None, "") is False


@pytest.mark.parametrize(
    "stored",
    ["", "scrypt$16$8$1$c2FsdHNhbHQ", "bcrypt$16$8$1$c2FsdHNhbHQ$aGFzaA", "scrypt$x$8$1$c2FsdHNhbHQ$" + "A" * 43,
     "scrypt$15$8$1$c2FsdHNhbHQ$" + "A" * 43, "scrypt$16$8$1$!!!$" + "A" * 43,
     "scrypt$1073741824$8$1$c2FsdHNhbHQ$" + "A" * 43],
)
def test_password_hash_malformed(stored: str) -> None:
    with pytest.raises(LocalProtocolError):
        check_password_hash(stored, "pw")


# ---------------------------------------------------------------------------
# Challenge syntax


def test_multiple_challenges_in_one_header() -> None:
    cs = parse_challenges(['Digest realm="x", qop="auth", nonce="..", Basic realm="y"'])
    assert [c.scheme for c in cs] == ["digest", "basic"]
    assert cs[0].params == (("realm", "x"), ("qop", "auth"), ("nonce", ".."))
    assert cs[1].param("REALM") == "y"


def test_challenge_syntax_details() -> None:
    cs = parse_challenges([
        'Newauth realm="apps", type=1, title="Login to \\"apps\\"", Basic realm="simple"',
        "Negotiate",
        "Bearer abc-._~+/==",
        'Digest  realm = "a,b" ,, nonce=n1 , , stale=TRUE',
    ])
    assert [c.scheme for c in cs] == ["newauth", "basic", "negotiate", "bearer", "digest"]
    assert cs[0].param("title") == 'Login to "apps"' and cs[0].param("type") == "1"
    assert cs[2] == Challenge("negotiate")
    assert cs[3].token68 == "abc-._~+/=="
    assert cs[4].params == (("realm", "a,b"), ("nonce", "n1"), ("stale", "TRUE"))
    assert parse_challenges([]) == []


@pytest.mark.parametrize(
    "value",
    ["", ",", 'Digest realm="unterminated', "Digest realm=x realm=y", 'Digest realm="a", realm="b"',
     "=x", "Digest a=b c", 'Digest realm="\x00"', "Basic abc== def", 'Digest realm="x" junk'],
)
def test_challenge_garbage(value: str) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_challenges([value])


_tokens = st.text("abcdefghijklmnopqrstuvwxyzABC0123456789-_.!#$%&'*+^`|~", min_size=1, max_size=12)
_qvalues = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20)


@given(
    st.lists(
        st.tuples(
            _tokens,
            st.lists(st.tuples(_tokens, _qvalues), max_size=5, unique_by=lambda kv: kv[0].lower()),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_challenge_roundtrip(spec: list[tuple[str, list[tuple[str, str]]]]) -> None:
    from estproto.auth._syntax import quote

    value = ", ".join(
        scheme + ("" if not params else " " + ", ".join(f"{k}={quote(v)}" for k, v in params))
        for scheme, params in spec
    )
    parsed = parse_challenges([value])
    assert [(c.scheme, c.params) for c in parsed] == [
        (s.lower(), tuple((k.lower(), v) for k, v in p)) for s, p in spec
    ]


# ---------------------------------------------------------------------------
# Digest: RFC 7616 section 3.9.1 example

RFC_REALM = "http-auth@example.org"
RFC_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC_RESPONSES = {
    "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
    "MD5": "8ca523f5e9506fed4657c9700eebdbec",
}


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_rfc7616_example(algorithm: str) -> None:
    ha1 = digest_ha1("Mufasa", RFC_REALM, "Circle of Life", algorithm)
    got = digest_response(
        algorithm=algorithm, ha1=ha1, nonce=RFC_NONCE, method="GET", uri="/dir/index.html",
        qop="auth", nc="00000001", cnonce=RFC_CNONCE,
    )
    assert got == RFC_RESPONSES[algorithm]
    # The same through the client API, from the RFC's challenge.
    [challenge] = parse_challenges([
        f'Digest realm="{RFC_REALM}", qop="auth, auth-int", algorithm={algorithm}, '
        f'nonce="{RFC_NONCE}", opaque="{RFC_OPAQUE}"'
    ])
    header = digest_authorization(
        challenge, "Mufasa", "Circle of Life", "GET", "/dir/index.html", cnonce=RFC_CNONCE
    )
    creds = parse_authorization(header)
    assert isinstance(creds, DigestCredentials)
    assert creds.response == RFC_RESPONSES[algorithm]
    assert (creds.qop, creds.nc, creds.opaque, creds.algorithm) == ("auth", "00000001", RFC_OPAQUE, algorithm)
    # RFC 7616 section 3.4: algorithm, qop and nc are never quoted by a sender.
    assert f"algorithm={algorithm}," in header and "qop=auth," in header and "nc=00000001," in header


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def test_digest_rfc_2069_form_and_sess() -> None:
    [legacy] = parse_challenges(['Digest realm="r", nonce="n"'])
    header = digest_authorization(legacy, "u", "p", "GET", "/x")
    assert "qop" not in header and "cnonce" not in header and "algorithm" not in header
    expected = md5(f"{md5('u:r:p')}:n:{md5('GET:/x')}")
    assert f'response="{expected}"' in header
    # MD5-sess: HA1 = H(H(u:r:p):nonce:cnonce).
    sess = digest_response(algorithm="MD5-sess", ha1=md5("u:r:p"), nonce="N", method="GET", uri="/x",
                           nc="00000001", cnonce="C")
    assert sess == md5(f"{md5(md5('u:r:p') + ':N:C')}:N:00000001:C:auth:{md5('GET:/x')}")


# ---------------------------------------------------------------------------
# Digest: our client against our server

SECRET = b"k" * 32
REALM = "estproto test"
URI = "/.well-known/est/simpleenroll"
USERS = {"bob": "builder", "Jäsøn": "pässwörd"}
NOW = 1_700_000_000.0


def get_ha1_from_store(username: str, algorithm: str) -> str | None:
    # A store that keeps only HA1 values, one per base algorithm.
    password = USERS.get(username)
    return None if password is None else digest_ha1(username, REALM, password, algorithm)


def exchange(authority: DigestAuthority, prefer: tuple[str, ...], user: str, password: str,
             now: float = NOW) -> tuple[str, DigestCredentials]:
    challenges = parse_challenges(authority.challenges(now))
    chosen = choose_challenge(challenges, prefer)
    assert chosen is not None
    header = digest_authorization(chosen, user, password, "POST", URI)
    creds = parse_authorization(header)
    assert isinstance(creds, DigestCredentials)
    return header, creds


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5", "SHA-256-sess", "MD5-sess"]
                         + (["SHA-512-256"] if "SHA-512-256" in _ALGORITHMS else []))
@pytest.mark.parametrize("user", sorted(USERS))
def test_digest_full_exchange(algorithm: str, user: str) -> None:
    authority = DigestAuthority(SECRET, REALM, algorithms=(algorithm,))
    _, creds = exchange(authority, ("digest-" + algorithm.lower(),), user, USERS[user])
    assert creds.username == user and creds.algorithm == algorithm
    assert authority.verify(creds, "POST", URI, get_ha1_from_store, NOW + 1) is DigestResult.OK
    plain = password_ha1_lookup(REALM, USERS.get)
    assert authority.verify(creds, "POST", URI, plain, NOW + 1) is DigestResult.OK
    # Method and request-target are bound into the response.
    assert authority.verify(creds, "GET", URI, plain, NOW + 1) is DigestResult.BAD
    assert authority.verify(creds, "POST", URI + "x", plain, NOW + 1) is DigestResult.BAD


def test_digest_client_prefers_sha256() -> None:
    authority = DigestAuthority(SECRET, REALM)  # offers SHA-256 then MD5
    values = authority.challenges(NOW)
    assert len(values) == 2 and 'algorithm="SHA-256"' in values[0] and 'algorithm="MD5"' in values[1]
    # Order given by the server does not matter: the client's preference does.
    _, creds = exchange(authority, ("digest-sha-256", "digest-md5", "basic"), "bob", "builder")
    cs = parse_challenges(list(reversed(values)) + [basic_challenge(REALM)])
    assert choose_challenge(cs).param("algorithm") == "SHA-256"  # type: ignore[union-attr]
    assert choose_challenge(cs, ("basic",)).scheme == "basic"  # type: ignore[union-attr]
    assert choose_challenge(cs, ("digest-sha-512-256",)) is None
    assert creds.algorithm == "SHA-256"


def test_digest_bouncy_castle_style_header() -> None:
    authority = DigestAuthority(SECRET, REALM)
    nonce = authority.make_nonce(NOW)
    ha1 = digest_ha1("bob", REALM, "builder", "MD5")
    response = digest_response(algorithm="MD5", ha1=ha1, nonce=nonce, method="POST", uri=URI,
                               nc="00000001", cnonce="BCcnonce")
    # Every parameter quoted, plus an opaque the server never sent.
    header = (
        f'Digest username="bob", realm="{REALM}", nonce="{nonce}", uri="{URI}", '
        f'response="{response}", cnonce="BCcnonce", algorithm="MD5", qop="auth", '
        f'nc="00000001", opaque="made-up-by-client"'
    )
    creds = parse_authorization(header)
    assert isinstance(creds, DigestCredentials)
    assert authority.verify(creds, "POST", URI, get_ha1_from_store, NOW + 2) is DigestResult.OK
    # Polling after a 202: the very same header a minute later still verifies.
    creds_again = parse_authorization(header)
    assert creds_again == creds
    assert authority.verify(creds_again, "POST", URI, get_ha1_from_store, NOW + 62) is DigestResult.OK


def test_digest_replay_stale_and_forged() -> None:
    authority = DigestAuthority(SECRET, REALM, nonce_lifetime=300.0)
    _, creds = exchange(authority, ("digest-sha-256",), "bob", "builder")
    for dt in (0.0, 1.0, 150.0, 299.0):
        assert authority.verify(creds, "POST", URI, get_ha1_from_store, NOW + dt) is DigestResult.OK
    assert authority.verify(creds, "POST", URI, get_ha1_from_store, NOW + 301) is DigestResult.STALE
    # Expired nonce and a wrong password: BAD, not STALE (RFC 7616 section 3.3).
    _, wrong = exchange(authority, ("digest-sha-256",), "bob", "wrong")
    assert authority.verify(wrong, "POST", URI, get_ha1_from_store, NOW + 301) is DigestResult.BAD
    stale_values = authority.challenges(NOW + 301, stale=True)
    assert all(parse_challenges([v])[0].param("stale") == "true" for v in stale_values)
    # A nonce from another secret, or a tampered one, is BAD.
    other = DigestAuthority(b"z" * 32, REALM)
    _, foreign = exchange(other, ("digest-sha-256",), "bob", "builder")
    assert authority.verify(foreign, "POST", URI, get_ha1_from_store, NOW) is DigestResult.BAD
    flipped = creds.nonce[:-2] + ("A" if creds.nonce[-2] != "A" else "B") + creds.nonce[-1]
    for nonce in (flipped, "garbage", "", creds.nonce + "A"):
        assert authority.check_nonce(nonce, NOW) is DigestResult.BAD
    # Same secret, other realm: nonces are bound to the realm.
    assert DigestAuthority(SECRET, "other").check_nonce(creds.nonce, NOW) is DigestResult.BAD


def test_digest_wrong_password_unknown_user_and_mismatches() -> None:
    authority = DigestAuthority(SECRET, REALM)
    _, wrong = exchange(authority, ("digest-sha-256",), "bob", "not-builder")
    _, unknown = exchange(authority, ("digest-sha-256",), "mallory", "builder")
    assert authority.verify(wrong, "POST", URI, get_ha1_from_store, NOW) is DigestResult.BAD
    assert authority.verify(unknown, "POST", URI, get_ha1_from_store, NOW) is DigestResult.BAD
    _, good = exchange(authority, ("digest-sha-256",), "bob", "builder")
    other_realm = DigestAuthority(SECRET, "another realm")
    assert other_realm.verify(good, "POST", URI, get_ha1_from_store, NOW) is DigestResult.BAD
    # Algorithm not offered by this authority.
    md5_only = DigestAuthority(SECRET, REALM, algorithms=("MD5",))
    assert md5_only.verify(good, "POST", URI, get_ha1_from_store, NOW) is DigestResult.BAD
    # The hex response is case-insensitive.
    upper = DigestCredentials(**{**good.__dict__, "response": good.response.upper()})
    assert authority.verify(upper, "POST", URI, get_ha1_from_store, NOW) is DigestResult.OK
    no_qop = DigestCredentials(**{**good.__dict__, "qop": None})
    assert authority.verify(no_qop, "POST", URI, get_ha1_from_store, NOW) is DigestResult.BAD


def test_digest_credentials_repr_hides_response() -> None:
    authority = DigestAuthority(SECRET, REALM)
    _, creds = exchange(authority, ("digest-sha-256",), "bob", "builder")
    assert creds.response not in repr(creds)


def test_digest_username_star_and_userhash() -> None:
    [c] = parse_challenges(['Digest realm="r", nonce="n", qop="auth", algorithm=SHA-256'])
    header = digest_authorization(c, "Jäsøn Doe", "pw", "GET", "/", cnonce="c")
    assert "username*=UTF-8''J%C3%A4s%C3%B8n%20Doe" in header
    creds = parse_authorization(header)
    assert isinstance(creds, DigestCredentials) and creds.username == "Jäsøn Doe"
    [c2] = parse_challenges(['Digest realm="r", nonce="n", qop="auth", algorithm=SHA-256, userhash=true'])
    header2 = digest_authorization(c2, "bob", "pw", "GET", "/", cnonce="c")
    creds2 = parse_authorization(header2)
    assert isinstance(creds2, DigestCredentials) and creds2.userhash
    assert creds2.username == hashlib.sha256(b"bob:r").hexdigest()


@pytest.mark.parametrize(
    "header",
    [
        'Digest realm="r", nonce="n", uri="/", response="ab"',  # no username
        'Digest username="u", nonce="n", uri="/", response="ab"',  # no realm
        'Digest username="u", realm="r", uri="/", response="ab"',  # no nonce
        'Digest username="u", realm="r", nonce="n", response="ab"',  # no uri
        'Digest username="u", realm="r", nonce="n", uri="/"',  # no response
        'Digest username="u", realm="r", nonce="n", uri="/", response="xyz"',
        'Digest username="u", realm="r", nonce="n", uri="/", response="ab", qop=auth',
        'Digest username="u", realm="r", nonce="n", uri="/", response="ab", qop=auth, nc=1, cnonce="c"',
        'Digest username="u", realm="r", nonce="n", uri="/", response="ab", userhash=maybe',
        "Digest username=\"u\", username*=UTF-8''u, realm=\"r\", nonce=\"n\", uri=\"/\", response=\"ab\"",
        "Digest username*=UTF-8''%FF, realm=\"r\", nonce=\"n\", uri=\"/\", response=\"ab\"",
        "Digest abcdef==",
        'Digest username="u", username="v", realm="r", nonce="n", uri="/", response="ab"',
    ],
)
def test_digest_malformed(header: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_authorization(header)
    assert info.value.error_status_hint == 400


def test_digest_client_errors() -> None:
    with pytest.raises(LocalProtocolError):
        digest_authorization(Challenge("basic", (("realm", "x"),)), "u", "p", "GET", "/")
    [auth_int] = parse_challenges(['Digest realm="r", nonce="n", qop="auth-int"'])
    with pytest.raises(LocalProtocolError):
        digest_authorization(auth_int, "u", "p", "GET", "/")
    [unknown] = parse_challenges(['Digest realm="r", nonce="n", algorithm=SHA3-256'])
    with pytest.raises(LocalProtocolError):
        digest_authorization(unknown, "u", "p", "GET", "/")
    [ok] = parse_challenges(['Digest realm="r", nonce="n", qop="auth"'])
    with pytest.raises(LocalProtocolError):
        digest_authorization(ok, "u", "p", "GET", "/", nc=0)
    with pytest.raises(LocalProtocolError):
        DigestAuthority(b"short", REALM)
    with pytest.raises(LocalProtocolError):
        DigestAuthority(SECRET, REALM, algorithms=("SHA-1",))


def test_answer_challenge_requires_server_authorization() -> None:
    cs = parse_challenges([basic_challenge("r")])
    with pytest.raises(LocalProtocolError, match="3.2.3"):
        answer_challenge(cs, "u", "p", "POST", URI, server_authorized=False)
    assert answer_challenge(cs, "u", "p", "POST", URI, server_authorized=True) == basic_authorization("u", "p")
    # libest: 401 without WWW-Authenticate -> nothing to answer.
    assert answer_challenge(parse_challenges([]), "u", "p", "POST", URI, server_authorized=True) is None
    authority = DigestAuthority(SECRET, REALM)
    value = answer_challenge(parse_challenges(authority.challenges(NOW)), "bob", "builder", "POST", URI,
                             server_authorized=True)
    assert value is not None
    creds = parse_authorization(value)
    assert isinstance(creds, DigestCredentials)
    assert authority.verify(creds, "POST", URI, get_ha1_from_store, NOW) is DigestResult.OK


# ---------------------------------------------------------------------------
# Certificates: RA and re-enrollment identity

CA_CERT, CA_KEY = pki.make_ca()
OTHER_CA_CERT, OTHER_CA_KEY = pki.make_ca("Other CA")
DEVICE_KEY = pki.make_key("p256")


def make_cert(subject: x509.Name, sans: Sequence[x509.GeneralName] | None = None,
              eku: list[x509.ObjectIdentifier] | None = None,
              ca: tuple[x509.Certificate, object] = (CA_CERT, CA_KEY)) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca[0].subject)
        .public_key(DEVICE_KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return builder.sign(ca[1], pki.sign_hash(ca[1]))  # type: ignore[arg-type]


def test_is_ra_certificate() -> None:
    ra_oid = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.28")
    ra = make_cert(pki.name("ra"), eku=[ExtendedKeyUsageOID.CLIENT_AUTH, ra_oid])
    plain = make_cert(pki.name("device"), eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    no_eku = pki.issue(CA_CERT, CA_KEY, DEVICE_KEY.public_key())
    assert is_ra_certificate(ra) is True
    assert is_ra_certificate(plain) is False
    assert is_ra_certificate(no_eku) is False
    assert is_ra_certificate(ra, issued_by=[CA_CERT]) is True
    assert is_ra_certificate(ra, issued_by=[OTHER_CA_CERT]) is False
    assert is_ra_certificate(ra, issued_by=[OTHER_CA_CERT, CA_CERT]) is True
    foreign_ra = make_cert(pki.name("ra"), eku=[ra_oid], ca=(OTHER_CA_CERT, OTHER_CA_KEY))
    assert is_ra_certificate(foreign_ra, issued_by=[CA_CERT]) is False


def csr_parts(csr: x509.CertificateSigningRequest) -> tuple[bytes, tuple[x509.GeneralName, ...]]:
    try:
        sans = tuple(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        sans = ()
    return csr.subject.public_bytes(), sans


def test_same_subject_and_san_real_certificates() -> None:
    dns = [x509.DNSName("a.example"), x509.DNSName("b.example")]
    cert = make_cert(pki.name("device"), sans=dns)
    cert_no_san = make_cert(pki.name("device"))
    same = pki.make_csr(DEVICE_KEY, "device", ["b.example", "a.example"])  # order irrelevant
    assert same_subject_and_san(*csr_parts(same), cert)
    assert mismatch_reason(*csr_parts(same), cert) is None

    other_cn = pki.make_csr(DEVICE_KEY, "intruder", ["a.example", "b.example"])
    reason = mismatch_reason(*csr_parts(other_cn), cert)
    assert reason is not None and "subject" in reason and "intruder" in reason and "4.2.2" in reason
    assert not same_subject_and_san(*csr_parts(other_cn), cert)

    fewer = pki.make_csr(DEVICE_KEY, "device", ["a.example"])
    reason = mismatch_reason(*csr_parts(fewer), cert)
    assert reason is not None and "subjectAltName" in reason
    extra = pki.make_csr(DEVICE_KEY, "device", ["a.example", "b.example", "c.example"])
    assert not same_subject_and_san(*csr_parts(extra), cert)

    # Absent equals absent; absent differs from present.
    bare = pki.make_csr(DEVICE_KEY, "device")
    assert same_subject_and_san(*csr_parts(bare), cert_no_san)
    assert not same_subject_and_san(*csr_parts(bare), cert)
    assert not same_subject_and_san(*csr_parts(same), cert_no_san)
    assert mismatch_reason(b"\x30\x03garbage", (), cert_no_san) == "CSR subject is not a valid DER Name"


def test_subject_string_type_is_not_identity() -> None:
    printable = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
        x509.NameAttribute(NameOID.COMMON_NAME, "device", x509.name._ASN1Type.PrintableString),
    ])
    utf8 = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
        x509.NameAttribute(NameOID.COMMON_NAME, "device", x509.name._ASN1Type.UTF8String),
    ])
    assert printable.public_bytes() != utf8.public_bytes()
    cert = make_cert(printable)
    assert same_subject_and_san(utf8.public_bytes(), (), cert)
    upper = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
                       x509.NameAttribute(NameOID.COMMON_NAME, "DEVICE")])
    assert not same_subject_and_san(upper.public_bytes(), (), cert)


# ---------------------------------------------------------------------------
# Proof-of-possession linking (RFC 7030 3.5, 3.7; RFC 7894)

BINDING = bytes(range(12))  # a tls-unique sized value
GOOD = base64.b64encode(BINDING).decode()
BAD = base64.b64encode(b"\xff" * 12).decode()


@pytest.mark.parametrize("policy", list(PoPPolicy))
@pytest.mark.parametrize("is_ra", [False, True])
@pytest.mark.parametrize(
    ("cp", "il", "binding", "expect_ok", "expect_linked", "reason_part"),
    [
        (None, None, BINDING, {"off": True, "verify-if-present": True, "require": False}, False,
         "no challengePassword"),
        (GOOD, None, BINDING, True, True, "matches"),
        (f"  {GOOD}\n", None, BINDING, True, True, "matches"),
        (None, GOOD, BINDING, True, True, "estIdentityLinking matches"),
        (GOOD, GOOD, BINDING, True, True, "challengePassword and estIdentityLinking"),
        (BAD, None, BINDING, "ra", False, "challengePassword does not match the TLS channel binding"),
        ("not base64!", None, BINDING, "ra", False, "does not match"),
        (GOOD, BAD, BINDING, "ra", False, "estIdentityLinking does not match"),
        (BAD, GOOD, BINDING, "ra", False, "challengePassword does not match"),
        (GOOD, None, None, "ra", False, "no channel binding available on this connection"),
        (None, None, None, {"off": True, "verify-if-present": True, "require": False}, False,
         "no challengePassword"),
    ],
)
def test_check_pop(policy: PoPPolicy, is_ra: bool, cp: str | None, il: str | None, binding: bytes | None,
                   expect_ok: object, expect_linked: bool, reason_part: str) -> None:
    out = check_pop(policy, challenge_password=cp, identity_linking=il, channel_binding=binding, is_ra=is_ra)
    if policy is PoPPolicy.OFF:
        assert out.ok and not out.linked and "OFF" in out.reason
        return
    if isinstance(expect_ok, dict):
        ok = expect_ok[policy.value]
    elif expect_ok == "ra":
        ok = is_ra  # RFC 7030 3.7: an RA may relay linking info not matching this session
    else:
        ok = bool(expect_ok)
    assert out.ok is ok
    assert out.linked is expect_linked
    assert "\n" not in out.reason
    if not out.ok:
        assert reason_part in out.reason and "RFC 7030 section 3.5" in out.reason
    elif expect_ok == "ra":
        assert "3.7" in out.reason
    elif not (isinstance(expect_ok, dict)):
        assert reason_part in out.reason


def test_check_pop_tls13_exporter_length() -> None:
    exporter = bytes(range(32))
    value = base64.b64encode(exporter).decode()
    assert check_pop(PoPPolicy.REQUIRE, challenge_password=value, identity_linking=None,
                     channel_binding=exporter, is_ra=False).ok
    # A prefix of the binding is not the binding.
    short = base64.b64encode(exporter[:12]).decode()
    assert not check_pop(PoPPolicy.REQUIRE, challenge_password=short, identity_linking=None,
                         channel_binding=exporter, is_ra=False).ok
