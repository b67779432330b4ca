"""A small black-box network fuzzer for any EST server, built on estproto's client.

It shows estproto embedded in a fuzzer: the client connection's conformance
hook, :class:`estproto.RawRequest`, sends any method, target, headers and
body over estproto's own TLS and HTTP layers, and the answer comes back
untouched as :class:`estproto.RawResponseReceived`. The codecs
(:mod:`estproto.codecs.pkcs10`, :mod:`~estproto.codecs.cmc`,
:mod:`~estproto.codecs.transfer`) build the valid requests that are then
broken, and also judge whether a mutated body could still be valid.

Each iteration sends one case, a valid request broken in one way, to one of
/simpleenroll, /simplereenroll, /serverkeygen, /fullcmc, /csrattrs, /cacerts:

* the DER of a valid CSR (``pkcs10.build_csr``) or Full PKI Request
  (``cmc.build_full_pki_request``) with bits flipped, truncated, or bytes
  appended;
* broken base64: characters outside the alphabet, missing, extra or
  misplaced ``=``, odd line breaks, NUL bytes;
* an odd Content-Type or Content-Transfer-Encoding (raw DER said to be
  "binary" included);
* the wrong method (GET for an enrollment, DELETE, an unknown token ...);
* odd paths: too many segments, dot segments, percent-encoding, a very
  long label, double or trailing slashes;
* an oversized header (one huge field, or too many fields) or body, or an
  empty body.

Every case goes over a new connection, so a reset is blamed on the case that
caused it. The sequence of cases is a function of ``--seed`` alone (each
case has its own ``random.Random(f"{seed}:{number}")`` and the CSR key is
derived from the seed); ECDSA signatures are randomized, so the signature
bytes differ between runs, not the choice of mutation or its position.

The oracle, kept conservative (a finding should be a bug, not a taste):

* ``server-error``: a 5xx answer. RFC 7030 4.2.3 lets a server reject with
  "a suitable 4xx or 5xx", but in HTTP (RFC 9110 15.5, 15.6) bad input is
  the client's fault, 4xx; a 5xx to it usually means an unhandled exception.
  Not counted: 501 ("a client interprets an HTTP 404 or 501 response to
  indicate that this service is not implemented", RFC 7030 4.3.2), 503
  (overload), and a 5xx to /fullcmc carrying an application/pkcs7-mime CMC
  response (4.3.2: the CMC status is the answer).
* ``accepted-invalid``: a 2xx to an enrollment operation (/simpleenroll,
  /simplereenroll, /serverkeygen, /fullcmc) whose body cannot hold a valid
  request. The body is read as leniently as any server might (RFC 8951
  whitespace, PEM, raw DER, and RFC 2045 6.8 "characters outside of the
  base64 alphabet are to be ignored"; trailing bytes after the DER are
  dropped) and then decoded with ``pkcs10.decode_csr`` (signature checked,
  except for /serverkeygen, whose CSR signature "MUST" be ignored, 4.4.1) or
  ``cmc.decode_full_pki_request``. Only when that raises is a 2xx a finding:
  a mutation that is still valid may be accepted. Path, method, header and
  media-type oddities never make a 2xx a finding on their own.
* ``hang``: no answer within ``--timeout`` seconds.
* ``no-http-response``: the connection was reset or closed, TLS failed, or
  what came back was not HTTP. Not counted for an oversized request (a head
  over 8 KiB or a body over 64 KiB): RFC 9110 15.5.14 lets a server close
  the connection on a request too large to read ("the server MAY close the
  connection"), which the client sees as a reset while still writing. Such a
  case is followed at once by the GET /cacerts check instead.
* ``unresponsive``: a plain GET /cacerts, checked every ``--check-every``
  cases and at the end, got no 200. Fuzzing stops there (the server is down).

Not findings: 401 and 403 (with ``--user``, Basic goes up front and a Digest
challenge is answered once), 404, 405, 413, 415, 431 and any other 4xx, 3xx.

Run it against a server::

    ESTPROTO_PASSWORD=secret python examples/fuzz_est_server.py \\
        https://127.0.0.1:8443 --cacert ca.pem --user alice \\
        [--iterations 200] [--seed 1] [--timeout 5]

One line per finding (``FINDING <kind> case <n> <mutation> <METHOD> <target>:
<detail>``), then ``N requests, M findings``. Exit status: 1 if anything was
found, 0 if not, 2 for a usage error or a server that does not answer GET
/cacerts before fuzzing starts.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import os
import random
import sys
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, TextIO

import trio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from estproto import (
    ClientTLSContext,
    LocalProtocolError,
    RawRequest,
    RawResponseReceived,
    RemoteProtocolError,
    auth,
)
from estproto.client import Credentials
from estproto.codecs import cmc, pkcs10, transfer
from estproto.trio import ESTClient

PREFIX = "/.well-known/est"
#: Where the password of ``--user`` comes from (argv is readable by others).
PASSWORD_ENV = "ESTPROTO_PASSWORD"

ENROLL_OPS = ("simpleenroll", "simplereenroll", "serverkeygen", "fullcmc")
GET_OPS = ("cacerts", "csrattrs")
OPERATIONS = ENROLL_OPS + GET_OPS

#: The server's body limit is unknown; 1 MiB is estproto's (and a common
#: one), so a bit more than that is "oversized" for most servers.
OVERSIZED_BODY = 1024 * 1024 + 4096

#: A request head or body above these sizes (bytes) is "oversized": a
#: server may close the connection on it rather than answer. 8 KiB is the
#: smallest common head limit (Apache, nginx's default buffer); 64 KiB is far
#: above any CSR or Full PKI Request this fuzzer builds.
OVERSIZED_HEAD = 8 * 1024
OVERSIZED_BODY_SEEN = 64 * 1024

#: Statuses 5xx that are answers, not failures (see the module docstring).
_NOT_SERVER_ERRORS = frozenset({501, 503})

_B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")

# Finding kinds.
SERVER_ERROR = "server-error"
ACCEPTED_INVALID = "accepted-invalid"
HANG = "hang"
NO_HTTP_RESPONSE = "no-http-response"
UNRESPONSIVE = "unresponsive"


@dataclass(frozen=True)
class Case:
    """One request to send.

    Attributes:
        number: its position in the run (1-based).
        mutation: what was broken, e.g. ``"der-bitflip"``.
        op: the EST operation the request is aimed at.
        method, target, headers, body: the request as sent.
    """

    number: int
    mutation: str
    op: str
    method: str
    target: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = field(default=b"", repr=False)

    @property
    def oversized(self) -> bool:
        """Over the limits servers commonly have, so closing the connection
        instead of answering is allowed (RFC 9110 15.5.14, 413: "the server
        MAY close the connection"; the same holds for 414 and 431)."""
        head = len(self.target) + sum(len(k) + len(v) + 4 for k, v in self.headers)
        return head > OVERSIZED_HEAD or len(self.body) > OVERSIZED_BODY_SEEN

    def describe(self) -> str:
        target = self.target if len(self.target) <= 80 else self.target[:77] + "..."
        return (f"case {self.number} {self.mutation} {self.method} {target} "
                f"({len(self.body)} byte body)")


@dataclass(frozen=True)
class Finding:
    """Something the oracle flagged. *case* is None for the health check
    that ran before any case."""

    kind: str
    case: Case | None
    detail: str

    def __str__(self) -> str:
        where = self.case.describe() if self.case is not None else "before fuzzing"
        return f"FINDING {self.kind} {where}: {self.detail}"


@dataclass
class FuzzResult:
    """What :func:`fuzz` did: requests sent (cases and GET /cacerts checks;
    the second request answering a Digest challenge is not counted) and
    findings."""

    requests: int = 0
    findings: list[Finding] = field(default_factory=list)

    def summary(self) -> str:
        return f"{self.requests} requests, {len(self.findings)} findings"


class ServerUnreachable(Exception):
    """GET /cacerts did not work before fuzzing started: nothing to fuzz."""


# ---------------------------------------------------------------------------
# Cases


class CaseMaker:
    """Builds case *n* of a run from the run's seed (and nothing else).

    Args:
        seed: the run's seed.
        label: the CA label to aim at ("" for none).
    """

    def __init__(self, seed: int, label: str = "") -> None:
        self.seed = seed
        self.label = label
        rng = random.Random(f"{seed}:key")
        # Derived, not generated: the same seed gives the same key and CSR.
        self.key = ec.derive_private_key(rng.getrandbits(255) + 1, ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"estproto-fuzz-{seed}")])
        self.csr = pkcs10.build_csr(self.key, subject)
        self.cmc = cmc.build_full_pki_request(self.csr, self.key, transaction_id=seed & 0xFFFF)
        self._mutations: list[Callable[[random.Random, str], tuple[str, str, tuple[tuple[str, str], ...], bytes]]] = [
            self._der_bitflip, self._der_truncate, self._der_append,
            self._b64_badchar, self._b64_padding, self._b64_linebreaks, self._b64_nul,
            self._content_type, self._transfer_encoding, self._method,
            self._path, self._oversized_header, self._oversized_body, self._empty_body,
        ]

    def path(self, op: str, label: str | None = None) -> str:
        label = self.label if label is None else label
        return f"{PREFIX}/{label + '/' if label else ''}{op}"

    def case(self, number: int) -> Case:
        rng = random.Random(f"{self.seed}:{number}")
        mutate = rng.choice(self._mutations)
        # Body mutations aim at the operations that take a body.
        body_mutation = mutate not in (self._method, self._path, self._oversized_header)
        op = rng.choice(ENROLL_OPS if body_mutation else OPERATIONS)
        method, target, headers, body = mutate(rng, op)
        name = mutate.__name__.lstrip("_").replace("_", "-")
        return Case(number, name, op, method, target, headers, body)

    # -- the valid request and its parts -----------------------------------

    def payload(self, op: str) -> bytes:
        return self.cmc if op == "fullcmc" else self.csr

    @staticmethod
    def media_type(op: str) -> str:
        return "application/pkcs7-mime" if op == "fullcmc" else "application/pkcs10"

    def valid(self, op: str, body: bytes | None = None) -> tuple[str, str, tuple[tuple[str, str], ...], bytes]:
        if op in GET_OPS:
            return "GET", self.path(op), (), b""
        if body is None:
            body = transfer.encode_base64(self.payload(op), transfer.WRAP_64)
        headers = (("Content-Type", self.media_type(op)), ("Content-Transfer-Encoding", "base64"))
        return "POST", self.path(op), headers, body

    def _with_der(self, op: str, der: bytes) -> tuple[str, str, tuple[tuple[str, str], ...], bytes]:
        return self.valid(op, transfer.encode_base64(der, transfer.WRAP_64))

    # -- mutations: each returns (method, target, headers, body) -----------

    def _der_bitflip(self, rng: random.Random, op: str) -> tuple[str, str, tuple[tuple[str, str], ...], bytes]:
        der = bytearray(self.payload(op))
        for _ in range(rng.choice((1, 1, 2, 8))):
            der[rng.randrange(len(der))] ^= 1 << rng.randrange(8)
        return self._with_der(op, bytes(der))

    def _der_truncate(self, rng: random.Random, op: str) -> tuple[str, str, tuple[tuple[str, str], ...], bytes]:
        der = self.payload(op)
        return self._with_der(op, der[: rng.choice((1, 2, 4, rng.randrange(1, len(der))))])

    def _der_append(self, rng: random.Random, op: str) -> tuple[str, str, tuple[tuple[str, str], ...], bytes]:
        extra = rng.choice((b"\x00", b"\x30\x00", rng.randbytes(rng.choice((16, 4096)))))
        return self._with_der(op, self.payload(op) + extra)

    def _b64_badchar(self, rng: random.Random, op: str) -> tuple[str, str, tuple[tuple[str, str], ...], bytes]:
        body = bytearray(transfer.encode_base64(self.payload(op), transfer.WRAP_64))
        bad = rng.choice((b"!", b"*", b"-", b"_", b"\x7f", b"\xff", "\u00e9".encode(), b"\x1b[0m"))
        at = rng.randrange(len(body) + 1)
        return self.valid(op, bytes(body[:at] + bad + body[at:]))

    def _b64_padding(self, rng: random.Random, op: str) -> tuple[str, str, tuple[tuple[str, str], ...], bytes]:
        text = transfer.encode_base64(self.payload(op)).rstrip(b"\n")
        choice = rng.randrange(4)
        if choice == 0:
            body = text.rstrip(b"=")  # padding dropped
        elif choice == 1:
            body = text + b"===="  # extra padding
        elif choice == 2:
            at = rng.randrange(len(text))
            body = text[:at] + b"=" + text[at:]  # padding in the middle
        else:
            body = text[: len(text) - 1 - rng.randrange(3)]  # length not a multiple of 4
        return self.valid(op, body)

    def _b64_linebreaks(self, rng: random.Random, op: str) -> tuple[str, str, tuple[tuple[str, str], ...], bytes]:
        text = transfer.encode_base64(self.payload(op)).rstrip(b"\n")
        sep = rng.choice((b"\r\n", b"\n", b"\r", b" ", b"\t", b"\n\n\n", b"\r\r\n"))
        width = rng.choice((1, 3, 63, 76, 1000))
        body = sep.join(text[i:i + width] for i in range(0, len(text), width))
        return self.valid(op, rng.choice((sep, b"")) + body + rng.choice((sep, b"")))

    def _b64_nul(self, rng: random.Random, op: str) -> tuple[str, str, tuple[tuple[str, str], ...], bytes]:
        body = transfer.encode_base64(self.payload(op), transfer.WRAP_64)
        where = rng.randrange(3)
        if where == 0:
            body = body + b"\x00" * rng.choice((1, 2, 100))
        elif where == 1:
            body = b"\x00" + body
        else:
            at = rng.randrange(len(body))
            body = body[:at] + b"\x00" + body[at:]
        return self.valid(op, body)

    def _content_type(self, rng: random.Random, op: str) -> tuple[str, str, tuple[tuple[str, str], ...], bytes]:
        method, target, _, body = self.valid(op)
        value = rng.choice((
            "text/plain", "application/octet-stream", "", "*/*", "application/",
            "application/pkcs10; charset=utf-8", "APPLICATION/PKCS10",
            "application/pkcs7-mime; smime-type=certs-only",
            "application/pkcs10;;;=;", 'application/pkcs10; x="unterminated',
            "application/pkcs10; " + "p=v; " * 300, "multipart/mixed; boundary=x",
        ))
        headers: tuple[tuple[str, str], ...] = (("Content-Type", value),)
        if rng.random() < 0.3:
            headers += (("Content-Type", self.media_type(op)),)  # a duplicate field
        return method, target, headers + (("Content-Transfer-Encoding", "base64"),), body

    def _transfer_encoding(self, rng: random.Random, op: str) -> tuple[str, str, tuple[tuple[str, str], ...], bytes]:
        method, target, _, body = self.valid(op)
        value = rng.choice(("binary", "7bit", "quoted-printable", "base64, base64", "BASE64",
                            "x-unknown", "", "base64; x=y"))
        if value == "binary" and rng.random() < 0.5:
            body = self.payload(op)  # raw DER, labelled as such
        return method, target, (("Content-Type", self.media_type(op)),
                                ("Content-Transfer-Encoding", value)), body

    def _method(self, rng: random.Random, op: str) -> tuple[str, str, tuple[tuple[str, str], ...], bytes]:
        _, target, headers, body = self.valid(op)
        if op in GET_OPS:
            method = rng.choice(("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "FUZZ"))
            body = rng.choice((b"", transfer.encode_base64(self.csr)))
        else:
            method = rng.choice(("GET", "HEAD", "PUT", "DELETE", "OPTIONS", "post", "FUZZ"))
            if method in ("GET", "HEAD"):
                body = b""
        return method, target, headers, body

    def _path(self, rng: random.Random, op: str) -> tuple[str, str, tuple[tuple[str, str], ...], bytes]:
        method, _, headers, body = self.valid(op)
        label = self.label or "lab"
        target = rng.choice((
            f"{PREFIX}/a/b/c/{op}",  # too many segments
            f"{PREFIX}/{label}/x/{op}",
            f"{PREFIX}/../est/{op}", f"{PREFIX}/./{op}", f"/.well-known/./est/{op}",
            f"{PREFIX}/x/../{op}", f"{PREFIX}/%2e%2e/{op}",
            f"{PREFIX}/{op[:-1]}%{ord(op[-1]):02x}",  # percent-encoded last letter
            f"{PREFIX}/%00{op}", f"{PREFIX}/%zz/{op}", f"{PREFIX}/{label}%2f{op}",
            f"{PREFIX}/{'a' * 300}/{op}", f"{PREFIX}/{'a' * 20000}/{op}",  # very long label
            f"{PREFIX}//{op}", f"{PREFIX}/{op}/", f"{PREFIX}/{op}?{'q=1&' * 10}",
            f"{PREFIX}/{op.upper()}", f"/.WELL-KNOWN/EST/{op}", f"{PREFIX}{op}",
            "*", f"https://evil.example{PREFIX}/{op}",
        ))
        return method, target, headers, body

    def _oversized_header(self, rng: random.Random, op: str) -> tuple[str, str, tuple[tuple[str, str], ...], bytes]:
        method, target, headers, body = self.valid(op)
        kind = rng.randrange(3)
        if kind == 0:
            extra: tuple[tuple[str, str], ...] = (("X-Fuzz", "A" * rng.choice((8000, 20000, 70000))),)
        elif kind == 1:
            extra = tuple((f"X-Fuzz-{i}", "v") for i in range(rng.choice((120, 1000))))
        else:
            extra = (("Content-Type", "application/pkcs10; x=" + "y" * 5000),)
        return method, target, headers + extra, body

    def _oversized_body(self, rng: random.Random, op: str) -> tuple[str, str, tuple[tuple[str, str], ...], bytes]:
        filler = transfer.encode_base64(rng.randbytes(OVERSIZED_BODY * 3 // 4), transfer.WRAP_64)
        return self.valid(op, filler)

    def _empty_body(self, rng: random.Random, op: str) -> tuple[str, str, tuple[tuple[str, str], ...], bytes]:
        return self.valid(op, rng.choice((b"", b"\n", b"\r\n", b"=")))


# ---------------------------------------------------------------------------
# The oracle


def _lenient_der(body: bytes) -> bytes | None:
    """The DER the most forgiving server could pull out of *body*, or None."""
    try:
        return transfer.decode_base64(body, lenient=True)
    except RemoteProtocolError:
        pass
    # RFC 2045 6.8: "Any characters outside of the base64 alphabet are to be
    # ignored in base64-encoded data." Padding is then re-derived.
    text = bytes(b for b in body if b in _B64_ALPHABET)
    try:
        return base64.b64decode(text + b"=" * (-len(text) % 4)) if text else None
    except binascii.Error:
        return None


def _first_tlv(der: bytes) -> bytes:
    """*der* cut after its first complete TLV (parsers such as OpenSSL's d2i
    ignore what follows); unchanged if that TLV is not complete."""
    if len(der) < 2:
        return der
    length, pos = der[1], 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or len(der) < 2 + count:
            return der
        length, pos = int.from_bytes(der[2:2 + count], "big"), 2 + count
    return der[: pos + length] if pos + length <= len(der) else der


def could_be_valid(op: str, body: bytes) -> bool:
    """Whether a lenient server could find a valid request for *op* in *body*."""
    der = _lenient_der(body)
    if der is None:
        return False
    der = _first_tlv(der)
    try:
        if op == "fullcmc":
            cmc.decode_full_pki_request(der)
        else:
            # RFC 7030 4.4.1: serverkeygen "MUST ignore the public key values
            # and signature in the CSR".
            pkcs10.decode_csr(der, verify=op != "serverkeygen")
    except RemoteProtocolError:  # DecodeError and its subclasses
        return False
    return True


def judge(case: Case, response: RawResponseReceived) -> Finding | None:
    """Apply the oracle (module docstring) to one response."""
    status = response.status
    if status >= 500 and status not in _NOT_SERVER_ERRORS:
        content_type = next((v for k, v in response.headers if k.lower() == "content-type"), "")
        if not (case.op == "fullcmc" and content_type.lower().startswith("application/pkcs7-mime")):
            text = response.body[:80].decode("utf-8", "replace").strip()
            return Finding(SERVER_ERROR, case, f"{status} {text!r}")
    if 200 <= status < 300 and case.op in ENROLL_OPS and not could_be_valid(case.op, case.body):
        return Finding(ACCEPTED_INVALID, case, f"{status} to a body holding no valid {case.op} request")
    return None


# ---------------------------------------------------------------------------
# Sending


@dataclass
class Target:
    """Where and how to connect.

    Attributes:
        host, port: the server.
        tls: the client TLS context (its trust anchors).
        credentials: for HTTP authentication, or None.
        timeout: seconds for the connection and for one response.
    """

    host: str
    port: int
    tls: ClientTLSContext
    credentials: Credentials | None = None
    timeout: float = 5.0

    def client(self) -> ESTClient:
        # No retries: a 202 is an answer here, not something to wait out.
        return ESTClient(self.host, self.port, self.tls, credentials=self.credentials,
                         max_retries=0, max_retry_wait=0.0,
                         request_timeout=self.timeout, connect_timeout=self.timeout)


async def _exchange(target: Target, request: RawRequest) -> RawResponseReceived:
    # The whole exchange is bounded too: a write to a server that stopped
    # reading has its own, longer limit in the adapter.
    with trio.move_on_after(2 * target.timeout + 1) as scope:
        async with target.client() as client:
            result = await client.request(request)
    if scope.cancelled_caught:
        raise TimeoutError("the exchange did not finish")
    assert isinstance(result, RawResponseReceived)  # raw in, raw out
    return result


async def send(target: Target, method: str, path: str, headers: tuple[tuple[str, str], ...],
               body: bytes) -> RawResponseReceived:
    """Send one raw request over a new connection, answering one 401.

    Raises:
        TimeoutError: no answer in time.
        RemoteProtocolError, OSError: no HTTP response.
        LocalProtocolError: estproto refuses to put this request on the wire.
    """
    request = RawRequest(method=method, target=path, body=body, extra_headers=headers)
    result = await _exchange(target, request)
    creds = target.credentials
    if result.status != 401 or creds is None:
        return result
    # Basic went up front (preemptive); a Digest challenge needs the
    # server's nonce, so it is answered on a second request.
    values = [v for k, v in result.headers if k.lower() == "www-authenticate"]
    try:
        authorization = auth.answer_challenge(
            auth.parse_challenges(values), creds.username, creds.password, method, path,
            server_authorized=True,
            prefer=tuple(p for p in creds.prefer if p.startswith("digest")))
    except (RemoteProtocolError, LocalProtocolError):
        return result
    if authorization is None:
        return result
    return await _exchange(target, dataclasses.replace(request, authorization=authorization))


async def _healthy(target: Target, label: str) -> str | None:
    """None if GET /cacerts answers 200, else what went wrong."""
    path = f"{PREFIX}/{label + '/' if label else ''}cacerts"
    try:
        response = await send(target, "GET", path, (), b"")
    except (OSError, RemoteProtocolError) as exc:
        return f"GET {path}: {type(exc).__name__}: {exc}"
    if response.status != 200:
        return f"GET {path} answered {response.status}"
    return None


async def fuzz(
    target: Target,
    *,
    iterations: int = 100,
    seed: int = 0,
    label: str = "",
    check_every: int = 10,
    out: TextIO | None = None,
) -> FuzzResult:
    """Run *iterations* cases against *target* and apply the oracle.

    Args:
        target: the server (see :class:`Target`).
        iterations: cases to send.
        seed: the run's seed; the same seed sends the same cases.
        label: CA label for the requests ("" for none).
        check_every: GET /cacerts after this many cases (and at the end).
        out: where to print each finding as it is found (None: nowhere).

    Returns:
        The :class:`FuzzResult`.

    Raises:
        ServerUnreachable: GET /cacerts failed before the first case.
    """
    result = FuzzResult()
    maker = CaseMaker(seed, label)

    def report(finding: Finding) -> None:
        result.findings.append(finding)
        if out is not None:
            print(finding, file=out, flush=True)

    result.requests += 1
    problem = await _healthy(target, label)
    if problem is not None:
        raise ServerUnreachable(problem)
    for number in range(1, iterations + 1):
        case = maker.case(number)
        finding: Finding | None = None
        check_now = number % check_every == 0 or number == iterations
        try:
            result.requests += 1
            finding = judge(case, await send(target, case.method, case.target, case.headers, case.body))
        except LocalProtocolError:
            result.requests -= 1  # never sent: estproto cannot encode it (none of ours)
        except TimeoutError as exc:
            finding = Finding(HANG, case, f"no answer in {target.timeout:g} s ({exc})")
        except (RemoteProtocolError, OSError) as exc:
            if case.oversized:
                check_now = True  # cutting it off is allowed; the server must survive it
            else:
                finding = Finding(NO_HTTP_RESPONSE, case, f"{type(exc).__name__}: {exc}")
        if finding is not None:
            report(finding)
        if check_now:
            result.requests += 1
            problem = await _healthy(target, label)
            if problem is not None:
                report(Finding(UNRESPONSIVE, case, f"after this case: {problem}"))
                break
    return result


# ---------------------------------------------------------------------------
# Command line


class UsageError(Exception):
    """Bad arguments or files (exit 2)."""


def _parse_url(url: str) -> tuple[str, int, str]:
    """host, port and label of ``https://host[:port][/.well-known/est[/label]]``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise UsageError(f"URL must be https://host[:port][{PREFIX}[/label]], not {url!r}")
    path = parts.path.rstrip("/")
    label = ""
    if path.startswith(PREFIX + "/"):
        label = path[len(PREFIX) + 1:]
    elif path not in ("", PREFIX):
        raise UsageError(f"EST lives under {PREFIX} (RFC 7030 3.2.2), not {path!r}")
    try:
        return parts.hostname, parts.port or 443, label
    except ValueError:
        raise UsageError(f"bad port in {url!r}") from None


def _target(args: argparse.Namespace) -> tuple[Target, str]:
    host, port, label = _parse_url(args.url)
    if args.timeout <= 0 or args.iterations < 0 or args.check_every < 1:
        raise UsageError("--timeout and --check-every must be positive, --iterations not negative")
    try:
        anchors = x509.load_pem_x509_certificates(Path(args.cacert).read_bytes())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read certificates from {args.cacert}: {exc}") from None
    credentials = None
    if args.user is not None:
        password = os.environ.get(PASSWORD_ENV)
        if not password:
            raise UsageError(f"--user needs the password in ${PASSWORD_ENV}")
        credentials = Credentials(args.user, password, preemptive_basic=True)
    tls = ClientTLSContext(trust_anchors=anchors)
    return Target(host, port, tls, credentials, args.timeout), label


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (see the module docstring); returns the exit status."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0],
                                     epilog=f"The password for --user is read from ${PASSWORD_ENV}.")
    parser.add_argument("url", help=f"https://host[:port][{PREFIX}[/label]]")
    parser.add_argument("--cacert", required=True, metavar="FILE", help="PEM trust anchors")
    parser.add_argument("--user", metavar="NAME", help=f"HTTP user (password from ${PASSWORD_ENV})")
    parser.add_argument("--iterations", type=int, default=100, metavar="N")
    parser.add_argument("--seed", type=int, default=0, metavar="S")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="T",
                        help="seconds per connection and per response")
    parser.add_argument("--check-every", type=int, default=10, metavar="K",
                        help="GET /cacerts after every K cases")
    args = parser.parse_args(argv)
    try:
        target, label = _target(args)
        result = trio.run(lambda: fuzz(target, iterations=args.iterations, seed=args.seed,
                                       label=label, check_every=args.check_every, out=sys.stdout))
    except (UsageError, ServerUnreachable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    return 1 if result.findings else 0


if __name__ == "__main__":
    sys.exit(main())
