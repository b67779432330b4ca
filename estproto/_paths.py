"""EST request URIs: ``/.well-known/est[/<label>]/<operation>`` (RFC 7030 3.2.2).

RFC 7030 3.2.2: "The EST server MUST support the use of the path-prefix of
'/.well-known/' ... and the registered name of 'est'", followed by one path
segment per operation. "An EST server MAY provide service for multiple CAs as
indicated by an OPTIONAL additional path segment between the registered
application name and the operation path. To avoid conflict, the CA label MUST
NOT be the same as any defined operation path segment."

Real deployments sometimes use two label segments (tenant/profile); that is an
opt-in (``max_label_segments=2``), never the default. The query string is not
part of EST and is ignored, as any HTTP origin server may do.
"""

from __future__ import annotations

import enum
import string
from dataclasses import dataclass

from ._errors import LocalProtocolError, RemoteProtocolError

__all__ = ["Operation", "ESTPath", "WELL_KNOWN_PREFIX", "parse_est_path", "format_est_path", "check_label"]

WELL_KNOWN_PREFIX = "/.well-known/est"

#: Longest label we accept. Labels are short CA names; a bound keeps error
#: messages and log lines short.
MAX_LABEL_LENGTH = 64

# RFC 3986 unreserved characters. Labels appear verbatim in URIs, so anything
# needing percent-encoding is refused rather than decoded: no ambiguity about
# which CA a request meant, and no "/" or ".." smuggled through %2F.
_LABEL_CHARS = frozenset(string.ascii_letters + string.digits + "-._~")


class Operation(enum.Enum):
    """The six EST operations and their path segments (RFC 7030 3.2.2, Figure 5)."""

    #: Distribution of CA certificates, GET (4.1).
    CACERTS = "cacerts"
    #: Enrollment of clients, POST (4.2.1).
    SIMPLEENROLL = "simpleenroll"
    #: Re-enrollment (renew or rekey), POST (4.2.2).
    SIMPLEREENROLL = "simplereenroll"
    #: Full CMC, POST (4.3).
    FULLCMC = "fullcmc"
    #: Server-side key generation, POST (4.4).
    SERVERKEYGEN = "serverkeygen"
    #: CSR attributes, GET (4.5).
    CSRATTRS = "csrattrs"

    @property
    def method(self) -> str:
        """The only HTTP method this operation accepts."""
        return "GET" if self in (Operation.CACERTS, Operation.CSRATTRS) else "POST"


_OPERATION_NAMES = frozenset(op.value for op in Operation)


@dataclass(frozen=True)
class ESTPath:
    """A parsed EST request path.

    Attributes:
        operation: which EST operation the path names.
        label: the CA label ("" when absent). With ``max_label_segments=2`` a
            two-segment label is kept joined by "/".
    """

    operation: Operation
    label: str = ""

    def __post_init__(self) -> None:
        if self.label:
            _check_label(self.label, max_segments=self.label.count("/") + 1, local=True)


def check_label(label: str) -> None:
    """Refuse a CA label the caller gave that is not one (RFC 7030 3.2.2);
    "" (no label) is fine.

    Raises:
        LocalProtocolError: with the reason.
    """
    if label:
        _check_label(label, max_segments=label.count("/") + 1, local=True)


def _check_label(label: str, max_segments: int, local: bool = False) -> None:
    error = LocalProtocolError if local else RemoteProtocolError
    segments = label.split("/")
    if len(segments) > max_segments:
        raise error(f"too many label segments in {label!r}", 404)
    for segment in segments:
        if not segment or len(segment) > MAX_LABEL_LENGTH:
            raise error("empty or overlong CA label", 404)
        if not _LABEL_CHARS.issuperset(segment):
            raise error("CA label has characters outside RFC 3986 unreserved", 404)
        if segment in _OPERATION_NAMES:
            # 3.2.2: "the CA label MUST NOT be the same as any defined
            # operation path segment."
            raise error(f"CA label {segment!r} is an operation name", 404)
        if segment in (".", ".."):
            raise error("CA label may not be a dot segment", 404)


def parse_est_path(target: str, *, max_label_segments: int = 1) -> ESTPath:
    """Parse an HTTP request-target into an :class:`ESTPath`.

    Args:
        target: the request-target as received (origin-form; an absolute-form
            ``https://host/...`` target is reduced to its path).
        max_label_segments: 1 per RFC 7030; 2 to accept ``tenant/profile``.

    Raises:
        RemoteProtocolError: with ``error_status_hint`` 404 when the path is not
            an EST path or names no known operation.
    """
    path = target.split("?", 1)[0].split("#", 1)[0]
    if path.startswith(("http://", "https://")):
        slash = path.find("/", path.index("//") + 2)
        path = path[slash:] if slash >= 0 else "/"
    if not path.startswith(WELL_KNOWN_PREFIX + "/"):
        raise RemoteProtocolError("not an EST path (RFC 7030 3.2.2)", 404)
    rest = path[len(WELL_KNOWN_PREFIX) + 1 :]
    label, separator, op_name = rest.rpartition("/")
    try:
        operation = Operation(op_name)
    except ValueError:
        raise RemoteProtocolError("unknown EST operation", 404) from None
    if separator:
        # An empty label ("//cacerts") is refused like any malformed one.
        _check_label(label, max_label_segments)
    return ESTPath(operation, label)


def format_est_path(operation: Operation, label: str = "") -> str:
    """Build the request path for *operation* under *label* (client side)."""
    if label:
        _check_label(label, max_segments=label.count("/") + 1, local=True)
        return f"{WELL_KNOWN_PREFIX}/{label}/{operation.value}"
    return f"{WELL_KNOWN_PREFIX}/{operation.value}"
