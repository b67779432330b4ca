"""``python -m estproto demo``: a whole EST exchange, in memory, over real TLS.

A throwaway root CA and server certificate are created, then a
:class:`ClientConnection` and a :class:`ServerConnection` talk through memory
(no sockets): the client fetches /cacerts, is challenged for HTTP Digest
credentials, answers once it has verified the server, and enrolls a fresh
P-256 key with a CSR linked to the TLS channel (RFC 7030 3.5). The server
side's answers come from a few lines of application code below.

Until the socket adapters and the embedded CA exist this is the project's
main job; it prints what happened at each step and the issued certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import sys
from typing import TextIO

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from . import auth
from ._config import ClientConfig, ServerConfig
from ._events import (
    NEED_DATA,
    PAUSED,
    AuthenticationRequired,
    CACertsReceived,
    CACertsRequest,
    CACertsResponse,
    CertificateIssued,
    CertificateResponse,
    ErrorResponse,
    GetCACerts,
    ServerRequest,
    ServerResponse,
    SimpleEnroll,
    SimpleEnrollRequest,
)
from ._tls import ClientTLSContext, ServerTLSContext
from .client import ClientConnection, Credentials
from .codecs import pkcs10
from .server import ServerConnection

_REALM = "estproto demo"
_USERS = {"demo": "demo-password"}


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _certificate(
    subject: str,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name,
    signer: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    san: x509.GeneralName | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([san]), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _answer(
    request: ServerRequest,
    root: x509.Certificate,
    root_key: ec.EllipticCurvePrivateKey,
    digest: auth.DigestAuthority,
) -> ServerResponse:
    if isinstance(request, CACertsRequest):
        return CACertsResponse((root,))
    if isinstance(request, SimpleEnrollRequest):
        credentials = request.credentials
        lookup = auth.password_ha1_lookup(_REALM, _USERS.get)
        if not isinstance(credentials, auth.DigestCredentials) or (
            digest.verify(credentials, "POST", credentials.uri, lookup, now=0.0)
            is not auth.DigestResult.OK
        ):
            return AuthenticationRequired(tuple(digest.challenges(now=0.0)))
        csr = request.csr
        public_key = csr.public_key
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        return CertificateResponse(
            _certificate(str(cn), public_key, root.subject, root_key, ca=False)
        )
    return ErrorResponse(501, "not offered by the demo server")


def run(out: TextIO = sys.stdout) -> int:
    """Run the demo, printing to *out*; returns the process exit status."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _certificate("estproto demo root", root_key.public_key(), _name("estproto demo root"), root_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _certificate(
        "127.0.0.1", server_key.public_key(), root.subject, root_key, ca=False,
        san=x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    )
    digest = auth.DigestAuthority(b"demo nonce secret, 32 bytes long", _REALM)
    server = ServerConnection(ServerConfig(tls=ServerTLSContext([server_cert], server_key)))
    client = ClientConnection(
        ClientConfig(tls=ClientTLSContext(trust_anchors=[root]), host="127.0.0.1"),
        credentials=Credentials("demo", _USERS["demo"]),
    )

    def exchange() -> object:
        # Move bytes both ways until the client has a result: the job the
        # socket adapters do for real connections.
        while True:
            event = client.next_event()
            if event is not NEED_DATA:
                return event
            server.receive_data(client.data_to_send())
            while (request := server.next_event()) not in (NEED_DATA, PAUSED):
                if isinstance(request, ServerRequest):
                    response = _answer(request, root, root_key, digest)
                    print(f"  server: {request.operation.value} -> {type(response).__name__}", file=out)
                    server.send(response)
            client.receive_data(server.data_to_send())

    print("1. GET /cacerts over TLS (server verified against the demo root)", file=out)
    client.send(GetCACerts())
    cacerts = exchange()
    assert isinstance(cacerts, CACertsReceived)
    print(f"   got {len(cacerts.certificates)} CA certificate(s): "
          f"{cacerts.certificates[0].subject.rfc4514_string()}", file=out)

    binding = client.channel_binding
    assert binding is not None
    print(f"2. POST /simpleenroll, CSR linked to {binding.kind} (RFC 7030 3.5)", file=out)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = pkcs10.build_csr(key, _name("demo-device"), challenge_password=client.pop_challenge_password)
    client.send(SimpleEnroll(csr=csr))
    issued = exchange()
    if not isinstance(issued, CertificateIssued):
        print(f"   enrollment failed: {issued}", file=out)
        return 1
    cert = issued.certificate
    print(f"   issued: subject {cert.subject.rfc4514_string()}, serial {cert.serial_number:x}", file=out)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    same_key = cert.public_key().public_bytes(serialization.Encoding.DER, spki) == (
        key.public_key().public_bytes(serialization.Encoding.DER, spki)
    )
    print(f"   the certificate holds the key we generated: {same_key}", file=out)
    print(cert.public_bytes(serialization.Encoding.PEM).decode(), end="", file=out)
    return 0
