"""A signing key that lives outside this process (an HSM, a KMS).

``cryptography`` signs only with its own key objects, so a key kept in a
PKCS#11 token cannot be handed to it. Everything in estproto that signs
(CMS SignedData, certificates, CRLs) also accepts an
:class:`ExternalSigningKey`: an object that knows its public key and
returns a finished signature for a message.
"""

from __future__ import annotations

import abc
from typing import Union

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

__all__ = ["ExternalSigningKey", "ExternalPublicKey"]

#: The key kinds an external key may have: RSA (PKCS#1 v1.5 signatures)
#: and ECDSA, what PKCS#11 tokens commonly offer.
ExternalPublicKey = Union[rsa.RSAPublicKey, ec.EllipticCurvePublicKey]


class ExternalSigningKey(abc.ABC):
    """An RSA or ECDSA private key used only through :meth:`sign`."""

    @abc.abstractmethod
    def public_key(self) -> ExternalPublicKey:
        """The public half, as a ``cryptography`` object."""

    @abc.abstractmethod
    def sign(self, data: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
        """The signature over *data* hashed with *algorithm*, encoded as
        X.509 and CMS carry it: RSASSA-PKCS1-v1_5 bytes for RSA, a DER
        Ecdsa-Sig-Value for ECDSA (RFC 5480 2.2 / RFC 3279 2.2.3)."""

    def close(self) -> None:
        """Release what the key holds (a token session); default: nothing."""
