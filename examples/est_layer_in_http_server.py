"""Embedding estproto's EST layer in an HTTP server you already have.

The host here is the standard library's ``http.server`` behind ``ssl``: it
parses HTTP and terminates TLS itself, so it uses only
:class:`estproto.ESTServerProtocol`, the layer that maps an HTTP request to an
EST event and an EST response back to status, headers and body. The host
tells the layer what its TLS knows through :class:`estproto.ConnectionFacts`:
the client certificate and, on TLS 1.2, the tls-unique channel binding (the
``ssl`` module cannot export tls-exporter, so proof-of-possession linking on
TLS 1.3 needs estproto's own TLS layer).

Run it::

    python examples/est_layer_in_http_server.py --port 8443

It creates a throwaway CA, prints the path of ``ca.pem`` to trust, and issues
certificates to the user ``demo`` / ``demo-password`` (HTTP Basic).
"""

from __future__ import annotations

import argparse
import datetime
import http.server
import ipaddress
import shutil
import ssl
import tempfile
import threading
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import estproto
from estproto import auth

USERS = {"demo": "demo-password"}


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class TinyCA:
    """Just enough CA for the example: a root that signs what it is asked."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = self.sign(_name("example root"), self.key.public_key(), ca=True)

    def sign(self, subject: x509.Name, public_key: Any, *, ca: bool = False,
             san: x509.GeneralName | None = None) -> x509.Certificate:
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder().subject_name(subject)
            .issuer_name(_name("example root")).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san is not None:
            builder = builder.add_extension(x509.SubjectAlternativeName([san]), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def answer(self, request: estproto.ServerRequest) -> estproto.ServerResponse:
        """The application's policy: cacerts for anyone, enrollment for USERS."""
        if isinstance(request, estproto.CACertsRequest):
            return estproto.CACertsResponse((self.cert,))
        creds = request.credentials
        expected = USERS.get(creds.username) if isinstance(creds, auth.BasicCredentials) else None
        if expected is None or not auth.verify_basic(creds, creds.username, expected):  # type: ignore[arg-type]
            return estproto.AuthenticationRequired((auth.basic_challenge("example"),))
        if isinstance(request, estproto.SimpleEnrollRequest):
            return estproto.CertificateResponse(self.sign(request.csr.subject, request.csr.public_key))
        return estproto.ErrorResponse(501, "this example only enrolls")


def make_handler(ca: TinyCA) -> type[http.server.BaseHTTPRequestHandler]:
    class ESTHandler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _facts(self) -> estproto.ConnectionFacts:
            sock = self.connection
            assert isinstance(sock, ssl.SSLSocket)
            der = sock.getpeercert(binary_form=True)
            return estproto.ConnectionFacts(
                is_tls=True,
                tls_version=sock.version(),
                channel_binding=sock.get_channel_binding("tls-unique"),
                channel_binding_type="tls-unique" if sock.version() == "TLSv1.2" else None,
                client_certificate=x509.load_der_x509_certificate(der) if der else None,
                # ssl verified the chain during the handshake (CERT_OPTIONAL).
                client_certificate_verified=der is not None,
                peer=f"{self.client_address[0]}:{self.client_address[1]}",
            )

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > estproto.HTTPLimits().max_body_size:
                self.send_error(413)
                return
            body = self.rfile.read(length) if length else b""
            headers = [(k.lower(), v) for k, v in self.headers.items()]
            est = estproto.ESTServerProtocol()
            event = est.receive_request(self.command, self.path, headers, body, self._facts())
            if isinstance(event, estproto.RequestRejected):
                reply = event.reply
            else:
                reply = est.respond(ca.answer(event))
            self.send_response(reply.status)
            for name, value in reply.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

        do_GET = do_POST = do_PUT = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep the example quiet; a real host logs here

    return ESTHandler


def make_server(ca: TinyCA, host: str = "127.0.0.1", port: int = 0) -> http.server.ThreadingHTTPServer:
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = ca.sign(_name(host), server_key.public_key(),
                          san=x509.IPAddress(ipaddress.ip_address(host)))
    folder = Path(tempfile.mkdtemp(prefix="est-example-"))
    (folder / "server.pem").write_bytes(
        server_cert.public_bytes(serialization.Encoding.PEM)
        + server_key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
    )
    (folder / "ca.pem").write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8996
    context.load_cert_chain(folder / "server.pem")
    context.load_verify_locations(folder / "ca.pem")
    context.verify_mode = ssl.CERT_OPTIONAL  # RFC 7030 3.3.2: request, don't require
    httpd = http.server.ThreadingHTTPServer((host, port), make_handler(ca))
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    httpd.ca_pem = folder / "ca.pem"  # type: ignore[attr-defined]
    return httpd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8443)
    args = parser.parse_args()
    httpd = make_server(TinyCA(), port=args.port)
    print(f"trust {httpd.ca_pem}; listening on https://127.0.0.1:{httpd.server_address[1]}/.well-known/est")  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        thread.join()
    except KeyboardInterrupt:
        httpd.shutdown()
    finally:
        shutil.rmtree(httpd.ca_pem.parent, ignore_errors=True)  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
