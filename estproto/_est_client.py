"""The client's EST layer: request events to HTTP requests, responses to results.

Like the server's EST layer it knows RFC 7030 and nothing of sockets, h11 or
OpenSSL, so a host with its own HTTP client can use :class:`ESTClientProtocol`
directly: :meth:`~ESTClientProtocol.build_request` gives method, target,
headers and body; :meth:`~ESTClientProtocol.parse_response` turns status,
headers and body into one result event.

What requests look like, so that every server accepts them (EST-NOTES):
base64 wrapped at 64 columns and ending in a newline (libest rejects a body
with no newline at all), exact lowercase media types, and
``Content-Transfer-Encoding: base64`` for peers that still look for it
(RFC 8951 section 3 says receivers MUST ignore it).

What responses may look like: by default the parser is lenient about known
server quirks (libest's stray NUL after csrattrs, PKCS#1 keys labelled
application/pkcs8, a missing smime-type), and strict about anything that
changes meaning: a certificate that is not for our key, a 202 without
Retry-After, a media type of the wrong kind.
"""

from __future__ import annotations

import datetime
import email.utils
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from . import auth
from ._errors import DecodeError, LocalProtocolError, RemoteProtocolError
from ._events import (
    AuthenticationChallenged,
    CACertsReceived,
    CertificateIssued,
    ClientRequest,
    ClientResultEvent,
    CSRAttrsReceived,
    EnrollmentPending,
    ErrorReceived,
    FullCMC,
    FullCMCReceived,
    GetCACerts,
    GetCSRAttrs,
    RawRequest,
    RawResponseReceived,
    Redirected,
    ServerKeygen,
    ServerKeyReceived,
    SimpleEnroll,
    SimpleReenroll,
)
from ._paths import Operation, format_est_path
from .codecs import cmc, csrattrs, mediatype, multipart, pkcs7, pkcs10, serverkey, transfer
from .codecs.mediatype import MediaType

__all__ = ["ESTClientProtocol", "HTTPRequestParts", "USER_AGENT"]

#: Sent as User-Agent; servers use it for quirks (and logs).
USER_AGENT = "estproto/0.1"

#: Longest piece of an error body quoted in :class:`ErrorReceived.reason`.
MAX_REASON_LENGTH = 300

HTTPRequestParts = tuple[str, str, tuple[tuple[str, str], ...], bytes]

_POST_MEDIA_TYPES = {
    Operation.SIMPLEENROLL: mediatype.PKCS10,
    Operation.SIMPLEREENROLL: mediatype.PKCS10,
    Operation.SERVERKEYGEN: mediatype.PKCS10,
    Operation.FULLCMC: mediatype.CMC_REQUEST,
}


def _header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _reason_text(body: bytes) -> str:
    text = body[: MAX_REASON_LENGTH * 4].decode("utf-8", "replace").strip()
    text = " ".join(text.split())
    return text[:MAX_REASON_LENGTH]


def parse_retry_after(value: str | None) -> int | datetime.datetime:
    """Parse a Retry-After value: delta-seconds or an HTTP-date (RFC 7231 7.1.3).

    Raises:
        RemoteProtocolError: missing or malformed (7030 4.2.3: "The server
            MUST include a Retry-After header").
    """
    if value is None:
        raise RemoteProtocolError("202 without Retry-After (RFC 7030 4.2.3)")
    value = value.strip()
    if value.isdigit() and len(value) <= 10:
        return int(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        raise RemoteProtocolError(f"malformed Retry-After {value[:40]!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when


class ESTClientProtocol:
    """Builds EST requests and interprets EST responses (stateless).

    Args:
        lenient: tolerate known server quirks in responses (see module doc).
    """

    def __init__(self, *, lenient: bool = True) -> None:
        self.lenient = lenient

    # -- requests ----------------------------------------------------------

    def build_request(self, request: ClientRequest) -> HTTPRequestParts:
        """Method, target, headers and body for *request* (Host and
        Content-Length are the HTTP layer's)."""
        headers: list[tuple[str, str]] = [("User-Agent", USER_AGENT)]
        if isinstance(request, RawRequest):
            headers += request.extra_headers
            if request.authorization is not None:
                headers.append(("Authorization", request.authorization))
            return request.method, request.target, tuple(headers), request.body
        operation = request.operation
        target = format_est_path(operation, request.label)
        body = b""
        if operation.method == "POST":
            der = request.request if isinstance(request, FullCMC) else _csr_of(request)
            if request.raw_body is not None:
                body = request.raw_body
            else:
                policy = transfer.WRAP_64 if request.wrap_base64 else transfer.SINGLE_LINE
                body = transfer.encode_base64(der, policy)
            content_type = request.content_type or mediatype.format_media_type(
                _POST_MEDIA_TYPES[operation]
            )
            headers += [("Content-Type", content_type), ("Content-Transfer-Encoding", "base64")]
        elif request.raw_body is not None:
            body = request.raw_body
        if request.authorization is not None:
            headers.append(("Authorization", request.authorization))
        headers += request.extra_headers
        return operation.method, target, tuple(headers), body

    # -- responses ---------------------------------------------------------

    def parse_response(
        self,
        request: ClientRequest,
        status: int,
        headers: Sequence[tuple[str, str]],
        body: bytes,
    ) -> ClientResultEvent:
        """Interpret the response to *request*.

        Returns:
            One result event. 401 yields :class:`AuthenticationChallenged`
            with ``retry=None``: answering is the connection's decision.

        Raises:
            RemoteProtocolError: (a :class:`DecodeError` for bodies) the
                response breaks RFC 7030: undecodable body, wrong media type,
                a certificate not matching our key, 202 without Retry-After.
        """
        if isinstance(request, RawRequest):
            return RawResponseReceived(status, tuple(headers), body)
        content_type = _header(headers, "content-type")
        operation = request.operation
        if status == 200:
            return self._success(request, content_type, body)
        if status == 202 and operation not in (Operation.CACERTS, Operation.CSRATTRS):
            return EnrollmentPending(
                parse_retry_after(_header(headers, "retry-after")), _reason_text(body)
            )
        if operation is Operation.CSRATTRS and status in (204, 404):
            # 4.5.2: "If locally configured policy for an authenticated EST
            # client indicates a CSR Attributes Response is not needed, the
            # server MAY reply with 204 ... or 404".
            return CSRAttrsReceived(None)
        if status == 401:
            values = [v for k, v in headers if k.lower() == "www-authenticate"]
            challenges = tuple(auth.parse_challenges(values)) if values else ()
            return AuthenticationChallenged(challenges)
        if 300 <= status < 400:
            location = _header(headers, "location")
            if location:
                return Redirected(status, location)
        if (
            operation is Operation.FULLCMC
            and status >= 400
            and content_type is not None
            and self._is(content_type, mediatype.PKCS7_MIME)
        ):
            # 4.3.2: "A CMC response ... MUST be included in the response
            # data for any CMC error response."
            der = self._decode_body(body)
            return FullCMCReceived(cmc.decode_full_pki_response(der, lenient=self.lenient), status)
        return ErrorReceived(status, _reason_text(body), content_type, body)

    @staticmethod
    def _is(content_type: str, expected: MediaType) -> bool:
        return mediatype.matches(mediatype.parse_media_type(content_type), expected)

    def _expect(self, content_type: str | None, expected: MediaType) -> None:
        if content_type is None:
            if self.lenient:
                return
            raise DecodeError("response has no Content-Type")
        if not self._is(content_type, expected):
            raise DecodeError(
                f"response Content-Type {content_type[:80]!r} is not "
                f"{mediatype.format_media_type(expected)}"
            )

    def _decode_body(self, body: bytes) -> bytes:
        return transfer.decode_base64(body, lenient=self.lenient)

    def _success(
        self, request: ClientRequest, content_type: str | None, body: bytes
    ) -> ClientResultEvent:
        if isinstance(request, GetCACerts):
            self._expect(content_type, mediatype.PKCS7_MIME)
            return CACertsReceived(pkcs7.decode_certs_only(self._decode_body(body)))
        if isinstance(request, GetCSRAttrs):
            self._expect(content_type, mediatype.CSRATTRS)
            if not body.strip(b" \t\r\n\x00"):
                return CSRAttrsReceived(csrattrs.CsrAttributes(()))
            return CSRAttrsReceived(csrattrs.decode_csrattrs(self._decode_body(body)))
        if isinstance(request, (SimpleEnroll, SimpleReenroll)):
            self._expect(content_type, mediatype.CERTS_ONLY)
            certs = pkcs7.decode_certs_only(self._decode_body(body))
            return CertificateIssued(self._ours(request.csr, certs), certs)
        if isinstance(request, ServerKeygen):
            return self._server_key(request, content_type, body)
        if isinstance(request, FullCMC):
            if content_type is not None and self._is(content_type, mediatype.CERTS_ONLY) and (
                mediatype.parse_media_type(content_type).smime_type == "certs-only"
            ):
                # 4.3.2 allows a Simple PKI Response here too.
                certs = pkcs7.decode_certs_only(self._decode_body(body))
                return CertificateIssued(certs[0], certs)
            self._expect(content_type, mediatype.CMC_RESPONSE)
            der = self._decode_body(body)
            return FullCMCReceived(cmc.decode_full_pki_response(der, lenient=self.lenient))
        raise RemoteProtocolError(f"unexpected 200 for {request.operation.value}")

    @staticmethod
    def _ours(csr_der: bytes, certs: Sequence[x509.Certificate]) -> x509.Certificate:
        # Never by position: encoders sort certificates (EST-NOTES).
        try:
            csr = pkcs10.decode_csr(csr_der, verify=False)
        except DecodeError:
            # A deliberately broken CSR (conformance hooks): fall back to the
            # only certificate, if there is exactly one.
            if len(certs) == 1:
                return certs[0]
            raise
        return pkcs7.find_issued_certificate(certs, csr.public_key_der)

    def _server_key(
        self, request: ServerKeygen, content_type: str | None, body: bytes
    ) -> ServerKeyReceived:
        if content_type is None:
            raise DecodeError("serverkeygen response has no Content-Type")
        parts = multipart.decode_serverkeygen_response(body, content_type, lenient=self.lenient)
        certs = pkcs7.decode_certs_only(parts.certs_only_der)
        certificate = certs[0] if len(certs) == 1 else _leaf(certs)
        if parts.key_media_type.essence == "application/pkcs8":
            key = serverkey.decode_private_key(parts.key_der, lenient=self.lenient)
            _check_key_matches(key, certificate)
            return ServerKeyReceived(certificate, key)
        private_key = None
        if request.kek is not None or request.decryption_key is not None:
            opened = serverkey.decrypt_key_package(
                parts.key_der,
                kek=request.kek,
                key_identifier=request.kek_id,
                recipient_private_key=_decryption_key(request),
            )
            private_key = opened.private_key
            _check_key_matches(private_key, certificate)
        return ServerKeyReceived(certificate, private_key, parts.key_der)


def _leaf(certs: Sequence[x509.Certificate]) -> x509.Certificate:
    for cert in certs:
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            return cert
        if not constraints.ca:
            return cert
    raise DecodeError("serverkeygen response holds no end-entity certificate")


def _csr_of(request: ClientRequest) -> bytes:
    # Every POST but /fullcmc carries a CSR (SimpleEnroll, SimpleReenroll,
    # ServerKeygen); the operation table guarantees it.
    csr = getattr(request, "csr", None)
    if not isinstance(csr, bytes):
        raise LocalProtocolError(f"{type(request).__name__} carries no CSR")
    return csr


def _decryption_key(request: ServerKeygen) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None:
    # ServerKeygen refuses any other key type when it is made.
    key = request.decryption_key
    return key if isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)) else None


def _check_key_matches(key: PrivateKeyTypes, certificate: x509.Certificate) -> None:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        # The certificate came from the server: its key may be off-curve or
        # of an unknown type, which cryptography reports as ValueError or
        # UnsupportedAlgorithm.
        cert_spki = certificate.public_key().public_bytes(serialization.Encoding.DER, fmt)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise DecodeError(f"serverkeygen: unusable certificate public key: {exc}") from None
    ours = key.public_key().public_bytes(serialization.Encoding.DER, fmt)
    if ours != cert_spki:
        raise DecodeError("serverkeygen: the private key does not match the certificate")
