"""The TLS layer of the sans-I/O core: pyOpenSSL over memory BIOs, and channel bindings.

One :class:`TLSLayer` per connection turns ciphertext from the network into
plaintext for the HTTP layer and back. It never touches a socket and never
reads a clock: the caller feeds bytes in with :meth:`TLSLayer.receive_data`
(``b""`` means EOF, as in h11), takes plaintext out with :meth:`TLSLayer.read`,
hands plaintext in with :meth:`TLSLayer.write` and ships whatever
:meth:`TLSLayer.data_to_send` returns. Time-outs are the caller's job.

RFCs implemented here:

* RFC 7030 3.3: "HTTPS MUST be used", "TLS session resumption [RFC5077]
  SHOULD be supported". RFC 8996 raises the floor to TLS 1.2, so only TLS 1.2
  and 1.3 can be configured.
* RFC 7030 3.3.1 / 3.6.1: the client validates the server chain against its
  Explicit TA database (the system store, the Implicit TA database, only when
  asked) and checks the server identity per RFC 6125 section 6.4, "or the EST
  server certificate MUST contain the id-kp-cmcRA [RFC6402] extended key
  usage extension".
* RFC 7030 3.3.2: the server requests but does not require a client
  certificate and records how verification went; the EST layer decides per
  operation.
* RFC 7030 3.5, RFC 5929 3.1 (tls-unique on TLS 1.2) and RFC 9266
  (tls-exporter on TLS 1.3): :attr:`TLSLayer.channel_binding`.

Strategy and the memory-BIO facts it rests on (trio's ``_ssl.py`` header
comment tells the same story for the stdlib ``ssl`` module):

* All work happens inside :meth:`TLSLayer.receive_data`: it writes the
  ciphertext into the incoming BIO, advances the handshake, then decrypts
  every complete record into an internal buffer. So errors surface there, and
  anything OpenSSL wants to answer (handshake flights, alerts, key-update
  responses) is waiting in :meth:`TLSLayer.data_to_send` afterwards.
  ``WantReadError`` only means "feed me more ciphertext"; it is never an
  error.
* The client's first flight (ClientHello) is produced by the constructor.
* TLS 1.3 servers send session tickets right after the handshake, so a client
  sees post-handshake records with no application data in them; they are
  consumed silently.
* :meth:`TLSLayer.write` before the handshake completes buffers the plaintext
  and flushes it the moment the handshake finishes (a TLS 1.3 server could
  otherwise send "0.5-RTT" data to an unauthenticated client).
* Renegotiation is disabled on both sides (``OP_NO_RENEGOTIATION``): a second
  handshake would change tls-unique under the application's feet.
* Every ``OpenSSL.SSL.Error`` is translated here: the peer's fault becomes
  :class:`TLSError` (a :class:`RemoteProtocolError`), misuse becomes
  :class:`LocalProtocolError`. After a :class:`TLSError` the layer is
  :attr:`TLSState.CLOSED` and :meth:`TLSLayer.data_to_send` still returns the
  alert OpenSSL queued for the peer.

Performance: the per-record path (BIO_write, SSL_read, SSL_write, BIO_read)
calls OpenSSL through ``OpenSSL._util.lib`` directly rather than through
pyOpenSSL's wrappers, asks the memory BIOs how full they are instead of
reading until pyOpenSSL raises WantReadError, and leaves the classification
of a failed call to pyOpenSSL's own ``Connection._raise_ssl_error``, so
errors surface exactly as before. A server given only its leaf certificate
has its chain settled once per context (:func:`_fix_server_chain`), not
rebuilt and re-verified by OpenSSL on every handshake.

Limitations, said plainly: session resumption state, SSL_session_reused and
the host-name check live only in OpenSSL's C API, reached through
``OpenSSL._util.lib`` (cryptography's bindings) and ``Connection._ssl``; the
fast path above also uses ``Connection._into_ssl``/``_from_ssl`` and
``Connection._raise_ssl_error``. A pyOpenSSL release that drops those would
break this module loudly at import or connection time, not silently. Certificate-less (SRP) cipher suites
of RFC 7030 3.3.3 are not offered.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Callable, Sequence, Union

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from ._errors import LocalProtocolError, TLSError, TLSVerificationError

__all__ = [
    "MAX_HANDSHAKE_BYTES",
    "TLSState",
    "TLSError",
    "TLSVerificationError",
    "ChannelBinding",
    "CertificateProblem",
    "PeerCertificate",
    "TLSSession",
    "ServerTLSContext",
    "ClientTLSContext",
    "TLSLayer",
]

#: Ciphertext a peer may send before the handshake completes. A whole TLS 1.2
#: or 1.3 handshake, client certificate chain included, stays far below this
#: (OpenSSL's own cap on a peer's certificate list is 100 KiB,
#: SSL_CTX_set_max_cert_list); more is a peer wasting our memory and CPU.
MAX_HANDSHAKE_BYTES = 256 * 1024

#: Size of one plaintext read from OpenSSL: four maximum-size TLS records, so
#: large transfers need few round trips into C. (Outgoing ciphertext is read
#: in one piece, its size asked of the memory BIO.)
_CHUNK = 64 * 1024

#: id-kp-cmcRA (RFC 6402 section 2.10), the EKU that authorizes an EST server
#: whose name does not match (RFC 7030 3.6.1).
_ID_KP_CMC_RA = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.28")

#: RFC 9266 section 2: the tls-exporter label and length; RFC 9266 section 3
#: fixes the context to empty (b"", which differs from "no context" on 1.2).
_EXPORTER_LABEL = b"EXPORTER-Channel-Binding"
_EXPORTER_LENGTH = 32

# Uninitialised C buffers for reads (OpenSSL fills what it returns), as
# pyOpenSSL allocates them.
_new_buffer = _ffi.new_allocator(should_clear_after_alloc=False)

#: OpenSSL's SSL_MODE_NO_AUTO_CHAIN (ssl.h, stable since 1.0.2); pyOpenSSL
#: does not name it.
_SSL_MODE_NO_AUTO_CHAIN = 0x00000008

_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
_IDENTITY_MISMATCH = frozenset(
    (_lib.X509_V_ERR_HOSTNAME_MISMATCH, _lib.X509_V_ERR_IP_ADDRESS_MISMATCH)
)

PrivateKey = Union[
    ec.EllipticCurvePrivateKey,
    rsa.RSAPrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
]


class TLSState(enum.Enum):
    """Where a :class:`TLSLayer` is. Transitions live in ``_TRANSITIONS``."""

    #: Handshake in progress; writes are buffered until it completes.
    HANDSHAKING = "HANDSHAKING"
    #: Handshake done; application data flows both ways.
    OPEN = "OPEN"
    #: We sent close_notify; the peer may still send data and its close_notify.
    LOCAL_CLOSING = "LOCAL_CLOSING"
    #: The peer sent close_notify (or EOF); we may still write, then close.
    REMOTE_CLOSING = "REMOTE_CLOSING"
    #: Terminal: both sides closed, the handshake was abandoned, or an error.
    CLOSED = "CLOSED"


class _Input(enum.Enum):
    HANDSHAKE_DONE = "handshake completed"
    LOCAL_CLOSE = "close()"
    REMOTE_CLOSE = "peer closed"
    FAILURE = "failure"


_S, _I = TLSState, _Input
#: The one transition table; anything missing is an internal misuse.
_TRANSITIONS: dict[tuple[TLSState, _Input], TLSState] = {
    (_S.HANDSHAKING, _I.HANDSHAKE_DONE): _S.OPEN,
    # OpenSSL cannot send close_notify mid-handshake: abandoning is all we can do.
    (_S.HANDSHAKING, _I.LOCAL_CLOSE): _S.CLOSED,
    (_S.OPEN, _I.LOCAL_CLOSE): _S.LOCAL_CLOSING,
    (_S.OPEN, _I.REMOTE_CLOSE): _S.REMOTE_CLOSING,
    (_S.LOCAL_CLOSING, _I.REMOTE_CLOSE): _S.CLOSED,
    (_S.REMOTE_CLOSING, _I.LOCAL_CLOSE): _S.CLOSED,
    **{(state, _I.FAILURE): _S.CLOSED for state in TLSState},
}
del _S, _I


@dataclass(frozen=True)
class ChannelBinding:
    """Channel-binding data of a TLS connection (RFC 5929, RFC 9266).

    Attributes:
        kind: ``"tls-unique"`` (TLS 1.2) or ``"tls-exporter"`` (TLS 1.3).
        value: the binding bytes (12 for tls-unique with TLS 1.2 suites,
            32 for tls-exporter).
    """

    kind: str
    value: bytes

    def __post_init__(self) -> None:
        if self.kind not in ("tls-unique", "tls-exporter"):
            raise LocalProtocolError(f"unknown channel binding type {self.kind!r}")
        if not self.value:
            raise LocalProtocolError("empty channel binding value")


@dataclass(frozen=True)
class CertificateProblem:
    """One X.509 verification error OpenSSL reported.

    Attributes:
        code: the ``X509_V_ERR_*`` number.
        depth: position in the chain (0 = the peer's own certificate).
        reason: OpenSSL's text, e.g. ``"certificate has expired"``.
    """

    code: int
    depth: int
    reason: str

    def __str__(self) -> str:
        return f"depth {self.depth}: {self.reason} (X509 error {self.code})"


@dataclass(frozen=True)
class PeerCertificate:
    """The certificate the peer authenticated with, and how verification went.

    Attributes:
        certificate: the peer's end-entity certificate.
        chain: the other certificates the peer sent, in its order (empty on
            a resumed session: peers send no certificates then).
        verified: True when the chain validated against the configured trust
            anchors (and, for a server seen by a client, its name matched).
        errors: what failed, when ``verified`` is False after verification
            ran. Empty for an unverified server in bootstrap mode.
        verified_chain: the path OpenSSL built, leaf first, anchor last, when
            verified (empty otherwise, and on a client's resumed session).
            Its last element tells which trust anchor vouched (RFC 7030
            3.3.1: keep Explicit and Implicit TAs apart).
    """

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    verified: bool
    errors: tuple[CertificateProblem, ...] = ()
    verified_chain: tuple[x509.Certificate, ...] = ()


class TLSSession:
    """An opaque client-side TLS session, for resumption on a new connection.

    Get one from :attr:`TLSLayer.session` (after the handshake; on TLS 1.3
    after the server's ticket arrived, i.e. after some ``receive_data``
    following the handshake) and pass it to a new :class:`TLSLayer` built on
    the same :class:`ClientTLSContext`, for the same ``server_hostname``.
    OpenSSL invalidates a session whose connection ended without close_notify,
    so close connections with :meth:`TLSLayer.close`.
    """

    __slots__ = ("_session", "_context", "server_hostname")

    def __init__(self, session: SSL.Session, context: ClientTLSContext, server_hostname: str | None) -> None:
        self._session = session
        self._context = context
        self.server_hostname = server_hostname


def _protocol_version(name: str, what: str) -> int:
    try:
        return _VERSIONS[name]
    except KeyError:
        # RFC 8996 section 5: "TLS 1.0 MUST NOT be used" (section 6: nor TLS 1.1).
        raise LocalProtocolError(
            f"{what} must be '1.2' or '1.3' (RFC 8996 forbids older TLS), got {name!r}"
        ) from None


def _problem(code: int, depth: int) -> CertificateProblem:
    text = _ffi.string(_lib.X509_verify_cert_error_string(code))
    return CertificateProblem(code, depth, text.decode("ascii", "replace"))


def _openssl_reason(exc: SSL.Error) -> str:
    """OpenSSL's reason strings of *exc*, joined; never raises."""
    if isinstance(exc, SSL.SysCallError):
        return "unexpected EOF"
    if isinstance(exc, SSL.ZeroReturnError):
        return "close_notify received"
    reasons: list[str] = []
    if exc.args and isinstance(exc.args[0], list):
        for entry in exc.args[0]:
            if isinstance(entry, tuple) and entry and entry[-1]:
                reasons.append(str(entry[-1]))
    return "; ".join(reasons) or type(exc).__name__


# OpenSSL reports a received alert as reason SSL_AD_REASON_OFFSET (1000) plus
# the alert's description; close_notify is description 0.
_CLOSE_NOTIFY_ALERT_REASON = 1000


def _is_close(ssl: object, result: int) -> bool:
    """True when SSL_read failed because the peer closed: close_notify at
    either alert level, or EOF under OP_IGNORE_UNEXPECTED_EOF."""
    error = _lib.SSL_get_error(ssl, result)
    return error == _lib.SSL_ERROR_ZERO_RETURN or (
        error == _lib.SSL_ERROR_SSL and _is_fatal_close_notify(ssl, result)
    )


def _is_fatal_close_notify(ssl: object, result: int) -> bool:
    """True when SSL_read failed only because the peer sent close_notify at
    the *fatal* alert level.

    strongSwan's libtls does this. RFC 5246 7.2.1 makes close_notify the
    peer closing whatever its level, but OpenSSL turns a fatal alert into an
    error whose reason has no text; pyOpenSSL would then report a bare
    "Error". The error queue entry is consumed here.
    """
    if _lib.SSL_get_error(ssl, result) != _lib.SSL_ERROR_SSL:
        return False
    if _lib.ERR_GET_REASON(_lib.ERR_peek_error()) != _CLOSE_NOTIFY_ALERT_REASON:
        return False
    _lib.ERR_clear_error()
    return True


def _record_and_accept(
    conn: SSL.Connection, cert: crypto.X509, code: int, depth: int, ok: int
) -> bool:
    # Server side: RFC 7030 3.3.2 leaves the decision to the EST layer, so an
    # untrusted client certificate is recorded and the handshake goes on.
    # Returning True also resets OpenSSL's verify result, hence the record.
    if not ok:
        conn.get_app_data().append(_problem(code, depth))
    return True


def _has_cmc_ra(cert: crypto.X509) -> bool:
    try:
        eku = cert.to_cryptography().extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except (x509.ExtensionNotFound, ValueError):
        return False
    return _ID_KP_CMC_RA in eku.value


def _client_verifier(
    allow_cmc_ra: bool,
) -> Callable[[SSL.Connection, crypto.X509, int, int, int], bool]:
    def verify(conn: SSL.Connection, cert: crypto.X509, code: int, depth: int, ok: int) -> bool:
        if ok:
            return True
        # RFC 7030 3.6.1: with the Explicit TA database, the client MUST check
        # the server identity "or the EST server certificate MUST contain the
        # id-kp-cmcRA [RFC6402] extended key usage extension".
        if allow_cmc_ra and depth == 0 and code in _IDENTITY_MISMATCH and _has_cmc_ra(cert):
            return True
        conn.get_app_data().append(_problem(code, depth))
        return False

    return verify


def _base_context(method: int, min_version: str, max_version: str) -> SSL.Context:
    low = _protocol_version(min_version, "min_version")
    high = _protocol_version(max_version, "max_version")
    if low > high:
        raise LocalProtocolError(f"min_version {min_version} is above max_version {max_version}")
    ctx = SSL.Context(method)
    ctx.set_min_proto_version(low)
    ctx.set_max_proto_version(high)
    # RFC 7030 3.5 asks for secure renegotiation if renegotiating; we never do,
    # since a new handshake would change tls-unique mid-connection.
    # IGNORE_UNEXPECTED_EOF keeps the session usable after an EOF without
    # close_notify; TLSLayer tells the two apart itself (TLSLayer.truncated).
    ctx.set_options(SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_COMPRESSION | SSL.OP_IGNORE_UNEXPECTED_EOF)
    return ctx


def _trust(ctx: SSL.Context, anchors: Sequence[x509.Certificate]) -> None:
    store = ctx.get_cert_store()
    if store is None:  # pragma: no cover - OpenSSL always creates one
        raise LocalProtocolError("OpenSSL context has no certificate store")
    for anchor in anchors:
        store.add_cert(crypto.X509.from_cryptography(anchor))
    # An EST Explicit TA may be an issuing sub-CA from /cacerts: trust what was
    # configured even when it is not self-signed.
    store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)


def _use_identity(
    ctx: SSL.Context, chain: Sequence[x509.Certificate], key: PrivateKey | None, what: str
) -> None:
    if not chain:
        if key is not None:
            raise LocalProtocolError(f"{what}: a private key needs a certificate")
        return
    if key is None:
        raise LocalProtocolError(f"{what}: a certificate needs its private key")
    try:
        ctx.use_certificate(chain[0])
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(key)
        ctx.check_privatekey()
    except (SSL.Error, TypeError, ValueError) as exc:
        raise LocalProtocolError(f"{what}: certificate and key unusable: {exc}") from None


def _fix_server_chain(ctx: SSL.Context, leaf: x509.Certificate) -> None:
    """Settle, once, the chain a server given only its leaf sends.

    With no intermediates configured, OpenSSL builds the server's chain from
    the context's certificate store on every handshake (the store holds the
    client trust anchors), running X509_verify_cert, signature checks
    included, each time: a measured 100-150 us per handshake. The store is
    fixed once the context is built, so the same chain is built here once
    and installed as the extra chain (or, when the store cannot contribute
    anything, automatic chaining is turned off). The certificates on the
    wire are the same as before. Any other outcome of chain building (an
    expired anchor, say) keeps OpenSSL's per-handshake behaviour.
    """
    store = ctx.get_cert_store()
    if store is None:  # pragma: no cover - OpenSSL always creates one
        return
    try:
        chain = crypto.X509StoreContext(store, crypto.X509.from_cryptography(leaf)).get_verified_chain()
    except crypto.X509StoreContextError as exc:
        code, depth = exc.errors[0], exc.errors[1]
        if code == _lib.X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY and depth == 0:
            # Nothing in the store issued the leaf: OpenSSL would send it alone.
            ctx.set_mode(_SSL_MODE_NO_AUTO_CHAIN)
        return
    if len(chain) > 1:
        for cert in chain[1:]:
            ctx.add_extra_chain_cert(cert.to_cryptography())
    else:
        ctx.set_mode(_SSL_MODE_NO_AUTO_CHAIN)


def _alpn_list(protocols: Sequence[str] | None) -> list[bytes]:
    if not protocols:
        return []
    encoded = [p.encode("ascii") for p in protocols]
    if any(not 0 < len(p) < 256 for p in encoded):
        raise LocalProtocolError("ALPN protocol names must be 1 to 255 bytes")
    return encoded


class ServerTLSContext:
    """TLS settings for a server, built once and shared by many connections.

    Args:
        certificate_chain: the server certificate first, then intermediates.
        private_key: the server certificate's key.
        client_trust_anchors: the Explicit TA database for client
            certificates (RFC 7030 3.3.2). Empty: every client certificate
            is recorded as unverified.
        request_client_certificate: send a CertificateRequest. The handshake
            never fails for a missing or untrusted client certificate; see
            :attr:`TLSLayer.peer_certificate`.
        min_version, max_version: ``"1.2"`` or ``"1.3"``.
        session_resumption: allow resumption (session cache and tickets).
            On by default: RFC 7030 3.3 says resumption SHOULD be supported,
            and Bouncy Castle's client resumes after a 401. Channel bindings
            follow resumption correctly. Off: no cache, no tickets.
        alpn_protocols: protocols to select from, in our preference order
            (e.g. ``["http/1.1"]``); None: ALPN is ignored.

    Raises:
        LocalProtocolError: bad version, missing or mismatched key.
    """

    is_server = True

    def __init__(
        self,
        certificate_chain: Sequence[x509.Certificate],
        private_key: PrivateKey,
        *,
        client_trust_anchors: Sequence[x509.Certificate] = (),
        request_client_certificate: bool = True,
        min_version: str = "1.2",
        max_version: str = "1.3",
        session_resumption: bool = True,
        alpn_protocols: Sequence[str] | None = None,
    ) -> None:
        if not certificate_chain:
            raise LocalProtocolError("a TLS server needs a certificate")
        ctx = _base_context(SSL.TLS_SERVER_METHOD, min_version, max_version)
        _use_identity(ctx, certificate_chain, private_key, "server certificate")
        _trust(ctx, client_trust_anchors)
        if request_client_certificate:
            # VERIFY_PEER without FAIL_IF_NO_PEER_CERT: ask, never require.
            ctx.set_verify(SSL.VERIFY_PEER, _record_and_accept)
            for anchor in client_trust_anchors:
                ctx.add_client_ca(anchor)
        else:
            ctx.set_verify(SSL.VERIFY_NONE)
        # Resumed sessions with a client certificate need a session id context
        # (OpenSSL refuses them otherwise); harmless when resumption is off.
        ctx.set_session_id(b"estproto")
        if not session_resumption:
            ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
            ctx.set_options(SSL.OP_NO_TICKET)
        preferred = _alpn_list(alpn_protocols)
        if preferred:

            def select(conn: SSL.Connection, offered: list[bytes]) -> bytes | SSL._NoOverlappingProtocols:
                for proto in preferred:
                    if proto in offered:
                        return proto
                return SSL.NO_OVERLAPPING_PROTOCOLS

            ctx.set_alpn_select_callback(select)
        if len(certificate_chain) == 1:
            _fix_server_chain(ctx, certificate_chain[0])
        self._ctx = ctx
        self._store = ctx.get_cert_store()
        self.session_resumption = session_resumption


class ClientTLSContext:
    """TLS settings for a client, built once and shared by many connections.

    Args:
        trust_anchors: the Explicit TA database (RFC 7030 3.6.1).
        use_system_trust: also trust the system store, the Implicit TA
            database; off by default since RFC 7030 3.1 requires it can be
            disabled. With it on, a server whose name does not match is
            refused even if it carries id-kp-cmcRA (that exception is for
            Explicit TAs only and OpenSSL cannot tell which store vouched).
        verify: False for the provisional bootstrap connection of RFC 7030
            4.1.1: no chain or name check; the caller must accept the CA
            out of band (e.g. a SHA-256 fingerprint) from
            :attr:`TLSLayer.peer_certificate`.
        client_certificate_chain: our certificate first, then intermediates.
        client_private_key: its key.
        min_version, max_version: ``"1.2"`` or ``"1.3"``.
        alpn_protocols: protocols to offer, or None.

    Raises:
        LocalProtocolError: bad version, a key without certificate, or
            ``verify=True`` with nothing to trust.
    """

    is_server = False

    def __init__(
        self,
        *,
        trust_anchors: Sequence[x509.Certificate] = (),
        use_system_trust: bool = False,
        verify: bool = True,
        client_certificate_chain: Sequence[x509.Certificate] = (),
        client_private_key: PrivateKey | None = None,
        min_version: str = "1.2",
        max_version: str = "1.3",
        alpn_protocols: Sequence[str] | None = None,
    ) -> None:
        if verify and not trust_anchors and not use_system_trust:
            raise LocalProtocolError(
                "no trust anchors: give trust_anchors, set use_system_trust=True, "
                "or verify=False for bootstrap (RFC 7030 4.1.1)"
            )
        ctx = _base_context(SSL.TLS_CLIENT_METHOD, min_version, max_version)
        _use_identity(ctx, client_certificate_chain, client_private_key, "client certificate")
        if verify:
            _trust(ctx, trust_anchors)
            if use_system_trust:
                ctx.set_default_verify_paths()
            ctx.set_verify(SSL.VERIFY_PEER, _client_verifier(allow_cmc_ra=not use_system_trust))
        else:
            ctx.set_verify(SSL.VERIFY_NONE)
        offered = _alpn_list(alpn_protocols)
        if offered:
            ctx.set_alpn_protos(offered)
        self._ctx = ctx
        self.verify = verify


class TLSLayer:
    """One TLS connection over memory BIOs, either role.

    Args:
        context: a :class:`ServerTLSContext` or :class:`ClientTLSContext`.
        server_hostname: client only: the DNS name or IP address the caller
            was configured with (or redirected to). Sent as SNI (DNS names
            only, RFC 6066 section 3) and checked against the certificate by
            OpenSSL during the handshake (RFC 6125; partial wildcards
            refused). Required when the context verifies.
        session: client only: a :class:`TLSSession` to resume.
        max_handshake_bytes: cap on ciphertext received before the
            handshake completes (:data:`MAX_HANDSHAKE_BYTES`).

    Raises:
        LocalProtocolError: an argument that does not fit the role.
    """

    def __init__(
        self,
        context: ServerTLSContext | ClientTLSContext,
        *,
        server_hostname: str | None = None,
        session: TLSSession | None = None,
        max_handshake_bytes: int = MAX_HANDSHAKE_BYTES,
    ) -> None:
        self._context = context
        self._conn = SSL.Connection(context._ctx, None)
        # The verify callbacks append CertificateProblems here (no reference
        # back to self, so no cycle).
        self._problems: list[CertificateProblem] = []
        self._conn.set_app_data(self._problems)
        self._state = TLSState.HANDSHAKING
        self._handshake_complete = False
        self._eof = False
        self._peer_closed = False
        self._truncated = False
        self._plaintext: list[bytes] = []
        self._pending_writes: list[bytes] = []
        self._channel_binding: ChannelBinding | None = None
        self._peer_certificate: PeerCertificate | None = None
        self._server_hostname = server_hostname
        self.max_handshake_bytes = max_handshake_bytes
        #: Ciphertext bytes fed to :meth:`receive_data` so far.
        self.bytes_received = 0
        if isinstance(context, ServerTLSContext):
            if server_hostname is not None or session is not None:
                raise LocalProtocolError("server_hostname and session are client-side arguments")
            self._conn.set_accept_state()
            return
        if server_hostname is None and context.verify:
            raise LocalProtocolError(
                "server_hostname is required to check the server identity (RFC 7030 3.6.1)"
            )
        if server_hostname is not None:
            self._set_server_name(server_hostname, context.verify)
        if session is not None:
            if session._context is not context or session.server_hostname != server_hostname:
                raise LocalProtocolError(
                    "a TLS session may only be resumed with the same context and server_hostname"
                )
            self._conn.set_session(session._session)
        self._conn.set_connect_state()
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            pass  # expected: the ClientHello is in the outgoing BIO
        except SSL.Error as exc:
            raise LocalProtocolError(f"cannot start the TLS handshake: {_openssl_reason(exc)}") from None

    def _set_server_name(self, name: str, verify: bool) -> None:
        param = _lib.SSL_get0_param(self._conn._ssl) if verify else None
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            address = None
        if address is not None:
            if param is not None:
                packed = address.packed
                if _lib.X509_VERIFY_PARAM_set1_ip(param, packed, len(packed)) != 1:
                    raise LocalProtocolError(f"cannot check IP address {name}")
            return
        try:
            encoded = name.rstrip(".").encode("idna")
        except UnicodeError:
            raise LocalProtocolError(f"invalid server_hostname {name!r}") from None
        if not encoded:
            raise LocalProtocolError("empty server_hostname")
        self._conn.set_tlsext_host_name(encoded)
        if param is not None:
            # RFC 6125 6.4.3: a client SHOULD NOT match a partial wildcard.
            _lib.X509_VERIFY_PARAM_set_hostflags(param, _lib.X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS)
            if _lib.X509_VERIFY_PARAM_set1_host(param, encoded, len(encoded)) != 1:
                raise LocalProtocolError(f"cannot check host name {name!r}")

    # -- the state machine -------------------------------------------------

    def _transition(self, event: _Input) -> None:
        try:
            self._state = _TRANSITIONS[self._state, event]
        except KeyError:
            raise LocalProtocolError(f"{event.value} is not allowed in state {self._state.name}") from None

    def _fail(self, exc: SSL.Error) -> TLSError:
        """Enter CLOSED and build the error to raise for *exc*."""
        self._transition(_Input.FAILURE)
        self._pending_writes.clear()
        reason = _openssl_reason(exc)
        if isinstance(exc, (SSL.SysCallError, SSL.ZeroReturnError)):
            # With OP_IGNORE_UNEXPECTED_EOF a bare EOF also reads as ZeroReturn.
            reason = "EOF" if self._eof else "close_notify"
        if self._problems and not isinstance(self._context, ServerTLSContext):
            problems = tuple(self._problems)
            detail = "; ".join(str(p) for p in problems)
            return TLSVerificationError(f"server certificate rejected: {detail}", problems)
        if isinstance(exc, (SSL.SysCallError, SSL.ZeroReturnError)) and not self._handshake_complete:
            return TLSError(f"connection closed during the TLS handshake ({reason})", reason)
        return TLSError(f"TLS failure: {reason}", reason)

    # -- inputs ------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed ciphertext from the network; ``b""`` means the peer sent EOF.

        Advances the handshake and decrypts what it can; afterwards,
        :meth:`read` has the plaintext and :meth:`data_to_send` whatever TLS
        wants to answer. Data after the peer's close_notify, or after the
        layer closed, is counted and dropped.

        Raises:
            TLSError: the peer broke TLS (also on EOF mid-handshake, or more
                than ``max_handshake_bytes`` before the handshake completed).
                The layer is then CLOSED; send :meth:`data_to_send` (an
                alert, maybe) and drop the connection.
            TLSVerificationError: (client) the server certificate was refused.
            LocalProtocolError: data after ``b""``.
        """
        if self._eof:
            if data:
                raise LocalProtocolError("data received after EOF")
            return
        self.bytes_received += len(data)
        if self._state is TLSState.CLOSED or self._peer_closed:
            if not data:
                self._eof = True
            return
        if data:
            if self._state is TLSState.HANDSHAKING and self.bytes_received > self.max_handshake_bytes:
                self._transition(_Input.FAILURE)
                self._pending_writes.clear()
                raise TLSError(
                    f"TLS handshake exceeded {self.max_handshake_bytes} bytes", "handshake too large"
                )
            conn = self._conn
            # Straight into the memory BIO (pyOpenSSL's bio_write adds only
            # argument checks); it takes everything unless out of memory,
            # and then pyOpenSSL's call reports the error.
            if _lib.BIO_write(conn._into_ssl, _ffi.from_buffer(data), len(data)) != len(data):
                conn.bio_write(data)  # pragma: no cover - allocation failure
        else:
            self._eof = True
            self._conn.bio_shutdown()
        if self._state is TLSState.HANDSHAKING:
            try:
                self._conn.do_handshake()
            except SSL.WantReadError:
                return
            except SSL.Error as exc:
                raise self._fail(exc) from None
            self._on_handshake_done()
        self._decrypt()

    def _on_handshake_done(self) -> None:
        self._handshake_complete = True
        self._transition(_Input.HANDSHAKE_DONE)
        if self._pending_writes:
            pending = b"".join(self._pending_writes)
            self._pending_writes.clear()
            self._send(pending)

    def _decrypt(self) -> None:
        conn = self._conn
        out = self._plaintext
        ssl, incoming = conn._ssl, conn._into_ssl
        pending, buffered = _lib.SSL_pending, _lib.BIO_get_mem_data
        if not self._eof and not pending(ssl) and buffered(incoming, _ffi.NULL) <= 0:
            # Nothing arrived after the handshake records: SSL_read could
            # only say "want read". (At EOF it must run, to see the close.)
            return
        read = _lib.SSL_read
        try:
            while True:
                # SSL_read directly, as pyOpenSSL's recv does; its outcome
                # when nothing is read is classified by pyOpenSSL itself,
                # except the peer's close (every connection ends with one).
                buf = _new_buffer("char[]", _CHUNK)
                n = read(ssl, buf, _CHUNK)
                if n <= 0:
                    if _is_close(ssl, n):
                        # close_notify, or (OP_IGNORE_UNEXPECTED_EOF) a bare
                        # EOF: a close that arrived in data is processed
                        # before any later EOF, so the EOF flag tells them
                        # apart.
                        self._peer_closed = True
                        self._truncated = self._eof
                        self._transition(_Input.REMOTE_CLOSE)
                        return
                    conn._raise_ssl_error(ssl, n)
                    return  # pragma: no cover - an error is always raised
                out.append(_ffi.buffer(buf, n)[:])
                # Stop when neither OpenSSL (decrypted bytes of the current
                # record) nor the incoming BIO (records not yet read) holds
                # anything: another SSL_read could only say "want read", and
                # pyOpenSSL says that by raising, which costs more than asking.
                if not pending(ssl) and buffered(incoming, _ffi.NULL) <= 0:
                    return
        except SSL.WantReadError:
            return
        except SSL.Error as exc:
            if isinstance(exc, SSL.SysCallError) and self._eof:
                # An OpenSSL that ignored OP_IGNORE_UNEXPECTED_EOF: same meaning.
                self._peer_closed = self._truncated = True
                self._transition(_Input.REMOTE_CLOSE)
                return
            raise self._fail(exc) from None

    def write(self, data: bytes) -> None:
        """Queue application bytes for encryption.

        Before the handshake completes they are buffered, then sent the
        moment it does (after the server was authenticated, on a client).

        Raises:
            LocalProtocolError: after :meth:`close` or once CLOSED.
        """
        if self._state is TLSState.HANDSHAKING:
            if data:
                self._pending_writes.append(bytes(data))
            return
        if self._state not in (TLSState.OPEN, TLSState.REMOTE_CLOSING):
            raise LocalProtocolError(f"cannot write in state {self._state.name}")
        if data:
            self._send(data)

    def _send(self, data: bytes) -> None:
        conn = self._conn
        ssl = conn._ssl
        try:
            # SSL_write directly, as pyOpenSSL's sendall does. Without
            # partial-write mode it writes everything or fails, and a failure
            # is classified by pyOpenSSL itself.
            with _ffi.from_buffer(data) as view:
                size = len(data)
                n = _lib.SSL_write(ssl, view, size)
                if n != size:
                    if n <= 0:
                        conn._raise_ssl_error(ssl, n)
                    conn.sendall(bytes(data)[n:])  # pragma: no cover - partial
        except SSL.Error as exc:
            self._transition(_Input.FAILURE)
            raise LocalProtocolError(f"cannot write: {_openssl_reason(exc)}") from None

    def close(self) -> None:
        """Send close_notify (if the handshake completed); idempotent.

        During the handshake OpenSSL cannot send close_notify, so the layer
        just goes CLOSED and buffered writes are dropped.
        """
        if self._state in (TLSState.LOCAL_CLOSING, TLSState.CLOSED):
            return
        if self._state is not TLSState.HANDSHAKING:
            try:
                self._conn.shutdown()
            except SSL.Error as exc:
                self._transition(_Input.FAILURE)
                raise LocalProtocolError(f"cannot close: {_openssl_reason(exc)}") from None
        self._pending_writes.clear()
        self._transition(_Input.LOCAL_CLOSE)

    # -- outputs -----------------------------------------------------------

    def read(self) -> bytes:
        """Return the plaintext decrypted so far (``b""`` if none) and forget it."""
        if not self._plaintext:
            return b""
        data = b"".join(self._plaintext)
        self._plaintext.clear()
        return data

    def data_to_send(self) -> bytes:
        """Return the ciphertext waiting for the network (``b""`` if none)."""
        conn = self._conn
        # Ask the memory BIO how much it holds and read exactly that, rather
        # than reading until pyOpenSSL raises WantReadError.
        outgoing = conn._from_ssl
        pending = _lib.BIO_get_mem_data(outgoing, _ffi.NULL)
        if pending <= 0:
            return b""
        buf = _new_buffer("char[]", pending)
        n = _lib.BIO_read(outgoing, buf, pending)
        if n <= 0:  # pragma: no cover - a memory BIO returns what it holds
            return b""
        data: bytes = _ffi.buffer(buf, n)[:]
        return data

    # -- what the application asks -----------------------------------------

    @property
    def state(self) -> TLSState:
        return self._state

    @property
    def is_server(self) -> bool:
        return self._context.is_server

    @property
    def handshake_complete(self) -> bool:
        """True once the handshake finished (stays True after closing)."""
        return self._handshake_complete

    @property
    def peer_closed(self) -> bool:
        """True once the peer sent close_notify or EOF."""
        return self._peer_closed

    @property
    def truncated(self) -> bool:
        """True if the peer's EOF came without close_notify after the handshake."""
        return self._truncated

    @property
    def version(self) -> str | None:
        """``"TLSv1.2"`` or ``"TLSv1.3"`` once the handshake completed."""
        return self._conn.get_protocol_version_name() if self._handshake_complete else None

    @property
    def cipher(self) -> str | None:
        """OpenSSL's name of the negotiated cipher suite, once negotiated."""
        return self._conn.get_cipher_name() if self._handshake_complete else None

    @property
    def alpn_protocol(self) -> str | None:
        """The ALPN protocol agreed on, or None."""
        if not self._handshake_complete:
            return None
        proto = self._conn.get_alpn_proto_negotiated()
        return proto.decode("ascii", "replace") if proto else None

    @property
    def server_name(self) -> str | None:
        """Server: the SNI name the client sent. Client: ``server_hostname``."""
        if not self.is_server:
            return self._server_hostname
        name = self._conn.get_servername()
        return name.decode("ascii", "replace") if name else None

    @property
    def session_reused(self) -> bool:
        """True if this handshake resumed an earlier session."""
        return self._handshake_complete and bool(_lib.SSL_session_reused(self._conn._ssl))

    @property
    def extended_master_secret(self) -> bool:
        """True if the extended master secret (RFC 7627) was used (always on TLS 1.3).

        Without it, TLS 1.2 tls-unique is open to the triple-handshake attack
        across resumption (RFC 7627 section 1); a strict server can refuse it.
        """
        if not self._handshake_complete:
            return False
        if self._conn.get_protocol_version() >= SSL.TLS1_3_VERSION:
            return True
        return bool(_lib.SSL_get_extms_support(self._conn._ssl) == 1)

    @property
    def session(self) -> TLSSession | None:
        """Client: the session to resume later (see :class:`TLSSession`)."""
        if self.is_server or not self._handshake_complete:
            return None
        session = self._conn.get_session()
        if session is None:
            return None
        assert isinstance(self._context, ClientTLSContext)
        return TLSSession(session, self._context, self._server_hostname)

    @property
    def channel_binding(self) -> ChannelBinding | None:
        """The channel binding of this connection, once the handshake completed.

        TLS 1.2: tls-unique, RFC 5929 section 3.1: "the first TLS Finished
        message sent (note: the Finished struct, not the TLS record layer
        message containing it) in the most recent TLS handshake": the
        client's Finished on a full handshake, the server's on a resumed one.
        TLS 1.3: tls-exporter (RFC 9266); RFC 9266 section 3 makes tls-unique
        undefined for TLS 1.3, so it is never offered there.
        """
        if self._channel_binding is None and self._handshake_complete:
            conn = self._conn
            if conn.get_protocol_version() >= SSL.TLS1_3_VERSION:
                value = conn.export_keying_material(_EXPORTER_LABEL, _EXPORTER_LENGTH, b"")
                self._channel_binding = ChannelBinding("tls-exporter", value)
            else:
                # Our own Finished is the first one exactly when we are the
                # client of a full handshake or the server of a resumed one.
                ours_first = self.is_server == self.session_reused
                finished = conn.get_finished() if ours_first else conn.get_peer_finished()
                if finished:
                    self._channel_binding = ChannelBinding("tls-unique", finished)
        return self._channel_binding

    @property
    def peer_certificate(self) -> PeerCertificate | None:
        """The peer's certificate and its verification, or None if it sent none.

        On the server, a client certificate is verified against the client
        trust anchors during the handshake and problems are recorded, never
        fatal. A resumed session carries the client's certificate but no
        chain and no record of the original check, so it is verified again
        here, leaf only against the trust store (a client whose certificate
        needs an intermediate the store lacks shows as unverified then).
        """
        if self._peer_certificate is not None or not self._handshake_complete:
            return self._peer_certificate
        conn = self._conn
        leaf = conn.get_peer_certificate(as_cryptography=True)
        if leaf is None:
            return None
        sent = conn.get_peer_cert_chain(as_cryptography=True) or []
        if sent and sent[0] == leaf:  # the client side lists the leaf first
            sent = sent[1:]
        verified_chain = conn.get_verified_chain(as_cryptography=True) or []
        problems = tuple(self._problems)
        context = self._context
        if isinstance(context, ServerTLSContext):
            if self.session_reused:
                problems, verified_chain = _verify_again(context, leaf)
            verified = not problems
        else:
            verified = context.verify
        self._peer_certificate = PeerCertificate(
            certificate=leaf,
            chain=tuple(sent),
            verified=verified,
            errors=problems,
            verified_chain=tuple(verified_chain) if verified else (),
        )
        return self._peer_certificate


def _verify_again(
    context: ServerTLSContext, leaf: x509.Certificate
) -> tuple[tuple[CertificateProblem, ...], list[x509.Certificate]]:
    store = context._store
    if store is None:  # pragma: no cover - OpenSSL always creates one
        return (CertificateProblem(0, 0, "no trust store"),), []
    verifier = crypto.X509StoreContext(store, crypto.X509.from_cryptography(leaf))
    try:
        chain = verifier.get_verified_chain()
    except crypto.X509StoreContextError as exc:
        code, depth, reason = exc.errors
        return (CertificateProblem(int(code), int(depth), str(reason)),), []
    return (), [c.to_cryptography() for c in chain]
