"""Tests for estproto.codecs.pkcs10: PKCS#10 decode/verify/build and PoP linking.

Every request here is really signed: by cryptography's builder, by our
builder, by ``openssl req`` and by strongSwan ``pki --req``; plus the RFC 7030
Appendix A.3/A.4 examples.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import ipaddress
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from estproto import BadSignature, DecodeError, LocalProtocolError, MessageTooLarge
from estproto.codecs import pkcs10
from estproto.codecs.pkcs10 import (
    OID_ASYMMETRIC_DECRYPT_KEY_IDENTIFIER,
    OID_CHALLENGE_PASSWORD,
    OID_DECRYPT_KEY_IDENTIFIER,
    OID_EST_IDENTITY_LINKING,
    OID_EXTENSION_REQUEST,
    OID_SMIME_CAPABILITIES,
    CertificationRequest,
    RequestedExtension,
    build_csr,
    channel_binding_password,
    decode_csr,
    matches_channel_binding,
)

from pki import KEY_KINDS, der, make_csr, make_key, name
from vectors import vector_der

AES128_WRAP = "2.16.840.1.101.3.4.1.5"
AES256_WRAP = "2.16.840.1.101.3.4.1.45"
SHA1_WITH_RSA = "1.2.840.113549.1.1.5"
SAN_OID = "2.5.29.17"


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {kind: make_key(kind) for kind in KEY_KINDS}


def spki(key: Any) -> bytes:
    return bytes(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ))


def key_pem(key: Any) -> bytes:
    return bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))


# A tiny DER encoder for hand-made (malformed but validly signed) requests.
def enc(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + content


def oid(dotted: str) -> bytes:
    return enc(0x06, _oid_body(dotted))


def _oid_body(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return bytes(out)


def attribute(type_oid: str, *values: bytes) -> bytes:
    return enc(0x30, oid(type_oid) + enc(0x31, b"".join(values)))


def signed_request(
    key: ec.EllipticCurvePrivateKey,
    attributes: list[bytes],
    *,
    version: bytes = b"\x02\x01\x00",
    subject: x509.Name | None = None,
) -> bytes:
    """An ECDSA-SHA256-signed request with attributes in the order given."""
    info = enc(
        0x30,
        version + (subject or name("hand-made")).public_bytes() + spki(key)
        + enc(0xA0, b"".join(attributes)),
    )
    sig = key.sign(info, ec.ECDSA(hashes.SHA256()))
    alg = enc(0x30, oid("1.2.840.10045.4.3.2"))
    return enc(0x30, info + alg + enc(0x03, b"\x00" + sig))


def printable(text: str) -> bytes:
    return enc(0x13, text.encode())


# ---------------------------------------------------------------- key types


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_cryptography_made_csr_decodes_and_verifies(keys: dict[str, Any], kind: str) -> None:
    key = keys[kind]
    req = make_csr(key, cn="dev-" + kind, sans=["a.example", "b.example"], challenge_password="pw+/=")
    csr = decode_csr(der(req))
    assert csr.der == der(req)
    assert csr.info_der == req.tbs_certrequest_bytes
    assert csr.subject == req.subject
    assert csr.subject_der == req.subject.public_bytes()
    assert csr.public_key == key.public_key()
    assert csr.public_key_der == spki(key)
    assert csr.signature_algorithm_oid == req.signature_algorithm_oid.dotted_string
    assert csr.subject_alt_names == (x509.DNSName("a.example"), x509.DNSName("b.example"))
    assert csr.challenge_password == "pw+/="
    assert csr.est_identity_linking is None
    assert [e.oid for e in csr.extensions] == [SAN_OID]
    assert csr.extensions[0].value_der == req.extensions[0].value.public_bytes()
    assert {a for a, _ in csr.attributes} == {OID_CHALLENGE_PASSWORD, OID_EXTENSION_REQUEST}


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_builder_every_key_type(keys: dict[str, Any], kind: str) -> None:
    key = keys[kind]
    sans = (
        x509.DNSName("dev.example"),
        x509.IPAddress(ipaddress.ip_address("192.0.2.7")),
        x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
        x509.RFC822Name("dev@example.com"),
        x509.UniformResourceIdentifier("https://dev.example/x"),
        x509.DirectoryName(name("dir")),
        x509.OtherName(x509.ObjectIdentifier("1.3.6.1.5.5.7.8.4"), b"\x0c\x03abc"),
        x509.RegisteredID(x509.ObjectIdentifier("1.2.3.4")),
    )
    data = build_csr(
        key, name("built-" + kind), subject_alt_names=sans, challenge_password="abc",
        est_identity_linking="linking", decrypt_key_identifier=b"\x01\x02",
        asymmetric_decrypt_key_identifier=b"\x03", smime_capabilities=[AES128_WRAP, AES256_WRAP],
    )
    csr = decode_csr(data)
    assert csr.subject == name("built-" + kind)
    assert csr.public_key == key.public_key()
    assert csr.subject_alt_names == sans
    assert csr.challenge_password == "abc"
    assert csr.est_identity_linking == "linking"
    assert csr.decrypt_key_identifier == b"\x01\x02"
    assert csr.asymmetric_decrypt_key_identifier == b"\x03"
    assert csr.smime_capabilities == (AES128_WRAP, AES256_WRAP)
    # cryptography (strict DER) agrees the builder's output is well formed and signed.
    req = x509.load_der_x509_csr(data)
    assert req.is_signature_valid
    assert req.tbs_certrequest_bytes == csr.info_der
    assert tuple(req.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) == sans


@pytest.mark.parametrize(
    "kind,algo,expected",
    [
        ("rsa2048", hashes.SHA256(), "1.2.840.113549.1.1.11"),
        ("rsa2048", hashes.SHA384(), "1.2.840.113549.1.1.12"),
        ("rsa2048", hashes.SHA512(), "1.2.840.113549.1.1.13"),
        ("p256", None, "1.2.840.10045.4.3.2"),
        ("p256", hashes.SHA512(), "1.2.840.10045.4.3.4"),
        ("p384", None, "1.2.840.10045.4.3.3"),
        ("p521", None, "1.2.840.10045.4.3.4"),
        ("ed25519", None, "1.3.101.112"),
        ("ed448", None, "1.3.101.113"),
    ],
)
def test_builder_hash_choices(keys: dict[str, Any], kind: str, algo: Any, expected: str) -> None:
    csr = decode_csr(build_csr(keys[kind], name("h"), hash_algorithm=algo))
    assert csr.signature_algorithm_oid == expected


@pytest.mark.parametrize(
    "kind,kwargs",
    [
        ("rsa2048", {"hash_algorithm": hashes.SHA1()}),
        ("p256", {"hash_algorithm": hashes.MD5()}),
        ("ed25519", {"hash_algorithm": hashes.SHA256()}),
        ("p256", {"rsa_pss": True}),
        ("p256", {"challenge_password": ""}),
        ("p256", {"challenge_password": "x" * 256}),
        ("p256", {"smime_capabilities": ["not.an.oid"]}),
        ("p256", {"decrypt_key_identifier": "text"}),
        ("p256", {"subject_alt_names": [x509.DNSName("a")],
                  "extensions": [RequestedExtension(SAN_OID, False, b"\x30\x00")]}),
        ("p256", {"extra_attributes": [(OID_SMIME_CAPABILITIES, [])]}),
    ],
)
def test_builder_rejects_bad_arguments(keys: dict[str, Any], kind: str, kwargs: Any) -> None:
    with pytest.raises(LocalProtocolError):
        build_csr(keys[kind], name("bad"), **kwargs)


def test_builder_string_types(keys: dict[str, Any]) -> None:
    # RFC 7894 3: PrintableString whenever possible, else UTF8String.
    csr = decode_csr(build_csr(keys["p256"], name("s"), challenge_password="AZaz09 '()+,-./:=?",
                               est_identity_linking="caf\u00e9"))
    raw = dict(csr.attributes)
    assert raw[OID_CHALLENGE_PASSWORD] == (printable("AZaz09 '()+,-./:=?"),)
    assert raw[OID_EST_IDENTITY_LINKING] == (enc(0x0C, "caf\u00e9".encode()),)
    assert csr.est_identity_linking == "caf\u00e9"
    # The key identifiers are OCTET STRINGs, SMIMECapabilities a SEQUENCE OF SEQUENCE.
    csr = decode_csr(build_csr(keys["p256"], name("s"), decrypt_key_identifier=b"kek",
                               smime_capabilities=[AES128_WRAP]))
    raw = dict(csr.attributes)
    assert raw[OID_DECRYPT_KEY_IDENTIFIER] == (enc(0x04, b"kek"),)
    assert raw[OID_SMIME_CAPABILITIES] == (enc(0x30, enc(0x30, oid(AES128_WRAP))),)


def test_builder_extensions_and_extra_attributes(keys: dict[str, Any]) -> None:
    ku = x509.Extension(
        x509.oid.ExtensionOID.KEY_USAGE, True,
        x509.KeyUsage(True, False, False, False, False, False, False, False, False),
    )
    raw_ext = RequestedExtension("1.2.3.4.5", False, b"\x05\x00")
    extra = ("1.2.3.99", [printable("one"), printable("two")])
    csr = decode_csr(build_csr(keys["p256"], name("e"), extensions=[ku, raw_ext],
                               extra_attributes=[extra]))
    assert csr.extensions == (
        RequestedExtension("2.5.29.15", True, ku.value.public_bytes()), raw_ext,
    )
    assert csr.get_extension("1.2.3.4.5") == raw_ext
    assert csr.get_extension(SAN_OID) is None
    assert csr.subject_alt_names == ()
    assert dict(csr.attributes)["1.2.3.99"] == (printable("one"), printable("two"))


# ---------------------------------------------------------------- RSA-PSS


@pytest.mark.parametrize("algo", [hashes.SHA256(), hashes.SHA384(), hashes.SHA512()])
def test_builder_rsa_pss(keys: dict[str, Any], algo: hashes.HashAlgorithm) -> None:
    data = build_csr(keys["rsa2048"], name("pss"), rsa_pss=True, hash_algorithm=algo)
    csr = decode_csr(data)
    assert csr.signature_algorithm_oid == "1.2.840.113549.1.1.10"
    req = x509.load_der_x509_csr(data)
    assert req.is_signature_valid
    params = req.signature_algorithm_parameters
    assert isinstance(params, padding.PSS)


def test_cryptography_made_pss_and_salt_mismatch(keys: dict[str, Any]) -> None:
    key = keys["rsa2048"]
    # Signed with salt length 32; the parameters are then made to say 33.
    req = x509.CertificateSigningRequestBuilder().subject_name(name("pss")).sign(
        key, hashes.SHA256(), rsa_padding=padding.PSS(padding.MGF1(hashes.SHA256()), 32)
    )
    data = der(req)
    decode_csr(data)
    salt = b"\xa2\x03\x02\x01\x20"  # [2] INTEGER 32
    assert data.count(salt) == 1
    with pytest.raises(BadSignature):
        decode_csr(data.replace(salt, b"\xa2\x03\x02\x01\x21"))
    # MGF1 hash changed to SHA-384: parsed and honoured, so no longer verifies.
    sha256 = oid("2.16.840.1.101.3.4.2.1")
    assert data.count(sha256) == 2
    idx = data.rindex(sha256)
    changed = data[:idx] + oid("2.16.840.1.101.3.4.2.2") + data[idx + len(sha256):]
    with pytest.raises(BadSignature):
        decode_csr(changed)
    # Garbage parameters are an unknown algorithm, not a crash.
    with pytest.raises(BadSignature):
        decode_csr(data.replace(salt, b"\xa2\x03\x04\x01\x20"))


# ---------------------------------------------------------------- RFC vectors


def test_rfc7030_a3_enroll_request() -> None:
    data = vector_der("rfc7030-A3-enroll-request-csr.b64")
    csr = decode_csr(data)  # sha1WithRSAEncryption, accepted for this example
    assert len(data) == 649
    assert csr.signature_algorithm_oid == SHA1_WITH_RSA
    assert csr.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "demostep4 1368141352")])
    assert csr.subject.rfc4514_string() == "CN=demostep4 1368141352"
    assert csr.subject_der == data[11:44]
    assert csr.info_der == data[4:373]
    assert isinstance(csr.public_key, rsa.RSAPublicKey)
    assert csr.public_key.key_size == 2048
    assert csr.public_key.public_numbers().e == 65537
    assert csr.public_key_der == data[44:338]
    assert csr.challenge_password == "+rrCir/7+EYu50T4"
    assert csr.attributes == ((OID_CHALLENGE_PASSWORD, (printable("+rrCir/7+EYu50T4"),)),)
    assert csr.extensions == ()
    assert csr.subject_alt_names == ()
    assert csr.est_identity_linking is None
    assert csr.decrypt_key_identifier is None
    assert csr.smime_capabilities == ()
    # The password is the base64 of the example's 12-byte tls-unique.
    binding = base64.b64decode("+rrCir/7+EYu50T4")
    assert matches_channel_binding(csr, binding) is True
    assert matches_channel_binding(csr, binding[:-1] + b"\x00") is False


def test_rfc7030_a4_serverkeygen_request() -> None:
    data = vector_der("rfc7030-A4-serverkeygen-request-csr.b64")
    csr = decode_csr(data)
    assert len(data) == 709
    assert csr.signature_algorithm_oid == SHA1_WITH_RSA
    assert [(a.oid, a.value) for a in csr.subject] == [
        (NameOID.COMMON_NAME, "serverKeyGen req by client in demo step 12 1368141955"),
        (NameOID.SERIAL_NUMBER, "PID:Widget SN:10"),
    ]
    assert csr.subject.rfc4514_string() == (
        "2.5.4.5=PID:Widget SN:10,CN=serverKeyGen req by client in demo step 12 1368141955"
    )
    assert isinstance(csr.public_key, rsa.RSAPublicKey)
    assert csr.public_key.key_size == 2048
    assert csr.challenge_password == "dFsAXmJnjokBtDvr"
    assert csr.extensions == ()
    assert csr.decrypt_key_identifier is None
    assert csr.asymmetric_decrypt_key_identifier is None
    assert csr.info_der == data[4:433]


def test_sha1_only_for_rsa(keys: dict[str, Any]) -> None:
    # ecdsa-with-SHA1 (1.2.840.10045.4.1) is refused even with a valid signature.
    key = keys["p256"]
    info = enc(0x30, b"\x02\x01\x00" + name("x").public_bytes() + spki(key) + enc(0xA0, b""))
    sig = key.sign(info, ec.ECDSA(hashes.SHA1()))
    data = enc(0x30, info + enc(0x30, oid("1.2.840.10045.4.1")) + enc(0x03, b"\x00" + sig))
    with pytest.raises(BadSignature):
        decode_csr(data)
    assert decode_csr(data, verify=False).signature_algorithm_oid == "1.2.840.10045.4.1"


# ---------------------------------------------------------------- tampering


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_tampered_info_and_signature(keys: dict[str, Any], kind: str) -> None:
    data = build_csr(keys[kind], name("tamper-me"), challenge_password="pw")
    decode_csr(data)
    i = data.index(b"tamper-me")
    flipped_info = data[:i] + b"T" + data[i + 1:]
    with pytest.raises(BadSignature):
        decode_csr(flipped_info)
    decode_csr(flipped_info, verify=False)  # still well formed
    flipped_sig = data[:-1] + bytes((data[-1] ^ 0x01,))
    with pytest.raises(BadSignature):
        decode_csr(flipped_sig)
    j = data.index(b"pw")
    with pytest.raises(BadSignature):
        decode_csr(data[:j] + b"pW" + data[j + 2:])


def test_wrong_algorithm_for_key(keys: dict[str, Any]) -> None:
    data = build_csr(keys["rsa2048"], name("x"))
    sha256_rsa = oid("1.2.840.113549.1.1.11")
    # Claim ECDSA for an RSA key, and md5WithRSAEncryption.
    info = decode_csr(data).info_der
    old = enc(0x30, sha256_rsa + b"\x05\x00")
    tail = data[data.index(old, len(info)) + len(old):]
    for alg in (enc(0x30, oid("1.2.840.10045.4.3.2")),
                enc(0x30, oid("1.2.840.113549.1.1.4") + b"\x05\x00")):
        changed = enc(0x30, info + alg + tail)
        decode_csr(changed, verify=False)
        with pytest.raises(BadSignature):
            decode_csr(changed)


def test_unsupported_curve_refused() -> None:
    key = ec.generate_private_key(ec.SECP256K1())
    info = enc(0x30, b"\x02\x01\x00" + name("k1").public_bytes() + spki(key) + enc(0xA0, b""))
    sig = key.sign(info, ec.ECDSA(hashes.SHA256()))
    data = enc(0x30, info + enc(0x30, oid("1.2.840.10045.4.3.2")) + enc(0x03, b"\x00" + sig))
    with pytest.raises(BadSignature):
        decode_csr(data)


# ---------------------------------------------------------------- malformed


def test_malformed_structures(keys: dict[str, Any]) -> None:
    key = keys["p256"]
    good = signed_request(key, [attribute(OID_CHALLENGE_PASSWORD, printable("ok"))])
    assert decode_csr(good).challenge_password == "ok"
    cases = {
        "version 1": signed_request(key, [], version=b"\x02\x01\x01"),
        "duplicate attribute": signed_request(key, [
            attribute(OID_CHALLENGE_PASSWORD, printable("a")),
            attribute(OID_CHALLENGE_PASSWORD, printable("b")),
        ]),
        "two passwords": signed_request(key, [
            attribute(OID_CHALLENGE_PASSWORD, printable("a"), printable("b"))
        ]),
        "empty values": signed_request(key, [attribute("1.2.3.4")]),
        "password not a string": signed_request(key, [
            attribute(OID_CHALLENGE_PASSWORD, b"\x02\x01\x05")
        ]),
        "password too long": signed_request(key, [
            attribute(OID_CHALLENGE_PASSWORD, printable("x" * 256))
        ]),
        "bad PrintableString": signed_request(key, [
            attribute(OID_CHALLENGE_PASSWORD, printable("a@b"))
        ]),
        "bad UTF-8": signed_request(key, [attribute(OID_EST_IDENTITY_LINKING, enc(0x0C, b"\xff"))]),
        "key id not OCTET STRING": signed_request(key, [
            attribute(OID_DECRYPT_KEY_IDENTIFIER, printable("x"))
        ]),
        "asym key id two values": signed_request(key, [
            attribute(OID_ASYMMETRIC_DECRYPT_KEY_IDENTIFIER, enc(0x04, b"a"), enc(0x04, b"b"))
        ]),
        "smime caps not OIDs": signed_request(key, [
            attribute(OID_SMIME_CAPABILITIES, enc(0x30, enc(0x30, b"\x02\x01\x00")))
        ]),
        "duplicate extension": signed_request(key, [attribute(OID_EXTENSION_REQUEST, enc(0x30,
            enc(0x30, oid("1.2.3") + enc(0x04, b"\x05\x00")) * 2))]),
        "bad critical flag": signed_request(key, [attribute(OID_EXTENSION_REQUEST, enc(0x30,
            enc(0x30, oid("1.2.3") + b"\x01\x01\x01" + enc(0x04, b"\x05\x00"))))]),
        "bad SAN": signed_request(key, [attribute(OID_EXTENSION_REQUEST, enc(0x30,
            enc(0x30, oid(SAN_OID) + enc(0x04, b"\x30\x03\x87\x01\x00"))))]),
        "attribute not a SEQUENCE": signed_request(key, [enc(0x31, b"")]),
        "trailing bytes": good + b"\x00",
        "indefinite length": b"\x30\x80" + good[2:] + b"\x00\x00",
        "non-minimal length": b"\x30\x82\x00" + good[1:] if len(good) < 0x80 else
            b"\x30\x83\x00" + good[2:],
        "empty": b"",
        "not a SEQUENCE": b"\x04\x00",
    }
    for label, data in cases.items():
        with pytest.raises(DecodeError) as info:
            decode_csr(data)
        assert not isinstance(info.value, BadSignature), label


def test_unsorted_attributes_accepted(keys: dict[str, Any]) -> None:
    key = keys["p256"]
    attrs = [
        attribute(OID_SMIME_CAPABILITIES, enc(0x30, enc(0x30, oid(AES128_WRAP)))),
        attribute(OID_CHALLENGE_PASSWORD, printable("pw")),
        attribute("1.3.6.1.4.1.99999.1", enc(0x0C, b"unknown")),
    ]
    data = signed_request(key, attrs)
    with pytest.raises(ValueError):
        x509.load_der_x509_csr(data)
    csr = decode_csr(data)
    assert csr.smime_capabilities == (AES128_WRAP,)
    assert [a for a, _ in csr.attributes] == [
        OID_SMIME_CAPABILITIES, OID_CHALLENGE_PASSWORD, "1.3.6.1.4.1.99999.1"
    ]
    assert csr.attributes[2][1] == (enc(0x0C, b"unknown"),)


def test_size_limit(keys: dict[str, Any]) -> None:
    data = build_csr(keys["p256"], name("x"))
    with pytest.raises(MessageTooLarge):
        decode_csr(data, max_size=len(data) - 1)
    decode_csr(data, max_size=len(data))


def test_serverkeygen_verify_false(keys: dict[str, Any]) -> None:
    # RFC 7030 4.4.1: the server MUST ignore the signature: verify=False.
    data = build_csr(keys["p256"], name("skg"), decrypt_key_identifier=b"kid",
                     smime_capabilities=[AES256_WRAP])
    broken = data[:-1] + bytes((data[-1] ^ 0xFF,))
    csr = decode_csr(broken, verify=False)
    assert csr.decrypt_key_identifier == b"kid"
    assert csr.smime_capabilities == (AES256_WRAP,)


def test_both_subject_routes_agree(keys: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    subject = x509.Name([
        x509.RelativeDistinguishedName([
            x509.NameAttribute(NameOID.COMMON_NAME, "multi"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "valued"),
        ]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "CH")]),
        x509.RelativeDistinguishedName([
            x509.NameAttribute(NameOID.EMAIL_ADDRESS, "a@example.com")
        ]),
        x509.RelativeDistinguishedName([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "\u00dcmlaut")
        ]),
    ])
    data = build_csr(keys["p256"], subject)
    direct = decode_csr(data)
    monkeypatch.setattr(pkcs10, "_NAME_FROM_BYTES", None)
    wrapped = decode_csr(data)
    assert direct == wrapped
    assert direct.subject == subject
    assert [a._type for a in direct.subject] == [a._type for a in wrapped.subject]


# ---------------------------------------------------------------- key identifier


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_key_identifier_is_cryptographys(keys: dict[str, Any], kind: str) -> None:
    # The issuer's subjectKeyIdentifier comes from this: it must be the
    # value cryptography computes from the key itself, for every key type.
    csr = decode_csr(der(make_csr(keys[kind], cn="ski")))
    expected = x509.SubjectKeyIdentifier.from_public_key(keys[kind].public_key()).digest
    assert pkcs10.key_identifier(csr) == expected


def test_key_identifier_of_a_compressed_point(keys: dict[str, Any]) -> None:
    # cryptography hashes the uncompressed point whatever the request
    # carried: the compressed bits must not be hashed as they are.
    public = keys["p256"].public_key()
    compressed = public.public_bytes(serialization.Encoding.X962,
                                     serialization.PublicFormat.CompressedPoint)
    plain = spki(keys["p256"])
    algorithm = plain[2:2 + 2 + plain[3]]  # the AlgorithmIdentifier TLV
    compressed_spki = enc(0x30, algorithm + enc(0x03, b"\x00" + compressed))
    assert serialization.load_der_public_key(compressed_spki) == public
    csr = dataclasses.replace(decode_csr(der(make_csr(keys["p256"], cn="ski"))),
                              public_key_der=compressed_spki)
    expected = x509.SubjectKeyIdentifier.from_public_key(public).digest
    assert pkcs10.key_identifier(csr) == expected
    assert hashlib.sha1(compressed).digest() != expected


def test_key_identifier_of_a_hand_made_request(keys: dict[str, Any]) -> None:
    # A request built by hand with a key but no usable SPKI DER still gets
    # cryptography's value, not an error.
    expected = x509.SubjectKeyIdentifier.from_public_key(keys["ed25519"].public_key()).digest
    made = decode_csr(der(make_csr(keys["ed25519"], cn="ski")))
    for bad in (b"\x30\x00", b"\x30\x04\x30\x00\x03\x00", b"\x30\x05\x30\x00\x03\x01\x07", b""):
        csr = dataclasses.replace(made, public_key_der=bad)
        assert pkcs10.key_identifier(csr) == expected, bad


# ---------------------------------------------------------------- PoP linking


def test_channel_binding_password() -> None:
    assert channel_binding_password(b"\xfa\xba\xc2\x8a\xbf\xfb\xf8F.\xe7D\xf8") == "+rrCir/7+EYu50T4"
    assert channel_binding_password(b"\x00") == "AA=="
    assert len(channel_binding_password(b"x" * 189)) == 252
    for bad in (b"", b"x" * 192):
        with pytest.raises(LocalProtocolError):
            channel_binding_password(bad)


def test_matches_channel_binding(keys: dict[str, Any]) -> None:
    key = keys["ed25519"]
    binding = bytes(range(32))
    good = channel_binding_password(binding)

    def csr(**kw: Any) -> CertificationRequest:
        return decode_csr(build_csr(key, name("pop"), **kw))

    assert matches_channel_binding(csr(), binding) is None
    assert matches_channel_binding(csr(otp_challenge="123456"), binding) is None
    assert matches_channel_binding(csr(challenge_password=good), binding) is True
    assert matches_channel_binding(csr(est_identity_linking=good), binding) is True
    assert matches_channel_binding(csr(challenge_password=good, est_identity_linking=good), binding)
    # RFC 7894 4: every challenge attribute present must pass.
    assert matches_channel_binding(
        csr(challenge_password="enrollment-secret", est_identity_linking=good), binding
    ) is False
    assert matches_channel_binding(csr(challenge_password=good), binding[:-1] + b"\x00") is False
    # Exactly the RFC 4648 section 4 form: no added whitespace, no missing padding.
    assert matches_channel_binding(csr(challenge_password=good + " "), binding) is False
    assert matches_channel_binding(csr(challenge_password=good.rstrip("=")), binding) is False
    assert matches_channel_binding(csr(challenge_password=good), b"") is False


# ---------------------------------------------------------------- external tools


OPENSSL_REQ_CNF = """\
[req]
prompt = no
distinguished_name = dn
attributes = attrs
[dn]
CN = openssl-dev
O = Example
[attrs]
challengePassword = s3cret+/=
"""


@pytest.mark.parametrize("kind", ["rsa2048", "p256", "ed25519"])
def test_openssl_req_csrs(openssl: str, tmp_path: Path, keys: dict[str, Any], kind: str) -> None:
    (tmp_path / "key.pem").write_bytes(key_pem(keys[kind]))
    (tmp_path / "req.cnf").write_text(OPENSSL_REQ_CNF)
    subprocess.run(
        [openssl, "req", "-new", "-key", str(tmp_path / "key.pem"), "-config",
         str(tmp_path / "req.cnf"), "-addext",
         "subjectAltName=DNS:a.example,IP:10.0.0.1,email:x@example.com,URI:https://x.example/",
         "-outform", "DER", "-out", str(tmp_path / "req.der")],
        check=True, capture_output=True,
    )
    csr = decode_csr((tmp_path / "req.der").read_bytes())
    assert csr.subject == x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "openssl-dev"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
    ])
    assert csr.public_key == keys[kind].public_key()
    assert csr.challenge_password == "s3cret+/="
    assert csr.subject_alt_names == (
        x509.DNSName("a.example"),
        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
        x509.RFC822Name("x@example.com"),
        x509.UniformResourceIdentifier("https://x.example/"),
    )


def _strongswan_req(pki: str, tmp_path: Path, key_type: str, size: str) -> bytes:
    key = subprocess.run(
        [pki, "--gen", "--type", key_type, "--size", size, "--outform", "der"],
        check=True, capture_output=True,
    ).stdout
    (tmp_path / "key.der").write_bytes(key)
    return subprocess.run(
        [pki, "--req", "--in", str(tmp_path / "key.der"), "--type", key_type,
         "--dn", "C=CH, O=strongSwan, CN=sw-dev", "--san", "sw.example", "--san", "10.1.2.3",
         "--password", "pop+linking/=", "--outform", "der"],
        check=True, capture_output=True,
    ).stdout


@pytest.mark.parametrize("key_type,size", [("ecdsa", "256"), ("rsa", "2048")])
def test_strongswan_req_unsorted_set(
    strongswan_pki: str, tmp_path: Path, key_type: str, size: str
) -> None:
    data = _strongswan_req(strongswan_pki, tmp_path, key_type, size)
    # strongSwan writes extensionRequest before challengePassword: not DER order.
    with pytest.raises(ValueError, match="InvalidSetOrdering"):
        x509.load_der_x509_csr(data)
    csr = decode_csr(data)
    assert [a for a, _ in csr.attributes] == [OID_EXTENSION_REQUEST, OID_CHALLENGE_PASSWORD]
    assert csr.challenge_password == "pop+linking/="
    assert csr.subject.rfc4514_string() == "CN=sw-dev,O=strongSwan,C=CH"
    assert csr.subject_alt_names == (
        x509.DNSName("sw.example"), x509.IPAddress(ipaddress.ip_address("10.1.2.3")),
    )
    expected_key = rsa.RSAPublicKey if key_type == "rsa" else ec.EllipticCurvePublicKey
    assert isinstance(csr.public_key, expected_key)
    tampered = data[:-1] + bytes((data[-1] ^ 1,))
    with pytest.raises(BadSignature):
        decode_csr(tampered)


@pytest.mark.parametrize("kind", [*KEY_KINDS, "rsa-pss"])
def test_openssl_verifies_builder_output(
    openssl: str, tmp_path: Path, keys: dict[str, Any], kind: str
) -> None:
    if kind == "rsa-pss":
        data = build_csr(keys["rsa2048"], name("pss"), rsa_pss=True, challenge_password="pw")
    else:
        data = build_csr(
            keys[kind], name("ossl-" + kind), subject_alt_names=[x509.DNSName("o.example")],
            challenge_password="pw", est_identity_linking="link",
            decrypt_key_identifier=b"id", smime_capabilities=[AES128_WRAP],
        )
    (tmp_path / "req.der").write_bytes(data)
    out = subprocess.run(
        [openssl, "req", "-verify", "-noout", "-inform", "DER", "-in", str(tmp_path / "req.der")],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "verify OK" in out.stdout + out.stderr


# ---------------------------------------------------------------- hypothesis

_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
# 16 characters: cryptography caps CN at 64 (counted in UTF-8 bytes or so).
_text = st.text(
    st.characters(codec="utf-8", blacklist_characters="\x00"), min_size=1, max_size=16,
)
_general_names = st.one_of(
    st.builds(lambda ls: x509.DNSName(".".join(ls)), st.lists(_label, min_size=1, max_size=4)),
    st.builds(lambda b: x509.IPAddress(ipaddress.IPv4Address(b)), st.binary(min_size=4, max_size=4)),
    st.builds(lambda b: x509.IPAddress(ipaddress.IPv6Address(b)), st.binary(min_size=16, max_size=16)),
    st.builds(lambda a, d: x509.RFC822Name(f"{a}@{d}.example"), _label, _label),
    st.builds(lambda p: x509.UniformResourceIdentifier(f"https://h.example/{p}"), _label),
    st.builds(lambda t: x509.DirectoryName(name(t)), _text),
    st.builds(lambda n: x509.RegisteredID(x509.ObjectIdentifier(f"1.3.6.1.4.1.{n}")),
              st.integers(0, 2**40)),
    st.builds(lambda b: x509.OtherName(x509.ObjectIdentifier("1.3.6.1.5.5.7.8.4"),
                                       enc(0x04, b)), st.binary(max_size=20)),
)
_passwords = st.text(
    st.characters(codec="utf-8"), min_size=1, max_size=255
)


@given(
    cn=_text, org=st.none() | _text,
    sans=st.lists(_general_names, max_size=5, unique=True),
    password=st.none() | _passwords, linking=st.none() | st.binary(min_size=1, max_size=64),
    kid=st.none() | st.binary(max_size=40),
    caps=st.lists(st.integers(0, 2**32).map(lambda n: f"2.16.840.1.101.3.4.1.{n}"), max_size=3),
    kind=st.sampled_from(["p256", "ed25519"]),
)
def test_roundtrip(
    keys: dict[str, Any], cn: str, org: str | None, sans: list[x509.GeneralName],
    password: str | None, linking: bytes | None, kid: bytes | None, caps: list[str], kind: str,
) -> None:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    subject = x509.Name(attrs)
    link = channel_binding_password(linking) if linking is not None else None
    data = build_csr(
        keys[kind], subject, subject_alt_names=sans, challenge_password=password,
        est_identity_linking=link, asymmetric_decrypt_key_identifier=kid,
        smime_capabilities=caps,
    )
    csr = decode_csr(data)
    assert csr.subject == subject
    assert csr.subject_alt_names == tuple(sans)
    assert csr.challenge_password == password
    assert csr.est_identity_linking == link
    assert csr.asymmetric_decrypt_key_identifier == kid
    assert csr.smime_capabilities == tuple(caps)
    if linking is not None:
        assert matches_channel_binding(csr, linking) is (password is None or password == link)
    # The builder's output is strict DER: cryptography reads the same thing.
    req = x509.load_der_x509_csr(data)
    assert req.subject == csr.subject
    assert req.tbs_certrequest_bytes == csr.info_der
    assert req.is_signature_valid


@given(st.binary(max_size=600))
def test_garbage_only_decode_error(data: bytes) -> None:
    try:
        decode_csr(data)
    except DecodeError:
        pass


@given(st.binary(max_size=300))
def test_garbage_inside_a_sequence(body: bytes) -> None:
    try:
        decode_csr(enc(0x30, body))
    except DecodeError:
        pass


@pytest.fixture(scope="module")
def sample_csr(keys: dict[str, Any]) -> bytes:
    return build_csr(
        keys["p256"], name("mutate"), subject_alt_names=[x509.DNSName("m.example"),
        x509.IPAddress(ipaddress.ip_address("10.9.8.7"))], challenge_password="pw",
        decrypt_key_identifier=b"k", smime_capabilities=[AES128_WRAP],
    )


def test_every_truncation_is_decode_error(sample_csr: bytes) -> None:
    for n in range(len(sample_csr)):
        with pytest.raises(DecodeError):
            decode_csr(sample_csr[:n])


@given(data=st.data())
def test_single_byte_mutations(sample_csr: bytes, data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(sample_csr) - 1))
    b = data.draw(st.integers(0, 255).filter(lambda v: v != sample_csr[i]))
    mutated = sample_csr[:i] + bytes((b,)) + sample_csr[i + 1:]
    for verify in (True, False):
        try:
            csr = decode_csr(mutated, verify=verify)
        except DecodeError:
            continue
        assert csr.der == mutated


def test_huge_oid_is_refused_quickly(keys: dict[str, Any]) -> None:
    huge = enc(0x06, b"\x81" * 200_000 + b"\x01")
    data = signed_request(keys["p256"], [enc(0x30, huge + enc(0x31, printable("x")))])
    with pytest.raises(DecodeError, match="OBJECT IDENTIFIER"):
        decode_csr(data)


def test_subject_cryptography_cannot_represent(keys: dict[str, Any]) -> None:
    # A commonName holding a BIT STRING: cryptography raises TypeError; we DecodeError.
    key = keys["p256"]
    subject = enc(0x30, enc(0x31, enc(0x30, oid("2.5.4.3") + b"\x03\x02\x00\x41")))
    info = enc(0x30, b"\x02\x01\x00" + subject + spki(key) + enc(0xA0, b""))
    sig = key.sign(info, ec.ECDSA(hashes.SHA256()))
    data = enc(0x30, info + enc(0x30, oid("1.2.840.10045.4.3.2")) + enc(0x03, b"\x00" + sig))
    with pytest.raises(DecodeError):
        decode_csr(data)
