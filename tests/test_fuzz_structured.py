"""Structure-aware fuzz tests of the decoders, bounded for the normal suite (issue 6).

Random bytes rarely get past a DER decoder's first check; these tests start
from valid messages (tests/fuzz/_seeds.py) and change one thing, so every
decoder is pushed down its deep paths. The invariant is the codecs' error
rule: a successful decode or :class:`~estproto.DecodeError`, never another
exception. Where the right answer is known, it is asserted too.

* valid DER with one TLV's content replaced (lengths re-encoded): CSR,
  certs-only, csrattrs, CMC request and response;
* a CSR re-encoded with a changed version, extension or attribute value and
  re-signed, so the change is seen past the signature check;
* truncated base64;
* multipart with extra parts, missing parts, a duplicated or wrong boundary;
* CMC with wrong body part references (batchRequests, status bodyList);
* certs-only with garbage certificates.

The atheris harnesses in tests/fuzz/ run the same decoders for hours;
inputs they found that broke the invariant are pinned here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from asn1crypto import core
from asn1crypto import csr as asn1_csr
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from estproto import DecodeError
from estproto.codecs import cmc, csrattrs, mediatype, multipart, pkcs7, pkcs10, serverkey, transfer

sys.path.insert(0, str(Path(__file__).parent / "fuzz"))
import _seeds  # noqa: E402
import pki  # noqa: E402

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SEEDS = _seeds.codec_seeds()
DER = _seeds.der_seeds()


def decodes_or_decode_error(fn: Callable[[], Any]) -> Any:
    """Run *fn*; DecodeError is fine (returns None), anything else propagates."""
    try:
        return fn()
    except DecodeError:
        return None


# ---------------------------------------------------------------------------
# A small DER tree: parse, replace one node's content, re-encode


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _parse(data: bytes) -> list[Any]:
    """[(header_tag_bytes, constructed, children_or_content)], definite lengths only."""
    nodes = []
    pos = 0
    while pos < len(data):
        start = pos
        tag = data[pos]
        pos += 1
        if tag & 0x1F == 0x1F:
            while data[pos] & 0x80:
                pos += 1
            pos += 1
        tag_bytes = data[start:pos]
        first = data[pos]
        pos += 1
        if first < 0x80:
            length = first
        else:
            n = first & 0x7F
            length = int.from_bytes(data[pos : pos + n], "big")
            pos += n
        content = data[pos : pos + length]
        pos += length
        constructed = bool(tag & 0x20)
        nodes.append([tag_bytes, constructed, _parse(content) if constructed else content])
    return nodes


def _encode(nodes: list[Any]) -> bytes:
    out = b""
    for tag_bytes, constructed, value in nodes:
        content = _encode(value) if constructed else value
        out += tag_bytes + _length(len(content)) + content
    return out


def _all_nodes(nodes: list[Any], acc: list[list[Any]]) -> list[list[Any]]:
    for node in nodes:
        acc.append(node)
        if node[1]:
            _all_nodes(node[2], acc)
    return acc


def replace_one_tlv(der: bytes, index: int, content: bytes, keep_tag: bool, new_tag: int) -> bytes:
    tree = _parse(der)
    nodes = _all_nodes(tree, [])
    node = nodes[index % len(nodes)]
    node[1] = False
    node[2] = content
    if not keep_tag:
        node[0] = bytes([new_tag & 0xDF])  # primitive, any class
    return _encode(tree)


DECODERS: dict[str, Callable[[bytes], Any]] = {
    "csr": pkcs10.decode_csr,
    "certs_only": pkcs7.decode_certs_only,
    "csrattrs": csrattrs.decode_csrattrs,
    "cmc_request": cmc.decode_full_pki_request,
    "cmc_response": lambda d: cmc.decode_full_pki_response(d, lenient=True),
}


@pytest.mark.parametrize("kind", sorted(DECODERS))
def test_seeds_decode(kind: str) -> None:
    DECODERS[kind](DER[kind])  # the starting points are valid


@pytest.mark.parametrize("kind", sorted(DECODERS))
@FAST
@given(index=st.integers(0, 10_000), content=st.binary(max_size=40), keep_tag=st.booleans(),
       new_tag=st.integers(0, 255))
def test_one_tlv_changed(kind: str, index: int, content: bytes, keep_tag: bool, new_tag: int) -> None:
    mutated = replace_one_tlv(DER[kind], index, content, keep_tag, new_tag)
    decodes_or_decode_error(lambda: DECODERS[kind](mutated))


# ---------------------------------------------------------------------------
# A CSR changed in one field and re-signed


def _resign(info: Any, key: ec.EllipticCurvePrivateKey) -> bytes:
    info_der = bytes(info.dump())
    signature = key.sign(info_der, ec.ECDSA(hashes.SHA256()))
    alg = bytes.fromhex("300a06082a8648ce3d040302")
    bits = b"\x03" + _length(len(signature) + 1) + b"\x00" + signature
    body = info_der + alg + bits
    return b"\x30" + _length(len(body)) + body


def _info() -> Any:
    return asn1_csr.CertificationRequest.load(DER["csr"])["certification_request_info"].copy()


def test_resigned_unchanged_csr_decodes() -> None:
    key = _seeds.material().device_key
    csr = pkcs10.decode_csr(_resign(_info(), key))  # type: ignore[arg-type]
    assert csr.challenge_password == "AAAAbindingAAAA"


@FAST
@given(version=st.integers(-5, 2**70))
def test_csr_with_another_version_is_refused(version: int) -> None:
    info = _info()
    info["version"] = version
    der = _resign(info, _seeds.material().device_key)  # type: ignore[arg-type]
    if version == 0:
        pkcs10.decode_csr(der)
    else:
        with pytest.raises(DecodeError):
            pkcs10.decode_csr(der)


def _sign_info_der(info_der: bytes) -> bytes:
    """A CertificationRequest around *info_der*, signed by the seed key (ECDSA-SHA256)."""
    key = _seeds.material().device_key
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    signature = key.sign(info_der, ec.ECDSA(hashes.SHA256()))
    alg = bytes.fromhex("300a06082a8648ce3d040302")
    bits = b"\x03" + _length(len(signature) + 1) + b"\x00" + signature
    body = info_der + alg + bits
    return b"\x30" + _length(len(body)) + body


@FAST
@given(which=st.integers(0, 100), value=st.binary(max_size=60), wrap=st.sampled_from(
    ["raw", "octets", "utf8", "empty-set", "two-values"]))
def test_csr_with_one_attribute_value_changed(which: int, value: bytes, wrap: str) -> None:
    info_der = _info().dump()
    tree = _parse(info_der)
    fields = tree[0][2]  # version, subject, spki, [0] attributes
    attributes = fields[3][2]
    attribute = attributes[which % len(attributes)]  # SEQUENCE { type, SET OF values }
    values = attribute[2][1]
    octets = b"\x04" + _length(len(value)) + value
    values[2] = {
        "raw": [[b"\x04", False, value]] if not _is_one_tlv(value) else _parse(value),
        "octets": [[b"\x04", False, value]],
        "utf8": [[b"\x0c", False, value]],
        "empty-set": [],
        "two-values": _parse(octets) + _parse(octets),
    }[wrap]
    der = _sign_info_der(_encode(tree))
    decodes_or_decode_error(lambda: pkcs10.decode_csr(der))


@FAST
@given(value=st.binary(max_size=80), critical=st.booleans(),
       oid=st.sampled_from(["2.5.29.17", "2.5.29.15", "2.5.29.19", "1.2.3.4", "2.5.29.37"]))
def test_csr_with_one_extension_value_changed(value: bytes, critical: bool, oid: str) -> None:
    key = _seeds.material().device_key
    try:
        der = pkcs10.build_csr(key, pki.name("device"),
                               extensions=[pkcs10.RequestedExtension(oid, critical, value)])
    except Exception:
        return  # the builder refused it: nothing to decode
    csr = decodes_or_decode_error(lambda: pkcs10.decode_csr(der))
    if csr is not None:
        ext = csr.get_extension(oid)
        assert ext is not None and ext.value_der == value and ext.critical is critical


def _is_one_tlv(raw: bytes) -> bool:
    try:
        core.Any.load(raw, strict=True).contents  # noqa: B018
    except Exception:
        return False
    return True


# ---------------------------------------------------------------------------
# base64


@FAST
@given(cut=st.integers(0, 10_000), lenient=st.booleans())
def test_truncated_base64(cut: int, lenient: bool) -> None:
    text = transfer.encode_base64(DER["csr"], transfer.WRAP_64)
    cut %= len(text)
    der = decodes_or_decode_error(lambda: transfer.decode_base64(text[:cut], lenient=lenient))
    if der is not None:
        assert DER["csr"].startswith(der[: len(der) - 2])
        with pytest.raises(DecodeError):
            pkcs10.decode_csr(der)


# ---------------------------------------------------------------------------
# multipart


_KEY_PART = multipart.Part(
    (("Content-Type", "application/pkcs8"), ("Content-Transfer-Encoding", "base64")),
    transfer.encode_base64(SEEDS["decode_private_key"][0]),
)
_CERT_PART = multipart.Part(
    (("Content-Type", "application/pkcs7-mime; smime-type=certs-only"),),
    transfer.encode_base64(DER["certs_only"]),
)

_extra_parts = st.builds(
    lambda ctype, body: multipart.Part((("Content-Type", ctype),) if ctype else (), body),
    st.sampled_from(["text/plain", "application/octet-stream", "", "application/pkcs7-mime",
                     "application/pkcs8", "application/pkcs7-mime; smime-type=certs-only"]),
    st.binary(max_size=30).map(lambda b: transfer.encode_base64(b) if b else b"x"),
)


@FAST
@given(with_key=st.booleans(), with_cert=st.booleans(), extras=st.lists(_extra_parts, max_size=4),
       order=st.randoms(use_true_random=False), damage=st.sampled_from(
           ["none", "duplicate-delimiter", "wrong-boundary", "no-close", "boundary-in-body"]))
def test_multipart_mutations(with_key: bool, with_cert: bool, extras: list[multipart.Part],
                             order: Any, damage: str) -> None:
    parts = ([_KEY_PART] if with_key else []) + ([_CERT_PART] if with_cert else []) + extras
    if not parts:
        parts = [multipart.Part((("Content-Type", "text/plain"),), b"x")]
    order.shuffle(parts)
    mt, body = multipart.build_multipart(parts, boundary="estb")
    if damage == "duplicate-delimiter":
        body = body.replace(b"--estb\r\n", b"--estb\r\n--estb\r\n", 1)
    elif damage == "wrong-boundary":
        mt = mediatype.parse_media_type("multipart/mixed; boundary=other")
    elif damage == "no-close":
        body = body.replace(b"--estb--", b"")
    elif damage == "boundary-in-body":
        body = body.replace(b"\r\n\r\n", b"\r\n\r\n--estb\r\n", 1)
    result = decodes_or_decode_error(lambda: multipart.decode_serverkeygen_response(body, mt))
    typed_keys = sum(1 for p in extras if p.header("content-type") == "application/pkcs8")
    typed_certs = sum(1 for p in extras if p.header("content-type", ) ==
                      "application/pkcs7-mime; smime-type=certs-only")
    if damage in ("wrong-boundary",):
        assert result is None
    if damage == "none" and with_key and with_cert and typed_keys == 0 and typed_certs == 0:
        assert result is not None and result.key_der == SEEDS["decode_private_key"][0]
    if damage == "none" and not with_key and not with_cert:
        assert result is None or (typed_keys and typed_certs) or extras


# ---------------------------------------------------------------------------
# CMC body part references


def _body_part_list(refs: list[int]) -> bytes:
    return bytes(core.SequenceOf([core.Integer(r) for r in refs], spec=core.Integer).dump())


@FAST
@given(refs=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4), bpid=st.integers(1, 50))
def test_cmc_request_with_wrong_batch_references(refs: list[int], bpid: int) -> None:
    m = _seeds.material()
    csr_der = SEEDS["decode_csr"][1]
    der = cmc.build_full_pki_request(
        csr_der, m.device_key, body_part_id=bpid,  # type: ignore[arg-type]
        extra_controls=[("1.3.6.1.5.5.7.7.28", [_body_part_list(refs)])],
    )
    result = decodes_or_decode_error(lambda: cmc.decode_full_pki_request(der))
    if all(r in (0, bpid) for r in refs):
        assert result is not None
    # The only other ids in the request are the controls' (one control here,
    # numbered near the tcr's id): a reference far beyond them names nothing.
    if any(r > 100 for r in refs):
        assert result is None


@FAST
@given(refs=st.lists(st.integers(1, 2**32 - 1), min_size=1, max_size=4))
def test_cmc_response_with_wrong_status_references(refs: list[int]) -> None:
    der = cmc.build_full_pki_response_success([_seeds.material().device_cert], body_part_ids=refs)
    result = decodes_or_decode_error(lambda: cmc.decode_full_pki_response(der, request_body_part_ids=[1]))
    assert (result is not None) == all(r == 1 for r in refs)


# ---------------------------------------------------------------------------
# certs-only with garbage certificates


@FAST
@given(garbage=st.lists(st.binary(max_size=50), min_size=1, max_size=3), keep_good=st.booleans())
def test_certs_only_with_garbage_certificates(garbage: list[bytes], keep_good: bool) -> None:
    fakes = [b"\x30" + _length(len(g)) + g for g in garbage]
    good = [_seeds.material().device_cert] if keep_good else []
    der = pkcs7.encode_certs_only(good + fakes)  # type: ignore[operator]
    with pytest.raises(DecodeError):
        pkcs7.decode_certs_only(der)


# ---------------------------------------------------------------------------
# Inputs the atheris harnesses found


def test_found_lenient_private_key_attribute_error() -> None:
    data = bytes.fromhex(
        "30770201010 42c3b9f086f57c9b4a46799e5d8be364ebdafd50e404777 2e4126e8ebbde49b7629a00a06082a"
        "8648ce3d030 1a1074 4ffff00044a4ce8c24a149db6a2ac04ad32bc886ed85d9e0a4ad8dd2c5837be24a29205"
        "fb5760f4fbac a4618bd770f9747a5513e2235c3c5ad3752145 99942d2c35b1a398".replace(" ", ""))
    with pytest.raises(DecodeError):
        serverkey.decode_private_key(data, lenient=True)


def test_found_client_serverkeygen_certificate_with_invalid_key() -> None:
    from cryptography.hazmat.primitives import serialization

    from estproto import ClientConfig
    from estproto._events import ServerKeygen
    from estproto.client import ClientConnection

    m = _seeds.material()
    cert_der = m.device_cert.public_bytes(serialization.Encoding.DER)
    point = m.device_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    bad_cert = cert_der.replace(point, point[:-1] + bytes([point[-1] ^ 1]))
    assert bad_cert != cert_der
    _, body = multipart.encode_serverkeygen_response(
        serverkey.encode_private_key(m.device_key), pkcs7.encode_certs_only([bad_cert]), boundary="est")
    response = (b"HTTP/1.1 200 OK\r\nContent-Type: multipart/mixed; boundary=est\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)) + body
    client = ClientConnection(ClientConfig(tls=None, host="127.0.0.1"))
    client.send(ServerKeygen(csr=SEEDS["decode_csr"][1]))
    client.data_to_send()
    client.receive_data(response)
    with pytest.raises(DecodeError):
        client.next_event()


def _replay_client_finding(name: str) -> None:
    import fuzz_client

    fuzz_client.make_targets()["response"]((Path(__file__).parent / "fuzz" / "findings" / name).read_bytes())


def test_found_client_key_package_signer_with_invalid_key() -> None:
    _replay_client_finding("client-decrypt_key_package-invalid-signer-key.bin")


def test_found_client_serverkeygen_certificate_on_unknown_curve() -> None:
    _replay_client_finding("client-check_key_matches-unsupported-curve.bin")
