"""The conformance checks: RFC 7030 / 8951 / 9908 behaviour of any EST server.

Each check sends real requests over TLS to the server under test and judges
what comes back: status codes, media types, bodies, framing, and whether the
server survives deliberately wrong requests. A check returns a one-line
description of what it saw (PASS), or raises :class:`CheckFailed` or
:class:`CheckSkipped`; any other exception (a timeout, a reset, a server
breaking HTTP) is a FAIL of that check alone, and the suite goes on.

Strategy: the requests go through estproto's own client (the trio
``ESTClient`` over the sans-I/O :class:`~estproto.ClientConnection`) using
its conformance hooks, never monkeypatching: :class:`~estproto.RawRequest`
gives the exact status, headers and body of every response, and the
``raw_body`` / ``content_type`` / ``extra_headers`` / ``authorization`` /
``wrap_base64`` fields build the wrong requests. Bodies that depend on the
connection (a CSR linked to the TLS channel binding, RFC 7030 3.5) are built
after the handshake of the connection that carries them, and rebuilt when the
client reconnects. One probe uses the stdlib ``ssl`` module instead: the
literal status line (``HTTP/1.1``) is not part of a decoded response.

State shared by checks (the enrolled certificate for re-enrollment, the
csrattrs answer for PoP linking) is computed lazily and cached, so that any
subset of checks (``--only``) runs on its own.
"""

from __future__ import annotations

import base64
import enum
import secrets
import socket
import ssl
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence, Union

import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from .. import auth
from .._errors import DecodeError, LocalProtocolError, RemoteProtocolError
from .._events import ClientRequest, ClientResultEvent, RawRequest, RawResponseReceived
from .._paths import WELL_KNOWN_PREFIX
from .._tls import ClientTLSContext
from ..client import ClientConnection, Credentials
from ..codecs import cmc, csrattrs, mediatype, multipart, pkcs7, pkcs10, serverkey, transfer
from ..codecs.pkcs10 import PrivateKey
from ..trio import ESTClient

__all__ = [
    "Result",
    "CheckResult",
    "Check",
    "CHECKS",
    "GROUPS",
    "SuiteOptions",
    "Suite",
    "CheckFailed",
    "CheckSkipped",
    "run_checks",
]

#: Largest 401 body still called "short": RFC 7030 A.3 shows a 401 with
#: ``Content-Length: 0``, and Bouncy Castle's client fails on a 401 with a
#: body; a one-line reason fits well within this.
MAX_CHALLENGE_BODY = 512

#: Size of the oversized request body: twice estproto's own body limit
#: (1 MiB) and far above any real CSR (a few KiB).
OVERSIZED_BODY = 2 * 1024 * 1024

#: Requests sent on one connection by the keep-alive check.
KEEPALIVE_REQUESTS = 20

#: Enrollments run at once by the concurrency check.
PARALLEL_CLIENTS = 8

#: Answers that say "no such endpoint" or "authentication failed" rather
#: than "this request is refused": they cannot count as a refusal.
_NOT_SERVED = (401, 404, 405)

PKCS10_TYPE = "application/pkcs10"
CMC_REQUEST_TYPE = "application/pkcs7-mime; smime-type=CMC-request"

Body = Union[bytes, Callable[[ClientConnection], bytes]]


class Result(enum.Enum):
    """The verdict of one check."""

    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclass(frozen=True)
class CheckResult:
    """One line of the report.

    Attributes:
        id: the check id, e.g. ``"cacerts.response"``.
        section: the RFC section it checks, e.g. ``"RFC 7030 4.1.3"``.
        result: PASS, FAIL or SKIP.
        detail: what was seen, one line.
    """

    id: str
    section: str
    result: Result
    detail: str

    def line(self) -> str:
        """``PASS|FAIL|SKIP <id> (<section>) <detail>``."""
        return f"{self.result.value} {self.id} ({self.section}) {self.detail}"

    def as_json(self) -> dict[str, str]:
        """The JSON object of the ``--json`` output."""
        return {"id": self.id, "section": self.section, "result": self.result.value,
                "detail": self.detail}


class CheckFailed(Exception):
    """Raised by a check: the server does not conform (the message says how)."""


class CheckSkipped(Exception):
    """Raised by a check: it does not apply to this server or these options."""


@dataclass(frozen=True)
class Check:
    """A registered check.

    Attributes:
        id: ``group.name``; the group is what ``--only`` selects.
        section: the RFC section.
        run: the coroutine function judging the server.
    """

    id: str
    section: str
    run: Callable[["Suite"], Awaitable[str]]

    @property
    def group(self) -> str:
        return self.id.split(".", 1)[0]


#: Every check, in the order they run.
CHECKS: list[Check] = []


def _check(check_id: str, section: str) -> Callable[
    [Callable[["Suite"], Awaitable[str]]], Callable[["Suite"], Awaitable[str]]
]:
    def register(fn: Callable[["Suite"], Awaitable[str]]) -> Callable[["Suite"], Awaitable[str]]:
        CHECKS.append(Check(check_id, section, fn))
        return fn

    return register


@dataclass(frozen=True)
class SuiteOptions:
    """What the suite needs to know about the server under test.

    Attributes:
        host, port: where the server listens.
        trust_anchors: the CA certificates the server's TLS certificate must
            chain to (RFC 7030 3.6.1 Explicit TA).
        username, password: HTTP credentials for enrollment, or None.
        client_chain, client_key: an existing client certificate (and its
            key) for TLS client authentication and re-enrollment, or empty.
        label: a CA label the server serves ("" to skip the label checks).
        timeout: seconds for a connection and for each response.
        only: check groups to run; empty runs every check.
    """

    host: str
    port: int
    trust_anchors: tuple[x509.Certificate, ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    client_chain: tuple[x509.Certificate, ...] = ()
    client_key: PrivateKey | None = field(default=None, repr=False)
    label: str = ""
    timeout: float = 10.0
    only: frozenset[str] = frozenset()


def _subject(tag: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(
        NameOID.COMMON_NAME, f"estproto-conformance-{tag}-{secrets.token_hex(4)}")])


def _header(response: RawResponseReceived, name: str) -> str | None:
    for key, value in response.headers:
        if key.lower() == name:
            return value
    return None


def _short(body: bytes, limit: int = 80) -> str:
    text = body.decode("utf-8", "replace").strip().replace("\r", " ").replace("\n", " ")
    return text[:limit] + ("..." if len(text) > limit else "")


def _seen(response: RawResponseReceived) -> str:
    """``status content-type "reason"`` for a detail line."""
    ctype = _header(response, "content-type")
    out = f"{response.status}"
    if ctype:
        out += f" {ctype}"
    if response.status >= 300 and response.body:
        out += f" {_short(response.body)!r}"
    return out


def _media_is(response: RawResponseReceived, expected: mediatype.MediaType) -> bool:
    ctype = _header(response, "content-type")
    if ctype is None:
        return False
    try:
        return mediatype.matches(mediatype.parse_media_type(ctype), expected)
    except DecodeError:
        return False


def _require_media(response: RawResponseReceived, expected: mediatype.MediaType) -> None:
    """Fail the check unless *response* carries the *expected* media type."""
    if not _media_is(response, expected):
        raise CheckFailed(f"Content-Type {_header(response, 'content-type')!r}, "
                          f"expected {mediatype.format_media_type(expected)}")


def _decode_b64(response: RawResponseReceived, what: str) -> bytes:
    try:
        return transfer.decode_base64(response.body)
    except DecodeError as exc:
        raise CheckFailed(f"{what} body is not base64 (RFC 8951 3): {exc}") from None


def _certs(response: RawResponseReceived, what: str) -> tuple[x509.Certificate, ...]:
    try:
        return pkcs7.decode_certs_only(_decode_b64(response, what))
    except DecodeError as exc:
        raise CheckFailed(f"{what} body is not a certs-only PKCS#7: {exc}") from None


@dataclass
class _Enrollment:
    key: PrivateKey
    subject: x509.Name
    response: RawResponseReceived


class Suite:
    """Runs checks against one server and keeps what they share.

    Args:
        options: the server and the credentials.
    """

    def __init__(self, options: SuiteOptions) -> None:
        self.options = options
        self.tls = ClientTLSContext(trust_anchors=options.trust_anchors)
        #: Every raw response seen, with what it answered (for the framing check).
        self.responses: list[tuple[str, RawResponseReceived]] = []
        #: The response to the single-line (unwrapped) enrollment request.
        self.single_line_response: RawResponseReceived | None = None
        self._cacerts: RawResponseReceived | None = None
        self._csrattrs: RawResponseReceived | None = None
        self._enrollment: _Enrollment | None = None
        self._serverkeygen: tuple[RawResponseReceived, ec.EllipticCurvePrivateKey] | None = None
        self._identity: tuple[x509.Certificate, PrivateKey] | None = None

    # -- clients and requests ----------------------------------------------

    @property
    def has_credentials(self) -> bool:
        return self.options.username is not None and self.options.password is not None

    def client(
        self, *, credentials: bool = True, preemptive: bool = True,
        identity: tuple[x509.Certificate, PrivateKey] | None = None,
        anonymous: bool = False,
    ) -> ESTClient:
        """A new client (not yet connected).

        Args:
            credentials: answer 401s with ``--user`` (Basic sent up front
                when *preemptive*, as curl ``--user`` does).
            identity: a TLS client certificate and key; default ``--cert``.
            anonymous: no client certificate at all.
        """
        o = self.options
        creds = None
        if credentials and o.username is not None and o.password is not None:
            creds = Credentials(o.username, o.password, preemptive_basic=preemptive)
        chain: Sequence[x509.Certificate]
        key: PrivateKey | None
        if anonymous:
            chain, key = (), None
        elif identity is not None:
            chain, key = (identity[0],), identity[1]
        else:
            chain, key = o.client_chain, o.client_key
        tls = self.tls if key is None else ClientTLSContext(
            trust_anchors=o.trust_anchors, client_certificate_chain=chain, client_private_key=key)
        return ESTClient(
            o.host, o.port, tls, credentials=creds, max_retries=0, max_retry_wait=0.0,
            request_timeout=o.timeout, connect_timeout=o.timeout,
        )

    def path(self, op: str, label: str = "") -> str:
        return f"{WELL_KNOWN_PREFIX}/{label + '/' if label else ''}{op}"

    async def raw(
        self,
        client: ESTClient,
        method: str,
        target: str,
        body: Body = b"",
        *,
        content_type: str | None = None,
        cte: bool = True,
    ) -> RawResponseReceived:
        """Send one raw request; answer a 401 challenge once with credentials.

        Basic goes up front when the client has credentials; a 401 offering
        Digest (or Basic, for a non-preemptive client) is answered on the
        next request, as the typed client does by itself.

        Raises:
            CheckFailed: the answer is not a raw response.
            RemoteProtocolError, OSError: as :meth:`ESTClient.request`.
        """
        headers: list[tuple[str, str]] = []
        if content_type is not None:
            headers.append(("Content-Type", content_type))
            if cte:
                headers.append(("Content-Transfer-Encoding", "base64"))
        authorization: str | None = None
        result: ClientResultEvent | None = None
        for attempt in range(2):
            def build(conn: ClientConnection, authorization: str | None = authorization) -> ClientRequest:
                data = body(conn) if callable(body) else body
                return RawRequest(method=method, target=target, body=data,
                                  extra_headers=tuple(headers), authorization=authorization)

            result = await client.request_built(build)
            if not isinstance(result, RawResponseReceived):  # pragma: no cover - raw in, raw out
                raise CheckFailed(f"unexpected answer {type(result).__name__}")
            self.responses.append((f"{method} {target}", result))
            creds = client.credentials
            if result.status != 401 or attempt or creds is None:
                return result
            values = [v for k, v in result.headers if k.lower() == "www-authenticate"]
            try:
                challenges = auth.parse_challenges(values) if values else []
                authorization = auth.answer_challenge(
                    challenges, creds.username, creds.password, method, target,
                    server_authorized=True, prefer=creds.prefer)
            except (RemoteProtocolError, LocalProtocolError):
                return result
            if authorization is None:
                return result
        assert isinstance(result, RawResponseReceived)
        return result

    def csr_body(
        self, key: PrivateKey, subject: x509.Name, *,
        policy: transfer.LinePolicy = transfer.WRAP_64,
        challenge: str | None = None, newline: bool = True,
        link: bool | None = None, subject_alt_names: Sequence[x509.GeneralName] = (),
    ) -> Callable[[ClientConnection], bytes]:
        """A base64 CSR body built per connection.

        Args:
            challenge: a challengePassword to send as is.
            link: put this connection's channel binding in challengePassword
                (RFC 7030 3.5); default: when the server requires it.
            newline: keep the final newline of the base64 text.
        """
        do_link = self.link_required if link is None else link

        def build(conn: ClientConnection) -> bytes:
            password = challenge
            if password is None and do_link:
                password = conn.pop_challenge_password
            der = pkcs10.build_csr(key, subject, challenge_password=password,
                                   subject_alt_names=subject_alt_names)
            text = transfer.encode_base64(der, policy)
            return text if newline else text.rstrip(b"\n")

        return build

    async def enroll(
        self, key: PrivateKey, subject: x509.Name, *, label: str = "", op: str = "simpleenroll",
        client: ESTClient | None = None, cte: bool = True, **body_options: object,
    ) -> RawResponseReceived:
        """POST a CSR for *key* to /simpleenroll (or *op*) and return the answer."""
        body = self.csr_body(key, subject, **body_options)  # type: ignore[arg-type]  # a check's table row of csr_body keywords
        own = client is None
        use = self.client() if client is None else client
        try:
            return await self.raw(use, "POST", self.path(op, label), body,
                                  content_type=PKCS10_TYPE, cte=cte)
        finally:
            if own:
                await use.aclose()

    def issued(
        self, response: RawResponseReceived, key: PrivateKey, what: str, *, only: bool = False,
    ) -> x509.Certificate:
        """The certificate for *key* in a 200 certs-only response.

        Raises:
            CheckFailed: another status, media type or body, no certificate
                for *key*, or (with *only*) more than that one certificate.
        """
        if response.status != 200:
            raise CheckFailed(f"{what}: expected 200, got {_seen(response)}")
        if not _media_is(response, mediatype.CERTS_ONLY):
            raise CheckFailed(f"{what}: Content-Type {_header(response, 'content-type')!r} "
                              "is not application/pkcs7-mime")
        certs = _certs(response, what)
        try:
            cert = pkcs7.find_issued_certificate(certs, key.public_key())
        except DecodeError:
            raise CheckFailed(f"{what}: none of the {len(certs)} certificates holds our key") from None
        if only and len(certs) != 1:
            raise CheckFailed(f"{what}: {len(certs)} certificates, expected only the issued one")
        return cert

    async def alive(self) -> None:
        """Raise CheckFailed unless a fresh /cacerts request succeeds."""
        async with self.client(credentials=False) as client:
            try:
                response = await self.raw(client, "GET", self.path("cacerts"))
            except (OSError, RemoteProtocolError) as exc:
                raise CheckFailed(f"server not answering afterwards: {type(exc).__name__}: {exc}") from None
        if response.status != 200:
            raise CheckFailed(f"/cacerts afterwards answered {_seen(response)}")

    # -- shared, cached state ----------------------------------------------

    async def cacerts(self) -> RawResponseReceived:
        if self._cacerts is None:
            async with self.client(credentials=False) as client:
                self._cacerts = await self.raw(client, "GET", self.path("cacerts"))
        return self._cacerts

    async def csrattrs(self) -> RawResponseReceived:
        if self._csrattrs is None:
            async with self.client() as client:
                self._csrattrs = await self.raw(client, "GET", self.path("csrattrs"))
        return self._csrattrs

    link_required = False  # set by prepare(): csrattrs lists challengePassword

    async def prepare(self) -> None:
        """Learn whether the server requires PoP linking (RFC 7030 4.5.2)."""
        try:
            response = await self.csrattrs()
        except (OSError, RemoteProtocolError):
            return
        if response.status == 200 and response.body.strip():
            try:
                attrs = csrattrs.decode_csrattrs(transfer.decode_base64(response.body, lenient=True))
            except DecodeError:
                return
            self.link_required = attrs.challenge_password_required

    async def enrollment(self) -> _Enrollment:
        if self._enrollment is None:
            key = ec.generate_private_key(ec.SECP256R1())
            subject = _subject("enroll")
            self._enrollment = _Enrollment(key, subject, await self.enroll(key, subject))
        return self._enrollment

    async def identity(self) -> tuple[x509.Certificate, PrivateKey]:
        """A client certificate to re-enroll: ``--cert`` or one enrolled now."""
        o = self.options
        if o.client_chain and o.client_key is not None:
            return o.client_chain[0], o.client_key
        if self._identity is None:
            if not self.has_credentials:
                raise CheckSkipped("needs --user (to enroll first) or --cert/--key")
            enrolled = await self.enrollment()
            try:
                cert = self.issued(enrolled.response, enrolled.key, "enrollment")
            except CheckFailed as exc:
                raise CheckSkipped(f"no certificate to renew ({exc})") from None
            self._identity = (cert, enrolled.key)
        return self._identity

    def need_credentials(self) -> None:
        if not self.has_credentials and not self.options.client_chain:
            raise CheckSkipped("needs --user or --cert/--key to enroll")


# ---------------------------------------------------------------------------
# The checks, in running order.


def _probe_head(host: str, port: int, anchors_pem: str, target: str, timeout: float) -> bytes:
    """GET *target* with the stdlib ssl module; the raw response head."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=anchors_pem)
    request = (f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n"
               "User-Agent: estproto-conformance\r\nConnection: close\r\n\r\n").encode("ascii")
    data = b""
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=host) as sock:
            sock.sendall(request)
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    return data.split(b"\r\n\r\n", 1)[0]


@_check("http.status-line", "RFC 7030 3.2")
async def _status_line(s: Suite) -> str:
    o = s.options
    pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in o.trust_anchors)
    try:
        head = await trio.to_thread.run_sync(
            _probe_head, o.host, o.port, pem, s.path("cacerts"), o.timeout)
    except (OSError, ssl.SSLError) as exc:
        raise CheckFailed(f"no response: {type(exc).__name__}: {exc}") from None
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    # EST runs on HTTP 1.1 (7030 3.2); strongSwan's parser wants the literal
    # "HTTP/1.1" status line.
    if not line.startswith("HTTP/1.1 "):
        raise CheckFailed(f"status line {line[:60]!r}, expected HTTP/1.1")
    return f"{line[:60]!r}"


@_check("cacerts.response", "RFC 7030 4.1.3")
async def _cacerts_response(s: Suite) -> str:
    # 4.1.3: "If successful, the server response MUST have an HTTP 200
    # response code with a content-type of "application/pkcs7-mime"."
    response = await s.cacerts()
    if response.status != 200:
        raise CheckFailed(f"expected 200, got {_seen(response)}")
    _require_media(response, mediatype.PKCS7_MIME)
    return _seen(response)


@_check("cacerts.decode", "RFC 7030 4.1.3")
async def _cacerts_decode(s: Suite) -> str:
    # 4.1.3: "a certs-only CMC Simple PKI Response".
    response = await s.cacerts()
    if response.status != 200:
        raise CheckFailed(f"no certificates: {_seen(response)}")
    certs = _certs(response, "/cacerts")
    return f"certs-only with {len(certs)} certificate(s)"


@_check("csrattrs.response", "RFC 7030 4.5.2")
async def _csrattrs_response(s: Suite) -> str:
    response = await s.csrattrs()
    # 4.5.2: "a response code of 204 or 404 indicates that a CSR Attributes
    # Response is not available"; a 200 carries application/csrattrs.
    if response.status in (204, 404):
        return f"{response.status}: no CSR attributes"
    if response.status != 200:
        raise CheckFailed(f"expected 200, 204 or 404, got {_seen(response)}")
    _require_media(response, mediatype.CSRATTRS)
    return _seen(response)


@_check("csrattrs.decode", "RFC 7030 4.5.2")
async def _csrattrs_decode(s: Suite) -> str:
    response = await s.csrattrs()
    if response.status != 200:
        raise CheckSkipped(f"no CSR attributes ({response.status})")
    if not response.body.strip():
        return "empty body (no attributes)"
    try:
        attrs = csrattrs.decode_csrattrs(_decode_b64(response, "csrattrs"))
    except DecodeError as exc:
        raise CheckFailed(f"not a CsrAttrs SEQUENCE: {exc}") from None
    oids = [e.oid for e in attrs.entries]
    return f"{len(oids)} entries: {', '.join(oids)[:100]}"


@_check("enroll.response", "RFC 7030 4.2.3")
async def _enroll_response(s: Suite) -> str:
    s.need_credentials()
    response = (await s.enrollment()).response
    # 4.2.3: "HTTP 200 response code with a content-type of
    # application/pkcs7-mime" ... "an smime-type parameter certs-only".
    if response.status != 200:
        raise CheckFailed(f"expected 200, got {_seen(response)}")
    _require_media(response, mediatype.CERTS_ONLY)
    ctype = _header(response, "content-type") or ""
    note = "" if "certs-only" in ctype.lower() else " (smime-type parameter missing)"
    return _seen(response) + note


@_check("enroll.issued", "RFC 7030 4.2.3")
async def _enroll_issued(s: Suite) -> str:
    s.need_credentials()
    enrolled = await s.enrollment()
    # 4.2.3: "A successful response MUST be a certs-only CMC Simple PKI
    # Response ... containing only the certificate that was issued."
    cert = s.issued(enrolled.response, enrolled.key, "simpleenroll", only=True)
    if cert.subject != enrolled.subject:
        return f"issued, subject changed by the CA to {cert.subject.rfc4514_string()[:60]}"
    return f"issued serial {cert.serial_number:x}, subject as requested"


async def _enroll_variant(s: Suite, tag: str, what: str, **options: object) -> RawResponseReceived:
    s.need_credentials()
    key = ec.generate_private_key(ec.SECP256R1())
    response = await s.enroll(key, _subject(tag), **options)  # type: ignore[arg-type]  # a check's table row of enroll keywords
    # RFC 8951 3.1: receivers SHOULD tolerate whitespace; every layout of
    # the same base64 must enroll.
    s.issued(response, key, what)
    return response


@_check("base64.request-wrapped", "RFC 8951 3.1")
async def _b64_wrapped(s: Suite) -> str:
    await _enroll_variant(s, "wrapped", "64-column base64 request", policy=transfer.WRAP_64)
    return "64-column request body enrolled"


@_check("base64.request-single-line", "RFC 8951 3.1")
async def _b64_single(s: Suite) -> str:
    s.single_line_response = await _enroll_variant(
        s, "single", "single-line base64 request", policy=transfer.SINGLE_LINE)
    return "single-line request body enrolled"


@_check("base64.request-no-newline", "RFC 8951 3.1")
async def _b64_no_newline(s: Suite) -> str:
    await _enroll_variant(s, "nonl", "single line without newline (curl --data)",
                          policy=transfer.SINGLE_LINE, newline=False)
    return "single line without a final newline enrolled"


@_check("base64.request-no-cte", "RFC 8951 3")
async def _b64_no_cte(s: Suite) -> str:
    # RFC 8951 3: Content-Transfer-Encoding "MUST be ignored" by receivers,
    # so leaving it out changes nothing.
    await _enroll_variant(s, "nocte", "request without Content-Transfer-Encoding", cte=False)
    return "request without Content-Transfer-Encoding enrolled"


@_check("base64.response-single-line", "RFC 8951 3.1")
async def _b64_response(s: Suite) -> str:
    # Clients reading base64 without whitespace tolerance (strongSwan) need
    # one unbroken line: wrap only for clients that wrapped their request.
    seen: list[str] = []
    response = await s.cacerts()
    if response.status == 200:
        if transfer.body_is_wrapped(response.body):
            raise CheckFailed("/cacerts response base64 is wrapped into lines")
        seen.append("/cacerts")
    single = s.single_line_response
    if single is None and s.has_credentials:
        key = ec.generate_private_key(ec.SECP256R1())
        single = await s.enroll(key, _subject("single"), policy=transfer.SINGLE_LINE)
    if single is not None and single.status == 200:
        if transfer.body_is_wrapped(single.body):
            raise CheckFailed("response to a single-line enrollment request is wrapped into lines")
        seen.append("/simpleenroll")
    if not seen:
        raise CheckSkipped("no successful response to look at")
    return f"single-line base64 from {' and '.join(seen)}"


@_check("auth.challenge", "RFC 7030 3.2.3")
async def _auth_challenge(s: Suite) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    async with s.client(credentials=False, anonymous=True) as client:
        response = await s.raw(client, "POST", s.path("simpleenroll"),
                               s.csr_body(key, _subject("noauth")), content_type=PKCS10_TYPE)
    if response.status != 401:
        raise CheckFailed(f"enrollment without credentials answered {_seen(response)}, expected 401")
    values = [v for k, v in response.headers if k.lower() == "www-authenticate"]
    if not values:
        raise CheckFailed("401 without WWW-Authenticate (RFC 7235 3.1: MUST send one)")
    try:
        schemes = [c.scheme for c in auth.parse_challenges(values)]
    except RemoteProtocolError as exc:
        raise CheckFailed(f"malformed WWW-Authenticate: {exc}") from None
    if not {"basic", "digest"} & set(schemes):
        raise CheckFailed(f"challenges {schemes} offer neither Basic nor Digest")
    if len(response.body) > MAX_CHALLENGE_BODY:
        raise CheckFailed(f"401 body of {len(response.body)} bytes (clients fail on long 401 bodies)")
    return f"401 offering {', '.join(schemes)}, body {len(response.body)} bytes"


@_check("labels.labelled", "RFC 7030 3.2.2")
async def _labels_labelled(s: Suite) -> str:
    label = s.options.label
    if not label:
        raise CheckSkipped("no --label given")
    async with s.client(credentials=False) as client:
        response = await s.raw(client, "GET", s.path("cacerts", label))
    if response.status != 200:
        raise CheckFailed(f"/{label}/cacerts answered {_seen(response)}")
    _certs(response, f"/{label}/cacerts")
    if not (s.has_credentials or s.options.client_chain):
        return f"/{label}/cacerts served (no credentials to enroll)"
    key = ec.generate_private_key(ec.SECP256R1())
    enrolled = await s.enroll(key, _subject("label"), label=label)
    s.issued(enrolled, key, f"/{label}/simpleenroll")
    return f"/{label}/cacerts and /{label}/simpleenroll served"


async def _status_of(s: Suite, method: str, target: str, body: bytes = b"",
                     content_type: str | None = None) -> RawResponseReceived:
    async with s.client() as client:
        return await s.raw(client, method, target, body, content_type=content_type)


@_check("labels.op-name-label", "RFC 7030 3.2.2")
async def _labels_op_name(s: Suite) -> str:
    # 3.2.2: a label must not be an operation name; such a path names
    # nothing the server offers.
    target = s.path("cacerts", "simpleenroll")
    response = await _status_of(s, "GET", target)
    if response.status != 404:
        raise CheckFailed(f"GET {target} answered {_seen(response)}, expected 404")
    return f"GET {target}: 404"


@_check("labels.unknown-op", "RFC 7030 3.2.2")
async def _labels_unknown(s: Suite) -> str:
    target = s.path("conformance-no-such-operation")
    response = await _status_of(s, "GET", target)
    if response.status != 404:
        raise CheckFailed(f"GET {target} answered {_seen(response)}, expected 404")
    return f"GET {target}: 404"


@_check("labels.wrong-method", "RFC 7231 6.5.5")
async def _labels_method(s: Suite) -> str:
    # 7030 3.2.2 fixes GET for cacerts/csrattrs and POST for the others;
    # RFC 7231 6.5.5: 405 "MUST generate an Allow header field".
    seen = []
    for method, op in (("GET", "simpleenroll"), ("POST", "cacerts")):
        response = await _status_of(s, method, s.path(op), b"", PKCS10_TYPE if method == "POST" else None)
        if response.status != 405:
            raise CheckFailed(f"{method} /{op} answered {_seen(response)}, expected 405")
        allow = _header(response, "allow")
        seen.append(f"{method} /{op}: 405" + (f" Allow: {allow}" if allow else " (no Allow header)"))
    return "; ".join(seen)


def _key_check(kind: str) -> Callable[[Suite], Awaitable[str]]:
    async def run(s: Suite) -> str:
        s.need_credentials()
        key: PrivateKey
        if kind == "p256":
            key = ec.generate_private_key(ec.SECP256R1())
        elif kind == "p384":
            key = ec.generate_private_key(ec.SECP384R1())
        elif kind == "rsa2048":
            key = rsa.generate_private_key(65537, 2048)
        else:
            key = ed25519.Ed25519PrivateKey.generate()
        response = await s.enroll(key, _subject(kind))
        # A CA may refuse a key type by policy: a clean 4xx with a reason
        # (4.2.3: "a suitable 4xx or 5xx"); a crash (5xx) or a hang is not.
        if 400 <= response.status < 500 and response.status not in _NOT_SERVED:
            baseline = (await s.enrollment()).response
            if baseline.status != 200:
                raise CheckFailed(f"{_seen(response)}, and a P-256 enrollment fails too "
                                  f"({_seen(baseline)})")
            return f"refused by policy: {_seen(response)}"
        cert = s.issued(response, key, f"{kind} enrollment")
        return f"issued serial {cert.serial_number:x}"

    return run


for _kind in ("p256", "p384", "rsa2048", "ed25519"):
    _check(f"keys.{_kind}", "RFC 7030 4.2.1")(_key_check(_kind))


def _sans(cert: x509.Certificate) -> list[x509.GeneralName]:
    try:
        return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


@_check("reenroll.renew", "RFC 7030 4.2.2")
async def _reenroll_renew(s: Suite) -> str:
    cert, key = await s.identity()
    # 4.2.2: the client authenticates with the certificate being renewed;
    # "the Subject field and SubjectAltName extension MUST be identical".
    async with s.client(preemptive=False, identity=(cert, key)) as client:
        response = await s.enroll(key, cert.subject, op="simplereenroll", client=client,
                                  subject_alt_names=_sans(cert))
    renewed = s.issued(response, key, "simplereenroll")
    if renewed.subject != cert.subject:
        raise CheckFailed(f"renewed certificate has subject {renewed.subject.rfc4514_string()[:60]}")
    return f"renewed: serial {renewed.serial_number:x}"


@_check("reenroll.subject-mismatch", "RFC 7030 4.2.2")
async def _reenroll_mismatch(s: Suite) -> str:
    cert, key = await s.identity()
    other = _subject("other")
    async with s.client(preemptive=False, identity=(cert, key)) as client:
        response = await s.enroll(key, other, op="simplereenroll", client=client,
                                  subject_alt_names=_sans(cert))
    if response.status == 200:
        raise CheckFailed("renewal with a different subject was issued")
    if not 400 <= response.status < 500:
        raise CheckFailed(f"expected a 4xx refusal, got {_seen(response)}")
    return f"refused: {_seen(response)}"


@_check("pop.linked", "RFC 7030 3.5")
async def _pop_linked(s: Suite) -> str:
    s.need_credentials()
    if not s.link_required:
        raise CheckSkipped("csrattrs does not list challengePassword (linking not required)")
    key = ec.generate_private_key(ec.SECP256R1())
    response = await s.enroll(key, _subject("linked"), link=True)
    s.issued(response, key, "PoP-linked enrollment")
    return "CSR linked to the TLS channel binding enrolled"


@_check("pop.wrong-binding", "RFC 7030 3.5")
async def _pop_wrong(s: Suite) -> str:
    s.need_credentials()
    key = ec.generate_private_key(ec.SECP256R1())
    # 3.5: "If tls-unique information is included by the client, the server
    # MUST verify it" (the challengePassword's presence means it is).
    wrong = base64.b64encode(secrets.token_bytes(32)).decode("ascii")
    response = await s.enroll(key, _subject("wrongpop"), challenge=wrong)
    if response.status == 200:
        raise CheckFailed("issued a CSR whose challengePassword is not the channel binding")
    if response.status in _NOT_SERVED:
        raise CheckFailed(f"{_seen(response)}: enrollment not served, PoP verification not reached")
    if not 400 <= response.status < 500:
        raise CheckFailed(f"expected a 4xx refusal, got {_seen(response)}")
    return f"refused: {_seen(response)}"


async def _serverkeygen(s: Suite) -> tuple[RawResponseReceived, ec.EllipticCurvePrivateKey]:
    if s._serverkeygen is None:
        s.need_credentials()
        key = ec.generate_private_key(ec.SECP256R1())
        response = await s.enroll(key, _subject("keygen"), op="serverkeygen")
        s._serverkeygen = (response, key)
    return s._serverkeygen


@_check("serverkeygen.response", "RFC 7030 4.4.2")
async def _keygen_response(s: Suite) -> str:
    response, _ = await _serverkeygen(s)
    # 7030 4.3.2 / 4.4: "an HTTP 404 or 501 ... this service is not implemented".
    if response.status in (404, 501):
        raise CheckSkipped(f"not implemented ({response.status})")
    if response.status != 200:
        raise CheckFailed(f"expected 200, got {_seen(response)}")
    _require_media(response, mediatype.MULTIPART_MIXED)
    try:
        parts = multipart.decode_serverkeygen_response(
            response.body, _header(response, "content-type") or "")
    except DecodeError as exc:
        raise CheckFailed(f"multipart body: {exc}") from None
    return f"200 multipart/mixed, key part {mediatype.format_media_type(parts.key_media_type)}"


@_check("serverkeygen.key-match", "RFC 7030 4.4.2")
async def _keygen_match(s: Suite) -> str:
    response, _ = await _serverkeygen(s)
    if response.status != 200:
        raise CheckSkipped(f"no server-generated key ({response.status})")
    try:
        parts = multipart.decode_serverkeygen_response(
            response.body, _header(response, "content-type") or "")
        certs = pkcs7.decode_certs_only(parts.certs_only_der)
    except DecodeError as exc:
        raise CheckFailed(f"undecodable response: {exc}") from None
    if parts.key_encrypted:
        raise CheckFailed("key part encrypted although no encryption was asked for (4.4.1)")
    try:
        private = serverkey.decode_private_key(parts.key_der)
    except DecodeError as exc:
        raise CheckFailed(f"key part is not PKCS#8: {exc}") from None
    try:
        cert = pkcs7.find_issued_certificate(certs, private.public_key())
    except DecodeError:
        raise CheckFailed("no certificate in the response holds the generated key") from None
    return f"key matches certificate serial {cert.serial_number:x}"


@_check("fullcmc.response", "RFC 7030 4.3.2")
async def _fullcmc(s: Suite) -> str:
    s.need_credentials()
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _subject("cmc")

    def body(conn: ClientConnection) -> bytes:
        password = conn.pop_challenge_password if s.link_required else None
        csr = pkcs10.build_csr(key, subject, challenge_password=password)
        return transfer.encode_base64(cmc.build_full_pki_request(csr, key), transfer.WRAP_64)

    async with s.client() as client:
        response = await s.raw(client, "POST", s.path("fullcmc"), body, content_type=CMC_REQUEST_TYPE)
    if response.status in (404, 501):
        raise CheckSkipped(f"not implemented ({response.status})")
    if response.status != 200:
        raise CheckFailed(f"expected 200, got {_seen(response)}")
    if _media_is(response, mediatype.CMC_RESPONSE) and "cmc-response" in (
        _header(response, "content-type") or ""
    ).lower():
        try:
            decoded = cmc.decode_full_pki_response(_decode_b64(response, "fullcmc"))
        except DecodeError as exc:
            raise CheckFailed(f"not a Full PKI Response: {exc}") from None
        if decoded.status is not cmc.CMCStatus.SUCCESS:
            raise CheckFailed(f"200 with CMC status {decoded.status.name}")
        try:
            pkcs7.find_issued_certificate(decoded.certificates, key.public_key())
        except DecodeError:
            raise CheckFailed("CMC success without a certificate for our key") from None
        return "200 CMC-response, status success"
    s.issued(response, key, "fullcmc")  # 4.3.2 allows a Simple PKI Response
    return "200 certs-only Simple PKI Response"


async def _rejected(s: Suite, what: str, body: bytes) -> str:
    s.need_credentials()
    async with s.client() as client:
        response = await s.raw(client, "POST", s.path("simpleenroll"), body, content_type=PKCS10_TYPE)
    # 7030 4.2.3: "The server MUST answer with a suitable 4xx or 5xx HTTP
    # error code when a problem occurs": a client error is a 4xx.
    if not 400 <= response.status < 500 or response.status in _NOT_SERVED:
        raise CheckFailed(f"{what} answered {_seen(response)}, expected a 4xx refusal "
                          "from a served /simpleenroll")
    await s.alive()
    return f"{_seen(response)}; /cacerts still served"


@_check("errors.bad-signature", "RFC 7030 3.4")
async def _bad_signature(s: Suite) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    der = bytearray(pkcs10.build_csr(key, _subject("badsig")))
    der[-1] ^= 0x01  # the last byte of the signature's s value
    return await _rejected(s, "CSR with a bad signature", transfer.encode_base64(bytes(der), transfer.WRAP_64))


@_check("errors.garbage-der", "RFC 7030 4.2.3")
async def _garbage_der(s: Suite) -> str:
    der = b"\x30\x82\x01\x00" + secrets.token_bytes(40)  # a truncated SEQUENCE
    return await _rejected(s, "base64 of garbage DER", transfer.encode_base64(der, transfer.WRAP_64))


@_check("errors.garbage-base64", "RFC 8951 3.1")
async def _garbage_b64(s: Suite) -> str:
    return await _rejected(s, "a body that is not base64", b"this is %% not base64 !!\n")


@_check("errors.oversized", "RFC 7231 6.5.11")
async def _oversized(s: Suite) -> str:
    s.need_credentials()
    body = b"A" * OVERSIZED_BODY
    try:
        async with s.client() as client:
            response = await s.raw(client, "POST", s.path("simpleenroll"), body, content_type=PKCS10_TYPE)
    except TimeoutError:
        raise CheckFailed(f"no answer to a {OVERSIZED_BODY} byte body within {s.options.timeout} s") from None
    except (OSError, RemoteProtocolError) as exc:
        # Closing on an oversized body is a clean refusal.
        await s.alive()
        return f"connection closed ({type(exc).__name__}); /cacerts still served"
    if response.status == 413:
        await s.alive()
        return "413; /cacerts still served"
    if 400 <= response.status < 500 and response.status not in _NOT_SERVED:
        await s.alive()
        return f"{_seen(response)} (413 is the precise answer); /cacerts still served"
    raise CheckFailed(f"{OVERSIZED_BODY} byte body answered {_seen(response)}")


@_check("http.keep-alive", "RFC 7030 3.2")
async def _keep_alive(s: Suite) -> str:
    # 3.2: "EST does not require or preclude persistent HTTP connections":
    # every request must be answered; reusing the connection is noted.
    async with s.client(credentials=False) as client:
        for i in range(KEEPALIVE_REQUESTS):
            response = await s.raw(client, "GET", s.path("cacerts"))
            if response.status != 200:
                raise CheckFailed(f"request {i + 1} answered {_seen(response)}")
            _certs(response, f"/cacerts #{i + 1}")
        opened = client.connections_opened
    if opened == 1:
        return f"{KEEPALIVE_REQUESTS} requests on one connection"
    return f"{KEEPALIVE_REQUESTS} requests answered over {opened} connections (server closes)"


@_check("concurrency.parallel-enroll", "RFC 7030 4.2.1")
async def _parallel(s: Suite) -> str:
    s.need_credentials()
    errors: list[str] = []

    async def one(i: int) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        try:
            response = await s.enroll(key, _subject(f"par{i}"))
            s.issued(response, key, f"enrollment {i + 1}")
        except CheckFailed as exc:
            errors.append(str(exc))
        except (OSError, RemoteProtocolError) as exc:
            errors.append(f"enrollment {i + 1}: {type(exc).__name__}: {exc}")

    async with trio.open_nursery() as nursery:
        for i in range(PARALLEL_CLIENTS):
            nursery.start_soon(one, i)
    if errors:
        raise CheckFailed(f"{len(errors)}/{PARALLEL_CLIENTS} failed: {errors[0]}")
    return f"{PARALLEL_CLIENTS} parallel enrollments issued"


@_check("http.content-length", "RFC 7230 3.3.2")
async def _content_length(s: Suite) -> str:
    # 7230 3.3.2: a server "SHOULD send a Content-Length header field when
    # the payload body size is known"; strongSwan's client needs it.
    checked = 0
    for what, response in s.responses:
        if response.status in (204, 304) or response.status < 200:
            continue
        checked += 1
        if _header(response, "content-length") is None:
            how = "chunked" if _header(response, "transfer-encoding") else "read until close"
            raise CheckFailed(f"no Content-Length on {response.status} to {what} ({how})")
    if not checked:
        raise CheckSkipped("no responses seen")
    return f"present on all {checked} responses seen"


#: Check groups, in order (what ``--only`` accepts).
GROUPS: tuple[str, ...] = tuple(dict.fromkeys(c.group for c in CHECKS))


async def run_checks(
    options: SuiteOptions, report: Callable[[CheckResult], None] | None = None,
) -> list[CheckResult]:
    """Run the selected checks against the server, in order.

    Args:
        options: the server and credentials; ``options.only`` selects groups.
        report: called with each result as soon as it is known.

    Returns:
        One :class:`CheckResult` per check run.
    """
    suite = Suite(options)
    await suite.prepare()
    results: list[CheckResult] = []
    for check in CHECKS:
        if options.only and check.group not in options.only:
            continue
        # Each check's own deadline on top of the per-request ones: a
        # server that trickles bytes must not stall the whole suite.
        limit = options.timeout * 4 + 10
        detail = f"no verdict within {limit:.0f} s"
        verdict = Result.FAIL
        with trio.move_on_after(limit):
            try:
                detail = await check.run(suite)
                verdict = Result.PASS
            except CheckFailed as exc:
                detail = str(exc)
            except CheckSkipped as exc:
                verdict, detail = Result.SKIP, str(exc)
            except TimeoutError as exc:
                detail = f"timed out: {exc}"
            except (OSError, RemoteProtocolError, LocalProtocolError) as exc:
                detail = f"{type(exc).__name__}: {exc}"
        result = CheckResult(check.id, check.section, verdict, " ".join(detail.split())[:300])
        results.append(result)
        if report is not None:
            report(result)
    return results
