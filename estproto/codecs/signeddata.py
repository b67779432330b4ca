"""CMS SignedData (RFC 5652 section 5): a generic signer and verifier.

Used for CMC Full PKI Requests and Responses (RFC 5272 sections 3.2 and 4.2)
and for the signed key package of an encrypted serverkeygen response
(RFC 7030 section 4.4.2). It implements:

* RFC 5652 5.1-5.6: SignedData, EncapsulatedContentInfo, SignerInfo, the
  message digest and signature processes, with the two mandatory signed
  attributes (contentType, messageDigest; 5.3, 11.1, 11.2).
* RFC 3370 / RFC 5754 / RFC 4056 / RFC 5753 / RFC 8419: RSA PKCS#1 v1.5
  (and RSASSA-PSS for verification), ECDSA, Ed25519 and Ed448 signers.

Strategy: building goes through asn1crypto's ``cms`` classes, which sort the
SET OF signed attributes into DER order; the signature is computed over that
exact SET encoding (RFC 5652 5.4: the ``[0] IMPLICIT`` tag is replaced by the
SET tag ``0x31`` for signing). Parsing reads the structure with asn1crypto but
keeps the signed attributes *as received* (never re-encoded), so a signature
stays verifiable even if asn1crypto would encode them differently.
Certificates are exposed as :class:`cryptography.x509.Certificate`.

The EncapsulatedContentInfo is read by hand (two TLVs) rather than through
asn1crypto's spec, because a lenient decoder must accept the PKCS#7 v1.5 form
in which ``eContent [0]`` holds the content itself instead of an OCTET STRING
(RFC 5652 5.2.1 discusses this compatibility case).

Limitations, said plainly: SHA-1 and MD5 are refused when verifying; only
X.509 certificates are exposed (attribute and "other" certificates are
skipped); CRLs are ignored; certificate path validation is the caller's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

from asn1crypto import algos, cms, core, parser
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa

from .._errors import BadSignature, DecodeError, LocalProtocolError
from .._limits import MAX_CERTIFICATES, MAX_DER_SIZE
from ._der import check_size, decoding
from .external_key import ExternalSigningKey

__all__ = [
    "ID_DATA",
    "ID_SIGNED_DATA",
    "MAX_SIGNERS",
    "SigningKey",
    "VerifyingKey",
    "Signer",
    "SignerInfoView",
    "SignedContent",
    "build_signed_data",
    "build_signed_data_multi",
    "parse_signed_data",
    "verify_signer",
    "find_signer_certificate",
    "signer_matches_certificate",
]

#: Most SignerInfos we read from one SignedData. CMC and EST messages carry
#: one (RFC 5272 3.2.1.3: "there MUST be only one SignerInfo" when the request
#: key signs); a handful allows countersigning RAs without unbounded work.
MAX_SIGNERS = 16

ID_DATA = "1.2.840.113549.1.7.1"
ID_SIGNED_DATA = "1.2.840.113549.1.7.2"
_ID_CONTENT_TYPE = "1.2.840.113549.1.9.3"
_ID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"

SigningKey = Union[
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    ExternalSigningKey,
]
VerifyingKey = Union[
    rsa.RSAPublicKey,
    ec.EllipticCurvePublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
]

# Digest algorithm OIDs (RFC 5754, RFC 8702 for SHA-3 and SHAKE).
_SHA_OIDS: dict[str, type[hashes.HashAlgorithm]] = {
    "2.16.840.1.101.3.4.2.4": hashes.SHA224,
    "2.16.840.1.101.3.4.2.1": hashes.SHA256,
    "2.16.840.1.101.3.4.2.2": hashes.SHA384,
    "2.16.840.1.101.3.4.2.3": hashes.SHA512,
    "2.16.840.1.101.3.4.2.8": hashes.SHA3_256,
    "2.16.840.1.101.3.4.2.9": hashes.SHA3_384,
    "2.16.840.1.101.3.4.2.10": hashes.SHA3_512,
}
_HASH_NAME_TO_OID: dict[str, str] = {
    "sha224": "2.16.840.1.101.3.4.2.4",
    "sha256": "2.16.840.1.101.3.4.2.1",
    "sha384": "2.16.840.1.101.3.4.2.2",
    "sha512": "2.16.840.1.101.3.4.2.3",
    "sha3-256": "2.16.840.1.101.3.4.2.8",
    "sha3-384": "2.16.840.1.101.3.4.2.9",
    "sha3-512": "2.16.840.1.101.3.4.2.10",
}
# RFC 8419 3.1: Ed448 uses id-shake256-len with a 512-bit output.
_ID_SHAKE256_LEN = "2.16.840.1.101.3.4.2.18"

_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
_RSASSA_PSS = "1.2.840.113549.1.1.10"
_RSA_WITH: dict[str, type[hashes.HashAlgorithm]] = {
    "1.2.840.113549.1.1.14": hashes.SHA224,
    "1.2.840.113549.1.1.11": hashes.SHA256,
    "1.2.840.113549.1.1.12": hashes.SHA384,
    "1.2.840.113549.1.1.13": hashes.SHA512,
}
_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
_ECDSA_WITH: dict[str, type[hashes.HashAlgorithm]] = {
    "1.2.840.10045.4.3.1": hashes.SHA224,
    "1.2.840.10045.4.3.2": hashes.SHA256,
    "1.2.840.10045.4.3.3": hashes.SHA384,
    "1.2.840.10045.4.3.4": hashes.SHA512,
}
_ECDSA_OID_BY_HASH: dict[str, str] = {
    "sha224": "1.2.840.10045.4.3.1",
    "sha256": "1.2.840.10045.4.3.2",
    "sha384": "1.2.840.10045.4.3.3",
    "sha512": "1.2.840.10045.4.3.4",
}
_ED25519 = "1.3.101.112"
_ED448 = "1.3.101.113"


@dataclass(frozen=True)
class Signer:
    """One signer for :func:`build_signed_data_multi`.

    Attributes:
        key: the private key that signs (a ``cryptography`` key, or an
            :class:`~.external_key.ExternalSigningKey` such as an HSM key).
        certificate: identifies the signer by issuerAndSerialNumber
            (SignerInfo version 1) when given.
        subject_key_identifier: identifies the signer by
            subjectKeyIdentifier (version 3) when no certificate is given;
            defaults to the RFC 5280 4.2.1.2 method (1) value of the key.
        hash_algorithm: digest for RSA/ECDSA; default SHA-256 (SHA-384 for
            P-384, SHA-512 for P-521). Must be left None (or SHA-512) for
            Ed25519 and None for Ed448, whose digests RFC 8419 fixes.
    """

    key: SigningKey
    certificate: x509.Certificate | None = None
    subject_key_identifier: bytes | None = None
    hash_algorithm: hashes.HashAlgorithm | None = None


@dataclass(frozen=True)
class SignerInfoView:
    """A parsed SignerInfo (RFC 5652 5.3), read-only.

    Attributes:
        version: 1 (issuerAndSerialNumber) or 3 (subjectKeyIdentifier).
        issuer: DER of the issuer Name when sid is issuerAndSerialNumber.
        serial_number: the serial number with it.
        subject_key_identifier: the key identifier when sid is the SKI form.
        digest_algorithm: dotted OID of digestAlgorithm.
        digest_parameters: DER of its parameters, or None when absent.
        signature_algorithm: dotted OID of signatureAlgorithm.
        signature_parameters: DER of its parameters, or None when absent.
        signature: the signature value.
        signed_attributes: DER of the signed attributes re-tagged as
            ``SET OF`` (the exact bytes that were signed, RFC 5652 5.4), or
            None when the SignerInfo has none.
        content_type_attribute: dotted OID from the contentType attribute.
        message_digest_attribute: value of the messageDigest attribute.
        unsigned_attributes: DER (``[1]`` as received) or None.
    """

    version: int
    issuer: bytes | None
    serial_number: int | None
    subject_key_identifier: bytes | None
    digest_algorithm: str
    digest_parameters: bytes | None
    signature_algorithm: str
    signature_parameters: bytes | None
    signature: bytes
    signed_attributes: bytes | None
    content_type_attribute: str | None
    message_digest_attribute: bytes | None
    unsigned_attributes: bytes | None


@dataclass(frozen=True)
class SignedContent:
    """A parsed SignedData.

    Attributes:
        econtent_type: dotted OID of eContentType.
        econtent: the encapsulated content bytes (b"" when detached/absent).
        econtent_present: False when eContent was absent (detached or a
            certs-only message).
        certificates: the X.509 certificates of the certificates field, in
            received order (RFC 5272 4.2: "Clients MUST NOT assume the
            certificates are in any order").
        signers: one view per SignerInfo, in received order.
        bare: True when the input was a SignedData not wrapped in a
            ContentInfo (accepted only with ``lenient=True``).
    """

    econtent_type: str
    econtent: bytes
    certificates: tuple[x509.Certificate, ...]
    signers: tuple[SignerInfoView, ...]
    econtent_present: bool = True
    bare: bool = False


# --------------------------------------------------------------------------
# Building


def _default_hash(public: VerifyingKey) -> hashes.HashAlgorithm:
    if isinstance(public, ec.EllipticCurvePublicKey):
        if public.curve.key_size > 384:
            return hashes.SHA512()
        if public.curve.key_size > 256:
            return hashes.SHA384()
    return hashes.SHA256()


def _algorithms(
    signer: Signer,
) -> tuple[hashes.HashAlgorithm, cms.DigestAlgorithm, cms.SignedDigestAlgorithm]:
    """Pick the digest and signature AlgorithmIdentifiers for a signer."""
    # Judged by the public key: an ExternalSigningKey has no private type.
    public = signer.key.public_key()
    chosen = signer.hash_algorithm
    if isinstance(public, ed25519.Ed25519PublicKey):
        # RFC 8419 3.1: "When signing with Ed25519, the digestAlgorithm MUST
        # be id-sha512, and the algorithm parameters field MUST be absent."
        if chosen is not None and not isinstance(chosen, hashes.SHA512):
            raise LocalProtocolError("Ed25519 signers must use SHA-512 (RFC 8419 3.1)")
        return (
            hashes.SHA512(),
            _digest_alg_id(_HASH_NAME_TO_OID["sha512"]),
            cms.SignedDigestAlgorithm({"algorithm": _ED25519}),
        )
    if isinstance(public, ed448.Ed448PublicKey):
        # RFC 8419 3.1: Ed448 uses id-shake256-len with output length 512.
        if chosen is not None:
            raise LocalProtocolError("Ed448 signers use SHAKE256/512; pass no hash_algorithm")
        return (
            hashes.SHAKE256(64),
            cms.DigestAlgorithm({"algorithm": _ID_SHAKE256_LEN, "parameters": core.Integer(512)}),
            cms.SignedDigestAlgorithm({"algorithm": _ED448}),
        )
    chosen = chosen or _default_hash(public)
    oid = _HASH_NAME_TO_OID.get(chosen.name)
    if oid is None:
        raise LocalProtocolError(f"unsupported CMS digest algorithm {chosen.name}")
    # RFC 5754 2: "Implementations MUST generate SHA2 AlgorithmIdentifiers
    # with absent parameters."
    digest_alg = _digest_alg_id(oid)
    if isinstance(public, rsa.RSAPublicKey):
        # RFC 3370 3.2: rsaEncryption with NULL parameters, the form every
        # CMS implementation accepts.
        sig_alg = cms.SignedDigestAlgorithm({"algorithm": _RSA_ENCRYPTION, "parameters": core.Null()})
    elif isinstance(public, ec.EllipticCurvePublicKey):
        sig_oid = _ECDSA_OID_BY_HASH.get(chosen.name)
        if sig_oid is None:
            raise LocalProtocolError(f"ECDSA in CMS cannot use {chosen.name} (RFC 5753)")
        sig_alg = cms.SignedDigestAlgorithm({"algorithm": sig_oid})
    else:
        raise LocalProtocolError(f"unsupported signer key type {type(signer.key).__name__}")
    return chosen, digest_alg, sig_alg


def _digest_alg_id(oid: str) -> cms.DigestAlgorithm:
    """A DigestAlgorithm with *absent* parameters.

    asn1crypto's DigestAlgorithm adds NULL parameters for SHA-2 when built
    from a dict; loading our own encoding keeps them absent, as RFC 5754 2
    and RFC 8419 3.1 ("the algorithm parameters field MUST be absent") want.
    """
    oid_der = core.ObjectIdentifier(oid).dump()
    return cms.DigestAlgorithm.load(b"\x30" + bytes([len(oid_der)]) + oid_der)


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


def _sign(key: SigningKey, hash_alg: hashes.HashAlgorithm, data: bytes) -> bytes:
    if isinstance(key, ExternalSigningKey):
        return key.sign(data, hash_alg)
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hash_alg)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hash_alg))
    # RFC 8419 3.2: EdDSA signs the signed attributes directly (pure mode).
    return key.sign(data)


def _asn1_cert(cert: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


def _signer_info(signer: Signer, econtent_type: str, econtent: bytes) -> cms.SignerInfo:
    hash_alg, digest_alg, sig_alg = _algorithms(signer)
    if signer.certificate is not None:
        cert = _asn1_cert(signer.certificate)
        sid = cms.SignerIdentifier(
            name="issuer_and_serial_number",
            value=cms.IssuerAndSerialNumber(
                {"issuer": cert.issuer, "serial_number": cert.serial_number}
            ),
        )
        version = "v1"
    else:
        ski = signer.subject_key_identifier
        if ski is None:
            ski = x509.SubjectKeyIdentifier.from_public_key(signer.key.public_key()).digest
        sid = cms.SignerIdentifier(name="subject_key_identifier", value=ski)
        version = "v3"
    # RFC 5652 5.3: "If the content type is not id-data, signedAttrs MUST be
    # present" and must then hold contentType and messageDigest; we always
    # include them (they also bind the content type for id-data).
    attrs = cms.CMSAttributes([
        cms.CMSAttribute({"type": _ID_CONTENT_TYPE, "values": [cms.ContentType(econtent_type)]}),
        cms.CMSAttribute({"type": _ID_MESSAGE_DIGEST, "values": [_digest(hash_alg, econtent)]}),
    ])
    # RFC 5652 5.4: "the DER encoding of the SET OF attributes" is signed
    # (tag 0x31), not the [0] IMPLICIT form that is transmitted.
    signed_bytes = attrs.dump()
    signature = _sign(signer.key, hash_alg, signed_bytes)
    return cms.SignerInfo({
        "version": version,
        "sid": sid,
        "digest_algorithm": digest_alg,
        "signed_attrs": attrs,
        "signature_algorithm": sig_alg,
        "signature": signature,
    })


def build_signed_data_multi(
    econtent_type: str,
    econtent: bytes,
    signers: Sequence[Signer],
    *,
    certificates: Sequence[x509.Certificate] = (),
) -> bytes:
    """Build ContentInfo(SignedData) with zero or more signers.

    Args:
        econtent_type: dotted OID of the encapsulated content type.
        econtent: the content bytes (DER of PKIData, a key package, ...).
        signers: the signers; an empty sequence gives an unsigned SignedData
            (RFC 5272 4.1 and 3.2.1.3 allow "no SignerInfo").
        certificates: certificates for the certificates field; signer
            certificates are added automatically when missing.

    Returns:
        DER of ContentInfo with contentType id-signedData.

    Raises:
        LocalProtocolError: bad OID, unsupported key or hash.
    """
    if not isinstance(econtent, (bytes, bytearray)):
        raise LocalProtocolError("econtent must be bytes")
    try:
        core.ObjectIdentifier(econtent_type).dump()
    except (ValueError, TypeError) as exc:
        raise LocalProtocolError(f"invalid eContentType OID {econtent_type!r}") from exc
    econtent = bytes(econtent)
    certs = list(certificates)
    for signer in signers:
        if signer.certificate is not None and signer.certificate not in certs:
            certs.append(signer.certificate)
    infos = [_signer_info(s, econtent_type, econtent) for s in signers]
    digest_algs: list[bytes] = []
    for info in infos:
        encoded = info["digest_algorithm"].dump()
        if encoded not in digest_algs:
            digest_algs.append(encoded)
    # RFC 5652 5.1: version is 3 when eContentType is not id-data or any
    # SignerInfo is version 3, else 1 (we never emit attribute/other certs).
    v3 = econtent_type != ID_DATA or any(s.certificate is None for s in signers)
    # The whole SignedData is encoded by hand: asn1crypto would parse the
    # content against the spec registered for its type (e.g. PKIData) while
    # serialising, and fail on content that is not of that type.
    encap_der = _tlv(0x30, core.ObjectIdentifier(econtent_type).dump() + _tlv(0xA0, _tlv(0x04, econtent)))
    body = core.Integer(3 if v3 else 1).dump()
    body += _tlv(0x31, b"".join(sorted(digest_algs)))
    body += encap_der
    if certs:
        # [0] IMPLICIT CertificateSet: a DER SET OF, so sorted.
        ders = sorted(c.public_bytes(serialization.Encoding.DER) for c in certs)
        body += _tlv(0xA0, b"".join(ders))
    body += _tlv(0x31, b"".join(sorted(info.dump() for info in infos)))
    signed_data_oid = core.ObjectIdentifier(ID_SIGNED_DATA).dump()
    return _tlv(0x30, signed_data_oid + _tlv(0xA0, _tlv(0x30, body)))


def build_signed_data(
    econtent_type: str,
    econtent: bytes,
    signer_key: SigningKey | None,
    *,
    signer_cert: x509.Certificate | None = None,
    subject_key_identifier: bytes | None = None,
    certificates: Sequence[x509.Certificate] = (),
    hash_algorithm: hashes.HashAlgorithm | None = None,
) -> bytes:
    """Build ContentInfo(SignedData) with one signer (or none).

    The signer is identified by issuerAndSerialNumber when *signer_cert* is
    given, else by subjectKeyIdentifier (*subject_key_identifier*, or the
    RFC 5280 method-1 SKI of the key), which is the form RFC 5272 3.2.1.3.1
    requires when a request is signed with the key of its own PKCS#10.

    Args:
        econtent_type: dotted OID of the encapsulated content type.
        econtent: the content bytes.
        signer_key: the signing key; None builds a SignedData with no
            SignerInfo (an unsigned CMC response, for example).
        signer_cert: the signer's certificate (also put in certificates).
        subject_key_identifier: SKI to use when there is no certificate.
        certificates: extra certificates for the certificates field.
        hash_algorithm: digest (see :class:`Signer`).

    Returns:
        DER of ContentInfo(SignedData).

    Raises:
        LocalProtocolError: bad arguments (unsupported key or hash, bad OID,
            a certificate whose key is not *signer_key*).
    """
    signers: list[Signer] = []
    if signer_key is not None:
        if signer_cert is not None and signer_cert.public_key() != signer_key.public_key():
            raise LocalProtocolError("signer_cert does not hold signer_key's public key")
        signers.append(Signer(signer_key, signer_cert, subject_key_identifier, hash_algorithm))
    elif signer_cert is not None:
        raise LocalProtocolError("signer_cert given without signer_key")
    return build_signed_data_multi(econtent_type, econtent, signers, certificates=certificates)


# --------------------------------------------------------------------------
# Parsing


def _tlvs(data: bytes, what: str) -> list[tuple[int, int, int, bytes, bytes]]:
    """Split concatenated BER TLVs into (class, method, tag, contents, whole)."""
    out = []
    pos = 0
    while pos < len(data):
        class_, method, tag, header, contents, trailer = parser.parse(data[pos:], strict=False)
        length = len(header) + len(contents) + len(trailer)
        out.append((class_, method, tag, contents, data[pos : pos + length]))
        pos += length
    return out


def _encap_content(
    eci: cms.EncapsulatedContentInfo, lenient: bool
) -> tuple[str, bytes, bool]:
    items = _tlvs(eci.contents or b"", "EncapsulatedContentInfo")
    if not items or len(items) > 2 or items[0][:3] != (0, 0, 6):
        raise DecodeError("invalid SignedData: malformed EncapsulatedContentInfo")
    econtent_type = core.ObjectIdentifier.load(items[0][4]).dotted
    if len(items) == 1:
        return econtent_type, b"", False
    class_, _method, tag, contents, _whole = items[1]
    if (class_, tag) != (2, 0):
        raise DecodeError("invalid SignedData: eContent is not tagged [0]")
    inner = _tlvs(contents, "eContent")
    if len(inner) != 1:
        raise DecodeError("invalid SignedData: eContent [0] must hold exactly one value")
    i_class, _i_method, i_tag, _i_contents, i_whole = inner[0]
    if (i_class, i_tag) == (0, 4):
        return econtent_type, bytes(core.OctetString.load(i_whole)), True
    # RFC 5652 5.2: "eContent [0] EXPLICIT OCTET STRING". PKCS#7 v1.5 put the
    # content type's own encoding there (RFC 5652 5.2.1); only lenient mode
    # accepts that, handing back the inner value's encoding as the content.
    if not lenient:
        raise DecodeError(
            "invalid SignedData: eContent is not an OCTET STRING (PKCS#7 v1.5 form; "
            "RFC 5652 5.2 requires OCTET STRING)"
        )
    return econtent_type, i_whole, True


def _attr_values(attrs: cms.CMSAttributes) -> tuple[str | None, bytes | None]:
    content_type: str | None = None
    digest: bytes | None = None
    for attr in attrs:
        oid = attr["type"].dotted
        if oid not in (_ID_CONTENT_TYPE, _ID_MESSAGE_DIGEST):
            continue
        # RFC 5652 11.1/11.2: each "MUST have a single attribute value", and
        # a SignerInfo must not hold the attribute twice (5.3).
        if (oid == _ID_CONTENT_TYPE and content_type is not None) or (
            oid == _ID_MESSAGE_DIGEST and digest is not None
        ):
            raise DecodeError(f"invalid SignedData: attribute {oid} appears twice")
        values = attr["values"]
        if len(values) != 1:
            raise DecodeError(f"invalid SignedData: attribute {oid} must have one value")
        raw = values[0].dump()
        if oid == _ID_CONTENT_TYPE:
            content_type = core.ObjectIdentifier.load(raw).dotted
        else:
            digest = bytes(core.OctetString.load(raw))
    return content_type, digest


def _opt_params(alg: core.Sequence) -> bytes | None:
    params = alg["parameters"]
    if isinstance(params, core.Void):
        return None
    return bytes(params.dump())


def _signer_view(info: cms.SignerInfo) -> SignerInfoView:
    sid = info["sid"]
    issuer = serial = ski = None
    if sid.name == "issuer_and_serial_number":
        issuer = bytes(sid.chosen["issuer"].dump())
        serial = int(sid.chosen["serial_number"].native)
    else:
        ski = bytes(sid.chosen.native)
    signed_raw: bytes | None = None
    ct_attr = md_attr = None
    signed = info["signed_attrs"]
    if not isinstance(signed, core.Void):
        # Re-tag the received [0] IMPLICIT SET as a universal SET OF with the
        # received contents untouched (RFC 5652 5.4).
        contents = signed.contents or b""
        signed_raw = _set_of(contents)
        ct_attr, md_attr = _attr_values(signed)
    unsigned = info["unsigned_attrs"]
    return SignerInfoView(
        version=int(info["version"].native[1:]),
        issuer=issuer,
        serial_number=serial,
        subject_key_identifier=ski,
        digest_algorithm=info["digest_algorithm"]["algorithm"].dotted,
        digest_parameters=_opt_params(info["digest_algorithm"]),
        signature_algorithm=info["signature_algorithm"]["algorithm"].dotted,
        signature_parameters=_opt_params(info["signature_algorithm"]),
        signature=bytes(info["signature"].native),
        signed_attributes=signed_raw,
        content_type_attribute=ct_attr,
        message_digest_attribute=md_attr,
        unsigned_attributes=None if isinstance(unsigned, core.Void) else bytes(unsigned.dump()),
    )


def _tlv(tag: int, contents: bytes) -> bytes:
    """DER TLV with a one-byte *tag* and definite length."""
    n = len(contents)
    if n < 0x80:
        return bytes([tag, n]) + contents
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + contents


def _set_of(contents: bytes) -> bytes:
    """DER ``SET`` TLV (tag 0x31) around *contents*."""
    return _tlv(0x31, contents)


def _load_certificate(data: bytes) -> x509.Certificate:
    # cryptography raises InvalidVersion (not a ValueError) for a bad version.
    try:
        return x509.load_der_x509_certificate(data)
    except (x509.InvalidVersion, UnsupportedAlgorithm) as exc:
        raise DecodeError(f"invalid CMS SignedData: bad certificate: {exc}") from exc


def parse_signed_data(
    der: bytes,
    *,
    expected_content_type: str | None = None,
    max_size: int = MAX_DER_SIZE,
    lenient: bool = False,
) -> SignedContent:
    """Parse ContentInfo(SignedData) (RFC 5652 3 and 5.1).

    Signatures are not checked here: call :func:`verify_signer`.

    Args:
        der: the DER (BER is tolerated) encoding.
        expected_content_type: if given, eContentType must equal this OID.
        max_size: size limit checked before decoding.
        lenient: also accept a bare SignedData not wrapped in a ContentInfo
            and a PKCS#7 v1.5 style eContent (not an OCTET STRING).

    Returns:
        The parsed :class:`SignedContent`.

    Raises:
        MessageTooLarge: over *max_size*.
        DecodeError: malformed input, wrong content type, too many signers or
            certificates.
    """
    if not isinstance(der, (bytes, bytearray, memoryview)):
        raise DecodeError("CMS SignedData must be bytes")
    der = bytes(der)
    check_size(der, max_size, "CMS SignedData")
    if not der:
        raise DecodeError("invalid CMS SignedData: empty")
    with decoding("CMS SignedData"):
        outer = parser.parse(der, strict=True)
        if outer[:3] != (0, 1, 16):
            raise DecodeError("invalid CMS SignedData: not a SEQUENCE")
        first = _tlvs(outer[4], "ContentInfo")[:1]
        bare = bool(first) and first[0][:3] == (0, 0, 2)
        if bare:
            # RFC 5652 3: "The CMS associates a content type identifier with a
            # content" through ContentInfo; a bare SignedData lacks it.
            if not lenient:
                raise DecodeError(
                    "invalid CMS SignedData: a bare SignedData, not wrapped in a "
                    "ContentInfo (RFC 5652 section 3)"
                )
            signed = cms.SignedData.load(der, strict=True)
        else:
            info = cms.ContentInfo.load(der, strict=True)
            ctype = info["content_type"].dotted
            if ctype != ID_SIGNED_DATA:
                raise DecodeError(
                    f"invalid CMS SignedData: ContentInfo content type is {ctype}, "
                    "not id-signedData"
                )
            signed = info["content"]
            if isinstance(signed, core.Void):
                raise DecodeError("invalid CMS SignedData: ContentInfo has no content")
        if signed["version"].native not in ("v1", "v3", "v4", "v5"):
            raise DecodeError("invalid CMS SignedData: unknown version")
        econtent_type, econtent, present = _encap_content(signed["encap_content_info"], lenient)
        if expected_content_type is not None and econtent_type != expected_content_type:
            raise DecodeError(
                f"invalid CMS SignedData: eContentType is {econtent_type}, "
                f"expected {expected_content_type}"
            )
        certs: list[x509.Certificate] = []
        cert_field = signed["certificates"]
        if not isinstance(cert_field, core.Void):
            if len(cert_field) > MAX_CERTIFICATES:
                raise DecodeError(
                    f"invalid CMS SignedData: more than {MAX_CERTIFICATES} certificates"
                )
            for choice in cert_field:
                if choice.name == "certificate":
                    certs.append(_load_certificate(choice.chosen.dump()))
        infos = signed["signer_infos"]
        if len(infos) > MAX_SIGNERS:
            raise DecodeError(f"invalid CMS SignedData: more than {MAX_SIGNERS} signers")
        signers = tuple(_signer_view(i) for i in infos)
    return SignedContent(
        econtent_type=econtent_type,
        econtent=econtent,
        certificates=tuple(certs),
        signers=signers,
        econtent_present=present,
        bare=bare,
    )


# --------------------------------------------------------------------------
# Verifying


def _hash_for_digest(view: SignerInfoView) -> hashes.HashAlgorithm:
    oid = view.digest_algorithm
    if oid in _SHA_OIDS:
        # RFC 5754 2: parameters absent or NULL.
        if view.digest_parameters not in (None, b"\x05\x00"):
            raise BadSignature("CMS digest algorithm has unexpected parameters")
        return _SHA_OIDS[oid]()
    if oid == _ID_SHAKE256_LEN:
        # RFC 8419 3.1: the output length parameter is 512 (bits).
        if view.digest_parameters != core.Integer(512).dump():
            raise BadSignature("id-shake256-len must carry output length 512")
        return hashes.SHAKE256(64)
    raise BadSignature(f"unsupported or weak CMS digest algorithm {oid}")


def _check_signature(view: SignerInfoView, public_key: object, data: bytes) -> None:
    sig_oid = view.signature_algorithm
    sig = view.signature
    digest_hash = _hash_for_digest(view)
    try:
        if sig_oid in (_RSA_ENCRYPTION, *_RSA_WITH):
            if not isinstance(public_key, rsa.RSAPublicKey):
                raise BadSignature("CMS signer uses RSA but the key is not RSA")
            h = _RSA_WITH[sig_oid]() if sig_oid in _RSA_WITH else digest_hash
            public_key.verify(sig, data, padding.PKCS1v15(), h)
        elif sig_oid == _RSASSA_PSS:
            if not isinstance(public_key, rsa.RSAPublicKey):
                raise BadSignature("CMS signer uses RSASSA-PSS but the key is not RSA")
            params = algos.RSASSAPSSParams.load(view.signature_parameters or b"\x30\x00")
            h = _pss_hash(params["hash_algorithm"]["algorithm"].dotted)
            mgf = params["mask_gen_algorithm"]
            if mgf["algorithm"].dotted != "1.2.840.113549.1.1.8":
                raise BadSignature("unsupported RSASSA-PSS mask generation function")
            mgf_hash = _pss_hash(mgf["parameters"]["algorithm"].dotted)
            if params["trailer_field"].native not in (1, "trailer_field_bc"):
                raise BadSignature("unsupported RSASSA-PSS trailer field")
            salt = int(params["salt_length"].native)
            public_key.verify(sig, data, padding.PSS(padding.MGF1(mgf_hash), salt), h)
        elif sig_oid in _ECDSA_WITH or sig_oid == _EC_PUBLIC_KEY:
            if not isinstance(public_key, ec.EllipticCurvePublicKey):
                raise BadSignature("CMS signer uses ECDSA but the key is not EC")
            h = _ECDSA_WITH[sig_oid]() if sig_oid in _ECDSA_WITH else digest_hash
            public_key.verify(sig, data, ec.ECDSA(h))
        elif sig_oid == _ED25519:
            if not isinstance(public_key, ed25519.Ed25519PublicKey):
                raise BadSignature("CMS signer uses Ed25519 but the key is not Ed25519")
            public_key.verify(sig, data)
        elif sig_oid == _ED448:
            if not isinstance(public_key, ed448.Ed448PublicKey):
                raise BadSignature("CMS signer uses Ed448 but the key is not Ed448")
            public_key.verify(sig, data)
        else:
            raise BadSignature(f"unsupported CMS signature algorithm {sig_oid}")
    except InvalidSignature as exc:
        raise BadSignature("CMS SignedData signature does not verify") from exc
    except (ValueError, TypeError, KeyError, UnsupportedAlgorithm) as exc:
        raise BadSignature(f"CMS SignedData signature could not be checked: {exc}") from exc


def _pss_hash(oid: str) -> hashes.HashAlgorithm:
    if oid not in _SHA_OIDS:
        raise BadSignature(f"unsupported RSASSA-PSS hash {oid}")
    return _SHA_OIDS[oid]()


def verify_signer(content: SignedContent, index: int, public_key: VerifyingKey) -> None:
    """Verify SignerInfo number *index* of *content* with *public_key*.

    Checks, per RFC 5652 5.4 and 5.6: the messageDigest attribute equals the
    digest of the eContent, the contentType attribute equals eContentType,
    and the signature over the DER ``SET OF`` signed attributes. A SignerInfo
    without signed attributes is accepted only for id-data (5.3), and then
    the signature covers the content itself.

    Args:
        content: from :func:`parse_signed_data`.
        index: which signer (0-based).
        public_key: the signer's public key.

    Returns:
        None when the signature is good.

    Raises:
        BadSignature: any check fails or an algorithm is unsupported.
        LocalProtocolError: *index* out of range.
    """
    if not 0 <= index < len(content.signers):
        raise LocalProtocolError(f"no signer number {index} (have {len(content.signers)})")
    view = content.signers[index]
    if view.signed_attributes is None:
        # RFC 5652 5.3: "If the content type is not id-data, signedAttrs
        # MUST be present" (5.4: otherwise the content itself is signed).
        if content.econtent_type != ID_DATA:
            raise BadSignature("CMS SignerInfo lacks signed attributes for non-data content")
        _check_signature(view, public_key, content.econtent)
        return
    # RFC 5652 5.3: signed attributes "MUST include" contentType and messageDigest.
    if view.content_type_attribute is None or view.message_digest_attribute is None:
        raise BadSignature("CMS signed attributes lack contentType or messageDigest")
    if view.content_type_attribute != content.econtent_type:
        raise BadSignature("CMS contentType attribute does not match eContentType")
    digest = _digest(_hash_for_digest(view), content.econtent)
    if digest != view.message_digest_attribute:
        raise BadSignature("CMS messageDigest attribute does not match the content")
    _check_signature(view, public_key, view.signed_attributes)


def _cert_ski(cert: x509.Certificate) -> bytes:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest


def signer_matches_certificate(view: SignerInfoView, cert: x509.Certificate) -> bool:
    """Whether *cert* is the one *view*'s sid names (RFC 5652 5.3)."""
    try:
        if view.subject_key_identifier is not None:
            return _cert_ski(cert) == view.subject_key_identifier
        if view.serial_number != cert.serial_number or view.issuer is None:
            return False
        if cert.issuer.public_bytes() == view.issuer:
            return True
        # Same name, different encoding: compare as RFC 5280 7.1 says.
        return bool(asn1_x509.Name.load(view.issuer) == asn1_x509.Name.load(cert.issuer.public_bytes()))
    except (ValueError, TypeError, KeyError, UnsupportedAlgorithm):
        return False


def find_signer_certificate(content: SignedContent, index: int) -> x509.Certificate | None:
    """The certificate in *content* that signer *index*'s sid identifies.

    Returns:
        The first matching certificate, or None.

    Raises:
        LocalProtocolError: *index* out of range.
    """
    if not 0 <= index < len(content.signers):
        raise LocalProtocolError(f"no signer number {index} (have {len(content.signers)})")
    view = content.signers[index]
    for cert in content.certificates:
        if signer_matches_certificate(view, cert):
            return cert
    return None
