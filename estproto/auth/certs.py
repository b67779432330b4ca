"""Certificate-based authorization checks and proof-of-possession linking.

Implements, as pure functions over values the caller extracted:

* RFC 7030 section 3.7 (client authorization): a client certificate issued
  by the EST CA with the id-kp-cmcRA extended key usage
  (1.3.6.1.5.5.7.3.28, RFC 6402) marks a Registration Authority.
* RFC 7030 section 4.2.2 (re-enrollment): "The request Subject field and
  SubjectAltName extension MUST be identical to the corresponding fields in
  the certificate being renewed/rekeyed."
* RFC 7030 section 3.5 (linking identity and POP) and RFC 7894 section 3.3
  (estIdentityLinking): the CSR carries base64(channel binding) and "If
  tls-unique information is included by the client, the server MUST verify
  it. The EST server MAY reject requests without tls-unique information as
  indicated by server policy."

Strategy: no dependency on the PKCS#10 codec; callers pass the subject DER,
the SAN general names and the attribute strings. Subjects compare by DER
first and, failing that, attribute by attribute with exact values but
ignoring the ASN.1 string type (a CA that re-encodes a UTF8String as
PrintableString has not changed the name); case and spacing must match.
SANs compare as sets: order and duplicates are not identity.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hmac
from dataclasses import dataclass
from typing import Any, Sequence

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ObjectIdentifier

__all__ = [
    "ID_KP_CMC_RA",
    "is_ra_certificate",
    "same_subject_and_san",
    "mismatch_reason",
    "PoPPolicy",
    "PoPOutcome",
    "check_pop",
]

#: id-kp-cmcRA, RFC 6402 section 2.10.
ID_KP_CMC_RA = ObjectIdentifier("1.3.6.1.5.5.7.3.28")

#: Longest reason text we build; reasons go into text/plain error bodies.
_MAX_REASON = 300

_DECODE_ERRORS = (
    ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError, AttributeError,
)


def is_ra_certificate(
    cert: x509.Certificate, *, issued_by: Sequence[x509.Certificate] | None = None
) -> bool:
    """True if *cert* carries the id-kp-cmcRA extended key usage.

    RFC 7030 section 3.7: "If the client's certificate was issued by the EST
    CA, and it includes the id-kp-cmcRA [RFC6402] extended key usage
    extension, then the client is a Registration Authority (RA)".

    Args:
        cert: the TLS client certificate, already validated by the caller.
        issued_by: the EST CA certificates; when given, *cert* must also be
            signed directly by one of them. Without it, checking the issuer
            is the caller's job.

    Returns:
        False for a certificate without the EKU or with unreadable
        extensions; never raises.
    """
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    except _DECODE_ERRORS:
        return False
    if ID_KP_CMC_RA not in list(eku):
        return False
    if issued_by is None:
        return True
    for ca in issued_by:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def _name_key(der: bytes) -> tuple[tuple[tuple[str, str], ...], ...] | None:
    """RDN sequence as (oid, value) tuples, string type ignored; None if bad DER."""
    try:
        name = asn1_x509.Name.load(der, strict=True)
        rdns: list[tuple[tuple[str, str], ...]] = []
        for rdn in name.chosen:
            atvs = []
            for atv in rdn:
                value: Any = atv["value"]
                native = value.native
                text = native if isinstance(native, str) else "#" + value.dump().hex()
                atvs.append((atv["type"].dotted, text))
            rdns.append(tuple(sorted(atvs)))
        return tuple(rdns)
    except _DECODE_ERRORS:
        return None


def _name_text(der: bytes) -> str:
    try:
        return str(asn1_x509.Name.load(der, strict=True).human_friendly)
    except _DECODE_ERRORS:
        return "<undecodable name>"


def _san_text(names: Sequence[x509.GeneralName] | set[x509.GeneralName]) -> str:
    if not names:
        return "none"
    items = sorted(f"{type(n).__name__}:{getattr(n, 'value', n)!s}" for n in names)
    return "[" + ", ".join(items) + "]"


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def mismatch_reason(
    csr_subject_der: bytes,
    csr_sans: Sequence[x509.GeneralName],
    cert: x509.Certificate,
) -> str | None:
    """Explain how a re-enrollment CSR differs from the certificate it renews.

    Args:
        csr_subject_der: DER of the CSR's subject Name.
        csr_sans: the CSR's requested subjectAltName entries (empty if the
            CSR has no SAN extension; absent and empty are the same).
        cert: the certificate being renewed or rekeyed (the TLS client
            certificate, RFC 7030 section 4.2.2).

    Returns:
        None if subject and SAN are identical, else a one-line reason
        suitable for a 400 text/plain body.
    """
    cert_subject_der = cert.subject.public_bytes()
    if csr_subject_der != cert_subject_der:
        key = _name_key(csr_subject_der)
        if key is None:
            return "CSR subject is not a valid DER Name"
        if key != _name_key(cert_subject_der):
            return _clip(
                f"CSR subject {_name_text(csr_subject_der)!r} differs from "
                f"{_name_text(cert_subject_der)!r} of the certificate being renewed "
                "(RFC 7030 section 4.2.2)"
            )
    try:
        cert_sans: set[x509.GeneralName] = set(
            cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        )
    except x509.ExtensionNotFound:
        cert_sans = set()
    except _DECODE_ERRORS:
        return "certificate being renewed has an unreadable subjectAltName"
    if set(csr_sans) != cert_sans:
        return _clip(
            f"CSR subjectAltName {_san_text(list(csr_sans))} differs from "
            f"{_san_text(cert_sans)} of the certificate being renewed (RFC 7030 section 4.2.2)"
        )
    return None


def same_subject_and_san(
    csr_subject_der: bytes,
    csr_sans: Sequence[x509.GeneralName],
    cert: x509.Certificate,
) -> bool:
    """True if the CSR's subject and SAN equal those of *cert*.

    See :func:`mismatch_reason` for the arguments and the comparison rules.
    """
    return mismatch_reason(csr_subject_der, csr_sans, cert) is None


class PoPPolicy(enum.Enum):
    """How a server treats proof-of-possession linking (RFC 7030 section 3.5)."""

    #: Never look at the linking attributes. Breaks the RFC's "MUST verify";
    #: for deployments behind a TLS-terminating proxy with no channel binding.
    OFF = "off"
    #: The RFC's minimum: verify a linking value if the CSR carries one.
    VERIFY_IF_PRESENT = "verify-if-present"
    #: Also reject CSRs without one ("The EST server MAY reject requests
    #: without tls-unique information"); advertise challengePassword in
    #: csrattrs so clients know.
    REQUIRE = "require"


@dataclass(frozen=True)
class PoPOutcome:
    """Result of :func:`check_pop`.

    Attributes:
        ok: whether the request may proceed.
        reason: one line saying why, citing RFC 7030 when rejecting (the
            RFC asks the reject text to say that linking is required).
        linked: True if a linking value matched this connection's binding.
    """

    ok: bool
    reason: str
    linked: bool = False


def _decode_linking(value: str) -> bytes | None:
    text = value.strip()
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def check_pop(
    policy: PoPPolicy,
    *,
    challenge_password: str | None,
    identity_linking: str | None,
    channel_binding: bytes | None,
    is_ra: bool,
) -> PoPOutcome:
    """Check the CSR's proof-of-possession linking against the TLS channel.

    Args:
        policy: see :class:`PoPPolicy`.
        challenge_password: the CSR's challengePassword string, or None.
        identity_linking: the CSR's estIdentityLinking (RFC 7894) string, or
            None. RFC 7894 section 4: "EST servers MUST evaluate each
            challenge attribute independently. All challenge attributes
            included by an EST client MUST be successfully processed", so
            when both are present both must match.
        channel_binding: tls-unique (TLS 1.2) or tls-exporter (TLS 1.3) of
            this connection, or None if unavailable.
        is_ra: the client authenticated as a trusted RA (see
            :func:`is_ra_certificate`). RFC 7030 section 3.7: the server
            "could be configured to accept POP linking information that does
            not match the current TLS session because the authenticated EST
            client RA has verified this information". So a present but
            non-matching (or unverifiable) value is accepted from an RA; a
            missing one is not, under REQUIRE. Pass False to disable the
            exemption.

    Returns:
        A :class:`PoPOutcome`; never raises.
    """
    if policy is PoPPolicy.OFF:
        return PoPOutcome(True, "proof-of-possession linking not checked (policy OFF)")
    candidates = (
        ("challengePassword", challenge_password),
        ("estIdentityLinking", identity_linking),
    )
    present = [(label, value) for label, value in candidates if value is not None]
    if not present:
        if policy is PoPPolicy.REQUIRE:
            return PoPOutcome(
                False,
                "proof-of-possession linking required but the CSR carries no "
                "challengePassword (RFC 7030 section 3.5)",
            )
        return PoPOutcome(True, "CSR carries no proof-of-possession linking value")
    failure: str | None = None
    if channel_binding is None:
        failure = "no channel binding available on this connection (RFC 7030 section 3.5)"
    else:
        for label, value in present:
            decoded = _decode_linking(value)
            # compare_digest even for a wrong length: no early byte-wise exit.
            if decoded is None or not hmac.compare_digest(decoded, channel_binding):
                failure = f"{label} does not match the TLS channel binding (RFC 7030 section 3.5)"
                break
    if failure is None:
        names = " and ".join(label for label, _ in present)
        return PoPOutcome(True, f"{names} matches the TLS channel binding", linked=True)
    if is_ra:
        return PoPOutcome(
            True,
            "linking value from an RA accepted without matching this TLS session "
            "(RFC 7030 section 3.7)",
        )
    return PoPOutcome(False, failure)
