"""Valid EST messages the fuzzers (and tests/test_fuzz_structured.py) start from.

Built once per process from real keys and certificates (P-256, plus one
RSA-2048 key for key transport and fixed P-256 / P-384 key-agreement keys),
so mutations begin at every codec's success path: a verified CSR with every
attribute estproto understands, certs-only sets, csrattrs with templates,
serverkeygen bodies (plain, KEK-, RSA- and ECDH-encrypted), signed CMC
requests and responses, HTTP authentication headers and media types.

The key-agreement (kari) recipient keys are derived from fixed scalars
(:data:`KARI_SCALARS`), not generated: an input saved by one fuzzing
process that gets past the ECDH step still decrypts when replayed in
another. (The kari seeds name the recipient by subjectKeyIdentifier, which
depends on the key alone, or by issuer and serial number, which the targets
do not check: they open with no identifier, trying every recipient.)
"""

from __future__ import annotations

import base64
import datetime
import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

TESTS = Path(__file__).resolve().parent.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import pki  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402

#: The KEK (and its DecryptKeyIdentifier) the encrypted serverkeygen seeds use.
KEK_ID = b"fuzz-kek-1"
KEK = bytes(range(32))

#: Private scalars of the fixed kari recipient keys (any value below the
#: curve order will do; these are just recognisable).
KARI_SCALARS = {
    "p256": int.from_bytes(b"estproto fuzz kari P-256 key", "big"),
    "p384": int.from_bytes(b"estproto fuzz kari P-384 recipient key", "big"),
}
_KARI_CURVES = {"p256": ec.SECP256R1, "p384": ec.SECP384R1}


def kari_key(curve: str) -> ec.EllipticCurvePrivateKey:
    """The fixed key-agreement recipient key on *curve* ("p256" or "p384")."""
    return ec.derive_private_key(KARI_SCALARS[curve], _KARI_CURVES[curve]())


@dataclass(frozen=True)
class Material:
    """Keys and certificates shared by the seeds and the targets."""

    ca: x509.Certificate
    ca_key: pki.PrivateKey
    device_key: pki.PrivateKey
    device_cert: x509.Certificate
    rsa_key: rsa.RSAPrivateKey
    rsa_cert: x509.Certificate
    kari_p256_key: ec.EllipticCurvePrivateKey
    kari_p256_cert: x509.Certificate
    kari_p384_key: ec.EllipticCurvePrivateKey
    kari_p384_cert: x509.Certificate


@functools.lru_cache(maxsize=None)
def material() -> Material:
    ca, ca_key = pki.make_ca("Fuzz CA")
    device_key = pki.make_key("p256")
    device_cert = pki.issue(ca, ca_key, device_key.public_key(), "device")
    rsa_key = pki.make_key("rsa2048")
    assert isinstance(rsa_key, rsa.RSAPrivateKey)
    rsa_cert = pki.issue(ca, ca_key, rsa_key.public_key(), "rsa-recipient")
    kari_p256 = kari_key("p256")
    kari_p384 = kari_key("p384")
    return Material(
        ca, ca_key, device_key, device_cert, rsa_key, rsa_cert,
        kari_p256, pki.issue(ca, ca_key, kari_p256.public_key(), "kari-p256-recipient"),
        kari_p384, pki.issue(ca, ca_key, kari_p384.public_key(), "kari-p384-recipient"),
    )


@functools.lru_cache(maxsize=None)
def codec_seeds() -> dict[str, list[bytes]]:
    """Seed inputs per codec target name (see fuzz_codecs.py)."""
    from estproto import LocalProtocolError, auth
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

    def sendable(make: Callable[[], bytes]) -> bytes:
        """An envelope that fits a multipart body with boundary "est".

        Envelopes are random (CEK, IV, ephemeral key), and their base64
        holds "est" about once in a hundred: encrypt again until it does not.
        """
        for _ in range(100):
            der = make()
            try:
                multipart.encode_serverkeygen_response(
                    der, certs_one, key_encrypted=True, boundary="est")
            except LocalProtocolError:
                continue
            return der
        raise AssertionError("every envelope contains the boundary")

    enveloped_kek = sendable(lambda: serverkey.encrypt_key_package(
        m.device_key, signer_key=m.ca_key, signer_cert=m.ca,
        recipient=serverkey.KEKRecipient(KEK_ID, KEK),
    ))
    enveloped_rsa = sendable(lambda: serverkey.encrypt_key_package(
        m.device_key, signer_key=m.ca_key, signer_cert=m.ca,
        recipient=serverkey.KeyTransRecipient.from_certificate(m.rsa_cert),
    ))
    # kari: a key package to the P-256 key (rid by SKI, the defaults), one
    # to the P-384 key (rid by issuer and serial, AES-128, an explicit KDF
    # hash, wrap and ukm), and a bare id-data envelope with a ukm.
    enveloped_kari_p256 = sendable(lambda: serverkey.encrypt_key_package(
        m.device_key, signer_key=m.ca_key, signer_cert=m.ca,
        recipient=serverkey.KeyAgreeRecipient.from_certificate(m.kari_p256_cert),
    ))
    enveloped_kari_p384 = sendable(lambda: serverkey.encrypt_key_package(
        m.device_key, signer_key=m.ca_key, signer_cert=m.ca, content_encryption="aes128_cbc",
        recipient=serverkey.KeyAgreeRecipient(
            m.kari_p384_key.public_key(), certificate=m.kari_p384_cert, kdf_hash="sha256",
            key_wrap="aes256_wrap", ukm=b"fuzz ukm"),
    ))
    enveloped_kari_data = serverkey.build_enveloped_data(
        "data", b"fuzz content", content_encryption="aes192_cbc",
        recipient=serverkey.KeyAgreeRecipient(
            m.kari_p256_key.public_key(), subject_key_identifier=b"kari-ski", ukm=b"u"),
    )
    mt_plain, body_plain = multipart.encode_serverkeygen_response(key_der, certs_one, boundary="est")
    mt_enc, body_enc = multipart.encode_serverkeygen_response(
        enveloped_kek, certs_one, key_encrypted=True, boundary="est", key_first=False,
    )
    mt_kari, body_kari = multipart.encode_serverkeygen_response(
        enveloped_kari_p256, certs_one, key_encrypted=True, boundary="est",
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
        "decode_serverkeygen_response": [body_plain, body_enc, body_kari],
        "decode_private_key": [key_der, serverkey.encode_private_key(m.rsa_key),
                               m.device_key.private_bytes(
                                   serialization.Encoding.DER,
                                   serialization.PrivateFormat.TraditionalOpenSSL,
                                   serialization.NoEncryption())],
        "open_enveloped_data": [enveloped_kek, enveloped_rsa, enveloped_kari_p256,
                                enveloped_kari_p384, enveloped_kari_data],
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
