"""asn1crypto definitions for the asymmetric key package (RFC 5958).

RFC 7030 section 4.4.2 returns an encrypted server-generated key as a CMS
SignedData whose content is an AsymmetricKeyPackage, "as described in
Section 4 of [RFC5958]". asn1crypto knows PrivateKeyInfo (RFC 5208) but not
the RFC 5958 v2 form with ``publicKey [1]``, nor the key package content type.

RFC 5958 section 2::

    id-ct-KP-aKeyPackage OBJECT IDENTIFIER ::= { 2 16 840 1 101 2 1 2 78 5 }
    AsymmetricKeyPackage ::= SEQUENCE SIZE (1..MAX) OF OneAsymmetricKey
    OneAsymmetricKey ::= SEQUENCE {
      version                   Version,
      privateKeyAlgorithm       PrivateKeyAlgorithmIdentifier,
      privateKey                PrivateKey,
      attributes            [0] Attributes OPTIONAL,
      ...,
      [[2: publicKey        [1] PublicKey OPTIONAL ]],
      ... }
    Version ::= INTEGER { v1(0), v2(1) } (v1, ..., v2)

The module's ASN.1 uses IMPLICIT TAGS, so ``[0]`` and ``[1]`` are implicit.
``privateKey`` stays an opaque OCTET STRING here: its content is handed to
``cryptography`` (as a PrivateKeyInfo), not parsed by asn1crypto.

Strategy: the content type is registered in asn1crypto's global
``cms.ContentType`` map and the ``EncapsulatedContentInfo`` / ``ContentInfo``
spec tables *at import*, so any SignedData parsed after ``import
estproto.asn1.keypackage`` knows the OID by name. ``ObjectIdentifier``
builds ``_reverse_map`` once, on first use; if that already happened we add
our name to it as well, otherwise ``ContentType("asymmetric_key_package")``
would fail while the dotted form works.
"""

from __future__ import annotations

from asn1crypto import cms, keys
from asn1crypto.core import Integer, OctetBitString, OctetString, Sequence, SequenceOf

__all__ = [
    "ID_CT_KP_A_KEY_PACKAGE",
    "A_KEY_PACKAGE_NAME",
    "OneAsymmetricKey",
    "AsymmetricKeyPackage",
]

#: RFC 5958 section 2: id-ct-KP-aKeyPackage.
ID_CT_KP_A_KEY_PACKAGE = "2.16.840.1.101.2.1.2.78.5"

#: The name asn1crypto reports for that OID once registered.
A_KEY_PACKAGE_NAME = "asymmetric_key_package"


class OneAsymmetricKeyVersion(Integer):
    _map = {0: "v1", 1: "v2"}


class OneAsymmetricKey(Sequence):
    """RFC 5958 section 2 OneAsymmetricKey (PrivateKeyInfo v1 or v2)."""

    _fields = [
        ("version", OneAsymmetricKeyVersion),
        ("private_key_algorithm", keys.PrivateKeyAlgorithm),
        ("private_key", OctetString),
        ("attributes", keys.Attributes, {"implicit": 0, "optional": True}),
        ("public_key", OctetBitString, {"implicit": 1, "optional": True}),
    ]


class AsymmetricKeyPackage(SequenceOf):
    """RFC 5958 section 2: SEQUENCE SIZE (1..MAX) OF OneAsymmetricKey."""

    _child_spec = OneAsymmetricKey


def _register() -> None:
    ct = cms.ContentType
    ct._map[ID_CT_KP_A_KEY_PACKAGE] = A_KEY_PACKAGE_NAME
    if ct._reverse_map is not None:
        ct._reverse_map[A_KEY_PACKAGE_NAME] = ID_CT_KP_A_KEY_PACKAGE
    cms.EncapsulatedContentInfo._oid_specs[A_KEY_PACKAGE_NAME] = AsymmetricKeyPackage
    cms.ContentInfo._oid_specs[A_KEY_PACKAGE_NAME] = AsymmetricKeyPackage


_register()
