"""Server-side key generation (RFC 7030 4.4): which key to make, and to
whom its encrypted form is addressed."""

from __future__ import annotations

from typing import Literal, Mapping

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from .._errors import LocalProtocolError
from .._events import ErrorResponse, ServerKeygenRequest
from ..codecs import pkcs10, serverkey
from .keys import CURVES, PrivateKey, new_key
from .policy import Profile

__all__ = ["generate_like", "key_recipient"]

#: AES key wrap algorithms a client may list in SMIMECapabilities (RFC 3565).
_KEY_WRAPS: dict[str, Literal["aes128_wrap", "aes192_wrap", "aes256_wrap"]] = {
    "2.16.840.1.101.3.4.1.5": "aes128_wrap",
    "2.16.840.1.101.3.4.1.25": "aes192_wrap",
    "2.16.840.1.101.3.4.1.45": "aes256_wrap",
}


def generate_like(csr: pkcs10.CertificationRequest, profile: Profile) -> PrivateKey:
    """A new key of the CSR key's kind (RFC 7030 4.4.1: the CSR's key
    itself is ignored), else of the profile's default kind."""
    requested = csr.public_key
    if isinstance(requested, rsa.RSAPublicKey):
        bits = min(max(requested.key_size, profile.min_rsa_bits, 2048), 4096)
        return rsa.generate_private_key(65537, bits)
    if isinstance(requested, ec.EllipticCurvePublicKey) and requested.curve.name in CURVES:
        return ec.generate_private_key(CURVES[requested.curve.name]())
    if isinstance(requested, ed25519.Ed25519PublicKey):
        return ed25519.Ed25519PrivateKey.generate()
    if isinstance(requested, ed448.Ed448PublicKey):
        return ed448.Ed448PrivateKey.generate()
    return new_key(profile.serverkeygen_key_type)


def key_recipient(
    request: ServerKeygenRequest, keks: Mapping[bytes, bytes],
) -> serverkey.Recipient | ErrorResponse | None:
    """Whom the key is encrypted to: the KEK a DecryptKeyIdentifier names
    (4.4.1.1), the key an AsymmetricDecryptKeyIdentifier names (4.4.1.2),
    or None for an unencrypted PKCS#8 answer; an ErrorResponse when the
    request names something we cannot encrypt to."""
    csr = request.csr
    if csr.decrypt_key_identifier is not None:
        kek = keks.get(csr.decrypt_key_identifier)
        if kek is None:
            return ErrorResponse(400, "unknown DecryptKeyIdentifier (RFC 7030 4.4.1.1)")
        return serverkey.KEKRecipient(csr.decrypt_key_identifier, kek)
    if csr.asymmetric_decrypt_key_identifier is not None:
        return _asymmetric_recipient(request, csr.asymmetric_decrypt_key_identifier)
    return None


def _asymmetric_recipient(
    request: ServerKeygenRequest, identifier: bytes,
) -> serverkey.Recipient | ErrorResponse:
    """4.4.1.2: the identifier names a key the client holds; the one we
    can vouch for is its verified TLS client certificate's: RSA gets key
    transport (ktri), EC key agreement (kari), 4.4.2."""
    cert = request.facts.client_certificate
    ski = None
    if cert is not None and request.facts.client_certificate_verified:
        try:
            ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        except x509.ExtensionNotFound:
            ski = None
    if cert is None or ski != identifier:
        return ErrorResponse(
            400, "AsymmetricDecryptKeyIdentifier must name the key of the verified TLS client "
                 "certificate (RFC 7030 4.4.1.2)")
    try:
        usage: x509.KeyUsage | None = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None  # unrestricted
    public = cert.public_key()
    # 4.4.1.2: "the key MUST either explicitly support keyTransport or
    # keyAgreement or its use MUST be unrestricted."
    if isinstance(public, rsa.RSAPublicKey) and (usage is None or usage.key_encipherment):
        return serverkey.KeyTransRecipient(public, subject_key_identifier=ski)
    if isinstance(public, ec.EllipticCurvePublicKey) and (usage is None or usage.key_agreement):
        # 4.4.2: keyEncryptionAlgorithm "is set to one of the key wrap
        # algorithms that the client included in the SMIMECapabilities".
        wrap = next((_KEY_WRAPS[oid] for oid in request.csr.smime_capabilities
                     if oid in _KEY_WRAPS), None)
        try:
            return serverkey.KeyAgreeRecipient(public, subject_key_identifier=ski, key_wrap=wrap)
        except LocalProtocolError:
            pass  # a curve we do not agree keys on: refused below
    return ErrorResponse(
        400, "the TLS client certificate's key cannot receive an encrypted key: it must be RSA "
             "with keyEncipherment or EC (P-256/384/521) with keyAgreement (RFC 7030 4.4.1.2)")
