"""A trio EST server in front of your own CA: a custom :class:`estproto.ca.CABackend`.

:class:`estproto.ca.EmbeddedCA` is only the default backend. An application
that has its own PKI (an HSM, a cloud CA, a policy engine) subclasses
:class:`~estproto.ca.CABackend`, implements the authorization decision and
the operations (RFC 7030 4.1 /cacerts, 4.2.1 /simpleenroll, 4.2.2
/simplereenroll, 4.5 /csrattrs), and hands :func:`estproto.ca.make_handler`
of it to a server adapter, here :func:`estproto.trio.serve`.

The backend below, :class:`ExampleCA`, keeps a P-256 root CA in memory and
issues under its own policy: the subject must be exactly one commonName
ending in ``.example`` and every dNSName in the subjectAltName too; nothing
else is accepted (403). Devices authenticate with HTTP Basic (a fixed user
table) to enroll, and with the certificate being renewed, as a TLS client
certificate, to re-enroll ("the client MUST use the certificate being
renewed", RFC 7030 4.2.2 / 3.3.2); the EST layer has already checked that
subject and SAN are unchanged. :func:`estproto.ca.make_handler` runs the
backend in worker threads and answers /cacerts and /csrattrs without
authentication (RFC 7030 4.1.2, 4.5.1).

Run it::

    python examples/trio_custom_backend.py --port 8443

It prints the path of the root certificate to trust and listens on
https://127.0.0.1:PORT/.well-known/est (user ``device`` / ``device-password``).
Enroll with curl (the CN must end in .example)::

    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \\
        -subj /CN=sensor1.example -keyout k.pem -outform DER | base64 > csr.b64
    curl --cacert ROOT.pem --user device:device-password --data @csr.b64 \\
        -H "Content-Type: application/pkcs10" \\
        https://127.0.0.1:8443/.well-known/est/simpleenroll
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import tempfile
import threading
from pathlib import Path
from typing import Mapping

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import estproto.trio
from estproto import (
    AuthenticationRequired,
    CertificateResponse,
    ErrorResponse,
    ServerConfig,
    ServerRequest,
    ServerResponse,
    ServerTLSContext,
    SimpleEnrollRequest,
    SimpleReenrollRequest,
)
from estproto import auth
from estproto.ca import CABackend, Principal, make_handler
from estproto.codecs.csrattrs import CsrAttributes, RequiredOID
from estproto.codecs.pkcs10 import CertificationRequest

#: The HTTP authentication realm of the example.
REALM = "example CA"

#: Users allowed to enroll (a real backend asks its user directory).
DEFAULT_USERS: Mapping[str, str] = {"device": "device-password"}

#: The only names this CA certifies end in this suffix.
DOMAIN_SUFFIX = ".example"

#: ecdsa-with-SHA256: what /csrattrs asks CSRs to be signed with (RFC 7030 4.5.2).
_OID_ECDSA_SHA256 = "1.2.840.10045.4.3.2"

#: notBefore is backdated a little for clients whose clock lags.
_BACKDATE = datetime.timedelta(minutes=5)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class PolicyError(Exception):
    """The request breaks the CA's naming policy (answered 403)."""


class ExampleCA(CABackend):
    """An in-memory CA that certifies only names ending in ``.example``.

    Args:
        users: user name -> password for HTTP Basic.
        validity: lifetime of issued certificates.
        domain_suffix: the suffix every CN and dNSName must end with.

    Attributes:
        certificate: the root CA certificate (what clients trust).
        issued: serial number -> certificate, for every certificate issued
            (the "database" re-enrollment is checked against).

    Thread-safe: :func:`make_handler` calls it from worker threads.
    """

    def __init__(
        self,
        users: Mapping[str, str] = DEFAULT_USERS,
        *,
        validity: datetime.timedelta = datetime.timedelta(days=30),
        domain_suffix: str = DOMAIN_SUFFIX,
    ) -> None:
        self.users = dict(users)
        self.validity = validity
        self.domain_suffix = domain_suffix
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        public = self._key.public_key()
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(_name("Example Custom CA"))
            .issuer_name(_name("Example Custom CA"))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.issued: dict[int, x509.Certificate] = {}
        self._lock = threading.Lock()

    # -- certificates ------------------------------------------------------

    def sign(
        self,
        subject: x509.Name,
        public_key: object,
        sans: list[x509.GeneralName],
        eku: x509.ObjectIdentifier = ExtendedKeyUsageOID.CLIENT_AUTH,
    ) -> x509.Certificate:
        """Issue an end-entity certificate and remember it.

        Args:
            subject, public_key, sans: what the certificate certifies.
            eku: its extended key usage (clientAuth for devices).

        Returns:
            The certificate, signed by :attr:`certificate`'s key.
        """
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + self.validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                           critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        with self._lock:
            self.issued[cert.serial_number] = cert
        return cert

    def server_tls(self, host: str = "127.0.0.1") -> ServerTLSContext:
        """A TLS context for the EST endpoint at *host* (an IP address or a
        DNS name), with a server certificate from this CA; client
        certificates from this CA are requested and verified (RFC 7030 3.3.2)."""
        key = ec.generate_private_key(ec.SECP256R1())
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        cert = self.sign(_name(host), key.public_key(), [san], ExtendedKeyUsageOID.SERVER_AUTH)
        return ServerTLSContext([cert], key, client_trust_anchors=[self.certificate])

    def check_policy(self, csr: CertificationRequest) -> list[x509.GeneralName]:
        """The naming policy: one CN and all dNSNames end in the suffix.

        Returns:
            The subjectAltName entries to certify.

        Raises:
            PolicyError: the request breaks the policy.
        """
        attributes = list(csr.subject)
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(attributes) != 1 or len(cns) != 1:
            raise PolicyError("the subject must be exactly one commonName")
        cn = cns[0].value
        if not isinstance(cn, str) or not cn.endswith(self.domain_suffix) or len(cn) == len(self.domain_suffix):
            raise PolicyError(f"the commonName must end in {self.domain_suffix}")
        sans = list(csr.subject_alt_names)
        for san in sans:
            if not isinstance(san, x509.DNSName) or not san.value.endswith(self.domain_suffix):
                raise PolicyError(f"only dNSName entries ending in {self.domain_suffix} are allowed")
        return sans

    # -- CABackend ---------------------------------------------------------

    def authorize(self, request: ServerRequest) -> Principal | ServerResponse:
        """A verified client certificate we issued, else HTTP Basic."""
        facts = request.facts
        cert = facts.client_certificate
        if cert is not None and facts.client_certificate_verified:
            with self._lock:
                known = self.issued.get(cert.serial_number)
            if known is not None and known == cert:
                return Principal(f"cert:{cert.serial_number:x}", "certificate", cert)
        creds = request.credentials
        if isinstance(creds, auth.BasicCredentials):
            expected = self.users.get(creds.username)
            # Compare even for an unknown user, so timing does not tell.
            if auth.verify_basic(creds, creds.username, expected or "\x00") and expected is not None:
                return Principal(f"user:{creds.username}", "basic")
        return AuthenticationRequired((auth.basic_challenge(REALM),))

    def cacerts(self, label: str) -> tuple[x509.Certificate, ...]:
        if label:
            raise LookupError(label)  # no CA labels here (404)
        return (self.certificate,)

    def csrattrs(self, label: str) -> CsrAttributes | None:
        if label:
            raise LookupError(label)
        return CsrAttributes((RequiredOID(_OID_ECDSA_SHA256),))

    def enroll(self, request: SimpleEnrollRequest, principal: Principal) -> ServerResponse:
        try:
            sans = self.check_policy(request.csr)
        except PolicyError as exc:
            return ErrorResponse(403, str(exc))
        return CertificateResponse(self.sign(request.csr.subject, request.csr.public_key, sans))

    def reenroll(self, request: SimpleReenrollRequest, principal: Principal) -> ServerResponse:
        # RFC 7030 4.2.2: renewal is authenticated by the certificate being
        # renewed; a password is not enough.
        if principal.method != "certificate":
            return ErrorResponse(403, "re-enrollment needs the certificate being renewed")
        try:
            sans = self.check_policy(request.csr)
        except PolicyError as exc:
            return ErrorResponse(403, str(exc))
        return CertificateResponse(self.sign(request.csr.subject, request.csr.public_key, sans))


def server_config(ca: ExampleCA, host: str = "127.0.0.1") -> ServerConfig:
    """The server configuration: TLS from *ca*, defaults otherwise."""
    return ServerConfig(tls=ca.server_tls(host))


async def serve(
    ca: ExampleCA,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[estproto.trio.ESTServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve EST for *ca* until cancelled (``await nursery.start(serve, ca)``
    reports the :class:`estproto.trio.ESTServer`, whose ``.port`` is bound)."""
    await estproto.trio.serve(make_handler(ca), server_config(ca, host), host, port,
                              task_status=task_status)


async def _main(host: str, port: int, folder: Path) -> None:
    ca = ExampleCA()
    root = folder / "root.pem"
    root.write_bytes(ca.certificate.public_bytes(serialization.Encoding.PEM))
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve, ca, host, port)
        print(f"trust {root}")
        print(f"listening on https://{host}:{server.port}/.well-known/est", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``--host``, ``--port``; runs until interrupted."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    args = parser.parse_args(argv)
    # Removed on exit (Ctrl-C included).
    with tempfile.TemporaryDirectory(prefix="est-custom-ca-") as folder:
        try:
            trio.run(_main, args.host, args.port, Path(folder))
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
