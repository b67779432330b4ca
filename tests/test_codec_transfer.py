"""Tests for estproto.codecs.transfer: EST base64 bodies (RFC 8951 section 3)."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from estproto import DecodeError, LocalProtocolError, MessageTooLarge
from estproto.codecs.transfer import (
    SINGLE_LINE,
    WRAP_64,
    LinePolicy,
    body_is_wrapped,
    decode_base64,
    encode_base64,
)
from pki import der, make_csr, make_key, pem
from vectors import vector_der, vector_text

CERTS_ONLY_DER = vector_der("rfc7030-A3-enroll-response.b64")
CSR_DER = vector_der("rfc7030-A3-enroll-request-csr.b64")

_KEY = make_key("p256")
_CSR = make_csr(_KEY, cn="transfer-test")
REAL_CSR_DER = der(_CSR)
REAL_CSR_PEM = pem(_CSR)

policies = st.one_of(
    st.sampled_from([SINGLE_LINE, WRAP_64, LinePolicy(76)]),
    st.integers(min_value=1, max_value=200).map(LinePolicy),
)


# -- encoding ------------------------------------------------------------------


@given(st.binary(min_size=1, max_size=3000), policies)
def test_round_trip(data: bytes, policy: LinePolicy) -> None:
    text = encode_base64(data, policy)
    assert decode_base64(text) == data
    assert decode_base64(text, lenient=True) == data
    assert text.endswith(b"\n") and not text.endswith(b"\n\n")
    assert b"\r" not in text
    lines = text[:-1].split(b"\n")
    assert b"".join(lines) == base64.b64encode(data)
    if policy.width is None:
        assert len(lines) == 1
    else:
        assert all(len(line) == policy.width for line in lines[:-1])
        assert 0 < len(lines[-1]) <= policy.width
    assert body_is_wrapped(text) == (len(lines) > 1)


def test_single_line_is_one_line_plus_newline() -> None:
    text = encode_base64(CERTS_ONLY_DER)
    assert text == base64.b64encode(CERTS_ONLY_DER) + b"\n"
    assert text.count(b"\n") == 1


def test_wrap_64_matches_rfc_vector_layout() -> None:
    # The RFC prints its examples at 64 columns: our WRAP_64 text is the same.
    expected = b"\n".join(vector_text("rfc7030-A3-enroll-response.b64").split()) + b"\n"
    assert encode_base64(CERTS_ONLY_DER, WRAP_64) == expected


def test_short_wrapped_body_is_one_line() -> None:
    assert encode_base64(b"\x30\x00", WRAP_64) == b"MAA=\n"


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "64"])
def test_line_policy_rejects_bad_width(bad: object) -> None:
    with pytest.raises(LocalProtocolError):
        LinePolicy(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [b"", bytearray(), "MAA=", None])
def test_encode_rejects_empty_or_non_bytes(bad: object) -> None:
    with pytest.raises(LocalProtocolError):
        encode_base64(bad)  # type: ignore[arg-type]


def test_encode_accepts_bytes_likes() -> None:
    assert encode_base64(bytearray(b"\x30\x00")) == b"MAA=\n"
    assert encode_base64(memoryview(b"\x30\x00"), WRAP_64) == b"MAA=\n"


# -- decoding: what real peers send -------------------------------------------

_B64 = base64.b64encode(CSR_DER)


def _wrap(text: bytes, width: int, eol: bytes) -> bytes:
    return eol.join(text[i : i + width] for i in range(0, len(text), width)) + eol


# (name, body, strict result or None for DecodeError, lenient result)
REAL_WORLD = [
    # curl --data @file strips newlines: one line, nothing after it.
    ("curl --data @file", _B64, CSR_DER, CSR_DER),
    ("strongSwan single line + LF", _B64 + b"\n", CSR_DER, CSR_DER),
    ("libest 64 columns CRLF", _wrap(_B64, 64, b"\r\n"), CSR_DER, CSR_DER),
    ("openssl 64 columns LF", _wrap(_B64, 64, b"\n"), CSR_DER, CSR_DER),
    ("MIME 76 columns CRLF", _wrap(_B64, 76, b"\r\n"), CSR_DER, CSR_DER),
    ("RFC vector as printed", vector_text("rfc7030-A3-enroll-request-csr.b64"), CSR_DER, CSR_DER),
    (
        "RFC indentation, tabs and spaces",
        b"   " + _wrap(_B64, 64, b"\n\t   ") + b"  \r\n",
        CSR_DER,
        CSR_DER,
    ),
    ("spaces inside a line", b" ".join(_B64[i : i + 3] for i in range(0, len(_B64), 3)), CSR_DER, CSR_DER),
    ("Python EST client: PEM CSR", REAL_CSR_PEM, None, REAL_CSR_DER),
    ("PEM CSR with CRLF", REAL_CSR_PEM.replace(b"\n", b"\r\n"), None, REAL_CSR_DER),
    (
        "PEM with text around it",
        b"Certificate request follows\n" + REAL_CSR_PEM + b"trailer\n",
        None,
        REAL_CSR_DER,
    ),
    (
        "legacy PEM label",
        REAL_CSR_PEM.replace(b"CERTIFICATE REQUEST", b"NEW CERTIFICATE REQUEST"),
        None,
        REAL_CSR_DER,
    ),
    ("raw DER CSR", REAL_CSR_DER, None, REAL_CSR_DER),
    ("raw DER certs-only ending in 00", CERTS_ONLY_DER, None, CERTS_ONLY_DER),
    ("libest csrattrs: trailing NUL", _B64 + b"\x00", None, CSR_DER),
    ("trailing newline then NUL", _wrap(_B64, 64, b"\n") + b"\x00", None, CSR_DER),
    ("several NULs and whitespace", _B64 + b"\n\x00\x00\r\n", None, CSR_DER),
]


@pytest.mark.parametrize(
    "body, strict, lenient", [case[1:] for case in REAL_WORLD], ids=[c[0] for c in REAL_WORLD]
)
def test_real_world_bodies(body: bytes, strict: bytes | None, lenient: bytes) -> None:
    assert decode_base64(body, lenient=True) == lenient
    if strict is None:
        with pytest.raises(DecodeError) as info:
            decode_base64(body)
        assert info.value.error_status_hint == 400
    else:
        assert decode_base64(body) == strict


def test_strict_messages_name_the_problem() -> None:
    with pytest.raises(DecodeError, match=r"body is PEM, not base64 DER \(RFC 8951 section 3\)"):
        decode_base64(REAL_CSR_PEM)
    with pytest.raises(DecodeError, match="binary DER"):
        decode_base64(REAL_CSR_DER)
    with pytest.raises(DecodeError, match="NUL"):
        decode_base64(_B64 + b"\x00")
    with pytest.raises(DecodeError, match=r"b'\*' at offset 4"):
        decode_base64(b"MIIB*AAA")
    with pytest.raises(DecodeError, match="empty"):
        decode_base64(b" \r\n\t")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\r\n",
        b"M",
        b"MI",
        b"MII",
        b"MIIB=",
        b"MA==MA==",
        b"MA=A",
        b"====",
        b"M===",
        b"MAA",  # unpadded
        b"MAA=\x0b",  # vertical tab is not RFC 8951 whitespace
        b"MAA=\x0c",
        b"MA-_",  # base64url alphabet
        b"MAA=\xff",
        b"\x00\x00\x00\x00",
        b"\x00MAA=",
    ],
)
@pytest.mark.parametrize("lenient", [False, True])
def test_invalid_bodies(body: bytes, lenient: bool) -> None:
    with pytest.raises(DecodeError):
        decode_base64(body, lenient=lenient)


@pytest.mark.parametrize(
    "body",
    [
        b"-----BEGIN CERTIFICATE REQUEST-----\n" + _B64 + b"\n-----END CERTIFICATE-----\n",
        b"-----BEGIN X-----\n" + _B64 + b"\n",
        b"-----BEGIN X-----\nMA*=\n-----END X-----\n",
        b"-----BEGIN X-----\n\n-----END X-----\n",
        b"-----BEGIN X\n" + _B64 + b"\n-----END X-----\n",
    ],
)
def test_lenient_rejects_broken_pem(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_base64(body, lenient=True)


def test_size_limit_checked_first() -> None:
    body = encode_base64(CSR_DER)
    assert decode_base64(body, max_size=len(body)) == CSR_DER
    with pytest.raises(MessageTooLarge) as info:
        decode_base64(body, max_size=len(body) - 1)
    assert info.value.error_status_hint == 413
    # Oversized garbage is refused for its size, not its content.
    with pytest.raises(MessageTooLarge):
        decode_base64(b"\xff" * 100, max_size=99, lenient=True)


def test_decode_accepts_bytes_likes_and_rejects_str() -> None:
    assert decode_base64(bytearray(b"MAA=")) == b"\x30\x00"
    assert decode_base64(memoryview(b"MAA=\n")) == b"\x30\x00"
    with pytest.raises(TypeError):
        decode_base64("MAA=")  # type: ignore[arg-type]


@given(
    st.binary(min_size=1, max_size=500),
    st.lists(
        st.tuples(st.integers(min_value=0), st.sampled_from([b" ", b"\t", b"\r", b"\n", b"\r\n"])),
        max_size=30,
    ),
)
def test_whitespace_anywhere_is_ignored(data: bytes, inserts: list[tuple[int, bytes]]) -> None:
    text = bytearray(base64.b64encode(data))
    for pos, ws in inserts:
        at = pos % (len(text) + 1)
        text[at:at] = ws
    assert decode_base64(bytes(text)) == data


@given(st.binary(max_size=400), st.booleans())
def test_garbage_raises_only_decode_error(body: bytes, lenient: bool) -> None:
    try:
        result = decode_base64(body, lenient=lenient)
    except DecodeError:
        return
    assert isinstance(result, bytes) and result


@given(st.binary(min_size=1, max_size=300), policies, st.data())
def test_truncated_bodies_raise_only_decode_error(
    data: bytes, policy: LinePolicy, draw: st.DataObject
) -> None:
    text = encode_base64(data, policy)
    cut = draw.draw(st.integers(min_value=0, max_value=len(text) - 1))
    for lenient in (False, True):
        try:
            result = decode_base64(text[:cut], lenient=lenient)
        except DecodeError:
            continue
        # Cut on a quantum boundary: a valid (shorter) decoding; or, lenient,
        # text starting with "0" (0x30) taken as raw DER (the documented rule).
        assert data.startswith(result) or (lenient and text[:1] == b"0" and result == text[:cut])


def test_every_truncation_of_a_real_body() -> None:
    for text in (encode_base64(CSR_DER), encode_base64(CSR_DER, WRAP_64), REAL_CSR_PEM):
        for cut in range(len(text)):
            for lenient in (False, True):
                try:
                    decode_base64(text[:cut], lenient=lenient)
                except DecodeError:
                    pass


# -- body_is_wrapped ----------------------------------------------------------


@pytest.mark.parametrize(
    "body, wrapped",
    [
        (b"MAA=", False),
        (b"MAA=\n", False),
        (b"MAA=\r\n", False),
        (b"MAA=\n\x00", False),
        (b"  MAA=  \n\n", False),
        (encode_base64(CSR_DER), False),
        (encode_base64(CSR_DER, WRAP_64), True),
        (_wrap(_B64, 64, b"\r\n"), True),
        (b"MAAA\rMAA=", True),
        (REAL_CSR_PEM, True),
        (b"", False),
    ],
)
def test_body_is_wrapped(body: bytes, wrapped: bool) -> None:
    assert body_is_wrapped(body) is wrapped


# -- cross-check with openssl -------------------------------------------------


def test_openssl_decodes_single_line(openssl: str, tmp_path: Path) -> None:
    src = tmp_path / "single.b64"
    src.write_bytes(encode_base64(CERTS_ONLY_DER))
    out = subprocess.run(
        [openssl, "base64", "-d", "-A", "-in", str(src)], capture_output=True, check=True
    ).stdout
    assert out == CERTS_ONLY_DER


def test_openssl_decodes_wrapped(openssl: str, tmp_path: Path) -> None:
    src = tmp_path / "wrapped.b64"
    src.write_bytes(encode_base64(CERTS_ONLY_DER, WRAP_64))
    out = subprocess.run(
        [openssl, "base64", "-d", "-in", str(src)], capture_output=True, check=True
    ).stdout
    assert out == CERTS_ONLY_DER


def test_openssl_encodings_match_ours(openssl: str, tmp_path: Path) -> None:
    src = tmp_path / "certs.der"
    src.write_bytes(CERTS_ONLY_DER)
    wrapped = subprocess.run(
        [openssl, "base64", "-e", "-in", str(src)], capture_output=True, check=True
    ).stdout
    single = subprocess.run(
        [openssl, "base64", "-e", "-A", "-in", str(src)], capture_output=True, check=True
    ).stdout
    assert wrapped == encode_base64(CERTS_ONLY_DER, WRAP_64)
    # openssl -A writes no newline at all; we add the one libest needs.
    assert single + b"\n" == encode_base64(CERTS_ONLY_DER)
    assert decode_base64(wrapped) == decode_base64(single) == CERTS_ONLY_DER


def test_openssl_req_pem_in_lenient_mode(openssl: str, tmp_path: Path) -> None:
    # An independent PEM writer: openssl's own rendering of our CSR.
    src = tmp_path / "csr.der"
    src.write_bytes(REAL_CSR_DER)
    pem_out = subprocess.run(
        [openssl, "req", "-inform", "DER", "-in", str(src), "-outform", "PEM"],
        capture_output=True,
        check=True,
    ).stdout
    assert decode_base64(pem_out, lenient=True) == REAL_CSR_DER
