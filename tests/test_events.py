"""Every public event refuses a bad value when it is made (as h11's do).

One valid instance of every public event class is built below; each of its
fields in turn is then given a value of the wrong type, and value rules
(labels, statuses, tokens) get wrong values. A new event class without an
example here fails :func:`test_every_public_event_has_an_example`.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any, Callable

import pytest

import estproto
import pki
from conn_helpers import get_pki
from estproto import LocalProtocolError
from estproto._est_server import Reply, RequestRejected
from estproto.auth import BasicCredentials
from estproto.codecs import cmc, csrattrs, pkcs10

KEY = pki.make_key("p256")
CSR_DER = pkcs10.build_csr(KEY, pki.name("device"))
CSR = pkcs10.decode_csr(CSR_DER)
CERT = get_pki().ca
FACTS = estproto.ConnectionFacts()
COMMON: dict[str, Any] = {"label": "", "credentials": BasicCredentials("u", "p"), "facts": FACTS}
CMC_REQUEST_DER = cmc.build_full_pki_request(CSR_DER, KEY, transaction_id=1)
CMC_REQUEST = cmc.decode_full_pki_request(CMC_REQUEST_DER)
CMC_RESPONSE = cmc.decode_full_pki_response(cmc.build_full_pki_response_success([CERT]))
ATTRS = csrattrs.CsrAttributes(())
WHEN = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)

#: A valid instance of every public event (and ConnectionFacts).
EXAMPLES: dict[type, Callable[[], object]] = {
    estproto.ConnectionFacts: lambda: estproto.ConnectionFacts(client_chain=(CERT,)),
    estproto.CACertsRequest: lambda: estproto.CACertsRequest(**COMMON),
    estproto.CSRAttrsRequest: lambda: estproto.CSRAttrsRequest(**COMMON),
    estproto.SimpleEnrollRequest: lambda: estproto.SimpleEnrollRequest(csr=CSR, **COMMON),
    estproto.SimpleReenrollRequest: lambda: estproto.SimpleReenrollRequest(csr=CSR, **COMMON),
    estproto.ServerKeygenRequest: lambda: estproto.ServerKeygenRequest(csr=CSR, **COMMON),
    estproto.FullCMCRequest: lambda: estproto.FullCMCRequest(
        request=CMC_REQUEST, der=CMC_REQUEST_DER, **COMMON),
    estproto.CACertsResponse: lambda: estproto.CACertsResponse((CERT,)),
    estproto.CertificateResponse: lambda: estproto.CertificateResponse(CERT),
    estproto.ServerKeygenResponse: lambda: estproto.ServerKeygenResponse(CERT, private_key=KEY),
    estproto.CSRAttrsResponse: lambda: estproto.CSRAttrsResponse(ATTRS),
    estproto.FullCMCResponse: lambda: estproto.FullCMCResponse(b"\x30\x00"),
    estproto.RetryLater: lambda: estproto.RetryLater(60),
    estproto.AuthenticationRequired: lambda: estproto.AuthenticationRequired(('Basic realm="x"',)),
    estproto.ErrorResponse: lambda: estproto.ErrorResponse(400, "bad"),
    estproto.ConnectionClosed: lambda: estproto.ConnectionClosed(),
    estproto.ConnectionTerminated: lambda: estproto.ConnectionTerminated("timeout", 408),
    estproto.GetCACerts: lambda: estproto.GetCACerts(label="ca1", extra_headers=(("X-A", "1"),)),
    estproto.GetCSRAttrs: lambda: estproto.GetCSRAttrs(),
    estproto.SimpleEnroll: lambda: estproto.SimpleEnroll(csr=CSR_DER),
    estproto.SimpleReenroll: lambda: estproto.SimpleReenroll(csr=CSR_DER),
    estproto.ServerKeygen: lambda: estproto.ServerKeygen(csr=CSR_DER, kek=b"k" * 16),
    estproto.FullCMC: lambda: estproto.FullCMC(request=CMC_REQUEST_DER),
    estproto.RawRequest: lambda: estproto.RawRequest(method="GET", target="/x"),
    estproto.CACertsReceived: lambda: estproto.CACertsReceived((CERT,)),
    estproto.CertificateIssued: lambda: estproto.CertificateIssued(CERT, (CERT,)),
    estproto.EnrollmentPending: lambda: estproto.EnrollmentPending(WHEN),
    estproto.CSRAttrsReceived: lambda: estproto.CSRAttrsReceived(None),
    estproto.ServerKeyReceived: lambda: estproto.ServerKeyReceived(CERT, private_key=KEY),
    estproto.FullCMCReceived: lambda: estproto.FullCMCReceived(CMC_RESPONSE),
    estproto.AuthenticationChallenged: lambda: estproto.AuthenticationChallenged(
        (), estproto.GetCACerts()),
    estproto.Redirected: lambda: estproto.Redirected(301, "https://elsewhere/"),
    estproto.ErrorReceived: lambda: estproto.ErrorReceived(500, "oops"),
    estproto.RawResponseReceived: lambda: estproto.RawResponseReceived(200, (("a", "b"),), b""),
    RequestRejected: lambda: RequestRejected("GET", "/x", 404, "no", Reply(404)),
}

BASES = {estproto.ServerRequest, estproto.ServerResponse, estproto.ClientRequest,
         estproto.ClientResult, estproto.Event}


class Alien:
    """A value of no type any field accepts."""


def _public_event_classes() -> list[type]:
    names = [n for n in dir(estproto) if not n.startswith("_")]
    found = {getattr(estproto, n) for n in names}
    return sorted(
        (c for c in found if isinstance(c, type) and dataclasses.is_dataclass(c)
         and (issubclass(c, estproto.Event) or c is estproto.ConnectionFacts)),
        key=lambda c: c.__name__,
    )


def test_every_public_event_has_an_example() -> None:
    missing = [c.__name__ for c in _public_event_classes() if c not in EXAMPLES and c not in BASES]
    assert missing == []


@pytest.mark.parametrize("cls", list(EXAMPLES), ids=lambda c: c.__name__)
def test_the_example_is_valid_and_immutable(cls: type) -> None:
    event = EXAMPLES[cls]()
    assert type(event) is cls
    fields = dataclasses.fields(event)  # type: ignore[arg-type]
    if fields:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(event, fields[0].name, None)


CASES = [
    (cls, f.name) for cls in EXAMPLES
    for f in dataclasses.fields(cls)  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("cls", "name"), CASES, ids=[f"{c.__name__}.{n}" for c, n in CASES])
def test_a_field_of_the_wrong_type_is_refused(cls: type, name: str) -> None:
    event = EXAMPLES[cls]()
    with pytest.raises(LocalProtocolError, match=name):
        dataclasses.replace(event, **{name: Alien()})  # type: ignore[type-var]


@pytest.mark.parametrize("cls", sorted(BASES - {estproto.Event}, key=lambda c: c.__name__),
                         ids=lambda c: c.__name__)
def test_a_base_class_cannot_be_made(cls: type) -> None:
    kwargs = COMMON if cls is estproto.ServerRequest else {}
    with pytest.raises(LocalProtocolError, match="base class"):
        cls(**kwargs)


BAD_VALUES: list[tuple[str, Callable[[], object]]] = [
    ("label with a dot segment", lambda: estproto.GetCACerts(label="../bad")),
    ("label naming an operation", lambda: estproto.SimpleEnroll(csr=CSR_DER, label="cacerts")),
    ("label with a space", lambda: estproto.CACertsRequest(**{**COMMON, "label": "a b"})),
    ("bool as a status", lambda: estproto.ErrorResponse(True, "x")),  # type: ignore[arg-type]
    ("terminated with a 200", lambda: estproto.ConnectionTerminated("x", status=200)),
    ("terminated with 999", lambda: estproto.ConnectionTerminated("x", status=999)),
    ("empty method", lambda: estproto.RawRequest(method="", target="/")),
    ("method with a space", lambda: estproto.RawRequest(method="GE T", target="/")),
    ("empty target", lambda: estproto.RawRequest(method="GET", target="")),
    ("target with CRLF", lambda: estproto.RawRequest(method="GET", target="/a\r\nX: y")),
    ("header injection", lambda: estproto.GetCACerts(extra_headers=(("X-A", "1\r\nX-B: 2"),))),
    ("header name not a token", lambda: estproto.GetCACerts(extra_headers=(("X A", "1"),))),
    ("header pair of three", lambda: estproto.GetCACerts(extra_headers=(("a", "b", "c"),))),  # type: ignore[arg-type]
    ("authorization with CRLF", lambda: estproto.GetCACerts(authorization="Basic x\r\nY: z")),
    ("negative Retry-After", lambda: estproto.EnrollmentPending(-1)),
    ("naive Retry-After date", lambda: estproto.EnrollmentPending(datetime.datetime(2030, 1, 1))),
    ("redirect with a 200", lambda: estproto.Redirected(200, "/")),
    ("error received with 99", lambda: estproto.ErrorReceived(99, "x")),
    ("CMC received with a 302", lambda: estproto.FullCMCReceived(CMC_RESPONSE, 302)),
    ("raw response status 1000", lambda: estproto.RawResponseReceived(1000, (), b"")),
    ("empty CSR", lambda: estproto.SimpleEnroll(csr=b"")),
    ("no CA certificates", lambda: estproto.CACertsResponse(())),
    ("a list item of the wrong type", lambda: estproto.CACertsResponse([CERT, b"x"])),  # type: ignore[list-item]
]


@pytest.mark.parametrize(("what", "make"), BAD_VALUES, ids=[w for w, _ in BAD_VALUES])
def test_a_bad_value_is_refused(what: str, make: Callable[[], object]) -> None:
    with pytest.raises(LocalProtocolError):
        make()


def test_a_list_is_stored_as_a_tuple() -> None:
    certificates = [CERT]
    event = estproto.CACertsReceived(certificates)  # type: ignore[arg-type]
    assert event.certificates == (CERT,)
    certificates.append(CERT)
    assert event.certificates == (CERT,)  # the caller's list is not kept
    assert hash(estproto.GetCACerts(extra_headers=[("a", "b")])) is not None  # type: ignore[arg-type]


def test_raw_request_names_no_operation() -> None:
    # It used to inherit a wrong constant (CACERTS) from its base class.
    raw = estproto.RawRequest(method="POST", target="/.well-known/est/simpleenroll")
    with pytest.raises(LocalProtocolError, match="no EST operation"):
        raw.operation
    assert estproto.SimpleEnroll(csr=CSR_DER).operation is estproto.Operation.SIMPLEENROLL
