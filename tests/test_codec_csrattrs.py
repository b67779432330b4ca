"""Tests for estproto.codecs.csrattrs and estproto.asn1.csrattrs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from asn1crypto import core, keys
from hypothesis import given
from hypothesis import strategies as st

from estproto import DecodeError, LocalProtocolError, MessageTooLarge
from estproto.asn1 import csrattrs as asn1
from estproto.codecs.csrattrs import (
    ID_AA_CERTIFICATION_REQUEST_INFO_TEMPLATE,
    ID_AA_EXTENSION_REQ_TEMPLATE,
    ID_CHALLENGE_PASSWORD,
    ID_EXTENSION_REQUEST,
    CsrAttributes,
    KeyTypeHint,
    RequestedAttribute,
    RequestedExtension,
    RequiredOID,
    SubjectAttributeTemplate,
    decode_csrattrs,
    encode_csrattrs,
)
from vectors import vector_der

EC = "1.2.840.10045.2.1"
RSA = "1.2.840.113549.1.1.1"
SECP384R1 = "1.3.132.0.34"
SECP521R1 = "1.3.132.0.35"
ECDSA_SHA384 = "1.2.840.10045.4.3.3"
ECDSA_SHA512 = "1.2.840.10045.4.3.4"
MAC_ADDRESS = "1.3.6.1.1.1.1.22"
FRIENDLY_NAME = "1.2.840.113549.1.9.20"
FAVOURITE_DRINK = "0.9.2342.19200300.100.1.5"
SERIAL_NUMBER = "2.5.4.5"
SAN = "2.5.29.17"

VECTORS = [
    "rfc7030-A2-csrattrs-response.b64",
    "rfc7030-4.5.2-csrattrs-original.b64",
    "rfc9908-5.1-acp-othername-san.b64",
    "rfc9908-5.2-rfc7030-example-corrected.b64",
    "rfc9908-5.3-specific-san.b64",
    "rfc9908-5.4-rsa-key-size.b64",
    "rfc9908-5.5-ec-curve.b64",
    "rfc9908-5.6-extensions-and-attributes.b64",
]


def oid_der(oid: str) -> bytes:
    return bytes(core.ObjectIdentifier(oid).dump())


def tlv(tag: int, content: bytes) -> bytes:
    """A tiny independent DER writer for hand-built test structures."""
    n = len(content)
    if n < 0x80:
        length = bytes((n,))
    else:
        body = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes((0x80 | len(body),)) + body
    return bytes((tag,)) + length + content


# --------------------------------------------------------------------------
# The RFC vectors, field by field


@pytest.mark.parametrize("name", VECTORS)
def test_vectors_roundtrip(name: str) -> None:
    der = vector_der(name)
    assert encode_csrattrs(decode_csrattrs(der)) == der


def test_rfc7030_a2() -> None:
    attrs = decode_csrattrs(vector_der("rfc7030-A2-csrattrs-response.b64"))
    assert attrs.entries == (
        RequiredOID(MAC_ADDRESS),
        RequestedAttribute("2.999.1", (tlv(0x13, b"Parse SET as 2.999.1 data"),)),
        RequiredOID(ID_CHALLENGE_PASSWORD),
        RequestedAttribute(
            "2.999.2",
            (oid_der("2.999.3"), oid_der("2.999.4"), tlv(0x13, b"Parse SET as 2.999.2 data")),
        ),
        RequiredOID("1.3.36.3.3.2.8.1.1.11"),  # brainpoolP384r1
        RequiredOID("2.16.840.1.101.3.4.2.2"),  # sha384
    )
    assert attrs.challenge_password_required
    assert attrs.required_oids == (
        MAC_ADDRESS, ID_CHALLENGE_PASSWORD, "1.3.36.3.3.2.8.1.1.11", "2.16.840.1.101.3.4.2.2",
    )
    assert attrs.key_type is None  # a bare curve OID is not interpreted
    assert attrs.requested_extensions == ()
    assert attrs.template is None


def test_rfc7030_452_original_with_wrong_macaddress_encoding() -> None:
    attrs = decode_csrattrs(vector_der("rfc7030-4.5.2-csrattrs-original.b64"))
    assert attrs.entries == (
        RequiredOID(ID_CHALLENGE_PASSWORD),
        RequestedAttribute(EC, (oid_der(SECP384R1),)),
        # extensionRequest holding a bare OID, not Extensions (RFC 9908 5.2).
        RequestedAttribute(ID_EXTENSION_REQUEST, (oid_der(MAC_ADDRESS),)),
        RequiredOID(ECDSA_SHA384),
    )
    assert attrs.key_type == KeyTypeHint(EC, curve=SECP384R1)
    assert attrs.requested_extensions == (MAC_ADDRESS,)
    assert attrs.extension_requests == (RequestedExtension(MAC_ADDRESS, False, None),)
    assert attrs.challenge_password_required


def test_rfc9908_51_acp_othername() -> None:
    attrs = decode_csrattrs(vector_der("rfc9908-5.1-acp-othername-san.b64"))
    assert len(attrs.entries) == 1 and attrs.required_oids == ()
    assert not attrs.challenge_password_required
    assert attrs.key_type is None
    (ext,) = attrs.extension_requests
    assert ext.oid == SAN and ext.critical is True
    assert ext.value is not None
    # The SAN holds otherName 1.3.6.1.5.5.7.8.10 (AcpNodeName) as IA5String.
    from asn1crypto import x509 as asn1_x509

    (general_name,) = asn1_x509.GeneralNames.load(ext.value)
    assert general_name.name == "other_name"
    assert general_name.chosen["type_id"].dotted == "1.3.6.1.5.5.7.8.10"
    assert general_name.chosen["value"].parsed.native == (
        "rfc8994+fd739fc23c3440112233445500000000+@acp.example.com"
    )
    assert attrs.requested_extensions == (SAN,)


def test_rfc9908_52_corrected() -> None:
    attrs = decode_csrattrs(vector_der("rfc9908-5.2-rfc7030-example-corrected.b64"))
    assert attrs.entries == (
        RequiredOID(ID_CHALLENGE_PASSWORD),
        RequestedAttribute(EC, (oid_der(SECP384R1),)),
        RequiredOID(MAC_ADDRESS),
        RequiredOID(ECDSA_SHA384),
    )
    assert attrs.key_type == KeyTypeHint(EC, SECP384R1, None)
    assert attrs.requested_extensions == ()


def test_rfc9908_53_and_56() -> None:
    # RFC 9908 prints the same base64 for 5.3 and 5.6; the 5.3 prose (a SAN
    # with potato@example.com) does not match its own dump. We assert what
    # the bytes hold: the 5.6 description.
    der53 = vector_der("rfc9908-5.3-specific-san.b64")
    der56 = vector_der("rfc9908-5.6-extensions-and-attributes.b64")
    assert der53 == der56
    attrs = decode_csrattrs(der56)
    assert attrs.entries == (
        RequiredOID(ID_CHALLENGE_PASSWORD),
        RequestedAttribute(EC, (oid_der(SECP521R1),)),
        RequiredOID(FRIENDLY_NAME),
        RequiredOID(FAVOURITE_DRINK),
        RequiredOID(SERIAL_NUMBER),
        RequiredOID(ECDSA_SHA512),
    )
    assert attrs.key_type == KeyTypeHint(EC, curve=SECP521R1)
    assert attrs.challenge_password_required


def test_rfc9908_54_rsa_key_size() -> None:
    attrs = decode_csrattrs(vector_der("rfc9908-5.4-rsa-key-size.b64"))
    assert attrs.entries == (
        RequiredOID(ID_CHALLENGE_PASSWORD),
        RequestedAttribute(RSA, (b"\x02\x02\x10\x00",)),
        RequiredOID("1.2.840.113549.1.1.11"),
    )
    # RFC 9908 5.4.2: "an RSA key that's 4096 bits".
    assert attrs.key_type == KeyTypeHint(RSA, curve=None, key_size=4096)


def test_rfc9908_55_ec_curve() -> None:
    attrs = decode_csrattrs(vector_der("rfc9908-5.5-ec-curve.b64"))
    assert attrs.entries == (
        RequiredOID(ID_CHALLENGE_PASSWORD),
        RequestedAttribute(EC, (oid_der(SECP384R1),)),
        RequiredOID(SERIAL_NUMBER),
        RequiredOID(ECDSA_SHA384),
    )
    assert attrs.key_type == KeyTypeHint(EC, curve=SECP384R1)


# --------------------------------------------------------------------------
# RFC 9908 templates


def section_34_template() -> bytes:
    """RFC 9908 3.4's example, hand-built with the Appendix A OIDs."""
    utf8 = lambda s: tlv(0x0C, s.encode())  # noqa: E731
    subject = tlv(0x30, b"".join([
        tlv(0x31, tlv(0x30, oid_der("2.5.4.3"))),
        tlv(0x31, tlv(0x30, oid_der("2.5.4.11") + utf8("myDept"))),
        tlv(0x31, tlv(0x30, oid_der("2.5.4.11") + utf8("myGroup"))),
    ]))
    spki = tlv(0xA0, tlv(0x30, oid_der(EC) + oid_der("1.2.840.10045.3.1.7")))
    san_value = tlv(0x30, tlv(0x82, b"www.myServer.com") + tlv(0x87, b""))
    ku_value = b"\x03\x02\x03\x88"  # BIT STRING 3 unused bits '10001'B
    ext_templates = tlv(0x30, b"".join([
        tlv(0x30, oid_der(SAN) + tlv(0x04, san_value)),
        tlv(0x30, oid_der("2.5.29.15") + b"\x01\x01\xff" + tlv(0x04, ku_value)),
        tlv(0x30, oid_der("2.5.29.37")),
    ]))
    attributes = tlv(0xA1, tlv(0x30, oid_der(ID_AA_EXTENSION_REQ_TEMPLATE) + tlv(0x31, ext_templates)))
    return tlv(0x30, b"\x02\x01\x00" + subject + spki + attributes)


def test_template_section_34_example() -> None:
    template_der = section_34_template()
    der = encode_csrattrs(CsrAttributes((
        RequiredOID(ID_CHALLENGE_PASSWORD),
        RequestedAttribute(ID_AA_CERTIFICATION_REQUEST_INFO_TEMPLATE, (template_der,)),
    )))
    attrs = decode_csrattrs(der)
    assert encode_csrattrs(attrs) == der
    tpl = attrs.template
    assert tpl is not None
    assert tpl.version == 0
    assert tpl.subject is not None
    assert [[(a.oid, a.text) for a in rdn] for rdn in tpl.subject] == [
        [("2.5.4.3", None)], [("2.5.4.11", "myDept")], [("2.5.4.11", "myGroup")],
    ]
    assert tpl.subject[0][0] == SubjectAttributeTemplate("2.5.4.3", None)
    assert tpl.key_type == KeyTypeHint(EC, curve="1.2.840.10045.3.1.7")
    assert tpl.key_parameters == oid_der("1.2.840.10045.3.1.7")
    assert [(e.oid, e.critical) for e in tpl.extensions] == [
        (SAN, False), ("2.5.29.15", True), ("2.5.29.37", False),
    ]
    assert tpl.extensions[0].value == tlv(0x30, tlv(0x82, b"www.myServer.com") + tlv(0x87, b""))
    assert tpl.extensions[1].value == b"\x03\x02\x03\x88"
    assert tpl.extensions[2].value is None
    assert [a.oid for a in tpl.attributes] == [ID_AA_EXTENSION_REQ_TEMPLATE]
    # The asn1crypto definitions read it directly as well.
    parsed = asn1.CertificationRequestInfoTemplate.load(template_der)
    assert parsed["subject_pk_info"]["algorithm"]["algorithm"].dotted == EC
    assert parsed["attributes"][0]["type"].native == "extension_req_template"
    assert len(parsed["attributes"][0]["values"][0]) == 3


def test_template_rsa_placeholder_and_extension_request() -> None:
    placeholder = keys.RSAPublicKey({"modulus": (1 << 3071) | 1, "public_exponent": 65537}).dump()
    spki = tlv(0xA0, tlv(0x30, oid_der(RSA) + b"\x05\x00") + tlv(0x03, b"\x00" + placeholder))
    ext_req = tlv(0x30, tlv(0x30, oid_der(SAN) + tlv(0x04, tlv(0x30, tlv(0x82, b"a.example")))))
    attributes = tlv(0xA1, tlv(0x30, oid_der(ID_EXTENSION_REQUEST) + tlv(0x31, ext_req)))
    template_der = tlv(0x30, b"\x02\x01\x00" + spki + attributes)
    attrs = decode_csrattrs(encode_csrattrs([
        RequestedAttribute(ID_AA_CERTIFICATION_REQUEST_INFO_TEMPLATE, (template_der,)),
    ]))
    tpl = attrs.template
    assert tpl is not None
    assert tpl.subject is None
    assert tpl.key_type == KeyTypeHint(RSA, None, 3072)
    assert tpl.extensions == (RequestedExtension(SAN, False, tlv(0x30, tlv(0x82, b"a.example"))),)


def test_malformed_template_is_ignored_not_fatal() -> None:
    bad = tlv(0x30, b"\x02\x01\x00" + tlv(0x04, b"junk"))
    attrs = decode_csrattrs(encode_csrattrs([
        RequestedAttribute(ID_AA_CERTIFICATION_REQUEST_INFO_TEMPLATE, (bad,)),
        RequiredOID(ID_CHALLENGE_PASSWORD),
    ]))
    assert attrs.template is None
    assert attrs.challenge_password_required
    assert attrs.attributes[0].values == (bad,)


def test_unknown_and_odd_attributes_are_kept() -> None:
    entries = (
        RequestedAttribute("1.2.3.4.5", (tlv(0x04, b"\x00\x01"), tlv(0xA5, b""))),
        RequestedAttribute(RSA, ()),  # RFC 9908 3.2: values MAY be empty
        RequestedAttribute(ID_EXTENSION_REQUEST, (tlv(0x02, b"\x05"),)),  # not Extensions
    )
    attrs = decode_csrattrs(encode_csrattrs(CsrAttributes(entries)))
    assert attrs.entries == entries
    assert attrs.key_type == KeyTypeHint(RSA)
    assert attrs.requested_extensions == ()


# --------------------------------------------------------------------------
# Encoder arguments and limits


def test_empty_sequence() -> None:
    assert encode_csrattrs(CsrAttributes()) == b"\x30\x00"
    assert encode_csrattrs([]) == b"\x30\x00"
    assert decode_csrattrs(b"\x30\x00") == CsrAttributes(())


def test_values_are_sorted_on_encode() -> None:
    values = (tlv(0x13, b"b"), oid_der("1.2.3"), tlv(0x02, b"\x01"))
    der = encode_csrattrs([RequestedAttribute("1.2.3.4", values)])
    (entry,) = decode_csrattrs(der).entries
    assert isinstance(entry, RequestedAttribute)
    assert entry.values == tuple(sorted(values))


@pytest.mark.parametrize("oid", ["", "1", "3.1", "1.40", "1.2.", "a.b", "1..2", "1.02", 5])
def test_bad_oids_rejected(oid: object) -> None:
    with pytest.raises(LocalProtocolError):
        RequiredOID(oid)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        RequestedAttribute(oid, ())  # type: ignore[arg-type]


@pytest.mark.parametrize("values", [(b"",), (b"\x04\x02\x00",), (b"\x02\x01\x00\x00",), ("x",), [b"\x05\x00"]])
def test_bad_values_rejected(values: object) -> None:
    with pytest.raises(LocalProtocolError):
        RequestedAttribute("1.2.3", values)  # type: ignore[arg-type]


def test_bad_entries_rejected() -> None:
    with pytest.raises(LocalProtocolError):
        CsrAttributes(("1.2.3",))  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        encode_csrattrs(["1.2.3"])  # type: ignore[list-item]
    with pytest.raises(LocalProtocolError):
        encode_csrattrs(b"\x30\x00")  # type: ignore[arg-type]


def test_limits() -> None:
    der = encode_csrattrs([RequiredOID(f"1.2.{i}") for i in range(10)])
    with pytest.raises(MessageTooLarge):
        decode_csrattrs(der, max_entries=9)
    assert len(decode_csrattrs(der, max_entries=10).entries) == 10
    with pytest.raises(MessageTooLarge):
        decode_csrattrs(der, max_size=len(der) - 1)


@pytest.mark.parametrize(
    "der",
    [
        b"", b"\x30", b"\x31\x00", b"\x30\x02\x05\x00",  # NULL is neither OID nor Attribute
        b"\x30\x04\x30\x02\x06\x00",  # Attribute without values
        b"\x30\x00\x00",  # trailing byte
        b"\x30\x06\x30\x04\x06\x01\x2a\x30\x00"[:8],
        b"\x30\x07\x30\x05\x06\x01\x2a\x04\x00",  # values not a SET
    ],
)
def test_malformed_inputs(der: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_csrattrs(der)


# --------------------------------------------------------------------------
# Hypothesis: round trips and garbage

_first_two = st.one_of(
    st.tuples(st.integers(0, 1), st.integers(0, 39)),
    st.tuples(st.just(2), st.integers(0, 10**6)),
)
oids = st.builds(
    lambda head, tail: ".".join(str(x) for x in (*head, *tail)),
    _first_two,
    st.lists(st.integers(0, 2**40), max_size=6),
)
der_values = st.one_of(
    oids.map(oid_der),
    st.integers(-(2**70), 2**70).map(lambda i: bytes(core.Integer(i).dump())),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(
        lambda s: bytes(core.PrintableString(s).dump()) if s.isalnum() else bytes(core.UTF8String(s).dump())
    ),
    st.binary(max_size=40).map(lambda b: bytes(core.OctetString(b).dump())),
    st.just(b"\x05\x00"),
)
entries = st.one_of(
    oids.map(RequiredOID),
    st.builds(
        RequestedAttribute,
        oids,
        st.lists(der_values, max_size=4, unique=True).map(lambda v: tuple(sorted(v))),
    ),
)


@given(st.lists(entries, max_size=12))
def test_roundtrip_random(items: list[RequiredOID | RequestedAttribute]) -> None:
    attrs = CsrAttributes(tuple(items))
    der = encode_csrattrs(attrs)
    decoded = decode_csrattrs(der)
    assert decoded == attrs
    assert encode_csrattrs(decoded) == der
    # The independent asn1crypto view agrees on the entry count and kinds.
    parsed = asn1.CsrAttrs.load(der)
    assert [c.name for c in parsed] == [
        "oid" if isinstance(e, RequiredOID) else "attribute" for e in items
    ]


def _decode_or_decode_error(data: bytes) -> None:
    try:
        attrs = decode_csrattrs(data)
    except DecodeError:
        return
    # Whatever decodes also works through every view without raising.
    attrs.required_oids, attrs.key_type, attrs.requested_extensions
    attrs.template, attrs.challenge_password_required


@given(st.binary(max_size=300))
def test_garbage_only_decode_error(data: bytes) -> None:
    _decode_or_decode_error(data)


@pytest.mark.parametrize("name", VECTORS)
def test_every_truncation_is_decode_error(name: str) -> None:
    der = vector_der(name)
    for cut in range(len(der)):
        with pytest.raises(DecodeError):
            decode_csrattrs(der[:cut])


@given(st.sampled_from(VECTORS + ["template"]), st.integers(0, 10**6))
def test_bit_flips(name: str, bit: int) -> None:
    if name == "template":
        der = encode_csrattrs([RequestedAttribute(
            ID_AA_CERTIFICATION_REQUEST_INFO_TEMPLATE, (section_34_template(),))])
    else:
        der = vector_der(name)
    bit %= 8 * len(der)
    flipped = bytearray(der)
    flipped[bit // 8] ^= 1 << (bit % 8)
    _decode_or_decode_error(bytes(flipped))


# --------------------------------------------------------------------------
# Cross-check with OpenSSL


def test_openssl_asn1parse_accepts_our_encodings(openssl: str, tmp_path: Path) -> None:
    samples = [
        encode_csrattrs(decode_csrattrs(vector_der(name))) for name in VECTORS
    ] + [
        encode_csrattrs([
            RequiredOID(ID_CHALLENGE_PASSWORD),
            RequestedAttribute("2.999.7", (oid_der("1.2.3"), tlv(0x02, b"\x7f"))),
            RequestedAttribute(ID_AA_CERTIFICATION_REQUEST_INFO_TEMPLATE, (section_34_template(),)),
            RequestedAttribute(RSA, ()),
        ]),
        encode_csrattrs([]),
    ]
    for i, der in enumerate(samples):
        path = tmp_path / f"attrs{i}.der"
        path.write_bytes(der)
        result = subprocess.run(
            [openssl, "asn1parse", "-inform", "DER", "-in", str(path)],
            capture_output=True, text=True,
        )
        assert result.returncode == 0, result.stderr
        assert "error" not in result.stdout.lower() and "error" not in result.stderr.lower()
        assert result.stdout.startswith("    0:d=0")
