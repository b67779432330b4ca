"""Tests for kari (KeyAgreeRecipientInfo) in estproto.codecs.serverkey.

RFC 7030 section 4.4.2 third bullet: a server-generated key for a client
with a key-agreement key travels in an EnvelopedData whose RecipientInfo is
a kari (RFC 5652 section 6.2.2), ephemeral-static ECDH per RFC 5753 with the
X9.63 KDF over ECC-CMS-SharedInfo and the RFC 3394 AES key wrap.

Independent checks: openssl in both directions, and a from-scratch kari
builder below (its own SharedInfo bytes and cryptography's X963KDF) that
also makes the malformed and unusual variants.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import subprocess
from pathlib import Path
from typing import cast

import pytest
from asn1crypto import cms, core, keys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.keywrap import aes_key_wrap
from hypothesis import given, settings
from hypothesis import strategies as st

from estproto import DecodeError, LocalProtocolError
from estproto.asn1.keypackage import AsymmetricKeyPackage
from estproto.codecs import serverkey as sk
from pki import make_ca, make_key, name, pem

# -- keys and certificates, made once -----------------------------------------

CURVES = ("p256", "p384", "p521")
SIGNER_CERT, SIGNER_KEY = make_ca("Key Generator CA")
RECIP_KEY = {c: cast(ec.EllipticCurvePrivateKey, make_key(c)) for c in CURVES}
OTHER_P256_KEY = cast(ec.EllipticCurvePrivateKey, make_key("p256"))
SERVER_KEY = make_key("p256")  # the "server-generated" key we transport


def _recipient_cert(key: ec.EllipticCurvePrivateKey, cn: str) -> x509.Certificate:
    """An end-entity key-agreement certificate with an SKI extension."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(name(cn))
        .issuer_name(SIGNER_CERT.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(
            # keyAgreement only
            x509.KeyUsage(False, False, False, False, True, False, False, False, False),
            critical=True,
        )
        .sign(SIGNER_KEY, hashes.SHA256())  # type: ignore[arg-type]
    )


RECIP_CERT = {c: _recipient_cert(RECIP_KEY[c], f"kari {c}") for c in CURVES}


def _ski(cert: x509.Certificate) -> bytes:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


SCHEME_OID = {"p256": "1.3.132.1.11.1", "p384": "1.3.132.1.11.2", "p521": "1.3.132.1.11.3"}
WRAP_OID = {"aes128_wrap": "2.16.840.1.101.3.4.1.5", "aes192_wrap": "2.16.840.1.101.3.4.1.25",
            "aes256_wrap": "2.16.840.1.101.3.4.1.45"}
CONTENT = b"server-generated key material \x00\x01\xff" * 3


def _kari_of(der: bytes) -> cms.KeyAgreeRecipientInfo:
    ris = cms.ContentInfo.load(der)["content"]["recipient_infos"]
    assert len(ris) == 1 and ris[0].name == "kari"
    return ris[0].chosen


def _pkcs8(key: object) -> bytes:
    return sk.encode_private_key(key)  # type: ignore[arg-type]


# -- structure -----------------------------------------------------------------


@pytest.mark.parametrize("curve", CURVES)
@pytest.mark.parametrize("enc,wrap", [("aes128_cbc", "aes128_wrap"),
                                      ("aes256_cbc", "aes256_wrap")])
def test_kari_structure(curve: str, enc: str, wrap: str) -> None:
    cert = RECIP_CERT[curve]
    der = sk.build_enveloped_data(
        "data", CONTENT, sk.KeyAgreeRecipient.from_certificate(cert), content_encryption=enc)  # type: ignore[arg-type]
    env = cms.ContentInfo.load(der)["content"]
    # RFC 5652 section 6.1: a version-3 RecipientInfo gives EnvelopedData v2.
    assert env["version"].native == "v2"
    kari = _kari_of(der)
    assert kari["version"].native == "v3"
    assert kari["ukm"].native is None
    originator = kari["originator"]
    assert originator.name == "originator_key"
    alg = originator.chosen["algorithm"]
    assert alg["algorithm"].dotted == "1.2.840.10045.2.1"  # id-ecPublicKey
    assert isinstance(alg["parameters"], core.Void)  # absent, as openssl sends it
    point = bytes(originator.chosen["public_key"].native)
    assert point[0] == 4  # uncompressed
    ec.EllipticCurvePublicKey.from_encoded_point(RECIP_KEY[curve].curve, point)
    kea = kari["key_encryption_algorithm"]
    assert kea["algorithm"].dotted == SCHEME_OID[curve]
    # The KeyWrapAlgorithm, with absent parameters (RFC 3565 section 2.3.2).
    assert kea["parameters"].dump() == _tlv(0x30, core.ObjectIdentifier(WRAP_OID[wrap]).dump())
    (rek,) = kari["recipient_encrypted_keys"]
    assert rek["rid"].name == "r_key_id"
    assert rek["rid"].chosen["subject_key_identifier"].native == _ski(cert)
    assert len(rek["encrypted_key"].native) == {"aes128_cbc": 24, "aes256_cbc": 40}[enc]


def test_kari_issuer_and_serial_rid() -> None:
    cert = RECIP_CERT["p256"]
    der = sk.build_enveloped_data(
        "data", CONTENT, sk.KeyAgreeRecipient.from_certificate(cert, use_issuer_and_serial=True))
    (rek,) = _kari_of(der)["recipient_encrypted_keys"]
    assert rek["rid"].name == "issuer_and_serial_number"
    assert rek["rid"].chosen["serial_number"].native == cert.serial_number
    assert sk.open_enveloped_data(
        der, recipient_private_key=RECIP_KEY["p256"], recipient_certificate=cert) == CONTENT


def test_kari_options_change_the_wire() -> None:
    r = sk.KeyAgreeRecipient.from_certificate(RECIP_CERT["p256"])
    r = dataclasses.replace(r, kdf_hash="sha512", key_wrap="aes192_wrap", ukm=b"user keying")
    der = sk.build_enveloped_data("data", CONTENT, r)
    kari = _kari_of(der)
    assert kari["ukm"].native == b"user keying"
    assert kari["key_encryption_algorithm"]["algorithm"].dotted == "1.3.132.1.11.3"
    assert kari["key_encryption_algorithm"]["parameters"]["algorithm"].dotted == WRAP_OID[
        "aes192_wrap"]
    assert sk.open_enveloped_data(der, recipient_private_key=RECIP_KEY["p256"]) == CONTENT


def test_fresh_ephemeral_key_each_time() -> None:
    r = sk.KeyAgreeRecipient.from_certificate(RECIP_CERT["p256"])
    points = {bytes(_kari_of(sk.build_enveloped_data("data", CONTENT, r))["originator"]
                    .chosen["public_key"].native) for _ in range(3)}
    assert len(points) == 3


def test_recipient_validation() -> None:
    pub = RECIP_KEY["p256"].public_key()
    cert = RECIP_CERT["p256"]
    with pytest.raises(LocalProtocolError):
        sk.KeyAgreeRecipient(pub)  # neither identifier nor certificate
    with pytest.raises(LocalProtocolError):
        sk.KeyAgreeRecipient(pub, b"")
    with pytest.raises(LocalProtocolError):
        sk.KeyAgreeRecipient(make_key("ed25519").public_key(), b"id")  # type: ignore[arg-type]
    p224 = ec.generate_private_key(ec.SECP224R1())
    with pytest.raises(LocalProtocolError, match="curve"):
        sk.KeyAgreeRecipient(p224.public_key(), b"id")
    with pytest.raises(LocalProtocolError):
        sk.KeyAgreeRecipient(pub, b"id", kdf_hash="md5")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        sk.KeyAgreeRecipient(pub, b"id", key_wrap="des3_wrap")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        sk.KeyAgreeRecipient(pub, b"id", ukm=b"")
    with pytest.raises(LocalProtocolError):
        sk.KeyAgreeRecipient(pub, b"id", ukm="text")  # type: ignore[arg-type]
    # A certificate for a signature-only key type.
    ed_ca, _ = make_ca("Ed CA", key=make_key("ed25519"))
    with pytest.raises(LocalProtocolError, match="EC certificate"):
        sk.KeyAgreeRecipient.from_certificate(ed_ca)
    assert sk.KeyAgreeRecipient.from_certificate(cert).subject_key_identifier == _ski(cert)
    # Opening: the private key must be RSA or EC on a supported curve.
    der = sk.build_enveloped_data("data", CONTENT, sk.KeyAgreeRecipient.from_certificate(cert))
    with pytest.raises(LocalProtocolError):
        sk.open_enveloped_data(der, recipient_private_key=p224)
    with pytest.raises(LocalProtocolError):
        sk.open_enveloped_data(der, recipient_private_key=make_key("ed25519"))  # type: ignore[arg-type]


# -- round trips ------------------------------------------------------------------


@settings(max_examples=40)
@given(
    content=st.binary(max_size=300),
    curve=st.sampled_from(CURVES),
    enc=st.sampled_from(["aes128_cbc", "aes192_cbc", "aes256_cbc"]),
    ukm=st.none() | st.binary(min_size=1, max_size=64),
    by_ski=st.booleans(),
    give_id=st.booleans(),
)
def test_enveloped_data_round_trip(content: bytes, curve: str, enc: str, ukm: bytes | None,
                                   by_ski: bool, give_id: bool) -> None:
    cert = RECIP_CERT[curve]
    r = dataclasses.replace(
        sk.KeyAgreeRecipient.from_certificate(cert, use_issuer_and_serial=not by_ski), ukm=ukm)
    der = sk.build_enveloped_data("data", content, r, content_encryption=enc)  # type: ignore[arg-type]
    kw: dict[str, object] = {"recipient_certificate": cert} if give_id else {}
    assert sk.open_enveloped_data(
        der, recipient_private_key=RECIP_KEY[curve], expected_content_type="data",
        **kw) == content  # type: ignore[arg-type]


@pytest.mark.parametrize("curve", CURVES)
@pytest.mark.parametrize("by_ski", [True, False])
def test_key_package_round_trip(curve: str, by_ski: bool) -> None:
    cert = RECIP_CERT[curve]
    recipient = sk.KeyAgreeRecipient.from_certificate(cert, use_issuer_and_serial=not by_ski)
    der = sk.encrypt_key_package(SERVER_KEY, signer_key=SIGNER_KEY, signer_cert=SIGNER_CERT,
                                 recipient=recipient)
    for kw in ({"recipient_certificate": cert},
               {"subject_key_identifier": _ski(cert)} if by_ski else {},
               {}):
        out = sk.decrypt_key_package(der, recipient_private_key=RECIP_KEY[curve],
                                     verify_with=SIGNER_CERT, **kw)  # type: ignore[arg-type]
        assert _pkcs8(out.private_key) == _pkcs8(SERVER_KEY)
        assert out.signer_authenticated


def test_wrong_identifier_or_key() -> None:
    cert = RECIP_CERT["p256"]
    der = sk.encrypt_key_package(SERVER_KEY, signer_key=SIGNER_KEY, signer_cert=SIGNER_CERT,
                                 recipient=sk.KeyAgreeRecipient.from_certificate(cert))
    with pytest.raises(DecodeError, match="identifier"):
        sk.decrypt_key_package(der, recipient_private_key=RECIP_KEY["p256"],
                               subject_key_identifier=b"not it")
    with pytest.raises(DecodeError, match="identifier"):
        # issuerAndSerial of another certificate, SKI rid in the message
        sk.decrypt_key_package(der, recipient_private_key=RECIP_KEY["p256"],
                               recipient_certificate=RECIP_CERT["p384"])
    # Right identifier, wrong key on the same curve: the unwrap fails.
    with pytest.raises(DecodeError, match="unwrap"):
        sk.decrypt_key_package(der, recipient_private_key=OTHER_P256_KEY,
                               recipient_certificate=cert)
    # A key on another curve: the originator point is not on its curve.
    with pytest.raises(DecodeError, match="not a point on secp384r1"):
        sk.decrypt_key_package(der, recipient_private_key=RECIP_KEY["p384"])
    # kari message, RSA-free kek path: no kekri at all.
    with pytest.raises(DecodeError):
        sk.decrypt_key_package(der, kek=bytes(16))


# -- a from-scratch kari builder: independent KDF, and variants we never send ------------


def _tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _manual_envelope(
    recipient: ec.EllipticCurvePublicKey,
    *,
    scheme: str = "1.3.132.1.11.1",
    kdf_hash: hashes.HashAlgorithm | None = None,
    wrap: str = "aes128_wrap",
    wrap_params: str = "absent",  # "absent", "null", "integer", "missing" (no KeyWrapAlgorithm)
    shared_info_params: str | None = None,  # defaults to wrap_params
    originator_params: object = None,  # None: absent; else an ECDomainParameters
    originator_point: bytes | None = None,
    originator: str = "key",  # or "ski"
    ukm: bytes | None = None,
    version: int = 3,
    rid: object = None,
) -> bytes:
    """ContentInfo(EnvelopedData) with one kari, built without estproto's kari code."""
    kek_size = {"aes128_wrap": 16, "aes192_wrap": 24, "aes256_wrap": 32}.get(wrap, 16)
    cek = os.urandom(16)
    eph = ec.generate_private_key(recipient.curve)
    shared = eph.exchange(ec.ECDH(), recipient)
    wrap_oid = core.ObjectIdentifier(WRAP_OID.get(wrap, wrap)).dump()
    si_params = shared_info_params or wrap_params
    params = {"absent": b"", "missing": b"", "null": b"\x05\x00", "integer": b"\x02\x01\x01"}
    key_info = _tlv(0x30, wrap_oid + params[si_params])
    entity = _tlv(0xA0, _tlv(0x04, ukm)) if ukm is not None else b""
    supp = _tlv(0xA2, _tlv(0x04, (kek_size * 8).to_bytes(4, "big")))
    shared_info = _tlv(0x30, key_info + entity + supp)
    kek = X963KDF(kdf_hash or hashes.SHA256(), kek_size, shared_info).derive(shared)

    point = originator_point or eph.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    alg: dict[str, object] = {"algorithm": "ec"}
    if originator_params is not None:
        alg["parameters"] = originator_params
    if originator == "key":
        orig = cms.OriginatorIdentifierOrKey(
            name="originator_key", value=keys.PublicKeyInfo({"algorithm": alg, "public_key": point}))
    else:
        orig = cms.OriginatorIdentifierOrKey(name="subject_key_identifier", value=b"static")
    # Raw bytes, so the parameters can be anything asn1crypto would refuse to build.
    kea_body = core.ObjectIdentifier(scheme).dump()
    if wrap_params != "missing":
        kea_body += _tlv(0x30, wrap_oid + params[wrap_params])
    kea = cms.KeyEncryptionAlgorithm.load(_tlv(0x30, kea_body))
    fields: dict[str, object] = {
        "version": version,
        "originator": orig,
        "key_encryption_algorithm": kea,
        "recipient_encrypted_keys": [{
            "rid": rid or cms.KeyAgreementRecipientIdentifier(
                name="r_key_id", value={"subject_key_identifier": b"manual"}),
            "encrypted_key": aes_key_wrap(kek, cek),
        }],
    }
    if ukm is not None:
        fields["ukm"] = ukm
    iv = os.urandom(16)
    padder = sym_padding.PKCS7(128).padder()
    enc = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    ct = enc.update(padder.update(CONTENT) + padder.finalize()) + enc.finalize()
    env = cms.EnvelopedData({
        "version": "v2",
        "recipient_infos": [cms.RecipientInfo(name="kari", value=cms.KeyAgreeRecipientInfo(fields))],
        "encrypted_content_info": {
            "content_type": "data",
            "content_encryption_algorithm": {"algorithm": "aes128_cbc", "parameters": iv},
            "encrypted_content": ct,
        },
    })
    return bytes(cms.ContentInfo({"content_type": "enveloped_data", "content": env}).dump())


P256 = RECIP_KEY["p256"]
P256_PUB = P256.public_key()


def _open(der: bytes, key: ec.EllipticCurvePrivateKey = P256) -> bytes:
    return sk.open_enveloped_data(der, recipient_private_key=key)


@pytest.mark.parametrize("scheme,kdf_hash", [
    ("1.3.133.16.840.63.0.2", hashes.SHA1()),   # stdDH-sha1kdf, openssl's default
    ("1.3.132.1.11.0", hashes.SHA224()),
    ("1.3.132.1.11.1", hashes.SHA256()),
    ("1.3.132.1.11.2", hashes.SHA384()),
    ("1.3.132.1.11.3", hashes.SHA512()),
    ("1.3.133.16.840.63.0.3", hashes.SHA1()),   # cofactorDH: the same on P-256
    ("1.3.132.1.14.1", hashes.SHA256()),
])
def test_independent_kdf_schemes(scheme: str, kdf_hash: hashes.HashAlgorithm) -> None:
    assert _open(_manual_envelope(P256_PUB, scheme=scheme, kdf_hash=kdf_hash)) == CONTENT


@pytest.mark.parametrize("kw", [
    {"ukm": b"\x00" * 64},
    {"wrap": "aes256_wrap"},
    {"wrap": "aes192_wrap", "wrap_params": "null"},
    # NULL wrap parameters written only into SharedInfo, or only into the message.
    {"shared_info_params": "null"},
    {"wrap_params": "null", "shared_info_params": "absent"},
    {"originator_params": keys.ECDomainParameters(name="named", value="secp256r1")},
    {"originator_params": keys.ECDomainParameters(name="implicit_ca", value=core.Null())},
], ids=["ukm", "aes256", "aes192-null", "si-null", "msg-null", "named", "null-params"])
def test_independent_variants_accepted(kw: dict[str, object]) -> None:
    assert _open(_manual_envelope(P256_PUB, **kw)) == CONTENT  # type: ignore[arg-type]


def test_independent_issuer_and_serial_rid() -> None:
    cert = RECIP_CERT["p256"]
    rid = cms.KeyAgreementRecipientIdentifier(
        name="issuer_and_serial_number", value=sk._issuer_and_serial(cert))
    der = _manual_envelope(P256_PUB, rid=rid)
    assert sk.open_enveloped_data(der, recipient_private_key=P256,
                                  recipient_certificate=cert) == CONTENT
    with pytest.raises(DecodeError, match="identifier"):
        sk.open_enveloped_data(der, recipient_private_key=P256,
                               recipient_certificate=RECIP_CERT["p384"])


P384_POINT = RECIP_KEY["p384"].public_key().public_bytes(
    serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
_GOOD_POINT = P256_PUB.public_bytes(
    serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
OFF_CURVE_POINT = _GOOD_POINT[:-1] + bytes([_GOOD_POINT[-1] ^ 1])


@pytest.mark.parametrize("kw,match", [
    ({"originator_point": P384_POINT}, "not a point"),
    ({"originator_point": OFF_CURVE_POINT}, "not a point"),
    ({"originator_point": b"\x04"}, "not a point"),
    ({"originator_params": keys.ECDomainParameters(name="named", value="secp384r1")},
     "do not name"),
    ({"originator": "ski"}, "originatorKey"),
    ({"version": 2}, "version"),
    ({"scheme": "1.3.133.16.840.63.0.16"}, "unsupported key agreement"),  # 1-pass ECMQV
    ({"scheme": "1.2.840.113549.1.1.1"}, "unsupported key agreement"),
    ({"wrap": "1.2.840.113549.1.9.16.3.6"}, "unsupported key wrap"),  # 3DES wrap
    ({"wrap_params": "integer"}, "no parameters"),
    ({"wrap_params": "missing"}, "no key wrap"),
    ({"kdf_hash": hashes.SHA384()}, "unwrap"),  # KDF hash not the scheme's
    ({"shared_info_params": "integer"}, "unwrap"),
], ids=["p384-point", "off-curve", "bare-04", "other-curve-params", "static-originator",
        "version", "mqv", "rsa-oid", "3des-wrap", "wrap-params", "no-wrap", "kdf-hash",
        "si-garbage"])
def test_independent_variants_rejected(kw: dict[str, object], match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        _open(_manual_envelope(P256_PUB, **kw))  # type: ignore[arg-type]


# -- hostile input: only DecodeError --------------------------------------------------

PACKAGE = sk.encrypt_key_package(
    SERVER_KEY, signer_key=SIGNER_KEY, signer_cert=SIGNER_CERT,
    recipient=sk.KeyAgreeRecipient.from_certificate(RECIP_CERT["p256"]))


@given(cut=st.integers(0, 5000))
def test_truncated(cut: int) -> None:
    with pytest.raises(DecodeError):
        sk.decrypt_key_package(PACKAGE[: cut % len(PACKAGE)], recipient_private_key=P256)


@settings(max_examples=200)
@given(pos=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_bit_flip(pos: int, bit: int) -> None:
    der = bytearray(PACKAGE)
    pos %= len(der)
    der[pos] ^= 1 << bit
    try:
        out = sk.decrypt_key_package(bytes(der), recipient_private_key=P256,
                                     verify_with=SIGNER_CERT)
    except DecodeError:
        return
    assert _pkcs8(out.private_key) == _pkcs8(SERVER_KEY)


@settings(max_examples=150)
@given(pos=st.integers(0, 400), data=st.binary(min_size=1, max_size=6))
def test_garbled_kari(pos: int, data: bytes) -> None:
    """Overwrite bytes inside the RecipientInfos: still only DecodeError."""
    der = bytearray(PACKAGE)
    start = der.find(b"\xa1")  # roughly where the kari starts
    pos = start + pos % 200
    der[pos:pos + len(data)] = data
    try:
        sk.decrypt_key_package(bytes(der), recipient_private_key=P256)
    except DecodeError:
        pass


@given(data=st.binary(max_size=300))
def test_garbage(data: bytes) -> None:
    try:
        sk.open_enveloped_data(data, recipient_private_key=P256)
    except DecodeError:
        pass


# -- openssl interop --------------------------------------------------------------------


def _run(args: list[str]) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(args, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc


def _write(tmp_path: Path, curve: str) -> tuple[Path, Path]:
    cert_path, key_path = tmp_path / f"{curve}.pem", tmp_path / f"{curve}.key"
    cert_path.write_bytes(pem(RECIP_CERT[curve]))
    key_path.write_bytes(RECIP_KEY[curve].private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_path, key_path


@pytest.mark.parametrize("curve", CURVES)
@pytest.mark.parametrize("by_ski", [True, False])
def test_openssl_opens_our_kari(openssl: str, tmp_path: Path, curve: str, by_ski: bool) -> None:
    cert_path, key_path = _write(tmp_path, curve)
    recipient = sk.KeyAgreeRecipient.from_certificate(
        RECIP_CERT[curve], use_issuer_and_serial=not by_ski)
    der = sk.build_enveloped_data("data", CONTENT, recipient)
    (tmp_path / "env.der").write_bytes(der)
    out = _run([openssl, "cms", "-decrypt", "-inform", "DER", "-in", str(tmp_path / "env.der"),
                "-binary", "-recip", str(cert_path), "-inkey", str(key_path)]).stdout
    assert out == CONTENT


def test_openssl_opens_our_ukm_and_options(openssl: str, tmp_path: Path) -> None:
    cert_path, key_path = _write(tmp_path, "p384")
    recipient = dataclasses.replace(
        sk.KeyAgreeRecipient.from_certificate(RECIP_CERT["p384"]),
        ukm=b"user keying material", kdf_hash="sha256", key_wrap="aes128_wrap")
    (tmp_path / "env.der").write_bytes(sk.build_enveloped_data("data", CONTENT, recipient))
    out = _run([openssl, "cms", "-decrypt", "-inform", "DER", "-in", str(tmp_path / "env.der"),
                "-binary", "-recip", str(cert_path), "-inkey", str(key_path)]).stdout
    assert out == CONTENT


def test_openssl_opens_our_key_package(openssl: str, tmp_path: Path) -> None:
    """The whole RFC 7030 layering: openssl decrypts, then verifies the signature."""
    cert_path, key_path = _write(tmp_path, "p256")
    der = sk.encrypt_key_package(
        SERVER_KEY, signer_key=SIGNER_KEY, signer_cert=SIGNER_CERT,
        recipient=sk.KeyAgreeRecipient.from_certificate(RECIP_CERT["p256"]))
    (tmp_path / "env.der").write_bytes(der)
    inner = _run([openssl, "cms", "-decrypt", "-inform", "DER", "-in", str(tmp_path / "env.der"),
                  "-binary", "-recip", str(cert_path), "-inkey", str(key_path)]).stdout
    wrapped = cms.ContentInfo({"content_type": "signed_data",
                               "content": cms.SignedData.load(inner)}).dump()
    (tmp_path / "signed.der").write_bytes(wrapped)
    package = _run([openssl, "cms", "-verify", "-noverify", "-inform", "DER", "-binary",
                    "-in", str(tmp_path / "signed.der")]).stdout
    assert AsymmetricKeyPackage.load(package)[0].dump() == _pkcs8(SERVER_KEY)


@pytest.mark.parametrize("curve", ["p256", "p384", "p521"])
@pytest.mark.parametrize("cipher,keyid,keyopt", [
    ("-aes256", False, None),                   # openssl's defaults: stdDH-sha1kdf
    ("-aes128", True, None),                    # rid rKeyId
    ("-aes256", True, "ecdh_kdf_md:sha384"),
    ("-aes192", False, "ecdh_kdf_md:sha512"),
    ("-aes128", False, "ecdh_kdf_md:sha224"),
    ("-aes256", False, "ecdh_cofactor_mode:1"),  # cofactorDH-sha1kdf
], ids=["default", "keyid", "sha384", "sha512", "sha224", "cofactor"])
def test_we_open_openssl_kari(openssl: str, tmp_path: Path, curve: str, cipher: str,
                              keyid: bool, keyopt: str | None) -> None:
    cert_path, _ = _write(tmp_path, curve)
    (tmp_path / "msg").write_bytes(CONTENT)
    # -keyopt after -recip: openssl applies it to the preceding recipient.
    der = _run([openssl, "cms", "-encrypt", "-binary", "-outform", "DER", cipher,
                *(["-keyid"] if keyid else []), "-in", str(tmp_path / "msg"),
                "-recip", str(cert_path), *(["-keyopt", keyopt] if keyopt else [])]).stdout
    kari = _kari_of(der)
    (rek,) = kari["recipient_encrypted_keys"]
    assert rek["rid"].name == ("r_key_id" if keyid else "issuer_and_serial_number")
    key = RECIP_KEY[curve]
    assert sk.open_enveloped_data(der, recipient_private_key=key) == CONTENT
    assert sk.open_enveloped_data(der, recipient_private_key=key,
                                  recipient_certificate=RECIP_CERT[curve]) == CONTENT
    if keyid:
        assert sk.open_enveloped_data(der, recipient_private_key=key,
                                      subject_key_identifier=_ski(RECIP_CERT[curve])) == CONTENT
    with pytest.raises(DecodeError):
        sk.open_enveloped_data(der, recipient_private_key=OTHER_P256_KEY)


def test_we_open_openssl_key_package(openssl: str, tmp_path: Path) -> None:
    """Our signed key package, enveloped by openssl for an EC recipient."""
    cert_path, _ = _write(tmp_path, "p384")
    plain = sk.encrypt_key_package(  # any recipient; we only want the SignedData inside
        SERVER_KEY, signer_key=SIGNER_KEY, signer_cert=SIGNER_CERT,
        recipient=sk.KeyAgreeRecipient.from_certificate(RECIP_CERT["p256"]))
    signed = sk.open_enveloped_data(plain, recipient_private_key=P256,
                                    expected_content_type="signed_data")
    (tmp_path / "signed").write_bytes(signed)
    der = _run([openssl, "cms", "-encrypt", "-binary", "-outform", "DER", "-aes256",
                "-in", str(tmp_path / "signed"), "-recip", str(cert_path)]).stdout
    # openssl types the content id-data; re-label it id-signedData as RFC 7030 wants.
    ci = cms.ContentInfo.load(der)
    ci["content"]["encrypted_content_info"]["content_type"] = "signed_data"
    out = sk.decrypt_key_package(ci.dump(force=True), recipient_private_key=RECIP_KEY["p384"],
                                 verify_with=SIGNER_CERT)
    assert _pkcs8(out.private_key) == _pkcs8(SERVER_KEY)
