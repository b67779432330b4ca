"""Certificate paths without a TLS policy: does a certificate chain to our
trust anchors, and which CA certificates go with it.

cryptography's ``PolicyBuilder`` verifiers apply the web PKI's rules (a
client verifier demands a subjectAltName in the leaf, which EST
certificates need not have), so EST's checks are these two small walks:
each signature checked with ``verify_directly_issued_by``, each certificate
within its validity, every issuer a CA.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature

__all__ = ["chain_verifies", "issuer_chain"]


def chain_verifies(cert: x509.Certificate, trust: list[x509.Certificate]) -> bool:
    """Whether *cert* chains to a self-signed certificate of *trust* (a
    ca.pem bundle: the root, and the intermediate if any): each signature
    checked, each certificate within its validity, CA certificates marked CA.

    (cryptography's ``PolicyBuilder`` client verifier would also demand a
    subjectAltName in the leaf, which EST certificates need not have.)
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    current = cert
    for _ in range(len(trust) + 1):
        if not current.not_valid_before_utc <= now <= current.not_valid_after_utc:
            return False
        for issuer in trust:
            if issuer.subject != current.issuer:
                continue
            try:
                ca = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
                current.verify_directly_issued_by(issuer)
            except (x509.ExtensionNotFound, ValueError, TypeError, InvalidSignature):
                continue
            if not ca:
                continue
            if issuer.subject == issuer.issuer:
                return issuer.not_valid_before_utc <= now <= issuer.not_valid_after_utc
            current = issuer
            break
        else:
            return False
    return False


def issuer_chain(cert: x509.Certificate, pool: list[x509.Certificate]) -> list[x509.Certificate]:
    """The CA certificates of *pool* above *cert*, nearest first, up to and
    excluding the self-signed root: what a TLS peer sends after its own
    certificate (RFC 8446 4.4.2; the root is the relying party's).

    Raises:
        LookupError: an issuer is not in *pool* (named in the message).
    """
    chain: list[x509.Certificate] = []
    current = cert
    for _ in range(len(pool) + 1):
        for issuer in pool:
            if issuer.subject != current.issuer:
                continue
            try:
                current.verify_directly_issued_by(issuer)
            except (ValueError, TypeError, InvalidSignature):
                continue
            break
        else:
            raise LookupError(current.issuer.rfc4514_string())
        if issuer.subject == issuer.issuer:
            return chain
        if issuer in chain:
            break
        chain.append(issuer)
        current = issuer
    raise LookupError(f"a loop above {cert.subject.rfc4514_string()}")
