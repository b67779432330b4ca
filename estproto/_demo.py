"""``estproto demo``: the README's main job in one command, over real sockets and TLS.

In a temporary data directory, the demo does what an operator and a device
would do with ``estproto ca``, ``estproto serve`` and ``estproto enroll``,
in one process:

1. creates the embedded CA (P-256 root, TLS certificate for 127.0.0.1) and
   an HTTP user;
2. starts the trio EST server on 127.0.0.1, port 0 (the request log is
   shown as ``server:`` lines);
3. bootstraps trust as RFC 7030 4.1.1 describes: ``/cacerts`` over a
   provisional, unverified TLS connection, the root accepted only because
   its SHA-256 fingerprint matches the one the operator published;
4. enrolls a fresh P-256 key with the bundled client over a verified TLS
   connection: the server challenges for HTTP authentication, the client
   answers (it has authorized the server, 3.2.3), and the CSR is linked to
   the TLS channel (3.5);
5. checks the result: the certificate chains to ``DIR/ca.pem``, holds the
   generated key, and is in the CA's store; then stops the server
   gracefully and prints the certificate.

Exit status 0 when every check holds, 1 otherwise.
"""

from __future__ import annotations

import functools
import logging
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["run"]

_USER = "demo"
#: A demo password for a throwaway CA that lives only as long as the demo.
_PASSWORD = "demo-password"


class _Echo(logging.Handler):
    """Shows the server's request log lines in the demo's output."""

    def __init__(self, out: TextIO) -> None:
        super().__init__(logging.INFO)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        print(f"   server: {record.getMessage()}", file=self.out, flush=True)


async def _main(data_dir: Path, out: TextIO) -> int:
    import trio

    from . import trio as est_trio
    from .ca import EmbeddedCA
    from .chain import chain_verifies
    from .cli._serve import build_config, listening_line
    from .client import Credentials, check_fingerprint
    from ._tls import ClientTLSContext

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    say(f"1. estproto ca init --data-dir {data_dir} --hostname 127.0.0.1")
    with EmbeddedCA.init(data_dir, hostnames=["127.0.0.1"]) as ca:
        fingerprint = ca.fingerprint()
        say(f"   root CA: {ca.root_certificate.subject.rfc4514_string()}")
        say(f"   SHA-256 fingerprint (estproto ca fingerprint): {fingerprint}")
        say(f"   ESTPROTO_PASSWORD=... estproto ca add-user {_USER}")
        ca.add_user(_USER, _PASSWORD)
        config = build_config(ca)
        logger = logging.getLogger("estproto.server")
        echo = _Echo(out)
        logger.addHandler(echo)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        try:
            async with trio.open_nursery() as nursery:
                server = await nursery.start(
                    functools.partial(est_trio.serve, ca.inline_handler(), config, "127.0.0.1", 0)
                )
                port = server.port
                say(f"2. estproto serve --data-dir {data_dir} --host 127.0.0.1 --port 0")
                say(f"   {listening_line('127.0.0.1', port)}")

                say("3. GET /cacerts on a provisional (unverified) TLS connection; the CA is "
                    "accepted only if its fingerprint matches (RFC 7030 4.1.1)")
                async with est_trio.ESTClient("127.0.0.1", port, ClientTLSContext(verify=False)) as c:
                    offered = await c.cacerts()
                anchor = check_fingerprint(offered, fingerprint)
                say(f"   fingerprint matches: {anchor.subject.rfc4514_string()}")

                say(f"4. POST /simpleenroll as user {_USER}: a fresh P-256 key, the CSR linked "
                    "to the TLS channel (RFC 7030 3.5), the server verified against that CA")
                key = ec.generate_private_key(ec.SECP256R1())
                subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "demo-device")])
                tls = ClientTLSContext(trust_anchors=[anchor])
                async with est_trio.ESTClient(
                    "127.0.0.1", port, tls, credentials=Credentials(_USER, _PASSWORD)
                ) as c:
                    cert = await c.simpleenroll_linked(
                        key, subject, subject_alt_names=[x509.DNSName("demo-device.example")]
                    )
                say(f"   issued: subject {cert.subject.rfc4514_string()}, serial {cert.serial_number:x}")
                server.close()
        finally:
            logger.removeHandler(echo)
            logger.propagate = True
        say("5. server stopped gracefully; checking the result")
        trust = x509.load_pem_x509_certificates((data_dir / "ca.pem").read_bytes())
        chains = chain_verifies(cert, trust)
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        same_key = cert.public_key().public_bytes(serialization.Encoding.DER, spki) == (
            key.public_key().public_bytes(serialization.Encoding.DER, spki)
        )
        stored = ca.store.get_issued(format(cert.serial_number, "x")) is not None
    say(f"   the certificate chains to ca.pem: {chains}")
    say(f"   the certificate holds the key we generated: {same_key}")
    say(f"   the certificate is recorded in the CA's store: {stored}")
    print(cert.public_bytes(serialization.Encoding.PEM).decode(), end="", file=out, flush=True)
    return 0 if chains and same_key and stored else 1


def run(out: TextIO = sys.stdout) -> int:
    """Run the demo, printing to *out*; returns the process exit status."""
    import trio

    with tempfile.TemporaryDirectory(prefix="estproto-demo-") as tmp:
        return trio.run(_main, Path(tmp), out)
