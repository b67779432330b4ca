"""Who signs for the issuing CA.

The rest of the CA never touches the issuing key directly: it hands a
finished certificate or CRL builder to a :class:`Signer`. The default, :class:`KeyFileSigner`, holds the key loaded
from the data directory; a signer that keeps the key in a token
implements the same four members.
"""

from __future__ import annotations

import abc

from cryptography import x509

from .keys import PrivateKey, hash_for

__all__ = ["Signer", "KeyFileSigner"]


class Signer(abc.ABC):
    """Signs certificates (and CMS structures, through :attr:`key`) as the
    issuing CA."""

    #: The issuing CA's certificate.
    certificate: x509.Certificate

    @abc.abstractmethod
    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        """*builder* (complete but for the issuer's signature), signed."""

    @abc.abstractmethod
    def sign_crl(
        self, builder: x509.CertificateRevocationListBuilder,
    ) -> x509.CertificateRevocationList:
        """*builder* (complete but for the issuer's signature), signed."""

    @property
    @abc.abstractmethod
    def key(self) -> PrivateKey:
        """The key as a ``cryptography`` object, for the CMS signatures of
        /fullcmc and encrypted /serverkeygen answers."""


class KeyFileSigner(Signer):
    """The issuing key held in memory (loaded from the data directory)."""

    def __init__(self, certificate: x509.Certificate, key: PrivateKey) -> None:
        self.certificate = certificate
        self._key = key
        self._hash = hash_for(key)

    @property
    def key(self) -> PrivateKey:
        return self._key

    def sign_certificate(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        return builder.sign(self._key, self._hash)

    def sign_crl(
        self, builder: x509.CertificateRevocationListBuilder,
    ) -> x509.CertificateRevocationList:
        return builder.sign(self._key, self._hash)
