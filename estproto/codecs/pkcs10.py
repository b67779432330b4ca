"""PKCS#10 certification requests as EST uses them: decode, verify, build.

Implements:

* RFC 2986 (PKCS#10) ``CertificationRequest``, the body of /simpleenroll,
  /simplereenroll and /serverkeygen (RFC 7030 sections 4.2, 4.4.1).
* RFC 7030 section 3.5, proof-of-possession linking: the base64 of the TLS
  channel binding carried in challengePassword (RFC 2985 5.4.1), or in
  estIdentityLinking (RFC 7894 3.3), see :func:`matches_channel_binding`.
* RFC 7030 4.4.1.1 / 4.4.1.2 serverkeygen attributes: DecryptKeyIdentifier
  (RFC 4108 2.2.5, ``OCTET STRING``), AsymmetricDecryptKeyIdentifier
  (``OCTET STRING``) and SMIMECapabilities (RFC 2633 2.5.2).
* RFC 7894 otpChallenge, revocationChallenge and estIdentityLinking, each a
  ``DirectoryString {255}`` (PrintableString when possible, else UTF8String).

Strategy. Real clients send requests that are not strict DER: strongSwan's
``pki --req`` writes the attribute ``SET`` unsorted, which ``cryptography``'s
``load_der_x509_csr`` refuses (InvalidSetOrdering) while OpenSSL accepts it.
So the source of truth is our own small DER walker over the received bytes:
it slices out the exact ``certificationRequestInfo`` (the signed bytes), the
subject, the SubjectPublicKeyInfo and every attribute value, and the
signature is checked with ``cryptography``'s public-key ``verify()`` over
those exact bytes. Only the pieces that must become ``cryptography`` objects
are handed to ``cryptography``: the SubjectPublicKeyInfo (to
``load_der_public_key``), and the subject Name plus the subjectAltName value,
which we place, byte for byte, inside a minimal canonical request and load
with ``load_der_x509_csr`` (``cryptography`` has no public parser for a bare
GeneralNames). Nothing else is re-encoded, so the result does not depend on
which of two parsers accepted the input. Attribute values are decoded by
hand (they are a handful of primitive types); asn1crypto is used only for
the rare RSASSA-PSS parameters. The walker rejects indefinite and non-minimal
lengths and trailing bytes.

Signature algorithms accepted: RSA PKCS#1 v1.5 with SHA-256/384/512, and
with SHA-1 only because the RFC 7030 Appendix A.3/A.4 examples use
sha1WithRSAEncryption; RSASSA-PSS with SHA-256/384/512 (MGF1 hash and salt
length read from the parameters); ECDSA with SHA-256/384/512 on P-256, P-384
and P-521; Ed25519; Ed448. Anything else, or a signature that does not
verify, raises :class:`~estproto.BadSignature`. The builder never signs with
SHA-1.

ECDSA and PKCS#1 v1.5 parameters may be absent or NULL (RFC 5758 wants them
absent for ECDSA, RFC 4055 NULL for RSA; both forms are seen in practice);
EdDSA parameters must be absent (RFC 8410).

Limits: the request size (``max_size``, default ``MAX_DER_SIZE``), the
255-character bound RFC 2985 / RFC 7894 put on challenge strings
(``MAX_CHALLENGE_LENGTH``) and ``MAX_OID_LENGTH``.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import hmac
from dataclasses import dataclass
from typing import Callable, Sequence, TypeGuard, Union, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa

from .._errors import BadSignature, DecodeError, LocalProtocolError
from .._limits import MAX_DER_SIZE
from ._der import check_size, decoding

__all__ = [
    "CertificationRequest",
    "RequestedExtension",
    "decode_csr",
    "build_csr",
    "key_identifier",
    "channel_binding_password",
    "matches_channel_binding",
    "OID_CHALLENGE_PASSWORD",
    "OID_EXTENSION_REQUEST",
    "OID_SMIME_CAPABILITIES",
    "OID_DECRYPT_KEY_IDENTIFIER",
    "OID_ASYMMETRIC_DECRYPT_KEY_IDENTIFIER",
    "OID_OTP_CHALLENGE",
    "OID_REVOCATION_CHALLENGE",
    "OID_EST_IDENTITY_LINKING",
    "MAX_CHALLENGE_LENGTH",
    "MAX_OID_LENGTH",
    "PrivateKey",
    "PublicKey",
    "is_signing_key",
]

#: RFC 2985 5.4.1 pkcs-9-at-challengePassword.
OID_CHALLENGE_PASSWORD = "1.2.840.113549.1.9.7"
#: RFC 2985 5.4.2 pkcs-9-at-extensionRequest.
OID_EXTENSION_REQUEST = "1.2.840.113549.1.9.14"
#: RFC 2633 2.5.2 / RFC 2985 smimeCapabilities.
OID_SMIME_CAPABILITIES = "1.2.840.113549.1.9.15"
#: RFC 4108 2.2.5 id-aa-decryptKeyID (RFC 7030 4.4.1.1).
OID_DECRYPT_KEY_IDENTIFIER = "1.2.840.113549.1.9.16.2.37"
#: RFC 7030 4.4.1.2 id-aa-asymmDecryptKeyID.
OID_ASYMMETRIC_DECRYPT_KEY_IDENTIFIER = "1.2.840.113549.1.9.16.2.54"
#: RFC 7894 3.1 id-aa-otpChallenge.
OID_OTP_CHALLENGE = "1.2.840.113549.1.9.16.2.56"
#: RFC 7894 3.2 id-aa-revocationChallenge.
OID_REVOCATION_CHALLENGE = "1.2.840.113549.1.9.16.2.57"
#: RFC 7894 3.3 id-aa-estIdentityLinking.
OID_EST_IDENTITY_LINKING = "1.2.840.113549.1.9.16.2.58"

_OID_SAN = "2.5.29.17"

#: Upper bound on challengePassword and the RFC 7894 attributes, in
#: characters: RFC 2985 ``DirectoryString {pkcs-9-ub-challengePassword}`` with
#: ub 255, RFC 7894 ``ub-aa-* INTEGER ::= 255``, and RFC 7030 3.5 "The
#: challenge-password field is limited to 255 bytes".
MAX_CHALLENGE_LENGTH = 255

#: Longest OBJECT IDENTIFIER (contents bytes) we decode. Registered OIDs are
#: under 30 bytes, a 2.25 UUID OID about 20; the bound keeps a hostile
#: single huge arc from costing quadratic time.
MAX_OID_LENGTH = 128

PrivateKey = Union[
    rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey
]
PublicKey = Union[
    rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey, ed448.Ed448PublicKey
]


def is_signing_key(key: object) -> TypeGuard[PrivateKey]:
    """True when *key* is a :data:`PrivateKey`, one that can sign a CSR
    (an X25519 or DH key loads as a private key but cannot)."""
    return isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey,
                            ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey))


@dataclass(frozen=True)
class RequestedExtension:
    """One Extension from the extensionRequest attribute (RFC 2985 5.4.2).

    Attributes:
        oid: extnID, dotted.
        critical: the critical flag (DEFAULT FALSE).
        value_der: the contents of extnValue (the DER of the extension's own
            value, e.g. GeneralNames for subjectAltName).
    """

    oid: str
    critical: bool
    value_der: bytes


@dataclass(frozen=True)
class CertificationRequest:
    """A decoded (and normally verified) PKCS#10 request.

    Attributes:
        der: the exact bytes received.
        info_der: the exact ``certificationRequestInfo`` bytes (what is signed).
        subject: the subject as a ``cryptography`` Name.
        subject_der: the exact DER of the subject Name, for byte comparison
            (RFC 7030 4.2.2 simplereenroll).
        public_key: the ``cryptography`` public key.
        public_key_der: the exact SubjectPublicKeyInfo DER.
        signature_algorithm_oid: the signatureAlgorithm OID, dotted.
        extensions: the extensionRequest contents, in order.
        subject_alt_names: the subjectAltName entries, empty if absent.
        challenge_password: RFC 2985 challengePassword, if present.
        est_identity_linking: RFC 7894 estIdentityLinking, if present.
        otp_challenge: RFC 7894 otpChallenge, if present.
        revocation_challenge: RFC 7894 revocationChallenge, if present.
        decrypt_key_identifier: RFC 7030 4.4.1.1 DecryptKeyIdentifier.
        asymmetric_decrypt_key_identifier: RFC 7030 4.4.1.2 identifier.
        smime_capabilities: capability OIDs of SMIMECapabilities, in order.
        attributes: every attribute as received: (type OID, value DERs),
            including those not understood here.
    """

    der: bytes
    info_der: bytes
    subject: x509.Name
    subject_der: bytes
    public_key: PublicKey
    public_key_der: bytes
    signature_algorithm_oid: str
    extensions: tuple[RequestedExtension, ...] = ()
    subject_alt_names: tuple[x509.GeneralName, ...] = ()
    challenge_password: str | None = None
    est_identity_linking: str | None = None
    otp_challenge: str | None = None
    revocation_challenge: str | None = None
    decrypt_key_identifier: bytes | None = None
    asymmetric_decrypt_key_identifier: bytes | None = None
    smime_capabilities: tuple[str, ...] = ()
    attributes: tuple[tuple[str, tuple[bytes, ...]], ...] = ()

    def get_extension(self, oid: str) -> RequestedExtension | None:
        """Return the requested extension with this OID, or None."""
        for ext in self.extensions:
            if ext.oid == oid:
                return ext
        return None


# --------------------------------------------------------------------------
# A minimal strict DER reader (definite, minimal lengths; exact slices).

_WHAT = "PKCS#10 request"

_SEQUENCE = 0x30
_SET = 0x31
_INTEGER = 0x02
_BIT_STRING = 0x03
_OCTET_STRING = 0x04
_NULL = 0x05
_OID = 0x06
_BOOLEAN = 0x01
_ATTRIBUTES_TAG = 0xA0  # [0] IMPLICIT, constructed


def _fail(msg: str) -> DecodeError:
    return DecodeError(f"invalid {_WHAT}: {msg}")


def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Read one TLV at *pos* (not beyond *end*): (tag, content start, content end).

    Only the first tag byte is returned; high tag numbers are skipped over
    correctly but none of the structures we interpret use them.
    """
    if pos + 1 < end:
        # The common case first: a low tag number and a short length.
        tag = data[pos]
        first = data[pos + 1]
        if first < 0x80 and tag & 0x1F != 0x1F:
            stop = pos + 2 + first
            if stop > end:
                raise _fail("truncated value")
            return tag, pos + 2, stop
    if pos >= end:
        raise _fail("truncated")
    tag = data[pos]
    pos += 1
    if tag & 0x1F == 0x1F:  # high tag number form
        while True:
            if pos >= end:
                raise _fail("truncated tag")
            b = data[pos]
            pos += 1
            if not b & 0x80:
                break
    if pos >= end:
        raise _fail("truncated length")
    first = data[pos]
    pos += 1
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise _fail("indefinite length is not DER")
    else:
        n = first & 0x7F
        if n > 4 or pos + n > end:
            raise _fail("bad length")
        length = int.from_bytes(data[pos : pos + n], "big")
        if data[pos] == 0 or length < 0x80:
            raise _fail("non-minimal length")
        pos += n
    if pos + length > end:
        raise _fail("truncated value")
    return tag, pos, pos + length


def _expect(data: bytes, pos: int, end: int, tag: int, what: str) -> tuple[int, int]:
    t, start, stop = _tlv(data, pos, end)
    if t != tag:
        raise _fail(f"{what}: expected tag 0x{tag:02x}, got 0x{t:02x}")
    return start, stop


def _elements(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """Split data[start:end] into TLVs: (tag, tlv start, content start, end)."""
    out = []
    pos = start
    while pos < end:
        tag, cstart, cend = _tlv(data, pos, end)
        out.append((tag, pos, cstart, cend))
        pos = cend
    return out


def _oid_str(content: bytes) -> str:
    """Dotted form of an OBJECT IDENTIFIER's contents (X.690 8.19)."""
    # Decoding is quadratic in the length of one arc: bound it first.
    if len(content) > MAX_OID_LENGTH:
        raise _fail(f"OBJECT IDENTIFIER longer than {MAX_OID_LENGTH} bytes")
    # Real OIDs are short; caching only those bounds the cache's memory
    # whatever a peer sends.
    if len(content) <= 32:
        return _oid_str_cached(content)
    return _oid_str_uncached(content)


@functools.lru_cache(maxsize=1024)
def _oid_str_cached(content: bytes) -> str:
    return _oid_str_uncached(content)


def _oid_str_uncached(content: bytes) -> str:
    if not content or content[-1] & 0x80:
        raise _fail("bad OBJECT IDENTIFIER")
    arcs: list[int] = []
    value = 0
    fresh = True
    for b in content:
        if fresh and b == 0x80:
            raise _fail("non-minimal OBJECT IDENTIFIER")
        value = (value << 7) | (b & 0x7F)
        fresh = not b & 0x80
        if fresh:
            arcs.append(value)
            value = 0
    first = arcs[0]
    if first < 40:
        head = [0, first]
    elif first < 80:
        head = [1, first - 40]
    else:
        head = [2, first - 80]
    return ".".join(map(str, head + arcs[1:]))


def _oid_content(dotted: str) -> bytes:
    """DER contents of a dotted OID (for the builder)."""
    try:
        arcs = [int(a) for a in dotted.split(".")]
    except ValueError:
        raise LocalProtocolError(f"not a dotted OID: {dotted!r}") from None
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] >= 40) or min(arcs) < 0:
        raise LocalProtocolError(f"not a valid OID: {dotted!r}")
    out = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return bytes(out)


def _enc(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + content


@functools.lru_cache(maxsize=256)
def _enc_oid(dotted: str) -> bytes:
    # Cached: the builder encodes the same handful of OIDs on every call
    # (errors are not cached, so bad input still raises every time).
    return _enc(_OID, _oid_content(dotted))


def _enc_set(elements: Sequence[bytes]) -> bytes:
    # DER (X.690 11.6): SET OF components in ascending order of their
    # encodings; complete TLVs are never prefixes of each other, so a plain
    # bytes sort is that order.
    return _enc(_SET, b"".join(sorted(elements)))


# --------------------------------------------------------------------------
# Attribute value decoding.

# DirectoryString alternatives (RFC 5280) and the IA5String some encoders use.
_STRING_CODECS = {
    0x13: "ascii",  # PrintableString
    0x0C: "utf-8",  # UTF8String
    0x14: "latin-1",  # TeletexString, read as Latin-1 as OpenSSL does
    0x16: "ascii",  # IA5String
    0x1C: "utf-32-be",  # UniversalString
    0x1E: "utf-16-be",  # BMPString
}

_PRINTABLE = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?"
)


def _single(oid: str, values: tuple[bytes, ...]) -> bytes:
    # RFC 2985 / RFC 7894: "SINGLE VALUE TRUE" / "COUNTS MIN 1 MAX 1".
    if len(values) != 1:
        raise _fail(f"attribute {oid} must have exactly one value")
    return values[0]


def _directory_string(oid: str, value: bytes) -> str:
    tag, start, end = _tlv(value, 0, len(value))
    if end != len(value):
        raise _fail(f"attribute {oid}: trailing bytes")
    codec = _STRING_CODECS.get(tag)
    if codec is None:
        raise _fail(f"attribute {oid}: not a DirectoryString (tag 0x{tag:02x})")
    try:
        text = value[start:end].decode(codec)
    except UnicodeDecodeError:
        raise _fail(f"attribute {oid}: bad string encoding") from None
    if tag == 0x13 and not _PRINTABLE.issuperset(text):
        raise _fail(f"attribute {oid}: invalid PrintableString")
    # RFC 2985 5.4.1 / RFC 7894 3: DirectoryString of size 1..255.
    if not 1 <= len(text) <= MAX_CHALLENGE_LENGTH:
        raise _fail(f"attribute {oid}: length must be 1..{MAX_CHALLENGE_LENGTH}")
    return text


def _octet_string(oid: str, value: bytes) -> bytes:
    tag, start, end = _tlv(value, 0, len(value))
    if tag != _OCTET_STRING or end != len(value):
        raise _fail(f"attribute {oid}: expected an OCTET STRING")
    return value[start:end]


def _extensions(value: bytes) -> tuple[RequestedExtension, ...]:
    # Extensions ::= SEQUENCE SIZE (1..MAX) OF Extension (RFC 5280 4.1);
    # empty lists are tolerated (OpenSSL writes them).
    start, end = _expect(value, 0, len(value), _SEQUENCE, "extensionRequest")
    if end != len(value):
        raise _fail("extensionRequest: trailing bytes")
    out = []
    seen: set[str] = set()
    for tag, _, cstart, cend in _elements(value, start, end):
        if tag != _SEQUENCE:
            raise _fail("extensionRequest: Extension is not a SEQUENCE")
        parts = _elements(value, cstart, cend)
        if len(parts) not in (2, 3) or parts[0][0] != _OID or parts[-1][0] != _OCTET_STRING:
            raise _fail("extensionRequest: malformed Extension")
        oid = _oid_str(value[parts[0][2] : parts[0][3]])
        critical = False
        if len(parts) == 3:
            btag, _, bstart, bend = parts[1]
            flag = value[bstart:bend]
            if btag != _BOOLEAN or flag not in (b"\x00", b"\xff"):
                raise _fail("extensionRequest: bad critical flag")
            critical = flag == b"\xff"
        # RFC 5280 4.2: "A certificate MUST NOT include more than one
        # instance of a particular extension."
        if oid in seen:
            raise _fail(f"extensionRequest: duplicate extension {oid}")
        seen.add(oid)
        out.append(RequestedExtension(oid, critical, value[parts[-1][2] : parts[-1][3]]))
    return tuple(out)


def _smime_capabilities(value: bytes) -> tuple[str, ...]:
    # SMIMECapabilities ::= SEQUENCE OF SMIMECapability
    # SMIMECapability ::= SEQUENCE { capabilityID OID, parameters ANY OPTIONAL }
    start, end = _expect(value, 0, len(value), _SEQUENCE, "SMIMECapabilities")
    if end != len(value):
        raise _fail("SMIMECapabilities: trailing bytes")
    out = []
    for tag, _, cstart, cend in _elements(value, start, end):
        if tag != _SEQUENCE:
            raise _fail("SMIMECapabilities: capability is not a SEQUENCE")
        parts = _elements(value, cstart, cend)
        if len(parts) not in (1, 2) or parts[0][0] != _OID:
            raise _fail("SMIMECapabilities: malformed capability")
        out.append(_oid_str(value[parts[0][2] : parts[0][3]]))
    return tuple(out)


# --------------------------------------------------------------------------
# Signature algorithms.

_SHA1 = "1.3.14.3.2.26"
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "2.16.840.1.101.3.4.2.1": hashes.SHA256,
    "2.16.840.1.101.3.4.2.2": hashes.SHA384,
    "2.16.840.1.101.3.4.2.3": hashes.SHA512,
}
_HASH_OIDS = {
    "sha256": "2.16.840.1.101.3.4.2.1",
    "sha384": "2.16.840.1.101.3.4.2.2",
    "sha512": "2.16.840.1.101.3.4.2.3",
}

_RSA_PKCS1: dict[str, type[hashes.HashAlgorithm]] = {
    # sha1WithRSAEncryption: only for the RFC 7030 Appendix A examples.
    "1.2.840.113549.1.1.5": hashes.SHA1,
    "1.2.840.113549.1.1.11": hashes.SHA256,
    "1.2.840.113549.1.1.12": hashes.SHA384,
    "1.2.840.113549.1.1.13": hashes.SHA512,
}
_ECDSA: dict[str, type[hashes.HashAlgorithm]] = {
    "1.2.840.10045.4.3.2": hashes.SHA256,
    "1.2.840.10045.4.3.3": hashes.SHA384,
    "1.2.840.10045.4.3.4": hashes.SHA512,
}
_DER = serialization.Encoding.DER
_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
_RSA_PSS = "1.2.840.113549.1.1.10"
_MGF1 = "1.2.840.113549.1.1.8"
_ED25519 = "1.3.101.112"
_ED448 = "1.3.101.113"
_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)

_RSA_PKCS1_BY_HASH = {
    "sha256": "1.2.840.113549.1.1.11",
    "sha384": "1.2.840.113549.1.1.12",
    "sha512": "1.2.840.113549.1.1.13",
}
_ECDSA_BY_HASH = {
    "sha256": "1.2.840.10045.4.3.2",
    "sha384": "1.2.840.10045.4.3.3",
    "sha512": "1.2.840.10045.4.3.4",
}


def _pss_padding(params: bytes) -> tuple[padding.PSS, hashes.HashAlgorithm]:
    """Parse RSASSA-PSS-params (RFC 4055 3.1) into a cryptography padding."""
    from asn1crypto import algos  # only the rare PSS case pays the import

    try:
        with decoding("RSASSA-PSS parameters"):
            p = algos.RSASSAPSSParams.load(params, strict=True)
            hash_oid = p["hash_algorithm"]["algorithm"].dotted
            mgf = p["mask_gen_algorithm"]
            mgf_oid = mgf["algorithm"].dotted
            mgf_hash_oid = mgf["parameters"]["algorithm"].dotted
            salt = int(p["salt_length"])
            trailer = int(p["trailer_field"])
    except DecodeError as exc:
        # Unreadable parameters leave the algorithm unknown.
        raise BadSignature(str(exc)) from None
    # The defaults (SHA-1, MGF1-SHA-1) fall through to "unsupported" here.
    if hash_oid not in _HASHES or mgf_oid != _MGF1 or mgf_hash_oid not in _HASHES:
        raise BadSignature("unsupported RSASSA-PSS hash or mask generation function")
    if trailer != 1 or not 0 <= salt <= 1024:
        raise BadSignature("unsupported RSASSA-PSS trailer field or salt length")
    algo = _HASHES[hash_oid]()
    return padding.PSS(padding.MGF1(_HASHES[mgf_hash_oid]()), salt), algo


def _verify(key: PublicKey, alg_oid: str, params: bytes | None, sig: bytes, info: bytes) -> None:
    """Check *sig* over *info*; raise BadSignature on any mismatch."""
    null_or_absent = params is None or params == b"\x05\x00"
    try:
        if alg_oid in _RSA_PKCS1 and null_or_absent and isinstance(key, rsa.RSAPublicKey):
            key.verify(sig, info, padding.PKCS1v15(), _RSA_PKCS1[alg_oid]())
        elif alg_oid == _RSA_PSS and params is not None and isinstance(key, rsa.RSAPublicKey):
            pss, algo = _pss_padding(params)
            key.verify(sig, info, pss, algo)
        elif (
            alg_oid in _ECDSA
            and null_or_absent
            and (type(key) in _EC_KEY_CLASSES or isinstance(key, ec.EllipticCurvePublicKey))
            and isinstance(cast(ec.EllipticCurvePublicKey, key).curve, _CURVES)
        ):
            cast(ec.EllipticCurvePublicKey, key).verify(sig, info, ec.ECDSA(_ECDSA[alg_oid]()))
        elif alg_oid == _ED25519 and params is None and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(sig, info)
        elif alg_oid == _ED448 and params is None and isinstance(key, ed448.Ed448PublicKey):
            key.verify(sig, info)
        else:
            raise BadSignature(
                f"unsupported signature algorithm {alg_oid} for a {type(key).__name__}"
            )
    except InvalidSignature:
        raise BadSignature("PKCS#10 request signature does not verify") from None


# --------------------------------------------------------------------------
# cryptography objects from exact received bytes.

# A fixed, never-verified signatureAlgorithm for the canonical wrapper below.
_WRAP_ALG = _enc(_SEQUENCE, _enc_oid("1.2.840.10045.4.3.2"))
_WRAP_SAN_EXT_OID = _enc_oid(_OID_SAN)
_WRAP_EXTREQ_OID = _enc_oid(OID_EXTENSION_REQUEST)
_NAME_FROM_BYTES: Callable[[bytes], x509.Name] | None = getattr(x509.Name, "from_bytes", None)


def _subject_and_sans(
    subject_der: bytes, spki_der: bytes, san_der: bytes | None
) -> tuple[x509.Name, tuple[x509.GeneralName, ...]]:
    """Parse the subject and the SAN value with cryptography.

    Without a SAN, ``x509.Name.from_bytes`` (recent cryptography) parses the
    subject directly. Otherwise subject and SAN value are copied unchanged
    into a minimal well-ordered request, the only public way to have
    cryptography parse a bare GeneralNames; that wrapper's signature is
    never looked at. Both routes run the same Rust Name parser on the same
    bytes.
    """
    try:
        if san_der is None and _NAME_FROM_BYTES is not None:
            return _NAME_FROM_BYTES(subject_der), ()
        attrs = b""
        if san_der is not None:
            ext = _enc(_SEQUENCE, _WRAP_SAN_EXT_OID + _enc(_OCTET_STRING, san_der))
            attrs = _enc(_SEQUENCE, _WRAP_EXTREQ_OID + _enc(_SET, _enc(_SEQUENCE, ext)))
        info = _enc(
            _SEQUENCE, b"\x02\x01\x00" + subject_der + spki_der + _enc(_ATTRIBUTES_TAG, attrs)
        )
        req = x509.load_der_x509_csr(_enc(_SEQUENCE, info + _WRAP_ALG + b"\x03\x01\x00"))
        subject = req.subject
        sans: tuple[x509.GeneralName, ...] = ()
        if san_der is not None:
            san = req.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            sans = tuple(san)
    except (
        ValueError, TypeError, x509.UnsupportedGeneralNameType, x509.DuplicateExtension
    ) as exc:
        # TypeError: cryptography refuses e.g. a BIT STRING value in a Name.
        raise _fail(f"subject or subjectAltName: {exc}") from None
    return subject, sans


_PUBLIC_KEY_TYPES = (
    rsa.RSAPublicKey,
    ec.EllipticCurvePublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
)
# Concrete key classes already found to be one of _PUBLIC_KEY_TYPES (those
# are ABCs, slow to isinstance-check): a handful of classes at most.
_SEEN_KEY_CLASSES: set[type] = set()
# The EC ones among them, for _verify.
_EC_KEY_CLASSES: set[type] = set()


def _public_key(spki_der: bytes) -> PublicKey:
    try:
        key = serialization.load_der_public_key(spki_der)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _fail(f"subjectPublicKeyInfo: {exc}") from None
    if type(key) not in _SEEN_KEY_CLASSES:
        if not isinstance(key, _PUBLIC_KEY_TYPES):
            raise _fail(f"unsupported public key type {type(key).__name__}")
        _SEEN_KEY_CLASSES.add(type(key))
        if isinstance(key, ec.EllipticCurvePublicKey):
            _EC_KEY_CLASSES.add(type(key))
    # Checked above: the isinstance runs once per key class (a cache, since
    # it walks ABCs on every CSR otherwise).
    return cast(PublicKey, key)


# --------------------------------------------------------------------------
# Decoder.


def decode_csr(
    der: bytes, *, verify: bool = True, max_size: int = MAX_DER_SIZE
) -> CertificationRequest:
    """Decode a DER PKCS#10 request and (by default) verify its signature.

    The signature is checked over the exact received
    ``certificationRequestInfo`` bytes, so requests whose attribute SET is not
    in DER order (strongSwan) are accepted as OpenSSL accepts them.

    Args:
        der: the request, DER (already base64-decoded).
        verify: check the self-signature. RFC 7030 4.4.1 serverkeygen "MUST
            ignore the public key values and signature in the CSR": pass
            False there (the public key must still be parseable).
        max_size: reject larger inputs before parsing.

    Returns:
        The :class:`CertificationRequest`.

    Raises:
        MessageTooLarge: *der* is longer than *max_size*.
        BadSignature: unknown or unsupported signature algorithm, a key of
            the wrong type for it, or a signature that does not verify.
        DecodeError: anything malformed: not DER, wrong version, trailing
            bytes, malformed or duplicate attributes, unparseable key,
            subject or subjectAltName.
    """
    if not isinstance(der, (bytes, bytearray, memoryview)):
        raise TypeError(f"{_WHAT} must be bytes, not {type(der).__name__}")
    check_size(der, max_size, _WHAT)
    data = bytes(der)
    n = len(data)

    # CertificationRequest ::= SEQUENCE { info, signatureAlgorithm, signature }
    start, end = _expect(data, 0, n, _SEQUENCE, "CertificationRequest")
    if end != n:
        raise _fail("trailing bytes after the request")
    info_start = start
    istart, iend = _expect(data, start, end, _SEQUENCE, "certificationRequestInfo")
    astart, aend = _expect(data, iend, end, _SEQUENCE, "signatureAlgorithm")
    sstart, send = _expect(data, aend, end, _BIT_STRING, "signature")
    if send != end:
        raise _fail("extra fields after the signature")
    if sstart == send or data[sstart] != 0:
        raise _fail("signature BIT STRING must have no unused bits")
    signature = data[sstart + 1 : send]
    info_der = data[info_start:iend]

    # AlgorithmIdentifier ::= SEQUENCE { algorithm OID, parameters ANY OPTIONAL }
    ostart, oend = _expect(data, astart, aend, _OID, "signatureAlgorithm")
    alg_oid = _oid_str(data[ostart:oend])
    alg_params: bytes | None = None
    if oend < aend:
        _, pend = _tlv(data, oend, aend)[1:]
        if pend != aend:
            raise _fail("signatureAlgorithm: trailing bytes")
        alg_params = data[oend:aend]

    # CertificationRequestInfo ::= SEQUENCE { version INTEGER { v1(0) },
    #   subject Name, subjectPKInfo, attributes [0] Attributes }
    vstart, vend = _expect(data, istart, iend, _INTEGER, "version")
    if data[vstart:vend] != b"\x00":
        raise _fail("version must be v1 (0)")
    subj_tag, subj_start, subj_cstart, subj_end = _elements_one(data, vend, iend)
    if subj_tag != _SEQUENCE:
        raise _fail("subject is not a Name")
    subject_der = data[subj_start:subj_end]
    pk_tag, pk_start, _, pk_end = _elements_one(data, subj_end, iend)
    if pk_tag != _SEQUENCE:
        raise _fail("subjectPKInfo is not a SEQUENCE")
    public_key_der = data[pk_start:pk_end]
    raw_attrs: list[tuple[str, tuple[bytes, ...]]] = []
    if pk_end < iend:
        # RFC 2986 makes the [0] field mandatory (possibly empty); some
        # encoders omit it when empty, so absence is tolerated.
        at_start, at_end = _expect(data, pk_end, iend, _ATTRIBUTES_TAG, "attributes")
        if at_end != iend:
            raise _fail("trailing fields in certificationRequestInfo")
        seen: set[str] = set()
        for tag, _, cstart, cend in _elements(data, at_start, at_end):
            if tag != _SEQUENCE:
                raise _fail("attribute is not a SEQUENCE")
            tstart, tend = _expect(data, cstart, cend, _OID, "attribute type")
            oid = _oid_str(data[tstart:tend])
            vs_start, vs_end = _expect(data, tend, cend, _SET, f"attribute {oid} values")
            if vs_end != cend:
                raise _fail(f"attribute {oid}: trailing bytes")
            values = tuple(data[s:e] for _, s, _, e in _elements(data, vs_start, vs_end))
            # RFC 2986 4.1: "values SET SIZE(1..MAX)".
            if not values:
                raise _fail(f"attribute {oid} has no value")
            # X.501: the attribute types of a set of attributes are distinct.
            if oid in seen:
                raise _fail(f"attribute {oid} appears twice")
            seen.add(oid)
            raw_attrs.append((oid, values))

    fields: dict[str, object] = {}
    extensions: tuple[RequestedExtension, ...] = ()
    for oid, values in raw_attrs:
        if oid == OID_EXTENSION_REQUEST:
            extensions = _extensions(_single(oid, values))
        elif oid == OID_CHALLENGE_PASSWORD:
            fields["challenge_password"] = _directory_string(oid, _single(oid, values))
        elif oid == OID_EST_IDENTITY_LINKING:
            fields["est_identity_linking"] = _directory_string(oid, _single(oid, values))
        elif oid == OID_OTP_CHALLENGE:
            fields["otp_challenge"] = _directory_string(oid, _single(oid, values))
        elif oid == OID_REVOCATION_CHALLENGE:
            fields["revocation_challenge"] = _directory_string(oid, _single(oid, values))
        elif oid == OID_DECRYPT_KEY_IDENTIFIER:
            fields["decrypt_key_identifier"] = _octet_string(oid, _single(oid, values))
        elif oid == OID_ASYMMETRIC_DECRYPT_KEY_IDENTIFIER:
            fields["asymmetric_decrypt_key_identifier"] = _octet_string(oid, _single(oid, values))
        elif oid == OID_SMIME_CAPABILITIES:
            fields["smime_capabilities"] = _smime_capabilities(_single(oid, values))

    san_der = next((e.value_der for e in extensions if e.oid == _OID_SAN), None)
    public_key = _public_key(public_key_der)
    subject, sans = _subject_and_sans(subject_der, public_key_der, san_der)
    if verify:
        _verify(public_key, alg_oid, alg_params, signature, info_der)
    # Every value was produced above with its declared type, so the instance
    # is filled in one step instead of one frozen-dataclass setattr per field.
    request: CertificationRequest = object.__new__(CertificationRequest)
    inst = request.__dict__
    inst.update(_REQUEST_DEFAULTS)
    inst.update(fields)
    inst["der"] = data
    inst["info_der"] = info_der
    inst["subject"] = subject
    inst["subject_der"] = subject_der
    inst["public_key"] = public_key
    inst["public_key_der"] = public_key_der
    inst["signature_algorithm_oid"] = alg_oid
    inst["extensions"] = extensions
    inst["subject_alt_names"] = sans
    inst["attributes"] = tuple(raw_attrs)
    return request


# The optional fields' defaults, for decode_csr's one-step construction.
_REQUEST_DEFAULTS: dict[str, object] = {
    f.name: f.default
    for f in dataclasses.fields(CertificationRequest)
    if f.default is not dataclasses.MISSING
}


def _elements_one(data: bytes, pos: int, end: int) -> tuple[int, int, int, int]:
    tag, cstart, cend = _tlv(data, pos, end)
    return tag, pos, cstart, cend


# --------------------------------------------------------------------------
# Builder.


def _directory_string_der(name: str, text: str) -> bytes:
    if not isinstance(text, str):
        raise LocalProtocolError(f"{name} must be a str")
    if not 1 <= len(text) <= MAX_CHALLENGE_LENGTH:
        raise LocalProtocolError(f"{name} must be 1..{MAX_CHALLENGE_LENGTH} characters")
    # RFC 7894 3: "SHOULD use the PrintableString encoding whenever possible.
    # If internationalization issues make this impossible, the UTF8String
    # alternative SHOULD be used."
    if _PRINTABLE.issuperset(text):
        return _enc(0x13, text.encode("ascii"))
    try:
        return _enc(0x0C, text.encode("utf-8"))
    except UnicodeEncodeError:
        raise LocalProtocolError(f"{name} is not encodable as UTF-8") from None


def _extension_der(
    ext: RequestedExtension | x509.Extension[x509.ExtensionType],
) -> tuple[str, bytes]:
    if isinstance(ext, RequestedExtension):
        oid, critical, value = ext.oid, ext.critical, ext.value_der
    elif isinstance(ext, x509.Extension):
        oid, critical = ext.oid.dotted_string, ext.critical
        try:
            value = ext.value.public_bytes()
        except (ValueError, NotImplementedError) as exc:
            raise LocalProtocolError(f"cannot encode extension {oid}: {exc}") from None
    else:
        raise LocalProtocolError(f"not an extension: {ext!r}")
    body = _enc_oid(oid) + (b"\x01\x01\xff" if critical else b"") + _enc(_OCTET_STRING, value)
    return oid, _enc(_SEQUENCE, body)


_SigningParams = tuple[bytes, Union[hashes.HashAlgorithm, None], Union[padding.AsymmetricPadding, None]]

# _signing_params results by (key class, curve name, hash class, rsa_pss): the
# answer depends on nothing else, and a client builds many requests with the
# same kind of key. Bounded: there are a handful of key classes, three curves
# and three hashes.
_SIGNING_CACHE: dict[tuple[type, str | None, type | None, bool], _SigningParams] = {}
_SIGNING_CACHE_MAX = 64


def _cached_signing_params(
    key: PrivateKey, hash_algorithm: hashes.HashAlgorithm | None, rsa_pss: bool
) -> _SigningParams:
    curve = getattr(key, "curve", None)
    cache_key = (
        type(key),
        getattr(curve, "name", None),
        None if hash_algorithm is None else type(hash_algorithm),
        bool(rsa_pss),
    )
    params = _SIGNING_CACHE.get(cache_key)
    if params is None:
        params = _signing_params(key, hash_algorithm, rsa_pss)
        if len(_SIGNING_CACHE) < _SIGNING_CACHE_MAX and type(cache_key[1]) in (str, type(None)):
            _SIGNING_CACHE[cache_key] = params
    return params


def _signing_params(
    key: PrivateKey, hash_algorithm: hashes.HashAlgorithm | None, rsa_pss: bool
) -> _SigningParams:
    """The AlgorithmIdentifier DER, hash and padding for *key*."""
    if rsa_pss and not isinstance(key, rsa.RSAPrivateKey):
        raise LocalProtocolError("rsa_pss needs an RSA key")
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        if hash_algorithm is not None:
            raise LocalProtocolError("EdDSA keys take no hash_algorithm")
        oid = _ED25519 if isinstance(key, ed25519.Ed25519PrivateKey) else _ED448
        # RFC 8410 3: "the parameters MUST be absent".
        return _enc(_SEQUENCE, _enc_oid(oid)), None, None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, _CURVES):
            raise LocalProtocolError(f"unsupported curve {key.curve.name}")
        if hash_algorithm is None:
            size = key.curve.key_size
            hash_algorithm = (
                hashes.SHA256() if size <= 256 else hashes.SHA384() if size <= 384
                else hashes.SHA512()
            )
    elif isinstance(key, rsa.RSAPrivateKey):
        hash_algorithm = hash_algorithm or hashes.SHA256()
    else:
        raise LocalProtocolError(f"unsupported key type {type(key).__name__}")
    if hash_algorithm.name not in _HASH_OIDS:
        raise LocalProtocolError(f"unsupported hash {hash_algorithm.name} (use SHA-256/384/512)")
    if isinstance(key, ec.EllipticCurvePrivateKey):
        # RFC 5758 3.2: the parameters field MUST be absent.
        return _enc(_SEQUENCE, _enc_oid(_ECDSA_BY_HASH[hash_algorithm.name])), hash_algorithm, None
    if not rsa_pss:
        oid = _RSA_PKCS1_BY_HASH[hash_algorithm.name]
        return _enc(_SEQUENCE, _enc_oid(oid) + b"\x05\x00"), hash_algorithm, padding.PKCS1v15()
    # RSASSA-PSS-params (RFC 4055 3.1): hash, MGF1 with the same hash, salt
    # length = hash length, trailer field default.
    hash_id = _enc(_SEQUENCE, _enc_oid(_HASH_OIDS[hash_algorithm.name]) + b"\x05\x00")
    params = _enc(
        _SEQUENCE,
        _enc(0xA0, hash_id)
        + _enc(0xA1, _enc(_SEQUENCE, _enc_oid(_MGF1) + hash_id))
        + _enc(0xA2, _enc(_INTEGER, bytes((hash_algorithm.digest_size,)))),
    )
    pss = padding.PSS(padding.MGF1(type(hash_algorithm)()), hash_algorithm.digest_size)
    return _enc(_SEQUENCE, _enc_oid(_RSA_PSS) + params), hash_algorithm, pss


def build_csr(
    key: PrivateKey,
    subject: x509.Name,
    *,
    subject_alt_names: Sequence[x509.GeneralName] = (),
    extensions: Sequence[RequestedExtension | x509.Extension[x509.ExtensionType]] = (),
    challenge_password: str | None = None,
    est_identity_linking: str | None = None,
    otp_challenge: str | None = None,
    revocation_challenge: str | None = None,
    decrypt_key_identifier: bytes | None = None,
    asymmetric_decrypt_key_identifier: bytes | None = None,
    smime_capabilities: Sequence[str] = (),
    extra_attributes: Sequence[tuple[str, Sequence[bytes]]] = (),
    hash_algorithm: hashes.HashAlgorithm | None = None,
    rsa_pss: bool = False,
) -> bytes:
    """Build and sign a DER PKCS#10 request (the client side of 4.2 / 4.4.1).

    The encoding is strict DER (attributes sorted), strings use the types the
    RFCs name: DirectoryString (PrintableString when possible, else
    UTF8String) for challengePassword and the RFC 7894 attributes, OCTET
    STRING for the key identifiers, SEQUENCE OF SMIMECapability.

    Args:
        key: RSA, EC (P-256/384/521), Ed25519 or Ed448 private key.
        subject: the subject Name.
        subject_alt_names: put into a subjectAltName extension if non-empty.
        extensions: more requested extensions (``x509.Extension`` or
            :class:`RequestedExtension`).
        challenge_password, est_identity_linking, otp_challenge,
            revocation_challenge: 1..255-character strings; for PoP linking
            use :func:`channel_binding_password`.
        decrypt_key_identifier, asymmetric_decrypt_key_identifier: RFC 7030
            4.4.1.1 / 4.4.1.2 key identifiers.
        smime_capabilities: capability OIDs (parameters absent).
        extra_attributes: further attributes as (OID, value DERs), e.g. ones
            a csrattrs response asked for.
        hash_algorithm: SHA-256/384/512; defaults to SHA-256 for RSA and to
            the curve's size for EC; must be None for EdDSA.
        rsa_pss: sign with RSASSA-PSS (RSA keys only).

    Returns:
        The request DER.

    Raises:
        LocalProtocolError: unsupported key, hash or argument value, or a
            duplicate extension or attribute.
    """
    if not isinstance(subject, x509.Name):
        raise LocalProtocolError("subject must be an x509.Name")
    algid, algo, pad = _cached_signing_params(key, hash_algorithm, rsa_pss)

    exts: list[bytes] = []
    ext_oids: set[str] = set()
    if subject_alt_names:
        try:
            san_value = x509.SubjectAlternativeName(list(subject_alt_names)).public_bytes()
        except (TypeError, ValueError) as exc:
            raise LocalProtocolError(f"bad subject_alt_names: {exc}") from None
        exts.append(_extension_der(RequestedExtension(_OID_SAN, False, san_value))[1])
        ext_oids.add(_OID_SAN)
    for ext in extensions:
        oid, ext_der = _extension_der(ext)
        if oid in ext_oids:
            raise LocalProtocolError(f"extension {oid} given twice")
        ext_oids.add(oid)
        exts.append(ext_der)

    attrs: dict[str, list[bytes]] = {}
    if exts:
        attrs[OID_EXTENSION_REQUEST] = [_enc(_SEQUENCE, b"".join(exts))]
    for oid, text, label in (
        (OID_CHALLENGE_PASSWORD, challenge_password, "challenge_password"),
        (OID_EST_IDENTITY_LINKING, est_identity_linking, "est_identity_linking"),
        (OID_OTP_CHALLENGE, otp_challenge, "otp_challenge"),
        (OID_REVOCATION_CHALLENGE, revocation_challenge, "revocation_challenge"),
    ):
        if text is not None:
            attrs[oid] = [_directory_string_der(label, text)]
    for oid, ident, label in (
        (OID_DECRYPT_KEY_IDENTIFIER, decrypt_key_identifier, "decrypt_key_identifier"),
        (OID_ASYMMETRIC_DECRYPT_KEY_IDENTIFIER, asymmetric_decrypt_key_identifier,
         "asymmetric_decrypt_key_identifier"),
    ):
        if ident is not None:
            if not isinstance(ident, bytes):
                raise LocalProtocolError(f"{label} must be bytes")
            attrs[oid] = [_enc(_OCTET_STRING, ident)]
    if smime_capabilities:
        caps = b"".join(_enc(_SEQUENCE, _enc_oid(c)) for c in smime_capabilities)
        attrs[OID_SMIME_CAPABILITIES] = [_enc(_SEQUENCE, caps)]
    for oid, values in extra_attributes:
        if oid in attrs:
            raise LocalProtocolError(f"attribute {oid} given twice")
        if not values or not all(isinstance(v, bytes) and v for v in values):
            raise LocalProtocolError(f"attribute {oid} needs one or more DER values")
        attrs[oid] = list(values)

    attr_ders = [_enc(_SEQUENCE, _enc_oid(oid) + _enc_set(values)) for oid, values in attrs.items()]
    spki = key.public_key().public_bytes(_DER, _SPKI)
    info = _enc(
        _SEQUENCE,
        b"\x02\x01\x00" + subject.public_bytes() + spki
        + _enc(_ATTRIBUTES_TAG, b"".join(sorted(attr_ders))),
    )
    # _signing_params settled the key kind: no hash means EdDSA, a padding
    # means RSA, neither means ECDSA.
    if algo is None:
        signature = cast(Union[ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey], key).sign(info)
    elif pad is None:
        signature = cast(ec.EllipticCurvePrivateKey, key).sign(info, ec.ECDSA(algo))
    else:
        signature = cast(rsa.RSAPrivateKey, key).sign(info, pad, algo)
    return _enc(_SEQUENCE, info + algid + _enc(_BIT_STRING, b"\x00" + signature))


def key_identifier(csr: CertificationRequest) -> bytes:
    """The subjectKeyIdentifier of *csr*'s key: RFC 5280 4.2.1.2 method (1),
    the SHA-1 of the subjectPublicKey bits, exactly the value
    ``x509.SubjectKeyIdentifier.from_public_key(csr.public_key)`` gives.

    Read from the request's own SubjectPublicKeyInfo (``public_key_der``,
    the DER of ``public_key`` in a request :func:`decode_csr` made):
    re-serialising the key, as cryptography does, costs more than the rest
    of the certificate's extensions together. cryptography hashes an EC
    key's uncompressed point and an RSA key's PKCS#1 DER, so a compressed
    point and every RSA key (whose DER is not re-checked here for canonical
    form) take its way.
    """
    key = csr.public_key
    if not isinstance(key, rsa.RSAPublicKey):
        der = csr.public_key_der
        try:
            start, end = _expect(der, 0, len(der), _SEQUENCE, "subjectPKInfo")
            _, _, alg_end = _tlv(der, start, end)  # the AlgorithmIdentifier
            bits_start, bits_end = _expect(der, alg_end, end, _BIT_STRING, "subjectPublicKey")
        except DecodeError:
            bits_start = bits_end = 0  # a hand-made request: cryptography's way
        # The first content byte counts unused bits: 0 for every key type.
        if bits_start < bits_end and der[bits_start] == 0:
            bits = der[bits_start + 1:bits_end]
            if not isinstance(key, ec.EllipticCurvePublicKey) or bits[:1] == b"\x04":
                return hashlib.sha1(bits).digest()
    return x509.SubjectKeyIdentifier.from_public_key(key).digest


# --------------------------------------------------------------------------
# Proof-of-possession linking (RFC 7030 3.5, RFC 7894 3.3).


def channel_binding_password(binding: bytes) -> str:
    """The challenge string that links a request to a TLS session.

    RFC 7030 3.5: "The tls-unique value is base64 encoded as specified in
    Section 4 of [RFC4648], and the resulting string is placed in the
    certification request challenge-password field". Standard alphabet, with
    padding, no line breaks (RFC 4648 3.1). The same string goes into
    estIdentityLinking (RFC 7894 3.3 carries the 7030 3.5 semantics).

    Args:
        binding: the channel binding (tls-unique, or tls-exporter on TLS 1.3).

    Returns:
        The base64 text.

    Raises:
        LocalProtocolError: empty binding, or one whose base64 exceeds the
            255-byte field limit of 7030 3.5.
    """
    if not isinstance(binding, bytes) or not binding:
        raise LocalProtocolError("channel binding must be non-empty bytes")
    text = base64.b64encode(binding).decode("ascii")
    # RFC 7030 3.5: "The challenge-password field is limited to 255 bytes".
    if len(text) > MAX_CHALLENGE_LENGTH:
        raise LocalProtocolError("channel binding too long for challengePassword")
    return text


def matches_channel_binding(csr: CertificationRequest, binding: bytes) -> bool | None:
    """Check a request's PoP linking against this TLS session's binding.

    RFC 7030 3.5: "If tls-unique information is included by the client, the
    server MUST verify it", and "the presence of the challenge-password
    attribute indicates the inclusion of tls-unique information". RFC 7894 4:
    "EST servers MUST evaluate each challenge attribute independently. All
    challenge attributes included by an EST client MUST be successfully
    processed", so when both challengePassword and estIdentityLinking are
    present both must match. The comparison is exact against the RFC 4648
    section 4 encoding: 3.5 allows no other form, and RFC 8951's whitespace
    tolerance is about message bodies, not this field. A server that uses
    challengePassword for something else (an enrollment password) must not
    call this for that request.

    Args:
        csr: the decoded request.
        binding: the channel binding of the connection it arrived on.

    Returns:
        None if the request carries neither attribute (no linking: server
        policy decides), True if every one present matches, else False.
    """
    present = [v for v in (csr.challenge_password, csr.est_identity_linking) if v is not None]
    if not present:
        return None
    if not isinstance(binding, bytes) or not binding:
        return False
    expected = base64.b64encode(binding)
    ok = True
    for value in present:
        # Constant time: the password is a secret of the TLS session.
        ok &= hmac.compare_digest(value.encode("utf-8"), expected)
    return ok
