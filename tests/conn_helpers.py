"""An in-memory EST client/server pair with real certificates and real TLS.

The connection tests' equivalent of h11's ``ConnectionPair`` and aioquic's
``client_and_server`` + ``roundtrip``: a :class:`ServerConnection` and a
:class:`ClientConnection` joined by a pump that moves the bytes each one
produces to the other, whole or ONE BYTE AT A TIME, and models the transport
closing (EOF) once a side has finished. A small reference server application
(:class:`ReferenceApp`) answers every request event the way a real EST server
would: Basic and Digest authentication through :mod:`estproto.auth`, TLS
client certificates, certificates issued with :func:`pki.issue`, deferred
enrollment (202), csrattrs, serverkeygen (plain and KEK-encrypted) and fullcmc.

Certificates and TLS contexts are built once per process (P-256 keys only:
RSA keygen is slow) and shared by every test.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import pki
from estproto import auth
from estproto._config import ClientConfig, ServerConfig
from estproto._est_server import ESTServerSettings
from estproto._events import (
    NEED_DATA,
    PAUSED,
    AuthenticationRequired,
    CACertsRequest,
    CACertsResponse,
    CertificateResponse,
    ClientRequest,
    ConnectionClosed,
    ConnectionTerminated,
    CSRAttrsRequest,
    CSRAttrsResponse,
    ErrorResponse,
    FullCMCRequest,
    FullCMCResponse,
    RetryLater,
    ServerKeygenRequest,
    ServerKeygenResponse,
    ServerRequest,
    ServerResponse,
    SimpleEnrollRequest,
    SimpleReenrollRequest,
)
from estproto._http import HTTPLimits
from estproto._tls import ClientTLSContext, ServerTLSContext
from estproto.client import ClientConnection, Credentials
from estproto.codecs import cmc, csrattrs, pkcs10, serverkey
from estproto.server import ServerConnection

ID_KP_CMC_RA = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.28")
USERS = {"alice": "secret"}
REALM = "est"


# ---------------------------------------------------------------------------
# Certificates


def make_cert(
    cn: str,
    public_key: object,
    issuer: x509.Certificate,
    issuer_key: pki.PrivateKey,
    *,
    sans: Sequence[x509.GeneralName] = (),
    eku: Sequence[x509.ObjectIdentifier] = (),
) -> x509.Certificate:
    """An end-entity certificate with optional SANs and extended key usages."""
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(pki.name(cn))
        .issuer_name(issuer.subject)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]


@dataclass(frozen=True)
class PKI:
    """Everything a test needs, made once."""

    ca: x509.Certificate
    ca_key: pki.PrivateKey
    server_cert: x509.Certificate
    server_key: pki.PrivateKey
    device_cert: x509.Certificate  # CN=device, a plain client certificate
    device_key: pki.PrivateKey
    ra_cert: x509.Certificate  # carries id-kp-cmcRA (RFC 7030 3.7)
    ra_key: pki.PrivateKey
    rogue_cert: x509.Certificate  # CN=device from a CA the server does not trust
    rogue_key: pki.PrivateKey


@functools.lru_cache(maxsize=None)
def get_pki() -> PKI:
    ca, ca_key = pki.make_ca("EST Test CA")
    rogue_ca, rogue_ca_key = pki.make_ca("Rogue CA")
    server_key = pki.make_key("p256")
    server_cert = make_cert(
        "localhost", server_key.public_key(), ca, ca_key,
        sans=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
        eku=[ExtendedKeyUsageOID.SERVER_AUTH],
    )
    device_key = pki.make_key("p256")
    device_cert = make_cert(
        "device", device_key.public_key(), ca, ca_key, eku=[ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    ra_key = pki.make_key("p256")
    ra_cert = make_cert(
        "ra", ra_key.public_key(), ca, ca_key,
        eku=[ExtendedKeyUsageOID.CLIENT_AUTH, ID_KP_CMC_RA],
    )
    rogue_key = pki.make_key("p256")
    rogue_cert = make_cert("device", rogue_key.public_key(), rogue_ca, rogue_ca_key)
    return PKI(ca, ca_key, server_cert, server_key, device_cert, device_key,
               ra_cert, ra_key, rogue_cert, rogue_key)


@functools.lru_cache(maxsize=None)
def server_tls(version: str = "1.3", resumption: bool = True) -> ServerTLSContext:
    p = get_pki()
    return ServerTLSContext(
        [p.server_cert], p.server_key, client_trust_anchors=[p.ca],
        max_version=version, session_resumption=resumption,
    )


@functools.lru_cache(maxsize=None)
def client_tls(
    version: str = "1.3", identity: str | None = None, verify: bool = True
) -> ClientTLSContext:
    """A client context; *identity* is None, "device", "ra" or "rogue"."""
    p = get_pki()
    chain: list[x509.Certificate] = []
    key = None
    if identity is not None:
        cert, key = {
            "device": (p.device_cert, p.device_key),
            "ra": (p.ra_cert, p.ra_key),
            "rogue": (p.rogue_cert, p.rogue_key),
        }[identity]
        chain = [cert]
    return ClientTLSContext(
        trust_anchors=[p.ca] if verify else [], verify=verify,
        client_certificate_chain=chain, client_private_key=key, max_version=version,
    )


def server_config(version: str = "1.3", *, tls: bool = True, **kwargs: object) -> ServerConfig:
    """A ServerConfig; keyword arguments of ESTServerSettings go to ``est``,
    of HTTPLimits to ``http``, the rest to ServerConfig."""
    est_fields = set(ESTServerSettings.__dataclass_fields__)
    http_fields = set(HTTPLimits.__dataclass_fields__)
    est = {k: v for k, v in kwargs.items() if k in est_fields}
    http = {k: v for k, v in kwargs.items() if k in http_fields}
    rest = {k: v for k, v in kwargs.items() if k not in est_fields and k not in http_fields}
    return ServerConfig(
        tls=server_tls(version) if tls else None,
        est=ESTServerSettings(**est),  # type: ignore[arg-type]
        http=HTTPLimits(**http),  # type: ignore[arg-type]
        **rest,  # type: ignore[arg-type]
    )


def client_config(
    version: str = "1.3", identity: str | None = None, *, verify: bool = True,
    tls: bool = True, host: str = "127.0.0.1", **kwargs: object,
) -> ClientConfig:
    return ClientConfig(
        tls=client_tls(version, identity, verify) if tls else None, host=host, port=8443,
        **kwargs,  # type: ignore[arg-type]
    )


def new_key() -> pki.PrivateKey:
    return pki.make_key("p256")


def csr_for(key: pki.PrivateKey, cn: str = "device", **kwargs: object) -> bytes:
    return pkcs10.build_csr(key, pki.name(cn), **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# The reference server application


def _cn(csr: pkcs10.CertificationRequest) -> str:
    attrs = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else "device"


@dataclass
class ReferenceApp:
    """Answers every server request event like a small real EST server.

    Attributes:
        auth: "none", "basic", "digest", "cert" (a verified client
            certificate, else Basic), or "any" (Basic or Digest).
        auth_cacerts: also require authentication for /cacerts.
        digest_algorithms: offered Digest algorithms, best first.
        pending: how many 202 answers a CSR key gets before it is issued.
        retry_after: the Retry-After of those 202s.
        csr_attributes: the /csrattrs answer (None: 204).
        keks: DecryptKeyIdentifier -> AES key, for encrypted serverkeygen.
        requests: every request event seen, in order.
        now: the time for Digest nonces.
    """

    pki: PKI = field(default_factory=get_pki)
    auth: str = "none"
    auth_cacerts: bool = False
    digest_algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    pending: int = 0
    retry_after: int | datetime.datetime = 1
    csr_attributes: csrattrs.CsrAttributes | None = None
    keks: dict[bytes, bytes] = field(default_factory=dict)
    requests: list[ServerRequest] = field(default_factory=list)
    now: float = 1000.0
    _pending_seen: dict[bytes, int] = field(default_factory=dict)

    @functools.cached_property
    def digest(self) -> auth.DigestAuthority:
        return auth.DigestAuthority(b"k" * 32, REALM, algorithms=self.digest_algorithms)

    def handle(self, event: ServerRequest) -> ServerResponse:
        self.requests.append(event)
        refusal = self._authenticate(event)
        if refusal is not None:
            return refusal
        p = self.pki
        if isinstance(event, CACertsRequest):
            return CACertsResponse((p.ca,))
        if isinstance(event, CSRAttrsRequest):
            return CSRAttrsResponse(self.csr_attributes)
        if isinstance(event, (SimpleEnrollRequest, SimpleReenrollRequest)):
            wait = self._defer(event.csr.public_key_der)
            if wait is not None:
                return wait
            return CertificateResponse(pki.issue(p.ca, p.ca_key, event.csr.public_key, _cn(event.csr)))
        if isinstance(event, ServerKeygenRequest):
            wait = self._defer(event.csr.public_key_der)
            if wait is not None:
                return wait
            key = new_key()
            cert = pki.issue(p.ca, p.ca_key, key.public_key(), _cn(event.csr))
            key_id = event.csr.decrypt_key_identifier
            if key_id is None:
                return ServerKeygenResponse(cert, private_key=key)
            kek = self.keks.get(key_id)
            if kek is None:
                return ErrorResponse(400, "unknown DecryptKeyIdentifier")
            encrypted = serverkey.encrypt_key_package(
                key, signer_key=p.ca_key, signer_cert=p.ca,
                recipient=serverkey.KEKRecipient(key_id, kek),
            )
            return ServerKeygenResponse(cert, encrypted_key=encrypted)
        if isinstance(event, FullCMCRequest):
            certs = []
            ids = []
            for tagged in event.request.requests:
                csr = pkcs10.decode_csr(tagged.csr_der)
                certs.append(pki.issue(p.ca, p.ca_key, csr.public_key, _cn(csr)))
                ids.append(tagged.body_part_id)
            der = cmc.build_full_pki_response_success(
                certs, body_part_ids=ids, transaction_id=event.request.transaction_id,
                recipient_nonce=event.request.sender_nonce,
            )
            return FullCMCResponse(der)
        raise AssertionError(f"unexpected event {event!r}")

    def _defer(self, key_der: bytes) -> RetryLater | None:
        seen = self._pending_seen.get(key_der, 0)
        if seen < self.pending:
            self._pending_seen[key_der] = seen + 1
            return RetryLater(self.retry_after, "your request is being reviewed")
        return None

    def _challenges(self, stale: bool = False) -> tuple[str, ...]:
        if self.auth == "digest":
            return tuple(self.digest.challenges(self.now, stale))
        if self.auth == "any":
            return tuple(self.digest.challenges(self.now, stale)) + (auth.basic_challenge(REALM),)
        return (auth.basic_challenge(REALM),)

    def _authenticate(self, event: ServerRequest) -> ServerResponse | None:
        if self.auth == "none" or (isinstance(event, CACertsRequest) and not self.auth_cacerts):
            return None
        if self.auth == "cert" and event.facts.client_certificate_verified:
            return None
        creds = event.credentials
        if isinstance(creds, auth.BasicCredentials) and self.auth in ("basic", "cert", "any"):
            password = USERS.get(creds.username)
            if password is not None and auth.verify_basic(creds, creds.username, password):
                return None
        if isinstance(creds, auth.DigestCredentials) and self.auth in ("digest", "any"):
            result = self.digest.verify(
                creds, event.operation.method, event.target,
                auth.password_ha1_lookup(REALM, USERS.get), self.now,
            )
            if result is auth.DigestResult.OK:
                return None
            if result is auth.DigestResult.STALE:
                return AuthenticationRequired(self._challenges(stale=True))
        return AuthenticationRequired(self._challenges())


# ---------------------------------------------------------------------------
# The pair and its pump


Answer = Callable[[ServerRequest], ServerResponse]


class Pair:
    """A client and a server joined in memory.

    Args:
        server: the server connection (or its config).
        client: the client connection (or its config).
        app: answers server request events; None leaves them to the test
            (they collect in :attr:`unanswered`).
        byte_at_a_time: deliver every byte in its own ``receive_data`` call.
        transport_eof: deliver EOF to a side once its peer has finished
            closing (what a real transport does).
    """

    def __init__(
        self,
        server: ServerConnection | ServerConfig | None = None,
        client: ClientConnection | ClientConfig | None = None,
        *,
        app: ReferenceApp | Answer | None = None,
        byte_at_a_time: bool = False,
        credentials: Credentials | None = None,
        transport_eof: bool = True,
    ) -> None:
        if server is None:
            server = server_config()
        if client is None:
            client = client_config()
        self.server = server if isinstance(server, ServerConnection) else ServerConnection(server)
        self.client = (
            client if isinstance(client, ClientConnection)
            else ClientConnection(client, credentials=credentials)
        )
        if app is None:
            self.answer: Answer | None = None
        elif isinstance(app, ReferenceApp):
            self.answer = app.handle
        else:
            self.answer = app
        self.app = app
        self.byte_at_a_time = byte_at_a_time
        self.transport_eof = transport_eof
        self.server_events: list[object] = []
        self.unanswered: list[ServerRequest] = []
        self.wire_to_server: list[bytes] = []
        self.wire_to_client: list[bytes] = []
        self._eof_to_server = False
        self._eof_to_client = False

    # -- delivery ----------------------------------------------------------

    def feed(self, conn: ServerConnection | ClientConnection, data: bytes) -> None:
        """Give *data* to *conn*, whole or one byte at a time (b"" is EOF)."""
        if not data or not self.byte_at_a_time:
            conn.receive_data(data)
            return
        for i in range(len(data)):
            conn.receive_data(data[i : i + 1])

    def run_server(self) -> None:
        """Take every server event available, answering requests."""
        while True:
            event = self.server.next_event()
            if event is NEED_DATA or event is PAUSED:
                return
            if isinstance(event, ConnectionClosed):
                if not self.server_events or self.server_events[-1] != event:
                    self.server_events.append(event)
                return
            self.server_events.append(event)
            if isinstance(event, ServerRequest):
                if self.answer is None:
                    self.unanswered.append(event)
                    return
                self.server.send(self.answer(event))

    def pump(self, max_rounds: int = 200) -> None:
        """Move bytes both ways until neither side has anything to say."""
        for _ in range(max_rounds):
            moved = False
            out = self.client.data_to_send()
            if out:
                self.wire_to_server.append(out)
                if not self._eof_to_server:
                    self.feed(self.server, out)
                moved = True
            self.run_server()
            back = self.server.data_to_send()
            if back:
                self.wire_to_client.append(back)
                if not self._eof_to_client:
                    self.feed(self.client, back)
                moved = True
            if self.transport_eof:
                moved |= self._deliver_eof()
            if not moved:
                self.run_server()
                return
        raise AssertionError("pump made no progress towards quiescence")

    def _deliver_eof(self) -> bool:
        moved = False
        if self.server.closed and not self._eof_to_client:
            rest = self.server.data_to_send()
            if rest:
                self.feed(self.client, rest)
            self._eof_to_client = True
            self.client.receive_data(b"")
            moved = True
        if self.client.closed and not self._eof_to_server:
            rest = self.client.data_to_send()
            if rest:
                self.feed(self.server, rest)
            self._eof_to_server = True
            self.server.receive_data(b"")
            moved = True
        return moved

    # -- conveniences -------------------------------------------------------

    def handshake(self) -> None:
        self.pump()
        assert self.client.channel_binding is not None

    def result(self, max_rounds: int = 20) -> object:
        """Pump until the client has an event, and return it."""
        for _ in range(max_rounds):
            self.pump()
            event = self.client.next_event()
            if event is not NEED_DATA:
                return event
        raise AssertionError("the client never got a result")

    def roundtrip(self, request: ClientRequest) -> object:
        """Send *request* from the client and return its result event."""
        self.client.send(request)
        return self.result()

    def requests(self) -> list[ServerRequest]:
        return [e for e in self.server_events if isinstance(e, ServerRequest)]

    def of_type(self, kind: type | tuple[type, ...]) -> list[object]:
        return [e for e in self.server_events if isinstance(e, kind)]


def terminated(events: Iterable[object]) -> list[ConnectionTerminated]:
    return [e for e in events if isinstance(e, ConnectionTerminated)]
