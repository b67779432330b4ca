"""Tests for estproto.codecs.signeddata (CMS SignedData, RFC 5652 section 5)."""

from __future__ import annotations

import dataclasses
import datetime
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, strategies as st

from estproto import BadSignature, DecodeError, LocalProtocolError, MessageTooLarge
from estproto.codecs.signeddata import (
    ID_DATA,
    SignedContent,
    Signer,
    build_signed_data,
    build_signed_data_multi,
    find_signer_certificate,
    parse_signed_data,
    verify_signer,
)

from pki import PrivateKey, der, issue, make_ca, make_key, name, pem, sign_hash
from vectors import vector_der

PKIDATA = "1.3.6.1.5.5.7.12.2"
CONTENT = b"\x30\x0ahello, CMS"

CA_CERT, CA_KEY = make_ca("SignedData Test CA")
KEYS: dict[str, PrivateKey] = {kind: make_key(kind) for kind in
                               ("p256", "p384", "p521", "rsa2048", "ed25519", "ed448")}


def _cert_with_ski(key: PrivateKey, cn: str = "signer") -> x509.Certificate:
    """A leaf certificate carrying a SubjectKeyIdentifier (openssl matches SKI sids on it)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(cn))
        .issuer_name(CA_CERT.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return builder.sign(CA_KEY, sign_hash(CA_KEY))  # type: ignore[arg-type]


CERTS = {kind: _cert_with_ski(key, kind) for kind, key in KEYS.items()}


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("kind", list(KEYS))
@pytest.mark.parametrize("by_cert", [True, False])
def test_round_trip_each_key_type(kind: str, by_cert: bool) -> None:
    key, cert = KEYS[kind], CERTS[kind]
    msg = build_signed_data(PKIDATA, CONTENT, key, signer_cert=cert if by_cert else None,
                            certificates=[CA_CERT])
    content = parse_signed_data(msg, expected_content_type=PKIDATA)
    assert content.econtent_type == PKIDATA
    assert content.econtent == CONTENT
    assert len(content.signers) == 1
    view = content.signers[0]
    if by_cert:
        assert view.version == 1
        assert view.serial_number == cert.serial_number
        assert view.issuer == CA_CERT.subject.public_bytes()
        assert view.subject_key_identifier is None
        assert find_signer_certificate(content, 0) == cert
        assert set(content.certificates) == {CA_CERT, cert}
    else:
        assert view.version == 3
        assert view.subject_key_identifier == x509.SubjectKeyIdentifier.from_public_key(
            key.public_key()).digest  # type: ignore[arg-type]
        assert find_signer_certificate(content, 0) is None
        assert content.certificates == (CA_CERT,)
    assert view.content_type_attribute == PKIDATA
    verify_signer(content, 0, key.public_key())  # type: ignore[arg-type]


def test_rfc8419_algorithm_identifiers() -> None:
    ed = parse_signed_data(build_signed_data(PKIDATA, CONTENT, KEYS["ed25519"])).signers[0]
    assert ed.digest_algorithm == "2.16.840.1.101.3.4.2.3"  # id-sha512
    assert ed.digest_parameters is None
    assert ed.signature_algorithm == "1.3.101.112"
    assert ed.signature_parameters is None
    ed4 = parse_signed_data(build_signed_data(PKIDATA, CONTENT, KEYS["ed448"])).signers[0]
    assert ed4.digest_algorithm == "2.16.840.1.101.3.4.2.18"  # id-shake256-len
    assert ed4.digest_parameters == b"\x02\x02\x02\x00"  # INTEGER 512
    assert ed4.signature_algorithm == "1.3.101.113"
    ec = parse_signed_data(build_signed_data(PKIDATA, CONTENT, KEYS["p384"])).signers[0]
    assert ec.signature_algorithm == "1.2.840.10045.4.3.3"
    assert ec.digest_algorithm == "2.16.840.1.101.3.4.2.2"


def test_signed_attributes_are_the_set_that_was_signed() -> None:
    key = KEYS["p256"]
    content = parse_signed_data(build_signed_data(PKIDATA, CONTENT, key))
    attrs = content.signers[0].signed_attributes
    assert attrs is not None and attrs[0] == 0x31
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    key.public_key().verify(content.signers[0].signature, attrs, ec.ECDSA(hashes.SHA256()))


def test_multiple_signers_and_unsigned() -> None:
    msg = build_signed_data_multi(
        PKIDATA, CONTENT,
        [Signer(KEYS["p256"], CERTS["p256"]), Signer(KEYS["ed25519"]),
         Signer(KEYS["rsa2048"], CERTS["rsa2048"], hash_algorithm=hashes.SHA384())],
    )
    content = parse_signed_data(msg)
    assert len(content.signers) == 3
    # The SET OF SignerInfo is DER-sorted: find each by its sid.
    for i, view in enumerate(content.signers):
        cert = find_signer_certificate(content, i)
        key = {CERTS["p256"]: KEYS["p256"], CERTS["rsa2048"]: KEYS["rsa2048"]}.get(
            cert, KEYS["ed25519"]) if cert is not None else KEYS["ed25519"]
        verify_signer(content, i, key.public_key())  # type: ignore[arg-type]
    unsigned = parse_signed_data(build_signed_data(PKIDATA, CONTENT, None, certificates=[CA_CERT]))
    assert unsigned.signers == ()
    assert unsigned.certificates == (CA_CERT,)
    assert unsigned.econtent == CONTENT


def test_id_data_uses_version_1() -> None:
    msg = build_signed_data(ID_DATA, b"x", KEYS["p256"], signer_cert=CERTS["p256"])
    assert b"\x02\x01\x01" in msg[:30]  # SignedData version 1 (RFC 5652 5.1)
    verify_signer(parse_signed_data(msg), 0, KEYS["p256"].public_key())  # type: ignore[arg-type]


@given(
    econtent=st.binary(max_size=300),
    arcs=st.lists(st.integers(0, 2**40), min_size=1, max_size=6),
    first=st.integers(0, 2),
)
def test_hypothesis_round_trip(econtent: bytes, arcs: list[int], first: int) -> None:
    oid = ".".join(str(a) for a in [first, arcs[0] % 40, *arcs[1:]])
    msg = build_signed_data(oid, econtent, KEYS["p256"])
    content = parse_signed_data(msg, expected_content_type=oid)
    assert (content.econtent_type, content.econtent) == (oid, econtent)
    verify_signer(content, 0, KEYS["p256"].public_key())  # type: ignore[arg-type]


# ---------------------------------------------------------------- bad signatures

def _content() -> tuple[bytes, SignedContent]:
    msg = build_signed_data(PKIDATA, CONTENT, KEYS["p256"], signer_cert=CERTS["p256"])
    return msg, parse_signed_data(msg)


def test_tampered_signature() -> None:
    msg, content = _content()
    view = content.signers[0]
    bad_sig = bytearray(view.signature)
    bad_sig[-1] ^= 1
    bad = dataclasses.replace(content, signers=(dataclasses.replace(view, signature=bytes(bad_sig)),))
    with pytest.raises(BadSignature):
        verify_signer(bad, 0, KEYS["p256"].public_key())  # type: ignore[arg-type]
    # The same on the wire: flip a byte inside the signature value itself.
    pos = msg.index(view.signature)
    wire = bytearray(msg)
    wire[pos + len(view.signature) - 1] ^= 0x01
    with pytest.raises(BadSignature):
        verify_signer(parse_signed_data(bytes(wire)), 0, KEYS["p256"].public_key())  # type: ignore[arg-type]


def test_tampered_content_and_attributes() -> None:
    msg, content = _content()
    with pytest.raises(BadSignature, match="messageDigest"):
        verify_signer(dataclasses.replace(content, econtent=CONTENT + b"!"), 0,
                      KEYS["p256"].public_key())  # type: ignore[arg-type]
    with pytest.raises(BadSignature, match="contentType"):
        verify_signer(dataclasses.replace(content, econtent_type=ID_DATA), 0,
                      KEYS["p256"].public_key())  # type: ignore[arg-type]
    wire = msg.replace(b"hello, CMS", b"hellO, CMS")
    with pytest.raises(BadSignature):
        verify_signer(parse_signed_data(wire), 0, KEYS["p256"].public_key())  # type: ignore[arg-type]


def test_wrong_key() -> None:
    _, content = _content()
    with pytest.raises(BadSignature):
        verify_signer(content, 0, make_key("p256").public_key())  # type: ignore[arg-type, arg-type]
    with pytest.raises(BadSignature, match="not RSA|not EC"):
        verify_signer(content, 0, KEYS["rsa2048"].public_key())  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        verify_signer(content, 1, KEYS["p256"].public_key())  # type: ignore[arg-type]


def test_bad_builder_arguments() -> None:
    with pytest.raises(LocalProtocolError):
        build_signed_data("not an oid", b"", KEYS["p256"])
    with pytest.raises(LocalProtocolError):
        build_signed_data(PKIDATA, b"", KEYS["p256"], signer_cert=CERTS["p384"])
    with pytest.raises(LocalProtocolError):
        build_signed_data(PKIDATA, b"", KEYS["ed25519"], hash_algorithm=hashes.SHA256())
    with pytest.raises(LocalProtocolError):
        build_signed_data(PKIDATA, b"", KEYS["p256"], hash_algorithm=hashes.SHA1())


# ---------------------------------------------------------------- decoding errors

def test_expected_content_type_and_size() -> None:
    msg, _ = _content()
    with pytest.raises(DecodeError, match="expected"):
        parse_signed_data(msg, expected_content_type="1.3.6.1.5.5.7.12.3")
    with pytest.raises(MessageTooLarge):
        parse_signed_data(msg, max_size=len(msg) - 1)
    with pytest.raises(DecodeError):
        parse_signed_data(b"")


def test_bare_signeddata_vector_strict_and_lenient() -> None:
    raw = vector_der("cmc-pkiresponse-failed-bare-signeddata.b64")
    with pytest.raises(DecodeError, match="ContentInfo"):
        parse_signed_data(raw)
    content = parse_signed_data(raw, lenient=True)
    assert content.bare
    assert content.econtent_type == "1.3.6.1.5.5.7.12.3"
    # PKCS#7 v1.5 style: eContent [0] holds the PKIResponse itself.
    assert content.econtent[:1] == b"\x30" and len(content.econtent) == 38
    assert content.signers == () and content.certificates == ()


def test_certs_only_vector() -> None:
    content = parse_signed_data(vector_der("rfc7030-A1-cacerts-response.b64"))
    assert content.econtent_type == ID_DATA
    assert not content.econtent_present and content.econtent == b""
    assert len(content.certificates) == 4
    assert content.signers == ()


def _check_only_decode_errors(data: bytes) -> None:
    try:
        content = parse_signed_data(data, lenient=True)
    except DecodeError:
        return
    for i in range(len(content.signers)):
        for key in (KEYS["p256"], KEYS["ed25519"]):
            try:
                verify_signer(content, i, key.public_key())  # type: ignore[arg-type]
            except DecodeError:
                pass
        find_signer_certificate(content, i)


@given(st.binary(max_size=400))
def test_garbage_only_decode_error(data: bytes) -> None:
    _check_only_decode_errors(data)
    _check_only_decode_errors(b"\x30\x82" + len(data).to_bytes(2, "big") + data)


SAMPLES = [
    build_signed_data(PKIDATA, CONTENT, KEYS["p256"], signer_cert=CERTS["p256"]),
    build_signed_data(PKIDATA, CONTENT, KEYS["ed25519"]),
]


@pytest.mark.parametrize("sample", range(len(SAMPLES)))
def test_truncated_only_decode_error(sample: int) -> None:
    msg = SAMPLES[sample]
    for n in range(len(msg)):
        with pytest.raises(DecodeError):
            parse_signed_data(msg[:n])


@given(st.data())
def test_bit_flips_only_decode_error(data: st.DataObject) -> None:
    msg = bytearray(data.draw(st.sampled_from(SAMPLES)))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(msg) - 1))
        msg[pos] ^= 1 << data.draw(st.integers(0, 7))
    _check_only_decode_errors(bytes(msg))


def test_not_signed_data() -> None:
    # ContentInfo of id-data.
    with pytest.raises(DecodeError, match="not id-signedData"):
        parse_signed_data(bytes.fromhex("300f06092a864886f70d010701a0020400"))


# ---------------------------------------------------------------- openssl cross-checks

def _openssl_can_cms_eddsa(openssl: str, tmp_path: Path) -> bool:
    """OpenSSL 3.0 cannot sign or verify CMS with EdDSA (support came in 3.2)."""
    msg = build_signed_data(ID_DATA, b"x", KEYS["ed25519"], signer_cert=CERTS["ed25519"])
    (tmp_path / "probe.der").write_bytes(msg)
    probe = subprocess.run([openssl, "cms", "-verify", "-noverify", "-inform", "DER",
                            "-in", str(tmp_path / "probe.der"), "-out", str(tmp_path / "probe.out")],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.parametrize("kind", ["rsa2048", "p256", "p384", "p521", "ed25519", "ed448"])
@pytest.mark.parametrize("by_cert", [True, False])
def test_openssl_verifies_ours(openssl: str, tmp_path: Path, kind: str, by_cert: bool) -> None:
    if kind.startswith("ed") and not _openssl_can_cms_eddsa(openssl, tmp_path):
        pytest.skip("this openssl has no CMS EdDSA support (needs OpenSSL >= 3.2)")
    key, cert = KEYS[kind], CERTS[kind]
    msg = build_signed_data(PKIDATA, CONTENT, key, signer_cert=cert if by_cert else None)
    (tmp_path / "m.der").write_bytes(msg)
    (tmp_path / "ca.pem").write_bytes(pem(CA_CERT))
    (tmp_path / "signer.pem").write_bytes(pem(cert))
    cmd = [openssl, "cms", "-verify", "-inform", "DER", "-in", str(tmp_path / "m.der"),
           "-CAfile", str(tmp_path / "ca.pem"), "-purpose", "any",
           "-out", str(tmp_path / "out.bin")]
    if not by_cert:
        cmd += ["-certfile", str(tmp_path / "signer.pem")]
    result = subprocess.run(cmd, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "out.bin").read_bytes() == CONTENT
    dump = subprocess.run([openssl, "asn1parse", "-inform", "DER", "-in", str(tmp_path / "m.der")],
                          capture_output=True, check=True).stdout.decode()
    assert "id-cct-PKIData" in dump or "1.3.6.1.5.5.7.12.2" in dump


def test_openssl_rejects_our_tampered_message(openssl: str, tmp_path: Path) -> None:
    msg = build_signed_data(PKIDATA, CONTENT, KEYS["p256"], signer_cert=CERTS["p256"])
    (tmp_path / "m.der").write_bytes(msg.replace(b"hello, CMS", b"hellO, CMS"))
    result = subprocess.run([openssl, "cms", "-verify", "-noverify", "-inform", "DER",
                             "-in", str(tmp_path / "m.der"), "-out", str(tmp_path / "o")],
                            capture_output=True)
    assert result.returncode != 0


@pytest.mark.parametrize("kind", ["rsa2048", "p256", "p384", "p521", "rsa-pss"])
@pytest.mark.parametrize("flags", [[], ["-keyid"], ["-stream"], ["-nosmimecap", "-noattr"]])
def test_we_verify_openssl(openssl: str, tmp_path: Path, kind: str, flags: list[str]) -> None:
    if kind == "rsa-pss" and "-stream" in flags:
        pytest.skip("openssl cms refuses -keyopt together with -stream")
    key_kind = "rsa2048" if kind == "rsa-pss" else kind
    key, cert = KEYS[key_kind], CERTS[key_kind]
    (tmp_path / "k.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "c.pem").write_bytes(pem(cert))
    payload = bytes(range(256)) * 3
    (tmp_path / "in.bin").write_bytes(payload)
    cmd = [openssl, "cms", "-sign", "-nodetach", "-binary", "-outform", "DER",
           "-in", str(tmp_path / "in.bin"), "-signer", str(tmp_path / "c.pem"),
           "-inkey", str(tmp_path / "k.pem"), "-out", str(tmp_path / "s.der"), *flags]
    if kind == "rsa-pss":
        cmd += ["-keyopt", "rsa_padding_mode:pss"]
    subprocess.run(cmd, check=True, capture_output=True)
    content = parse_signed_data((tmp_path / "s.der").read_bytes())
    assert content.econtent_type == ID_DATA
    assert content.econtent == payload
    assert find_signer_certificate(content, 0) == cert
    if "-keyid" in flags:
        assert content.signers[0].subject_key_identifier is not None
    if "-noattr" in flags:
        assert content.signers[0].signed_attributes is None
    if kind == "rsa-pss":
        assert content.signers[0].signature_algorithm == "1.2.840.113549.1.1.10"
    verify_signer(content, 0, key.public_key())  # type: ignore[arg-type]
    with pytest.raises(BadSignature):
        verify_signer(dataclasses.replace(content, econtent=payload[:-1]), 0, key.public_key())  # type: ignore[arg-type]


def test_certificate_with_bad_version_is_decode_error() -> None:
    """cryptography raises InvalidVersion (not ValueError): found by fuzzing."""
    msg = build_signed_data(PKIDATA, CONTENT, KEYS["p256"], signer_cert=CERTS["p256"])
    bad = msg.replace(bytes.fromhex("a003020102"), bytes.fromhex("a003020122"))
    assert bad != msg
    with pytest.raises(DecodeError):
        parse_signed_data(bad)
