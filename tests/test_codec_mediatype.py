"""Tests for estproto.codecs.mediatype (RFC 7030 3.2.4, RFC 9110 8.3.1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from estproto import DecodeError, LocalProtocolError, MessageTooLarge
from estproto.codecs.mediatype import (
    CERTS_ONLY,
    CMC_REQUEST,
    CMC_RESPONSE,
    CSRATTRS,
    MULTIPART_MIXED,
    PKCS7_MIME,
    PKCS8,
    PKCS10,
    SERVER_GENERATED_KEY,
    TEXT_PLAIN,
    MediaType,
    format_media_type,
    matches,
    parse_media_type,
)


@pytest.mark.parametrize(
    "mt, text",
    [
        (PKCS10, "application/pkcs10"),
        (PKCS7_MIME, "application/pkcs7-mime"),
        (CERTS_ONLY, "application/pkcs7-mime; smime-type=certs-only"),
        (CMC_REQUEST, "application/pkcs7-mime; smime-type=CMC-request"),
        (CMC_RESPONSE, "application/pkcs7-mime; smime-type=CMC-response"),
        (SERVER_GENERATED_KEY, "application/pkcs7-mime; smime-type=server-generated-key"),
        (CSRATTRS, "application/csrattrs"),
        (PKCS8, "application/pkcs8"),
        (MULTIPART_MIXED, "multipart/mixed"),
        (TEXT_PLAIN, "text/plain"),
    ],
)
def test_constants(mt: MediaType, text: str) -> None:
    assert format_media_type(mt) == text == str(mt)
    assert parse_media_type(text) == mt


def test_smime_type_is_lowercased_value_kept() -> None:
    assert CMC_REQUEST.param("smime-type") == "CMC-request"
    assert CMC_REQUEST.smime_type == "cmc-request"
    assert PKCS10.smime_type is None


P7 = "application/pkcs7-mime"

PARSE_CASES = [
    ("application/pkcs10", "application/pkcs10", ()),
    ("Application/PKCS10", "application/pkcs10", ()),
    ("  application/pkcs10 \t", "application/pkcs10", ()),
    (b"application/pkcs10", "application/pkcs10", ()),
    ("application/pkcs7-mime; smime-type=certs-only", P7, (("smime-type", "certs-only"),)),
    ("application/pkcs7-mime;smime-type=certs-only", P7, (("smime-type", "certs-only"),)),
    ("application/pkcs7-mime ; smime-type = certs-only ", P7, (("smime-type", "certs-only"),)),
    ('application/pkcs7-mime; smime-type="certs-only"', P7, (("smime-type", "certs-only"),)),
    ("application/pkcs7-mime; SMIME-Type=CMC-Request", P7, (("smime-type", "CMC-Request"),)),
    # RFC 7030 Appendix A.4, with its space before ';'.
    (
        "multipart/mixed ; boundary=estServerExampleBoundary",
        "multipart/mixed",
        (("boundary", "estServerExampleBoundary"),),
    ),
    ('multipart/mixed; boundary="a b:c=d?"', "multipart/mixed", (("boundary", "a b:c=d?"),)),
    ('text/plain; x="a\\"b\\\\c"', "text/plain", (("x", 'a"b\\c'),)),
    ('text/plain; x="\\a"', "text/plain", (("x", "a"),)),
    ('text/plain; x=""', "text/plain", (("x", ""),)),
    ('text/plain; x="semi;colon"; y=z', "text/plain", (("x", "semi;colon"), ("y", "z"))),
    ("text/plain; charset=utf-8;", "text/plain", (("charset", "utf-8"),)),
    ("a/b;;c=d; ;", "a/b", (("c", "d"),)),
    (b'a/b; x="caf\xe9"', "a/b", (("x", "caf\xe9"),)),
    ("application/pkcs10; charset=us-ascii; name=x.p10", "application/pkcs10",
     (("charset", "us-ascii"), ("name", "x.p10"))),
]


@pytest.mark.parametrize("text, essence, params", PARSE_CASES)
def test_parse(text: bytes | str, essence: str, params: tuple[tuple[str, str], ...]) -> None:
    mt = parse_media_type(text)
    assert mt == MediaType(essence, params)
    assert mt.essence == essence
    assert mt.params == params
    # Formatting then parsing gives the same value back.
    assert parse_media_type(format_media_type(mt)) == mt


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "application",
        "application/",
        "/pkcs10",
        "application/pkcs10 x",
        "application /pkcs10",
        "a b/c",
        "a/b/c",
        "a/b; c",
        "a/b; =d",
        "a/b; c=",
        "a/b; c=d e",
        'a/b; c="unterminated',
        'a/b; c="x"y',
        'a/b; c="\\"',
        "a/b; c=d; C=e",  # a repeated parameter is ambiguous
        "a/b\r\nX-Injected: 1",
        "a/b; c=\x00",
        'a/b; c="\x7f"',
        'a/b; c="\u0100"',
        "a/b; c=d, e/f",
        "a/b,",
        "a/b; c=\u00e9",  # non-token bare value
    ],
)
def test_parse_rejects_malformed(text: str) -> None:
    with pytest.raises(DecodeError) as info:
        parse_media_type(text)
    assert info.value.error_status_hint == 415


def test_parse_size_limit() -> None:
    text = "a/b; x=" + "y" * 100
    assert parse_media_type(text, max_size=len(text)).param("x") == "y" * 100
    with pytest.raises(MessageTooLarge) as info:
        parse_media_type(text, max_size=len(text) - 1)
    assert info.value.error_status_hint == 415
    with pytest.raises(MessageTooLarge):
        parse_media_type(b"a/b" + b" " * 2000)


def test_parse_rejects_non_text() -> None:
    with pytest.raises(TypeError):
        parse_media_type(42)  # type: ignore[arg-type]


def test_param_lookup_is_case_insensitive_value_case_kept() -> None:
    mt = parse_media_type('multipart/mixed; Boundary="AbC"')
    assert mt.param("BOUNDARY") == mt.param("boundary") == mt.boundary == "AbC"
    assert mt.param("missing") is None
    assert mt.smime_type is None


def test_constructor_normalises_and_validates() -> None:
    mt = MediaType("Application/PKCS7-Mime", (("SMIME-Type", "Certs-Only"),))
    assert mt.essence == "application/pkcs7-mime"
    assert mt.params == (("smime-type", "Certs-Only"),)
    assert mt.smime_type == "certs-only"
    assert mt == parse_media_type("application/pkcs7-mime; smime-type=Certs-Only")
    for bad in [
        lambda: MediaType("pkcs10"),
        lambda: MediaType("a/b c"),
        lambda: MediaType(b"a/b"),  # type: ignore[arg-type]
        lambda: MediaType("a/b", (("c d", "e"),)),
        lambda: MediaType("a/b", (("c", "e\r\nX: y"),)),
        lambda: MediaType("a/b", (("c", "\u0100"),)),
        lambda: MediaType("a/b", (("c", "1"), ("C", "2"))),
        lambda: MediaType("a/b", (("c",),)),  # type: ignore[arg-type]
        lambda: MediaType("a/b", (("c", 1),)),  # type: ignore[arg-type]
    ]:
        with pytest.raises(LocalProtocolError):
            bad()


def test_format_quotes_only_when_needed() -> None:
    assert format_media_type(MediaType("a/b", (("x", "token-1.2"),))) == "a/b; x=token-1.2"
    assert format_media_type(MediaType("a/b", (("x", "two words"),))) == 'a/b; x="two words"'
    assert format_media_type(MediaType("a/b", (("x", 'q"b\\'),))) == 'a/b; x="q\\"b\\\\"'
    assert format_media_type(MediaType("a/b", (("x", ""),))) == 'a/b; x=""'
    assert format_media_type(MediaType("a/b", (("x", "a=b"),))) == 'a/b; x="a=b"'


@pytest.mark.parametrize(
    "actual, expected, result",
    [
        (CERTS_ONLY, CERTS_ONLY, True),
        ("application/pkcs7-mime", CERTS_ONLY, True),  # Bouncy Castle issue 901
        ("application/pkcs7-mime; smime-type=CERTS-ONLY", CERTS_ONLY, True),
        ('Application/PKCS7-MIME; Smime-Type="certs-only"', CERTS_ONLY, True),
        ("application/pkcs7-mime; smime-type=CMC-response", CERTS_ONLY, False),
        ("application/pkcs7-mime; smime-type=CMC-Response", CMC_RESPONSE, True),
        ("application/pkcs7-mime; smime-type=cmc-request", CMC_REQUEST, True),
        ("application/pkcs7-mime; smime-type=CMC-request", CMC_RESPONSE, False),
        ("application/pkcs7-mime; smime-type=certs-only", PKCS7_MIME, True),
        ("application/pkcs10", PKCS10, True),
        ("Application/PKCS10", PKCS10, True),
        ("application/pkcs10; charset=us-ascii", PKCS10, True),
        ("application/pkcs10", CERTS_ONLY, False),
        ("application/pkcs7", PKCS7_MIME, False),
        ("application/x-pkcs7-mime", PKCS7_MIME, False),
        ("application/pkcs8", PKCS8, True),
        ("application/pkcs7-mime; smime-type=server-generated-key", SERVER_GENERATED_KEY, True),
        ("application/pkcs7-mime; smime-type=certs-only", SERVER_GENERATED_KEY, False),
        ("application/csrattrs", CSRATTRS, True),
        ("multipart/mixed; boundary=x", MULTIPART_MIXED, True),
        ("multipart/related; boundary=x", MULTIPART_MIXED, False),
    ],
)
def test_matches(actual: MediaType | str, expected: MediaType, result: bool) -> None:
    if isinstance(actual, str):
        actual = parse_media_type(actual)
    assert matches(actual, expected) is result


# -- hypothesis ---------------------------------------------------------------

TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
tokens = st.text(alphabet=TCHARS, min_size=1, max_size=12)
values = st.text(
    alphabet=st.one_of(
        st.sampled_from('\t ";=\\/,()<>@[]?{}'),
        st.characters(min_codepoint=0x21, max_codepoint=0x7E),
        st.characters(min_codepoint=0x80, max_codepoint=0xFF),
    ),
    max_size=20,
)


@st.composite
def media_types(draw: st.DrawFn) -> MediaType:
    essence = f"{draw(tokens)}/{draw(tokens)}"
    names = draw(st.lists(tokens, max_size=5, unique_by=str.lower))
    return MediaType(essence, tuple((n, draw(values)) for n in names))


@given(media_types())
def test_round_trip(mt: MediaType) -> None:
    text = format_media_type(mt)
    assert parse_media_type(text) == mt
    assert parse_media_type(text.encode("latin-1")) == mt


@given(media_types(), st.data())
def test_whitespace_around_separators(mt: MediaType, data: st.DataObject) -> None:
    ows = st.text(alphabet=" \t", max_size=3)
    parts = [data.draw(ows) + mt.essence.upper()]
    for name, value in mt.params:
        quoted = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(
            data.draw(ows) + ";" + data.draw(ows) + name.upper()
            + data.draw(ows) + "=" + data.draw(ows) + quoted
        )
    assert parse_media_type("".join(parts) + data.draw(ows)) == mt


@given(st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_garbage_raises_only_decode_error(value: bytes | str) -> None:
    try:
        mt = parse_media_type(value)
    except DecodeError as exc:
        assert exc.error_status_hint == 415
        return
    assert parse_media_type(format_media_type(mt)) == mt


@given(media_types(), st.data())
def test_truncations(mt: MediaType, data: st.DataObject) -> None:
    text = format_media_type(mt)
    cut = data.draw(st.integers(min_value=0, max_value=len(text)))
    try:
        parse_media_type(text[:cut])
    except DecodeError:
        pass
