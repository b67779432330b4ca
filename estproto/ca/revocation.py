"""Revocation: which certificates we issued still count.

A revoked certificate (or one we did not issue) can no longer authenticate
or re-enroll: the TLS layer verifies the chain, and this checks the store,
so revocation takes effect here without a CRL on the TLS layer.
"""

from __future__ import annotations

import hmac

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .store import IssuedRecord, Store

__all__ = ["Revocation", "normalise_serial"]


def normalise_serial(serial: int | str) -> str:
    """The store's form of a serial number (lowercase hex, no leading zeros)
    from an int or hex text (colons and a 0x prefix allowed).

    Raises:
        ValueError: not a hexadecimal number.
    """
    if isinstance(serial, int):
        return format(serial, "x")
    text = serial.strip().lower().replace(":", "")
    if text.startswith("0x"):
        text = text[2:]
    try:
        return format(int(text, 16), "x")
    except ValueError:
        raise ValueError(f"not a hexadecimal serial number: {serial!r}") from None


class Revocation:
    """Revoking certificates, and telling whether a certificate still counts."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def revoke(self, serial: int | str, reason: x509.ReasonFlags | str, actor: str) -> IssuedRecord:
        """Revoke *serial* for an RFC 5280 *reason* (``x509.ReasonFlags`` or
        its value, e.g. "keyCompromise").

        Raises:
            ValueError: bad serial or reason.
            NotFoundError: no such certificate.
        """
        flag = reason if isinstance(reason, x509.ReasonFlags) else x509.ReasonFlags(reason)
        return self.store.revoke(normalise_serial(serial), flag.value, actor)

    def known_certificate(self, cert: x509.Certificate) -> IssuedRecord | None:
        """The store's record of *cert* if we issued it and it is not
        revoked (compared by DER, not only by serial), else None."""
        record = self.store.get_issued(format(cert.serial_number, "x"))
        if record is None or record.revoked:
            return None
        if not hmac.compare_digest(record.der, cert.public_bytes(serialization.Encoding.DER)):
            return None
        return record

    def why_unknown(self, cert: x509.Certificate) -> str:
        """Why a verified certificate is not one of ours to accept."""
        record = self.store.get_issued(format(cert.serial_number, "x"))
        if record is None or not hmac.compare_digest(
                record.der, cert.public_bytes(serialization.Encoding.DER)):
            return "was not issued by this CA"
        return f"is revoked ({record.revocation_reason or 'unspecified'})"
