"""Tests for estproto.codecs.serverkey: the /serverkeygen private key part.

RFC 7030 section 4.4.2 (application/pkcs8, and SignedData in EnvelopedData),
RFC 5958 (OneAsymmetricKey, AsymmetricKeyPackage), RFC 5652 section 6
(kekri, ktri), RFC 3394 key wrap, RFC 4055 RSAES-OAEP-params. Real keys,
real signatures; openssl as the independent peer in both directions.
"""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path
from typing import Union, cast

import pytest
from asn1crypto import cms, keys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from estproto import BadSignature, DecodeError, LocalProtocolError, MessageTooLarge
from estproto.asn1.keypackage import (
    A_KEY_PACKAGE_NAME,
    ID_CT_KP_A_KEY_PACKAGE,
    AsymmetricKeyPackage,
    OneAsymmetricKey,
)
from estproto.codecs import serverkey as sk
from estproto.codecs import signeddata
from pki import KEY_KINDS, make_ca, make_key, name, pem
from vectors import vector_der

# -- a pool of keys, made once (RSA keygen is slow) -----------------------------

KEYS = {kind: make_key(kind) for kind in KEY_KINDS}
CA_CERT, CA_KEY = make_ca("Key Generator CA")
OTHER_CA_CERT, OTHER_CA_KEY = make_ca("Someone Else")
RECIPIENT_KEY = cast(rsa.RSAPrivateKey, make_key("rsa2048"))
OTHER_RSA_KEY = cast(rsa.RSAPrivateKey, KEYS["rsa2048"])
KEK = bytes(range(32))
KEK_ID = b"\x01\x02 decrypt-key-id"


def _recipient_cert(key: rsa.RSAPrivateKey) -> x509.Certificate:
    """An end-entity certificate for key transport, with an SKI extension."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(name("key transport recipient"))
        .issuer_name(CA_CERT.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.KeyUsage(False, False, True, False, False, False, False, False, False),
            critical=True,
        )
        .sign(CA_KEY, hashes.SHA256())  # type: ignore[arg-type]
    )


RECIPIENT_CERT = _recipient_cert(RECIPIENT_KEY)
RECIPIENT_SKI = RECIPIENT_CERT.extensions.get_extension_for_class(
    x509.SubjectKeyIdentifier).value.digest

KEK_RECIPIENT = sk.KEKRecipient(KEK_ID, KEK)
KTRI_RECIPIENT = sk.KeyTransRecipient.from_certificate(RECIPIENT_CERT)


def _pkcs8(key: object) -> bytes:
    return sk.encode_private_key(key)  # type: ignore[arg-type]


def _decrypt(der: bytes, kind: str, **kw: object) -> sk.DecryptedKeyPackage:
    if kind == "kekri":
        return sk.decrypt_key_package(der, kek=KEK, key_identifier=KEK_ID, **kw)  # type: ignore[arg-type]
    return sk.decrypt_key_package(
        der, recipient_private_key=RECIPIENT_KEY, subject_key_identifier=RECIPIENT_SKI,
        **kw)  # type: ignore[arg-type]


RECIPIENTS: dict[str, Union[sk.KEKRecipient, sk.KeyTransRecipient]] = {"kekri": KEK_RECIPIENT, "ktri": KTRI_RECIPIENT}
PACKAGE = {
    kind: sk.encrypt_key_package(
        KEYS["p256"], signer_key=CA_KEY, signer_cert=CA_CERT, recipient=r)
    for kind, r in RECIPIENTS.items()
}


# -- unencrypted: application/pkcs8 -------------------------------------------


def test_rfc7030_a4_key_part() -> None:
    der = vector_der("rfc7030-A4-serverkeygen-key-part.b64")
    key = sk.decode_private_key(der)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    # It is the key of the certificate in the A.4 certificate part.
    certs = cms.ContentInfo.load(vector_der("rfc7030-A4-serverkeygen-cert-part.b64"))
    cert = x509.load_der_x509_certificate(
        certs["content"]["certificates"][0].chosen.dump())
    assert cert.public_key() == key.public_key()
    assert sk.encode_private_key(key) == der


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_private_key_round_trip(kind: str) -> None:
    key = KEYS[kind]
    der = sk.encode_private_key(key)
    assert keys.PrivateKeyInfo.load(der)["version"].native == 0
    assert _pkcs8(sk.decode_private_key(der)) == der


def test_private_key_ber_indefinite_length() -> None:
    # RFC 5958 section 2: "receivers MUST support BER".
    der = _pkcs8(KEYS["p256"])
    header = 2 + (der[1] & 0x7F if der[1] & 0x80 else 0)
    ber = b"\x30\x80" + der[header:] + b"\x00\x00"
    assert _pkcs8(sk.decode_private_key(ber)) == der


def test_encode_rejects_non_key() -> None:
    with pytest.raises(LocalProtocolError):
        sk.encode_private_key(KEYS["p256"].public_key())  # type: ignore[arg-type]


def _v2(kind: str, public: bytes) -> bytes:
    oak = OneAsymmetricKey.load(_pkcs8(KEYS[kind]))
    return bytes(OneAsymmetricKey({
        "version": "v2",
        "private_key_algorithm": oak["private_key_algorithm"],
        "private_key": oak["private_key"],
        "public_key": public,
    }).dump())


@pytest.mark.parametrize("kind", ["ed25519", "ed448", "p256"])
def test_one_asymmetric_key_v2_with_public_key(kind: str) -> None:
    pub = KEYS[kind].public_key()
    if kind == "p256":
        raw = pub.public_bytes(serialization.Encoding.X962,
                               serialization.PublicFormat.UncompressedPoint)
    else:
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    der = _v2(kind, raw)
    assert der[4] == 1  # version v2
    assert _pkcs8(sk.decode_private_key(der)) == _pkcs8(KEYS[kind])
    # RFC 5958 v2 with a publicKey that is not the private key's: rejected.
    wrong = bytes([raw[0]]) + bytes(b ^ 0xFF for b in raw[1:])
    with pytest.raises(DecodeError, match="publicKey"):
        sk.decode_private_key(_v2(kind, wrong))


def test_unknown_version_rejected() -> None:
    der = bytearray(_pkcs8(KEYS["ed25519"]))
    assert der[2:5] == b"\x02\x01\x00"
    der[4] = 2
    with pytest.raises(DecodeError, match="version"):
        sk.decode_private_key(bytes(der))


@pytest.mark.parametrize("kind", ["rsa2048", "p256"])
def test_traditional_formats_only_when_lenient(kind: str) -> None:
    # libest labels PKCS#1 (and SEC1) keys application/pkcs8.
    der = KEYS[kind].private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption())
    with pytest.raises(DecodeError):
        sk.decode_private_key(der)
    assert _pkcs8(sk.decode_private_key(der, lenient=True)) == _pkcs8(KEYS[kind])


def test_private_key_size_limit() -> None:
    der = _pkcs8(KEYS["rsa2048"])
    with pytest.raises(MessageTooLarge):
        sk.decode_private_key(der, max_size=len(der) - 1)
    with pytest.raises(MessageTooLarge):
        sk.decode_private_key(der, max_size=len(der) - 1, lenient=True)


@given(data=st.binary(max_size=300), lenient=st.booleans())
def test_private_key_garbage(data: bytes, lenient: bool) -> None:
    try:
        sk.decode_private_key(data, lenient=lenient)
    except DecodeError:
        pass


@given(cut=st.integers(0, 1217), lenient=st.booleans())
def test_private_key_truncated(cut: int, lenient: bool) -> None:
    der = vector_der("rfc7030-A4-serverkeygen-key-part.b64")
    with pytest.raises(DecodeError):
        sk.decode_private_key(der[:cut], lenient=lenient)


@settings(max_examples=60)
@given(kind=st.sampled_from(KEY_KINDS), pos=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_private_key_bit_flip(kind: str, pos: int, bit: int) -> None:
    der = bytearray(_pkcs8(KEYS[kind]))
    der[pos % len(der)] ^= 1 << bit
    try:
        sk.decode_private_key(bytes(der))
    except DecodeError:
        pass


# -- asn1 registration ------------------------------------------------------------


def test_content_type_registered() -> None:
    assert cms.ContentType(A_KEY_PACKAGE_NAME).dotted == ID_CT_KP_A_KEY_PACKAGE
    assert cms.ContentType(ID_CT_KP_A_KEY_PACKAGE).native == A_KEY_PACKAGE_NAME
    eci = cms.EncapsulatedContentInfo({
        "content_type": A_KEY_PACKAGE_NAME,
        "content": AsymmetricKeyPackage([OneAsymmetricKey.load(_pkcs8(KEYS["p256"]))]),
    })
    loaded = cms.EncapsulatedContentInfo.load(eci.dump())
    assert isinstance(loaded["content"].parsed, AsymmetricKeyPackage)


# -- EnvelopedData structure --------------------------------------------------------


def _envelope(der: bytes) -> cms.EnvelopedData:
    info = cms.ContentInfo.load(der)
    assert info["content_type"].native == "enveloped_data"
    return info["content"]


def test_kekri_structure() -> None:
    env = _envelope(PACKAGE["kekri"])
    # RFC 5652 6.1: not all RecipientInfos are version 0 -> version 2.
    assert env["version"].native == "v2"
    assert len(env["recipient_infos"]) == 1
    ri = env["recipient_infos"][0]
    assert ri.name == "kekri"
    kekri = ri.chosen
    # RFC 7030 4.4.2: "version is set to 4, [...] (kekid) is set to the value
    # of the DecryptKeyIdentifier".
    assert kekri["version"].native == "v4"
    assert kekri["kekid"]["key_identifier"].native == KEK_ID
    # RFC 3565 2.3.2: id-aes256-wrap for a 256-bit KEK, parameters absent.
    assert kekri["key_encryption_algorithm"].dump() == bytes.fromhex("300b060960864801650304012d")
    assert len(kekri["encrypted_key"].native) == 40
    eci = env["encrypted_content_info"]
    assert eci["content_type"].native == "signed_data"
    assert eci["content_encryption_algorithm"]["algorithm"].native == "aes256_cbc"
    assert len(eci["content_encryption_algorithm"]["parameters"].native) == 16


@pytest.mark.parametrize("size,oid_last", [(16, 5), (24, 25), (32, 45)])
def test_wrap_algorithm_follows_kek_size(size: int, oid_last: int) -> None:
    der = sk.build_enveloped_data("data", b"x", sk.KEKRecipient(b"k", bytes(size)))
    kea = _envelope(der)["recipient_infos"][0].chosen["key_encryption_algorithm"]
    assert kea["algorithm"].dotted == f"2.16.840.1.101.3.4.1.{oid_last}"
    assert sk.open_enveloped_data(der, kek=bytes(size)) == b"x"


# RFC 4055 section 4.1 rSAES-OAEP-SHA256-Params inside id-RSAES-OAEP:
# hashFunc [0] {sha256, NULL}, maskGenFunc [1] {mgf1, {sha256, NULL}},
# pSourceFunc left at its DEFAULT (so absent in DER).
OAEP_SHA256_ALG = bytes.fromhex(
    "303c06092a864886f70d010107302fa00f300d06096086480165030402010500"
    "a11c301a06092a864886f70d010108300d06096086480165030402010500"
)


def test_ktri_structure() -> None:
    env = _envelope(PACKAGE["ktri"])
    assert env["version"].native == "v2"
    ri = env["recipient_infos"][0]
    assert ri.name == "ktri"
    ktri = ri.chosen
    # RFC 5652 6.2.1: rid subjectKeyIdentifier -> version 2.
    assert ktri["version"].native == "v2"
    assert ktri["rid"].name == "subject_key_identifier"
    assert ktri["rid"].chosen.native == RECIPIENT_SKI
    assert ktri["key_encryption_algorithm"].dump() == OAEP_SHA256_ALG
    assert len(ktri["encrypted_key"].native) == 256


def test_ktri_issuer_and_serial() -> None:
    recipient = sk.KeyTransRecipient.from_certificate(RECIPIENT_CERT, use_issuer_and_serial=True)
    der = sk.build_enveloped_data("data", b"hello", recipient, content_encryption="aes128_cbc")
    env = _envelope(der)
    # RFC 5652 6.1: all RecipientInfos version 0 and nothing optional -> 0.
    assert env["version"].native == "v0"
    ktri = env["recipient_infos"][0].chosen
    assert ktri["version"].native == "v0"
    assert ktri["rid"].name == "issuer_and_serial_number"
    assert ktri["rid"].chosen["serial_number"].native == RECIPIENT_CERT.serial_number
    assert sk.open_enveloped_data(
        der, recipient_private_key=RECIPIENT_KEY, recipient_certificate=RECIPIENT_CERT) == b"hello"
    # A SKI that matches nothing: no recipient.
    with pytest.raises(DecodeError, match="no recipient matches"):
        sk.open_enveloped_data(der, recipient_private_key=RECIPIENT_KEY,
                               subject_key_identifier=b"nope")


def test_recipient_validation() -> None:
    with pytest.raises(LocalProtocolError):
        sk.KEKRecipient(b"id", b"short")
    with pytest.raises(LocalProtocolError):
        sk.KEKRecipient(b"", KEK)
    with pytest.raises(LocalProtocolError):
        sk.KeyTransRecipient(RECIPIENT_KEY.public_key())
    with pytest.raises(LocalProtocolError):
        sk.KeyTransRecipient(KEYS["p256"].public_key(), b"id")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        sk.KeyTransRecipient.from_certificate(CA_CERT)  # an EC certificate
    with pytest.raises(LocalProtocolError):
        sk.build_enveloped_data("data", b"x", KEK_RECIPIENT,
                                content_encryption="des_ede3_cbc")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        sk.build_enveloped_data("not an oid", b"x", KEK_RECIPIENT)
    with pytest.raises(LocalProtocolError):
        sk.open_enveloped_data(PACKAGE["kekri"])
    with pytest.raises(LocalProtocolError):
        sk.open_enveloped_data(PACKAGE["kekri"], kek=KEK, recipient_private_key=RECIPIENT_KEY)


@settings(max_examples=25)
@given(content=st.binary(max_size=200),
       enc=st.sampled_from(["aes128_cbc", "aes192_cbc", "aes256_cbc"]),
       kek_size=st.sampled_from([16, 24, 32]))
def test_enveloped_data_round_trip_kekri(content: bytes, enc: str, kek_size: int) -> None:
    kek = bytes(range(kek_size))
    der = sk.build_enveloped_data("data", content, sk.KEKRecipient(b"id", kek),
                                  content_encryption=enc)  # type: ignore[arg-type]
    assert sk.open_enveloped_data(der, kek=kek, key_identifier=b"id",
                                  expected_content_type="data") == content
    with pytest.raises(DecodeError, match="content type"):
        sk.open_enveloped_data(der, kek=kek, expected_content_type="signed_data")


# -- the encrypted key package ------------------------------------------------------


@settings(max_examples=12)
@given(kind=st.sampled_from(KEY_KINDS), via=st.sampled_from(["kekri", "ktri"]),
       with_cert=st.booleans(),
       enc=st.sampled_from(["aes128_cbc", "aes256_cbc"]))
def test_key_package_round_trip(kind: str, via: str, with_cert: bool, enc: str) -> None:
    der = sk.encrypt_key_package(
        KEYS[kind], signer_key=CA_KEY, signer_cert=CA_CERT if with_cert else None,
        recipient=RECIPIENTS[via], content_encryption=enc)  # type: ignore[arg-type]
    out = _decrypt(der, via, verify_with=CA_CERT)
    assert _pkcs8(out.private_key) == _pkcs8(KEYS[kind])
    assert out.additional_keys == ()
    assert out.signer_authenticated
    assert out.signer_certificate == (CA_CERT if with_cert else None)
    assert out.certificates == ((CA_CERT,) if with_cert else ())


def test_key_package_signer_kinds() -> None:
    # Signers of every key type (the generator need not be the CA).
    for kind in ("rsa2048", "p384", "ed25519", "ed448"):
        der = sk.encrypt_key_package(KEYS["p256"], signer_key=KEYS[kind], signer_cert=None,
                                     recipient=KEK_RECIPIENT)
        out = _decrypt(der, "kekri", verify_with=KEYS[kind].public_key())
        assert _pkcs8(out.private_key) == _pkcs8(KEYS["p256"])


def test_key_package_layers() -> None:
    """RFC 7030 4.4.2: SignedData(AsymmetricKeyPackage) inside EnvelopedData."""
    content = sk.open_enveloped_data(PACKAGE["kekri"], kek=KEK, key_identifier=KEK_ID,
                                     expected_content_type="signed_data")
    # The enveloped content is the SignedData itself (RFC 5652 6.1), not a
    # ContentInfo: it starts with SEQUENCE { INTEGER version ...
    signed_data = cms.SignedData.load(content)
    assert signed_data["version"].native == "v3"
    wrapped = cms.ContentInfo({"content_type": "signed_data", "content": signed_data}).dump()
    parsed = signeddata.parse_signed_data(wrapped)
    assert parsed.econtent_type == ID_CT_KP_A_KEY_PACKAGE
    package = AsymmetricKeyPackage.load(parsed.econtent)
    assert len(package) == 1
    assert package[0].dump() == _pkcs8(KEYS["p256"])
    signeddata.verify_signer(parsed, 0, CA_KEY.public_key())  # type: ignore[arg-type]


def test_verify_with_none_uses_carried_certificate() -> None:
    out = _decrypt(PACKAGE["ktri"], "ktri")
    assert not out.signer_authenticated
    assert out.signer_certificate == CA_CERT
    # Without a certificate in the message nothing can check the signature.
    der = sk.encrypt_key_package(KEYS["p256"], signer_key=CA_KEY, recipient=KEK_RECIPIENT)
    with pytest.raises(BadSignature):
        _decrypt(der, "kekri")
    assert _decrypt(der, "kekri", verify_with=CA_KEY.public_key()).signer_authenticated


def test_wrong_signer_is_bad_signature() -> None:
    with pytest.raises(BadSignature):
        _decrypt(PACKAGE["kekri"], "kekri", verify_with=OTHER_CA_CERT)
    with pytest.raises(BadSignature):
        _decrypt(PACKAGE["ktri"], "ktri", verify_with=OTHER_RSA_KEY.public_key())


def test_tampered_key_package_is_bad_signature() -> None:
    content = sk.open_enveloped_data(PACKAGE["kekri"], kek=KEK)
    package = _pkcs8(KEYS["p256"])
    at = content.index(package) + len(package) - 5
    tampered = content[:at] + bytes([content[at] ^ 1]) + content[at + 1:]
    der = sk.build_enveloped_data("signed_data", tampered, KEK_RECIPIENT)
    with pytest.raises(BadSignature):
        _decrypt(der, "kekri", verify_with=CA_CERT)


def test_wrong_keys_and_identifiers() -> None:
    with pytest.raises(DecodeError, match="no recipient matches"):
        sk.decrypt_key_package(PACKAGE["kekri"], kek=KEK, key_identifier=b"other id")
    with pytest.raises(DecodeError, match="no recipient matches"):
        sk.decrypt_key_package(PACKAGE["kekri"], kek=bytes(32), key_identifier=KEK_ID)
    with pytest.raises(DecodeError, match="no recipient matches"):
        sk.decrypt_key_package(PACKAGE["kekri"], kek=bytes(16), key_identifier=KEK_ID)
    with pytest.raises(DecodeError, match="no recipient matches"):
        sk.decrypt_key_package(PACKAGE["kekri"], recipient_private_key=RECIPIENT_KEY)
    with pytest.raises(DecodeError, match="no recipient matches"):
        sk.decrypt_key_package(PACKAGE["ktri"], recipient_private_key=OTHER_RSA_KEY)
    with pytest.raises(DecodeError, match="no recipient matches"):
        sk.decrypt_key_package(PACKAGE["ktri"], recipient_private_key=OTHER_RSA_KEY,
                               subject_key_identifier=RECIPIENT_SKI)
    with pytest.raises(DecodeError, match="no recipient matches"):
        sk.decrypt_key_package(PACKAGE["ktri"], kek=KEK)


def test_wrong_content_types() -> None:
    der = sk.build_enveloped_data("data", _pkcs8(KEYS["p256"]), KEK_RECIPIENT)
    with pytest.raises(DecodeError, match="id-signedData"):
        _decrypt(der, "kekri")
    signed = signeddata.build_signed_data(
        "1.2.840.113549.1.7.1", _pkcs8(KEYS["p256"]), CA_KEY, signer_cert=CA_CERT)  # type: ignore[arg-type]
    bare = bytes(cms.ContentInfo.load(signed)["content"].untag().dump())
    der = sk.build_enveloped_data("signed_data", bare, KEK_RECIPIENT)
    with pytest.raises(DecodeError, match="eContentType"):
        _decrypt(der, "kekri")
    # Not an EnvelopedData at all.
    with pytest.raises(DecodeError, match="not id-envelopedData"):
        sk.decrypt_key_package(signed, kek=KEK)


def test_content_info_inside_envelope() -> None:
    signed = signeddata.build_signed_data(
        ID_CT_KP_A_KEY_PACKAGE,
        AsymmetricKeyPackage([OneAsymmetricKey.load(_pkcs8(KEYS["ed25519"]))]).dump(),
        CA_KEY, signer_cert=CA_CERT)  # type: ignore[arg-type]
    # Typed id-signedData but holding a whole ContentInfo: tolerated.
    der = sk.build_enveloped_data("signed_data", signed, KEK_RECIPIENT)
    assert _pkcs8(_decrypt(der, "kekri").private_key) == _pkcs8(KEYS["ed25519"])
    # Typed id-data (what `openssl cms -encrypt` of a signed file gives): lenient only.
    der = sk.build_enveloped_data("data", signed, KEK_RECIPIENT)
    with pytest.raises(DecodeError):
        _decrypt(der, "kekri")
    assert _pkcs8(_decrypt(der, "kekri", lenient=True).private_key) == _pkcs8(KEYS["ed25519"])


def test_key_package_with_two_keys_and_v2() -> None:
    raw = KEYS["ed25519"].public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    package = AsymmetricKeyPackage([
        OneAsymmetricKey.load(_v2("ed25519", raw)),
        OneAsymmetricKey.load(_pkcs8(KEYS["p384"])),
    ]).dump()
    signed = signeddata.build_signed_data(
        ID_CT_KP_A_KEY_PACKAGE, package, CA_KEY, signer_cert=CA_CERT)  # type: ignore[arg-type]
    der = sk.build_enveloped_data("signed_data", signed, KTRI_RECIPIENT)
    out = _decrypt(der, "ktri", verify_with=CA_CERT)
    assert _pkcs8(out.private_key) == _pkcs8(KEYS["ed25519"])
    assert [_pkcs8(k) for k in out.additional_keys] == [_pkcs8(KEYS["p384"])]
    # RFC 5958 section 2: SIZE (1..MAX); an empty package is malformed.
    empty = signeddata.build_signed_data(
        ID_CT_KP_A_KEY_PACKAGE, AsymmetricKeyPackage([]).dump(), CA_KEY,  # type: ignore[arg-type]
        signer_cert=CA_CERT)
    with pytest.raises(DecodeError, match="no keys"):
        _decrypt(sk.build_enveloped_data("signed_data", empty, KEK_RECIPIENT), "kekri")


def test_key_package_size_limit() -> None:
    der = PACKAGE["kekri"]
    with pytest.raises(MessageTooLarge):
        _decrypt(der, "kekri", max_size=len(der) - 1)
    with pytest.raises(MessageTooLarge):
        sk.open_enveloped_data(der, kek=KEK, max_size=len(der) - 1)


def test_encrypt_rejects_bad_arguments() -> None:
    with pytest.raises(LocalProtocolError):
        sk.encrypt_key_package(KEYS["p256"].public_key(), signer_key=CA_KEY,  # type: ignore[arg-type]
                               recipient=KEK_RECIPIENT)
    with pytest.raises(LocalProtocolError):
        sk.encrypt_key_package(KEYS["p256"], signer_key=CA_KEY, signer_cert=OTHER_CA_CERT,
                               recipient=KEK_RECIPIENT)
    with pytest.raises(LocalProtocolError):
        sk.encrypt_key_package(KEYS["p256"], signer_key=b"key",  # type: ignore[arg-type]
                               recipient=KEK_RECIPIENT)


# -- hostile input: only DecodeError (BadSignature is one) ----------------------------


@given(data=st.binary(max_size=400))
def test_envelope_garbage(data: bytes) -> None:
    for kw in ({"kek": KEK}, {"recipient_private_key": RECIPIENT_KEY}):
        try:
            sk.decrypt_key_package(data, **kw)  # type: ignore[arg-type]
        except DecodeError:
            pass


@given(via=st.sampled_from(["kekri", "ktri"]), cut=st.integers(0, 2000))
def test_envelope_truncated(via: str, cut: int) -> None:
    der = PACKAGE[via]
    with pytest.raises(DecodeError):
        _decrypt(der[: cut % len(der)], via)


@settings(max_examples=200)
@given(via=st.sampled_from(["kekri", "ktri"]), pos=st.integers(0, 10_000),
       bit=st.integers(0, 7))
def test_envelope_bit_flip(via: str, pos: int, bit: int) -> None:
    der = bytearray(PACKAGE[via])
    pos %= len(der)
    der[pos] ^= 1 << bit
    try:
        out = _decrypt(bytes(der), via, verify_with=CA_CERT)
    except DecodeError:
        return
    # A flip that survived can only have hit something not protected by the
    # signature or padding (e.g. the first CBC block's IV-affected bytes are
    # caught by the signature); the key must still be the right one.
    assert _pkcs8(out.private_key) == _pkcs8(KEYS["p256"])


@settings(max_examples=60)
@given(pos=st.integers(0, 10_000), data=st.binary(min_size=1, max_size=8))
def test_decrypted_content_corrupted(pos: int, data: bytes) -> None:
    """Garbage *inside* a well-formed envelope: still only DecodeError."""
    content = bytearray(sk.open_enveloped_data(PACKAGE["kekri"], kek=KEK))
    pos %= len(content)
    content[pos:pos + len(data)] = data
    der = sk.build_enveloped_data("signed_data", bytes(content), KEK_RECIPIENT)
    try:
        _decrypt(der, "kekri", verify_with=CA_CERT)
    except DecodeError:
        pass


# -- openssl interop -------------------------------------------------------------------


def _run(args: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(args, capture_output=True, **kw)  # type: ignore[call-overload]
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc  # type: ignore[no-any-return]


def _write_pki(tmp_path: Path) -> dict[str, Path]:
    paths = {
        "cert": tmp_path / "recip.pem",
        "key": tmp_path / "recip.key",
        "ca": tmp_path / "ca.pem",
        "ca_key": tmp_path / "ca.key",
    }
    paths["cert"].write_bytes(pem(RECIPIENT_CERT))
    paths["ca"].write_bytes(pem(CA_CERT))
    for path, key in ((paths["key"], RECIPIENT_KEY), (paths["ca_key"], CA_KEY)):
        path.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    return paths


def _openssl_open_package(openssl: str, tmp_path: Path, der: bytes,
                          decrypt_args: list[str]) -> bytes:
    """openssl decrypts, then verifies the SignedData; returns the eContent."""
    (tmp_path / "env.der").write_bytes(der)
    inner = _run([openssl, "cms", "-decrypt", "-inform", "DER", "-in", str(tmp_path / "env.der"),
                  "-binary", *decrypt_args]).stdout
    # openssl writes the decrypted content: the SignedData itself. Its
    # `cms -verify` reads a ContentInfo, so wrap it.
    wrapped = cms.ContentInfo({"content_type": "signed_data",
                               "content": cms.SignedData.load(inner)}).dump()
    (tmp_path / "signed.der").write_bytes(wrapped)
    # -noverify skips the certificate chain, not the signature.
    return _run([openssl, "cms", "-verify", "-noverify", "-inform", "DER", "-binary",
                 "-in", str(tmp_path / "signed.der")]).stdout


@pytest.mark.parametrize("kind", ["rsa2048", "p256", "ed25519"])
def test_openssl_opens_our_kekri(openssl: str, tmp_path: Path, kind: str) -> None:
    der = sk.encrypt_key_package(KEYS[kind], signer_key=CA_KEY, signer_cert=CA_CERT,
                                 recipient=KEK_RECIPIENT)
    package = _openssl_open_package(
        openssl, tmp_path, der, ["-secretkey", KEK.hex(), "-secretkeyid", KEK_ID.hex()])
    assert AsymmetricKeyPackage.load(package)[0].dump() == _pkcs8(KEYS[kind])


def test_openssl_opens_our_ktri(openssl: str, tmp_path: Path) -> None:
    paths = _write_pki(tmp_path)
    der = sk.encrypt_key_package(KEYS["p384"], signer_key=CA_KEY, signer_cert=CA_CERT,
                                 recipient=KTRI_RECIPIENT)
    package = _openssl_open_package(
        openssl, tmp_path, der, ["-recip", str(paths["cert"]), "-inkey", str(paths["key"])])
    assert AsymmetricKeyPackage.load(package)[0].dump() == _pkcs8(KEYS["p384"])
    # openssl parses our RSAES-OAEP-params as SHA-256 / MGF1-SHA-256.
    (tmp_path / "env.der").write_bytes(der)
    printed = _run([openssl, "cms", "-cmsout", "-print", "-inform", "DER",
                    "-in", str(tmp_path / "env.der")]).stdout.decode()
    assert "rsaesOaep" in printed and printed.count("sha256") == 2


def test_openssl_opens_issuer_serial_ktri(openssl: str, tmp_path: Path) -> None:
    paths = _write_pki(tmp_path)
    recipient = sk.KeyTransRecipient.from_certificate(RECIPIENT_CERT, use_issuer_and_serial=True)
    der = sk.build_enveloped_data("data", b"payload bytes", recipient)
    (tmp_path / "env.der").write_bytes(der)
    out = _run([openssl, "cms", "-decrypt", "-inform", "DER", "-in", str(tmp_path / "env.der"),
                "-recip", str(paths["cert"]), "-inkey", str(paths["key"]), "-binary"]).stdout
    assert out == b"payload bytes"


PAYLOAD = bytes(range(256)) * 5 + b"\r\n\n\x00end"


@pytest.mark.parametrize("cipher,kek_size,stream", [
    ("-aes256", 32, False), ("-aes128", 16, False), ("-aes192", 24, True),
])
def test_we_open_openssl_kekri(openssl: str, tmp_path: Path, cipher: str,
                               kek_size: int, stream: bool) -> None:
    kek = bytes(range(100, 100 + kek_size))
    (tmp_path / "in.bin").write_bytes(PAYLOAD)
    args = [openssl, "cms", "-encrypt", cipher, "-secretkey", kek.hex(), "-secretkeyid", "0a0b0c",
            "-binary", "-outform", "DER", "-in", str(tmp_path / "in.bin")]
    if stream:
        args.append("-stream")  # BER, indefinite lengths
    der = _run(args).stdout
    if stream:
        assert der[1] == 0x80
    assert sk.open_enveloped_data(der, kek=kek, key_identifier=b"\x0a\x0b\x0c",
                                  expected_content_type="data") == PAYLOAD
    with pytest.raises(DecodeError, match="no recipient matches"):
        sk.open_enveloped_data(der, kek=kek, key_identifier=b"\x0a\x0b")


@pytest.mark.parametrize("keyopts,keyid", [
    (["-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256"], True),
    (["-keyopt", "rsa_padding_mode:oaep"], False),  # OAEP with the SHA-1 defaults
    ([], False),  # PKCS#1 v1.5, openssl's default
])
def test_we_open_openssl_ktri(openssl: str, tmp_path: Path, keyopts: list[str],
                              keyid: bool) -> None:
    paths = _write_pki(tmp_path)
    (tmp_path / "in.bin").write_bytes(PAYLOAD)
    der = _run([openssl, "cms", "-encrypt", "-aes256", "-recip", str(paths["cert"]), *keyopts,
                *(["-keyid"] if keyid else []), "-binary", "-outform", "DER",
                "-in", str(tmp_path / "in.bin")]).stdout
    rid = _envelope(der)["recipient_infos"][0].chosen["rid"]
    assert rid.name == ("subject_key_identifier" if keyid else "issuer_and_serial_number")
    if keyid:
        assert sk.open_enveloped_data(der, recipient_private_key=RECIPIENT_KEY,
                                      subject_key_identifier=RECIPIENT_SKI) == PAYLOAD
    assert sk.open_enveloped_data(der, recipient_private_key=RECIPIENT_KEY,
                                  recipient_certificate=RECIPIENT_CERT) == PAYLOAD
    assert sk.open_enveloped_data(der, recipient_private_key=RECIPIENT_KEY) == PAYLOAD
    with pytest.raises(DecodeError, match="no recipient matches"):
        sk.open_enveloped_data(der, recipient_private_key=OTHER_RSA_KEY)


def test_we_open_openssl_signed_key_package(openssl: str, tmp_path: Path) -> None:
    """openssl signs an AsymmetricKeyPackage; we envelope and then open it."""
    paths = _write_pki(tmp_path)
    package = AsymmetricKeyPackage([OneAsymmetricKey.load(_pkcs8(KEYS["rsa2048"]))]).dump()
    (tmp_path / "akp.der").write_bytes(package)
    signed = _run([openssl, "cms", "-sign", "-nodetach", "-binary",
                   "-econtent_type", ID_CT_KP_A_KEY_PACKAGE,
                   "-signer", str(paths["ca"]), "-inkey", str(paths["ca_key"]),
                   "-in", str(tmp_path / "akp.der"), "-outform", "DER"]).stdout
    bare = bytes(cms.ContentInfo.load(signed)["content"].untag().dump())
    der = sk.build_enveloped_data("signed_data", bare, KTRI_RECIPIENT)
    out = _decrypt(der, "ktri", verify_with=CA_CERT)
    assert _pkcs8(out.private_key) == _pkcs8(KEYS["rsa2048"])
    # And the whole thing made by openssl: sign, then encrypt (id-data typed).
    (tmp_path / "signed.der").write_bytes(signed)
    der = _run([openssl, "cms", "-encrypt", "-aes256", "-secretkey", KEK.hex(),
                "-secretkeyid", KEK_ID.hex(), "-binary", "-outform", "DER",
                "-in", str(tmp_path / "signed.der")]).stdout
    out = _decrypt(der, "kekri", verify_with=CA_CERT, lenient=True)
    assert _pkcs8(out.private_key) == _pkcs8(KEYS["rsa2048"])


def test_openssl_reads_our_pkcs8(openssl: str, tmp_path: Path) -> None:
    for kind in KEY_KINDS:
        (tmp_path / "k.der").write_bytes(sk.encode_private_key(KEYS[kind]))
        _run([openssl, "pkey", "-inform", "DER", "-in", str(tmp_path / "k.der"), "-noout"])


def test_we_read_openssl_keys(openssl: str, tmp_path: Path) -> None:
    for alg, kind in ((["-algorithm", "ED448"], "ed448"),
                      (["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"], "ec"),
                      (["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"], "rsa")):
        key_pem = _run([openssl, "genpkey", *alg]).stdout
        (tmp_path / "k.pem").write_bytes(key_pem)
        pkcs8 = _run([openssl, "pkcs8", "-topk8", "-nocrypt", "-outform", "DER",
                      "-in", str(tmp_path / "k.pem")]).stdout
        key = sk.decode_private_key(pkcs8)
        assert _pkcs8(key) == pkcs8
        if kind == "ed448":
            continue
        # What libest sends as application/pkcs8 (i2d_PrivateKey): PKCS#1 or SEC1.
        traditional = _run([openssl, "pkey", "-traditional", "-outform", "DER",
                            "-in", str(tmp_path / "k.pem")]).stdout
        with pytest.raises(DecodeError):
            sk.decode_private_key(traditional)
        assert _pkcs8(sk.decode_private_key(traditional, lenient=True)) == pkcs8
