"""Codec throughput: estproto.codecs beside cryptography's own functions.

Prints operations per second for encoding and decoding every EST message kind
with :mod:`estproto.codecs` (RFC 7030 bodies: base64 transfer encoding,
media types, PKCS#10, certs-only PKCS#7, csrattrs, serverkeygen multipart,
PKCS#8, the kekri encrypted key package, CMC Full PKI Request/Response).

Where ``cryptography`` does the same work, it is timed in the same run and
the ratio ``estproto time / cryptography time`` is printed (below 1.00 means
estproto is faster; the goal is <= 1.00):

* csr_decode:   ``decode_csr(der)`` (P-256, verify) vs ``load_der_x509_csr(der)``
  + ``is_signature_valid``. Note that ``decode_csr`` also parses the subject,
  key, extensions and attributes it exposes, while cryptography's loader is
  lazy; a second row ("+fields") makes cryptography touch the same fields.
* pkcs7_encode / pkcs7_decode: ``encode_certs_only`` / ``decode_certs_only``
  vs ``pkcs7.serialize_certificates(certs, DER)`` /
  ``pkcs7.load_der_pkcs7_certificates``, one certificate (the /simpleenroll
  response; the 4-certificate /cacerts set is printed too).
* pkcs8_encode / pkcs8_decode: ``encode_private_key`` / ``decode_private_key``
  vs ``private_bytes(DER, PKCS8, NoEncryption())`` / ``load_der_private_key``
  (P-256 key).
* csr_build: ``build_csr(key, subject)`` vs
  ``CertificateSigningRequestBuilder().subject_name(subject).sign(key, SHA256)``
  (P-256).

Method: each measurement runs the operation in a loop whose repetition count
is calibrated to about 0.3 s (``--target``), three rounds (``--rounds``), and
keeps the best round: the machine is shared, and the best round is the one
least disturbed by other processes. Within a round the two sides of a
comparison run in alternating slices, so that load changes hit both alike.

Usage::

    python benchmarks/codecs.py            # full run (about a minute)
    python benchmarks/codecs.py --quick    # smoke run (a few seconds)

The last line is machine-readable::

    codec_ratio csr_decode=X.XX pkcs7_encode=X.XX pkcs7_decode=X.XX pkcs8_encode=X.XX pkcs8_decode=X.XX csr_build=X.XX
"""

from __future__ import annotations

import argparse
import base64
import datetime
import os
import sys
import time
from pathlib import Path
from functools import partial
from typing import Callable, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from estproto.codecs import cmc, csrattrs, mediatype, multipart, pkcs7 as est_pkcs7, pkcs10
from estproto.codecs import serverkey, transfer

PrivateKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey]

VECTORS = Path(__file__).resolve().parent.parent / "tests" / "data" / "vectors"

# -- timing ------------------------------------------------------------------


class Timer:
    """Calibrated best-of-N timing with time.perf_counter."""

    def __init__(self, target: float, rounds: int, slices: int = 5) -> None:
        self.target = target
        self.rounds = rounds
        self.slices = slices

    @staticmethod
    def _run(fn: Callable[[], object], n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return time.perf_counter() - t0

    def calibrate(self, fn: Callable[[], object]) -> int:
        """Repetitions taking about ``target`` seconds."""
        n = 1
        while True:
            dt = self._run(fn, n)
            if dt >= self.target / 5 or n >= 1 << 22:
                break
            n *= 4 if dt < self.target / 50 else 2
        return max(1, round(n * self.target / max(dt, 1e-9)))

    def per_op(self, *fns: Callable[[], object]) -> list[float]:
        """Best seconds per call of each function over the rounds.

        Within a round the functions run in alternating slices (a, b, a, b
        ...), so a change in the machine's load hits both sides of a
        comparison alike.
        """
        slices = self.slices if len(fns) > 1 else 1
        counts = [max(1, -(-self.calibrate(fn) // slices)) for fn in fns]
        best = [float("inf")] * len(fns)
        for _ in range(self.rounds):
            spent = [0.0] * len(fns)
            for _slice in range(slices):
                for i, (fn, n) in enumerate(zip(fns, counts)):
                    spent[i] += self._run(fn, n)
            for i, n in enumerate(counts):
                best[i] = min(best[i], spent[i] / (n * slices))
        return best


# -- fixtures ----------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _vector_der(name: str) -> bytes:
    return base64.b64decode(b"".join((VECTORS / name).read_bytes().split()))


class Fixtures:
    """Real keys, certificates and messages, made once."""

    def __init__(self) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("Bench CA"))
            .issuer_name(_name("Bench CA"))
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.ca_key.public_key()), critical=False
            )
            .sign(self.ca_key, hashes.SHA256())
        )
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.keys: dict[str, PrivateKey] = {
            "P-256": self.key,
            "RSA-2048": rsa.generate_private_key(65537, 2048),
            "Ed25519": ed25519.Ed25519PrivateKey.generate(),
        }
        self.subject = _name("device-0001")
        self.csr_der = {
            kind: pkcs10.build_csr(key, self.subject) for kind, key in self.keys.items()
        }
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.subject)
            .issuer_name(self.ca_cert.subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )
        # RFC 7030 A.1: a root rollover /cacerts answer (4 certificates).
        self.cacerts = est_pkcs7.decode_certs_only(_vector_der("rfc7030-A1-cacerts-response.b64"))
        self.certs_only_1 = est_pkcs7.encode_certs_only([self.cert])
        self.certs_only_4 = est_pkcs7.encode_certs_only(self.cacerts)
        self.pkcs8 = serverkey.encode_private_key(self.key)
        self.csrattrs = {
            name: _vector_der(name)
            for name in sorted(os.listdir(VECTORS))
            if name.endswith(".b64") and ("csrattrs" in name or name.startswith("rfc9908-"))
        }


# -- the benchmark -----------------------------------------------------------


def _crypto_build_csr(
    key: PrivateKey, subject: x509.Name, hash_algorithm: hashes.HashAlgorithm | None
) -> x509.CertificateSigningRequest:
    return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hash_algorithm)  # type: ignore[arg-type]


def _ops(seconds: float) -> str:
    return f"{1 / seconds:>12,.0f} op/s {seconds * 1e6:>9.1f} us"


class Report:
    def __init__(self, timer: Timer) -> None:
        self.timer = timer
        self.ratios: dict[str, float] = {}

    def section(self, title: str) -> None:
        print(f"\n{title}")

    def one(self, label: str, fn: Callable[[], object]) -> float:
        (t,) = self.timer.per_op(fn)
        print(f"  {label:<44} {_ops(t)}")
        sys.stdout.flush()
        return t

    def pair(
        self,
        label: str,
        est_fn: Callable[[], object],
        ref_fn: Callable[[], object],
        key: str | None = None,
    ) -> float:
        t_est, t_ref = self.timer.per_op(est_fn, ref_fn)
        ratio = t_est / t_ref
        print(f"  {label:<44} {_ops(t_est)}   cryptography {_ops(t_ref)}   ratio {ratio:5.2f}")
        sys.stdout.flush()
        if key is not None:
            self.ratios[key] = ratio
        return ratio


def run(report: Report, fx: Fixtures, quick: bool) -> None:
    # -- transfer encoding and media types ----------------------------------
    report.section("base64 transfer encoding (RFC 8951 3), body = 1-cert certs-only PKCS#7")
    der = fx.certs_only_1
    one_line = transfer.encode_base64(der, transfer.SINGLE_LINE)
    wrapped = transfer.encode_base64(der, transfer.WRAP_64)
    print(f"  ({len(der)} bytes DER, {len(one_line)} bytes single line, {len(wrapped)} bytes wrapped)")
    report.one("encode_base64 single line", lambda: transfer.encode_base64(der, transfer.SINGLE_LINE))
    report.one("encode_base64 64 columns", lambda: transfer.encode_base64(der, transfer.WRAP_64))
    report.one("decode_base64 single line", lambda: transfer.decode_base64(one_line))
    report.one("decode_base64 64 columns", lambda: transfer.decode_base64(wrapped))

    report.section("media types (RFC 9110 8.3.1)")
    for value in ("application/pkcs10", "application/pkcs7-mime; smime-type=certs-only",
                  'multipart/mixed; boundary="est-boundary-0123456789"'):
        report.one(f"parse {value[:40]}", partial(mediatype.parse_media_type, value))

    # -- PKCS#10 ------------------------------------------------------------
    report.section("PKCS#10 (decode = parse + signature check)")
    for kind, csr_der in fx.csr_der.items():
        def ref_decode(d: bytes = csr_der) -> bool:
            return x509.load_der_x509_csr(d).is_signature_valid

        def ref_decode_fields(d: bytes = csr_der) -> object:
            csr = x509.load_der_x509_csr(d)
            assert csr.is_signature_valid
            return (csr.subject, csr.public_key(), csr.extensions, csr.attributes)

        report.pair(f"decode_csr {kind}", partial(pkcs10.decode_csr, csr_der), ref_decode,
                    key="csr_decode" if kind == "P-256" else None)
        if kind == "P-256":
            report.pair(f"decode_csr {kind} (+fields on cryptography side)",
                        partial(pkcs10.decode_csr, csr_der), ref_decode_fields)
    key = fx.key
    subject = fx.subject
    report.pair(
        "build_csr P-256",
        lambda: pkcs10.build_csr(key, subject),
        lambda: x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256()),
        key="csr_build",
    )
    if not quick:
        for kind in ("RSA-2048", "Ed25519"):
            k = fx.keys[kind]
            h = None if kind == "Ed25519" else hashes.SHA256()
            report.pair(
                f"build_csr {kind}",
                partial(pkcs10.build_csr, k, subject),
                partial(_crypto_build_csr, k, subject, h),
            )

    # -- PKCS#7 certs-only ----------------------------------------------------
    report.section("certs-only PKCS#7 (RFC 7030 4.1.3 / 4.2.3)")
    for label, certs, der, key_suffix in (
        ("1 cert", [fx.cert], fx.certs_only_1, ""),
        ("4 certs (RFC 7030 A.1)", list(fx.cacerts), fx.certs_only_4, "_4"),
    ):
        report.pair(
            f"encode_certs_only {label}",
            partial(est_pkcs7.encode_certs_only, certs),
            partial(pkcs7.serialize_certificates, certs, serialization.Encoding.DER),
            key=None if key_suffix else "pkcs7_encode",
        )
        report.pair(
            f"decode_certs_only {label}",
            partial(est_pkcs7.decode_certs_only, der),
            partial(pkcs7.load_der_pkcs7_certificates, der),
            key=None if key_suffix else "pkcs7_decode",
        )

    # -- csrattrs ---------------------------------------------------------------
    report.section("csrattrs (RFC 7030 4.5.2, RFC 9908 vectors)")
    for name, der in fx.csrattrs.items():
        decoded = csrattrs.decode_csrattrs(der)
        short = name.removesuffix(".b64")
        report.one(f"decode {short[:37]}", partial(csrattrs.decode_csrattrs, der))
        report.one(f"encode {short[:37]}", partial(csrattrs.encode_csrattrs, decoded))
        if quick:
            break

    # -- PKCS#8 and serverkeygen ----------------------------------------------
    report.section("PKCS#8 (RFC 5958, P-256 key)")
    report.pair(
        "encode_private_key",
        lambda: serverkey.encode_private_key(key),
        lambda: key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        key="pkcs8_encode",
    )
    pkcs8 = fx.pkcs8
    report.pair(
        "decode_private_key",
        lambda: serverkey.decode_private_key(pkcs8),
        lambda: serialization.load_der_private_key(pkcs8, None),
        key="pkcs8_decode",
    )

    report.section("serverkeygen multipart/mixed (RFC 7030 4.4.2)")
    mt, body = multipart.encode_serverkeygen_response(pkcs8, fx.certs_only_1)
    report.one("encode_serverkeygen_response",
               lambda: multipart.encode_serverkeygen_response(pkcs8, fx.certs_only_1))
    report.one("decode_serverkeygen_response",
               lambda: multipart.decode_serverkeygen_response(body, mt))

    report.section("encrypted key package, kekri AES-256 (RFC 7030 4.4.2, RFC 5958)")
    recipient = serverkey.KEKRecipient(key_identifier=b"bench-kek-id", kek=b"K" * 32)
    ca_key, ca_cert = fx.ca_key, fx.ca_cert

    def encrypt() -> bytes:
        return serverkey.encrypt_key_package(
            key, signer_key=ca_key, signer_cert=ca_cert, recipient=recipient
        )

    enveloped = encrypt()
    report.one("encrypt_key_package (sign + envelope)", encrypt)
    report.one(
        "decrypt_key_package (open + verify)",
        lambda: serverkey.decrypt_key_package(
            enveloped, kek=recipient.kek, key_identifier=recipient.key_identifier,
            verify_with=ca_cert,
        ),
    )

    # -- CMC ----------------------------------------------------------------------
    report.section("CMC (RFC 5272; /fullcmc)")
    csr_der = fx.csr_der["P-256"]
    request = cmc.build_full_pki_request(csr_der, key, transaction_id=1, sender_nonce=b"n" * 16)
    report.one("build_full_pki_request (signed by CSR key)",
               lambda: cmc.build_full_pki_request(csr_der, key, transaction_id=1,
                                                  sender_nonce=b"n" * 16))
    report.one("decode_full_pki_request (+verify)", lambda: cmc.decode_full_pki_request(request))
    cert = fx.cert
    unsigned = cmc.build_full_pki_response_success([cert], transaction_id=1)
    signed = cmc.build_full_pki_response_success(
        [cert, ca_cert], transaction_id=1, signer_key=ca_key, signer_cert=ca_cert
    )
    report.one("build_full_pki_response unsigned",
               lambda: cmc.build_full_pki_response_success([cert], transaction_id=1))
    report.one("decode_full_pki_response unsigned", lambda: cmc.decode_full_pki_response(unsigned))
    if not quick:
        report.one("build_full_pki_response signed by CA",
                   lambda: cmc.build_full_pki_response_success(
                       [cert, ca_cert], transaction_id=1, signer_key=ca_key, signer_cert=ca_cert))
        report.one("decode_full_pki_response signed (+verify)",
                   lambda: cmc.decode_full_pki_response(signed))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny timings, one round")
    parser.add_argument("--target", type=float, default=None, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per measurement (best kept)")
    args = parser.parse_args(argv)
    target = args.target if args.target is not None else (0.005 if args.quick else 0.3)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)

    fx = Fixtures()
    try:
        load = os.getloadavg()
        load_text = f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    except OSError:
        load_text = "load average unknown"
    print(f"estproto codec benchmark: {target} s x {rounds} rounds per measurement, "
          f"best round kept; {os.cpu_count()} CPUs, {load_text}")
    print("ratio = estproto time / cryptography time (below 1.00: estproto faster)")
    report = Report(Timer(target, rounds, slices=1 if args.quick else 5))
    run(report, fx, args.quick)
    keys = ("csr_decode", "pkcs7_encode", "pkcs7_decode", "pkcs8_encode", "pkcs8_decode", "csr_build")
    print()
    print("codec_ratio " + " ".join(f"{k}={report.ratios[k]:.2f}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
