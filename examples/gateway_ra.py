"""An EST gateway (Registration Authority, RFC 7030 3.7) built from estproto's pieces.

Devices talk EST to the gateway; the gateway checks them (HTTP Basic for
/simpleenroll, the certificate being renewed for /simplereenroll, RFC 7030
3.2.3 and 4.2.2) and forwards each CSR, unchanged, to the upstream EST CA
with the estproto client (:class:`estproto.asyncio.ESTClient`), then returns
the upstream's certificate to the device. Upstream, the gateway
authenticates with a TLS client certificate carrying id-kp-cmcRA
(1.3.6.1.5.5.7.3.28): "If the client's certificate was issued by the EST CA,
and it includes the id-kp-cmcRA ... extended key usage extension, then the
client is a Registration Authority (RA)" (RFC 7030 3.7). That matters for
proof-of-possession linking (RFC 7030 3.5): a device may link its CSR to
its TLS session with the gateway, the gateway verifies that link, and the
CA accepts the CSR from the RA although it does not match the RA's own
session ("the EST server could be configured to accept POP linking
information that does not match the current TLS session because the
authenticated EST client RA has verified this information", 3.7).

Pieces:

* the upstream CA is :class:`estproto.ca.EmbeddedCA` served by
  :func:`estproto.asyncio.start_server` (:func:`start_upstream`);
* :func:`provision_ra` gives the gateway its certificate from that CA: the
  embedded CA's profile is per CA, not per request, so the data directory
  is opened a second time with a profile whose EKUs are serverAuth,
  clientAuth and cmcRA, and one enrollment is made through the public
  :meth:`EmbeddedCA.enroll` with an operator principal. The certificate is
  recorded in the CA's store, which the CA requires of client certificates.
  The same certificate is the gateway's TLS server certificate towards the
  devices (its SAN names the gateway's address), so a device trusts one
  file, the CA's ``ca.pem``, for both the gateway and its own chain;
* :class:`Gateway` is the request handler (a coroutine function, awaited in
  the connection's task) with a small pool of upstream clients
  (``ESTClient`` serves one request at a time, over a keep-alive connection).

Deferred enrollment passes through: an upstream 202 is answered 202 with
the same Retry-After (RFC 7030 4.2.3) and the device's retry is forwarded
again. Upstream refusals (4xx) are relayed with their status; an unreachable
or broken upstream is 502.

Limitation: for a relayed /simplereenroll the upstream CA cannot check that
the device's current certificate is unrevoked (it sees the RA's
certificate, RFC 7030 3.7); the gateway checks that the certificate verifies
against the CA, not revocation.

Run it::

    python examples/gateway_ra.py --port 8443

It creates a throwaway upstream CA, prints the ``ca.pem`` to trust, and
accepts enrollments from ``device`` / ``device-password``.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import tempfile
from pathlib import Path
from typing import Awaitable, Callable, Mapping, Sequence, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import estproto.asyncio
from estproto import (
    AuthenticationRequired,
    CACertsRequest,
    CACertsResponse,
    CertificateResponse,
    ClientTLSContext,
    ConnectionFacts,
    CSRAttrsRequest,
    CSRAttrsResponse,
    ErrorResponse,
    RemoteProtocolError,
    RetryLater,
    ServerConfig,
    ServerRequest,
    ServerResponse,
    ServerTLSContext,
    SimpleEnrollRequest,
    SimpleReenrollRequest,
)
from estproto import auth
from estproto.ca import CASettings, EmbeddedCA, Principal, Profile
from estproto.codecs import pkcs10

#: id-kp-cmcRA (RFC 6402 section 2.10): marks the gateway as an RA.
ID_KP_CMC_RA = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.28")

#: The HTTP authentication realm devices see.
REALM = "EST gateway"

#: Devices allowed to enroll through the gateway.
DEFAULT_USERS: Mapping[str, str] = {"device": "device-password"}

#: Upstream keep-alive connections (one request at a time each). A gateway
#: fronting many devices wants a few, not one per device.
UPSTREAM_CONNECTIONS = 4

#: Seconds an upstream enrollment may take; beyond it the device gets 502.
UPSTREAM_TIMEOUT = 30.0

_log = logging.getLogger("estproto.examples.gateway")

_T = TypeVar("_T")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def provision_ra(
    ca_dir: Path, hostnames: Sequence[str] = ("127.0.0.1",), cn: str = "EST gateway",
) -> tuple[tuple[x509.Certificate, ...], ec.EllipticCurvePrivateKey]:
    """Issue the gateway's RA certificate from the embedded CA in *ca_dir*.

    Args:
        ca_dir: an initialised :class:`EmbeddedCA` data directory.
        hostnames: the gateway's addresses (subjectAltName, for its TLS
            server role towards the devices).
        cn: the certificate's commonName.

    Returns:
        The certificate chain (RA certificate first, then any intermediate)
        and its new P-256 key.

    Raises:
        RuntimeError: the CA refused (it answered something else than a
            certificate).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    csr = pkcs10.decode_csr(pkcs10.build_csr(
        key, _name(cn), subject_alt_names=[_general_name(h) for h in hostnames]))
    ra_profile = Profile(extended_key_usages=(
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH, ID_KP_CMC_RA))
    with EmbeddedCA.open(ca_dir, settings=CASettings(profile=ra_profile)) as ca:
        request = SimpleEnrollRequest(label="", credentials=None,
                                      facts=ConnectionFacts(peer="provisioning"), csr=csr)
        response = ca.enroll(request, Principal("operator:ra-provisioning", "operator"))
        if not isinstance(response, CertificateResponse):
            raise RuntimeError(f"the CA refused the RA certificate: {response}")
        chain = (response.certificate,) + ca.ca_certificates[:-1]
    return chain, key


async def start_upstream(
    ca: EmbeddedCA, host: str = "127.0.0.1", port: int = 0,
) -> estproto.asyncio.ESTServer:
    """Serve the embedded CA (the upstream EST server) on *host*:*port*."""
    config = ServerConfig(tls=ca.server_tls_context(), est=ca.est_settings())
    return await estproto.asyncio.start_server(ca.handler(), config, host, port)


class Gateway:
    """The gateway's request handler: authenticate devices, forward upstream.

    Args:
        upstream_host, upstream_port: the EST CA.
        upstream_trust: the CA certificates (trust anchors upstream; also
            the anchors device certificates are verified against).
        ra_chain, ra_key: the RA certificate (id-kp-cmcRA) and its key, the
            TLS client identity upstream.
        users: device user name -> password (HTTP Basic).
        upstream_connections: size of the upstream client pool.

    Use ``async with Gateway(...) as gateway:`` (closes the upstream
    connections), then serve ``gateway.handle`` (see :meth:`server_config`).
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        upstream_trust: Sequence[x509.Certificate],
        ra_chain: Sequence[x509.Certificate],
        ra_key: ec.EllipticCurvePrivateKey,
        *,
        users: Mapping[str, str] = DEFAULT_USERS,
        upstream_connections: int = UPSTREAM_CONNECTIONS,
    ) -> None:
        self.upstream_trust = tuple(upstream_trust)
        self.ra_chain = tuple(ra_chain)
        self._ra_key = ra_key
        self.users = dict(users)
        tls = ClientTLSContext(trust_anchors=self.upstream_trust,
                               client_certificate_chain=self.ra_chain, client_private_key=ra_key)
        # max_retries=0: an upstream 202 goes back to the device at once
        # instead of holding its connection for the whole Retry-After.
        self._clients = [
            estproto.asyncio.ESTClient(upstream_host, upstream_port, tls, max_retries=0,
                                       request_timeout=UPSTREAM_TIMEOUT)
            for _ in range(upstream_connections)
        ]
        self._idle: asyncio.Queue[estproto.asyncio.ESTClient] = asyncio.Queue()
        for client in self._clients:
            self._idle.put_nowait(client)
        self._cacerts: tuple[x509.Certificate, ...] | None = None
        #: Enrollments forwarded upstream (for tests and statistics).
        self.forwarded = 0

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every upstream connection."""
        for client in self._clients:
            await client.aclose()

    def server_config(self) -> ServerConfig:
        """The device-facing server configuration: the RA certificate as TLS
        server certificate, device certificates verified against the CA."""
        tls = ServerTLSContext(self.ra_chain, self._ra_key,
                               client_trust_anchors=self.upstream_trust)
        return ServerConfig(tls=tls)

    # -- device side -------------------------------------------------------

    def _authorize(self, request: ServerRequest) -> str | ServerResponse:
        facts = request.facts
        if isinstance(request, SimpleReenrollRequest):
            # RFC 7030 4.2.2: renewal is authenticated by the certificate
            # being renewed; the EST layer checked subject and SAN match it.
            if facts.client_certificate is not None and facts.client_certificate_verified:
                return f"cert:{facts.client_certificate.serial_number:x}"
            return ErrorResponse(403, "re-enrollment needs the certificate being renewed")
        creds = request.credentials
        if isinstance(creds, auth.BasicCredentials):
            expected = self.users.get(creds.username)
            if auth.verify_basic(creds, creds.username, expected or "\x00") and expected is not None:
                return f"user:{creds.username}"
        return AuthenticationRequired((auth.basic_challenge(REALM),))

    async def handle(self, request: ServerRequest) -> ServerResponse:
        """Answer one device request (the handler given to the server)."""
        if request.label:
            return ErrorResponse(404, "unknown CA label")
        try:
            if isinstance(request, CACertsRequest):
                # RFC 7030 4.1.3: the RA answers with the CA's certificates.
                if self._cacerts is None:
                    self._cacerts = await self._upstream_cacerts()
                return CACertsResponse(self._cacerts)
            if isinstance(request, CSRAttrsRequest):
                return CSRAttrsResponse(await self._with_client(lambda c: c.csrattrs()))
            if not isinstance(request, (SimpleEnrollRequest, SimpleReenrollRequest)):
                return ErrorResponse(501, "this gateway relays simpleenroll and simplereenroll only")
            who = self._authorize(request)
            if isinstance(who, ServerResponse):
                return who
            csr_der = request.csr.der
            if isinstance(request, SimpleEnrollRequest):
                cert = await self._with_client(lambda c: c.simpleenroll(csr_der))
            else:
                cert = await self._with_client(lambda c: c.simplereenroll(csr_der))
            self.forwarded += 1
            _log.info("%s for %s: issued serial %x", request.operation.value, who, cert.serial_number)
            return CertificateResponse(cert)
        except estproto.asyncio.ESTPendingError as exc:
            return RetryLater(exc.pending.retry_after, exc.pending.message)
        except estproto.asyncio.ESTError as exc:
            if 400 <= exc.status < 500 and exc.status != 401:
                return ErrorResponse(exc.status, exc.reason)  # the CA's refusal
            _log.warning("upstream CA answered %d: %s", exc.status, exc.reason)
            return ErrorResponse(502, "the upstream CA failed")
        except (OSError, RemoteProtocolError) as exc:
            _log.warning("upstream CA unreachable: %s", exc)
            return ErrorResponse(502, "the upstream CA is unreachable")

    # -- upstream side -----------------------------------------------------

    async def _upstream_cacerts(self) -> tuple[x509.Certificate, ...]:
        return await self._with_client(lambda c: c.cacerts())

    async def _with_client(self, call: Callable[[estproto.asyncio.ESTClient], Awaitable[_T]]) -> _T:
        """Run ``call(client)`` on an idle upstream client from the pool."""
        client = await self._idle.get()
        try:
            return await call(client)
        finally:
            self._idle.put_nowait(client)


async def start_gateway(
    gateway: Gateway, host: str = "127.0.0.1", port: int = 0,
) -> estproto.asyncio.ESTServer:
    """Serve *gateway* to devices on *host*:*port*."""
    return await estproto.asyncio.start_server(gateway.handle, gateway.server_config(), host, port)


async def _main(host: str, port: int, folder: Path) -> None:
    ca_dir = folder / "upstream-ca"
    EmbeddedCA.init(ca_dir, hostnames=("127.0.0.1",)).close()
    ra_chain, ra_key = provision_ra(ca_dir, (host,))
    with EmbeddedCA.open(ca_dir) as ca:
        upstream = await start_upstream(ca)
        async with upstream, Gateway("127.0.0.1", upstream.port, ca.ca_certificates,
                                     ra_chain, ra_key) as gateway:
            server = await start_gateway(gateway, host, port)
            async with server:
                print(f"upstream CA on https://127.0.0.1:{upstream.port}/.well-known/est")
                print(f"trust {ca_dir / 'ca.pem'}")
                print(f"listening on https://{host}:{server.port}/.well-known/est", flush=True)
                await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    """Command line: ``--host``, ``--port``; runs until interrupted."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    # Removed on exit (Ctrl-C included).
    with tempfile.TemporaryDirectory(prefix="est-gateway-") as folder:
        try:
            asyncio.run(_main(args.host, args.port, Path(folder)))
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
