"""An EST client that keeps its certificate fresh: enroll once, renew at two thirds of its life.

The client enrolls with HTTP Basic credentials (/simpleenroll, RFC 7030
4.2.1), then, once two thirds of the certificate's validity period
(notBefore to notAfter) has passed, renews it with /simplereenroll (4.2.2),
authenticating with the certificate being renewed as its TLS client
certificate ("the client MUST use the certificate being renewed", 3.3.2) and
asking for the same subject and subjectAltName ("The Subject field and
SubjectAltName extension MUST be identical to the corresponding fields in the
certificate being renewed or rekeyed", 4.2.2). By default each renewal
also rekeys (a fresh P-256 key); ``rekey=False`` keeps the key.

Both requests link the CSR to the TLS connection that carries it
(:meth:`ESTClient.simpleenroll_linked`, RFC 7030 3.5): the CSR is built after
the handshake with the channel binding in its challengePassword.

Time is an input: :class:`RenewingClient` reads the wall clock only through
its ``now`` argument, so a test (or the ``--demo`` below) can jump the clock
forward instead of waiting months. Only the decision *when* to renew uses
it; TLS certificate checks use the real clock.

Run it against a server::

    ESTPROTO_PASSWORD=secret python examples/renewing_client.py \\
        --host 127.0.0.1 --port 8443 --ca-file DIR/ca.pem --user alice \\
        --cn device1 --state-dir ./device1

(it stores ``cert.pem`` and ``key.pem`` in the state directory and runs until
interrupted), or see it work on its own::

    python examples/renewing_client.py --demo

which starts a throwaway embedded CA, enrolls, jumps a simulated clock past
the renewal point, and renews.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import getpass
import os
import tempfile
from pathlib import Path
from typing import Awaitable, Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import estproto.asyncio
from estproto import ClientTLSContext, ServerConfig
from estproto.ca import EmbeddedCA
from estproto.client import Credentials

#: Renew when this fraction of the validity period has passed.
RENEW_FRACTION = 2 / 3

#: Longest sleep between checks (seconds of the ``now`` clock): the clock
#: may jump (suspend, NTP), so the client looks again at least this often.
MAX_CHECK_INTERVAL = 3600.0

#: Shortest wait after a failed attempt before the next one (seconds).
RETRY_INTERVAL = 60.0

Clock = Callable[[], datetime.datetime]
Sleep = Callable[[float], Awaitable[None]]


def utc_now() -> datetime.datetime:
    """The real clock (timezone-aware UTC)."""
    return datetime.datetime.now(datetime.timezone.utc)


def renewal_time(cert: x509.Certificate, fraction: float = RENEW_FRACTION) -> datetime.datetime:
    """When *cert* is due for renewal: notBefore + *fraction* of its lifetime."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * fraction


def _sans(cert: x509.Certificate) -> list[x509.GeneralName]:
    try:
        return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


class RenewingClient:
    """Holds a key and certificate and renews the certificate on time.

    Args:
        host, port: the EST server.
        trust_anchors: the CA certificates the server (and the issued
            chain) is verified against (RFC 7030 3.6.1 Explicit TA).
        subject: the subject to enroll for.
        credentials: HTTP Basic credentials for the first enrollment.
        subject_alt_names: SAN entries to request.
        now: the clock used to decide when to renew (default: real UTC).
        rekey: renew with a new key (default) or keep the current one.
        state_dir: if given, ``cert.pem`` and ``key.pem`` are loaded from it
            at start and written after every change (key mode 0600).

    Attributes:
        certificate, key: the current certificate and key (None before the
            first enrollment).
        history: every certificate obtained, oldest first.
    """

    def __init__(
        self,
        host: str,
        port: int,
        trust_anchors: Sequence[x509.Certificate],
        subject: x509.Name,
        *,
        credentials: Credentials | None = None,
        subject_alt_names: Sequence[x509.GeneralName] = (),
        now: Clock = utc_now,
        rekey: bool = True,
        state_dir: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.trust_anchors = tuple(trust_anchors)
        self.subject = subject
        self.credentials = credentials
        self.subject_alt_names = list(subject_alt_names)
        self.now = now
        self.rekey = rekey
        self.state_dir = state_dir
        self.key: ec.EllipticCurvePrivateKey | None = None
        self.certificate: x509.Certificate | None = None
        self.history: list[x509.Certificate] = []
        if state_dir is not None:
            self._load()

    # -- persistence -------------------------------------------------------

    def _load(self) -> None:
        assert self.state_dir is not None
        cert_path, key_path = self.state_dir / "cert.pem", self.state_dir / "key.pem"
        if cert_path.exists() and key_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if isinstance(key, ec.EllipticCurvePrivateKey):
                self.key = key
                self.certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
                self.history.append(self.certificate)

    def _save(self) -> None:
        if self.state_dir is None or self.key is None or self.certificate is None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        key_pem = self.key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
        # Key first, each file replaced atomically: a crash leaves a
        # consistent old or new pair, or a new key with the old certificate
        # (then the next start enrolls again).
        for name, data, mode in (("key.pem", key_pem, 0o600),
                                 ("cert.pem", self.certificate.public_bytes(serialization.Encoding.PEM), 0o644)):
            tmp = self.state_dir / f".{name}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_dir / name)

    # -- the two operations ------------------------------------------------

    def due(self) -> bool:
        """True when there is no certificate or it reached its renewal time."""
        return self.certificate is None or self.now() >= renewal_time(self.certificate)

    def _client(self, tls: ClientTLSContext, credentials: Credentials | None) -> estproto.asyncio.ESTClient:
        return estproto.asyncio.ESTClient(self.host, self.port, tls, credentials=credentials)

    async def enroll(self) -> x509.Certificate:
        """First enrollment (/simpleenroll) with a new key, HTTP Basic.

        Raises:
            estproto.asyncio.ESTError: the server refused (and subclasses);
            OSError: network failure.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        tls = ClientTLSContext(trust_anchors=self.trust_anchors)
        async with self._client(tls, self.credentials) as client:
            cert = await client.simpleenroll_linked(
                key, self.subject, subject_alt_names=self.subject_alt_names)
        self._adopt(key, cert)
        return cert

    async def renew(self) -> x509.Certificate:
        """Renew (/simplereenroll) with the current certificate as TLS client
        certificate; same subject and SAN, a new key unless ``rekey=False``.

        Raises:
            RuntimeError: nothing to renew yet.
            estproto.asyncio.ESTError, OSError: as :meth:`enroll`.
        """
        if self.certificate is None or self.key is None:
            raise RuntimeError("no certificate to renew: enroll first")
        current, current_key = self.certificate, self.key
        key = ec.generate_private_key(ec.SECP256R1()) if self.rekey else current_key
        tls = ClientTLSContext(trust_anchors=self.trust_anchors,
                               client_certificate_chain=[current], client_private_key=current_key)
        async with self._client(tls, None) as client:
            cert = await client.simplereenroll_linked(
                key, current.subject, subject_alt_names=_sans(current))
        self._adopt(key, cert)
        return cert

    def _adopt(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        if cert.public_key().public_bytes(serialization.Encoding.DER, spki) != (
                key.public_key().public_bytes(serialization.Encoding.DER, spki)):
            raise RuntimeError("the server returned a certificate for another key")
        self.key, self.certificate = key, cert
        self.history.append(cert)
        self._save()

    # -- the loop ----------------------------------------------------------

    async def step(self) -> str:
        """Do what is due now: ``"enrolled"``, ``"renewed"`` or ``"valid"``."""
        if self.certificate is None:
            await self.enroll()
            return "enrolled"
        if self.due():
            await self.renew()
            return "renewed"
        return "valid"

    def seconds_until_due(self) -> float:
        """Seconds of the ``now`` clock until the renewal time (0 if due)."""
        if self.certificate is None:
            return 0.0
        return max(0.0, (renewal_time(self.certificate) - self.now()).total_seconds())

    async def run(self, sleep: Sleep = asyncio.sleep, *, max_steps: int | None = None) -> None:
        """Keep the certificate fresh: step, sleep until the renewal time
        (at most :data:`MAX_CHECK_INTERVAL`), repeat. A failed attempt is
        retried after :data:`RETRY_INTERVAL`; *max_steps* bounds the loop."""
        steps = 0
        while max_steps is None or steps < max_steps:
            steps += 1
            try:
                outcome = await self.step()
            except (estproto.asyncio.ESTError, OSError) as exc:
                print(f"{self.now():%Y-%m-%d %H:%M} attempt failed: {exc}", flush=True)
                await sleep(RETRY_INTERVAL)
                continue
            if outcome != "valid" and self.certificate is not None:
                print(f"{self.now():%Y-%m-%d %H:%M} {outcome}: serial {self.certificate.serial_number:x}, "
                      f"valid until {self.certificate.not_valid_after_utc:%Y-%m-%d %H:%M}, "
                      f"renewal due {renewal_time(self.certificate):%Y-%m-%d %H:%M}", flush=True)
            await sleep(min(self.seconds_until_due(), MAX_CHECK_INTERVAL) or RETRY_INTERVAL)


class SimulatedClock:
    """A clock that only moves when told to (for tests and the demo).

    Args:
        start: the initial time (default: the real time now).
    """

    def __init__(self, start: datetime.datetime | None = None) -> None:
        self.time = start or utc_now()

    def __call__(self) -> datetime.datetime:
        return self.time

    def advance(self, delta: datetime.timedelta) -> None:
        """Move the clock forward by *delta*."""
        self.time += delta

    async def sleep(self, seconds: float) -> None:
        """A sleep that passes simulated time instantly."""
        self.advance(datetime.timedelta(seconds=seconds))
        await asyncio.sleep(0)


async def demo(folder: Path) -> list[x509.Certificate]:
    """Throwaway embedded CA + a client on a simulated clock: enroll, then
    renew once the clock has passed the renewal time. Returns the certificates."""
    ca_dir = folder / "ca"
    with EmbeddedCA.init(ca_dir, hostnames=("127.0.0.1",)) as ca:
        ca.add_user("demo", "demo-password")
        config = ServerConfig(tls=ca.server_tls_context(), est=ca.est_settings())
        async with await estproto.asyncio.start_server(ca.handler(), config) as server:
            clock = SimulatedClock()
            client = RenewingClient(
                "127.0.0.1", server.port, ca.ca_certificates,
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "demo-device")]),
                credentials=Credentials("demo", "demo-password"), now=clock,
                state_dir=folder / "device",
            )
            assert await client.step() == "enrolled"
            assert client.certificate is not None
            # Jump the simulated clock past the renewal time. Wait for the
            # next second of the real clock first: the server stamps
            # notAfter with it, at one-second resolution.
            clock.time = renewal_time(client.certificate) + datetime.timedelta(seconds=1)
            await asyncio.sleep(1.0)
            assert await client.step() == "renewed"
            return client.history


def main(argv: list[str] | None = None) -> None:
    """Command line; see the module docstring."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--demo", action="store_true", help="run against a throwaway local CA and exit")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--ca-file", type=Path, help="PEM file of the CA certificates to trust")
    parser.add_argument("--user", help="HTTP Basic user (password from ESTPROTO_PASSWORD or a prompt)")
    parser.add_argument("--cn", default="device", help="commonName to enroll for")
    parser.add_argument("--state-dir", type=Path, default=Path("."), help="where cert.pem/key.pem live")
    args = parser.parse_args(argv)
    if args.demo:
        with tempfile.TemporaryDirectory(prefix="est-renew-") as folder:
            certs = asyncio.run(demo(Path(folder)))
        for cert in certs:
            print(f"serial {cert.serial_number:x} {cert.subject.rfc4514_string()} "
                  f"notAfter {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}")
        return
    if args.ca_file is None:
        parser.error("--ca-file is required (or use --demo)")
    trust = x509.load_pem_x509_certificates(args.ca_file.read_bytes())
    credentials = None
    if args.user:
        password = os.environ.get("ESTPROTO_PASSWORD") or getpass.getpass(f"password for {args.user}: ")
        credentials = Credentials(args.user, password)
    client = RenewingClient(
        args.host, args.port, trust, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, args.cn)]),
        credentials=credentials, state_dir=args.state_dir,
    )
    try:
        asyncio.run(client.run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
