"""Server-generated private keys: the key part of a /serverkeygen response.

RFC 7030 section 4.4.2 gives two forms for the private key part:

- Unencrypted: "the private key data MUST be placed in an
  "application/pkcs8". An "application/pkcs8" part consists of the
  base64-encoded DER-encoded [X.690] PrivateKeyInfo" ->
  :func:`encode_private_key` / :func:`decode_private_key`.
- Encrypted: "the private key is placed inside of a CMS SignedData. The
  SignedData is signed by the party that generated the private key [...]. The
  SignedData is further protected by placing it inside of a CMS
  EnvelopedData, as described in Section 4 of [RFC5958]." The SignedData's
  content is an RFC 5958 AsymmetricKeyPackage (eContentType
  id-ct-KP-aKeyPackage) holding one OneAsymmetricKey. So the layers are::

      ContentInfo(id-envelopedData)
        EnvelopedData                      RFC 5652 section 6
          encryptedContentInfo.contentType = id-signedData
          encryptedContent = AES-CBC(SignedData)
            SignedData                     RFC 5652 section 5
              eContentType = id-ct-KP-aKeyPackage
              eContent = AsymmetricKeyPackage { OneAsymmetricKey }  RFC 5958

  -> :func:`encrypt_key_package` / :func:`decrypt_key_package`, built on the
  lower-level :func:`build_enveloped_data` / :func:`open_enveloped_data`.

Recipient kinds (RFC 7030 section 4.4.2, bullet list):

- kekri (:class:`KEKRecipient`, request attribute DecryptKeyIdentifier, RFC
  7030 section 4.4.1.1): "version is set to 4, key-encryption key identifier
  (kekid) is set to the value of the DecryptKeyIdentifier". The CEK is
  wrapped with the AES key wrap of RFC 3394 (OIDs and absent parameters per
  RFC 3565 section 2.3.2), the wrap OID chosen by the KEK's length.
- ktri (:class:`KeyTransRecipient`, request attribute
  AsymmetricDecryptKeyIdentifier, RFC 7030 section 4.4.1.2): "the
  RecipientIdentifier (rid) is either the subjectKeyIdentifier copied from
  the attribute [...] or [...] an associated issuerAndSerialNumber". The CEK
  is encrypted with RSAES-OAEP (RFC 8017 section 7.1), parameters encoded as
  RFC 4055 section 4.1 RSAES-OAEP-params (hash AlgorithmIdentifiers with
  NULL parameters, RFC 4055 section 2.1; pSourceFunc left at its default).
- kari (:class:`KeyAgreeRecipient`, request attribute
  AsymmetricDecryptKeyIdentifier with an EC key): "The EnvelopedData
  RecipientInfo field MUST indicate the KeyAgreeRecipientInfo (kari) key
  management technique", the rid named as for ktri. Ephemeral-static ECDH
  on the NIST curves P-256, P-384 and P-521 (RFC 5753 section 3.1.1;
  RFC 5652 section 6.2.2): a fresh ephemeral key on the recipient's curve,
  sent as originatorKey; the shared secret goes through the ANSI X9.63 KDF
  with ECC-CMS-SharedInfo (RFC 5753 section 7.2) to give an AES
  key-encryption key, which wraps the CEK (RFC 3394). We send
  dhSinglePass-stdDH-sha256kdf / -sha384kdf / -sha512kdf-scheme by curve
  (the hash matching the curve's strength; RFC 5753 section 8 makes
  sha256kdf the MUST) and, like openssl, the AES wrap matching the CEK
  size. We read the sha1/sha224/sha256/sha384/sha512 KDF variants of
  stdDH and cofactorDH (equal on these cofactor-1 curves; openssl's
  default is sha1kdf), AES-128/192/256 wrap, and an optional ukm.
  1-pass ECMQV and static-static originators are not implemented.

Content encryption is AES-CBC with a random CEK and IV and PKCS#7 padding
(RFC 5652 section 6.3, RFC 3565 section 2.1); RFC 7030 does not require
AuthEnvelopedData.

Decoding accepts BER (openssl emits indefinite lengths and constructed
OCTET STRINGs): asn1crypto reads both, and we never re-encode what we verify.
RFC 5958 section 2: "receivers MUST support BER".

Strategy: every decoder checks the size first, parses with asn1crypto inside
:func:`~estproto.codecs._der.decoding`, and turns every cryptographic
failure (unwrap, OAEP, padding, key loading) into :class:`DecodeError`; a
signature that does not verify is :class:`BadSignature`. The decrypted
SignedData is parsed and verified by :mod:`estproto.codecs.signeddata`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal, Union, cast

from asn1crypto import cms, core, keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InternalError, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap,
)

from .._errors import BadSignature, DecodeError, LocalProtocolError
from .._limits import MAX_DER_SIZE
from ..asn1.ecc_cms import KEY_AGREEMENT_SCHEMES, ECCCMSSharedInfo
from ..asn1.keypackage import (
    ID_CT_KP_A_KEY_PACKAGE,
    AsymmetricKeyPackage,
    OneAsymmetricKey,
)
from . import signeddata

#: A parsed asn1crypto value: asn1crypto has no type information, so its
#: values are Any to mypy; the name says what the Any stands for.
Asn1Value = Any
from ._der import check_size, decoding, load_der
from .external_key import ExternalSigningKey

__all__ = [
    "PrivateKey",
    "ContentEncryption",
    "KEKRecipient",
    "KeyTransRecipient",
    "KeyAgreeRecipient",
    "Recipient",
    "RecipientPrivateKey",
    "DecryptedKeyPackage",
    "MAX_RECIPIENT_INFOS",
    "encode_private_key",
    "decode_private_key",
    "build_enveloped_data",
    "open_enveloped_data",
    "encrypt_key_package",
    "decrypt_key_package",
]

#: Private key types a server may generate and a client may receive.
PrivateKey = Union[
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
]
_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)
# Concrete classes already found to be one of _KEY_TYPES (cryptography's key
# classes are ABCs, and isinstance against four ABCs costs more than the
# DER check): a handful of classes at most.
_SEEN_KEY_CLASSES: set[type] = set()
_DER = serialization.Encoding.DER
_X962 = serialization.Encoding.X962
_PKCS8 = serialization.PrivateFormat.PKCS8
_NO_ENCRYPTION = serialization.NoEncryption()

#: Content-encryption algorithms we produce and accept (asn1crypto names).
ContentEncryption = Literal["aes128_cbc", "aes192_cbc", "aes256_cbc"]
_CBC_KEY_SIZES = {"aes128_cbc": 16, "aes192_cbc": 24, "aes256_cbc": 32}

# RFC 3565 section 2.3.2: the AES key wrap OID names the KEK size.
_WRAP_BY_KEK_SIZE = {16: "aes128_wrap", 24: "aes192_wrap", 32: "aes256_wrap"}
_KEK_SIZE_BY_WRAP = {
    "aes128_wrap": 16, "aes192_wrap": 24, "aes256_wrap": 32,
    "aes128_wrap_pad": 16, "aes192_wrap_pad": 24, "aes256_wrap_pad": 32,
}

_OAEP_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

#: Most RecipientInfos we look at in one EnvelopedData, and most
#: RecipientEncryptedKeys in one kari. EST addresses exactly one recipient;
#: bounding the loops bounds the RSA decryptions, ECDH operations and key
#: unwraps a hostile message can make us try.
MAX_RECIPIENT_INFOS = 16

# Curves we do ECDH on (cryptography curve names), and the X9.63 KDF hash we
# send for each, matching the curve's strength (RFC 5753 section 8's MUST is
# sha256kdf, which every peer reads; openssl reads them all).
_KARI_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})
_KDF_HASH_BY_CURVE = {"secp256r1": "sha256", "secp384r1": "sha384", "secp521r1": "sha512"}
_SCHEME_BY_KDF_HASH = {
    "sha256": "dh_single_pass_std_dh_sha256kdf",
    "sha384": "dh_single_pass_std_dh_sha384kdf",
    "sha512": "dh_single_pass_std_dh_sha512kdf",
}
_KARI_WRAPS = ("aes128_wrap", "aes192_wrap", "aes256_wrap")


# -- value classes -----------------------------------------------------------


@dataclass(frozen=True)
class KEKRecipient:
    """A recipient sharing a symmetric key-encryption key (kekri).

    Attributes:
        key_identifier: the DecryptKeyIdentifier from the client's CSR (RFC
            7030 section 4.4.1.1), copied into ``kekid.keyIdentifier``.
        kek: the AES key-encryption key, 16, 24 or 32 bytes.
    """

    key_identifier: bytes
    kek: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.key_identifier, bytes) or not self.key_identifier:
            raise LocalProtocolError("KEKRecipient.key_identifier must be non-empty bytes")
        if not isinstance(self.kek, bytes) or len(self.kek) not in _WRAP_BY_KEK_SIZE:
            raise LocalProtocolError("KEKRecipient.kek must be a 16, 24 or 32 byte AES key")


def _check_rid(recipient: KeyTransRecipient | KeyAgreeRecipient) -> None:
    """The rid of a ktri or kari needs a key identifier or a certificate."""
    ski = recipient.subject_key_identifier
    if ski is not None and (not isinstance(ski, bytes) or not ski):
        raise LocalProtocolError("subject_key_identifier must be non-empty bytes")
    if ski is None and recipient.certificate is None:
        raise LocalProtocolError(
            f"{type(recipient).__name__} needs subject_key_identifier or certificate")


@dataclass(frozen=True)
class KeyTransRecipient:
    """A recipient with an RSA key-transport key (ktri).

    Exactly how the recipient is named (RFC 7030 section 4.4.2): by
    ``subject_key_identifier`` (the AsymmetricDecryptKeyIdentifier of RFC
    7030 section 4.4.1.2; rid ``[0]``, version 2) when given, otherwise by
    the issuer and serial number of ``certificate`` (version 0).

    Attributes:
        public_key: the recipient's RSA public key.
        subject_key_identifier: the key identifier to put in the rid.
        certificate: the recipient's certificate, used for
            issuerAndSerialNumber when no identifier is given.
        oaep_hash: the RSAES-OAEP hash (also used for MGF1).
    """

    public_key: rsa.RSAPublicKey
    subject_key_identifier: bytes | None = None
    certificate: x509.Certificate | None = None
    oaep_hash: Literal["sha256", "sha384", "sha512"] = "sha256"

    def __post_init__(self) -> None:
        if not isinstance(self.public_key, rsa.RSAPublicKey):
            raise LocalProtocolError("KeyTransRecipient.public_key must be an RSA public key")
        _check_rid(self)
        if self.oaep_hash not in ("sha256", "sha384", "sha512"):
            raise LocalProtocolError(f"unsupported OAEP hash {self.oaep_hash!r}")

    @classmethod
    def from_certificate(
        cls, certificate: x509.Certificate, *, use_issuer_and_serial: bool = False
    ) -> KeyTransRecipient:
        """Address the holder of *certificate*.

        The rid is the certificate's subjectKeyIdentifier extension (or, when
        it has none, the RFC 5280 section 4.2.1.2 method-1 hash of its key),
        or its issuer and serial number when *use_issuer_and_serial*.

        Raises:
            LocalProtocolError: the certificate's key is not RSA.
        """
        key = certificate.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise LocalProtocolError("key transport needs an RSA certificate")
        if use_issuer_and_serial:
            return cls(key, None, certificate)
        return cls(key, _ski_of(certificate), certificate)


@dataclass(frozen=True)
class KeyAgreeRecipient:
    """A recipient with an EC key-agreement key (kari, ephemeral-static ECDH).

    Named exactly like :class:`KeyTransRecipient` (RFC 7030 section 4.4.2):
    by ``subject_key_identifier`` (rid ``rKeyId [0]``
    RecipientKeyIdentifier) when given, otherwise by the issuer and serial
    number of ``certificate``.

    Attributes:
        public_key: the recipient's EC public key, on P-256, P-384 or P-521.
        subject_key_identifier: the key identifier to put in the rid.
        certificate: the recipient's certificate, used for
            issuerAndSerialNumber when no identifier is given.
        kdf_hash: the X9.63 KDF hash; None picks it by curve (SHA-256,
            SHA-384, SHA-512), naming dhSinglePass-stdDH-sha*kdf-scheme.
        key_wrap: the AES key wrap (RFC 7030 section 4.4.2: one "that the
            client included in the SMIMECapabilities"); None matches the
            content-encryption key's size.
        ukm: user keying material (RFC 5652 section 6.2.2), fed to the KDF
            as entityUInfo; None (the default) sends none.
    """

    public_key: ec.EllipticCurvePublicKey
    subject_key_identifier: bytes | None = None
    certificate: x509.Certificate | None = None
    kdf_hash: Literal["sha256", "sha384", "sha512"] | None = None
    key_wrap: Literal["aes128_wrap", "aes192_wrap", "aes256_wrap"] | None = None
    ukm: bytes | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.public_key, ec.EllipticCurvePublicKey):
            raise LocalProtocolError("KeyAgreeRecipient.public_key must be an EC public key")
        if self.public_key.curve.name not in _KARI_CURVES:
            raise LocalProtocolError(
                f"unsupported key agreement curve {self.public_key.curve.name}")
        _check_rid(self)
        if self.kdf_hash is not None and self.kdf_hash not in _SCHEME_BY_KDF_HASH:
            raise LocalProtocolError(f"unsupported KDF hash {self.kdf_hash!r}")
        if self.key_wrap is not None and self.key_wrap not in _KARI_WRAPS:
            raise LocalProtocolError(f"unsupported key wrap {self.key_wrap!r}")
        if self.ukm is not None and (not isinstance(self.ukm, bytes) or not self.ukm):
            raise LocalProtocolError("ukm must be non-empty bytes")

    @classmethod
    def from_certificate(
        cls, certificate: x509.Certificate, *, use_issuer_and_serial: bool = False
    ) -> KeyAgreeRecipient:
        """Address the holder of *certificate*.

        The rid is the certificate's subjectKeyIdentifier extension (or, when
        it has none, the RFC 5280 section 4.2.1.2 method-1 hash of its key),
        or its issuer and serial number when *use_issuer_and_serial*.

        Raises:
            LocalProtocolError: the certificate's key is not EC on P-256,
                P-384 or P-521.
        """
        key = certificate.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise LocalProtocolError("key agreement needs an EC certificate")
        if use_issuer_and_serial:
            return cls(key, None, certificate)
        return cls(key, _ski_of(certificate), certificate)


@dataclass(frozen=True)
class DecryptedKeyPackage:
    """What :func:`decrypt_key_package` recovered.

    Attributes:
        private_key: the (first) key of the AsymmetricKeyPackage.
        additional_keys: any further keys in the package (EST sends one).
        certificates: every certificate carried in the SignedData.
        signer_certificate: the certificate of the signer whose signature
            verified, when the SignedData carries it.
        signer_authenticated: True when the signature verified with the
            caller's ``verify_with`` key; False when it only verified with a
            certificate carried in the message itself (integrity, not origin:
            the caller must still decide whether to trust that certificate).
    """

    private_key: PrivateKey
    additional_keys: tuple[PrivateKey, ...]
    certificates: tuple[x509.Certificate, ...]
    signer_certificate: x509.Certificate | None
    signer_authenticated: bool


# -- unencrypted: application/pkcs8 -------------------------------------------


def encode_private_key(key: PrivateKeyTypes) -> bytes:
    """Encode *key* as a DER PKCS#8 PrivateKeyInfo (RFC 5958 v1).

    Accepts any ``cryptography`` private key type statically; only the
    :data:`PrivateKey` kinds at run time.

    Raises:
        LocalProtocolError: *key* is not an RSA, EC, Ed25519 or Ed448 key.
    """
    if type(key) not in _SEEN_KEY_CLASSES:
        if not isinstance(key, _KEY_TYPES):
            raise LocalProtocolError(f"cannot encode a {type(key).__name__} private key")
        _SEEN_KEY_CLASSES.add(type(key))
    return key.private_bytes(_DER, _PKCS8, _NO_ENCRYPTION)


def decode_private_key(
    der: bytes, *, max_size: int = MAX_DER_SIZE, lenient: bool = False
) -> PrivateKey:
    """Decode an ``application/pkcs8`` key part (RFC 7030 section 4.4.2).

    Args:
        der: a DER (or BER) PrivateKeyInfo / OneAsymmetricKey, v1 or v2.
        max_size: size limit checked before parsing.
        lenient: also accept a PKCS#1 RSAPrivateKey or SEC1 ECPrivateKey,
            which libest sends labelled as ``application/pkcs8`` (it writes
            keys with OpenSSL's i2d_PrivateKey, the "traditional" formats).

    Returns:
        The private key as a ``cryptography`` object.

    Raises:
        MessageTooLarge: *der* is longer than *max_size*.
        DecodeError: not a (supported) private key.
    """
    check_size(der, max_size, "private key")
    if type(der) is bytes and _is_plain_v1_private_key_info(der):
        # The common case, a DER v1 PrivateKeyInfo without publicKey, is
        # exactly what cryptography's loader reads: hand it over directly.
        # Any failure takes the full path below, which reports it.
        try:
            key = serialization.load_der_private_key(der, password=None)
        except Exception:  # noqa: BLE001 - re-diagnosed by the full path
            key = None
        if type(key) in _SEEN_KEY_CLASSES or isinstance(key, _KEY_TYPES):
            # One of _KEY_TYPES: the class cache spares the ABC walk.
            return cast(PrivateKey, key)
    try:
        oak = load_der(OneAsymmetricKey, der, "PrivateKeyInfo", max_size)
        with decoding("PrivateKeyInfo"):
            return _key_from_one_asymmetric_key(oak)
    except DecodeError:
        if not lenient:
            raise
        lenient_key = _load_traditional(bytes(der))
        if lenient_key is None:
            raise
        return lenient_key


def _der_end(data: bytes, pos: int, end: int) -> int:
    """End of the definite, minimal-length DER TLV whose header is at *pos*
    (a one-byte tag), or -1 if there is none that fits before *end*."""
    if pos + 2 > end:
        return -1
    first = data[pos + 1]
    pos += 2
    if first >= 0x80:
        count = first - 0x80
        if count == 0 or count > 3 or pos + count > end or data[pos] == 0:
            return -1
        length = int.from_bytes(data[pos : pos + count], "big")
        if length < 0x80:
            return -1
        pos += count
    else:
        length = first
    return pos + length if pos + length <= end else -1


def _is_plain_v1_private_key_info(der: bytes) -> bool:
    """True if *der* is, structurally, ``PrivateKeyInfo ::= SEQUENCE {
    version 0, AlgorithmIdentifier (SEQUENCE starting with an OID),
    privateKey OCTET STRING, [0] attributes OPTIONAL }`` in DER and nothing
    else: the shape cryptography's PKCS#8 loader reads and RFC 5958 v1
    (a ``publicKey [1]`` takes the full path, which checks it)."""
    end = len(der)
    if end < 2 or der[0] != 0x30 or _der_end(der, 0, end) != end:
        return False
    pos = 2 if der[1] < 0x80 else 2 + der[1] - 0x80
    # version v1(0), then the AlgorithmIdentifier SEQUENCE
    if der[pos : pos + 4] != b"\x02\x01\x00\x30":
        return False
    pos += 3
    alg_end = _der_end(der, pos, end)
    if alg_end < 0 or alg_end >= end or der[alg_end] != 0x04:
        return False
    alg_start = pos + 2 if der[pos + 1] < 0x80 else pos + 2 + der[pos + 1] - 0x80
    if alg_start >= alg_end or der[alg_start] != 0x06:  # algorithm OID first
        return False
    key_end = _der_end(der, alg_end, end)
    if key_end == end:
        return True
    return key_end > 0 and der[key_end] == 0xA0 and _der_end(der, key_end, end) == end


def _load_traditional(der: bytes) -> PrivateKey | None:
    """A PKCS#1 RSAPrivateKey or SEC1 ECPrivateKey, or None."""
    for spec in (keys.RSAPrivateKey, keys.ECPrivateKey):
        try:
            # Parse structurally first: cryptography's loader would also take
            # other formats we do not mean to accept here.
            spec.load(der, strict=True).native
            key = serialization.load_der_private_key(der, password=None)
        except (ValueError, TypeError, KeyError, IndexError, OverflowError,
                AttributeError, UnsupportedAlgorithm, InternalError):
            # AttributeError: asn1crypto's .native on an unexpected universal
            # type (found by the atheris harness).
            continue
        if isinstance(key, _KEY_TYPES):
            return key
    return None


def _key_from_one_asymmetric_key(oak: OneAsymmetricKey) -> PrivateKey:
    """Load a parsed OneAsymmetricKey into a cryptography key.

    Call inside :func:`decoding`.
    """
    version = oak["version"].native
    # RFC 5958 section 2: Version ::= INTEGER { v1(0), v2(1) }.
    if version not in ("v1", "v2"):
        raise DecodeError(f"invalid PrivateKeyInfo: unknown version {version!r}")
    # Touch every field: asn1crypto parses lazily, and cryptography's loader
    # would happily take a PKCS#1 or SEC1 key that is not a PrivateKeyInfo.
    oak["private_key_algorithm"]["algorithm"].dotted
    oak["private_key"].native
    public_key = oak["public_key"]
    has_public_key = not isinstance(public_key, core.Void)
    der = oak.dump()
    if version == "v2" or has_public_key:
        # cryptography only reads v1; publicKey is redundant (RFC 5958
        # section 2: "In general, either the public key or the certificate
        # will be present"), so drop it and check it below.
        fields = {
            "version": "v1",
            "private_key_algorithm": oak["private_key_algorithm"],
            "private_key": oak["private_key"],
        }
        if not isinstance(oak["attributes"], core.Void):
            fields["attributes"] = oak["attributes"]
        der = OneAsymmetricKey(fields).dump()
    try:
        key = serialization.load_der_private_key(der, password=None)
    except UnsupportedAlgorithm as exc:
        raise DecodeError(f"invalid PrivateKeyInfo: unsupported key: {exc}") from exc
    if not isinstance(key, _KEY_TYPES):
        raise DecodeError(f"unsupported private key type {type(key).__name__}")
    if has_public_key:
        _check_public_key(key, bytes(public_key.native))
    return key


def _check_public_key(key: PrivateKey, given: bytes) -> None:
    """Compare an RFC 5958 v2 publicKey with the private key's own."""
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        ours = [key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)]
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        pub = key.public_key()
        ours = [
            pub.public_bytes(serialization.Encoding.X962, fmt)
            for fmt in (serialization.PublicFormat.UncompressedPoint,
                        serialization.PublicFormat.CompressedPoint)
        ]
    else:
        # RSA: RFC 5958 section 2 notes the public key is already in
        # RSAPrivateKey and defines no publicKey format for it.
        return
    if given not in ours:
        raise DecodeError("invalid PrivateKeyInfo: publicKey does not match the private key")


# -- EnvelopedData ------------------------------------------------------------

Recipient = Union[KEKRecipient, KeyTransRecipient, KeyAgreeRecipient]

#: Recipient private keys :func:`open_enveloped_data` takes: RSA for ktri,
#: EC (P-256, P-384, P-521) for kari.
RecipientPrivateKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]


def build_enveloped_data(
    content_type: str,
    content: bytes,
    recipient: Recipient,
    *,
    content_encryption: ContentEncryption = "aes256_cbc",
) -> bytes:
    """Encrypt *content* for one recipient as ContentInfo(EnvelopedData).

    Args:
        content_type: the encryptedContentInfo contentType, a dotted OID or
            an asn1crypto name (``"data"``, ``"signed_data"``).
        content: the content octets (for a CMS type, the type's own
            encoding, e.g. a SignedData, not a ContentInfo).
        recipient: a :class:`KEKRecipient`, :class:`KeyTransRecipient` or
            :class:`KeyAgreeRecipient`.
        content_encryption: the AES-CBC variant.

    Returns:
        DER of ContentInfo { id-envelopedData, EnvelopedData }.

    Raises:
        LocalProtocolError: a bad argument.
    """
    if content_encryption not in _CBC_KEY_SIZES:
        raise LocalProtocolError(f"unsupported content encryption {content_encryption!r}")
    if not isinstance(content, bytes):
        raise LocalProtocolError("content must be bytes")
    try:
        ct = cms.ContentType(content_type)
    except (ValueError, TypeError) as exc:
        raise LocalProtocolError(f"bad content type {content_type!r}") from exc

    cek = os.urandom(_CBC_KEY_SIZES[content_encryption])
    iv = os.urandom(16)
    padder = sym_padding.PKCS7(128).padder()
    padded = padder.update(content) + padder.finalize()
    encryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()

    if isinstance(recipient, KEKRecipient):
        ri = cms.RecipientInfo(name="kekri", value=cms.KEKRecipientInfo({
            # RFC 7030 section 4.4.2: "version is set to 4".
            "version": "v4",
            "kekid": {"key_identifier": recipient.key_identifier},
            "key_encryption_algorithm": {
                "algorithm": _WRAP_BY_KEK_SIZE[len(recipient.kek)]},
            "encrypted_key": aes_key_wrap(recipient.kek, cek),
        }))
        ri_version = 4
    elif isinstance(recipient, KeyTransRecipient):
        if recipient.subject_key_identifier is not None:
            rid = cms.RecipientIdentifier(
                name="subject_key_identifier", value=recipient.subject_key_identifier)
            # RFC 5652 section 6.2.1: "If the RecipientIdentifier is
            # subjectKeyIdentifier, then the version MUST be 2."
            ri_version = 2
        else:
            assert recipient.certificate is not None
            rid = cms.RecipientIdentifier(
                name="issuer_and_serial_number", value=_issuer_and_serial(recipient.certificate))
            ri_version = 0
        h = recipient.oaep_hash
        ri = cms.RecipientInfo(name="ktri", value=cms.KeyTransRecipientInfo({
            "version": ri_version,
            "rid": rid,
            "key_encryption_algorithm": {
                "algorithm": "rsaes_oaep",
                # RFC 4055 section 4.1: "the parameters MUST be present when
                # used in the algorithm identifier associated with an
                # encrypted value"; pSourceFunc stays the DEFAULT.
                "parameters": {
                    "hash_algorithm": {"algorithm": h},
                    "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": h}},
                },
            },
            "encrypted_key": recipient.public_key.encrypt(cek, _oaep(h, h, None)),
        }))
    elif isinstance(recipient, KeyAgreeRecipient):
        ri = _build_kari(recipient, cek)
        ri_version = 3
    else:
        raise LocalProtocolError(f"unsupported recipient {type(recipient).__name__}")

    enveloped = cms.EnvelopedData({
        # RFC 5652 section 6.1: no originatorInfo or unprotectedAttrs, so
        # version 0 if every RecipientInfo is version 0, else 2.
        "version": "v0" if ri_version == 0 else "v2",
        "recipient_infos": [ri],
        "encrypted_content_info": {
            "content_type": ct,
            "content_encryption_algorithm": {
                "algorithm": content_encryption, "parameters": iv},
            "encrypted_content": ciphertext,
        },
    })
    return bytes(cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump())


def _build_kari(recipient: KeyAgreeRecipient, cek: bytes) -> cms.RecipientInfo:
    """One KeyAgreeRecipientInfo: ephemeral-static ECDH (RFC 5753 section 3.1.1)."""
    curve = recipient.public_key.curve
    ephemeral = ec.generate_private_key(curve)
    shared = ephemeral.exchange(ec.ECDH(), recipient.public_key)
    wrap_name = recipient.key_wrap or _WRAP_BY_KEK_SIZE[len(cek)]
    # RFC 3565 section 2.3.2: the AES key wrap parameters are absent.
    wrap = cms.KeyEncryptionAlgorithm({"algorithm": wrap_name})
    hash_name = recipient.kdf_hash or _KDF_HASH_BY_CURVE[curve.name]
    kek = _ecc_cms_kek(shared, hash_name, wrap, recipient.ukm, _KEK_SIZE_BY_WRAP[wrap_name])

    if recipient.subject_key_identifier is not None:
        rid = cms.KeyAgreementRecipientIdentifier(
            name="r_key_id",
            value={"subject_key_identifier": recipient.subject_key_identifier})
    else:
        assert recipient.certificate is not None
        rid = cms.KeyAgreementRecipientIdentifier(
            name="issuer_and_serial_number", value=_issuer_and_serial(recipient.certificate))
    point = ephemeral.public_key().public_bytes(
        _X962, serialization.PublicFormat.UncompressedPoint)
    fields = {
        # RFC 5652 section 6.2.2: "version is the syntax version number.
        # It MUST always be 3."
        "version": "v3",
        # RFC 5753 section 3.1.1: "originator MUST be the alternative
        # originatorKey. [...] The parameters associated with id-ecPublicKey
        # SHOULD be absent or ECParameters": absent, as openssl sends it;
        # the recipient knows its own curve. "The ECPoint in uncompressed
        # form MUST be supported."
        "originator": cms.OriginatorIdentifierOrKey(
            name="originator_key",
            value=keys.PublicKeyInfo({"algorithm": {"algorithm": "ec"}, "public_key": point})),
        "key_encryption_algorithm": {
            "algorithm": _SCHEME_BY_KDF_HASH[hash_name], "parameters": wrap},
        "recipient_encrypted_keys": [{"rid": rid, "encrypted_key": aes_key_wrap(kek, cek)}],
    }
    if recipient.ukm is not None:
        fields["ukm"] = recipient.ukm
    return cms.RecipientInfo(name="kari", value=cms.KeyAgreeRecipientInfo(fields))


def _ecc_cms_kek(
    shared_secret: bytes,
    hash_name: str,
    wrap: cms.KeyEncryptionAlgorithm,
    ukm: bytes | None,
    kek_size: int,
) -> bytes:
    """The key-encryption key: ANSI X9.63 KDF over the ECDH shared secret.

    RFC 5753 section 7.2: SharedInfo is the DER ECC-CMS-SharedInfo whose
    keyInfo is the wrap AlgorithmIdentifier, entityUInfo the ukm when
    present, and suppPubInfo "the length of the generated KEK, in bits,
    represented as a 32-bit number" (big-endian).
    """
    info = {"key_info": wrap, "supp_pub_info": (kek_size * 8).to_bytes(4, "big")}
    if ukm is not None:
        info["entity_u_info"] = ukm
    shared_info = ECCCMSSharedInfo(info).dump()
    kdf = X963KDF(algorithm=_OAEP_HASHES[hash_name](), length=kek_size, sharedinfo=shared_info)
    return kdf.derive(shared_secret)


def open_enveloped_data(
    der: bytes,
    *,
    kek: bytes | None = None,
    key_identifier: bytes | None = None,
    recipient_private_key: RecipientPrivateKey | None = None,
    subject_key_identifier: bytes | None = None,
    recipient_certificate: x509.Certificate | None = None,
    expected_content_type: str | None = None,
    max_size: int = MAX_DER_SIZE,
) -> bytes:
    """Decrypt a ContentInfo(EnvelopedData) and return the content octets.

    Give either *kek* (with *key_identifier* to pick the kekri; without it
    every kekri is tried) or *recipient_private_key* (with
    *subject_key_identifier* and/or *recipient_certificate* to pick the
    recipient; without them every candidate is tried). An RSA key opens a
    ktri; an EC key (P-256, P-384, P-521) opens a kari, whose
    recipientEncryptedKeys are searched for the rid.

    Args:
        der: DER or BER ContentInfo with content type id-envelopedData.
        expected_content_type: if given (dotted OID or asn1crypto name),
            the encryptedContentInfo contentType must equal it.
        max_size: size limit checked before parsing.

    Returns:
        The decrypted content (for a CMS type: that type's encoding).

    Raises:
        LocalProtocolError: neither or both kinds of key given, or a
            private key that is neither RSA nor EC on P-256/P-384/P-521.
        MessageTooLarge: *der* is longer than *max_size*.
        DecodeError: malformed, no matching recipient, wrong key, bad
            padding, unsupported algorithm, unexpected content type.
    """
    content_type, content = _open(
        der, kek=kek, key_identifier=key_identifier,
        recipient_private_key=recipient_private_key,
        subject_key_identifier=subject_key_identifier,
        recipient_certificate=recipient_certificate, max_size=max_size,
    )
    if expected_content_type is not None:
        try:
            expected = cms.ContentType(expected_content_type).dotted
        except (ValueError, TypeError) as exc:
            raise LocalProtocolError(f"bad content type {expected_content_type!r}") from exc
        if content_type != expected:
            raise DecodeError(
                f"EnvelopedData holds content type {content_type}, expected {expected}")
    return content


def _open(
    der: bytes,
    *,
    kek: bytes | None,
    key_identifier: bytes | None,
    recipient_private_key: RecipientPrivateKey | None,
    subject_key_identifier: bytes | None,
    recipient_certificate: x509.Certificate | None,
    max_size: int,
) -> tuple[str, bytes]:
    """Decrypt; return (dotted content type, content)."""
    if (kek is None) == (recipient_private_key is None):
        raise LocalProtocolError("give exactly one of kek or recipient_private_key")
    if kek is not None and len(kek) not in _WRAP_BY_KEK_SIZE:
        raise LocalProtocolError("kek must be a 16, 24 or 32 byte AES key")
    if recipient_private_key is not None:
        if isinstance(recipient_private_key, ec.EllipticCurvePrivateKey):
            if recipient_private_key.curve.name not in _KARI_CURVES:
                raise LocalProtocolError(
                    f"unsupported key agreement curve {recipient_private_key.curve.name}")
        elif not isinstance(recipient_private_key, rsa.RSAPrivateKey):
            raise LocalProtocolError(
                "recipient_private_key must be an RSA or EC private key")

    what = "EnvelopedData"
    info = load_der(cms.ContentInfo, der, what, max_size)
    with decoding(what):
        if info["content_type"].dotted != "1.2.840.113549.1.7.3":
            raise DecodeError(
                f"invalid {what}: ContentInfo holds {info['content_type'].dotted}, "
                "not id-envelopedData")
        env = info["content"]
        recipient_infos = env["recipient_infos"]
        if len(recipient_infos) > MAX_RECIPIENT_INFOS:
            raise DecodeError(f"invalid {what}: more than {MAX_RECIPIENT_INFOS} recipients")
        eci = env["encrypted_content_info"]
        content_type = eci["content_type"].dotted
        algo = eci["content_encryption_algorithm"]
        algo_name = algo["algorithm"].native
        if algo_name not in _CBC_KEY_SIZES:
            raise DecodeError(
                f"unsupported content encryption {algo['algorithm'].dotted}")
        iv = algo["parameters"].native
        if not isinstance(iv, bytes) or len(iv) != 16:
            raise DecodeError(f"invalid {what}: AES-CBC IV must be 16 bytes")
        encrypted = eci["encrypted_content"]
        if isinstance(encrypted, core.Void):
            raise DecodeError(f"invalid {what}: detached content is not supported")
        ciphertext = encrypted.native
        # Parse every RecipientInfo now: a malformed one is a DecodeError
        # whichever branch reads it.
        parsed_ris = [(ri.name, ri.chosen) for ri in recipient_infos]

        if kek is not None:
            cek = _cek_from_kekri(parsed_ris, kek, key_identifier)
        elif isinstance(recipient_private_key, ec.EllipticCurvePrivateKey):
            cek = _cek_from_kari(parsed_ris, recipient_private_key,
                                 subject_key_identifier, recipient_certificate)
        else:
            assert recipient_private_key is not None
            cek = _cek_from_ktri(parsed_ris, recipient_private_key,
                                 subject_key_identifier, recipient_certificate)
        if len(cek) != _CBC_KEY_SIZES[algo_name]:
            raise DecodeError(
                f"no recipient matches: the recovered key has the wrong length "
                f"for {algo_name}")
        if not ciphertext or len(ciphertext) % 16:
            raise DecodeError(f"invalid {what}: ciphertext is not a whole number of blocks")
        decryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).decryptor()
        padded = decryptor.update(ciphertext) + decryptor.finalize()
        unpadder = sym_padding.PKCS7(128).unpadder()
        try:
            content = unpadder.update(padded) + unpadder.finalize()
        except ValueError as exc:
            raise DecodeError(
                f"invalid {what}: bad padding after decryption (wrong key?)") from exc
    return content_type, content


def _cek_from_kekri(
    ris: list[tuple[str, Asn1Value]], kek: bytes, key_identifier: bytes | None
) -> bytes:
    candidates = [
        ri for name, ri in ris
        if name == "kekri" and (
            key_identifier is None
            or ri["kekid"]["key_identifier"].native == key_identifier)
    ]
    if not candidates:
        raise DecodeError("no recipient matches the key-encryption key identifier")
    failure = "no recipient matches: no kekri uses this key size"
    for ri in candidates:
        alg = ri["key_encryption_algorithm"]["algorithm"].native
        if _KEK_SIZE_BY_WRAP.get(alg) != len(kek):
            continue
        wrapped = ri["encrypted_key"].native
        unwrap = aes_key_unwrap_with_padding if alg.endswith("_pad") else aes_key_unwrap
        try:
            return unwrap(kek, wrapped)
        except (InvalidUnwrap, ValueError):
            failure = "no recipient matches: AES key unwrap failed (wrong key?)"
    raise DecodeError(failure)


def _cek_from_ktri(
    ris: list[tuple[str, Asn1Value]],
    key: rsa.RSAPrivateKey,
    ski: bytes | None,
    cert: x509.Certificate | None,
) -> bytes:
    wanted = _RecipientIds(ski, cert)
    candidates = []
    for name, ri in ris:
        if name != "ktri":
            continue
        rid = ri["rid"]
        if rid.name == "subject_key_identifier":
            if wanted.has_ski(rid.chosen.native):
                candidates.append(ri)
        elif wanted.has_issuer_and_serial(rid.chosen):
            candidates.append(ri)
    if not candidates:
        raise DecodeError("no recipient matches the recipient key identifier")
    for ri in candidates:
        kea = ri["key_encryption_algorithm"]
        pad = _ktri_padding(kea)
        try:
            return key.decrypt(ri["encrypted_key"].native, pad)
        except ValueError:
            continue
    raise DecodeError("no recipient matches: RSA decryption failed (wrong key?)")


class _RecipientIds:
    """The rids a caller's identifiers match; with none given, any rid."""

    def __init__(self, ski: bytes | None, cert: x509.Certificate | None) -> None:
        self.skis: set[bytes] = set()
        if ski is not None:
            self.skis.add(ski)
        self.ias: cms.IssuerAndSerialNumber | None = None
        if cert is not None:
            self.skis.add(_ski_of(cert))
            self.ias = _issuer_and_serial(cert)
        self.any = not self.skis and self.ias is None

    def has_ski(self, ski: Asn1Value) -> bool:
        return self.any or ski in self.skis

    def has_issuer_and_serial(self, ias: Asn1Value) -> bool:
        if self.any:
            return True
        return (self.ias is not None
                and ias["serial_number"].native == self.ias["serial_number"].native
                and ias["issuer"] == self.ias["issuer"])


def _cek_from_kari(
    ris: list[tuple[str, Asn1Value]],
    key: ec.EllipticCurvePrivateKey,
    ski: bytes | None,
    cert: x509.Certificate | None,
) -> bytes:
    """Recover the CEK from the kari addressed to *key* (RFC 5652 6.2.2)."""
    wanted = _RecipientIds(ski, cert)
    found = False
    for name, ri in ris:
        if name != "kari":
            continue
        reks = ri["recipient_encrypted_keys"]
        if len(reks) > MAX_RECIPIENT_INFOS:
            raise DecodeError(
                f"invalid EnvelopedData: more than {MAX_RECIPIENT_INFOS} recipient "
                "encrypted keys in one kari")
        wrapped_keys = []
        for rek in reks:
            rid = rek["rid"]
            if rid.name == "r_key_id":
                match = wanted.has_ski(rid.chosen["subject_key_identifier"].native)
            else:
                match = wanted.has_issuer_and_serial(rid.chosen)
            if match:
                wrapped_keys.append(rek["encrypted_key"].native)
        if not wrapped_keys:
            continue
        found = True
        cek = _kari_unwrap(ri, key, wrapped_keys)
        if cek is not None:
            return cek
    if not found:
        raise DecodeError("no recipient matches the recipient key identifier")
    raise DecodeError("no recipient matches: AES key unwrap failed (wrong key?)")


def _kari_unwrap(
    kari: Asn1Value, key: ec.EllipticCurvePrivateKey, wrapped_keys: list[bytes]
) -> bytes | None:
    """ECDH + KDF + unwrap for one kari; None if no wrapped key unwraps.

    Raises DecodeError for what we cannot or will not process.
    """
    version = kari["version"].native
    # RFC 5652 section 6.2.2: "version is the syntax version number. It
    # MUST always be 3."
    if version != "v3":
        raise DecodeError(f"invalid KeyAgreeRecipientInfo: version {version!r}, expected 3")
    kea = kari["key_encryption_algorithm"]
    scheme = KEY_AGREEMENT_SCHEMES.get(kea["algorithm"].native)
    if scheme is None:
        raise DecodeError(f"unsupported key agreement algorithm {kea['algorithm'].dotted}")
    hash_name = scheme[1]
    wrap = kea["parameters"]
    if not isinstance(wrap, cms.KeyEncryptionAlgorithm):
        raise DecodeError("invalid KeyAgreeRecipientInfo: no key wrap algorithm")
    wrap_name = wrap["algorithm"].native
    kek_size = _KEK_SIZE_BY_WRAP.get(wrap_name)
    if kek_size is None:
        raise DecodeError(f"unsupported key wrap algorithm {wrap['algorithm'].dotted}")

    originator = kari["originator"]
    # RFC 5753 section 3.1.1: "originator MUST be the alternative
    # originatorKey" for ephemeral-static ECDH; the other alternatives name
    # a static originator key (1-pass ECMQV), which we do not implement.
    if originator.name != "originator_key":
        raise DecodeError("unsupported kari originator: only originatorKey (ephemeral-static "
                          "ECDH) is implemented")
    opk = originator.chosen
    alg = opk["algorithm"]
    if alg["algorithm"].native != "ec":
        raise DecodeError(f"unsupported originator key algorithm {alg['algorithm'].dotted}")
    # RFC 5753 section 3.1.1: "The parameters associated with id-ecPublicKey
    # MUST be absent, ECParameters, or NULL. [...] If the parameters are
    # ECParameters, then they MUST be namedCurve."
    params = alg["parameters"]
    if not isinstance(params, (core.Void, core.Null)):
        if params.name == "implicit_ca":
            pass  # ECParameters' NULL alternative: the same as NULL
        elif params.name != "named" or params.chosen.native != key.curve.name:
            raise DecodeError(
                "invalid kari originator key: its parameters do not name the "
                f"recipient's curve {key.curve.name}")
    point = opk["public_key"].native
    try:
        # Checks the point is on the recipient's curve.
        peer = ec.EllipticCurvePublicKey.from_encoded_point(key.curve, bytes(point))
        shared = key.exchange(ec.ECDH(), peer)
    except (ValueError, TypeError) as exc:
        raise DecodeError(
            f"invalid kari originator key: not a point on {key.curve.name}") from exc
    ukm_field = kari["ukm"]
    # RFC 5652 section 6.2.2: "Implementations MUST accept a
    # KeyAgreeRecipientInfo SEQUENCE that includes a ukm field."
    ukm = None if isinstance(ukm_field, core.Void) else ukm_field.native

    # keyInfo is the wrap AlgorithmIdentifier as sent; RFC 3565 section 2.3.2
    # makes its parameters absent, but some producers write NULL (into the
    # message or only into SharedInfo), and the two encodings derive
    # different keys. So try the form received, then the other one.
    absent = cms.KeyEncryptionAlgorithm({"algorithm": wrap_name})
    null = cms.KeyEncryptionAlgorithm({"algorithm": wrap_name, "parameters": core.Null()})
    wrap_params = wrap["parameters"]
    if isinstance(wrap_params, core.Void):
        key_infos = [absent, null]
    elif wrap_params.dump() == b"\x05\x00":
        key_infos = [null, absent]
    else:
        raise DecodeError("invalid key wrap algorithm: AES key wrap has no parameters")
    unwrap = aes_key_unwrap_with_padding if wrap_name.endswith("_pad") else aes_key_unwrap
    for key_info in key_infos:
        kek = _ecc_cms_kek(shared, hash_name, key_info, ukm, kek_size)
        for wrapped in wrapped_keys:
            try:
                return unwrap(kek, wrapped)
            except (InvalidUnwrap, ValueError):
                continue
    return None


def _ktri_padding(kea: Asn1Value) -> padding.AsymmetricPadding:
    name = kea["algorithm"].native
    if name == "rsaes_oaep":
        params = kea["parameters"]
        if isinstance(params, core.Void):
            # Absent parameters: every field takes its DEFAULT (SHA-1).
            return _oaep("sha1", "sha1", None)
        mgf = params["mask_gen_algorithm"]
        if mgf["algorithm"].native != "mgf1":
            raise DecodeError(f"unsupported OAEP mask generation {mgf['algorithm'].dotted}")
        psrc = params["p_source_algorithm"]
        if psrc["algorithm"].native != "p_specified":
            raise DecodeError("unsupported OAEP pSourceFunc")
        label = psrc["parameters"].native or None
        return _oaep(params["hash_algorithm"]["algorithm"].native,
                     mgf["parameters"]["algorithm"].native, label)
    if name == "rsaes_pkcs1v15":
        # openssl cms -encrypt -recip uses this by default. Its failure is
        # reported like any other wrong key.
        return padding.PKCS1v15()
    raise DecodeError(f"unsupported key transport algorithm {kea['algorithm'].dotted}")


def _oaep(hash_name: str, mgf_hash_name: str, label: bytes | None) -> padding.OAEP:
    try:
        h = _OAEP_HASHES[hash_name]()
        mh = _OAEP_HASHES[mgf_hash_name]()
    except KeyError as exc:
        raise DecodeError(f"unsupported OAEP hash {exc.args[0]!r}") from exc
    return padding.OAEP(mgf=padding.MGF1(mh), algorithm=h, label=label)


def _ski_of(cert: x509.Certificate) -> bytes:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        return ext.value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest


def _issuer_and_serial(cert: x509.Certificate) -> cms.IssuerAndSerialNumber:
    parsed = asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
    tbs = parsed["tbs_certificate"]
    return cms.IssuerAndSerialNumber({
        "issuer": tbs["issuer"], "serial_number": tbs["serial_number"]})


# -- the encrypted key package --------------------------------------------------


def encrypt_key_package(
    private_key: PrivateKeyTypes,
    *,
    signer_key: signeddata.SigningKey,
    signer_cert: x509.Certificate | None = None,
    recipient: Recipient,
    certificates: tuple[x509.Certificate, ...] = (),
    content_encryption: ContentEncryption = "aes256_cbc",
) -> bytes:
    """Build the encrypted key part of a /serverkeygen response.

    RFC 7030 section 4.4.2: the key goes as a OneAsymmetricKey in an RFC
    5958 AsymmetricKeyPackage, signed (SignedData, eContentType
    id-ct-KP-aKeyPackage) by the key generator, then enveloped for the
    recipient the CSR named.

    Args:
        private_key: the server-generated key.
        signer_key: the key generator's signing key.
        signer_cert: its certificate (carried in the SignedData and naming
            the signer), or None to name the signer by key identifier.
        recipient: who may decrypt (kekri, ktri or kari).
        certificates: extra certificates for the SignedData.
        content_encryption: the AES-CBC variant.

    Returns:
        DER ContentInfo(EnvelopedData); send it base64-encoded as
        ``application/pkcs7-mime; smime-type=server-generated-key``.

    Raises:
        LocalProtocolError: a bad argument.
    """
    pkcs8 = encode_private_key(private_key)
    package = AsymmetricKeyPackage([OneAsymmetricKey.load(pkcs8)]).dump()
    signed = _sign_key_package(package, signer_key, signer_cert, certificates)
    return build_enveloped_data(
        "signed_data", signed, recipient, content_encryption=content_encryption)


def _sign_key_package(
    package: bytes,
    signer_key: signeddata.SigningKey,
    signer_cert: x509.Certificate | None,
    certificates: tuple[x509.Certificate, ...],
) -> bytes:
    """SignedData (not ContentInfo) over an AsymmetricKeyPackage."""
    if not isinstance(signer_key, (*_KEY_TYPES, ExternalSigningKey)):
        raise LocalProtocolError("signer_key must be an RSA, EC, Ed25519 or Ed448 private key "
                                 "or an ExternalSigningKey")
    # Without a certificate the signer is named by the method-1 key
    # identifier of its key (RFC 5652 section 5.3, SignerInfo version 3).
    content_info = signeddata.build_signed_data(
        ID_CT_KP_A_KEY_PACKAGE, package, signer_key,
        signer_cert=signer_cert, certificates=certificates,
    )
    # RFC 5652 section 6.1: encryptedContentInfo carries the content itself,
    # typed by contentType; for id-signedData that is the SignedData.
    return bytes(cms.ContentInfo.load(content_info)["content"].untag().dump())


def decrypt_key_package(
    der: bytes,
    *,
    kek: bytes | None = None,
    key_identifier: bytes | None = None,
    recipient_private_key: RecipientPrivateKey | None = None,
    subject_key_identifier: bytes | None = None,
    recipient_certificate: x509.Certificate | None = None,
    verify_with: signeddata.VerifyingKey | x509.Certificate | None = None,
    max_size: int = MAX_DER_SIZE,
    lenient: bool = False,
) -> DecryptedKeyPackage:
    """Open the encrypted key part of a /serverkeygen response.

    Decrypts (see :func:`open_enveloped_data` for how the recipient is
    chosen), verifies the SignedData, and loads the key package.

    Args:
        verify_with: the public key or certificate expected to have signed
            the package. A signature by it is required. With None, a
            signature verifying with a certificate carried in the message is
            required (``signer_authenticated`` is then False).
        lenient: also accept an id-data enveloped content holding a whole
            ContentInfo(SignedData), as ``openssl cms -encrypt`` produces
            from a signed file.

    Returns:
        A :class:`DecryptedKeyPackage`.

    Raises:
        LocalProtocolError: bad arguments.
        MessageTooLarge: *der* is longer than *max_size*.
        BadSignature: no signer's signature verifies.
        DecodeError: anything else wrong with the message.
    """
    if isinstance(verify_with, x509.Certificate):
        cert_key = verify_with.public_key()
        if not isinstance(cert_key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey,
                                     ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            raise LocalProtocolError("verify_with certificate has an unsupported key type")
        verify_key: signeddata.VerifyingKey | None = cert_key
    else:
        verify_key = verify_with
    content_type, content = _open(
        der, kek=kek, key_identifier=key_identifier,
        recipient_private_key=recipient_private_key,
        subject_key_identifier=subject_key_identifier,
        recipient_certificate=recipient_certificate, max_size=max_size,
    )
    # RFC 7030 section 4.4.2: "the private key is placed inside of a CMS
    # SignedData [...] further protected by placing it inside of a CMS
    # EnvelopedData", so the enveloped content type is id-signedData.
    # `openssl cms -encrypt` of a signed file labels it id-data instead and
    # encloses a whole ContentInfo: accepted only when lenient.
    if content_type == signeddata.ID_DATA and lenient:
        signed_ci = _as_signed_data_content_info(content, max_size, require_content_info=True)
    elif content_type != signeddata.ID_SIGNED_DATA:
        raise DecodeError(
            f"EnvelopedData holds content type {content_type}, expected id-signedData")
    else:
        signed_ci = _as_signed_data_content_info(content, max_size)
    signed = signeddata.parse_signed_data(
        signed_ci, expected_content_type=ID_CT_KP_A_KEY_PACKAGE, max_size=max_size)
    if not signed.signers:
        # RFC 7030 section 4.4.2: "The SignedData is signed by the party
        # that generated the private key".
        raise BadSignature("key package SignedData has no signers")

    signer_cert: x509.Certificate | None = None
    verified = False
    for index in range(len(signed.signers)):
        cert = signeddata.find_signer_certificate(signed, index)
        key: object = verify_key
        if key is None and cert is not None:
            try:
                key = cert.public_key()
            except (ValueError, UnsupportedAlgorithm):
                continue  # a certificate in the message whose key cannot be loaded
        if key is None:
            continue
        try:
            # An unsupported key type is reported by verify_signer as
            # BadSignature, like any key that does not match.
            signeddata.verify_signer(signed, index, key)  # type: ignore[arg-type]
        except BadSignature:
            continue
        signer_cert = cert
        verified = True
        break
    if not verified:
        if verify_key is None:
            raise BadSignature(
                "key package signature does not verify with any certificate it carries")
        raise BadSignature("key package signature does not verify with the given key")

    keys_ = _load_key_package(signed.econtent, max_size)
    return DecryptedKeyPackage(
        private_key=keys_[0],
        additional_keys=tuple(keys_[1:]),
        certificates=tuple(signed.certificates),
        signer_certificate=signer_cert,
        signer_authenticated=verify_key is not None,
    )


def _as_signed_data_content_info(
    content: bytes, max_size: int, *, require_content_info: bool = False
) -> bytes:
    """Wrap a bare SignedData in a ContentInfo; pass a ContentInfo through.

    RFC 5652 makes the decrypted content the SignedData itself; some
    producers put a whole ContentInfo there. The two differ in their first
    element: SignedData starts with an INTEGER (version), ContentInfo with an
    OBJECT IDENTIFIER.
    """
    what = "enveloped SignedData"
    value = load_der(core.Sequence, content, what, max_size)
    with decoding(what):
        first = core.load(value.contents, strict=False) if value.contents else None
        if first is None:
            raise DecodeError(f"invalid {what}: empty SEQUENCE")
        if isinstance(first, core.ObjectIdentifier):
            return content
        if require_content_info or not isinstance(first, core.Integer):
            raise DecodeError(f"invalid {what}: neither SignedData nor ContentInfo")
        signed = cms.SignedData.load(content)
        return bytes(cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump())


def _load_key_package(econtent: bytes, max_size: int) -> list[PrivateKey]:
    what = "AsymmetricKeyPackage"
    package = load_der(AsymmetricKeyPackage, econtent, what, max_size)
    with decoding(what):
        if len(package) == 0:
            # RFC 5958 section 2: SEQUENCE SIZE (1..MAX) OF OneAsymmetricKey.
            raise DecodeError(f"invalid {what}: no keys")
        return [_key_from_one_asymmetric_key(oak) for oak in package]
