"""Manual approval of enrollments (RFC 7030 4.2.3).

In manual-approval mode a request is answered "202 Accepted" with
Retry-After and recorded; "the client ... is expected to periodically
repeat the same request". The repeat is recognised by
:func:`request_fingerprint`: a hash of the operation, label, authenticated
requester, the CSR's public key and its subject and SAN. Not the CSR bytes:
a client polling on a new TLS connection must regenerate a PoP-linked CSR
(the challengePassword changes, and with it the signature). The requester
is part of it so nobody else can collect an approved request (essential for
serverkeygen, whose answer holds a private key). The certificate is issued
when the client retries after approval, by the server process that holds
the CA key: ``approve`` only changes a row, so the operator's command needs
no access to the CA key. A later identical retry gets the same certificate
again (the response may have been lost); for serverkeygen, whose key is
never stored, a retry after delivery starts a new request.
"""

from __future__ import annotations

import hashlib
import logging

from cryptography import x509

from .._events import ErrorResponse, RetryLater, ServerResponse
from .._paths import Operation
from ..codecs import pkcs10
from .backend import Principal
from .store import PendingRecord, PendingState, Store, StoreError
from .users import length_prefixed

__all__ = ["Approvals", "request_fingerprint"]

_log = logging.getLogger("estproto.ca")


def request_fingerprint(
    operation: Operation, label: str, requester: str, csr: pkcs10.CertificationRequest,
) -> str:
    """What identifies "the same request" when a client polls (RFC 7030 4.2.3).

    SHA-256 over operation, label, requester, public key (not for
    serverkeygen, whose CSR key the server ignores, 4.4.1), subject and
    the subjectAltName extension; see the module docstring for why the
    CSR bytes themselves are not used.
    """
    san = csr.get_extension("2.5.29.17")
    spki = b"" if operation is Operation.SERVERKEYGEN else csr.public_key_der
    data = length_prefixed(operation.value.encode(), label.encode(),
                           requester.encode("utf-8", "surrogatepass"),
                           spki, csr.subject_der, san.value_der if san else b"")
    return hashlib.sha256(data).hexdigest()


class Approvals:
    """Pending requests and the operator's decisions, kept in the store."""

    def __init__(self, store: Store, retry_after: int) -> None:
        self.store = store
        self.retry_after = retry_after

    def gate(
        self, csr: pkcs10.CertificationRequest, principal: Principal, label: str, operation: Operation,
    ) -> ServerResponse | x509.Certificate | int:
        """A response to send now (202 / 403), the certificate already
        issued for this request, or the id of an approved request to issue now.

        Raises:
            StoreError: the request kept changing state under us.
        """
        fp = request_fingerprint(operation, label, principal.name, csr)
        for _ in range(3):
            record = self.store.find_pending(fp)
            if record is None or (record.state is PendingState.ISSUED
                                  and operation is Operation.SERVERKEYGEN):
                record = self.store.add_pending(
                    fingerprint=fp, label=label, operation=operation.value,
                    requester=principal.name, subject=csr.subject.rfc4514_string(), csr_der=csr.der,
                )
                _log.info("enrollment %d pending approval (%s)", record.id, principal.name)
                return self._retry_later(record)
            if record.state is PendingState.PENDING:
                return self._retry_later(record)
            if record.state is PendingState.REJECTED:
                return ErrorResponse(403, "enrollment request rejected by the CA operator")
            if record.state is PendingState.APPROVED:
                return record.id
            assert record.serial is not None
            issued = self.store.get_issued(record.serial)
            if issued is None or issued.revoked:
                return ErrorResponse(403, "the certificate issued for this request was revoked")
            return issued.certificate
        raise StoreError("pending request changed state repeatedly")

    def _retry_later(self, record: PendingRecord) -> RetryLater:
        return RetryLater(self.retry_after, f"enrollment request {record.id} is waiting for approval")

    def list(self, state: PendingState | None = PendingState.PENDING) -> list[PendingRecord]:
        return self.store.list_pending(state)

    def approve(self, pending_id: int, actor: str) -> PendingRecord:
        return self.store.decide_pending(pending_id, PendingState.APPROVED, actor)

    def reject(self, pending_id: int, actor: str, note: str = "") -> PendingRecord:
        return self.store.decide_pending(pending_id, PendingState.REJECTED, actor, note)
