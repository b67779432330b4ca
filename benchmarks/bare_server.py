"""A bare enrollment server on estproto's libraries, for ``bench_loopback.py``.

Not an EST server: the least a server on the same libraries does for one
``/simpleenroll`` over a real socket, and nothing else. asyncio streams move
bytes; pyOpenSSL memory BIOs run TLS (the same certificate, key, versions
and optional client-certificate request as ``estproto serve``); h11 parses
HTTP/1.1; the Basic header is compared with ``hmac.compare_digest``; the CSR
is loaded and its signature checked; cryptography signs a certificate with
the CA's own key and serialises the PKCS#7 answer, base64. No store, no
limits, no deadlines, no EST rules, no logging. What it costs is what these
libraries cost in Python; ``estproto serve`` over it is what estproto adds.

It reads the files of an estproto data directory (the TLS identity and the
issuing CA), so the same load generator and ``ca.pem`` work for both.

``--durable DB``: the naive way to keep what was issued, for telling the
cost of durability from estproto's: before answering, each certificate's row
(serial UNIQUE, DER, subject, requester, request, issue and expiry times;
no other index) is
committed on its own to the SQLite file DB (WAL, ``synchronous=FULL``, as
estproto's store), on the event loop. No group commit.

Run: ``python benchmarks/bare_server.py DATA_DIR USER PASSWORD [--durable DB]``
prints ``port N`` once listening on 127.0.0.1 and stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hmac
import signal
import sqlite3
import sys
from pathlib import Path

import h11
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from OpenSSL import SSL

_HEADERS = [(b"Content-Type", b"application/pkcs7-mime; smime-type=certs-only"),
            (b"Content-Transfer-Encoding", b"base64")]


class Issuer:
    """The CA half: load the CSR, check it, sign a certificate."""

    def __init__(self, data_dir: Path, durable: Path | None = None) -> None:
        name = "intermediate" if (data_dir / "intermediate.pem").exists() else "root"
        self.cert = x509.load_pem_x509_certificate((data_dir / f"{name}.pem").read_bytes())
        self.key = serialization.load_pem_private_key((data_dir / f"{name}.key").read_bytes(), None)
        self.db: sqlite3.Connection | None = None
        if durable is not None:
            self.db = sqlite3.connect(durable, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS issued (id INTEGER PRIMARY KEY, "
                "serial TEXT NOT NULL UNIQUE, der BLOB NOT NULL, subject TEXT NOT NULL, "
                "requester TEXT NOT NULL, request_der BLOB, issued_at TEXT NOT NULL, "
                "not_after TEXT NOT NULL)")

    def enroll(self, body: bytes, requester: str) -> bytes:
        request_der = base64.b64decode(body)
        csr = x509.load_der_x509_csr(request_der)
        if not csr.is_signature_valid:
            raise ValueError("bad CSR signature")
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(csr.subject).issuer_name(self.cert.subject)
            .public_key(csr.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())  # type: ignore[arg-type]
        )
        if self.db is not None:
            self.db.execute(
                "INSERT INTO issued (serial, der, subject, requester, request_der, issued_at, "
                "not_after) VALUES (?,?,?,?,?,?,?)",
                (format(cert.serial_number, "x"), cert.public_bytes(serialization.Encoding.DER),
                 cert.subject.rfc4514_string(), requester, request_der, now.isoformat(),
                 cert.not_valid_after_utc.isoformat()))  # autocommit: one durable commit
        return base64.b64encode(pkcs7.serialize_certificates([cert], serialization.Encoding.DER))


def tls_context(data_dir: Path) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.use_certificate_chain_file(str(data_dir / "server.pem"))
    ctx.use_privatekey_file(str(data_dir / "server.key"))
    # Ask for a client certificate without requiring one, as estproto does.
    ctx.set_verify(SSL.VERIFY_PEER, lambda *args: True)
    ctx.load_verify_locations(str(data_dir / "ca.pem"))
    return ctx


def _drain(tls: SSL.Connection) -> bytes:
    out = b""
    while True:
        try:
            chunk = tls.bio_read(65536)
        except SSL.WantReadError:
            return out
        if not chunk:
            return out
        out += chunk


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 ctx: SSL.Context, issuer: Issuer, requester: str, expected: bytes) -> None:
    tls = SSL.Connection(ctx, None)
    tls.set_accept_state()
    http = h11.Connection(h11.SERVER)
    authorization = b""
    body: list[bytes] = []
    handshaken = False
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            tls.bio_write(data)
            if not handshaken:
                try:
                    tls.do_handshake()
                    handshaken = True
                except SSL.WantReadError:
                    pass
            if handshaken:
                try:
                    while True:
                        http.receive_data(tls.recv(65536))
                except SSL.WantReadError:
                    pass
                except SSL.ZeroReturnError:
                    tls.shutdown()
                    writer.write(_drain(tls))
                    return
                while True:
                    event = http.next_event()
                    if isinstance(event, h11.Request):
                        authorization = dict(event.headers).get(b"authorization", b"")
                    elif isinstance(event, h11.Data):
                        body.append(event.data)
                    elif isinstance(event, h11.EndOfMessage):
                        if not hmac.compare_digest(authorization, expected):
                            raise ValueError("wrong credentials")
                        reply = issuer.enroll(b"".join(body), requester)
                        body = []
                        headers = [*_HEADERS, (b"Content-Length", str(len(reply)).encode())]
                        tls.sendall(http.send(h11.Response(status_code=200, headers=headers))
                                    + http.send(h11.Data(data=reply)) + http.send(h11.EndOfMessage()))
                        http.start_next_cycle()
                    else:
                        break
            out = _drain(tls)
            if out:
                writer.write(out)
    except (ConnectionError, SSL.Error, h11.ProtocolError):
        pass
    finally:
        writer.close()


async def main(data_dir: Path, user: str, password: str, durable: Path | None) -> None:
    ctx = tls_context(data_dir)
    issuer = Issuer(data_dir, durable)
    expected = b"Basic " + base64.b64encode(f"{user}:{password}".encode())
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, ctx, issuer, f"user:{user}", expected), "127.0.0.1", 0)
    print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    if len(sys.argv) not in (4, 6) or (len(sys.argv) == 6 and sys.argv[4] != "--durable"):
        sys.exit("usage: bare_server.py DATA_DIR USER PASSWORD [--durable DB]")
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], sys.argv[3],
                     Path(sys.argv[5]) if len(sys.argv) == 6 else None))
