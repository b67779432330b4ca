"""asn1crypto definitions for EST CSR attributes and RFC 9908 CSR templates.

Implements the ASN.1 of:

* RFC 7030 section 4.5.2 (unchanged by RFC 9908 section 3.2)::

      CsrAttrs ::= SEQUENCE SIZE (0..MAX) OF AttrOrOID
      AttrOrOID ::= CHOICE { oid OBJECT IDENTIFIER, attribute Attribute }
      Attribute ::= SEQUENCE { type OBJECT IDENTIFIER, values SET OF ANY }

* RFC 9908 Appendix A (module CRITemplateModule, IMPLICIT TAGS), the
  authority for: CertificationRequestInfoTemplate, NameTemplate,
  SingleAttributeTemplate, SubjectPublicKeyInfoTemplate, ExtensionTemplate,
  ExtensionReqTemplate and the OIDs id-aa-certificationRequestInfoTemplate
  (1.2.840.113549.1.9.16.2.61) and id-aa-extensionReqTemplate
  (1.2.840.113549.1.9.16.2.62). (The informal dump in RFC 9908 section 3.4
  prints "1 2 840 113549 1 9 62" for the latter; the module wins.)

Strategy: the two alternatives of AttrOrOID have different universal tags
(OBJECT IDENTIFIER, SEQUENCE), so an asn1crypto ``Choice`` tells them apart.
The values of a top-level :class:`Attribute` stay ``Any`` on purpose: "The
client MUST ignore any OID or attribute it does not recognize" (RFC 7030
4.5.2), and RFC 7030's own 4.5.2 example puts a bare OID where
extensionRequest requires Extensions (RFC 9908 section 5.2). Binding a typed
spec there through ``_oid_specs`` would make one odd value fail the whole
response, so the codec (:mod:`estproto.codecs.csrattrs`) interprets known
values one at a time with :data:`VALUE_SPECS`. Inside a template, whose
syntax RFC 9908 fixes, :class:`TemplateAttribute` binds value types through
``_oid_pair``/``_oid_specs`` in asn1crypto's usual style.

Nothing here is registered in asn1crypto's global maps: these types are
only reached through :class:`CsrAttrs`.
"""

from __future__ import annotations

from typing import Any as _Any

from asn1crypto import core
from asn1crypto import x509 as asn1_x509

__all__ = [
    "ID_CHALLENGE_PASSWORD",
    "ID_EXTENSION_REQUEST",
    "ID_AA_CERTIFICATION_REQUEST_INFO_TEMPLATE",
    "ID_AA_EXTENSION_REQ_TEMPLATE",
    "CsrAttributeType",
    "SetOfAny",
    "Attribute",
    "AttrOrOID",
    "CsrAttrs",
    "SingleAttributeTemplate",
    "RelativeDistinguishedNameTemplate",
    "RDNSequenceTemplate",
    "NameTemplate",
    "PublicKeyAlgorithmIdentifier",
    "SubjectPublicKeyInfoTemplate",
    "ExtensionTemplate",
    "ExtensionReqTemplate",
    "SetOfExtensionReqTemplate",
    "SetOfExtensions",
    "TemplateAttribute",
    "TemplateAttributes",
    "CertificationRequestInfoTemplate",
    "SetOfCertificationRequestInfoTemplate",
    "VALUE_SPECS",
]

#: PKCS#9 challengePassword (RFC 2985 5.4.1); listed in csrattrs when the
#: server requires proof-of-possession linking (RFC 7030 3.5, 4.5.2).
ID_CHALLENGE_PASSWORD = "1.2.840.113549.1.9.7"
#: PKCS#9 extensionRequest (RFC 2985 5.4.2), "id-ExtensionReq" in RFC 9908 3.2.
ID_EXTENSION_REQUEST = "1.2.840.113549.1.9.14"
#: RFC 9908 Appendix A: id-aa-certificationRequestInfoTemplate.
ID_AA_CERTIFICATION_REQUEST_INFO_TEMPLATE = "1.2.840.113549.1.9.16.2.61"
#: RFC 9908 Appendix A: id-aa-extensionReqTemplate.
ID_AA_EXTENSION_REQ_TEMPLATE = "1.2.840.113549.1.9.16.2.62"


class CsrAttributeType(core.ObjectIdentifier):
    _map = {
        ID_CHALLENGE_PASSWORD: "challenge_password",
        ID_EXTENSION_REQUEST: "extension_request",
        ID_AA_CERTIFICATION_REQUEST_INFO_TEMPLATE: "certification_request_info_template",
        ID_AA_EXTENSION_REQ_TEMPLATE: "extension_req_template",
    }


class SetOfAny(core.SetOf):
    _child_spec = core.Any


class Attribute(core.Sequence):
    """RFC 7030 4.5.2 Attribute; values kept raw (see the module docstring).

    RFC 9908 3.2 allows an empty SET here ("The 'values' field MAY be empty
    to indicate no further requirements on the key"), so no SIZE check.
    """

    _fields = [
        ("type", core.ObjectIdentifier),
        ("values", SetOfAny),
    ]


class AttrOrOID(core.Choice):
    _alternatives = [
        ("oid", core.ObjectIdentifier),
        ("attribute", Attribute),
    ]


class CsrAttrs(core.SequenceOf):
    _child_spec = AttrOrOID


# --- RFC 9908 Appendix A ---------------------------------------------------


class SingleAttributeTemplate(core.Sequence):
    """``SEQUENCE { type OID, value ANY OPTIONAL }``: an RDN whose value the
    client fills in when absent (RFC 9908 3.4)."""

    _fields = [
        ("type", core.ObjectIdentifier),
        ("value", core.Any, {"optional": True}),
    ]


class RelativeDistinguishedNameTemplate(core.SetOf):
    _child_spec = SingleAttributeTemplate


class RDNSequenceTemplate(core.SequenceOf):
    _child_spec = RelativeDistinguishedNameTemplate


class NameTemplate(core.Choice):
    # "only one possibility for now"
    _alternatives = [
        ("rdn_sequence", RDNSequenceTemplate),
    ]


class PublicKeyAlgorithmIdentifier(core.Sequence):
    """AlgorithmIdentifier{PUBLIC-KEY} with raw parameters.

    Parameters stay ``Any`` (an OID for EC curves, NULL for RSA, absent for
    EdDSA, anything for algorithms we do not know).
    """

    _fields = [
        ("algorithm", core.ObjectIdentifier),
        ("parameters", core.Any, {"optional": True}),
    ]


class SubjectPublicKeyInfoTemplate(core.Sequence):
    _fields = [
        ("algorithm", PublicKeyAlgorithmIdentifier),
        # RFC 9908 3.4: present only to give "a placeholder public key value
        # of the desired RSA modulus length".
        ("subject_public_key", core.OctetBitString, {"optional": True}),
    ]


class ExtensionTemplate(core.Sequence):
    """Like Extension, but with an OPTIONAL extnValue (RFC 9908 App. A)."""

    _fields = [
        ("extn_id", core.ObjectIdentifier),
        ("critical", core.Boolean, {"default": False}),
        ("extn_value", core.OctetString, {"optional": True}),
    ]


class ExtensionReqTemplate(core.SequenceOf):
    """``ExtensionTemplates ::= SEQUENCE SIZE (1..MAX) OF ExtensionTemplate``."""

    _child_spec = ExtensionTemplate


class SetOfExtensionReqTemplate(core.SetOf):
    _child_spec = ExtensionReqTemplate


class SetOfExtensions(core.SetOf):
    _child_spec = asn1_x509.Extensions


class TemplateAttribute(core.Sequence):
    """An Attribute inside a template's ``attributes``, typed by its OID."""

    _fields = [
        ("type", CsrAttributeType),
        # Any, as in asn1crypto's CRIAttribute: _oid_specs re-parses an Any.
        # Unknown types stay Any (raw); the codec reads them as SetOfAny.
        ("values", core.Any),
    ]

    _oid_pair = ("type", "values")
    _oid_specs = {
        "extension_request": SetOfExtensions,
        "extension_req_template": SetOfExtensionReqTemplate,
    }


class TemplateAttributes(core.SetOf):
    _child_spec = TemplateAttribute


class CertificationRequestInfoTemplate(core.Sequence):
    """RFC 9908 Appendix A (IMPLICIT TAGS)::

        CertificationRequestInfoTemplate ::= SEQUENCE {
            version       INTEGER { v1(0) } (v1, ... ),
            subject       NameTemplate OPTIONAL,
            subjectPKInfo [0] SubjectPublicKeyInfoTemplate OPTIONAL,
            attributes    [1] Attributes{{ CRIAttributes }} }
    """

    _fields = [
        ("version", core.Integer),
        ("subject", NameTemplate, {"optional": True}),
        ("subject_pk_info", SubjectPublicKeyInfoTemplate, {"implicit": 0, "optional": True}),
        ("attributes", TemplateAttributes, {"implicit": 1}),
    ]


class SetOfCertificationRequestInfoTemplate(core.SetOf):
    _child_spec = CertificationRequestInfoTemplate


#: Spec of ONE value (an element of an Attribute's values SET) for the
#: attribute types the codec understands, keyed by dotted OID.
VALUE_SPECS: dict[str, _Any] = {
    ID_EXTENSION_REQUEST: asn1_x509.Extensions,
    ID_AA_CERTIFICATION_REQUEST_INFO_TEMPLATE: CertificationRequestInfoTemplate,
    ID_AA_EXTENSION_REQ_TEMPLATE: ExtensionReqTemplate,
}
