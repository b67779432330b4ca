"""CMC Full PKI Request and Full PKI Response, as EST's /fullcmc carries them.

Implements (the ASN.1 lives in :mod:`estproto.asn1.cmc`):

* RFC 7030 4.3: /fullcmc bodies are a CMC Full PKI Request and a Full PKI
  Response (or a Simple PKI Response, which is the certs-only codec's job).
* RFC 5272 3.2 (as updated by RFC 6402): PKIData inside SignedData, signed
  with the key of a contained PKCS#10 (subjectKeyIdentifier signer, 3.2.1.3)
  or with an already certified key; body part identifiers (3.2.2).
* RFC 5272 4.2: PKIResponse inside SignedData, issued certificates in the
  SignedData certificates field.
* RFC 5272 6.1 (CMCStatusInfoV2), 6.2.3 (identification), 6.2.1
  (identityProofV2), 6.3.1 (popLinkRandom, popLinkWitnessV2), 6.6
  (transactionId, senderNonce, recipientNonce).

Strategy: builders assemble asn1crypto values and sign with
:mod:`estproto.codecs.signeddata`; decoders parse with asn1crypto inside
:func:`~estproto.codecs._der.decoding` and hand back frozen dataclasses of
plain Python values and DER bytes. Known controls are decoded to typed
fields; every other control is kept raw (a final server "MUST fail the
processing of an entire PKIData if any included control is not recognized",
RFC 5272 3.2.1.2.1: that is policy for the caller, so we only report them).

Limitations: AuthenticatedData-wrapped requests (RFC 5272 3.2.1.3 second
form) are not supported; CRMF and "other" requests are kept opaque; this
module does not verify the PKCS#10 signatures (the PKCS#10 codec does) nor
compute or check POP link witnesses (it exposes their fields).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Collection, Sequence, Union

from asn1crypto import core, parser
from asn1crypto import csr as asn1_csr
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from .._errors import BadSignature, DecodeError, LocalProtocolError
from .._limits import MAX_DER_SIZE
from ..asn1 import cmc as asn1_cmc
from ._der import decoding
from .signeddata import (
    SignedContent,
    SigningKey,
    VerifyingKey,
    build_signed_data,
    find_signer_certificate,
    parse_signed_data,
    verify_signer,
)

__all__ = [
    "ID_CCT_PKI_DATA",
    "ID_CCT_PKI_RESPONSE",
    "MAX_BODY_PARTS",
    "CMCStatus",
    "CMCFailInfo",
    "Control",
    "PopLinkWitnessV2",
    "IdentityProofV2",
    "TaggedCSR",
    "OtherRequest",
    "PendInfo",
    "ExtendedFailInfo",
    "StatusInfo",
    "FullPKIRequest",
    "FullPKIResponse",
    "build_full_pki_request",
    "decode_full_pki_request",
    "build_full_pki_response",
    "build_full_pki_response_success",
    "build_full_pki_response_failed",
    "build_full_pki_response_pending",
    "decode_full_pki_response",
]

ID_CCT_PKI_DATA = asn1_cmc.ID_CCT_PKI_DATA
ID_CCT_PKI_RESPONSE = asn1_cmc.ID_CCT_PKI_RESPONSE

#: Most body parts (controls + requests + content infos + other messages) we
#: read from one PKIData or PKIResponse. EST sends one request and a few
#: controls; a batching RA (RFC 5272 6.17) may send more, but not thousands.
MAX_BODY_PARTS = 1024

_BODY_ID_MAX = 4294967295  # bodyIdMax, RFC 6402 A.1
_OID = asn1_cmc.CONTROL_OIDS
_ID_EXTENSION_REQUEST = "1.2.840.113549.1.9.14"
_ID_SKI = "2.5.29.14"

BodyPartRef = Union[int, tuple[int, ...]]


class CMCStatus(IntEnum):
    """``CMCStatus`` (RFC 5272 6.1.3)."""

    SUCCESS = 0
    FAILED = 2
    PENDING = 3
    NO_SUPPORT = 4
    CONFIRM_REQUIRED = 5
    POP_REQUIRED = 6
    PARTIAL = 7


class CMCFailInfo(IntEnum):
    """``CMCFailInfo`` (RFC 5272 6.1.4)."""

    BAD_ALG = 0
    BAD_MESSAGE_CHECK = 1
    BAD_REQUEST = 2
    BAD_TIME = 3
    BAD_CERT_ID = 4
    UNSUPPORTED_EXT = 5
    MUST_ARCHIVE_KEYS = 6
    BAD_IDENTITY = 7
    POP_REQUIRED = 8
    POP_FAILED = 9
    NO_KEY_REUSE = 10
    INTERNAL_CA_ERROR = 11
    TRY_LATER = 12
    AUTH_DATA_FAIL = 13


@dataclass(frozen=True)
class Control:
    """A control (TaggedAttribute, RFC 5272 3.2.1.2.1) kept raw.

    Attributes:
        body_part_id: the control's own body part identifier.
        oid: dotted attrType.
        values: DER of each AttributeValue in attrValues.
    """

    body_part_id: int
    oid: str
    values: tuple[bytes, ...]


@dataclass(frozen=True)
class PopLinkWitnessV2:
    """``PopLinkWitnessV2`` (RFC 5272 6.3.1.1).

    Attributes:
        key_gen_algorithm: DER AlgorithmIdentifier (usually a hash).
        mac_algorithm: DER AlgorithmIdentifier (usually HMAC).
        witness: the MAC value.
    """

    key_gen_algorithm: bytes
    mac_algorithm: bytes
    witness: bytes


@dataclass(frozen=True)
class IdentityProofV2:
    """``IdentifyProofV2`` (RFC 5272 6.2.1): same shape, other meaning."""

    proof_algorithm: bytes
    mac_algorithm: bytes
    witness: bytes


@dataclass(frozen=True)
class TaggedCSR:
    """A ``tcr`` request: a PKCS#10 with its body part identifier.

    Attributes:
        body_part_id: identifier of this request.
        csr_der: the PKCS#10 exactly as received.
        pop_link_witness_v2: the id-cmc-popLinkWitnessV2 attribute of the
            CSR, if present (RFC 5272 6.3.1.1: "For PKCS #10, the POP Link
            Witness ... control is included in the attributes field").
    """

    body_part_id: int
    csr_der: bytes
    pop_link_witness_v2: PopLinkWitnessV2 | None = None


@dataclass(frozen=True)
class OtherRequest:
    """A ``crm`` (CRMF CertReqMsg) or ``orm`` request, kept opaque.

    Attributes:
        kind: "crm" or "orm".
        body_part_id: certReqId (crm) or bodyPartID (orm).
        der: DER of the CertReqMsg or of the orm SEQUENCE (untagged).
    """

    kind: str
    body_part_id: int
    der: bytes


@dataclass(frozen=True)
class PendInfo:
    """``PendInfo`` (RFC 5272 6.1.1): poll again with *token* after *time*."""

    token: bytes
    time: datetime.datetime


@dataclass(frozen=True)
class ExtendedFailInfo:
    """The extendedFailInfo alternative: an OID and a DER value."""

    oid: str
    value: bytes


@dataclass(frozen=True)
class StatusInfo:
    """A CMCStatusInfoV2 (or a version 1 CMCStatusInfo) control value.

    Attributes:
        status: the CMCStatus.
        body_list: references to the request body parts it is about; an
            int (bodyPartID) or a tuple (bodyPartPath).
        status_string: the human readable text, if any.
        fail_info: set when otherInfo is failInfo.
        pend_info: set when otherInfo is pendInfo.
        extended_fail_info: set when otherInfo is extendedFailInfo.
    """

    status: CMCStatus
    body_list: tuple[BodyPartRef, ...]
    status_string: str | None = None
    fail_info: CMCFailInfo | None = None
    pend_info: PendInfo | None = None
    extended_fail_info: ExtendedFailInfo | None = None


@dataclass(frozen=True)
class FullPKIRequest:
    """A decoded Full PKI Request (RFC 5272 3.2).

    Attributes:
        requests: the tcr requests as (body part id, PKCS#10 DER).
        other_requests: crm and orm requests, opaque.
        transaction_id: the transactionId control (6.6).
        sender_nonce: the senderNonce control (6.6).
        identification: the identification control (6.2.3).
        pop_link_random: the popLinkRandom control (6.3.1.3).
        pop_link_witness_v2: a popLinkWitnessV2 found in controlSequence.
        identity_proof_v2: the identityProofV2 control (6.2.1).
        unknown_controls: every other control, raw.
        cms_sequence: TaggedContentInfo entries as (id, ContentInfo DER).
        other_msgs: OtherMsg entries as (id, OID, value DER).
        pki_data: the PKIData DER (the signed eContent).
        signed: the SignedData it came in.
        signer_certificate: the certificate that verified the signature,
            when the signer was identified by one.
        signing_request_id: body part id of the request whose key signed
            (RFC 5272 3.2.1.3.1 subjectKeyIdentifier case), else None.
        verified: whether the signatures were checked (``verify=True``).
    """

    requests: tuple[TaggedCSR, ...]
    other_requests: tuple[OtherRequest, ...]
    transaction_id: int | None
    sender_nonce: bytes | None
    identification: str | None
    pop_link_random: bytes | None
    pop_link_witness_v2: PopLinkWitnessV2 | None
    identity_proof_v2: IdentityProofV2 | None
    unknown_controls: tuple[Control, ...]
    cms_sequence: tuple[tuple[int, bytes], ...]
    other_msgs: tuple[tuple[int, str, bytes], ...]
    pki_data: bytes
    signed: SignedContent
    signer_certificate: x509.Certificate | None
    signing_request_id: int | None
    verified: bool


@dataclass(frozen=True)
class FullPKIResponse:
    """A decoded Full PKI Response (RFC 5272 4.2).

    The top-level status fields come from the first status control
    (statusInfoV2, else statusInfo); ``statuses`` holds all of them.

    Attributes:
        status, fail_info, pend_info, extended_fail_info, status_string,
        body_list: see :class:`StatusInfo`.
        statuses: every status control value, in order.
        certificates: the SignedData certificates ("Clients MUST NOT assume
            the certificates are in any order", RFC 5272 4.2).
        transaction_id, sender_nonce, recipient_nonce: the 6.6 controls.
        unknown_controls: every other control, raw.
        cms_sequence, other_msgs: as in :class:`FullPKIRequest`.
        pki_response: the PKIResponse DER.
        signed: the SignedData it came in.
        verified: True when there was at least one signer and every signer
            verified with a certificate found in the message.
    """

    status: CMCStatus
    fail_info: CMCFailInfo | None
    pend_info: PendInfo | None
    extended_fail_info: ExtendedFailInfo | None
    status_string: str | None
    body_list: tuple[BodyPartRef, ...]
    statuses: tuple[StatusInfo, ...]
    certificates: tuple[x509.Certificate, ...]
    transaction_id: int | None
    sender_nonce: bytes | None
    recipient_nonce: bytes | None
    unknown_controls: tuple[Control, ...]
    cms_sequence: tuple[tuple[int, bytes], ...]
    other_msgs: tuple[tuple[int, str, bytes], ...]
    pki_response: bytes
    signed: SignedContent
    verified: bool


# --------------------------------------------------------------------------
# Building


def _check_body_part_id(value: int, what: str = "body part id") -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= _BODY_ID_MAX:
        # RFC 5272 3.2.2: "The bodyPartID value of 0 is reserved for use as
        # the reference to the current PKIData object."
        raise LocalProtocolError(f"{what} must be an int in 1..{_BODY_ID_MAX}, not {value!r}")
    return value


class _Ids:
    """Allocates body part ids not already taken (RFC 5272 3.2.2 uniqueness)."""

    def __init__(self, taken: Collection[int]) -> None:
        self._taken = set(taken)
        self._next = 1

    def new(self) -> int:
        while self._next in self._taken:
            self._next += 1
        self._taken.add(self._next)
        return self._next


def _control(ids: _Ids, name: str, value: Any) -> asn1_cmc.TaggedAttribute:
    return asn1_cmc.TaggedAttribute({
        "body_part_id": ids.new(), "attr_type": _OID[name], "attr_values": [value],
    })


def _extra(ids: _Ids, controls: Sequence[tuple[str, Sequence[bytes]]]) -> list[asn1_cmc.TaggedAttribute]:
    out = []
    for oid, values in controls:
        try:
            # A known control's SET OF takes its own value type, not Any.
            spec = asn1_cmc.TaggedAttribute._oid_specs.get(asn1_cmc.CMCControlType._map.get(oid, ""))
            child = spec._child_spec if spec is not None else core.Any
            out.append(asn1_cmc.TaggedAttribute({
                "body_part_id": ids.new(),
                "attr_type": oid,
                "attr_values": [child.load(bytes(v), strict=True) for v in values],
            }))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise LocalProtocolError(f"bad extra control {oid!r}: {exc}") from exc
    return out


def _nonce_controls(
    ids: _Ids,
    transaction_id: int | None,
    sender_nonce: bytes | None,
    recipient_nonce: bytes | None,
) -> list[asn1_cmc.TaggedAttribute]:
    out = []
    if transaction_id is not None:
        if not isinstance(transaction_id, int) or isinstance(transaction_id, bool):
            raise LocalProtocolError("transaction_id must be an int")
        out.append(_control(ids, "transaction_id", core.Integer(transaction_id)))
    if sender_nonce is not None:
        out.append(_control(ids, "sender_nonce", core.OctetString(bytes(sender_nonce))))
    if recipient_nonce is not None:
        out.append(_control(ids, "recipient_nonce", core.OctetString(bytes(recipient_nonce))))
    return out


def _csr_public_key_and_ski(csr_der: bytes) -> tuple[Any, bytes | None]:
    """Public key and SKI extension value of a PKCS#10 (asn1crypto, lenient)."""
    req = asn1_csr.CertificationRequest.load(csr_der)
    info = req["certification_request_info"]
    public_key = serialization.load_der_public_key(info["subject_pk_info"].dump())
    ski = None
    for attr in info["attributes"]:
        if attr["type"].dotted != _ID_EXTENSION_REQUEST:
            continue
        for extensions in attr["values"]:
            for ext in extensions:
                if ext["extn_id"].dotted == _ID_SKI:
                    ski = bytes(ext["extn_value"].parsed.native)
    return public_key, ski


def build_full_pki_request(
    csr_der: bytes,
    signer_key: SigningKey,
    *,
    signer_cert: x509.Certificate | None = None,
    body_part_id: int = 1,
    transaction_id: int | None = None,
    sender_nonce: bytes | None = None,
    identification: str | None = None,
    pop_link_random: bytes | None = None,
    extra_controls: Sequence[tuple[str, Sequence[bytes]]] = (),
    certificates: Sequence[x509.Certificate] = (),
    hash_algorithm: hashes.HashAlgorithm | None = None,
) -> bytes:
    """Build a Full PKI Request: ContentInfo(SignedData(PKIData)).

    With no *signer_cert*, *signer_key* must be the CSR's key and the
    signer is named by subjectKeyIdentifier: RFC 5272 3.2.1.3.1 "The
    subjectKeyIdentifier form of the signerIdentifier in SignerInfo MUST be
    used" and its value "MUST be the Subject Key Identifier specified in the
    corresponding certification request" (we use the CSR's SKI extension,
    or the RFC 5280 method-1 value when the CSR has none).

    Args:
        csr_der: the PKCS#10 DER, put in a ``tcr`` request.
        signer_key: the key that signs the SignedData.
        signer_cert: a certificate for *signer_key* (re-enrollment with an
            existing certificate); it goes in the certificates field.
        body_part_id: the request's body part id; controls get other ids.
        transaction_id, sender_nonce: RFC 5272 6.6 controls.
        identification: RFC 5272 6.2.3 control (UTF8String).
        pop_link_random: RFC 5272 6.3.1.3 control.
        extra_controls: further controls as (dotted OID, [DER values]).
        certificates: extra certificates for the SignedData.
        hash_algorithm: digest for the signature (see signeddata).

    Returns:
        DER of the ContentInfo.

    Raises:
        LocalProtocolError: bad arguments (unparsable CSR, key mismatch,
            body part id out of range ...).
    """
    _check_body_part_id(body_part_id)
    try:
        csr_public_key, csr_ski = _csr_public_key_and_ski(bytes(csr_der))
    except (ValueError, TypeError, KeyError, UnsupportedAlgorithm) as exc:
        raise LocalProtocolError(f"csr_der is not a PKCS#10 request: {exc}") from exc
    ski = None
    if signer_cert is None:
        if csr_public_key != signer_key.public_key():
            raise LocalProtocolError(
                "signer_key is not the CSR's key: pass signer_cert for a certified key"
            )
        ski = csr_ski or x509.SubjectKeyIdentifier.from_public_key(csr_public_key).digest
    ids = _Ids([body_part_id])
    controls = _nonce_controls(ids, transaction_id, sender_nonce, None)
    if identification is not None:
        controls.append(_control(ids, "identification", core.UTF8String(identification)))
    if pop_link_random is not None:
        controls.append(_control(ids, "pop_link_random", core.OctetString(bytes(pop_link_random))))
    controls += _extra(ids, extra_controls)
    tcr = asn1_cmc.TaggedCertificationRequest({
        "body_part_id": body_part_id,
        "certification_request": asn1_cmc.CertificationRequest.load(bytes(csr_der)),
    })
    pki_data = asn1_cmc.PKIData({
        "control_sequence": controls,
        "req_sequence": [asn1_cmc.TaggedRequest(name="tcr", value=tcr)],
        "cms_sequence": [],
        "other_msg_sequence": [],
    })
    return build_signed_data(
        ID_CCT_PKI_DATA, pki_data.dump(), signer_key,
        signer_cert=signer_cert, subject_key_identifier=ski,
        certificates=certificates, hash_algorithm=hash_algorithm,
    )


def _status_value(info: StatusInfo) -> asn1_cmc.CMCStatusInfoV2:
    body_list = []
    if not info.body_list:
        raise LocalProtocolError("bodyList needs at least one entry (SIZE (1..MAX))")
    for ref in info.body_list:
        if isinstance(ref, tuple):
            if not ref:
                raise LocalProtocolError("a bodyPartPath needs at least one id")
            for part in ref:
                _check_body_part_id(part)
            body_list.append(asn1_cmc.BodyPartReference(name="body_part_path", value=list(ref)))
        else:
            _check_body_part_id(ref)
            body_list.append(asn1_cmc.BodyPartReference(name="body_part_id", value=ref))
    fields: dict[str, Any] = {"cmc_status": int(CMCStatus(info.status)), "body_list": body_list}
    if info.status_string is not None:
        fields["status_string"] = info.status_string
    others = [x for x in (info.fail_info, info.pend_info, info.extended_fail_info) if x is not None]
    if len(others) > 1:
        raise LocalProtocolError("otherInfo is one of failInfo, pendInfo, extendedFailInfo")
    if info.fail_info is not None:
        # RFC 5272 6.1.1: failInfo "is present only if cMCStatus contains the
        # value failed".
        if info.status != CMCStatus.FAILED:
            raise LocalProtocolError("fail_info goes only with status FAILED")
        fields["other_info"] = asn1_cmc.CMCFailInfo(int(CMCFailInfo(info.fail_info)))
    elif info.pend_info is not None:
        # RFC 5272 6.1.1: pendInfo "is present when the cMCStatus is either
        # pending or partial".
        if info.status not in (CMCStatus.PENDING, CMCStatus.PARTIAL):
            raise LocalProtocolError("pend_info goes only with status PENDING or PARTIAL")
        when = info.pend_info.time
        if when.tzinfo is None:
            raise LocalProtocolError("pend_info.time must be timezone-aware")
        fields["other_info"] = asn1_cmc.PendInfo({
            "pend_token": bytes(info.pend_info.token),
            "pend_time": when.astimezone(datetime.timezone.utc),
        })
    elif info.extended_fail_info is not None:
        try:
            fields["other_info"] = asn1_cmc.ExtendedFailInfo({
                "fail_info_oid": info.extended_fail_info.oid,
                "fail_info_value": core.Any.load(info.extended_fail_info.value),
            })
        except (ValueError, TypeError) as exc:
            raise LocalProtocolError(f"bad extended_fail_info: {exc}") from exc
    return asn1_cmc.CMCStatusInfoV2(fields)


def build_full_pki_response(
    status: StatusInfo | Sequence[StatusInfo],
    *,
    certificates: Sequence[x509.Certificate] = (),
    signer_key: SigningKey | None = None,
    signer_cert: x509.Certificate | None = None,
    transaction_id: int | None = None,
    sender_nonce: bytes | None = None,
    recipient_nonce: bytes | None = None,
    extra_controls: Sequence[tuple[str, Sequence[bytes]]] = (),
    hash_algorithm: hashes.HashAlgorithm | None = None,
) -> bytes:
    """Build a Full PKI Response: ContentInfo(SignedData(PKIResponse)).

    RFC 5272 4.2: "The certificates issued in a PKI Response are returned in
    the certificates field of the immediately encapsulating SignedData."
    RFC 7030 4.3.2 does not say who signs; with no *signer_key* the
    SignedData has no SignerInfo (as in RFC 5272 4.1's Simple PKI Response),
    and the client relies on the TLS-authenticated server.

    Args:
        status: one or more statusInfoV2 values (each its own control).
        certificates: issued certificates and chain.
        signer_key, signer_cert: who signs (CA or RA); both or neither.
        transaction_id, sender_nonce, recipient_nonce: RFC 5272 6.6 (echo
            the request's transactionId; recipientNonce = its senderNonce).
        extra_controls: further controls as (dotted OID, [DER values]).
        hash_algorithm: digest for the signature.

    Returns:
        DER of the ContentInfo.

    Raises:
        LocalProtocolError: inconsistent arguments.
    """
    statuses = [status] if isinstance(status, StatusInfo) else list(status)
    ids = _Ids(())
    controls = [_control(ids, "status_info_v2", _status_value(s)) for s in statuses]
    controls += _nonce_controls(ids, transaction_id, sender_nonce, recipient_nonce)
    controls += _extra(ids, extra_controls)
    response = asn1_cmc.PKIResponse({
        "control_sequence": controls, "cms_sequence": [], "other_msg_sequence": [],
    })
    if signer_key is None and signer_cert is not None:
        raise LocalProtocolError("signer_cert given without signer_key")
    return build_signed_data(
        ID_CCT_PKI_RESPONSE, response.dump(), signer_key,
        signer_cert=signer_cert, certificates=certificates, hash_algorithm=hash_algorithm,
    )


def build_full_pki_response_success(
    certificates: Sequence[x509.Certificate],
    *,
    body_part_ids: Sequence[BodyPartRef] = (1,),
    status_string: str | None = None,
    **kwargs: Any,
) -> bytes:
    """A success response carrying *certificates* (see :func:`build_full_pki_response`)."""
    info = StatusInfo(CMCStatus.SUCCESS, tuple(body_part_ids), status_string)
    return build_full_pki_response(info, certificates=certificates, **kwargs)


def build_full_pki_response_failed(
    fail_info: CMCFailInfo,
    *,
    body_part_ids: Sequence[BodyPartRef] = (1,),
    status_string: str | None = None,
    **kwargs: Any,
) -> bytes:
    """A failed response with a failInfo (RFC 7030 4.3.2: errors carry CMC).

    RFC 7030 3.5: for a POP linking failure "the CMCFailInfo MUST be set to
    popFailed".
    """
    info = StatusInfo(CMCStatus.FAILED, tuple(body_part_ids), status_string,
                      fail_info=CMCFailInfo(fail_info))
    return build_full_pki_response(info, **kwargs)


def build_full_pki_response_pending(
    pend_token: bytes,
    pend_time: datetime.datetime,
    *,
    body_part_ids: Sequence[BodyPartRef] = (1,),
    status_string: str | None = None,
    **kwargs: Any,
) -> bytes:
    """A pending response: the client polls with *pend_token* after *pend_time*."""
    info = StatusInfo(CMCStatus.PENDING, tuple(body_part_ids), status_string,
                      pend_info=PendInfo(bytes(pend_token), pend_time))
    return build_full_pki_response(info, **kwargs)


# --------------------------------------------------------------------------
# Decoding


class _Seen:
    """Checks body part id uniqueness (RFC 5272 3.2.2)."""

    def __init__(self) -> None:
        self.ids: set[int] = set()

    def add(self, value: int, what: str) -> int:
        if not 0 <= value <= _BODY_ID_MAX:
            raise DecodeError(f"invalid CMC message: {what} body part id {value} out of range")
        # RFC 5272 3.2.2: "The body part identifier MUST be unique within a
        # single PKIData or PKIResponse."
        if value in self.ids:
            raise DecodeError(f"invalid CMC message: body part id {value} used twice")
        if len(self.ids) >= MAX_BODY_PARTS:
            raise DecodeError(f"invalid CMC message: more than {MAX_BODY_PARTS} body parts")
        self.ids.add(value)
        return value


def _single(control: Any, name: str) -> Any:
    values = control["attr_values"]
    if len(values) != 1:
        raise DecodeError(f"invalid CMC message: control {name} must have exactly one value")
    return values[0]


def _witness(value: Any) -> tuple[bytes, bytes, bytes]:
    return (bytes(value[0].dump()), bytes(value[1].dump()), bytes(value["witness"].native))


def _ref(value: Any) -> BodyPartRef:
    if value.name == "body_part_id":
        return int(value.chosen.native)
    path = tuple(int(x.native) for x in value.chosen)
    if not path:
        raise DecodeError("invalid CMC message: empty bodyPartPath")
    return path


def _status(value: Any, v2: bool) -> StatusInfo:
    try:
        status = CMCStatus(_int(value["cmc_status"]))
    except ValueError as exc:
        raise DecodeError("invalid CMC message: unknown CMCStatus") from exc
    raw_list = value["body_list"]
    if len(raw_list) == 0:
        raise DecodeError("invalid CMC message: empty bodyList (SIZE (1..MAX))")
    body_list = tuple(_ref(r) if v2 else int(r.native) for r in raw_list)
    ss = value["status_string"]
    status_string = None if isinstance(ss, core.Void) else str(ss.native)
    fail_info = pend = ext = None
    other = value["other_info"]
    if not isinstance(other, core.Void):
        if v2:
            kind, parsed = asn1_cmc.classify_other_info(other)
        else:
            kind, parsed = other.name, other.chosen
        if kind == "fail_info":
            try:
                fail_info = CMCFailInfo(_int(parsed))
            except ValueError as exc:
                raise DecodeError("invalid CMC message: unknown CMCFailInfo") from exc
        elif kind == "pend_info":
            when = parsed["pend_time"].native
            pend = PendInfo(bytes(parsed["pend_token"].native), when)
        else:
            ext = ExtendedFailInfo(parsed["fail_info_oid"].dotted,
                                   bytes(parsed["fail_info_value"].dump()))
    return StatusInfo(status, body_list, status_string, fail_info, pend, ext)


def _int(value: Any) -> int:
    """The integer of an asn1crypto Integer even when it has a name map."""
    return int(core.Integer.load(value.dump()).native)


@dataclass
class _Controls:
    transaction_id: int | None = None
    sender_nonce: bytes | None = None
    recipient_nonce: bytes | None = None
    identification: str | None = None
    pop_link_random: bytes | None = None
    pop_link_witness_v2: PopLinkWitnessV2 | None = None
    identity_proof_v2: IdentityProofV2 | None = None


_SINGLETONS = {
    "transaction_id", "sender_nonce", "recipient_nonce", "identification",
    "pop_link_random", "pop_link_witness_v2", "identity_proof_v2",
}


def _read_controls(
    seq: Any, seen: _Seen
) -> tuple[_Controls, list[StatusInfo], list[Control], list[tuple[str, tuple[int, ...]]]]:
    out = _Controls()
    statuses: list[StatusInfo] = []
    unknown: list[Control] = []
    references: list[tuple[str, tuple[int, ...]]] = []
    found: set[str] = set()
    for control in seq:
        seen.add(int(control["body_part_id"].native), "control")
        oid = control["attr_type"].dotted
        name = asn1_cmc.CMCControlType._map.get(oid)
        if name in _SINGLETONS:
            if name in found:
                raise DecodeError(f"invalid CMC message: control {name} appears twice")
            found.add(name)
        if name == "transaction_id":
            out.transaction_id = int(_single(control, name).native)
        elif name == "sender_nonce":
            out.sender_nonce = bytes(_single(control, name).native)
        elif name == "recipient_nonce":
            out.recipient_nonce = bytes(_single(control, name).native)
        elif name == "identification":
            out.identification = str(_single(control, name).native)
        elif name == "pop_link_random":
            out.pop_link_random = bytes(_single(control, name).native)
        elif name == "pop_link_witness_v2":
            out.pop_link_witness_v2 = PopLinkWitnessV2(*_witness(_single(control, name)))
        elif name == "identity_proof_v2":
            out.identity_proof_v2 = IdentityProofV2(*_witness(_single(control, name)))
        elif name in ("status_info_v2", "status_info"):
            values = control["attr_values"]
            if len(values) == 0:
                raise DecodeError(f"invalid CMC message: control {name} has no value")
            statuses.extend(_status(v, name == "status_info_v2") for v in values)
        else:
            if name in ("batch_requests", "batch_responses"):
                for value in control["attr_values"]:
                    references.append((name, tuple(int(x.native) for x in value)))
            unknown.append(Control(
                int(control["body_part_id"].native), oid,
                tuple(bytes(v.dump()) for v in control["attr_values"]),
            ))
    return out, statuses, unknown, references


def _read_tail(body: Any, seen: _Seen) -> tuple[tuple[tuple[int, bytes], ...], tuple[tuple[int, str, bytes], ...]]:
    cms_seq = []
    for tci in body["cms_sequence"]:
        bpid = seen.add(int(tci["body_part_id"].native), "TaggedContentInfo")
        cms_seq.append((bpid, bytes(tci["content_info"].dump())))
    others = []
    for msg in body["other_msg_sequence"]:
        bpid = seen.add(int(msg["body_part_id"].native), "OtherMsg")
        others.append((bpid, msg["other_msg_type"].dotted, bytes(msg["other_msg_value"].dump())))
    return tuple(cms_seq), tuple(others)


def _csr_witness(csr_der: bytes) -> PopLinkWitnessV2 | None:
    """The popLinkWitnessV2 attribute of a PKCS#10, read without asn1crypto's
    attribute specs (an unknown attribute elsewhere must not break us)."""
    req = asn1_cmc.CertificationRequest.load(csr_der)
    info = req["certification_request_info"]
    # CertificationRequestInfo: version, subject, spki, attributes [0].
    contents = parser.parse(info.dump(), strict=True)[4]
    found = None
    pos = 0
    while pos < len(contents):
        class_, _method, tag, header, body, trailer = parser.parse(contents[pos:])
        pos += len(header) + len(body) + len(trailer)
        if (class_, tag) == (2, 0):
            attrs = asn1_csr.SetOfAttributes.load(b"\x31" + header[1:] + body + trailer)
            for attr in attrs:
                if attr["type"].dotted == _OID["pop_link_witness_v2"]:
                    if found is not None or len(attr["values"]) != 1:
                        raise DecodeError("invalid PKCS#10: popLinkWitnessV2 must occur once")
                    value = asn1_cmc.PopLinkWitnessV2.load(attr["values"][0].dump())
                    found = PopLinkWitnessV2(*_witness(value))
    return found


def decode_full_pki_request(
    der: bytes,
    *,
    max_size: int = MAX_DER_SIZE,
    verify: bool = True,
    lenient: bool = False,
) -> FullPKIRequest:
    """Decode (and by default verify) a Full PKI Request.

    Verification: each SignerInfo is checked with the certificate its sid
    names, if the SignedData carries it; otherwise, for a
    subjectKeyIdentifier sid, with the public key of the contained PKCS#10
    whose SKI extension (or RFC 5280 method-1 SKI) matches (RFC 5272
    3.2.1.3.1; "If the request key is used for signing, there MUST be only
    one SignerInfo in the SignedData").

    Args:
        der: the ContentInfo DER.
        max_size: size limit, checked first.
        verify: check the signatures (an unsigned request then fails).
        lenient: see :func:`~estproto.codecs.signeddata.parse_signed_data`.

    Returns:
        The :class:`FullPKIRequest`.

    Raises:
        MessageTooLarge: over *max_size*.
        BadSignature: a signature or digest check failed, or the signer could
            not be identified.
        DecodeError: malformed input, duplicate body part ids, references to
            body parts that do not exist.
    """
    signed = parse_signed_data(der, expected_content_type=ID_CCT_PKI_DATA,
                               max_size=max_size, lenient=lenient)
    with decoding("CMC PKIData"):
        body = asn1_cmc.PKIData.load(signed.econtent, strict=True)
        seen = _Seen()
        controls, statuses, unknown, references = _read_controls(body["control_sequence"], seen)
        requests: list[TaggedCSR] = []
        others: list[OtherRequest] = []
        for req in body["req_sequence"]:
            value = req.chosen
            if req.name == "tcr":
                bpid = seen.add(int(value["body_part_id"].native), "tcr")
                csr_der = bytes(value["certification_request"].dump())
                requests.append(TaggedCSR(bpid, csr_der, _csr_witness(csr_der)))
            elif req.name == "crm":
                bpid = seen.add(int(value["cert_req"]["cert_req_id"].native), "crm")
                others.append(OtherRequest("crm", bpid, _untagged(value)))
            else:
                bpid = seen.add(int(value["body_part_id"].native), "orm")
                others.append(OtherRequest("orm", bpid, _untagged(value)))
        cms_seq, other_msgs = _read_tail(body, seen)
        if statuses:
            raise DecodeError("invalid CMC PKIData: a request carries a status control")
        for name, refs in references:
            for ref in refs:
                # Body part id 0 is "the reference to the current PKIData".
                if ref != 0 and ref not in seen.ids:
                    raise DecodeError(
                        f"invalid CMC PKIData: control {name} refers to body part {ref}, "
                        "which does not exist"
                    )
    signer_cert, signing_request = None, None
    if verify:
        signer_cert, signing_request = _verify_request(signed, requests)
    return FullPKIRequest(
        requests=tuple(requests),
        other_requests=tuple(others),
        transaction_id=controls.transaction_id,
        sender_nonce=controls.sender_nonce,
        identification=controls.identification,
        pop_link_random=controls.pop_link_random,
        pop_link_witness_v2=controls.pop_link_witness_v2,
        identity_proof_v2=controls.identity_proof_v2,
        unknown_controls=tuple(unknown),
        cms_sequence=cms_seq,
        other_msgs=other_msgs,
        pki_data=signed.econtent,
        signed=signed,
        signer_certificate=signer_cert,
        signing_request_id=signing_request,
        verified=verify,
    )


def _untagged(value: Any) -> bytes:
    """DER of an implicitly tagged SEQUENCE with the universal tag put back."""
    return _seq(value.contents or b"")


def _seq(contents: bytes) -> bytes:
    n = len(contents)
    if n < 0x80:
        return b"\x30" + bytes([n]) + contents
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return b"\x30" + bytes([0x80 | len(length)]) + length + contents


def _cert_key(cert: x509.Certificate) -> VerifyingKey:
    """The public key of a signer certificate; cryptography parses it lazily."""
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise BadSignature(f"CMC signer certificate has an unusable public key: {exc}") from exc
    if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey,
                            ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        raise BadSignature(f"CMC signer certificate has an unsupported {type(key).__name__}")
    return key


def _verify_request(
    signed: SignedContent, requests: Sequence[TaggedCSR]
) -> tuple[x509.Certificate | None, int | None]:
    if not signed.signers:
        raise BadSignature("CMC Full PKI Request is not signed")
    signer_cert: x509.Certificate | None = None
    signing_request: int | None = None
    for index, view in enumerate(signed.signers):
        cert = find_signer_certificate(signed, index)
        if cert is not None:
            key: Any = _cert_key(cert)
            signer_cert = signer_cert or cert
        else:
            if view.subject_key_identifier is None:
                raise BadSignature("CMC request signer certificate is not in the message")
            match = None
            for req in requests:
                with decoding("PKCS#10 request in PKIData"):
                    try:
                        public_key, ski = _csr_public_key_and_ski(req.csr_der)
                        if ski is None:
                            ski = x509.SubjectKeyIdentifier.from_public_key(public_key).digest
                    except UnsupportedAlgorithm as exc:
                        raise DecodeError(f"PKCS#10 request in PKIData: {exc}") from exc
                if ski == view.subject_key_identifier:
                    match = (req.body_part_id, public_key)
                    break
            if match is None:
                raise BadSignature("CMC request signer matches no certificate and no request")
            if len(signed.signers) != 1:
                # RFC 5272 3.2.1.3.1 c.
                raise BadSignature("a request signed with its own key must have one SignerInfo")
            signing_request, key = match
        verify_signer(signed, index, key)
    return signer_cert, signing_request


def decode_full_pki_response(
    der: bytes,
    *,
    lenient: bool = False,
    max_size: int = MAX_DER_SIZE,
    verify: bool = True,
    request_body_part_ids: Collection[int] | None = None,
) -> FullPKIResponse:
    """Decode a Full PKI Response (RFC 5272 4.2).

    Args:
        der: the ContentInfo DER.
        lenient: accept a bare SignedData (no ContentInfo), a PKCS#7 v1.5
            style eContent, and a response with no status control (then
            success is assumed, as for a Simple PKI Response).
        max_size: size limit, checked first.
        verify: check every signer whose certificate is in the message;
            a signer whose certificate is absent leaves ``verified`` False.
        request_body_part_ids: if given, the body part ids of the request;
            every status bodyList reference must name one of them (or 0).

    Returns:
        The :class:`FullPKIResponse`.

    Raises:
        MessageTooLarge: over *max_size*.
        BadSignature: a signature did not verify.
        DecodeError: malformed input, no status control (strict mode),
            references to unknown request body parts.
    """
    signed = parse_signed_data(der, expected_content_type=ID_CCT_PKI_RESPONSE,
                               max_size=max_size, lenient=lenient)
    with decoding("CMC PKIResponse"):
        body = asn1_cmc.PKIResponse.load(signed.econtent, strict=True)
        seen = _Seen()
        controls, statuses, unknown, _refs = _read_controls(body["control_sequence"], seen)
        cms_seq, other_msgs = _read_tail(body, seen)
    if not statuses:
        if not lenient:
            raise DecodeError("invalid CMC PKIResponse: no statusInfoV2 control")
        statuses = [StatusInfo(CMCStatus.SUCCESS, (1,))]
    if request_body_part_ids is not None:
        allowed = set(request_body_part_ids) | {0}
        for status in statuses:
            for ref in status.body_list:
                head = ref[0] if isinstance(ref, tuple) else ref
                if head not in allowed:
                    raise DecodeError(
                        f"invalid CMC PKIResponse: status refers to body part {head}, "
                        "which the request does not have"
                    )
    verified = False
    if verify and signed.signers:
        verified = True
        for index in range(len(signed.signers)):
            cert = find_signer_certificate(signed, index)
            if cert is None:
                verified = False
                continue
            verify_signer(signed, index, _cert_key(cert))
    first = statuses[0]
    return FullPKIResponse(
        status=first.status,
        fail_info=first.fail_info,
        pend_info=first.pend_info,
        extended_fail_info=first.extended_fail_info,
        status_string=first.status_string,
        body_list=first.body_list,
        statuses=tuple(statuses),
        certificates=signed.certificates,
        transaction_id=controls.transaction_id,
        sender_nonce=controls.sender_nonce,
        recipient_nonce=controls.recipient_nonce,
        unknown_controls=tuple(unknown),
        cms_sequence=cms_seq,
        other_msgs=other_msgs,
        pki_response=signed.econtent,
        signed=signed,
        verified=verified,
    )
