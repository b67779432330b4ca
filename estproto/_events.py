"""Events: what the EST connections report and what callers send them.

Modelled on h11's ``_events.py``: each event is a small frozen dataclass,
validated in its constructor so that a malformed event cannot exist. Names say
what happened. Public fields hold `cryptography` objects, our codec value
classes, or DER bytes; asn1crypto objects never appear here.

Server side (:class:`ServerConnection` and the bare :class:`ESTServerProtocol`):
  the connection emits one *request* event per EST request (``CACertsRequest``,
  ``SimpleEnrollRequest`` ...); the application answers it with exactly one
  *response* event (``CACertsResponse``, ``CertificateResponse``,
  ``RetryLater``, ``AuthenticationRequired``, ``ErrorResponse`` ...).

Client side (:class:`ClientConnection` and :class:`ESTClientProtocol`):
  the application sends a request event (``GetCACerts``, ``SimpleEnroll`` ...);
  the connection emits one result event (``CACertsReceived``,
  ``CertificateIssued``, ``EnrollmentPending`` ...).
"""

from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Final, TypeGuard, Union

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from ._errors import LocalProtocolError
from ._fields import check_fields
from ._paths import Operation, check_label

if TYPE_CHECKING:
    from .auth import BasicCredentials, DigestCredentials
    from .codecs.cmc import FullPKIRequest, FullPKIResponse
    from .codecs.csrattrs import CsrAttributes
    from .codecs.pkcs10 import CertificationRequest

__all__ = [
    "Event",
    "ConnectionFacts",
    # server side, emitted
    "ServerRequest",
    "CACertsRequest",
    "CSRAttrsRequest",
    "SimpleEnrollRequest",
    "SimpleReenrollRequest",
    "ServerKeygenRequest",
    "FullCMCRequest",
    # server side, sent
    "ServerResponse",
    "CACertsResponse",
    "CertificateResponse",
    "ServerKeygenResponse",
    "CSRAttrsResponse",
    "FullCMCResponse",
    "RetryLater",
    "AuthenticationRequired",
    "ErrorResponse",
    # both sides
    "ConnectionClosed",
    "ConnectionTerminated",
    "NEED_DATA",
    "PAUSED",
    # client side, sent
    "ClientRequest",
    "GetCACerts",
    "GetCSRAttrs",
    "SimpleEnroll",
    "SimpleReenroll",
    "ServerKeygen",
    "FullCMC",
    "RawRequest",
    # client side, emitted
    "ClientResult",
    "CACertsReceived",
    "CertificateIssued",
    "EnrollmentPending",
    "CSRAttrsReceived",
    "ServerKeyReceived",
    "FullCMCReceived",
    "AuthenticationChallenged",
    "Redirected",
    "ErrorReceived",
    "RawResponseReceived",
]


class Sentinel(enum.Enum):
    """Type of the values ``next_event()`` returns when it has no event."""

    NEED_DATA = "NEED_DATA"
    PAUSED = "PAUSED"


#: ``next_event()`` needs more bytes: call ``receive_data`` (after writing
#: ``data_to_send()``).
NEED_DATA: Final = Sentinel.NEED_DATA

#: ``next_event()`` waits for you: a request event is unanswered; ``send`` its
#: response first (h11's PAUSED).
PAUSED: Final = Sentinel.PAUSED


class Event:
    """Base class of every estproto event.

    Every field is checked against its annotation when an event is made
    (:func:`estproto._fields.check_fields`); a subclass's ``__post_init__``
    adds its value rules after ``super().__post_init__()``.
    """

    __slots__ = ()

    def __post_init__(self) -> None:
        if type(self) in _BASE_CLASSES:
            raise LocalProtocolError(f"{type(self).__name__} is a base class: make one of its kinds")
        check_fields(self)


# ---------------------------------------------------------------------------
# What the server knows about the connection a request came on.


@dataclass(frozen=True)
class ConnectionFacts:
    """Transport facts an EST request is judged by (RFC 7030 3.3, 3.5).

    A host that terminates TLS itself (a reverse proxy, an ASGI server) fills
    this in from what it knows; :class:`ServerConnection` fills it from its own
    TLS layer.

    Attributes:
        is_tls: the request arrived over TLS. HTTP credentials are only
            honoured over TLS (RFC 7030 3.2.3).
        tls_version: e.g. ``"TLSv1.3"``, or None.
        channel_binding: tls-unique (TLS 1.2) or tls-exporter (TLS 1.3) value,
            used for proof-of-possession linking (3.5).
        channel_binding_type: ``"tls-unique"`` or ``"tls-exporter"``.
        client_certificate: the TLS client's end-entity certificate, if any.
        client_chain: the rest of the chain the client sent.
        client_certificate_verified: True when the chain verified against the
            server's client trust anchors.
        client_certificate_errors: verification errors recorded (empty when
            verified).
        peer: the peer address for logs, e.g. ``"127.0.0.1:53210"``.
    """

    is_tls: bool = True
    tls_version: str | None = None
    channel_binding: bytes | None = None
    channel_binding_type: str | None = None
    client_certificate: x509.Certificate | None = None
    client_chain: tuple[x509.Certificate, ...] = ()
    client_certificate_verified: bool = False
    client_certificate_errors: tuple[str, ...] = ()
    peer: str | None = None

    def __post_init__(self) -> None:
        check_fields(self)


# ---------------------------------------------------------------------------
# Server side: requests the connection emits.


@dataclass(frozen=True, kw_only=True)
class ServerRequest(Event):
    """An EST request received by a server.

    Attributes:
        label: the CA label from the path, "" when absent (RFC 7030 3.2.2).
        credentials: HTTP credentials sent with the request, already parsed;
            None when absent or when the request did not come over TLS.
        facts: TLS facts of the connection (client certificate, binding).
        is_ra: the verified client certificate carries id-kp-cmcRA (3.7).
        user_agent: the client's User-Agent header, for logs and quirks.
        target: the request-target exactly as received; HTTP Digest checks
            its ``uri`` against it (RFC 7616 section 3.4.6).
    """

    label: str
    credentials: "BasicCredentials | DigestCredentials | None"
    facts: ConnectionFacts
    is_ra: bool = False
    user_agent: str | None = None
    target: str = ""

    #: The EST operation; a class constant of each kind.
    operation: ClassVar[Operation]

    def __post_init__(self) -> None:
        super().__post_init__()
        check_label(self.label)


@dataclass(frozen=True, kw_only=True)
class CACertsRequest(ServerRequest):
    """GET /cacerts (RFC 7030 4.1): no authentication is required for it."""

    operation = Operation.CACERTS


@dataclass(frozen=True, kw_only=True)
class CSRAttrsRequest(ServerRequest):
    """GET /csrattrs (RFC 7030 4.5)."""

    operation = Operation.CSRATTRS


@dataclass(frozen=True, kw_only=True)
class _CSRRequest(ServerRequest):
    """Common shape of the three operations that carry a PKCS#10 request.

    Attributes:
        csr: the decoded, signature-verified request.
        pop_linked: the CSR's challengePassword / estIdentityLinking matched
            this connection's channel binding (RFC 7030 3.5). False when the
            CSR carried no linking value (and the policy allowed that).
    """

    csr: "CertificationRequest"
    pop_linked: bool = False


@dataclass(frozen=True, kw_only=True)
class SimpleEnrollRequest(_CSRRequest):
    """POST /simpleenroll (RFC 7030 4.2.1)."""

    operation = Operation.SIMPLEENROLL


@dataclass(frozen=True, kw_only=True)
class SimpleReenrollRequest(_CSRRequest):
    """POST /simplereenroll (RFC 7030 4.2.2).

    The connection has already checked that the CSR's subject and SAN equal
    those of the client certificate being renewed (unless the client is an RA).

    Attributes:
        rekey: the CSR's public key differs from the certificate being renewed.
    """

    rekey: bool = False
    operation = Operation.SIMPLEREENROLL


@dataclass(frozen=True, kw_only=True)
class ServerKeygenRequest(_CSRRequest):
    """POST /serverkeygen (RFC 7030 4.4): the CSR's key is ignored by the server."""

    operation = Operation.SERVERKEYGEN


@dataclass(frozen=True, kw_only=True)
class FullCMCRequest(ServerRequest):
    """POST /fullcmc (RFC 7030 4.3).

    Attributes:
        request: the decoded Full PKI Request (signature verified).
        der: the exact DER received.
        pop_linked: every PKCS#10 request inside carried a linking value
            matching this connection's channel binding (RFC 7030 3.5).
    """

    request: "FullPKIRequest"
    der: bytes
    pop_linked: bool = False
    operation = Operation.FULLCMC


# ---------------------------------------------------------------------------
# Server side: responses the application sends.


@dataclass(frozen=True)
class ServerResponse(Event):
    """Base class of the events a server application answers a request with."""


@dataclass(frozen=True)
class CACertsResponse(ServerResponse):
    """200 certs-only with the CA certificates (RFC 7030 4.1.3)."""

    certificates: tuple[x509.Certificate, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.certificates:
            raise LocalProtocolError("CACertsResponse needs at least one certificate")
        object.__setattr__(self, "certificates", tuple(self.certificates))


@dataclass(frozen=True)
class CertificateResponse(ServerResponse):
    """200 certs-only holding "only the certificate that was issued" (4.2.3)."""

    certificate: x509.Certificate


@dataclass(frozen=True)
class ServerKeygenResponse(ServerResponse):
    """200 multipart/mixed: the private key part and the certificate (4.4.2).

    Give exactly one of ``private_key`` (sent unencrypted as PKCS#8) or
    ``encrypted_key`` (DER ContentInfo(EnvelopedData) built with
    :mod:`estproto.codecs.serverkey`).
    """

    certificate: x509.Certificate
    private_key: PrivateKeyTypes | None = field(default=None, repr=False)
    encrypted_key: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.private_key is None) == (self.encrypted_key is None):
            raise LocalProtocolError("give exactly one of private_key, encrypted_key")


@dataclass(frozen=True)
class CSRAttrsResponse(ServerResponse):
    """200 application/csrattrs, or 204 when ``attributes`` is None (4.5.2)."""

    attributes: "CsrAttributes | None"


@dataclass(frozen=True)
class FullCMCResponse(ServerResponse):
    """A Full PKI Response (4.3.2), DER ContentInfo(SignedData(PKIResponse)).

    ``status`` is 200 for success and pending; RFC 7030 4.3.2 lets a failure
    travel with a 4xx/5xx status and the CMC body.
    """

    der: bytes
    status: int = 200

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.der:
            raise LocalProtocolError("FullCMCResponse needs a body")
        if not (200 <= self.status < 600) or 300 <= self.status < 400:
            raise LocalProtocolError(f"bad status for FullCMCResponse: {self.status}")


@dataclass(frozen=True)
class RetryLater(ServerResponse):
    """202 Accepted with Retry-After (RFC 7030 4.2.3, 4.4.2).

    Attributes:
        retry_after: seconds (delta-seconds) or an aware datetime (HTTP-date).
        message: optional human-readable text for the body.
    """

    retry_after: int | datetime.datetime
    message: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_retry_after(self.retry_after)


@dataclass(frozen=True)
class AuthenticationRequired(ServerResponse):
    """401 with one ``WWW-Authenticate`` header per challenge and an empty body.

    An empty body because Bouncy Castle's client fails on a 401 with a body.
    """

    challenges: tuple[str, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "challenges", tuple(self.challenges))
        for challenge in self.challenges:
            if not challenge or "\r" in challenge or "\n" in challenge:
                raise LocalProtocolError("bad WWW-Authenticate challenge")


@dataclass(frozen=True)
class ErrorResponse(ServerResponse):
    """A 4xx/5xx with a short text/plain reason (RFC 8951 section 5)."""

    status: int
    reason: str

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 400 <= self.status < 600:
            raise LocalProtocolError(f"ErrorResponse status must be 4xx/5xx, not {self.status}")


# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionClosed(Event):
    """The connection is over: the peer closed it between messages, or we
    did. Write the last ``data_to_send()`` and close the transport."""


@dataclass(frozen=True)
class ConnectionTerminated(Event):
    """We are closing the connection because of the peer or a deadline.

    Attributes:
        reason: one line saying why (TLS alert, malformed HTTP, a limit, a
            timeout), safe to log: it never holds secrets.
        status: the HTTP status sent before closing (400, 408, 413, 431 ...),
            or None when nothing was sent (a TLS failure, an idle timeout).
    """

    reason: str
    status: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.status is not None and not 400 <= self.status < 600:
            raise LocalProtocolError(f"ConnectionTerminated.status must be 4xx/5xx, not {self.status}")


ServerRequestEvent = Union[
    CACertsRequest, CSRAttrsRequest, SimpleEnrollRequest, SimpleReenrollRequest,
    ServerKeygenRequest, FullCMCRequest,
]


# ---------------------------------------------------------------------------
# Client side: requests the application sends.


@dataclass(frozen=True, kw_only=True)
class ClientRequest(Event):
    """An EST request a client sends.

    The fields after ``label`` are hooks for conformance testing and fuzzing
    (send deliberately wrong requests without monkeypatching); leave them at
    their defaults for a correct request.

    Attributes:
        label: CA label, "" for none (RFC 7030 3.2.2).
        extra_headers: headers added to the request (after ours).
        content_type: replaces the correct Content-Type (POST only).
        raw_body: replaces the body estproto would build (sent as given).
        wrap_base64: wrap the base64 body at 64 columns (the default: every
            server accepts it, and libest requires a newline) or send one line.
        authorization: an ``Authorization`` value to send up front.
    """

    label: str = ""
    extra_headers: tuple[tuple[str, str], ...] = ()
    content_type: str | None = None
    raw_body: bytes | None = field(default=None, repr=False)
    wrap_base64: bool = True
    authorization: str | None = field(default=None, repr=False)

    #: The EST operation; a class constant of each kind.
    operation: ClassVar[Operation]

    def __post_init__(self) -> None:
        super().__post_init__()
        check_label(self.label)
        for name, value in self.extra_headers:
            _check_header(name, value)
        if self.authorization is not None:
            _check_header("Authorization", self.authorization)


@dataclass(frozen=True, kw_only=True)
class GetCACerts(ClientRequest):
    """GET /cacerts (RFC 7030 4.1)."""

    operation = Operation.CACERTS


@dataclass(frozen=True, kw_only=True)
class GetCSRAttrs(ClientRequest):
    """GET /csrattrs (RFC 7030 4.5)."""

    operation = Operation.CSRATTRS


@dataclass(frozen=True, kw_only=True)
class _CSRClientRequest(ClientRequest):
    """A request carrying a PKCS#10 CSR (DER)."""

    csr: bytes = field(repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.csr, bytes) or not self.csr:
            raise LocalProtocolError(f"{type(self).__name__} needs the CSR as DER bytes")


@dataclass(frozen=True, kw_only=True)
class SimpleEnroll(_CSRClientRequest):
    """POST /simpleenroll (RFC 7030 4.2.1)."""

    operation = Operation.SIMPLEENROLL


@dataclass(frozen=True, kw_only=True)
class SimpleReenroll(_CSRClientRequest):
    """POST /simplereenroll (RFC 7030 4.2.2): authenticate with the
    certificate being renewed as the TLS client certificate."""

    operation = Operation.SIMPLEREENROLL


@dataclass(frozen=True, kw_only=True)
class ServerKeygen(_CSRClientRequest):
    """POST /serverkeygen (RFC 7030 4.4).

    Attributes:
        kek, kek_id: the symmetric key (and its DecryptKeyIdentifier) to
            open an encrypted key part (4.4.1.1).
        decryption_key: the private key to open a key part encrypted to
            our AsymmetricDecryptKeyIdentifier (4.4.1.2): RSA for key
            transport (ktri), EC for key agreement (kari).
    """

    kek: bytes | None = field(default=None, repr=False)
    kek_id: bytes | None = None
    decryption_key: PrivateKeyTypes | None = field(default=None, repr=False)
    operation = Operation.SERVERKEYGEN

    def __post_init__(self) -> None:
        super().__post_init__()
        # Checked here, not when the answer arrives: a key that can never
        # open one is the caller's mistake, not the server's.
        if self.decryption_key is not None and not isinstance(
            self.decryption_key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)
        ):
            raise LocalProtocolError("ServerKeygen.decryption_key must be an RSA or EC private key")


@dataclass(frozen=True, kw_only=True)
class FullCMC(ClientRequest):
    """POST /fullcmc (RFC 7030 4.3) with a Full PKI Request (DER)."""

    request: bytes = field(repr=False)
    operation = Operation.FULLCMC

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.request, bytes) or not self.request:
            raise LocalProtocolError("FullCMC needs the Full PKI Request as DER bytes")


@dataclass(frozen=True, kw_only=True)
class RawRequest(ClientRequest):
    """Any request at all (conformance and fuzzing): sent as given, answered
    by :class:`RawResponseReceived`.

    Attributes:
        method: the request method.
        target: the request-target, e.g. ``"/.well-known/est/simpleenroll"``.
        body: the body, sent unchanged.
    """

    method: str
    target: str
    body: bytes = b""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.method or not _TOKEN_CHARS.issuperset(self.method):
            raise LocalProtocolError(f"RawRequest.method must be an HTTP token, not {self.method!r}")
        if not self.target or any(c <= " " or c == "\x7f" for c in self.target):
            raise LocalProtocolError("RawRequest.target must be a request-target without spaces or CTLs")

    @property
    def operation(self) -> Operation:  # type: ignore[override]  # a property, not a constant
        """A RawRequest is sent as given: it names no operation."""
        raise LocalProtocolError("a RawRequest names no EST operation (see its target)")


# ---------------------------------------------------------------------------
# Client side: results the connection emits.


@dataclass(frozen=True)
class ClientResult(Event):
    """Base class of the events answering a client's request."""


@dataclass(frozen=True)
class CACertsReceived(ClientResult):
    """200 from /cacerts: the CA certificates, in the order received."""

    certificates: tuple[x509.Certificate, ...]


@dataclass(frozen=True)
class CertificateIssued(ClientResult):
    """200 from /simpleenroll or /simplereenroll.

    Attributes:
        certificate: the issued certificate, found by the CSR's public key
            (never by position: encoders sort certificates).
        certificates: everything the response held.
    """

    certificate: x509.Certificate
    certificates: tuple[x509.Certificate, ...] = ()


@dataclass(frozen=True)
class EnrollmentPending(ClientResult):
    """202 with Retry-After (RFC 7030 4.2.3): repeat the same request later.

    Attributes:
        retry_after: seconds, or an aware datetime (HTTP-date).
        message: the server's text, if any.
    """

    retry_after: int | datetime.datetime
    message: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_retry_after(self.retry_after)

    def delay(self, now: datetime.datetime) -> float:
        """Seconds to wait from *now* (an aware wall-clock datetime)."""
        if isinstance(self.retry_after, int):
            return float(self.retry_after)
        return max(0.0, (self.retry_after - now).total_seconds())


@dataclass(frozen=True)
class CSRAttrsReceived(ClientResult):
    """Answer from /csrattrs; ``attributes`` is None for 204 or 404 (4.5.2)."""

    attributes: "CsrAttributes | None"


@dataclass(frozen=True)
class ServerKeyReceived(ClientResult):
    """200 multipart from /serverkeygen (RFC 7030 4.4.2).

    Attributes:
        certificate: the issued certificate.
        private_key: the key, when sent unencrypted or opened with the key
            material given in the request.
        encrypted_key: the key part's DER when it was encrypted (kept even
            when opened).
    """

    certificate: x509.Certificate
    private_key: PrivateKeyTypes | None = field(default=None, repr=False)
    encrypted_key: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class FullCMCReceived(ClientResult):
    """A Full PKI Response (any status: CMC failures come with 4xx/5xx)."""

    response: "FullPKIResponse"
    status: int = 200

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (200 <= self.status < 300 or 400 <= self.status < 600):
            raise LocalProtocolError(f"FullCMCReceived.status must be 2xx/4xx/5xx, not {self.status}")


@dataclass(frozen=True)
class AuthenticationChallenged(ClientResult):
    """401 that this connection did not (or could not) answer by itself.

    Attributes:
        challenges: the parsed ``WWW-Authenticate`` challenges (may be empty:
            libest sends none on a wrong password).
        retry: the same request with an ``Authorization`` answering the
            challenge, to send on a new connection when this one closed; None
            when no credentials are configured, the server is not authorized
            (RFC 7030 3.2.3), or the credentials were already refused.
    """

    challenges: tuple[object, ...]
    retry: ClientRequest | None = None


@dataclass(frozen=True)
class Redirected(ClientResult):
    """3xx (RFC 7030 3.2.1): the caller decides whether to follow.

    "HTTP redirections (3xx status codes) to the same web origin SHOULD be
    handled by the client without user input"; other origins need a new TLS
    connection, its checks, and user input for non-GET requests.
    """

    status: int
    location: str

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_status(self.status, 300, 400)


@dataclass(frozen=True)
class ErrorReceived(ClientResult):
    """4xx/5xx (or an unexpected status) with the server's reason text."""

    status: int
    reason: str
    content_type: str | None = None
    body: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_status(self.status, 100, 600)


@dataclass(frozen=True)
class RawResponseReceived(ClientResult):
    """The response to a :class:`RawRequest`, untouched."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = field(repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_status(self.status, 100, 600)


ClientResultEvent = Union[
    CACertsReceived, CertificateIssued, EnrollmentPending, CSRAttrsReceived,
    ServerKeyReceived, FullCMCReceived, AuthenticationChallenged, Redirected,
    ErrorReceived, RawResponseReceived,
]


def is_client_result(event: object) -> TypeGuard[ClientResultEvent]:
    """True for the result of a request (every :class:`ClientResult` is one
    of :data:`ClientResultEvent`), False for NEED_DATA or a connection event."""
    return isinstance(event, ClientResult)


# ---------------------------------------------------------------------------
# Value rules shared by several events

#: RFC 9110 5.6.2 tchar.
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

#: Kinds are constructed, never these.
_BASE_CLASSES: frozenset[type] = frozenset({
    ServerRequest, _CSRRequest, ServerResponse, ClientRequest, _CSRClientRequest, ClientResult,
})


def _check_header(name: str, value: str) -> None:
    # h11 checks again when sending; here the mistake is named at its source.
    if not name or not _TOKEN_CHARS.issuperset(name) or "\r" in value or "\n" in value or "\0" in value:
        raise LocalProtocolError(f"bad header {name!r}")


def _check_status(status: int, low: int, high: int) -> None:
    if not low <= status < high:
        raise LocalProtocolError(f"status {status} outside {low}..{high - 1}")


def _check_retry_after(value: int | datetime.datetime) -> None:
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise LocalProtocolError("Retry-After datetime must be timezone-aware")
    elif value < 0:
        raise LocalProtocolError("Retry-After must be a non-negative int or a datetime")
