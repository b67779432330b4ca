"""Key material of the CA: the key kinds it makes, loading and PEM writing,
and the hash each kind signs with."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Mapping, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from ..codecs.external_key import ExternalSigningKey
from .errors import CAError

__all__ = ["PrivateKey", "SigningKey", "KeyType", "CURVES", "new_key", "load_key", "key_pem", "cert_pem", "hash_for"]

PrivateKey = Union[
    ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey
]
#: What signs for a CA: a key in memory, or one kept in a token.
SigningKey = Union[PrivateKey, ExternalSigningKey]
KeyType = Literal["p256", "rsa", "ed25519"]

#: Elliptic curves accepted in requests and generated for /serverkeygen.
CURVES: Mapping[str, type[ec.EllipticCurve]] = {
    "secp256r1": ec.SECP256R1, "secp384r1": ec.SECP384R1, "secp521r1": ec.SECP521R1,
}


def new_key(kind: str) -> PrivateKey:
    """A new key of *kind* ("p256", "rsa" (2048 bits), "ed25519")."""
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(65537, 2048)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise CAError(f"unsupported key type {kind!r} (p256, rsa, ed25519)")


def load_key(path: Path) -> PrivateKey:
    """An unencrypted PEM private key that can sign certificates."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey,
                            ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        raise CAError(f"{path}: unsupported key type {type(key).__name__}")
    return key


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def hash_for(key: SigningKey) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None:
    """The digest a signature by *key* uses: none for EdDSA, else one as
    strong as the key (SHA-256 up to P-256 and for RSA)."""
    public = key.public_key()
    if isinstance(public, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return None
    if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.key_size > 384:
        return hashes.SHA512()
    if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()
