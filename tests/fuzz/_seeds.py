"""Valid EST messages the fuzzers (and tests/test_fuzz_structured.py) start from.

Built once per process from real keys and certificates (P-256, plus one
RSA-2048 key for key transport), so mutations begin at every codec's
success path: a verified CSR with every attribute estproto understands,
certs-only sets, csrattrs with templates, serverkeygen bodies (plain and
KEK-encrypted), signed CMC requests and responses, HTTP authentication
headers and media types.
"""

from __future__ import annotations

import base64
import datetime
import functools
import sys
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import pki  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

#: The KEK (and its DecryptKeyIdentifier) the encrypted serverkeygen seeds use.
KEK_ID = b"fuzz-kek-1"
KEK = bytes(range(32))


@dataclass(frozen=True)
class Material:
    """Keys and certificates shared by the seeds and the targets."""

    ca: x509.Certificate
    ca_key: pki.PrivateKey
    device_key: pki.PrivateKey
    device_cert: x509.Certificate
    rsa_key: rsa.RSAPrivateKey
    rsa_cert: x509.Certificate


@functools.lru_cache(maxsize=None)
def material() -> Material:
    ca, ca_key = pki.make_ca("Fuzz CA")
    device_key = pki.make_key("p256")
    device_cert = pki.issue(ca, ca_key, device_key.public_key(), "device")
    rsa_key = pki.make_key("rsa2048")
    assert isinstance(rsa_key, rsa.RSAPrivateKey)
    rsa_cert = pki.issue(ca, ca_key, rsa_key.public_key(), "rsa-recipient")
    return Material(ca, ca_key, device_key, device_cert, rsa_key, rsa_cert)


@functools.lru_cache(maxsize=None)
def codec_seeds() -> dict[str, list[bytes]]:
    """Seed inputs per codec target name (see fuzz_codecs.py)."""
    from estproto import auth
    from estproto.codecs import cmc, csrattrs, multipart, pkcs7, pkcs10, serverkey, transfer

    m = material()
    name = pki.name("device")
    csr_full = pkcs10.build_csr(
        m.device_key, name,
        subject_alt_names=[x509.DNSName("device.example"), x509.RFC822Name("d@example.org")],
        challenge_password="AAAAbindingAAAA", smime_capabilities=["2.16.840.1.101.3.4.1.45"],
        decrypt_key_identifier=KEK_ID,
    )
    csr_plain = pkcs10.build_csr(m.device_key, name)
    csr_rsa = pkcs10.build_csr(m.rsa_key, pki.name("rsa"), est_identity_linking="link")
    certs_one = pkcs7.encode_certs_only([m.device_cert])
    certs_many = pkcs7.encode_certs_only([m.device_cert, m.ca, m.rsa_cert])
    attrs = csrattrs.encode_csrattrs([
        csrattrs.RequiredOID(csrattrs.ID_CHALLENGE_PASSWORD),
        csrattrs.RequiredOID("1.2.840.10045.4.3.2"),
        csrattrs.RequestedAttribute(csrattrs.ID_EC_PUBLIC_KEY, (bytes.fromhex("06082a8648ce3d030107"),)),
    ])
    key_der = serverkey.encode_private_key(m.device_key)
    enveloped_kek = serverkey.encrypt_key_package(
        m.device_key, signer_key=m.ca_key, signer_cert=m.ca,
        recipient=serverkey.KEKRecipient(KEK_ID, KEK),
    )
    enveloped_rsa = serverkey.encrypt_key_package(
        m.device_key, signer_key=m.ca_key, signer_cert=m.ca,
        recipient=serverkey.KeyTransRecipient.from_certificate(m.rsa_cert),
    )
    mt_plain, body_plain = multipart.encode_serverkeygen_response(key_der, certs_one, boundary="est")
    mt_enc, body_enc = multipart.encode_serverkeygen_response(
        enveloped_kek, certs_one, key_encrypted=True, boundary="est", key_first=False,
    )
    cmc_request = cmc.build_full_pki_request(
        csr_plain, m.device_key, transaction_id=7, sender_nonce=b"nonce",
        identification="device", pop_link_random=b"r" * 16,
    )
    cmc_request_cert = cmc.build_full_pki_request(
        csr_plain, m.device_key, signer_cert=m.device_cert, body_part_id=5,
    )
    cmc_ok = cmc.build_full_pki_response_success(
        [m.device_cert], body_part_ids=[1], transaction_id=7, recipient_nonce=b"nonce",
    )
    cmc_failed = cmc.build_full_pki_response_failed(cmc.CMCFailInfo.BAD_REQUEST, body_part_ids=[1])
    cmc_pending = cmc.build_full_pki_response_pending(
        b"token", datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc), body_part_ids=[1])
    cmc_signed = cmc.build_full_pki_response(
        cmc.StatusInfo(cmc.CMCStatus.SUCCESS, (1,)), certificates=[m.device_cert],
        signer_key=m.ca_key, signer_cert=m.ca,
    )
    digest = auth.DigestAuthority(b"k" * 32, "est")
    challenges = digest.challenges(1000.0)
    digest_header = auth.answer_challenge(
        auth.parse_challenges(challenges), "alice", "secret", "POST",
        "/.well-known/est/simpleenroll", server_authorized=True,
    )
    assert digest_header is not None
    basic = auth.basic_authorization("alice", "secret").encode()
    ders = [csr_full, certs_one, attrs, key_der, enveloped_kek, cmc_request, cmc_ok]
    b64 = [transfer.encode_base64(d) for d in ders[:3]]
    b64 += [transfer.encode_base64(csr_full, transfer.WRAP_64), base64.encodebytes(csr_full)]
    pem = [m.device_cert.public_bytes(serialization.Encoding.PEM)]
    return {
        "decode_base64": b64 + pem + [b"MII=\n", b"\x30\x03\x02\x01\x00", b"-----BEGIN X-----\nAA==\n-----END X-----\n"],
        "parse_media_type": [
            b"application/pkcs7-mime; smime-type=certs-only",
            b'multipart/mixed; boundary="est boundary"; charset=utf-8',
            b"application/pkcs7-mime; smime-type=CMC-request", b"application/csrattrs",
            mt_plain.essence.encode() + b"; boundary=est",
        ],
        "decode_csr": [csr_full, csr_plain, csr_rsa],
        "decode_certs_only": [certs_one, certs_many],
        "decode_csrattrs": [attrs, bytes.fromhex("3000")],
        "parse_multipart": [body_plain, body_enc],
        "decode_serverkeygen_response": [body_plain, body_enc],
        "decode_private_key": [key_der, serverkey.encode_private_key(m.rsa_key),
                               m.device_key.private_bytes(
                                   serialization.Encoding.DER,
                                   serialization.PrivateFormat.TraditionalOpenSSL,
                                   serialization.NoEncryption())],
        "open_enveloped_data": [enveloped_kek, enveloped_rsa],
        "decode_full_pki_request": [cmc_request, cmc_request_cert],
        "decode_full_pki_response": [cmc_ok, cmc_failed, cmc_pending, cmc_signed],
        "parse_signed_data": [cmc_request, cmc_signed, certs_many],
        "parse_authorization": [basic, digest_header.encode(), b"Bearer abc"],
        "parse_challenges": ["\n".join(challenges).encode(), b'Basic realm="est"'],
    }


def der_seeds() -> dict[str, bytes]:
    """One valid DER message per kind, for the structured tests."""
    s = codec_seeds()
    return {
        "csr": s["decode_csr"][0],
        "certs_only": s["decode_certs_only"][1],
        "csrattrs": s["decode_csrattrs"][0],
        "cmc_request": s["decode_full_pki_request"][0],
        "cmc_response": s["decode_full_pki_response"][0],
    }
