"""Tests for estproto.codecs.cmc and estproto.asn1.cmc (RFC 5272 / 6402, RFC 7030 4.3)."""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import core
from asn1crypto import csr as asn1_csr
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, strategies as st

from estproto import BadSignature, DecodeError, LocalProtocolError, MessageTooLarge
from estproto.asn1 import cmc as asn1_cmc
from estproto.codecs.cmc import (
    ID_CCT_PKI_DATA,
    ID_CCT_PKI_RESPONSE,
    CMCFailInfo,
    CMCStatus,
    ExtendedFailInfo,
    PendInfo,
    StatusInfo,
    build_full_pki_request,
    build_full_pki_response,
    build_full_pki_response_failed,
    build_full_pki_response_pending,
    build_full_pki_response_success,
    decode_full_pki_request,
    decode_full_pki_response,
)
from estproto.codecs.signeddata import build_signed_data, parse_signed_data

from pki import der, issue, make_ca, make_csr, make_key, name, pem, sign_hash
from vectors import vector_der

CA_CERT, CA_KEY = make_ca("CMC Test CA")
KEY = make_key("p256")
CSR = der(make_csr(KEY, "cmc-device"))
OLD_KEY = make_key("p384")
OLD_CERT = issue(CA_CERT, CA_KEY, OLD_KEY.public_key(), cn="cmc-device")
LEAF = issue(CA_CERT, CA_KEY, KEY.public_key(), cn="cmc-device")
UTC = datetime.timezone.utc


def _pki_data(controls: list[Any], requests: list[Any], cms_seq: list[Any] = ()) -> bytes:  # type: ignore[assignment]
    return bytes(asn1_cmc.PKIData({
        "control_sequence": controls, "req_sequence": requests,
        "cms_sequence": list(cms_seq), "other_msg_sequence": [],
    }).dump())


def _tcr(bpid: int, csr: bytes = CSR) -> Any:
    return asn1_cmc.TaggedRequest(name="tcr", value=asn1_cmc.TaggedCertificationRequest({
        "body_part_id": bpid,
        "certification_request": asn1_cmc.CertificationRequest.load(csr),
    }))


def _ctl(bpid: int, oid: str, value: Any) -> Any:
    return asn1_cmc.TaggedAttribute({"body_part_id": bpid, "attr_type": oid, "attr_values": [value]})


def _sign_pki_data(data: bytes) -> bytes:
    return build_signed_data(ID_CCT_PKI_DATA, data, KEY)


# ---------------------------------------------------------------- requests

@pytest.mark.parametrize("kind", ["p256", "p521", "rsa2048", "ed25519"])
def test_request_round_trip_self_signed(kind: str) -> None:
    key = KEY if kind == "p256" else make_key(kind)
    csr = CSR if kind == "p256" else der(make_csr(key))
    msg = build_full_pki_request(csr, key, transaction_id=4711, sender_nonce=b"\x01" * 16,
                                 identification="device-7")
    req = decode_full_pki_request(msg)
    assert req.verified
    assert [(r.body_part_id, r.csr_der) for r in req.requests] == [(1, csr)]
    assert (req.transaction_id, req.sender_nonce, req.identification) == (4711, b"\x01" * 16, "device-7")
    assert req.signing_request_id == 1 and req.signer_certificate is None
    assert req.unknown_controls == () and req.other_requests == ()
    view = req.signed.signers[0]
    # RFC 5272 3.2.1.3.1: SKI form, value = the request's key identifier.
    assert view.subject_key_identifier == x509.SubjectKeyIdentifier.from_public_key(
        key.public_key()).digest  # type: ignore[arg-type]


def test_request_uses_csr_ski_extension() -> None:
    ski = x509.SubjectKeyIdentifier(b"\xAB" * 20)
    csr = x509.CertificateSigningRequestBuilder().subject_name(name("ski")).add_extension(
        ski, critical=False).sign(KEY, hashes.SHA256())  # type: ignore[arg-type]
    msg = build_full_pki_request(der(csr), KEY)
    req = decode_full_pki_request(msg)
    assert req.signed.signers[0].subject_key_identifier == b"\xAB" * 20
    assert req.signing_request_id == 1


def test_request_signed_with_existing_certificate() -> None:
    msg = build_full_pki_request(CSR, OLD_KEY, signer_cert=OLD_CERT, body_part_id=9,
                                 certificates=[CA_CERT])
    req = decode_full_pki_request(msg)
    assert req.signer_certificate == OLD_CERT
    assert req.signing_request_id is None
    assert req.requests[0].body_part_id == 9
    assert set(req.signed.certificates) == {OLD_CERT, CA_CERT}


@given(
    transaction_id=st.none() | st.integers(-(2**80), 2**80),
    nonce=st.none() | st.binary(max_size=64),
    bpid=st.integers(1, 2**32 - 1),
    ident=st.none() | st.text(max_size=40),
    rand=st.none() | st.binary(min_size=1, max_size=80),
)
def test_request_hypothesis_round_trip(transaction_id: int | None, nonce: bytes | None, bpid: int,
                                       ident: str | None, rand: bytes | None) -> None:
    msg = build_full_pki_request(CSR, KEY, body_part_id=bpid, transaction_id=transaction_id,
                                 sender_nonce=nonce, identification=ident, pop_link_random=rand)
    req = decode_full_pki_request(msg)
    assert req.requests[0].body_part_id == bpid and req.requests[0].csr_der == CSR
    assert req.transaction_id == transaction_id
    assert req.sender_nonce == nonce
    assert req.identification == ident
    assert req.pop_link_random == rand
    ids = [c.body_part_id for c in req.unknown_controls] + [bpid]
    assert len(set(ids)) == len(ids)


def test_request_typed_witness_controls_and_unknown() -> None:
    alg = asn1_cmc.AnyAlgorithmIdentifier({"algorithm": "2.16.840.1.101.3.4.2.1"})
    mac = asn1_cmc.AnyAlgorithmIdentifier({"algorithm": "1.2.840.113549.2.9", "parameters": core.Null()})
    plw = asn1_cmc.PopLinkWitnessV2({"key_gen_algorithm": alg, "mac_algorithm": mac, "witness": b"W" * 32})
    ipv = asn1_cmc.IdentifyProofV2({"proof_alg_id": alg, "mac_alg_id": mac, "witness": b"P" * 32})
    msg = build_full_pki_request(CSR, KEY, extra_controls=[
        ("1.3.6.1.5.5.7.7.33", [plw.dump()]),
        ("1.3.6.1.5.5.7.7.34", [ipv.dump()]),
        ("1.2.3.4.5", [b"\x05\x00", b"\x02\x01\x05"]),
    ])
    req = decode_full_pki_request(msg)
    assert req.pop_link_witness_v2 is not None and req.pop_link_witness_v2.witness == b"W" * 32
    assert req.pop_link_witness_v2.key_gen_algorithm == alg.dump()
    assert req.identity_proof_v2 is not None and req.identity_proof_v2.witness == b"P" * 32
    assert req.identity_proof_v2.mac_algorithm == mac.dump()
    [unknown] = req.unknown_controls
    assert unknown.oid == "1.2.3.4.5" and set(unknown.values) == {b"\x05\x00", b"\x02\x01\x05"}


def _csr_with_witness(witness: bytes) -> bytes:
    """A PKCS#10 carrying an id-cmc-popLinkWitnessV2 attribute (RFC 5272 6.3.1.1)."""
    plw = asn1_cmc.PopLinkWitnessV2({
        "key_gen_algorithm": {"algorithm": "2.16.840.1.101.3.4.2.1"},
        "mac_algorithm": {"algorithm": "1.2.840.113549.2.9"},
        "witness": witness,
    })
    base = asn1_csr.CertificationRequest.load(CSR)["certification_request_info"]
    info = asn1_csr.CertificationRequestInfo({
        "version": "v1", "subject": base["subject"], "subject_pk_info": base["subject_pk_info"],
        "attributes": [asn1_csr.CRIAttribute({
            "type": "1.3.6.1.5.5.7.7.33",
            "values": asn1_cmc.cms.SetOfAny([core.Any.load(plw.dump())])})],
    })
    assert isinstance(KEY, ec.EllipticCurvePrivateKey)
    sig = KEY.sign(info.dump(), ec.ECDSA(hashes.SHA256()))
    return bytes(asn1_csr.CertificationRequest({
        "certification_request_info": info,
        "signature_algorithm": {"algorithm": "sha256_ecdsa"},
        "signature": sig,
    }).dump())


def test_pop_link_witness_v2_in_csr_attributes() -> None:
    csr = _csr_with_witness(b"\x42" * 32)
    x509.load_der_x509_csr(csr).is_signature_valid  # noqa: B018 - a real, parsable CSR
    req = decode_full_pki_request(build_full_pki_request(csr, KEY, pop_link_random=b"R" * 64))
    assert req.requests[0].pop_link_witness_v2 is not None
    assert req.requests[0].pop_link_witness_v2.witness == b"\x42" * 32
    assert req.pop_link_random == b"R" * 64


def test_request_bad_arguments() -> None:
    with pytest.raises(LocalProtocolError):
        build_full_pki_request(CSR, OLD_KEY)  # not the CSR key, no certificate
    with pytest.raises(LocalProtocolError):
        build_full_pki_request(b"junk", KEY)
    with pytest.raises(LocalProtocolError):
        build_full_pki_request(CSR, KEY, body_part_id=0)
    with pytest.raises(LocalProtocolError):
        build_full_pki_request(CSR, KEY, body_part_id=2**32)


def test_request_tampered_signature() -> None:
    msg = bytearray(build_full_pki_request(CSR, KEY, transaction_id=1))
    sig = parse_signed_data(bytes(msg)).signers[0].signature
    pos = bytes(msg).index(sig)
    msg[pos + len(sig) - 2] ^= 0x40
    with pytest.raises(BadSignature):
        decode_full_pki_request(bytes(msg))
    decode_full_pki_request(bytes(msg), verify=False)


def test_request_signed_by_a_stranger_with_the_csr_ski() -> None:
    ski = x509.SubjectKeyIdentifier.from_public_key(KEY.public_key()).digest  # type: ignore[arg-type]
    data = _pki_data([], [_tcr(1)])
    msg = build_signed_data(ID_CCT_PKI_DATA, data, OLD_KEY, subject_key_identifier=ski)
    with pytest.raises(BadSignature):
        decode_full_pki_request(msg)
    # An SKI that names no request and no certificate.
    msg = build_signed_data(ID_CCT_PKI_DATA, data, OLD_KEY)
    with pytest.raises(BadSignature, match="matches no"):
        decode_full_pki_request(msg)


def test_unsigned_request() -> None:
    msg = build_signed_data(ID_CCT_PKI_DATA, _pki_data([], [_tcr(1)]), None)
    with pytest.raises(BadSignature, match="not signed"):
        decode_full_pki_request(msg)
    assert not decode_full_pki_request(msg, verify=False).verified


def test_duplicate_body_part_ids() -> None:
    data = _pki_data([_ctl(1, "1.3.6.1.5.5.7.7.5", core.Integer(3))], [_tcr(1)])
    with pytest.raises(DecodeError, match="used twice"):
        decode_full_pki_request(_sign_pki_data(data))
    data = _pki_data([], [_tcr(5), _tcr(5)])
    with pytest.raises(DecodeError, match="used twice"):
        decode_full_pki_request(_sign_pki_data(data))


def test_body_part_references() -> None:
    batch = asn1_cmc.BodyPartList([7])
    bad = _pki_data([_ctl(2, "1.3.6.1.5.5.7.7.28", batch)], [_tcr(1)])
    with pytest.raises(DecodeError, match="does not exist"):
        decode_full_pki_request(_sign_pki_data(bad))
    inner = build_full_pki_request(CSR, KEY)
    tci = asn1_cmc.TaggedContentInfo({"body_part_id": 7,
                                      "content_info": asn1_cmc.cms.ContentInfo.load(inner)})
    good = _pki_data([_ctl(2, "1.3.6.1.5.5.7.7.28", batch)], [_tcr(1)], [tci])
    req = decode_full_pki_request(_sign_pki_data(good))
    assert req.cms_sequence == ((7, inner),)
    assert [c.oid for c in req.unknown_controls] == ["1.3.6.1.5.5.7.7.28"]


def test_duplicate_singleton_control_and_status_in_request() -> None:
    data = _pki_data([_ctl(2, "1.3.6.1.5.5.7.7.5", core.Integer(3)),
                      _ctl(3, "1.3.6.1.5.5.7.7.5", core.Integer(4))], [_tcr(1)])
    with pytest.raises(DecodeError, match="twice"):
        decode_full_pki_request(_sign_pki_data(data))
    data = _pki_data([asn1_cmc.TaggedAttribute({
        "body_part_id": 2, "attr_type": "1.3.6.1.5.5.7.7.5",
        "attr_values": [core.Integer(3), core.Integer(4)]})], [_tcr(1)])
    with pytest.raises(DecodeError, match="exactly one"):
        decode_full_pki_request(_sign_pki_data(data))


def test_response_is_not_a_request() -> None:
    with pytest.raises(DecodeError, match="expected"):
        decode_full_pki_request(build_full_pki_response_failed(CMCFailInfo.BAD_REQUEST))
    with pytest.raises(DecodeError, match="expected"):
        decode_full_pki_response(build_full_pki_request(CSR, KEY))


def test_crm_and_orm_kept_opaque() -> None:
    cert_req = asn1_cmc.CertReqMsg({"cert_req": asn1_cmc.CertRequest({
        "cert_req_id": 3, "cert_template": core.Any.load(b"\x30\x00")})})
    orm = asn1_cmc.OtherRequestMsg({"body_part_id": 4, "request_message_type": "1.2.3",
                                    "request_message_value": core.Any.load(b"\x05\x00")})
    data = _pki_data([], [_tcr(1), asn1_cmc.TaggedRequest(name="crm", value=cert_req),
                          asn1_cmc.TaggedRequest(name="orm", value=orm)])
    req = decode_full_pki_request(_sign_pki_data(data))
    assert [(o.kind, o.body_part_id) for o in req.other_requests] == [("crm", 3), ("orm", 4)]
    assert req.other_requests[0].der == cert_req.dump()
    assert req.other_requests[1].der == orm.dump()


# ---------------------------------------------------------------- responses

def test_response_success_signed() -> None:
    msg = build_full_pki_response_success([LEAF, CA_CERT], body_part_ids=(1,), signer_key=CA_KEY,
                                          signer_cert=CA_CERT, transaction_id=99,
                                          recipient_nonce=b"nonce", sender_nonce=b"s")
    resp = decode_full_pki_response(msg, request_body_part_ids={1})
    assert resp.status is CMCStatus.SUCCESS and resp.fail_info is None and resp.pend_info is None
    assert resp.body_list == (1,)
    assert set(resp.certificates) == {LEAF, CA_CERT}
    assert (resp.transaction_id, resp.recipient_nonce, resp.sender_nonce) == (99, b"nonce", b"s")
    assert resp.verified
    with pytest.raises(DecodeError, match="does not have"):
        decode_full_pki_response(msg, request_body_part_ids={2})


def test_response_unsigned() -> None:
    resp = decode_full_pki_response(build_full_pki_response_success([LEAF]))
    assert resp.signed.signers == () and not resp.verified
    assert resp.certificates == (LEAF,)


def test_response_tampered_signature() -> None:
    msg = build_full_pki_response_failed(CMCFailInfo.BAD_IDENTITY, signer_key=CA_KEY,
                                         signer_cert=CA_CERT, status_string="who are you")
    bad = msg.replace(b"who are you", b"who are yoU")
    with pytest.raises(BadSignature):
        decode_full_pki_response(bad)
    assert decode_full_pki_response(bad, verify=False).status_string == "who are yoU"


@given(
    fail=st.sampled_from(list(CMCFailInfo)),
    ids=st.lists(st.integers(1, 2**32 - 1) | st.lists(st.integers(1, 2**32 - 1), min_size=1,
                                                       max_size=3).map(tuple), min_size=1, max_size=4),
    text=st.none() | st.text(max_size=60),
    transaction_id=st.none() | st.integers(0, 2**64),
)
def test_response_failed_hypothesis(fail: CMCFailInfo, ids: list[Any], text: str | None,
                                    transaction_id: int | None) -> None:
    msg = build_full_pki_response_failed(fail, body_part_ids=ids, status_string=text,
                                         transaction_id=transaction_id)
    resp = decode_full_pki_response(msg)
    assert resp.status is CMCStatus.FAILED and resp.fail_info is fail
    assert resp.pend_info is None and resp.extended_fail_info is None
    assert resp.body_list == tuple(ids) and resp.status_string == text
    assert resp.transaction_id == transaction_id


@given(
    token=st.binary(max_size=64),
    when=st.datetimes(min_value=datetime.datetime(1950, 1, 1), max_value=datetime.datetime(9999, 1, 1),
                      timezones=st.just(UTC)),
    nonce=st.none() | st.binary(max_size=32),
)
def test_response_pending_hypothesis(token: bytes, when: datetime.datetime, nonce: bytes | None) -> None:
    resp = decode_full_pki_response(build_full_pki_response_pending(token, when, recipient_nonce=nonce))
    assert resp.status is CMCStatus.PENDING and resp.fail_info is None
    assert resp.pend_info == PendInfo(token, when)
    assert resp.recipient_nonce == nonce


def test_pending_time_converted_to_utc() -> None:
    cet = datetime.timezone(datetime.timedelta(hours=1))
    when = datetime.datetime(2030, 5, 6, 7, 8, 9, tzinfo=cet)
    resp = decode_full_pki_response(build_full_pki_response_pending(b"t", when))
    assert resp.pend_info is not None and resp.pend_info.time == when
    with pytest.raises(LocalProtocolError):
        build_full_pki_response_pending(b"t", datetime.datetime(2030, 1, 1))


def test_other_info_alternatives_decode_by_content() -> None:
    """failInfo vs pendInfo vs extendedFailInfo (two untagged SEQUENCEs)."""
    when = datetime.datetime(2031, 2, 3, 4, 5, 6, tzinfo=UTC)
    ext = ExtendedFailInfo("1.3.6.1.4.1.99999.1", b"\x0c\x03abc")
    msg = build_full_pki_response([
        StatusInfo(CMCStatus.FAILED, (1,), fail_info=CMCFailInfo.POP_FAILED),
        StatusInfo(CMCStatus.PARTIAL, (2,), pend_info=PendInfo(b"tok", when)),
        StatusInfo(CMCStatus.FAILED, ((3, 4),), extended_fail_info=ext),
        StatusInfo(CMCStatus.NO_SUPPORT, (5,), "plain"),
    ])
    resp = decode_full_pki_response(msg)
    first, second, third, fourth = resp.statuses
    assert (first.fail_info, first.pend_info, first.extended_fail_info) == (CMCFailInfo.POP_FAILED, None, None)
    assert (second.fail_info, second.pend_info, second.extended_fail_info) == (None, PendInfo(b"tok", when), None)
    assert (third.fail_info, third.pend_info, third.extended_fail_info) == (None, None, ext)
    assert third.body_list == ((3, 4),)
    assert (fourth.status, fourth.status_string, fourth.fail_info) == (CMCStatus.NO_SUPPORT, "plain", None)
    assert resp.status is CMCStatus.FAILED and resp.fail_info is CMCFailInfo.POP_FAILED
    # And the raw classifier on the three encodings.
    assert asn1_cmc.classify_other_info(core.Any.load(b"\x02\x01\x09"))[0] == "fail_info"
    assert asn1_cmc.classify_other_info(core.Any.load(
        asn1_cmc.PendInfo({"pend_token": b"", "pend_time": when}).dump()))[0] == "pend_info"
    assert asn1_cmc.classify_other_info(core.Any.load(
        asn1_cmc.ExtendedFailInfo({"fail_info_oid": "1.2.3", "fail_info_value": core.Any.load(b"\x05\x00")}).dump()
    ))[0] == "extended_fail_info"
    with pytest.raises(ValueError):
        asn1_cmc.classify_other_info(core.Any.load(b"\x30\x03\x01\x01\xff"))


def test_status_v1_and_missing_status() -> None:
    v1 = asn1_cmc.CMCStatusInfo({"cmc_status": 3, "body_list": [1], "other_info": asn1_cmc.CMCStatusInfo._OtherInfo(
        name="pend_info", value={"pend_token": b"p", "pend_time": datetime.datetime(2030, 1, 1, tzinfo=UTC)})})
    body = asn1_cmc.PKIResponse({"control_sequence": [_ctl(1, "1.3.6.1.5.5.7.7.1", v1)],
                                 "cms_sequence": [], "other_msg_sequence": []})
    resp = decode_full_pki_response(build_signed_data(ID_CCT_PKI_RESPONSE, body.dump(), None))
    assert resp.status is CMCStatus.PENDING and resp.pend_info is not None and resp.pend_info.token == b"p"
    empty = asn1_cmc.PKIResponse({"control_sequence": [], "cms_sequence": [], "other_msg_sequence": []})
    msg = build_signed_data(ID_CCT_PKI_RESPONSE, empty.dump(), None, certificates=[LEAF])
    with pytest.raises(DecodeError, match="no statusInfoV2"):
        decode_full_pki_response(msg)
    assert decode_full_pki_response(msg, lenient=True).status is CMCStatus.SUCCESS


def test_unknown_status_and_fail_info_values() -> None:
    for status, other in ((1, None), (2, core.Integer(14))):
        fields: dict[str, Any] = {"cmc_status": status, "body_list": [
            asn1_cmc.BodyPartReference(name="body_part_id", value=1)]}
        if other is not None:
            fields["other_info"] = other
        body = asn1_cmc.PKIResponse({
            "control_sequence": [_ctl(1, "1.3.6.1.5.5.7.7.25", asn1_cmc.CMCStatusInfoV2(fields))],
            "cms_sequence": [], "other_msg_sequence": []})
        with pytest.raises(DecodeError, match="unknown"):
            decode_full_pki_response(build_signed_data(ID_CCT_PKI_RESPONSE, body.dump(), None))


def test_response_bad_arguments() -> None:
    with pytest.raises(LocalProtocolError):
        build_full_pki_response(StatusInfo(CMCStatus.SUCCESS, ()))
    with pytest.raises(LocalProtocolError):
        build_full_pki_response(StatusInfo(CMCStatus.SUCCESS, (1,), fail_info=CMCFailInfo.BAD_ALG))
    with pytest.raises(LocalProtocolError):
        build_full_pki_response(StatusInfo(CMCStatus.FAILED, (1,), pend_info=PendInfo(b"", datetime.datetime.now(UTC))))
    with pytest.raises(LocalProtocolError):
        build_full_pki_response_failed(CMCFailInfo.BAD_ALG, body_part_ids=(0,))
    with pytest.raises(LocalProtocolError):
        build_full_pki_response_success([], signer_cert=CA_CERT)


def test_bare_signeddata_vector() -> None:
    raw = vector_der("cmc-pkiresponse-failed-bare-signeddata.b64")
    with pytest.raises(DecodeError, match="ContentInfo"):
        decode_full_pki_response(raw)
    resp = decode_full_pki_response(raw, lenient=True)
    assert resp.status is CMCStatus.FAILED
    assert resp.body_list == (1,)
    assert resp.fail_info is CMCFailInfo.BAD_IDENTITY
    assert resp.certificates == () and not resp.verified


def test_size_limit() -> None:
    msg = build_full_pki_request(CSR, KEY)
    with pytest.raises(MessageTooLarge):
        decode_full_pki_request(msg, max_size=len(msg) - 1)
    with pytest.raises(MessageTooLarge):
        decode_full_pki_response(build_full_pki_response_success([LEAF]), max_size=10)


# ---------------------------------------------------------------- hostile input

REQUEST = build_full_pki_request(CSR, KEY, transaction_id=5, sender_nonce=b"n" * 16)
RESPONSES = [
    build_full_pki_response_success([LEAF], signer_key=CA_KEY, signer_cert=CA_CERT, transaction_id=5),
    build_full_pki_response_pending(b"tok", datetime.datetime(2030, 1, 1, tzinfo=UTC)),
    build_full_pki_response([StatusInfo(CMCStatus.FAILED, ((1, 2),),
                                        extended_fail_info=ExtendedFailInfo("1.2.3", b"\x05\x00"))]),
]


def _only_decode_error(data: bytes) -> None:
    for decode in (decode_full_pki_request, decode_full_pki_response):
        for lenient in (False, True):
            try:
                decode(data, lenient=lenient)
            except DecodeError:
                pass


@given(st.binary(max_size=300))
def test_garbage(data: bytes) -> None:
    _only_decode_error(data)


@pytest.mark.parametrize("msg", [REQUEST, *RESPONSES])
def test_truncated(msg: bytes) -> None:
    for n in range(len(msg)):
        for decode in (decode_full_pki_request, decode_full_pki_response):
            with pytest.raises(DecodeError):
                decode(msg[:n])  # type: ignore[operator]


@given(st.data())
def test_bit_flips(data: st.DataObject) -> None:
    msg = bytearray(data.draw(st.sampled_from([REQUEST, *RESPONSES])))
    for _ in range(data.draw(st.integers(1, 3))):
        msg[data.draw(st.integers(0, len(msg) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    _only_decode_error(bytes(msg))


@given(st.binary(min_size=1, max_size=60))
def test_garbage_pkidata_inside_valid_signature(junk: bytes) -> None:
    """Signed but malformed PKIData/PKIResponse: only DecodeError."""
    for oid, decode in ((ID_CCT_PKI_DATA, decode_full_pki_request),
                        (ID_CCT_PKI_RESPONSE, decode_full_pki_response)):
        msg = build_signed_data(oid, b"\x30" + bytes([len(junk)]) + junk, KEY)
        try:
            decode(msg)  # type: ignore[operator]
        except DecodeError:
            pass


# ---------------------------------------------------------------- openssl

def _write(tmp_path: Path, name_: str, data: bytes) -> str:
    (tmp_path / name_).write_bytes(data)
    return str(tmp_path / name_)


def _self_signed_for(key: Any) -> x509.Certificate:
    """A cert for KEY whose SKI equals the method-1 SKI, so openssl can find the SKI signer."""
    now = datetime.datetime.now(UTC)
    return (x509.CertificateBuilder().subject_name(name("k")).issuer_name(name("k"))
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, sign_hash(key)))  # type: ignore[arg-type]


def test_openssl_verifies_request(openssl: str, tmp_path: Path) -> None:
    msg = build_full_pki_request(CSR, KEY, transaction_id=1234, sender_nonce=b"x" * 16)
    path = _write(tmp_path, "req.der", msg)
    cert = _write(tmp_path, "k.pem", pem(_self_signed_for(KEY)))
    out = tmp_path / "content"
    result = subprocess.run([openssl, "cms", "-verify", "-noverify", "-inform", "DER", "-in", path,
                             "-certfile", cert, "-out", str(out)], capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
    req = decode_full_pki_request(msg)
    assert out.read_bytes() == req.pki_data
    dump = subprocess.run([openssl, "asn1parse", "-inform", "DER", "-in", path],
                          capture_output=True, check=True, text=True).stdout
    assert "id-cct-PKIData" in dump or "1.3.6.1.5.5.7.12.2" in dump
    # The PKIData itself: the transactionId control and the PKCS#10 inside.
    inner = subprocess.run([openssl, "asn1parse", "-inform", "DER", "-in", str(out)],
                           capture_output=True, check=True, text=True).stdout
    assert ("1.3.6.1.5.5.7.7.5" in inner or "transactionId" in inner) and ":04D2" in inner.upper()


def test_openssl_verifies_response(openssl: str, tmp_path: Path) -> None:
    msg = build_full_pki_response_success([LEAF], signer_key=CA_KEY, signer_cert=CA_CERT, transaction_id=3)
    path = _write(tmp_path, "resp.der", msg)
    ca = _write(tmp_path, "ca.pem", pem(CA_CERT))
    out = tmp_path / "content"
    result = subprocess.run([openssl, "cms", "-verify", "-inform", "DER", "-in", path, "-CAfile", ca,
                             "-purpose", "any", "-out", str(out)], capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
    assert out.read_bytes() == decode_full_pki_response(msg).pki_response
    dump = subprocess.run([openssl, "asn1parse", "-inform", "DER", "-in", path],
                          capture_output=True, check=True, text=True).stdout
    assert "id-cct-PKIResponse" in dump or "1.3.6.1.5.5.7.12.3" in dump
    certs = subprocess.run([openssl, "pkcs7", "-inform", "DER", "-in", path, "-print_certs"],
                           capture_output=True, text=True)
    if certs.returncode == 0:
        assert "cmc-device" in certs.stdout


def test_we_decode_openssl_signed_pkidata(openssl: str, tmp_path: Path) -> None:
    """openssl signs our PKIData with -econtent_type id-cct-PKIData; we verify it."""
    data = _pki_data([_ctl(2, "1.3.6.1.5.5.7.7.5", core.Integer(77))], [_tcr(1)])
    content = _write(tmp_path, "pkidata.der", data)
    key = _write(tmp_path, "k.pem", OLD_KEY.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cert = _write(tmp_path, "c.pem", pem(OLD_CERT))
    out = tmp_path / "signed.der"
    subprocess.run([openssl, "cms", "-sign", "-nodetach", "-binary", "-outform", "DER",
                    "-econtent_type", "1.3.6.1.5.5.7.12.2", "-in", content, "-signer", cert,
                    "-inkey", key, "-out", str(out)], check=True, capture_output=True)
    req = decode_full_pki_request(out.read_bytes())
    assert req.signer_certificate == OLD_CERT
    assert req.transaction_id == 77 and req.requests[0].csr_der == CSR
    assert req.pki_data == data


def test_request_csr_with_unknown_curve_is_decode_error() -> None:
    """cryptography raises UnsupportedAlgorithm (not ValueError): found by fuzzing."""
    prime256v1 = bytes.fromhex("06082a8648ce3d030107")
    assert prime256v1 in REQUEST
    bad = REQUEST.replace(prime256v1, bytes.fromhex("06082a8648ce3d030199"))
    with pytest.raises(DecodeError):
        decode_full_pki_request(bad)
    with pytest.raises(LocalProtocolError):
        build_full_pki_request(CSR.replace(prime256v1, bytes.fromhex("06082a8648ce3d030199")), KEY)
