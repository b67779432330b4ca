"""Tests for estproto._tls: real certificates, real TLS, all in memory.

A pyOpenSSL-vs-pyOpenSSL pair could hide a bug both sides share, so the stdlib
``ssl`` module (ssl.MemoryBIO + SSLObject) plays the peer in the interop tests.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path
from typing import Callable, Protocol

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st
from OpenSSL import SSL

from estproto._errors import LocalProtocolError, RemoteProtocolError
from estproto._tls import (
    ChannelBinding,
    ClientTLSContext,
    ServerTLSContext,
    TLSError,
    TLSLayer,
    TLSState,
    TLSVerificationError,
)

import pki

HOST = "est.example"
CMC_RA = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.28")
X509_V_ERR_CERT_HAS_EXPIRED = 10


def issue_cert(
    ca: x509.Certificate,
    ca_key: pki.PrivateKey,
    key: pki.PrivateKey,
    cn: str,
    sans: tuple[x509.GeneralName, ...] = (),
    eku: tuple[x509.ObjectIdentifier, ...] = (),
    not_after: datetime.datetime | None = None,
    is_ca: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(pki.name(cn))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=30))
        .not_valid_after(not_after or now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return builder.sign(ca_key, pki.sign_hash(ca_key))  # type: ignore[arg-type]


# One PKI for the whole module: key generation is the slow part.
CA, CA_KEY = pki.make_ca("Test Root CA")
SUB_CA_KEY = pki.make_key("p256")
SUB_CA = issue_cert(CA, CA_KEY, SUB_CA_KEY, "Test Issuing CA", is_ca=True)
OTHER_CA, OTHER_CA_KEY = pki.make_ca("Other Root CA")
SERVER_KEY = pki.make_key("p256")
SERVER_CERT = issue_cert(
    SUB_CA, SUB_CA_KEY, SERVER_KEY, HOST,
    sans=(x509.DNSName(HOST), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))),
)
CLIENT_KEY = pki.make_key("p256")
CLIENT_CERT = issue_cert(CA, CA_KEY, CLIENT_KEY, "device-1")
SELF_SIGNED_KEY = pki.make_key("p256")
SELF_SIGNED, _ = pki.make_ca("self-signed device", SELF_SIGNED_KEY)
EXPIRED_CERT = issue_cert(
    CA, CA_KEY, CLIENT_KEY, "device-expired",
    not_after=datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1),
)

SERVER_CHAIN = (SERVER_CERT, SUB_CA)


def server_context(version: str | None = None, **kwargs: object) -> ServerTLSContext:
    low, high = (version, version) if version else ("1.2", "1.3")
    return ServerTLSContext(
        SERVER_CHAIN, SERVER_KEY, client_trust_anchors=[CA],
        min_version=low, max_version=high, **kwargs,  # type: ignore[arg-type]
    )


def client_context(version: str | None = None, **kwargs: object) -> ClientTLSContext:
    low, high = (version, version) if version else ("1.2", "1.3")
    kwargs.setdefault("trust_anchors", [CA])
    return ClientTLSContext(min_version=low, max_version=high, **kwargs)  # type: ignore[arg-type]


SERVER = {v: server_context(v) for v in ("1.2", "1.3")}
CLIENT = {v: client_context(v) for v in ("1.2", "1.3")}
VERSIONS = pytest.mark.parametrize("version", ["1.2", "1.3"])


def expect(layer: TLSLayer, state: TLSState) -> None:
    assert layer.state is state


class Peer(Protocol):
    def receive_data(self, data: bytes) -> None: ...
    def data_to_send(self) -> bytes: ...


def pump(a: Peer, b: Peer, *, byte_at_a_time: bool = False) -> int:
    """Move bytes between *a* and *b* until neither has anything to send."""
    flights = 0
    while True:
        moved = False
        for src, dst in ((a, b), (b, a)):
            data = src.data_to_send()
            if data:
                moved = True
                flights += 1
                if byte_at_a_time:
                    for i in range(len(data)):
                        dst.receive_data(data[i : i + 1])
                else:
                    dst.receive_data(data)
        if not moved:
            return flights


def connect(
    server_ctx: ServerTLSContext,
    client_ctx: ClientTLSContext,
    hostname: str | None = HOST,
    **kwargs: object,
) -> tuple[TLSLayer, TLSLayer]:
    client = TLSLayer(client_ctx, server_hostname=hostname, **kwargs)  # type: ignore[arg-type]
    server = TLSLayer(server_ctx)
    pump(client, server)
    return client, server


def close_both(client: TLSLayer, server: TLSLayer) -> None:
    client.close()
    pump(client, server)
    server.close()
    pump(client, server)


# -- handshake and data ------------------------------------------------------


@VERSIONS
def test_handshake_and_data(version: str) -> None:
    client, server = connect(SERVER[version], CLIENT[version])
    for layer in (client, server):
        assert layer.handshake_complete
        expect(layer, TLSState.OPEN)
        assert layer.version == f"TLSv{version}"
        assert layer.cipher
        assert not layer.session_reused
        assert layer.extended_master_secret
    assert server.server_name == HOST
    client.write(b"GET /.well-known/est/cacerts HTTP/1.1\r\n\r\n")
    pump(client, server)
    assert server.read() == b"GET /.well-known/est/cacerts HTTP/1.1\r\n\r\n"
    assert server.read() == b""
    server.write(b"HTTP/1.1 200 OK\r\n")
    pump(client, server)
    assert client.read() == b"HTTP/1.1 200 OK\r\n"
    # The server certificate as the client sees it: verified, chain as sent.
    peer = client.peer_certificate
    assert peer is not None and peer.verified and peer.errors == ()
    assert peer.certificate == SERVER_CERT
    assert peer.chain == (SUB_CA,)
    assert peer.verified_chain == (SERVER_CERT, SUB_CA, CA)


@VERSIONS
def test_large_writes_both_ways(version: str) -> None:
    client, server = connect(SERVER[version], CLIENT[version])
    up = bytes(range(256)) * 4096  # 1 MiB
    down = up[::-1]
    client.write(up)
    server.write(down)
    pump(client, server)
    assert server.read() == up
    assert client.read() == down


@VERSIONS
def test_byte_at_a_time_with_early_writes(version: str) -> None:
    client = TLSLayer(CLIENT[version], server_hostname=HOST)
    server = TLSLayer(SERVER[version])
    # Written before the handshake: buffered, flushed when it completes.
    client.write(b"request")
    server.write(b"greeting")
    assert pump(client, server, byte_at_a_time=True) >= 3
    assert client.state is server.state is TLSState.OPEN
    assert server.read() == b"request"
    assert client.read() == b"greeting"
    client.write(b"x" * 40000)
    pump(client, server, byte_at_a_time=True)
    assert server.read() == b"x" * 40000


def test_tls13_session_tickets_are_consumed_silently() -> None:
    client, server = connect(SERVER["1.3"], CLIENT["1.3"])
    # The tickets went across in the pump; the client read no plaintext from them.
    assert client.read() == b""
    assert client.session is not None


# -- channel bindings ---------------------------------------------------------


def test_tls12_full_handshake_tls_unique_is_client_finished() -> None:
    client, server = connect(SERVER["1.2"], CLIENT["1.2"])
    binding = client.channel_binding
    assert binding == server.channel_binding
    assert binding is not None and binding.kind == "tls-unique"
    assert binding.value == client._conn.get_finished() == server._conn.get_peer_finished()
    assert binding.value != server._conn.get_finished()


def test_tls12_resumed_handshake_tls_unique_is_server_finished() -> None:
    client, server = connect(SERVER["1.2"], CLIENT["1.2"])
    first = client.channel_binding
    session = client.session
    assert session is not None
    close_both(client, server)
    client, server = connect(SERVER["1.2"], CLIENT["1.2"], session=session)
    assert client.session_reused and server.session_reused
    binding = client.channel_binding
    assert binding == server.channel_binding
    assert binding is not None and binding.kind == "tls-unique"
    # RFC 5929 3.1: on resumption the server's Finished comes first.
    assert binding.value == server._conn.get_finished() == client._conn.get_peer_finished()
    assert binding.value != client._conn.get_finished()
    assert binding != first


@VERSIONS
def test_resumption_can_be_disabled(version: str) -> None:
    ctx = server_context(version, session_resumption=False)
    client, server = connect(ctx, CLIENT[version])
    session = client.session
    assert session is not None
    close_both(client, server)
    client, server = connect(ctx, CLIENT[version], session=session)
    assert not client.session_reused and not server.session_reused
    assert client.channel_binding == server.channel_binding


@pytest.mark.parametrize("resume", [False, True])
def test_tls13_uses_tls_exporter(resume: bool) -> None:
    client, server = connect(SERVER["1.3"], CLIENT["1.3"])
    first = client.channel_binding
    if resume:
        session = client.session
        assert session is not None
        close_both(client, server)
        client, server = connect(SERVER["1.3"], CLIENT["1.3"], session=session)
        assert client.session_reused and server.session_reused
    binding = client.channel_binding
    assert binding == server.channel_binding
    assert binding is not None and binding.kind == "tls-exporter"
    assert len(binding.value) == 32
    assert binding.value == client._conn.export_keying_material(b"EXPORTER-Channel-Binding", 32, b"")
    if resume:
        assert binding != first


@VERSIONS
def test_bindings_differ_across_connections(version: str) -> None:
    values = {connect(SERVER[version], CLIENT[version])[0].channel_binding for _ in range(3)}
    assert len(values) == 3


def test_no_binding_before_handshake() -> None:
    client = TLSLayer(CLIENT["1.3"], server_hostname=HOST)
    assert client.channel_binding is None
    assert client.peer_certificate is None
    assert client.version is None
    with pytest.raises(LocalProtocolError):
        ChannelBinding("tls-server-end-point", b"x")


# -- client certificates (server side) ---------------------------------------


def with_client_cert(cert: x509.Certificate, key: pki.PrivateKey, version: str) -> ClientTLSContext:
    return client_context(version, client_certificate_chain=[cert], client_private_key=key)


@VERSIONS
def test_no_client_certificate(version: str) -> None:
    client, server = connect(SERVER[version], CLIENT[version])
    assert server.peer_certificate is None


@VERSIONS
@pytest.mark.parametrize("resume", [False, True])
def test_valid_client_certificate(version: str, resume: bool) -> None:
    ctx = with_client_cert(CLIENT_CERT, CLIENT_KEY, version)
    client, server = connect(SERVER[version], ctx)
    if resume:
        session = client.session
        assert session is not None
        close_both(client, server)
        client, server = connect(SERVER[version], ctx, session=session)
        assert server.session_reused
    peer = server.peer_certificate
    assert peer is not None
    assert peer.certificate == CLIENT_CERT
    assert peer.verified and peer.errors == ()
    assert peer.verified_chain == (CLIENT_CERT, CA)


@VERSIONS
@pytest.mark.parametrize("resume", [False, True])
def test_untrusted_client_certificate_is_recorded_not_fatal(version: str, resume: bool) -> None:
    ctx = with_client_cert(SELF_SIGNED, SELF_SIGNED_KEY, version)
    client, server = connect(SERVER[version], ctx)
    if resume:
        # The resumed session carries no verification record: it must be
        # checked again, not reported as verified.
        session = client.session
        assert session is not None
        close_both(client, server)
        client, server = connect(SERVER[version], ctx, session=session)
        assert server.session_reused
    expect(server, TLSState.OPEN)
    peer = server.peer_certificate
    assert peer is not None and peer.certificate == SELF_SIGNED
    assert not peer.verified
    assert peer.errors and peer.errors[0].depth == 0
    assert peer.verified_chain == ()
    client.write(b"still works")
    pump(client, server)
    assert server.read() == b"still works"


@VERSIONS
def test_expired_client_certificate(version: str) -> None:
    client, server = connect(SERVER[version], with_client_cert(EXPIRED_CERT, CLIENT_KEY, version))
    peer = server.peer_certificate
    assert peer is not None and not peer.verified
    assert X509_V_ERR_CERT_HAS_EXPIRED in {e.code for e in peer.errors}
    assert "expired" in str(peer.errors[0])


def test_client_certificate_not_requested() -> None:
    ctx = server_context("1.3", request_client_certificate=False)
    client, server = connect(ctx, with_client_cert(CLIENT_CERT, CLIENT_KEY, "1.3"))
    assert server.peer_certificate is None


# -- server verification (client side) ----------------------------------------


def failed_handshake(client: TLSLayer, server: TLSLayer) -> tuple[Exception, Exception | None]:
    with pytest.raises(TLSError) as client_error:
        pump(client, server)
    expect(client, TLSState.CLOSED)
    assert not client.handshake_complete
    # The alert the client queued tells the server why.
    alert = client.data_to_send()
    server_error = None
    if alert:
        with pytest.raises(TLSError) as info:
            server.receive_data(alert)
        server_error = info.value
        expect(server, TLSState.CLOSED)
    return client_error.value, server_error


@VERSIONS
def test_wrong_hostname_is_refused(version: str) -> None:
    client = TLSLayer(CLIENT[version], server_hostname="other.example")
    client.write(b"Authorization: Basic c2VjcmV0")  # must never leave
    server = TLSLayer(SERVER[version])
    error, server_error = failed_handshake(client, server)
    assert isinstance(error, TLSVerificationError)
    assert isinstance(error, RemoteProtocolError)
    assert "hostname mismatch" in str(error)
    assert error.errors[0].depth == 0
    assert server_error is not None
    assert server.read() == b""


@VERSIONS
def test_untrusted_server_is_refused(version: str) -> None:
    ctx = client_context(version, trust_anchors=[OTHER_CA])
    error, _ = failed_handshake(TLSLayer(ctx, server_hostname=HOST), TLSLayer(SERVER[version]))
    assert isinstance(error, TLSVerificationError)
    assert "local issuer" in str(error)


def test_trust_anchor_may_be_an_intermediate() -> None:
    ctx = client_context("1.3", trust_anchors=[SUB_CA])
    client, _ = connect(SERVER["1.3"], ctx)
    peer = client.peer_certificate
    assert peer is not None and peer.verified_chain == (SERVER_CERT, SUB_CA)


@pytest.mark.parametrize("address, ok", [("127.0.0.1", True), ("127.0.0.2", False), ("::1", False)])
def test_ip_address_identity(address: str, ok: bool) -> None:
    client = TLSLayer(CLIENT["1.3"], server_hostname=address)
    server = TLSLayer(SERVER["1.3"])
    if ok:
        pump(client, server)
        expect(client, TLSState.OPEN)
        assert server.server_name is None  # no SNI for IP addresses (RFC 6066 3)
    else:
        error, _ = failed_handshake(client, server)
        assert "IP address mismatch" in str(error)


def test_cmc_ra_server_certificate_needs_no_name_match() -> None:
    key = pki.make_key("p256")
    cert = issue_cert(CA, CA_KEY, key, "ra", sans=(x509.DNSName("ra.internal"),), eku=(x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, CMC_RA))
    server_ctx = ServerTLSContext([cert], key, max_version="1.3")
    client, server = connect(server_ctx, CLIENT["1.3"], hostname=HOST)
    expect(client, TLSState.OPEN)
    # The exception is for Explicit TAs only (RFC 7030 3.6.1).
    strict = client_context("1.3", use_system_trust=True)
    error, _ = failed_handshake(TLSLayer(strict, server_hostname=HOST), TLSLayer(server_ctx))
    assert "hostname mismatch" in str(error)


@VERSIONS
def test_bootstrap_without_verification_exposes_chain(version: str) -> None:
    ctx = ClientTLSContext(verify=False, min_version=version, max_version=version)
    client, server = connect(SERVER[version], ctx, hostname=None)
    peer = client.peer_certificate
    assert peer is not None
    assert not peer.verified and peer.errors == ()
    assert (peer.certificate, *peer.chain) == SERVER_CHAIN


def test_client_context_misuse() -> None:
    with pytest.raises(LocalProtocolError, match="trust anchors"):
        ClientTLSContext()
    with pytest.raises(LocalProtocolError, match="server_hostname"):
        TLSLayer(CLIENT["1.3"])
    with pytest.raises(LocalProtocolError):
        TLSLayer(SERVER["1.3"], server_hostname=HOST)
    with pytest.raises(LocalProtocolError):
        ClientTLSContext(trust_anchors=[CA], client_private_key=CLIENT_KEY)
    with pytest.raises(LocalProtocolError, match="key"):
        ServerTLSContext([SERVER_CERT], CLIENT_KEY)
    client, server = connect(SERVER["1.3"], CLIENT["1.3"])
    session = client.session
    assert session is not None
    with pytest.raises(LocalProtocolError, match="same context"):
        TLSLayer(CLIENT["1.3"], server_hostname="elsewhere.example", session=session)


# -- versions -----------------------------------------------------------------


def test_tls12_client_against_tls13_server() -> None:
    client = TLSLayer(CLIENT["1.2"], server_hostname=HOST)
    server = TLSLayer(SERVER["1.3"])
    with pytest.raises(TLSError) as info:
        server.receive_data(client.data_to_send())
    assert "unsupported protocol" in info.value.reason
    expect(server, TLSState.CLOSED)
    with pytest.raises(TLSError):
        client.receive_data(server.data_to_send())
    expect(client, TLSState.CLOSED)


@pytest.mark.parametrize("bad", ["1.0", "1.1", "1.4", "TLSv1.2"])
def test_old_versions_cannot_be_configured(bad: str) -> None:
    with pytest.raises(LocalProtocolError, match="RFC 8996"):
        ServerTLSContext(SERVER_CHAIN, SERVER_KEY, min_version=bad)
    with pytest.raises(LocalProtocolError):
        ClientTLSContext(trust_anchors=[CA], max_version=bad)
    with pytest.raises(LocalProtocolError, match="above"):
        ClientTLSContext(trust_anchors=[CA], min_version="1.3", max_version="1.2")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls11_client_is_refused() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ValueError, ssl.SSLError) as exc:  # pragma: no cover - depends on the build
        pytest.skip(f"this OpenSSL cannot offer TLS 1.1: {exc}")
    peer = StdlibPeer(ctx, server_side=False)
    hello = peer.data_to_send()
    if not hello:  # pragma: no cover - depends on the build
        pytest.skip("this OpenSSL refuses to send a TLS 1.1 ClientHello")
    server = TLSLayer(SERVER["1.2"])
    with pytest.raises(TLSError) as info:
        server.receive_data(hello)
    assert "protocol" in info.value.reason or "version" in info.value.reason
    assert server.data_to_send()  # a protocol_version alert


# -- an independent peer: the stdlib ssl module -------------------------------


class StdlibPeer:
    """An ssl.SSLObject over MemoryBIOs, with the same pump interface."""

    def __init__(self, ctx: ssl.SSLContext, server_side: bool, hostname: str | None = None) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=server_side, server_hostname=hostname)
        self.done = False
        self.received = b""
        self._step()

    def _step(self) -> None:
        if not self.done:
            try:
                self.obj.do_handshake()
                self.done = True
            except ssl.SSLWantReadError:
                return
        while True:
            try:
                data = self.obj.read(65536)
            except ssl.SSLWantReadError:
                return
            if not data:
                return
            self.received += data

    def receive_data(self, data: bytes) -> None:
        self.incoming.write(data)
        self._step()

    def data_to_send(self) -> bytes:
        return self.outgoing.read()


def write_pem(tmp_path: Path) -> tuple[str, str, str]:
    chain = tmp_path / "chain.pem"
    chain.write_bytes(b"".join(pki.pem(c) for c in SERVER_CHAIN))
    key = tmp_path / "key.pem"
    key.write_bytes(
        SERVER_KEY.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.pem(CA))
    return str(chain), str(key), str(ca)


STDLIB_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@VERSIONS
def test_stdlib_client_against_our_server(version: str, tmp_path: Path) -> None:
    _, _, ca = write_pem(tmp_path)
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ctx.maximum_version = STDLIB_VERSIONS[version]
    peer = StdlibPeer(ctx, server_side=False, hostname=HOST)
    server = TLSLayer(SERVER[version])
    pump(peer, server)
    assert peer.done and server.state is TLSState.OPEN
    assert server.version == f"TLSv{version}"
    assert server.server_name == HOST
    peer.obj.write(b"hello from the stdlib")
    server.write(b"hello from estproto")
    pump(peer, server)
    assert server.read() == b"hello from the stdlib"
    assert peer.received == b"hello from estproto"
    binding = server.channel_binding
    assert binding is not None
    if version == "1.2":
        assert binding == ChannelBinding("tls-unique", peer.obj.get_channel_binding("tls-unique") or b"")
    else:
        assert binding.kind == "tls-exporter"
    server.close()
    peer.receive_data(server.data_to_send())


@VERSIONS
def test_our_client_against_stdlib_server(version: str, tmp_path: Path) -> None:
    chain, key, _ = write_pem(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(chain, key)
    ctx.minimum_version = ctx.maximum_version = STDLIB_VERSIONS[version]
    peer = StdlibPeer(ctx, server_side=True)
    client = TLSLayer(CLIENT[version], server_hostname=HOST)
    client.write(b"early request")
    pump(client, peer)
    assert peer.done and client.state is TLSState.OPEN
    assert peer.received == b"early request"
    peer.obj.write(b"response")
    pump(client, peer)
    assert client.read() == b"response"
    binding = client.channel_binding
    assert binding is not None
    if version == "1.2":
        assert binding.value == peer.obj.get_channel_binding("tls-unique")
    # Shut down from the stdlib side: its close_notify is a clean close for us.
    with pytest.raises(ssl.SSLWantReadError):
        peer.obj.unwrap()
    client.receive_data(peer.data_to_send())
    assert client.peer_closed and not client.truncated
    expect(client, TLSState.REMOTE_CLOSING)
    client.close()
    expect(client, TLSState.CLOSED)
    peer.incoming.write(client.data_to_send())
    peer.obj.unwrap()


# -- garbage, truncation, closing ---------------------------------------------


def feed_expecting_only_tls_errors(layer: TLSLayer, data: bytes, byte_at_a_time: bool) -> None:
    pieces = [data[i : i + 1] for i in range(len(data))] if byte_at_a_time else [data]
    try:
        for piece in pieces:
            layer.receive_data(piece)
            layer.data_to_send()
        layer.receive_data(b"")
    except TLSError:
        expect(layer, TLSState.CLOSED)
        layer.data_to_send()
        return
    # Without an error the garbage was a plausible prefix, and EOF ended it.
    pytest.fail("EOF in the middle of a handshake must raise TLSError")  # pragma: no cover


@given(st.binary(min_size=1, max_size=2000), st.booleans())
def test_garbage_to_server_raises_only_tls_error(data: bytes, byte_at_a_time: bool) -> None:
    feed_expecting_only_tls_errors(TLSLayer(SERVER["1.3"]), data, byte_at_a_time)


@given(st.binary(min_size=1, max_size=2000), st.booleans())
def test_garbage_to_client_raises_only_tls_error(data: bytes, byte_at_a_time: bool) -> None:
    client = TLSLayer(CLIENT["1.3"], server_hostname=HOST)
    assert client.data_to_send()
    feed_expecting_only_tls_errors(client, data, byte_at_a_time)


@given(st.binary(min_size=1, max_size=300))
def test_garbage_after_handshake_raises_only_tls_error(data: bytes) -> None:
    client, server = connect(SERVER["1.2"], CLIENT["1.2"])
    try:
        server.receive_data(data)
    except TLSError:
        expect(server, TLSState.CLOSED)
        return
    assert server.read() == b""


def test_truncated_handshake_then_eof() -> None:
    client = TLSLayer(CLIENT["1.3"], server_hostname=HOST)
    server = TLSLayer(SERVER["1.3"])
    hello = client.data_to_send()
    server.receive_data(hello[: len(hello) // 2])
    expect(server, TLSState.HANDSHAKING)
    with pytest.raises(TLSError, match="closed during the TLS handshake") as info:
        server.receive_data(b"")
    assert info.value.reason == "EOF"
    expect(server, TLSState.CLOSED)
    server.receive_data(b"")  # a second EOF is harmless
    with pytest.raises(LocalProtocolError):
        server.receive_data(b"more")


def test_eof_right_after_client_hello_on_client() -> None:
    client = TLSLayer(CLIENT["1.2"], server_hostname=HOST)
    client.data_to_send()
    with pytest.raises(TLSError):
        client.receive_data(b"")
    expect(client, TLSState.CLOSED)


def test_handshake_byte_limit() -> None:
    server = TLSLayer(SERVER["1.3"], max_handshake_bytes=100)
    client = TLSLayer(CLIENT["1.3"], server_hostname=HOST)
    with pytest.raises(TLSError, match="exceeded 100 bytes"):
        server.receive_data(client.data_to_send())
    assert server.bytes_received > 100
    expect(server, TLSState.CLOSED)


@VERSIONS
def test_close_notify_both_ways(version: str) -> None:
    client, server = connect(SERVER[version], CLIENT[version])
    client.write(b"last words")
    client.close()
    expect(client, TLSState.LOCAL_CLOSING)
    with pytest.raises(LocalProtocolError):
        client.write(b"too late")
    pump(client, server)
    assert server.read() == b"last words"
    assert server.peer_closed and not server.truncated
    expect(server, TLSState.REMOTE_CLOSING)
    server.write(b"reply after half-close")
    server.close()
    expect(server, TLSState.CLOSED)
    pump(client, server)
    assert client.read() == b"reply after half-close"
    assert client.state is TLSState.CLOSED and client.peer_closed
    client.close()  # idempotent
    server.receive_data(b"")
    assert not server.truncated


@VERSIONS
def test_eof_without_close_notify_is_truncation(version: str) -> None:
    client, server = connect(SERVER[version], CLIENT[version])
    client.write(b"partial")
    server.receive_data(client.data_to_send())
    server.receive_data(b"")
    assert server.read() == b"partial"
    assert server.peer_closed and server.truncated
    expect(server, TLSState.REMOTE_CLOSING)
    server.close()  # still sends close_notify
    expect(server, TLSState.CLOSED)
    assert server.data_to_send()


def test_close_during_handshake() -> None:
    client = TLSLayer(CLIENT["1.3"], server_hostname=HOST)
    client.write(b"never sent")
    client.close()
    expect(client, TLSState.CLOSED)
    with pytest.raises(LocalProtocolError):
        client.write(b"x")
    client.data_to_send()


def test_alpn() -> None:
    server_ctx = server_context("1.3", alpn_protocols=["http/1.1"])
    client, server = connect(server_ctx, client_context("1.3", alpn_protocols=["h2", "http/1.1"]))
    assert client.alpn_protocol == server.alpn_protocol == "http/1.1"
    client, server = connect(server_ctx, client_context("1.3", alpn_protocols=["h2"]))
    assert client.alpn_protocol is None and server.state is TLSState.OPEN


def test_session_resumption_needs_close_notify_note() -> None:
    """OpenSSL invalidates a session whose connection ended without close_notify."""
    client, server = connect(SERVER["1.2"], CLIENT["1.2"])
    session = client.session
    assert session is not None
    del client, server  # freed without close(): OpenSSL marks the session not resumable
    client, server = connect(SERVER["1.2"], CLIENT["1.2"], session=session)
    assert not client.session_reused
    assert client.channel_binding == server.channel_binding
