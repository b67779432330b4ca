"""Certificate revocation lists (RFC 5280 section 5) of the issuing CA.

:func:`build_crl` signs a complete CRL of the store's revoked certificates:
version 2, the issuing CA as issuer, thisUpdate / nextUpdate, the
authorityKeyIdentifier and cRLNumber extensions (5.2.1, 5.2.3: both MUST
be present), and per entry the revocation date and, unless it is
"unspecified", the reason code (5.3.1: "the reason code CRL entry extension
SHOULD be absent instead of using the unspecified (0) reasonCode value").
Certificates past their notAfter are left out ("an entry MAY be removed
from the CRL after ... the certificate's validity period", 3.3).

The cRLNumber is thisUpdate in milliseconds since 1970: it grows with each
new CRL however many processes sign them, without a counter to share.

:class:`CRLPublisher` keeps the current CRL for a server: it re-reads the
revoked certificates at most every ``check_seconds`` and signs a new CRL
when they changed (a revocation by ``estproto ca revoke`` in another
process included) or when half of the CRL's lifetime has passed, so a
relying party never holds a CRL past its nextUpdate for want of a new one.
"""

from __future__ import annotations

import datetime
import threading
import time
import urllib.parse
from typing import Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .errors import CAError
from .signer import Signer
from .store import IssuedRecord, Store

__all__ = ["build_crl", "CRLPublisher", "CRL_LIFETIME", "CRL_MEDIA_TYPE", "distribution_point",
           "check_crl_url"]

#: Lifetime (nextUpdate - thisUpdate) of the CRLs the server publishes: a
#: day, as step-ca and EJBCA default to. Relying parties cache a CRL until
#: its nextUpdate, so this bounds how long a revocation can go unseen.
CRL_LIFETIME = datetime.timedelta(hours=24)

#: RFC 2585 section 4.2: a CRL over HTTP is DER with this media type.
CRL_MEDIA_TYPE = "application/pkix-crl"


def check_crl_url(url: str) -> urllib.parse.SplitResult:
    """*url* split, if it can name a CRL: ``http://host[:port]/path``
    (RFC 5280 4.2.1.13: relying parties fetch CRLs over HTTP, not HTTPS).

    Raises:
        CAError: anything else.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises ValueError for a bad port
    except ValueError:
        raise CAError(f"not a usable CRL URL: {url!r}") from None
    if (parts.scheme != "http" or not parts.hostname or not parts.path.startswith("/") or port == 0
            or parts.query or parts.fragment or any(c in url for c in " \t\r\n")):
        raise CAError(f"a CRL URL is http://HOST[:PORT]/PATH, not {url!r}")
    return parts


def distribution_point(url: str) -> x509.Extension[x509.CRLDistributionPoints]:
    """The cRLDistributionPoints extension naming *url* (RFC 5280 4.2.1.13)."""
    point = x509.DistributionPoint(
        full_name=[x509.UniformResourceIdentifier(url)], relative_name=None, reasons=None,
        crl_issuer=None)
    return x509.Extension(x509.CRLDistributionPoints.oid, False, x509.CRLDistributionPoints([point]))


def build_crl(
    signer: Signer, revoked: Sequence[IssuedRecord], *, this_update: datetime.datetime,
    lifetime: datetime.timedelta = CRL_LIFETIME,
) -> x509.CertificateRevocationList:
    """A complete CRL listing *revoked* (records whose ``revoked_at`` is set)."""
    number = int(this_update.timestamp() * 1000)
    this_update = this_update.replace(microsecond=0)  # X.509 times have whole seconds
    issuer = signer.certificate
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]  # a CA key: EC, RSA or EdDSA
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(this_update)
        .next_update(this_update + lifetime)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(aki, critical=False)
    )
    for record in revoked:
        if record.revoked_at is None or record.not_after < this_update:
            continue
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(int(record.serial, 16))
            .revocation_date(min(record.revoked_at, this_update))
        )
        reason = record.revocation_reason or "unspecified"
        if reason != "unspecified":
            entry = entry.add_extension(x509.CRLReason(x509.ReasonFlags(reason)), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return signer.sign_crl(builder)


class CRLPublisher:
    """The current CRL of a CA, re-signed when revocations change or it
    ages (module docstring). Thread-safe; :meth:`current` may block on a
    store read and a signature, so servers call it from a worker thread.

    Args:
        signer: signs the CRLs (the issuing CA).
        store: where revocations are recorded.
        lifetime: nextUpdate - thisUpdate.
        check_seconds: the store is asked again at most this often.
        clock: seconds since 1970 (tests pass their own).
    """

    def __init__(self, signer: Signer, store: Store, *, lifetime: datetime.timedelta = CRL_LIFETIME,
                 check_seconds: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        if lifetime <= datetime.timedelta(seconds=2):
            raise ValueError("a CRL lifetime must be longer than 2 seconds")
        self.signer = signer
        self.store = store
        self.lifetime = lifetime
        self.check_seconds = check_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._der: bytes | None = None
        self._marker: tuple[tuple[str, datetime.datetime | None], ...] | None = None
        self._signed_at = 0.0
        self._checked_at = 0.0

    def current(self) -> bytes:
        """The DER of the current CRL.

        Raises:
            StoreError: the revocations could not be read (and no CRL was
                signed yet).
        """
        with self._lock:
            now = self._clock()
            if self._der is not None and now - self._checked_at < self.check_seconds:
                return self._der
            revoked = self.store.list_revoked()
            self._checked_at = now
            marker = tuple((r.serial, r.revoked_at) for r in revoked)
            stale = now - self._signed_at >= self.lifetime.total_seconds() / 2
            if self._der is None or marker != self._marker or stale:
                when = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
                crl = build_crl(self.signer, revoked, this_update=when, lifetime=self.lifetime)
                self._der = crl.public_bytes(serialization.Encoding.DER)
                self._marker = marker
                self._signed_at = now
            return self._der
