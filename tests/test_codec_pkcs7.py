"""Tests for estproto.codecs.pkcs7: certs-only SignedData and root rollover."""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path

import pytest
from asn1crypto import cms, core
from asn1crypto import crl as crl_module
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.serialization import pkcs7 as crypto_pkcs7
from hypothesis import given
from hypothesis import strategies as st

from estproto import DecodeError, LocalProtocolError, MessageTooLarge
from estproto.codecs import pkcs7 as mod
from estproto.codecs.pkcs7 import (
    CACertificates,
    classify_cacerts,
    decode_certs_only,
    encode_certs_only,
    find_issued_certificate,
)

import pki
from vectors import vector_der

DER = serialization.Encoding.DER

# A small pool of real certificates, built once: a P-256 CA and five leaves.
CA_CERT, CA_KEY = pki.make_ca("Pool CA")
LEAF_KEYS = [pki.make_key("p256") for _ in range(5)]
LEAVES = [pki.issue(CA_CERT, CA_KEY, k.public_key(), cn=f"leaf {i}") for i, k in enumerate(LEAF_KEYS)]
POOL = [CA_CERT, *LEAVES]
POOL_DER = [pki.der(c) for c in POOL]

A1_CNS = ["estExampleCA OwO", "estExampleCA NwO", "estExampleCA OwN", "estExampleCA NwN"]


def cn(cert: x509.Certificate) -> str:
    value = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert isinstance(value, str)
    return value


def asn1crypto_certs_only(ders: list[bytes], version: str = "v1") -> bytes:
    """The same structure built with asn1crypto (an independent encoder)."""
    signed = cms.SignedData(
        {
            "version": version,
            "digest_algorithms": [],
            "encap_content_info": {"content_type": "data"},
            "certificates": [
                cms.CertificateChoices({"certificate": asn1_x509.Certificate.load(d)}) for d in ders
            ],
            "signer_infos": [],
        }
    )
    return bytes(cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump())


def to_indefinite(der: bytes) -> bytes:
    """Re-encode the outer ContentInfo / [0] / SignedData with BER
    indefinite lengths (what OpenSSL streaming output looks like)."""
    _, pos, end = mod._read(der, 0, len(der))
    _, oid_start, oid_end = mod._read(der, pos, end)
    oid = der[pos:oid_end]
    _, sd_pos, _ = mod._read(der, oid_end, end)
    _, inner_start, inner_end = mod._read(der, sd_pos, end)
    sd = b"\x30\x80" + der[inner_start:inner_end] + b"\x00\x00"
    return b"\x30\x80" + oid + b"\xa0\x80" + sd + b"\x00\x00" + b"\x00\x00"


# --------------------------------------------------------------------------
# Encoding


@pytest.mark.parametrize("count", [1, 2, 6])
def test_encode_matches_asn1crypto_and_cryptography(count: int) -> None:
    certs = POOL[:count]
    ours = encode_certs_only(certs)
    assert ours == asn1crypto_certs_only([pki.der(c) for c in certs])
    assert ours == crypto_pkcs7.serialize_certificates(certs, DER)
    # Bytes input gives the same bytes.
    assert encode_certs_only([pki.der(c) for c in certs]) == ours


def test_encode_sorts_as_der_set_of() -> None:
    forwards = encode_certs_only(POOL)
    backwards = encode_certs_only(list(reversed(POOL)))
    assert forwards == backwards
    inner = [bytes(c.chosen.dump()) for c in cms.ContentInfo.load(forwards)["content"]["certificates"]]
    assert inner == sorted(POOL_DER)


def test_encode_fields() -> None:
    info = cms.ContentInfo.load(encode_certs_only(LEAVES[:2]))
    assert info["content_type"].native == "signed_data"
    signed = info["content"]
    assert signed["version"].native == "v1"
    assert len(signed["digest_algorithms"]) == 0
    assert signed["encap_content_info"]["content_type"].native == "data"
    assert isinstance(signed["encap_content_info"]["content"], core.Void)
    assert isinstance(signed["crls"], core.Void)
    assert len(signed["signer_infos"]) == 0


@pytest.mark.parametrize(
    "bad",
    [[], (), b"\x30\x00", "certs", [b"not der"], [b"\x31\x00"], [b"\x30\x05\x00"], [42], [POOL_DER[0] + b"\x00"]],
)
def test_encode_bad_arguments(bad: object) -> None:
    with pytest.raises(LocalProtocolError):
        encode_certs_only(bad)  # type: ignore[arg-type]


@given(st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=8))
def test_roundtrip_random_subsets(indices: list[int]) -> None:
    certs = [POOL[i] for i in indices]
    der = encode_certs_only(certs)
    decoded = decode_certs_only(der)
    assert sorted(pki.der(c) for c in decoded) == sorted(pki.der(c) for c in certs)
    # cryptography reads what we write, and the slow path agrees with the fast one.
    theirs = crypto_pkcs7.load_der_pkcs7_certificates(der)
    assert sorted(pki.der(c) for c in theirs) == sorted(pki.der(c) for c in certs)
    fast = mod._fast_choices(der)
    assert fast is not None
    assert fast == mod._slow_choices(der, len(der))
    assert decode_certs_only(to_indefinite(der)) == decoded


# --------------------------------------------------------------------------
# Decoding the RFC vectors


def test_decode_a1_cacerts_vector() -> None:
    der = vector_der("rfc7030-A1-cacerts-response.b64")
    assert len(der) == 3133
    certs = decode_certs_only(der)
    assert [cn(c) for c in certs] == A1_CNS  # order received
    assert all(isinstance(c.signature_hash_algorithm, hashes.SHA1) for c in certs)
    assert certs[1].issuer == certs[0].subject  # NwO issued by OwO
    assert certs[2].issuer == certs[3].subject  # OwN issued by NwN
    assert mod._fast_choices(der) is not None


@pytest.mark.parametrize(
    "name,subject",
    [
        ("rfc7030-A3-enroll-response.b64", "demostep4 1368141352"),
        ("rfc7030-A4-serverkeygen-cert-part.b64", "serverside key generated response"),
    ],
)
def test_decode_enroll_vectors(name: str, subject: str) -> None:
    certs = decode_certs_only(vector_der(name))
    assert [cn(c) for c in certs] == [subject]


def test_find_issued_in_a3_vector_by_csr_key() -> None:
    csr = x509.load_der_x509_csr(vector_der("rfc7030-A3-enroll-request-csr.b64"))
    certs = decode_certs_only(vector_der("rfc7030-A3-enroll-response.b64"))
    assert find_issued_certificate(certs, csr.public_key()) is certs[0]
    spki = csr.public_key().public_bytes(DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert find_issued_certificate(certs, spki) is certs[0]


def test_a1_rollover_classification_by_signature() -> None:
    certs = decode_certs_only(vector_der("rfc7030-A1-cacerts-response.b64"))
    owo, nwo, own, nwn = certs
    old_key, new_key = owo.public_key(), nwn.public_key()

    def verifies(cert: x509.Certificate, key: object) -> bool:
        try:
            key.verify(cert.signature, cert.tbs_certificate_bytes,  # type: ignore[attr-defined]
                       padding.PKCS1v15(), cert.signature_hash_algorithm)
        except Exception:
            return False
        return True

    # Independent check of who signed what (PKCS#1 v1.5 with SHA-1).
    assert verifies(owo, old_key) and not verifies(owo, new_key)
    assert verifies(nwn, new_key) and not verifies(nwn, old_key)
    assert verifies(nwo, old_key) and not verifies(nwo, new_key)
    assert verifies(own, new_key) and not verifies(own, old_key)
    assert nwo.public_key() == new_key and own.public_key() == old_key

    result = classify_cacerts(certs)
    assert isinstance(result, CACertificates)
    assert result.certificates == certs
    assert [cn(c) for c in result.roots] == ["estExampleCA OwO", "estExampleCA NwN"]
    assert [cn(c) for c in result.new_with_old] == ["estExampleCA NwO"]
    assert [cn(c) for c in result.old_with_new] == ["estExampleCA OwN"]
    assert result.intermediates == ()
    assert result.newest_root is nwn
    # Order of input does not matter.
    again = classify_cacerts(list(reversed(certs)))
    assert {cn(c) for c in again.new_with_old} == {"estExampleCA NwO"}
    assert {cn(c) for c in again.old_with_new} == {"estExampleCA OwN"}


def _root(name: str, key: pki.PrivateKey, start: datetime.datetime) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(pki.name(name))
        .issuer_name(pki.name(name))
        .public_key(key.public_key())  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    return builder.sign(key, hashes.SHA256())  # type: ignore[arg-type]


def test_generated_rollover_with_intermediate() -> None:
    t0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    old_key, new_key = pki.make_key("p256"), pki.make_key("p256")
    owo = _root("Root", old_key, t0)
    nwn = _root("Root", new_key, t0 + datetime.timedelta(days=300))
    nwo = pki.issue(owo, old_key, new_key.public_key(), cn="Root")
    own = pki.issue(nwn, new_key, old_key.public_key(), cn="Root")
    sub = pki.issue(nwn, new_key, pki.make_key("p256").public_key(), cn="Sub CA")
    # A certificate naming itself as issuer but signed by another key is no root.
    fake = pki.issue(pki.make_ca("Fake")[0], CA_KEY, LEAF_KEYS[0].public_key(), cn="Fake")
    certs = decode_certs_only(encode_certs_only([sub, own, nwn, fake, owo, nwo]))
    result = classify_cacerts(certs)
    assert set(result.roots) == {owo, nwn}
    assert result.new_with_old == (nwo,)
    assert result.old_with_new == (own,)
    assert set(result.intermediates) == {sub, fake}
    assert len(result.certificates) == 6


def test_rollover_same_dates_is_undecided() -> None:
    t0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    a_key, b_key = pki.make_key("p256"), pki.make_key("p256")
    a, b = _root("A", a_key, t0), _root("B", b_key, t0)
    cross = pki.issue(a, a_key, b_key.public_key(), cn="B")
    result = classify_cacerts([a, b, cross])
    assert result.intermediates == (cross,)
    assert result.old_with_new == result.new_with_old == ()


# --------------------------------------------------------------------------
# find_issued_certificate


def test_find_issued_never_by_position() -> None:
    certs = decode_certs_only(encode_certs_only(POOL))
    for key, leaf in zip(LEAF_KEYS, LEAVES):
        assert find_issued_certificate(certs, key.public_key()) == leaf
        assert find_issued_certificate(list(reversed(certs)), key.public_key()) == leaf
    with pytest.raises(DecodeError, match="no certificate for the requested key"):
        find_issued_certificate(certs, pki.make_key("p256").public_key())
    with pytest.raises(DecodeError):
        find_issued_certificate(certs, b"\x30\x03\x02\x01\x00")
    with pytest.raises(LocalProtocolError):
        find_issued_certificate(certs, 12345)
    with pytest.raises(LocalProtocolError):
        find_issued_certificate(certs, CA_CERT)


# --------------------------------------------------------------------------
# Decoding decisions


def test_bare_signed_data_is_rejected() -> None:
    der = vector_der("cmc-pkiresponse-failed-bare-signeddata.b64")
    with pytest.raises(DecodeError, match="bare SignedData"):
        decode_certs_only(der)
    full = encode_certs_only(LEAVES[:1])
    _, start, end = mod._read(full, 2 + 2 + 11, len(full))  # inside [0]
    inner = full[start:end]
    assert cms.SignedData.load(inner)["version"].native == "v1"
    with pytest.raises(DecodeError, match="bare SignedData"):
        decode_certs_only(inner)


def test_wrong_content_types_are_rejected() -> None:
    data_info = cms.ContentInfo({"content_type": "data", "content": b"abc"}).dump()
    with pytest.raises(DecodeError, match="expected signedData"):
        decode_certs_only(data_info)
    # A CMC Full PKI Response (id-cct-PKIResponse) is not certs-only. Built
    # from raw TLVs: other modules may register a spec for that content type.
    oid = bytes(core.ObjectIdentifier("1.3.6.1.5.5.7.12.3").dump())
    encap = mod._tlv(0x30, oid + mod._tlv(0xA0, mod._tlv(0x04, b"\x30\x00")))
    body = b"\x02\x01\x03\x31\x00" + encap + mod._tlv(0xA0, POOL_DER[1]) + b"\x31\x00"
    der = mod._tlv(0x30, mod._OID_SIGNED_DATA + mod._tlv(0xA0, mod._tlv(0x30, body)))
    assert mod._fast_choices(der) is None
    with pytest.raises(DecodeError, match="not id-data"):
        decode_certs_only(der)


def test_no_certificates_is_rejected() -> None:
    signed = cms.SignedData(
        {"version": "v1", "digest_algorithms": [], "encap_content_info": {"content_type": "data"},
         "signer_infos": []}
    )
    der = cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump()
    with pytest.raises(DecodeError, match="no X.509 certificate"):
        decode_certs_only(der)


def _certs_only_with_extra(ders: list[bytes], extra: bytes) -> bytes:
    cert_set = b"".join(sorted(ders)) + extra
    signed = mod._SD_HEAD + mod._tlv(0xA0, cert_set) + mod._EMPTY_SET
    return mod._tlv(0x30, mod._OID_SIGNED_DATA + mod._tlv(0xA0, mod._tlv(0x30, signed)))


OTHER_CHOICE = b"\xa3\x07" + b"\x06\x03\x2a\x03\x04" + b"\x05\x00"


def test_other_certificate_choices_are_skipped() -> None:
    der = _certs_only_with_extra(POOL_DER[:2], OTHER_CHOICE)
    assert cms.ContentInfo.load(der)["content"]["certificates"][2].name == "other"
    certs = decode_certs_only(der)
    assert sorted(pki.der(c) for c in certs) == sorted(POOL_DER[:2])
    assert decode_certs_only(to_indefinite(der)) == certs  # slow path too
    with pytest.raises(DecodeError, match="no X.509 certificate"):
        decode_certs_only(_certs_only_with_extra([], OTHER_CHOICE))


def test_crls_and_signer_infos_are_ignored() -> None:
    # cryptography's signed PKCS#7: id-data content, a SignerInfo, signer cert.
    signed = (
        crypto_pkcs7.PKCS7SignatureBuilder()
        .set_data(b"hello")
        .add_signer(LEAVES[0], LEAF_KEYS[0], hashes.SHA256())  # type: ignore[arg-type]
        .sign(DER, [crypto_pkcs7.PKCS7Options.Binary])
    )
    assert decode_certs_only(signed) == (LEAVES[0],)
    # A CRL in the crls field.
    now = datetime.datetime.now(datetime.timezone.utc)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(CA_CERT.subject)
        .last_update(now)
        .next_update(now + datetime.timedelta(days=1))
        .sign(CA_KEY, hashes.SHA256())  # type: ignore[arg-type]
    )
    info = cms.ContentInfo.load(encode_certs_only(LEAVES[:2]))
    sd = info["content"].copy()
    sd["crls"] = [cms.RevocationInfoChoice({"crl": crl_module.CertificateList.load(crl.public_bytes(DER))})]
    der = cms.ContentInfo({"content_type": "signed_data", "content": sd}).dump()
    assert mod._fast_choices(der) is not None
    assert sorted(pki.der(c) for c in decode_certs_only(der)) == sorted(POOL_DER[1:3])


def test_ber_and_non_minimal_lengths_take_the_slow_path() -> None:
    der = encode_certs_only(POOL)
    ber = to_indefinite(der)
    assert mod._fast_choices(ber) is None
    assert decode_certs_only(ber) == decode_certs_only(der)
    # Long-form length where the short form would do (0x81 for < 128).
    small = encode_certs_only([b"\x30\x03\x02\x01\x05"])
    assert small[1] < 0x80
    non_minimal = b"\x30\x81" + small[1:]
    assert mod._fast_choices(non_minimal) is None
    with pytest.raises(DecodeError):
        decode_certs_only(non_minimal)  # not a certificate inside


def test_limits() -> None:
    der = encode_certs_only(POOL)
    with pytest.raises(MessageTooLarge):
        decode_certs_only(der, max_size=len(der) - 1)
    assert len(decode_certs_only(der, max_size=len(der))) == 6
    with pytest.raises(MessageTooLarge):
        decode_certs_only(der, max_certificates=5)
    assert len(decode_certs_only(der, max_certificates=6)) == 6
    with pytest.raises(MessageTooLarge):
        decode_certs_only(to_indefinite(der), max_certificates=5)


def test_not_a_certificate_inside() -> None:
    der = _certs_only_with_extra([POOL_DER[0], b"\x30\x03\x02\x01\x05"], b"")
    with pytest.raises(DecodeError, match="certificate"):
        decode_certs_only(der)


# --------------------------------------------------------------------------
# Garbage in, DecodeError out


def _decode_or_decode_error(data: bytes) -> None:
    try:
        result = decode_certs_only(data)
    except DecodeError:
        return
    assert all(isinstance(c, x509.Certificate) for c in result)


@given(st.binary(max_size=600))
def test_garbage_only_decode_error(data: bytes) -> None:
    _decode_or_decode_error(data)


@given(st.binary(max_size=200))
def test_garbage_after_valid_prefix(data: bytes) -> None:
    _decode_or_decode_error(encode_certs_only(LEAVES[:1])[:40] + data)


def test_every_truncation_is_decode_error() -> None:
    der = encode_certs_only(POOL[:2])
    for cut in range(len(der)):
        with pytest.raises(DecodeError):
            decode_certs_only(der[:cut])
    ber = to_indefinite(der)
    for cut in range(0, len(ber), 7):
        with pytest.raises(DecodeError):
            decode_certs_only(ber[:cut])


@given(st.integers(0, 8 * 700 - 1), st.booleans())
def test_bit_flips(bit: int, indefinite: bool) -> None:
    der = encode_certs_only(POOL[:1])
    if indefinite:
        der = to_indefinite(der)
    bit %= 8 * len(der)
    flipped = bytearray(der)
    flipped[bit // 8] ^= 1 << (bit % 8)
    _decode_or_decode_error(bytes(flipped))


def test_type_error_for_non_bytes() -> None:
    with pytest.raises(TypeError):
        decode_certs_only("MIIB")  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# Cross-checks with OpenSSL


def test_openssl_reads_our_encoding(openssl: str, tmp_path: Path) -> None:
    path = tmp_path / "certs.p7b"
    path.write_bytes(encode_certs_only(POOL))
    out = subprocess.run(
        [openssl, "pkcs7", "-inform", "DER", "-in", str(path), "-print_certs", "-noout"],
        capture_output=True, text=True, check=True,
    ).stdout
    subjects = sorted(line.split("CN", 1)[1].lstrip(" =") for line in out.splitlines()
                      if line.startswith("subject="))
    assert subjects == sorted(["Pool CA"] + [f"leaf {i}" for i in range(5)])


def test_we_read_openssl_crl2pkcs7(openssl: str, tmp_path: Path) -> None:
    chain = tmp_path / "chain.pem"
    chain.write_bytes(b"".join(pki.pem(c) for c in POOL[:4]))
    out = tmp_path / "out.p7b"
    subprocess.run(
        [openssl, "crl2pkcs7", "-nocrl", "-certfile", str(chain), "-outform", "DER",
         "-out", str(out)],
        capture_output=True, check=True,
    )
    decoded = decode_certs_only(out.read_bytes())
    assert sorted(pki.der(c) for c in decoded) == sorted(POOL_DER[:4])
