"""asn1crypto definitions for ECDH key agreement in CMS (RFC 5753).

RFC 7030 section 4.4.2 returns a server-generated key to a client with a
key-agreement key in a KeyAgreeRecipientInfo (kari, RFC 5652 section
6.2.2). asn1crypto already has the kari structure itself
(``cms.KeyAgreeRecipientInfo``, ``OriginatorIdentifierOrKey``,
``RecipientEncryptedKeys``) but neither the RFC 5753 key agreement algorithm
identifiers nor the ECC-CMS-SharedInfo fed to the KDF.

RFC 5753 section 7.2::

    ECC-CMS-SharedInfo ::= SEQUENCE {
       keyInfo         AlgorithmIdentifier,
       entityUInfo [0] EXPLICIT OCTET STRING OPTIONAL,
       suppPubInfo [2] EXPLICIT OCTET STRING  }

Key agreement algorithm identifiers (RFC 5753 section 7.1.4; the sha1 ones
from X9.63, the others from SEC 1, ``secg-scheme`` = 1.3.132.1)::

    dhSinglePass-stdDH-sha1kdf-scheme       1.3.133.16.840.63.0.2
    dhSinglePass-stdDH-sha224kdf-scheme     1.3.132.1.11.0
    dhSinglePass-stdDH-sha256kdf-scheme     1.3.132.1.11.1
    dhSinglePass-stdDH-sha384kdf-scheme     1.3.132.1.11.2
    dhSinglePass-stdDH-sha512kdf-scheme     1.3.132.1.11.3
    dhSinglePass-cofactorDH-sha1kdf-scheme  1.3.133.16.840.63.0.3
    dhSinglePass-cofactorDH-shaXXXkdf-scheme 1.3.132.1.14.{0,1,2,3}

Their parameters are the KeyWrapAlgorithm naming the AES key wrap that
protects the content-encryption key (RFC 5753 section 3.1.1), and RFC 3370's
ASN.1 module has ``KeyWrapAlgorithm ::= AlgorithmIdentifier``.

Strategy: like :mod:`estproto.asn1.keypackage`, the OIDs are registered in
asn1crypto's global ``cms.KeyEncryptionAlgorithmId`` maps and the
``cms.KeyEncryptionAlgorithm`` parameter table *at import*, so a kari's
keyEncryptionAlgorithm parses its parameters as the wrap
AlgorithmIdentifier. (``KeyEncryptionAlgorithmId`` ships with a prebuilt
``_reverse_map``, so both maps get our names.) The MQV schemes are left
unregistered: we do not implement them, and they read as dotted OIDs.
"""

from __future__ import annotations

from asn1crypto import cms
from asn1crypto.core import OctetString, Sequence

__all__ = [
    "KEY_AGREEMENT_SCHEMES",
    "ECCCMSSharedInfo",
]

#: RFC 5753 key agreement scheme name -> (dotted OID, KDF hash name).
#: For the NIST prime curves the cofactor is 1, so cofactor DH computes
#: the same shared secret as standard DH (RFC 5753 section 3.1.1 names
#: both); we accept either on input and produce stdDH.
KEY_AGREEMENT_SCHEMES: dict[str, tuple[str, str]] = {
    "dh_single_pass_std_dh_sha1kdf": ("1.3.133.16.840.63.0.2", "sha1"),
    "dh_single_pass_std_dh_sha224kdf": ("1.3.132.1.11.0", "sha224"),
    "dh_single_pass_std_dh_sha256kdf": ("1.3.132.1.11.1", "sha256"),
    "dh_single_pass_std_dh_sha384kdf": ("1.3.132.1.11.2", "sha384"),
    "dh_single_pass_std_dh_sha512kdf": ("1.3.132.1.11.3", "sha512"),
    "dh_single_pass_cofactor_dh_sha1kdf": ("1.3.133.16.840.63.0.3", "sha1"),
    "dh_single_pass_cofactor_dh_sha224kdf": ("1.3.132.1.14.0", "sha224"),
    "dh_single_pass_cofactor_dh_sha256kdf": ("1.3.132.1.14.1", "sha256"),
    "dh_single_pass_cofactor_dh_sha384kdf": ("1.3.132.1.14.2", "sha384"),
    "dh_single_pass_cofactor_dh_sha512kdf": ("1.3.132.1.14.3", "sha512"),
}


class ECCCMSSharedInfo(Sequence):
    """RFC 5753 section 7.2 ECC-CMS-SharedInfo (the X9.63 KDF SharedInfo).

    The module is EXPLICIT TAGS; ``[0]`` and ``[2]`` are spelled explicit.
    """

    _fields = [
        ("key_info", cms.KeyEncryptionAlgorithm),
        ("entity_u_info", OctetString, {"explicit": 0, "optional": True}),
        ("supp_pub_info", OctetString, {"explicit": 2}),
    ]


def _register() -> None:
    ids = cms.KeyEncryptionAlgorithmId
    for name, (dotted, _hash) in KEY_AGREEMENT_SCHEMES.items():
        ids._map[dotted] = name
        if ids._reverse_map is not None:
            ids._reverse_map[name] = dotted
        # RFC 5753 section 3.1.1: the parameters are the KeyWrapAlgorithm.
        cms.KeyEncryptionAlgorithm._oid_specs[name] = cms.KeyEncryptionAlgorithm


_register()
