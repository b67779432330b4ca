"""asn1crypto definitions for CMC (RFC 5272 as updated by RFC 6402).

The authority is the 1988 ASN.1 module of RFC 6402 Appendix A.1 ("this
remains the normative module"), which replaces RFC 5272 Appendix A. The
module is ``DEFINITIONS IMPLICIT TAGS``, so ``[n]`` tags below are implicit
unless the tagged type is a CHOICE or ANY (X.680 31.2.7), where they must
be explicit.

Only what EST's /fullcmc needs (RFC 7030 4.3, and 3.5 for the POP link
witness) is spelled out: PKIData, PKIResponse, the tagged body parts,
CMCStatusInfo(V2), PendInfo and the controls EST uses. CRMF's CertReqMsg
(RFC 4211) is defined only as deep as needed to keep it as an opaque value.

Trap handled here: CMCStatusInfoV2.otherInfo is ``CHOICE { failInfo
INTEGER, pendInfo SEQUENCE, extendedFailInfo SEQUENCE }``. asn1crypto keys a
Choice's alternatives by tag, so the two untagged SEQUENCE alternatives would
overwrite each other. The field is therefore declared ``Any`` and
:func:`classify_other_info` picks the alternative by content (pendInfo starts
with an OCTET STRING, extendedFailInfo with an OBJECT IDENTIFIER).

At import, the content types id-cct-PKIData and id-cct-PKIResponse are
registered in asn1crypto's ``cms.ContentType`` map and in the
``EncapsulatedContentInfo``/``ContentInfo`` specs, as asn1crypto's own
``tsp.py`` does for TSTInfo. ``ObjectIdentifier._reverse_map`` is built only
once, on first use, so if it already exists our names are added to it too.
"""

from __future__ import annotations

from typing import Any as TypingAny

from asn1crypto import cms, core

__all__ = [
    "ID_CMC",
    "ID_CCT_PKI_DATA",
    "ID_CCT_PKI_RESPONSE",
    "CONTROL_OIDS",
    "BodyPartID",
    "BodyPartPath",
    "BodyPartReference",
    "BodyPartList",
    "CMCControlType",
    "TaggedAttribute",
    "TaggedCertificationRequest",
    "CertReqMsg",
    "OtherRequestMsg",
    "TaggedRequest",
    "TaggedContentInfo",
    "OtherMsg",
    "PKIData",
    "PKIResponse",
    "CMCStatus",
    "CMCFailInfo",
    "PendInfo",
    "ExtendedFailInfo",
    "CMCStatusInfo",
    "CMCStatusInfoV2",
    "AnyAlgorithmIdentifier",
    "PopLinkWitnessV2",
    "IdentifyProofV2",
    "classify_other_info",
]

#: id-cmc: { id-pkix 7 } (RFC 6402 A.1)
ID_CMC = "1.3.6.1.5.5.7.7"
#: id-cct-PKIData ::= { id-cct 2 }, id-cct ::= { id-pkix 12 }
ID_CCT_PKI_DATA = "1.3.6.1.5.5.7.12.2"
#: id-cct-PKIResponse ::= { id-cct 3 }
ID_CCT_PKI_RESPONSE = "1.3.6.1.5.5.7.12.3"

#: Control names -> OIDs (RFC 6402 A.1; RFC 5272 6 table).
CONTROL_OIDS: dict[str, str] = {
    "status_info": ID_CMC + ".1",
    "identification": ID_CMC + ".2",
    "identity_proof": ID_CMC + ".3",
    "data_return": ID_CMC + ".4",
    "transaction_id": ID_CMC + ".5",
    "sender_nonce": ID_CMC + ".6",
    "recipient_nonce": ID_CMC + ".7",
    "reg_info": ID_CMC + ".18",
    "response_info": ID_CMC + ".19",
    "query_pending": ID_CMC + ".21",
    "pop_link_random": ID_CMC + ".22",
    "pop_link_witness": ID_CMC + ".23",
    "status_info_v2": ID_CMC + ".25",
    "batch_requests": ID_CMC + ".28",
    "batch_responses": ID_CMC + ".29",
    "control_processed": ID_CMC + ".32",
    "pop_link_witness_v2": ID_CMC + ".33",
    "identity_proof_v2": ID_CMC + ".34",
}


class BodyPartID(core.Integer):
    """``BodyPartID ::= INTEGER(0..bodyIdMax)``, bodyIdMax 4294967295."""


class BodyPartPath(core.SequenceOf):
    """``BodyPartPath ::= SEQUENCE SIZE (1..MAX) OF BodyPartID``."""

    _child_spec = BodyPartID


class BodyPartList(core.SequenceOf):
    """``BodyPartList ::= SEQUENCE SIZE (1..MAX) OF BodyPartID``."""

    _child_spec = BodyPartID


class BodyPartReference(core.Choice):
    """``BodyPartReference ::= CHOICE { bodyPartID, bodyPartPath }``."""

    _alternatives = [
        ("body_part_id", BodyPartID),
        ("body_part_path", BodyPartPath),
    ]


class SequenceOfBodyPartReference(core.SequenceOf):
    _child_spec = BodyPartReference


class CMCStatus(core.Integer):
    _map = {
        0: "success",
        2: "failed",
        3: "pending",
        4: "no_support",
        5: "confirm_required",
        6: "pop_required",
        7: "partial",
    }


class CMCFailInfo(core.Integer):
    _map = {
        0: "bad_alg",
        1: "bad_message_check",
        2: "bad_request",
        3: "bad_time",
        4: "bad_cert_id",
        5: "unsupported_ext",
        6: "must_archive_keys",
        7: "bad_identity",
        8: "pop_required",
        9: "pop_failed",
        10: "no_key_reuse",
        11: "internal_ca_error",
        12: "try_later",
        13: "auth_data_fail",
    }


class PendInfo(core.Sequence):
    """``PendInfo ::= SEQUENCE { pendToken OCTET STRING, pendTime GeneralizedTime }``."""

    _fields = [
        ("pend_token", core.OctetString),
        ("pend_time", core.GeneralizedTime),
    ]


class ExtendedFailInfo(core.Sequence):
    """The extendedFailInfo alternative of CMCStatusInfoV2.otherInfo."""

    _fields = [
        ("fail_info_oid", core.ObjectIdentifier),
        ("fail_info_value", core.Any),
    ]


class CMCStatusInfo(core.Sequence):
    """Version 1 status (id-cmc-statusInfo); otherInfo has distinct tags."""

    class _OtherInfo(core.Choice):
        _alternatives = [
            ("fail_info", CMCFailInfo),
            ("pend_info", PendInfo),
        ]

    _fields = [
        ("cmc_status", CMCStatus),
        ("body_list", BodyPartList),
        ("status_string", core.UTF8String, {"optional": True}),
        ("other_info", _OtherInfo, {"optional": True}),
    ]


class CMCStatusInfoV2(core.Sequence):
    """``CMCStatusInfoV2`` (RFC 6402 A.1); otherInfo kept as Any (see module doc)."""

    _fields = [
        ("cmc_status", CMCStatus),
        ("body_list", SequenceOfBodyPartReference),
        ("status_string", core.UTF8String, {"optional": True}),
        ("other_info", core.Any, {"optional": True}),
    ]


def classify_other_info(value: TypingAny) -> tuple[str, TypingAny]:
    """Pick the alternative of a CMCStatusInfoV2 otherInfo ``Any``.

    Args:
        value: the ``other_info`` field (an asn1crypto ``Any``).

    Returns:
        ``("fail_info", CMCFailInfo)``, ``("pend_info", PendInfo)`` or
        ``("extended_fail_info", ExtendedFailInfo)``.

    Raises:
        ValueError: the value is none of the three (the caller's decoding
            context turns this into a DecodeError).
    """
    encoded = value.dump()
    if encoded[:1] == b"\x02":
        return "fail_info", CMCFailInfo.load(encoded)
    if encoded[:1] == b"\x30":
        generic = core.Sequence.load(encoded)
        first = generic.contents[:1] if generic.contents else b""
        if first == b"\x04":
            return "pend_info", PendInfo.load(encoded)
        if first == b"\x06":
            return "extended_fail_info", ExtendedFailInfo.load(encoded)
    raise ValueError("CMCStatusInfoV2 otherInfo is not failInfo, pendInfo or extendedFailInfo")


class AnyAlgorithmIdentifier(core.Sequence):
    """An AlgorithmIdentifier with any OID and parameters (keyGen/MAC ids).

    asn1crypto's own AlgorithmIdentifier maps a fixed OID list; these
    fields may hold hashes, HMACs or KDFs.
    """

    _fields = [
        ("algorithm", core.ObjectIdentifier),
        ("parameters", core.Any, {"optional": True}),
    ]


class PopLinkWitnessV2(core.Sequence):
    """``PopLinkWitnessV2`` (RFC 5272 6.3.1.1)."""

    _fields = [
        ("key_gen_algorithm", AnyAlgorithmIdentifier),
        ("mac_algorithm", AnyAlgorithmIdentifier),
        ("witness", core.OctetString),
    ]


class IdentifyProofV2(core.Sequence):
    """``IdentifyProofV2`` (sic, RFC 6402 A.1; RFC 5272 6.2.1)."""

    _fields = [
        ("proof_alg_id", AnyAlgorithmIdentifier),
        ("mac_alg_id", AnyAlgorithmIdentifier),
        ("witness", core.OctetString),
    ]


class ControlsProcessed(core.Sequence):
    _fields = [("body_list", SequenceOfBodyPartReference)]


class CMCControlType(core.ObjectIdentifier):
    _map = {oid: name for name, oid in CONTROL_OIDS.items()}


def _set_of(spec: TypingAny) -> TypingAny:
    return type("SetOf" + spec.__name__, (core.SetOf,), {"_child_spec": spec})


class TaggedAttribute(core.Sequence):
    """``TaggedAttribute ::= SEQUENCE { bodyPartID, attrType, attrValues SET OF ANY }``."""

    _fields = [
        ("body_part_id", BodyPartID),
        ("attr_type", CMCControlType),
        ("attr_values", None),
    ]
    # As asn1crypto's cms.AttCertAttribute: known controls get their value
    # type, unknown ones a SET OF ANY (RFC 5272 3.2.1.2.1 "AttributeValue
    # ::= ANY").
    _oid_specs = {
        "status_info": _set_of(CMCStatusInfo),
        "identification": _set_of(core.UTF8String),
        "identity_proof": _set_of(core.OctetString),
        "data_return": _set_of(core.OctetString),
        "transaction_id": _set_of(core.Integer),
        "sender_nonce": _set_of(core.OctetString),
        "recipient_nonce": _set_of(core.OctetString),
        "reg_info": _set_of(core.OctetString),
        "response_info": _set_of(core.OctetString),
        "query_pending": _set_of(core.OctetString),
        "pop_link_random": _set_of(core.OctetString),
        "pop_link_witness": _set_of(core.OctetString),
        "status_info_v2": _set_of(CMCStatusInfoV2),
        "batch_requests": _set_of(BodyPartList),
        "batch_responses": _set_of(BodyPartList),
        "control_processed": _set_of(ControlsProcessed),
        "pop_link_witness_v2": _set_of(PopLinkWitnessV2),
        "identity_proof_v2": _set_of(IdentifyProofV2),
    }

    def _values_spec(self) -> TypingAny:
        return self._oid_specs.get(self["attr_type"].native, cms.SetOfAny)

    _spec_callbacks = {"attr_values": _values_spec}


class CertificationRequest(core.Sequence):
    """PKCS#10 kept opaque: the three fields as received (RFC 2986).

    Not asn1crypto's ``csr.CertificationRequest``: we hand the exact received
    bytes to the PKCS#10 codec, and asn1crypto's eager attribute specs must
    not reject an unusual CSR while the PKIData is being read.
    """

    _fields = [
        ("certification_request_info", core.Any),
        ("signature_algorithm", core.Any),
        ("signature", core.Any),
    ]


class TaggedCertificationRequest(core.Sequence):
    _fields = [
        ("body_part_id", BodyPartID),
        ("certification_request", CertificationRequest),
    ]


class ProofOfPossession(core.Choice):
    """CRMF ``ProofOfPossession`` (RFC 4211 4), inner values opaque."""

    _alternatives = [
        ("ra_verified", core.Null, {"implicit": 0}),
        ("signature", core.Sequence, {"implicit": 1}),
        # POPOPrivKey is a CHOICE, so these tags are explicit.
        ("key_encipherment", core.Any, {"explicit": 2}),
        ("key_agreement", core.Any, {"explicit": 3}),
    ]


class SequenceOfAny(core.SequenceOf):
    _child_spec = core.Any


class CertRequest(core.Sequence):
    """CRMF ``CertRequest`` (RFC 4211 5); template and controls opaque."""

    _fields = [
        ("cert_req_id", core.Integer),
        ("cert_template", core.Any),
        ("controls", core.Any, {"optional": True}),
    ]


class CertReqMsg(core.Sequence):
    """CRMF ``CertReqMsg`` (RFC 4211 3), minimal."""

    _fields = [
        ("cert_req", CertRequest),
        ("popo", ProofOfPossession, {"optional": True}),
        ("reg_info", SequenceOfAny, {"optional": True}),
    ]


class OtherRequestMsg(core.Sequence):
    """The ``orm`` alternative of TaggedRequest."""

    _fields = [
        ("body_part_id", BodyPartID),
        ("request_message_type", core.ObjectIdentifier),
        ("request_message_value", core.Any),
    ]


class TaggedRequest(core.Choice):
    """``TaggedRequest ::= CHOICE { tcr [0], crm [1], orm [2] }`` (implicit tags)."""

    _alternatives = [
        ("tcr", TaggedCertificationRequest, {"implicit": 0}),
        ("crm", CertReqMsg, {"implicit": 1}),
        ("orm", OtherRequestMsg, {"implicit": 2}),
    ]


class TaggedContentInfo(core.Sequence):
    _fields = [
        ("body_part_id", BodyPartID),
        ("content_info", cms.ContentInfo),
    ]


class OtherMsg(core.Sequence):
    _fields = [
        ("body_part_id", BodyPartID),
        ("other_msg_type", core.ObjectIdentifier),
        ("other_msg_value", core.Any),
    ]


class SequenceOfTaggedAttribute(core.SequenceOf):
    _child_spec = TaggedAttribute


class SequenceOfTaggedRequest(core.SequenceOf):
    _child_spec = TaggedRequest


class SequenceOfTaggedContentInfo(core.SequenceOf):
    _child_spec = TaggedContentInfo


class SequenceOfOtherMsg(core.SequenceOf):
    _child_spec = OtherMsg


class PKIData(core.Sequence):
    """``PKIData`` (RFC 5272 3.2.1), the Full PKI Request content."""

    _fields = [
        ("control_sequence", SequenceOfTaggedAttribute),
        ("req_sequence", SequenceOfTaggedRequest),
        ("cms_sequence", SequenceOfTaggedContentInfo),
        ("other_msg_sequence", SequenceOfOtherMsg),
    ]


class PKIResponse(core.Sequence):
    """``PKIResponse`` (RFC 5272 4.2.1), the Full PKI Response content."""

    _fields = [
        ("control_sequence", SequenceOfTaggedAttribute),
        ("cms_sequence", SequenceOfTaggedContentInfo),
        ("other_msg_sequence", SequenceOfOtherMsg),
    ]


def _register(oid: str, name: str, spec: TypingAny) -> None:
    cms.ContentType._map[oid] = name
    # _reverse_map is built once on first use; keep it in step if it exists.
    if cms.ContentType._reverse_map is not None:
        cms.ContentType._reverse_map[name] = oid
    cms.EncapsulatedContentInfo._oid_specs[name] = spec
    cms.ContentInfo._oid_specs[name] = spec


_register(ID_CCT_PKI_DATA, "pki_data", PKIData)
_register(ID_CCT_PKI_RESPONSE, "pki_response", PKIResponse)
