"""The EST layer: HTTP requests in, EST events out; EST responses in, HTTP out.

This layer knows RFC 7030 and nothing about sockets, h11 or OpenSSL. A host
that already has an HTTP server and TLS termination (an ASGI app, a reverse
proxy forwarding the client certificate and channel binding) can use
:class:`ESTServerProtocol` directly: hand it method, target, headers, body and
the :class:`ConnectionFacts`, get back an event, answer it, get back a
:class:`Reply` (status, headers, body) to send. :class:`ServerConnection`
stacks exactly this on top of its HTTP and TLS layers.

What it decides by itself, because the RFC leaves no choice:
  * 404 for paths outside ``/.well-known/est`` or unknown operations and
    labels (7030 3.2.2), 405 with ``Allow`` for a wrong method, 415 for a
    wrong media type (3.2.4, 4.x), 400 for an undecodable body or CSR, 413
    for an oversized one.
  * proof-of-possession linking (3.5): "If tls-unique information is included
    by the client, the server MUST verify it"; with ``PoPPolicy.REQUIRE`` a
    CSR without it is rejected too.
  * simplereenroll (4.2.2): "the Subject field and SubjectAltName extension
    MUST be identical to the corresponding fields in the certificate being
    renewed or rekeyed".
  * HTTP credentials are only honoured over TLS (3.2.3).

What it leaves to the application: whether the authenticated party may have
what it asks for. Every request event carries the credentials, the client
certificate and whether it verified; :mod:`estproto.auth` has the helpers.

States: IDLE until a request is received, then AWAITING_RESPONSE until the
application answers it (one request at a time, as HTTP/1.1 pipelining
requires responses in order).
"""

from __future__ import annotations

import datetime
import email.utils
import enum
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from cryptography.hazmat.primitives import serialization

from . import auth
from ._errors import DecodeError, LocalProtocolError, ProtocolError, RemoteProtocolError
from ._events import (
    AuthenticationRequired,
    CACertsRequest,
    CACertsResponse,
    CertificateResponse,
    ConnectionFacts,
    CSRAttrsRequest,
    CSRAttrsResponse,
    ErrorResponse,
    Event,
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
from ._limits import MAX_BODY_SIZE
from ._paths import ESTPath, Operation, format_est_path, parse_est_path
from ._state import EST_LAYER_TRANSITIONS, ConnectionState, ConnectionStateMachine, Input
from .codecs import cmc, csrattrs, mediatype, multipart, pkcs7, pkcs10, serverkey, transfer
from .codecs.mediatype import MediaType

__all__ = [
    "ESTServerProtocol",
    "ESTServerSettings",
    "LinePolicyChoice",
    "Reply",
    "RequestRejected",
]


class LinePolicyChoice(enum.Enum):
    """How a server wraps the base64 of its responses (see EST-NOTES)."""

    #: One line plus "\n", unless the client wrapped its own request body or
    #: identifies as libest (whose OpenSSL base64 BIO fails on lines > ~1 KB).
    AUTO = "auto"
    #: Always one unbroken line plus "\n" (strongSwan cannot read wrapped base64).
    SINGLE_LINE = "single-line"
    #: Always 64-column lines.
    WRAP_64 = "wrap-64"


@dataclass(frozen=True)
class ESTServerSettings:
    """What the EST layer of a server needs to know (the HTTP/TLS limits live
    in :class:`ServerConfig`).

    Attributes:
        labels: CA labels served; None serves any well-formed label (the
            application then maps labels to CAs). The unlabelled paths are
            always served (7030 3.2.2: "MUST provide services regardless of
            whether the additional path segment is present").
        max_label_segments: 1 per RFC 7030; 2 for tenant/profile deployments.
        pop_policy: proof-of-possession linking policy (3.5).
        line_policy: base64 line policy for responses.
        lenient_bodies: accept PEM-armoured and raw DER request bodies (real
            clients send them) besides base64 DER.
        reenroll_requires_certificate: simplereenroll must be authenticated by
            the TLS client certificate being renewed (4.2.2), except for RAs.
        max_body_size: largest request body decoded.
        challenges_before_body: when set, a POST that carries neither
            HTTP credentials nor a verified client certificate, and whose
            body or media type the EST layer would refuse (400, 415), is
            answered 401 with the ``WWW-Authenticate`` values this returns:
            authentication is decided before the body is judged. curl
            ``--digest`` and ``--anyauth`` first send a POST with an empty
            body to learn the challenge.
    """

    labels: frozenset[str] | None = None
    max_label_segments: int = 1
    pop_policy: auth.PoPPolicy = auth.PoPPolicy.VERIFY_IF_PRESENT
    line_policy: LinePolicyChoice = LinePolicyChoice.AUTO
    lenient_bodies: bool = True
    reenroll_requires_certificate: bool = True
    max_body_size: int = MAX_BODY_SIZE
    challenges_before_body: Callable[[], Sequence[str]] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.max_label_segments not in (1, 2):
            raise LocalProtocolError("max_label_segments must be 1 or 2")
        if self.labels is not None:
            object.__setattr__(self, "labels", frozenset(self.labels))


@dataclass(frozen=True)
class Reply:
    """An HTTP response for the layer below: status, headers, body.

    Headers are (name, value) pairs; Content-Length is the HTTP layer's job.
    """

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass(frozen=True)
class RequestRejected(Event):
    """A request the EST layer answered by itself (404, 405, 415, 400 ...).

    Emitted for logging; the application does not answer it.

    Attributes:
        method, target: from the request line.
        status: the status sent.
        reason: the one-line reason sent as text/plain.
        reply: the full reply, already decided.
    """

    method: str
    target: str
    status: int
    reason: str
    reply: Reply = field(repr=False)


# Media types a POST must carry, per operation (7030 3.2.4 and 4.x).
_REQUEST_MEDIA_TYPES: Mapping[Operation, MediaType] = {
    Operation.SIMPLEENROLL: mediatype.PKCS10,
    Operation.SIMPLEREENROLL: mediatype.PKCS10,
    Operation.SERVERKEYGEN: mediatype.PKCS10,
    Operation.FULLCMC: mediatype.CMC_REQUEST,
}

# The request media types exactly as written by format_media_type (what
# clients send); anything else goes through the full parser.
_CANONICAL_REQUEST_TYPES: Mapping[Operation, str] = {
    op: mediatype.format_media_type(mt) for op, mt in _REQUEST_MEDIA_TYPES.items()
}

# Operation.method, looked up once.
_METHODS: Mapping[Operation, str] = {op: op.method for op in Operation}

# The six unlabelled paths (RFC 7030 3.2.2), parsed once: an exact match of
# the request-target skips the parser, whose answer would be the same.
_PLAIN_PATHS: Mapping[str, ESTPath] = {
    format_est_path(op): parse_est_path(format_est_path(op)) for op in Operation
}

# Which responses answer which request (anything else is a caller bug).
_ALWAYS_ALLOWED = (AuthenticationRequired, ErrorResponse)
_ALLOWED_RESPONSES: Mapping[Operation, tuple[type[ServerResponse], ...]] = {
    Operation.CACERTS: (CACertsResponse,) + _ALWAYS_ALLOWED,
    Operation.CSRATTRS: (CSRAttrsResponse,) + _ALWAYS_ALLOWED,
    Operation.SIMPLEENROLL: (CertificateResponse, RetryLater) + _ALWAYS_ALLOWED,
    Operation.SIMPLEREENROLL: (CertificateResponse, RetryLater) + _ALWAYS_ALLOWED,
    Operation.SERVERKEYGEN: (ServerKeygenResponse, RetryLater) + _ALWAYS_ALLOWED,
    Operation.FULLCMC: (FullCMCResponse, RetryLater) + _ALWAYS_ALLOWED,
}

_CTE_BASE64 = ("content-transfer-encoding", "base64")

# The headers of each base64 response kind, formatted once.
_BASE64_HEADERS: Mapping[MediaType, tuple[tuple[str, str], ...]] = {
    mt: (("content-type", mediatype.format_media_type(mt)), _CTE_BASE64)
    for mt in (mediatype.CERTS_ONLY, mediatype.PKCS7_MIME, mediatype.CSRATTRS, mediatype.CMC_RESPONSE)
}


def text_reply(status: int, reason: str, extra: tuple[tuple[str, str], ...] = ()) -> Reply:
    """A 4xx/5xx with a short text/plain reason (RFC 8951 section 5)."""
    body = reason.encode("utf-8", "replace") + b"\n"
    return Reply(status, (("content-type", "text/plain; charset=utf-8"),) + extra, body)


class ESTServerProtocol:
    """The EST layer of one server connection, usable on its own.

    Args:
        settings: EST-level settings.
        cmc_error_reply: builds the CMC body of a /fullcmc rejection (7030
            4.3.2: "A CMC response ... MUST be included in the response data
            for any CMC error response"). Defaults to an unsigned Full PKI
            Response with the given failInfo.
    """

    def __init__(
        self,
        settings: ESTServerSettings | None = None,
        *,
        cmc_error_reply: Callable[[cmc.CMCFailInfo, str], bytes] | None = None,
    ) -> None:
        self.settings = settings or ESTServerSettings()
        self._cmc_error = cmc_error_reply or _unsigned_cmc_failure
        self._sm = ConnectionStateMachine(EST_LAYER_TRANSITIONS, ConnectionState.IDLE)
        self._current: ServerRequest | None = None
        self._wrap_response = False
        # The last Basic Authorization value parsed and its credentials
        # (immutable): a keep-alive client sends the same one every time.
        self._basic: tuple[str, auth.BasicCredentials] | None = None

    # -- requests ----------------------------------------------------------

    def receive_request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        facts: ConnectionFacts,
    ) -> ServerRequest | RequestRejected:
        """Turn one HTTP request into an EST request event.

        Args:
            method: the request method, e.g. ``"POST"``.
            target: the request-target, e.g. ``"/.well-known/est/simpleenroll"``.
            headers: (name, value) pairs with names in lower case.
            body: the complete request body.
            facts: what the transport knows (TLS, client certificate, binding).

        Returns:
            A :class:`ServerRequest` subclass the application must answer with
            :meth:`respond`, or :class:`RequestRejected` already answered.

        Raises:
            LocalProtocolError: the previous request has not been answered.
        """
        if self._sm.state is not ConnectionState.IDLE:
            raise LocalProtocolError("the previous EST request has not been answered")
        # The three fields EST reads, in one pass (the first of each counts).
        user_agent = authorization = content_type = None
        for key, value in headers:
            if key == "user-agent":
                if user_agent is None:
                    user_agent = value
            elif key == "authorization":
                if authorization is None:
                    authorization = value
            elif key == "content-type":
                if content_type is None:
                    content_type = value
        # Decided per request (a rejection's CMC body follows it too), never
        # inherited from the previous request.
        self._wrap_response = self._choose_wrap(user_agent, body)
        operation: Operation | None = None
        try:
            path = _PLAIN_PATHS.get(target)
            if path is None:
                path = parse_est_path(target, max_label_segments=self.settings.max_label_segments)
            operation = path.operation
            event = self._build_event(
                method, target, path.operation, path.label, body, facts,
                user_agent, authorization, content_type,
            )
        except ProtocolError as exc:
            challenge = self.settings.challenges_before_body
            if (challenge is not None and method == "POST" and authorization is None
                    and not facts.client_certificate_verified
                    and exc.error_status_hint in (400, 415)):
                challenges = tuple(challenge())
                if challenges:  # none to give: the refusal stands
                    return self._challenge(method, target, challenges)
            return self._reject(method, target, operation, exc)
        self._sm.process(Input.REQUEST_RECEIVED)
        self._current = event
        return event

    def _reject(
        self, method: str, target: str, operation: Operation | None, exc: ProtocolError
    ) -> RequestRejected:
        status = exc.error_status_hint if 400 <= exc.error_status_hint < 600 else 400
        reason = str(exc)
        extra: tuple[tuple[str, str], ...] = ()
        if status == 405 and operation is not None:
            extra = (("allow", operation.method),)
        if operation is Operation.FULLCMC and status not in (404, 405, 413):
            fail = cmc.CMCFailInfo.POP_FAILED if "proof-of-possession" in reason else cmc.CMCFailInfo.BAD_REQUEST
            reply = self._cmc_reply(self._cmc_error(fail, reason), status)
        else:
            reply = text_reply(status, reason, extra)
        return RequestRejected(method, target, status, reason, reply)

    @staticmethod
    def _challenge(method: str, target: str, challenges: tuple[str, ...]) -> RequestRejected:
        # An empty body, as AuthenticationRequired sends (Bouncy Castle
        # fails on a 401 with one).
        reply = Reply(401, tuple(("www-authenticate", c) for c in challenges))
        return RequestRejected(method, target, 401, "authentication required", reply)

    def _build_event(
        self,
        method: str,
        target: str,
        operation: Operation,
        label: str,
        body: bytes,
        facts: ConnectionFacts,
        user_agent: str | None,
        authorization: str | None,
        content_type: str | None,
    ) -> ServerRequest:
        settings = self.settings
        if label and settings.labels is not None and label not in settings.labels:
            raise RemoteProtocolError("unknown CA label", 404)
        if method != _METHODS[operation]:
            raise RemoteProtocolError(f"{operation.value} takes {operation.method}", 405)

        credentials: auth.BasicCredentials | auth.DigestCredentials | None = None
        if authorization is not None and facts.is_tls:
            # 3.2.3: HTTP-based client authentication happens inside TLS;
            # credentials sent in the clear are ignored, never honoured.
            basic = self._basic
            if basic is not None and basic[0] == authorization:
                credentials = basic[1]
            else:
                credentials = auth.parse_authorization(authorization)
                if isinstance(credentials, auth.BasicCredentials):
                    self._basic = (authorization, credentials)
        client_cert = facts.client_certificate
        is_ra = bool(
            client_cert is not None
            and facts.client_certificate_verified
            and auth.is_ra_certificate(client_cert)
        )

        if operation is Operation.CACERTS:
            return CACertsRequest(
                label=label, credentials=credentials, facts=facts, is_ra=is_ra,
                user_agent=user_agent, target=target,
            )
        if operation is Operation.CSRATTRS:
            return CSRAttrsRequest(
                label=label, credentials=credentials, facts=facts, is_ra=is_ra,
                user_agent=user_agent, target=target,
            )

        self._check_media_type(operation, content_type)
        if len(body) > settings.max_body_size:
            raise RemoteProtocolError("request body too large", 413)
        der = transfer.decode_base64(
            body, lenient=settings.lenient_bodies, max_size=settings.max_body_size
        )
        common = dict(
            label=label, credentials=credentials, facts=facts, is_ra=is_ra,
            user_agent=user_agent, target=target,
        )
        if operation is Operation.FULLCMC:
            request = cmc.decode_full_pki_request(der)
            # 3.5 applies to the PKCS#10 requests inside a Full PKI Request
            # too: "If the server fails the POP check ... For CMC, the
            # CMCFailInfo MUST be set to popFailed" (our _reject does so).
            linked = [
                self._check_pop(pkcs10.decode_csr(tagged.csr_der), facts, is_ra)
                for tagged in request.requests
            ]
            pop_linked = bool(linked) and all(linked)
            return FullCMCRequest(request=request, der=der, pop_linked=pop_linked, **common)  # type: ignore[arg-type]  # the shared ServerRequest fields; each event checks them (_fields)

        csr = pkcs10.decode_csr(der)
        pop_linked = self._check_pop(csr, facts, is_ra)
        if operation is Operation.SIMPLEENROLL:
            return SimpleEnrollRequest(
                label=label, credentials=credentials, facts=facts, is_ra=is_ra,
                user_agent=user_agent, target=target, csr=csr, pop_linked=pop_linked,
            )
        if operation is Operation.SERVERKEYGEN:
            return ServerKeygenRequest(csr=csr, pop_linked=pop_linked, **common)  # type: ignore[arg-type]  # the shared ServerRequest fields; each event checks them (_fields)
        rekey = self._check_reenroll(csr, facts, is_ra)
        return SimpleReenrollRequest(csr=csr, pop_linked=pop_linked, rekey=rekey, **common)  # type: ignore[arg-type]  # as above  # the shared ServerRequest fields; each event checks them (_fields)

    def _choose_wrap(self, user_agent: str | None, body: bytes) -> bool:
        choice = self.settings.line_policy
        if choice is LinePolicyChoice.AUTO:
            if user_agent is not None and user_agent.lower().startswith("libest"):
                return True
            return bool(body) and transfer.body_is_wrapped(body)
        return choice is LinePolicyChoice.WRAP_64

    @staticmethod
    def _check_media_type(operation: Operation, content_type: str | None) -> None:
        if content_type is not None and content_type == _CANONICAL_REQUEST_TYPES[operation]:
            return  # the exact form every client sends; parsing would agree
        expected = _REQUEST_MEDIA_TYPES[operation]
        if content_type is None:
            raise RemoteProtocolError(
                f"missing Content-Type, expected {mediatype.format_media_type(expected)}", 415
            )
        try:
            actual = mediatype.parse_media_type(content_type)
        except DecodeError as exc:
            raise RemoteProtocolError(str(exc), 415) from None
        if not mediatype.matches(actual, expected):
            raise RemoteProtocolError(
                f"Content-Type must be {mediatype.format_media_type(expected)}", 415
            )

    def _check_pop(self, csr: pkcs10.CertificationRequest, facts: ConnectionFacts, is_ra: bool) -> bool:
        policy = self.settings.pop_policy
        if (
            csr.challenge_password is None
            and csr.est_identity_linking is None
            and policy is not auth.PoPPolicy.REQUIRE
        ):
            # Nothing to link and linking not required: check_pop's answer
            # is "accepted, not linked" whatever the channel binding is.
            return False
        outcome = auth.check_pop(
            policy,
            challenge_password=csr.challenge_password,
            identity_linking=csr.est_identity_linking,
            channel_binding=facts.channel_binding,
            is_ra=is_ra,
        )
        if not outcome.ok:
            raise RemoteProtocolError(f"proof-of-possession linking failed: {outcome.reason}", 400)
        return outcome.linked

    def _check_reenroll(self, csr: pkcs10.CertificationRequest, facts: ConnectionFacts, is_ra: bool) -> bool:
        cert = facts.client_certificate
        if cert is None or not facts.client_certificate_verified:
            if self.settings.reenroll_requires_certificate and not is_ra:
                # Say which: none sent, or sent and refused (expired, untrusted ...).
                why = ("no TLS client certificate was sent" if cert is None else
                       "the TLS client certificate did not verify: "
                       + ("; ".join(facts.client_certificate_errors) or "unknown reason"))
                raise RemoteProtocolError(
                    f"simplereenroll needs the certificate being renewed (RFC 7030 4.2.2): {why}",
                    403,
                )
            return False
        if is_ra:
            # 3.7: an RA relays other clients' requests; its own certificate
            # is not the one being renewed.
            return False
        reason = auth.mismatch_reason(csr.subject_der, csr.subject_alt_names, cert)
        if reason is not None:
            raise RemoteProtocolError(reason, 400)  # it names RFC 7030 4.2.2 itself
        cert_spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return cert_spki != csr.public_key_der

    # -- responses ---------------------------------------------------------

    @property
    def current_request(self) -> ServerRequest | None:
        """The request awaiting a response, if any."""
        return self._current

    def respond(self, response: ServerResponse) -> Reply:
        """Answer the current request.

        Raises:
            LocalProtocolError: no request is waiting, or *response* does not
                answer this kind of request (e.g. a CACertsResponse to
                simpleenroll). The request stays unanswered.
        """
        reply = self.prepare_reply(response)
        self.reply_sent()
        return reply

    def prepare_reply(self, response: ServerResponse) -> Reply:
        """Encode *response* to the current request without answering it.

        For a host whose own HTTP layer may still refuse the reply: call
        :meth:`reply_sent` once it is on its way, so a refusal leaves the
        request waiting (:meth:`respond` does both at once).

        Raises:
            LocalProtocolError: as for :meth:`respond`; nothing changes.
        """
        request = self._current
        if self._sm.state is not ConnectionState.AWAITING_RESPONSE or request is None:
            raise LocalProtocolError("no EST request is waiting for a response")
        allowed = _ALLOWED_RESPONSES[request.operation]
        if not isinstance(response, allowed):
            raise LocalProtocolError(
                f"{type(response).__name__} does not answer {request.operation.value}"
            )
        return self._encode(request, response)

    def reply_sent(self) -> None:
        """Mark the current request answered (after :meth:`prepare_reply`).

        Raises:
            LocalProtocolError: no request is waiting.
        """
        if self._sm.state is not ConnectionState.AWAITING_RESPONSE:
            raise LocalProtocolError("no EST request is waiting for a response")
        self._sm.process(Input.RESPONSE_DONE)
        self._current = None

    def _policy(self) -> transfer.LinePolicy:
        return transfer.WRAP_64 if self._wrap_response else transfer.SINGLE_LINE

    def _base64_reply(self, der: bytes, content_type: MediaType) -> Reply:
        headers = _BASE64_HEADERS.get(content_type)
        if headers is None:  # pragma: no cover - every caller passes a constant
            headers = (("content-type", mediatype.format_media_type(content_type)), _CTE_BASE64)
        return Reply(200, headers, transfer.encode_base64(der, self._policy()))

    def _cmc_reply(self, der: bytes, status: int) -> Reply:
        return Reply(
            status,
            _BASE64_HEADERS[mediatype.CMC_RESPONSE],
            transfer.encode_base64(der, self._policy()),
        )

    def _encode(self, request: ServerRequest, response: ServerResponse) -> Reply:
        if isinstance(response, CertificateResponse):
            # 4.2.3: "containing only the certificate that was issued".
            return self._base64_reply(pkcs7.encode_certs_only([response.certificate]), mediatype.CERTS_ONLY)
        if isinstance(response, CACertsResponse):
            # 4.1.3: "The HTTP content-type of "application/pkcs7-mime" is
            # used" (no smime-type parameter, unlike the enrollment answers).
            return self._base64_reply(pkcs7.encode_certs_only(response.certificates), mediatype.PKCS7_MIME)
        if isinstance(response, CSRAttrsResponse):
            if response.attributes is None:
                # 4.5.2: 204 means "no attributes".
                return Reply(204)
            return self._base64_reply(csrattrs.encode_csrattrs(response.attributes), mediatype.CSRATTRS)
        if isinstance(response, ServerKeygenResponse):
            if response.private_key is not None:
                key_der, encrypted = serverkey.encode_private_key(response.private_key), False
            else:
                assert response.encrypted_key is not None
                key_der, encrypted = response.encrypted_key, True
            content_type, body = multipart.encode_serverkeygen_response(
                key_der,
                pkcs7.encode_certs_only([response.certificate]),
                key_encrypted=encrypted,
                policy=self._policy(),
            )
            return Reply(200, (("content-type", mediatype.format_media_type(content_type)),), body)
        if isinstance(response, FullCMCResponse):
            return self._cmc_reply(response.der, response.status)
        if isinstance(response, RetryLater):
            return _retry_later_reply(response)
        if isinstance(response, AuthenticationRequired):
            # Empty body: Bouncy Castle's client fails on a 401 with a body.
            return Reply(401, tuple(("www-authenticate", c) for c in response.challenges))
        if isinstance(response, ErrorResponse):
            if request.operation is Operation.FULLCMC and response.status != 401:
                return self._cmc_reply(
                    self._cmc_error(cmc.CMCFailInfo.BAD_REQUEST, response.reason), response.status
                )
            return text_reply(response.status, response.reason)
        raise LocalProtocolError(f"unknown response event {type(response).__name__}")


def _retry_later_reply(response: RetryLater) -> Reply:
    # 4.2.3: "The server MUST include a Retry-After header as defined for
    # HTTP 503 responses": delta-seconds or an HTTP-date.
    if isinstance(response.retry_after, int):
        value = str(response.retry_after)
    else:
        when = response.retry_after.astimezone(datetime.timezone.utc)
        value = email.utils.format_datetime(when, usegmt=True)
    headers: tuple[tuple[str, str], ...] = (("retry-after", value),)
    body = b""
    if response.message:
        headers += (("content-type", "text/plain; charset=utf-8"),)
        body = response.message.encode("utf-8", "replace") + b"\n"
    return Reply(202, headers, body)


def _unsigned_cmc_failure(fail_info: cmc.CMCFailInfo, reason: str) -> bytes:
    return cmc.build_full_pki_response_failed(fail_info, status_string=reason[:200])
