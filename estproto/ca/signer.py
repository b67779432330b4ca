"""Who signs for the issuing CA.

The rest of the CA never touches the issuing key directly: it hands a
finished certificate or CRL builder to a :class:`Signer`. The default,
:class:`KeySigner`, signs with a key object: one loaded from the data
directory, or an :class:`~estproto.codecs.external_key.ExternalSigningKey`
kept in a token (see :mod:`.pkcs11_token`).

``cryptography`` builders sign only with its own keys, so for an external
key :func:`sign_certificate` lets a throw-away stand-in key of the same
kind produce the to-be-signed bytes (the signature AlgorithmIdentifier
depends only on the key kind and the hash, not on the key), has the
external key sign them, and assembles the result with asn1crypto. The
external signature is verified before anything is returned: a token that
answers garbage yields an error, never a bad certificate.
"""

from __future__ import annotations

import abc
import functools
from typing import Any, Callable

from asn1crypto import crl as asn1_crl
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from ..codecs.external_key import ExternalPublicKey, ExternalSigningKey
from .errors import SignerError
from .keys import PrivateKey, SigningKey, hash_for

__all__ = ["Signer", "KeySigner", "KeyFileSigner", "sign_certificate", "sign_crl"]


class Signer(abc.ABC):
    """Signs certificates and CRLs (and CMS structures, through
    :attr:`key`) as the issuing CA."""

    #: The issuing CA's certificate.
    certificate: x509.Certificate

    @abc.abstractmethod
    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        """*builder* (complete but for the issuer's signature), signed.

        Raises:
            SignerError: the key could not sign (a token unreachable).
        """

    @abc.abstractmethod
    def sign_crl(
        self, builder: x509.CertificateRevocationListBuilder,
    ) -> x509.CertificateRevocationList:
        """*builder* (complete but for the issuer's signature), signed."""

    @property
    @abc.abstractmethod
    def key(self) -> SigningKey:
        """The key, for the CMS signatures of /fullcmc and encrypted
        /serverkeygen answers: a ``cryptography`` key or an
        :class:`~estproto.codecs.external_key.ExternalSigningKey`."""

    @property
    def in_memory(self) -> bool:
        """True when signing is a local computation, quick enough to run
        on a server's event loop; False sends every enrollment to a worker
        thread (a token's latency must not stall other connections)."""
        return not isinstance(self.key, ExternalSigningKey)

    def close(self) -> None:
        """Release the key (a token session); the signer is unusable after."""


class KeySigner(Signer):
    """Signs with *key*: in memory, or an external key (a token's)."""

    def __init__(self, certificate: x509.Certificate, key: SigningKey) -> None:
        self.certificate = certificate
        self._key = key
        # The digest of an in-memory key, chosen once: asking the key again
        # for every certificate costs ~2 us (its public key is rebuilt).
        self._in_memory_hash = (None if isinstance(key, ExternalSigningKey) else hash_for(key))

    @property
    def key(self) -> SigningKey:
        return self._key

    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        key = self._key
        if not isinstance(key, ExternalSigningKey):
            return builder.sign(key, self._in_memory_hash)
        return sign_certificate(builder, key)

    def sign_crl(
        self, builder: x509.CertificateRevocationListBuilder,
    ) -> x509.CertificateRevocationList:
        return sign_crl(builder, self._key)

    def close(self) -> None:
        if isinstance(self._key, ExternalSigningKey):
            self._key.close()


#: The name of :class:`KeySigner` before keys could live in a token.
KeyFileSigner = KeySigner


def sign_certificate(builder: x509.CertificateBuilder, key: SigningKey) -> x509.Certificate:
    """*builder* signed by *key* (in memory or external).

    Raises:
        SignerError: an external key failed or answered a bad signature.
    """
    if not isinstance(key, ExternalSigningKey):
        return builder.sign(key, hash_for(key))
    draft, algorithm = _drafted(builder, key)
    return x509.load_der_x509_certificate(_resigned(
        asn1_x509.Certificate, draft.public_bytes(serialization.Encoding.DER),
        draft.tbs_certificate_bytes, key, algorithm,
        ("tbs_certificate", "signature_algorithm", "signature_value")))


def sign_crl(
    builder: x509.CertificateRevocationListBuilder, key: SigningKey,
) -> x509.CertificateRevocationList:
    """*builder* signed by *key* (in memory or external).

    Raises:
        SignerError: an external key failed or answered a bad signature.
    """
    if not isinstance(key, ExternalSigningKey):
        return builder.sign(key, hash_for(key))
    draft, algorithm = _drafted(builder, key)
    return x509.load_der_x509_crl(_resigned(
        asn1_crl.CertificateList, draft.public_bytes(serialization.Encoding.DER),
        draft.tbs_certlist_bytes, key, algorithm,
        ("tbs_cert_list", "signature_algorithm", "signature")))


def _resigned(kind: Any, draft_der: bytes, tbs: bytes, key: ExternalSigningKey,
              algorithm: hashes.HashAlgorithm, fields: tuple[str, str, str]) -> bytes:
    """*draft_der* (a certificate or CRL of asn1crypto class *kind*, signed
    by the stand-in) with its signature replaced by *key*'s over *tbs*."""
    signature = _external_signature(key, tbs, algorithm)
    parsed = kind.load(draft_der)
    body, algorithm_field, signature_field = fields
    der: bytes = kind({body: parsed[body], algorithm_field: parsed[algorithm_field],
                       signature_field: signature}).dump()
    return der


def _drafted(builder: Any, key: ExternalSigningKey) -> tuple[Any, hashes.HashAlgorithm]:
    """*builder* (of a certificate or CRL) signed by the stand-in key of
    *key*'s kind, and the hash *key* will sign its to-be-signed bytes with."""
    algorithm = hash_for(key)
    assert algorithm is not None  # external keys are RSA or ECDSA
    return builder.sign(_stand_in(_kind(key.public_key())), algorithm), algorithm


def _kind(public: ExternalPublicKey) -> str:
    if isinstance(public, rsa.RSAPublicKey):
        return "rsa"
    if isinstance(public, ec.EllipticCurvePublicKey):
        return "ec"
    raise SignerError(f"an external key must be RSA or ECDSA, not {type(public).__name__}")


@functools.lru_cache(maxsize=None)
def _stand_in(kind: str) -> PrivateKey:
    """A process-wide throw-away key whose only use is making builders
    emit their to-be-signed bytes (its own signature is discarded)."""
    if kind == "rsa":
        return rsa.generate_private_key(65537, 1024)  # any size: the AlgorithmIdentifier is the same
    return ec.generate_private_key(ec.SECP256R1())


def _external_signature(key: ExternalSigningKey, data: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
    try:
        signature = key.sign(data, algorithm)
    except SignerError:
        raise
    except Exception as exc:
        raise SignerError(f"the external key could not sign: {exc}") from exc
    verify = _verifier(key.public_key(), algorithm)
    try:
        verify(signature, data)
    except (InvalidSignature, ValueError):
        raise SignerError("the external key answered a signature that does not verify") from None
    return signature


def _verifier(public: ExternalPublicKey,
              algorithm: hashes.HashAlgorithm) -> Callable[[bytes, bytes], None]:
    if isinstance(public, rsa.RSAPublicKey):
        return lambda sig, data: public.verify(sig, data, padding.PKCS1v15(), algorithm)
    return lambda sig, data: public.verify(sig, data, ec.ECDSA(algorithm))
