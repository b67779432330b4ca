"""Tests for estproto.codecs.multipart: multipart/mixed and /serverkeygen responses."""

from __future__ import annotations

import email
import email.policy
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from hypothesis import given
from hypothesis import strategies as st

from estproto import DecodeError, LocalProtocolError, MessageTooLarge
from estproto.codecs.mediatype import (
    CERTS_ONLY,
    PKCS8,
    SERVER_GENERATED_KEY,
    MediaType,
    format_media_type,
    parse_media_type,
)
from estproto.codecs.multipart import (
    Part,
    ServerKeygenResponse,
    build_multipart,
    decode_serverkeygen_response,
    encode_serverkeygen_response,
    parse_multipart,
)
from estproto.codecs.transfer import SINGLE_LINE, WRAP_64, LinePolicy, encode_base64
from vectors import vector_der, vector_text

KEY_B64 = vector_text("rfc7030-A4-serverkeygen-key-part.b64")
CERT_B64 = vector_text("rfc7030-A4-serverkeygen-cert-part.b64")
KEY_DER = vector_der("rfc7030-A4-serverkeygen-key-part.b64")
CERT_DER = vector_der("rfc7030-A4-serverkeygen-cert-part.b64")

# A real EnvelopedData: the RFC A.4 certificate's RSA key as recipient (no
# key generation needed).
_A4_CERT = pkcs7.load_der_pkcs7_certificates(CERT_DER)[0]
ENVELOPED_DER = (
    pkcs7.PKCS7EnvelopeBuilder()
    .set_data(KEY_DER)
    .add_recipient(_A4_CERT)
    .encrypt(Encoding.DER, [pkcs7.PKCS7Options.Binary])
)

BOUNDARY = "estServerExampleBoundary"
A4_CONTENT_TYPE = "multipart/mixed ; boundary=estServerExampleBoundary"


def _indent(b64: bytes) -> list[bytes]:
    return b64.strip().split(b"\n")


def rfc_a4_body(key_first: bool = True, eol: bytes = b"\r\n") -> bytes:
    """The RFC 7030 Appendix A.4 response body, line for line."""
    key = [
        b"--estServerExampleBoundary",
        b"Content-Type: application/pkcs8",
        b"Content-Transfer-Encoding: base64",
        b"",
        *_indent(KEY_B64),
    ]
    cert = [
        b"--estServerExampleBoundary",
        b"Content-Type: application/pkcs7-mime; smime-type=certs-only",
        b"Content-Transfer-Encoding: base64",
        b"",
        *_indent(CERT_B64),
    ]
    lines = [
        b"This is the preamble.  It is to be ignored, though it",
        b"is a handy place for estServer to include an explanatory note,",
        b"including contact or support information.",
        *(key + cert if key_first else cert + key),
        b"--estServerExampleBoundary--",
        b"This is the epilogue.  It is also to be ignored.",
    ]
    return eol.join(lines) + eol


# -- RFC 7030 Appendix A.4 ----------------------------------------------------


@pytest.mark.parametrize("key_first", [True, False])
@pytest.mark.parametrize("eol", [b"\r\n", b"\n"], ids=["CRLF", "LF"])
@pytest.mark.parametrize("lenient", [False, True])
def test_rfc_a4_example(key_first: bool, eol: bytes, lenient: bool) -> None:
    body = rfc_a4_body(key_first, eol)
    for ct in (A4_CONTENT_TYPE, A4_CONTENT_TYPE.encode(), parse_media_type(A4_CONTENT_TYPE)):
        resp = decode_serverkeygen_response(body, ct, lenient=lenient)
        assert resp.key_der == KEY_DER
        assert resp.certs_only_der == CERT_DER
        assert resp.key_media_type == PKCS8
        assert not resp.key_encrypted


def test_rfc_a4_parts() -> None:
    parts = parse_multipart(rfc_a4_body(), parse_media_type(A4_CONTENT_TYPE))
    assert len(parts) == 2
    assert parts[0].headers == (
        ("content-type", "application/pkcs8"),
        ("content-transfer-encoding", "base64"),
    )
    assert parts[0].content_type == PKCS8
    assert parts[1].content_type == CERTS_ONLY
    assert parts[1].header("Content-Transfer-Encoding") == "base64"
    # The CRLF before a delimiter belongs to the delimiter.
    assert parts[0].body == b"\r\n".join(_indent(KEY_B64))
    assert parts[1].body == b"\r\n".join(_indent(CERT_B64))


@pytest.mark.parametrize("policy", [SINGLE_LINE, WRAP_64, LinePolicy(76)])
@pytest.mark.parametrize("key_first", [True, False])
def test_encode_decode_rfc_vectors(policy: LinePolicy, key_first: bool) -> None:
    mt, body = encode_serverkeygen_response(KEY_DER, CERT_DER, policy=policy, key_first=key_first)
    assert mt.essence == "multipart/mixed" and mt.boundary
    resp = decode_serverkeygen_response(body, mt)
    assert resp == ServerKeygenResponse(KEY_DER, PKCS8, CERT_DER)
    parts = parse_multipart(body, mt)
    key, cert = (parts[0], parts[1]) if key_first else (parts[1], parts[0])
    assert key.headers == (
        ("content-type", "application/pkcs8"),
        ("content-transfer-encoding", "base64"),
    )
    assert cert.headers == (
        ("content-type", "application/pkcs7-mime; smime-type=certs-only"),
        ("content-transfer-encoding", "base64"),
    )
    assert key.body == encode_base64(KEY_DER, policy)
    assert cert.body == encode_base64(CERT_DER, policy)
    # Framing uses CRLF; the only bare LFs are the base64 line ends.
    assert body.startswith(f"--{mt.boundary}\r\nContent-Type: ".encode())
    assert body.endswith(f"\r\n--{mt.boundary}--\r\n".encode())
    framing = body.replace(key.body, b"").replace(cert.body, b"")
    assert b"\n" not in framing.replace(b"\r\n", b"")


def test_encode_exact_bytes_with_fixed_boundary() -> None:
    mt, body = encode_serverkeygen_response(b"\x30\x00", b"\x30\x01\x00", boundary=BOUNDARY)
    assert format_media_type(mt) == "multipart/mixed; boundary=estServerExampleBoundary"
    assert body == (
        b"--estServerExampleBoundary\r\n"
        b"Content-Type: application/pkcs8\r\n"
        b"Content-Transfer-Encoding: base64\r\n"
        b"\r\n"
        b"MAA=\n"
        b"\r\n"
        b"--estServerExampleBoundary\r\n"
        b"Content-Type: application/pkcs7-mime; smime-type=certs-only\r\n"
        b"Content-Transfer-Encoding: base64\r\n"
        b"\r\n"
        b"MAEA\n"
        b"\r\n"
        b"--estServerExampleBoundary--\r\n"
    )


def test_encrypted_key() -> None:
    mt, body = encode_serverkeygen_response(ENVELOPED_DER, CERT_DER, key_encrypted=True)
    assert b"Content-Type: application/pkcs7-mime; smime-type=server-generated-key\r\n" in body
    resp = decode_serverkeygen_response(body, mt)
    assert resp.key_der == ENVELOPED_DER
    assert resp.key_media_type == SERVER_GENERATED_KEY
    assert resp.key_encrypted
    assert resp.certs_only_der == CERT_DER


def test_stdlib_email_reads_our_body() -> None:
    # An independent MIME parser: Python's email package.
    mt, body = encode_serverkeygen_response(KEY_DER, CERT_DER, policy=WRAP_64)
    msg = email.message_from_bytes(
        b"Content-Type: " + format_media_type(mt).encode() + b"\r\n\r\n" + body,
        policy=email.policy.HTTP,
    )
    assert msg.is_multipart()
    payloads = {
        part.get_content_type(): part.get_payload(decode=True) for part in msg.iter_parts()  # type: ignore[attr-defined]
    }
    assert payloads == {"application/pkcs8": KEY_DER, "application/pkcs7-mime": CERT_DER}


@pytest.mark.parametrize("cert_first", [False, True])
def test_we_read_stdlib_email_body(cert_first: bool) -> None:
    outer = MIMEMultipart("mixed")
    outer.preamble = "preamble from the stdlib"
    key = MIMEApplication(KEY_DER, "pkcs8")
    cert = MIMEApplication(CERT_DER, "pkcs7-mime")
    cert.set_param("smime-type", "certs-only")
    for part in (cert, key) if cert_first else (key, cert):
        outer.attach(part)
    raw = outer.as_bytes(policy=email.policy.HTTP)
    head, _, body = raw.partition(b"\r\n\r\n")
    ct = next(
        line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-type:")
    )
    resp = decode_serverkeygen_response(body, ct)
    assert (resp.key_der, resp.certs_only_der) == (KEY_DER, CERT_DER)


# -- part identification ------------------------------------------------------


def _part(ct: str | None, der: bytes, **extra: str) -> Part:
    headers = [] if ct is None else [("content-type", ct)]
    headers += list(extra.items())
    return Part(tuple(headers), encode_base64(der))


def _decode(*parts: Part, lenient: bool = False) -> ServerKeygenResponse:
    mt, body = build_multipart(parts)
    return decode_serverkeygen_response(body, mt, lenient=lenient)


P7 = "application/pkcs7-mime"


@pytest.mark.parametrize(
    "parts, key, key_type, cert",
    [
        # One untyped pkcs7-mime part: the role left open by the typed part.
        ([_part("application/pkcs8", KEY_DER), _part(P7, CERT_DER)], KEY_DER, PKCS8, CERT_DER),
        ([_part(P7, CERT_DER), _part("Application/PKCS8", KEY_DER)], KEY_DER, PKCS8, CERT_DER),
        (
            [_part(P7, ENVELOPED_DER), _part(format_media_type(CERTS_ONLY), CERT_DER)],
            ENVELOPED_DER, MediaType(P7), CERT_DER,
        ),
        # Both untyped: the ContentInfo OID decides.
        ([_part(P7, ENVELOPED_DER), _part(P7, CERT_DER)], ENVELOPED_DER, MediaType(P7), CERT_DER),
        ([_part(P7, CERT_DER), _part(P7, ENVELOPED_DER)], ENVELOPED_DER, MediaType(P7), CERT_DER),
        # smime-type values compared case-insensitively, quoted or not.
        (
            [_part(P7 + '; smime-type="Server-Generated-Key"', ENVELOPED_DER),
             _part(P7 + "; SMIME-TYPE=CERTS-ONLY", CERT_DER)],
            ENVELOPED_DER,
            MediaType(P7, (("smime-type", "Server-Generated-Key"),)),
            CERT_DER,
        ),
        # Unknown parts anywhere are ignored, and so is an extra untyped
        # pkcs7-mime part once both roles are taken.
        (
            [_part("text/plain", b"\x30\x00"), _part(None, b"\x30\x00"),
             _part("application/pkcs8", KEY_DER), _part("application/octet-stream", b"\x01"),
             _part(format_media_type(CERTS_ONLY), CERT_DER), _part(P7, b"\x30\x00"),
             _part(P7 + "; smime-type=CMC-response", CERT_DER)],
            KEY_DER, PKCS8, CERT_DER,
        ),
        # Content-Transfer-Encoding is ignored (RFC 8951 section 3).
        (
            [_part("application/pkcs8", KEY_DER, **{"content-transfer-encoding": "binary"}),
             _part(format_media_type(CERTS_ONLY), CERT_DER, **{"content-transfer-encoding": "7bit"})],
            KEY_DER, PKCS8, CERT_DER,
        ),
    ],
)
def test_part_identification(parts: list[Part], key: bytes, key_type: MediaType, cert: bytes) -> None:
    resp = _decode(*parts)
    assert resp == ServerKeygenResponse(key, key_type, cert)


@pytest.mark.parametrize(
    "parts",
    [
        [_part("application/pkcs8", KEY_DER)],
        [_part(format_media_type(CERTS_ONLY), CERT_DER)],
        [_part("application/pkcs8", KEY_DER), _part("application/pkcs8", KEY_DER),
         _part(format_media_type(CERTS_ONLY), CERT_DER)],
        [_part("application/pkcs8", KEY_DER), _part(format_media_type(CERTS_ONLY), CERT_DER),
         _part(format_media_type(CERTS_ONLY), CERT_DER)],
        [_part(P7, CERT_DER), _part(P7, CERT_DER)],
        [_part(P7, b"\x30\x03\x02\x01\x00"), _part(P7, b"\x30\x03\x02\x01\x00")],
        [_part(None, KEY_DER), _part(None, CERT_DER)],
        [_part("application/pkcs8", KEY_DER), _part("application/pkcs7", CERT_DER)],
        [_part("application/pkcs8; x", KEY_DER), _part(format_media_type(CERTS_ONLY), CERT_DER)],
    ],
)
def test_not_one_key_and_one_cert(parts: list[Part]) -> None:
    with pytest.raises(DecodeError):
        _decode(*parts)


def test_bad_base64_in_a_part() -> None:
    pem_key = (
        b"-----BEGIN PRIVATE KEY-----\n" + encode_base64(KEY_DER, WRAP_64) + b"-----END PRIVATE KEY-----\n"
    )
    parts = (
        Part((("content-type", "application/pkcs8"),), pem_key),
        Part((("content-type", format_media_type(CERTS_ONLY)),), CERT_DER),  # raw DER
    )
    mt, body = build_multipart(parts)
    with pytest.raises(DecodeError, match="PEM"):
        decode_serverkeygen_response(body, mt)
    # Lenient: PEM and raw DER parts are accepted.
    resp = decode_serverkeygen_response(body, mt, lenient=True)
    assert (resp.key_der, resp.certs_only_der) == (KEY_DER, CERT_DER)


@pytest.mark.parametrize(
    "ct, lenient",
    [
        ("application/pkcs7-mime", False),
        ("multipart/related; boundary=estServerExampleBoundary", False),
        ("multipart/mixed", False),  # no boundary
        ("multipart/mixed; boundary=other", False),
        ("multipart mixed", False),
        ("text/plain", True),
    ],
)
def test_wrong_outer_media_type(ct: str, lenient: bool) -> None:
    with pytest.raises(DecodeError):
        decode_serverkeygen_response(rfc_a4_body(), ct, lenient=lenient)


def test_lenient_accepts_other_multipart_subtypes() -> None:
    ct = "multipart/related; boundary=estServerExampleBoundary"
    resp = decode_serverkeygen_response(rfc_a4_body(), ct, lenient=True)
    assert resp.key_der == KEY_DER


def test_encode_rejects_bad_arguments() -> None:
    with pytest.raises(LocalProtocolError):
        encode_serverkeygen_response(b"", CERT_DER)
    with pytest.raises(LocalProtocolError):
        encode_serverkeygen_response(KEY_DER, b"")
    with pytest.raises(LocalProtocolError):
        encode_serverkeygen_response(KEY_DER, CERT_DER, boundary="bad\nboundary")


def test_serverkeygen_size_limit() -> None:
    body = rfc_a4_body()
    assert decode_serverkeygen_response(body, A4_CONTENT_TYPE, max_size=len(body)).key_der == KEY_DER
    with pytest.raises(MessageTooLarge):
        decode_serverkeygen_response(body, A4_CONTENT_TYPE, max_size=len(body) - 1)


# -- parse_multipart ----------------------------------------------------------

MT = MediaType("multipart/mixed", (("boundary", "b"),))


@pytest.mark.parametrize(
    "body, expected",
    [
        (b"--b\r\nA: 1\r\n\r\nx\r\n--b--\r\n", [((("a", "1"),), b"x")]),
        (b"--b\nA: 1\n\nx\n--b--\n", [((("a", "1"),), b"x")]),
        (b"--b\r\nA: 1\r\n\r\nx\r\n--b--", [((("a", "1"),), b"x")]),  # no CRLF at end
        (b"preamble\r\n--b\r\n\r\nx\r\n--b--\r\nepilogue", [((), b"x")]),
        (b"--b \t\r\nA:1\r\n\r\nx\r\n--b-- \r\n", [((("a", "1"),), b"x")]),  # padding
        (b"--b\r\nA  :  v w  \r\n\r\n\r\n--b--", [((("a", "v w"),), b"")]),
        (b"--b\r\nA: 1\r\n  2\r\n\tthree\r\n\r\nx\r\n--b--", [((("a", "1 2 three"),), b"x")]),
        (b"--b\r\nA: 1\r\n--b--", [((("a", "1"),), b"")]),  # headers, no body
        (b"--b\r\n--b--", [((), b"")]),
        (b"--b\r\n\r\n--bx\r\n-- b\r\n--b\r\n\r\ny\r\n--b--", [((), b"--bx\r\n-- b"), ((), b"y")]),
        (b"--b\r\n\r\nx\r\n--b\r\n\r\n\r\n--b--", [((), b"x"), ((), b"")]),
        (b"--b\r\nA: caf\xe9\r\n\r\n\xff\x00\r\n--b--", [((("a", "caf\xe9"),), b"\xff\x00")]),
        (b"--b\r\n\r\nx\r\n--b--\r\n--b\r\n\r\ny\r\n--b--", [((), b"x")]),  # epilogue ignored
    ],
)
def test_parse_multipart(body: bytes, expected: list[tuple[tuple[tuple[str, str], ...], bytes]]) -> None:
    parts = parse_multipart(body, MT)
    assert [(p.headers, p.body) for p in parts] == expected


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"no delimiter at all",
        b"--b\r\n\r\nx\r\n",  # no close delimiter
        b"--b\r\n\r\nx\r\n--b-",
        b"--b--\r\n",  # no part
        b"--bc\r\n\r\nx\r\n--bc--",
        b"--b\r\nnot a header\r\n\r\nx\r\n--b--",
        b"--b\r\n: empty name\r\n\r\nx\r\n--b--",
        b"--b\r\n folded first\r\n\r\nx\r\n--b--",
        b"--b\r\nA: bare\rCR\r\n\r\nx\r\n--b--",
        b"--b\r\nA\x00: 1\r\n\r\nx\r\n--b--",
    ],
)
def test_parse_multipart_rejects(body: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_multipart(body, MT)


def test_parse_multipart_limits() -> None:
    body = b"".join(b"--b\r\n\r\nx\r\n" for _ in range(3)) + b"--b--\r\n"
    assert len(parse_multipart(body, MT, max_parts=3)) == 3
    with pytest.raises(DecodeError, match="more than 2 parts"):
        parse_multipart(body, MT, max_parts=2)
    with pytest.raises(MessageTooLarge):
        parse_multipart(body, MT, max_size=len(body) - 1)


@pytest.mark.parametrize(
    "ct, status",
    [
        (MediaType("multipart/mixed"), 415),
        (MediaType("multipart/mixed", (("boundary", ""),)), 415),
        (MediaType("application/pkcs8", (("boundary", "b"),)), 415),
    ],
)
def test_parse_multipart_media_type_errors(ct: MediaType, status: int) -> None:
    with pytest.raises(DecodeError) as info:
        parse_multipart(b"--b\r\n\r\nx\r\n--b--\r\n", ct)
    assert info.value.error_status_hint == status


def test_boundary_with_regex_and_quote_characters() -> None:
    boundary = "a+b(c)?.d=e:f g"
    parts = (Part((("x", "1"),), b"body"),)
    mt, body = build_multipart(parts, boundary)
    assert format_media_type(mt) == 'multipart/mixed; boundary="a+b(c)?.d=e:f g"'
    assert parse_multipart(body, parse_media_type(format_media_type(mt))) == parts


# -- build_multipart and Part -------------------------------------------------


@pytest.mark.parametrize(
    "boundary",
    ["", "x" * 71, "ends in space ", "quote\"", "new\nline", "semi;colon", "caf\xe9", "tab\t"],
)
def test_build_rejects_bad_boundary(boundary: str) -> None:
    with pytest.raises(LocalProtocolError):
        build_multipart([Part((), b"x")], boundary)


def test_build_rejects_boundary_in_body_and_no_parts() -> None:
    with pytest.raises(LocalProtocolError, match="occurs in part 1"):
        build_multipart([Part((), b"x"), Part((), b"a--sep--b")], "sep")
    with pytest.raises(LocalProtocolError):
        build_multipart([])
    assert build_multipart([Part((), b"x")], "x" * 70)[0].boundary == "x" * 70


def test_random_boundary_is_fresh_and_absent() -> None:
    parts = [Part((), b"estproto-" + bytes(range(256)))]
    seen = {build_multipart(parts)[0].boundary for _ in range(20)}
    assert len(seen) == 20
    for b in seen:
        assert b is not None and b.encode() not in parts[0].body


def test_part_validation_and_lookup() -> None:
    p = Part((("Content-Type", " application/pkcs8 "), ("X-A", "1"), ("x-a", "2")), bytearray(b"z"))
    assert p.headers == (("content-type", "application/pkcs8"), ("x-a", "1"), ("x-a", "2"))
    assert p.body == b"z" and isinstance(p.body, bytes)
    assert p.header("X-A") == "1"
    assert p.header("missing") is None
    assert p.content_type == PKCS8
    assert Part((), b"").content_type is None
    with pytest.raises(DecodeError):
        _ = Part((("content-type", "not a media type"),), b"").content_type
    for bad in [
        lambda: Part((("a b", "1"),), b""),
        lambda: Part((("a:b", "1"),), b""),
        lambda: Part((("a", "1\r\nB: 2"),), b""),
        lambda: Part((("a", "\u0100"),), b""),
        lambda: Part((("a", "x\ry"),), b""),
        lambda: Part((("a", 1),), b""),  # type: ignore[arg-type]
        lambda: Part((("a",),), b""),  # type: ignore[arg-type]
        lambda: Part((), "text"),  # type: ignore[arg-type]
    ]:
        with pytest.raises(LocalProtocolError):
            bad()


# -- hypothesis ---------------------------------------------------------------

FIELD_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != ":")
header_names = st.text(alphabet=FIELD_CHARS, min_size=1, max_size=10).map(str.lower)
VALUE_CHARS = "".join(chr(c) for c in range(0x20, 0x100) if c != 0x7F) + "\t"
header_values = st.text(alphabet=VALUE_CHARS, max_size=30).map(lambda v: v.strip(" \t"))
bodies = st.lists(
    st.one_of(
        st.sampled_from([b"--", b"\r\n", b"\n", b"\r", b"--b", b"-- ", b"\r\n--", b"\r\n\r\n"]),
        st.binary(max_size=20),
    ),
    max_size=12,
).map(b"".join)
parts_strategy = st.lists(
    st.builds(
        Part,
        st.lists(st.tuples(header_names, header_values), max_size=4).map(tuple),
        bodies,
    ),
    min_size=1,
    max_size=6,
)


@given(parts_strategy)
def test_round_trip_random_boundary(parts: list[Part]) -> None:
    mt, body = build_multipart(parts)
    assert parse_multipart(body, mt) == tuple(parts)


@given(parts_strategy, st.text(alphabet="abc-=:", min_size=1, max_size=8))
def test_round_trip_given_boundary(parts: list[Part], boundary: str) -> None:
    try:
        mt, body = build_multipart(parts, boundary)
    except LocalProtocolError:
        assert any(boundary.encode() in p.body for p in parts)
        return
    assert parse_multipart(body, parse_media_type(format_media_type(mt))) == tuple(parts)


@given(
    st.lists(
        st.tuples(
            st.lists(st.tuples(header_names, header_values), max_size=3).map(tuple),
            st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"")),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_lf_only_framing(raw_parts: list[tuple[tuple[tuple[str, str], ...], bytes]]) -> None:
    # Bodies without CR: turning every CRLF of the framing into LF keeps the parts.
    parts = [Part(h, b) for h, b in raw_parts]
    mt, body = build_multipart(parts)
    assert parse_multipart(body.replace(b"\r\n", b"\n"), mt) == tuple(parts)


@given(st.binary(max_size=300))
def test_garbage_raises_only_decode_error(body: bytes) -> None:
    try:
        parse_multipart(body, MT)
    except DecodeError:
        pass
    try:
        decode_serverkeygen_response(body, MT, lenient=True)
    except DecodeError:
        pass


@given(
    st.lists(
        st.sampled_from(
            [b"--b", b"--b--", b"\r\n", b"\n", b"\r", b" ", b":", b"Content-Type", b"--",
             b"application/pkcs8", b"application/pkcs7-mime", b";smime-type=certs-only",
             b"MAA=", b"0", b"\x00", b"-----BEGIN X-----", b"-----END X-----"]
        ),
        max_size=40,
    ).map(b"".join),
    st.booleans(),
)
def test_structured_garbage_raises_only_decode_error(body: bytes, lenient: bool) -> None:
    try:
        decode_serverkeygen_response(body, "multipart/mixed; boundary=b", lenient=lenient)
    except DecodeError:
        pass


def test_every_truncation_of_a_real_body() -> None:
    full = rfc_a4_body()
    expected = decode_serverkeygen_response(full, A4_CONTENT_TYPE)
    ok = 0
    for cut in range(len(full)):
        try:
            resp = decode_serverkeygen_response(full[:cut], A4_CONTENT_TYPE)
        except DecodeError:
            continue
        # Only cuts inside the (ignored) epilogue still decode.
        assert resp == expected
        ok += 1
    epilogue = full[full.index(b"--estServerExampleBoundary--") + len(b"--estServerExampleBoundary--") :]
    # Every cut from the end of the close delimiter on, except the one that
    # leaves a lone CR after it (a truncated line end).
    assert ok == len(epilogue) - 1
