"""CSR attributes (``application/csrattrs``): what the server wants in a CSR.

Implements RFC 7030 section 4.5.2 (CsrAttrs), RFC 8951 section 4 (its
clarified example) and RFC 9908 (section 3.2 value rules, section 3.4 and
Appendix A CertificationRequestInfoTemplate, section 4 coexistence, section 5
examples). The ASN.1 lives in :mod:`estproto.asn1.csrattrs`.

Strategy
--------
The wire format is a flat list of bare OIDs and Attributes. The decoder keeps
it as a flat tuple of small value objects, :class:`RequiredOID` and
:class:`RequestedAttribute` (attribute values as raw DER), so that encoding
the result gives back the same DER: nothing is lost, and "The client MUST
ignore any OID or attribute it does not recognize" (RFC 7030 4.5.2) becomes
the caller's choice rather than ours. :class:`CsrAttributes` adds read-only
views that interpret the parts we know: required OIDs, the key type hint
(RFC 9908 3.2), the extensions asked for by an extensionRequest, the RFC 9908
template, and whether challengePassword is listed.

Leniency: a known attribute whose value does not have the expected shape is
kept raw and simply contributes nothing to the views (except the historical
case below); only a malformed CsrAttrs structure itself is a DecodeError.
RFC 7030's 4.5.2 example lists the macAddress OID as a bare OID inside an
extensionRequest attribute, which RFC 9908 5.2 calls "NOT CORRECT"; we still
accept it and report the OID among the requested extensions.

RFC 9908 section 4: "Clients that understand both MUST use the template
only, and ignore all other CsrAttrs elements." The views here are
independent; a client that finds :attr:`CsrAttributes.template` should act
on it alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence, Union

from asn1crypto import core, keys

from .._errors import DecodeError, LocalProtocolError, MessageTooLarge
from .._limits import MAX_CSRATTRS_ENTRIES, MAX_DER_SIZE
from ..asn1 import csrattrs as asn1
from ._der import decoding, load_der

__all__ = [
    "RequiredOID",
    "RequestedAttribute",
    "KeyTypeHint",
    "RequestedExtension",
    "SubjectAttributeTemplate",
    "CertificationRequestTemplate",
    "CsrAttributes",
    "encode_csrattrs",
    "decode_csrattrs",
    "ID_CHALLENGE_PASSWORD",
    "ID_EXTENSION_REQUEST",
    "ID_AA_CERTIFICATION_REQUEST_INFO_TEMPLATE",
    "ID_AA_EXTENSION_REQ_TEMPLATE",
]

ID_CHALLENGE_PASSWORD = asn1.ID_CHALLENGE_PASSWORD
ID_EXTENSION_REQUEST = asn1.ID_EXTENSION_REQUEST
ID_AA_CERTIFICATION_REQUEST_INFO_TEMPLATE = asn1.ID_AA_CERTIFICATION_REQUEST_INFO_TEMPLATE
ID_AA_EXTENSION_REQ_TEMPLATE = asn1.ID_AA_EXTENSION_REQ_TEMPLATE

_WHAT = "CSR attributes"

ID_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
ID_RSASSA_PSS = "1.2.840.113549.1.1.10"
ID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
ID_ED25519 = "1.3.101.112"
ID_ED448 = "1.3.101.113"

#: Public-key algorithm OIDs that, as an Attribute type, mean "use this kind
#: of key" (RFC 9908 3.2: "the type field being the OID specifying the type
#: of the key, such as ecPublicKey or rsaEncryption").
KEY_ALGORITHMS = frozenset(
    {
        ID_RSA_ENCRYPTION,
        ID_RSASSA_PSS,
        ID_EC_PUBLIC_KEY,
        ID_ED25519,
        ID_ED448,
        "1.2.840.10040.4.1",  # id-dsa
        "1.3.132.1.12",  # id-ecDH
        "1.3.101.110",  # id-X25519
        "1.3.101.111",  # id-X448
    }
)

_OID_RE = re.compile(r"^(?:[01]\.(?:[0-9]|[1-3][0-9])|2\.(?:0|[1-9][0-9]*))(?:\.(?:0|[1-9][0-9]*))*$")


def _check_oid(oid: object, what: str) -> str:
    if not isinstance(oid, str) or not _OID_RE.match(oid):
        raise LocalProtocolError(f"{what} must be a dotted OID string, not {oid!r}")
    return oid


def _is_single_der(value: bytes) -> bool:
    """True if *value* is exactly one complete, definite-length TLV."""
    try:
        parsed = core.Any.load(value, strict=True)
        parsed.contents  # noqa: B018 - forces the header parse
    except (ValueError, TypeError, OverflowError):
        return False
    return True


# --------------------------------------------------------------------------
# Value classes


@dataclass(frozen=True)
class RequiredOID:
    """A bare OID entry: a signature algorithm to use, an attribute to
    include (e.g. challengePassword), or some other requirement (RFC 7030
    4.5.2).

    Attributes:
        oid: dotted OID string.

    Raises:
        LocalProtocolError: *oid* is not a dotted OID string.
    """

    oid: str

    def __post_init__(self) -> None:
        _check_oid(self.oid, "RequiredOID.oid")


@dataclass(frozen=True)
class RequestedAttribute:
    """An Attribute entry: a type OID and its values, each as DER.

    Attributes:
        oid: the attribute type, dotted.
        values: the DER encoding of each element of the values SET, in the
            order received (the encoder sorts them, as DER requires). May be
            empty (RFC 9908 3.2: "The 'values' field MAY be empty").

    Raises:
        LocalProtocolError: bad OID, or a value that is not one DER TLV.
    """

    oid: str
    values: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        _check_oid(self.oid, "RequestedAttribute.oid")
        if not isinstance(self.values, tuple):
            raise LocalProtocolError("RequestedAttribute.values must be a tuple of bytes")
        for value in self.values:
            if not isinstance(value, bytes) or not _is_single_der(value):
                raise LocalProtocolError(
                    "each RequestedAttribute value must be bytes holding one DER value"
                )


Entry = Union[RequiredOID, RequestedAttribute]


@dataclass(frozen=True)
class KeyTypeHint:
    """The kind of key the server asks for (RFC 9908 3.2, 3.4).

    Attributes:
        algorithm: public-key algorithm OID (e.g. id-ecPublicKey).
        curve: named curve OID for EC keys, if given.
        key_size: RSA modulus size in bits, if given.
    """

    algorithm: str
    curve: str | None = None
    key_size: int | None = None


@dataclass(frozen=True)
class RequestedExtension:
    """One extension the server wants in the CSR (RFC 9908 3.2, 3.4).

    Attributes:
        oid: the extnID.
        critical: the critical flag the server gave (default False).
        value: the extnValue octets (DER of the extension value), or None
            when the client is to fill it in (ExtensionTemplate without
            extnValue, or RFC 7030's bare-OID form).
    """

    oid: str
    critical: bool = False
    value: bytes | None = None


@dataclass(frozen=True)
class SubjectAttributeTemplate:
    """One RDN attribute of a NameTemplate (RFC 9908 3.4).

    Attributes:
        oid: the attribute type (e.g. commonName 2.5.4.3).
        value: DER of the value the client must use, or None when the
            client fills it in.
    """

    oid: str
    value: bytes | None = None

    @property
    def text(self) -> str | None:
        """The value as text if it is a string type, else None."""
        if self.value is None:
            return None
        try:
            parsed = core.load(self.value)
            native = parsed.native if isinstance(parsed, core.AbstractString) else None
        except (ValueError, TypeError, KeyError, OverflowError):
            return None
        return native if isinstance(native, str) else None


@dataclass(frozen=True)
class CertificationRequestTemplate:
    """A decoded RFC 9908 CertificationRequestInfoTemplate.

    Attributes:
        version: the version field (RFC 9908: "MUST contain v1 (0)").
        subject: RDNs (each a tuple of attribute templates), or None if the
            server places no requirement on the subject.
        key_type: the requested key type, or None if no requirement.
        key_parameters: DER of the key AlgorithmIdentifier parameters, if any.
        extensions: extensions from the extensionRequest or
            id-aa-extensionReqTemplate attribute of the template.
        attributes: every attribute of the template, raw, in order.
    """

    version: int
    subject: tuple[tuple[SubjectAttributeTemplate, ...], ...] | None
    key_type: KeyTypeHint | None
    key_parameters: bytes | None
    extensions: tuple[RequestedExtension, ...]
    attributes: tuple[RequestedAttribute, ...]


@dataclass(frozen=True)
class CsrAttributes:
    """A CsrAttrs response: its entries in order, plus interpreting views.

    Attributes:
        entries: every entry as received (or as to be encoded).

    Raises:
        LocalProtocolError: *entries* holds something other than
            :class:`RequiredOID` / :class:`RequestedAttribute`.
    """

    entries: tuple[Entry, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.entries, tuple):
            raise LocalProtocolError("CsrAttributes.entries must be a tuple")
        for entry in self.entries:
            if not isinstance(entry, (RequiredOID, RequestedAttribute)):
                raise LocalProtocolError(
                    f"CsrAttributes entry must be RequiredOID or RequestedAttribute, "
                    f"not {type(entry).__name__}"
                )

    @property
    def attributes(self) -> tuple[RequestedAttribute, ...]:
        """The Attribute entries, in order."""
        return tuple(e for e in self.entries if isinstance(e, RequestedAttribute))

    @property
    def required_oids(self) -> tuple[str, ...]:
        """The bare OID entries, in order (signature algorithms, attributes
        to include, and anything else the server names)."""
        return tuple(e.oid for e in self.entries if isinstance(e, RequiredOID))

    @property
    def challenge_password_required(self) -> bool:
        """True if challengePassword is listed (as a bare OID or an attribute
        type). RFC 7030 4.5.2: "If an EST server requires the linking of
        identity and POP information (see Section 3.5), it MUST include the
        challengePassword OID in the CSR Attributes Response." """
        return any(e.oid == ID_CHALLENGE_PASSWORD for e in self.entries)

    @property
    def key_type(self) -> KeyTypeHint | None:
        """The first key-type Attribute (RFC 9908 3.2), else None.

        The type is a public-key algorithm OID; a value that is an OID is the
        curve, a value that is an INTEGER the RSA key size (RFC 9908 5.4,
        5.5). Bare OIDs are not interpreted: a bare curve OID (RFC 7030 A.2)
        stays in :attr:`required_oids`.
        """
        for entry in self.attributes:
            if entry.oid in KEY_ALGORITHMS:
                return _key_hint(entry.oid, entry.values)
        return None

    @property
    def extension_requests(self) -> tuple[RequestedExtension, ...]:
        """Extensions from extensionRequest attributes (RFC 9908 3.2), with
        their criticality and values; RFC 7030 4.5.2's bare-OID form gives
        entries without a value. Values that fit neither form are ignored."""
        found: list[RequestedExtension] = []
        for entry in self.attributes:
            if entry.oid == ID_EXTENSION_REQUEST:
                for value in entry.values:
                    found.extend(_extension_request_value(value))
        return tuple(found)

    @property
    def requested_extensions(self) -> tuple[str, ...]:
        """The extension OIDs of :attr:`extension_requests`, in order."""
        return tuple(ext.oid for ext in self.extension_requests)

    @property
    def template(self) -> CertificationRequestTemplate | None:
        """The RFC 9908 CertificationRequestInfoTemplate, if one is present
        and well formed; None otherwise (a malformed one is ignored, as
        unknown content is)."""
        for entry in self.attributes:
            if entry.oid == ID_AA_CERTIFICATION_REQUEST_INFO_TEMPLATE and entry.values:
                return _decode_template(entry.values[0])
        return None


# --------------------------------------------------------------------------
# Interpreting values


def _key_hint(algorithm: str, values: Sequence[bytes]) -> KeyTypeHint:
    curve: str | None = None
    key_size: int | None = None
    for value in values:
        try:
            parsed = core.load(value)
            if isinstance(parsed, core.ObjectIdentifier) and curve is None:
                curve = parsed.dotted
            elif isinstance(parsed, core.Integer) and key_size is None:
                key_size = int(parsed.native)
        except (ValueError, TypeError, KeyError, OverflowError):
            continue
    return KeyTypeHint(algorithm, curve, key_size)


def _extension_request_value(value: bytes) -> list[RequestedExtension]:
    try:
        parsed = core.load(value)
        if isinstance(parsed, core.ObjectIdentifier):
            # RFC 7030 4.5.2's original (incorrect, RFC 9908 5.2) form.
            return [RequestedExtension(parsed.dotted)]
        extensions = asn1.VALUE_SPECS[ID_EXTENSION_REQUEST].load(value, strict=True)
        return [
            RequestedExtension(
                ext["extn_id"].dotted,
                bool(ext["critical"].native),
                bytes(ext["extn_value"].contents),
            )
            for ext in extensions
        ]
    except (ValueError, TypeError, KeyError, OverflowError, AttributeError):
        return []


def _extension_templates(exts: Any) -> list[RequestedExtension]:
    found = []
    for ext in exts:
        raw = ext["extn_value"]
        found.append(
            RequestedExtension(
                ext["extn_id"].dotted,
                bool(ext["critical"].native),
                None if isinstance(raw, core.Void) else bytes(raw.native),
            )
        )
    return found


def _rsa_modulus_bits(public_key: bytes) -> int | None:
    try:
        return int(keys.RSAPublicKey.load(public_key, strict=True)["modulus"].native.bit_length())
    except (ValueError, TypeError, KeyError, OverflowError, AttributeError):
        return None


def _decode_template(value: bytes) -> CertificationRequestTemplate | None:
    try:
        with decoding("CertificationRequestInfoTemplate"):
            tpl = asn1.CertificationRequestInfoTemplate.load(value, strict=True)
            version = int(tpl["version"].native)

            subject = None
            if not isinstance(tpl["subject"], core.Void):
                subject = tuple(
                    tuple(
                        SubjectAttributeTemplate(
                            atv["type"].dotted,
                            None if isinstance(atv["value"], core.Void) else atv["value"].dump(),
                        )
                        for atv in rdn
                    )
                    for rdn in tpl["subject"].chosen
                )

            key_type = None
            key_parameters = None
            spki = tpl["subject_pk_info"]
            if not isinstance(spki, core.Void):
                algorithm = spki["algorithm"]["algorithm"].dotted
                params = spki["algorithm"]["parameters"]
                curve = None
                if not isinstance(params, core.Void):
                    key_parameters = params.dump()
                    inner = params.parse()
                    if isinstance(inner, core.ObjectIdentifier):
                        curve = inner.dotted
                key_size = None
                placeholder = spki["subject_public_key"]
                if algorithm in (ID_RSA_ENCRYPTION, ID_RSASSA_PSS) and not isinstance(
                    placeholder, core.Void
                ):
                    # RFC 9908 3.4: "a placeholder public key value of the
                    # desired RSA modulus length".
                    key_size = _rsa_modulus_bits(placeholder.native)
                key_type = KeyTypeHint(algorithm, curve, key_size)

            extensions: list[RequestedExtension] = []
            attributes = []
            for attr in tpl["attributes"]:
                oid = attr["type"].dotted
                raw_values = tuple(v.dump() for v in asn1.SetOfAny.load(attr["values"].dump()))
                attributes.append(RequestedAttribute(oid, raw_values))
                if oid == ID_AA_EXTENSION_REQ_TEMPLATE:
                    for exts in attr["values"]:
                        extensions.extend(_extension_templates(exts))
                elif oid == ID_EXTENSION_REQUEST:
                    for value_der in raw_values:
                        extensions.extend(_extension_request_value(value_der))
    except (DecodeError, LocalProtocolError):
        return None
    return CertificationRequestTemplate(
        version=version,
        subject=subject,
        key_type=key_type,
        key_parameters=key_parameters,
        extensions=tuple(extensions),
        attributes=tuple(attributes),
    )


# --------------------------------------------------------------------------
# Codec


def encode_csrattrs(attrs: CsrAttributes | Sequence[Entry]) -> bytes:
    """Encode CSR attributes as DER ``CsrAttrs``.

    An empty SEQUENCE is valid: "When the server encodes CSR Attributes as
    an empty SEQUENCE, it means that the server has no specific additional
    information it desires" (RFC 7030 4.5.2).

    Args:
        attrs: a :class:`CsrAttributes` or a sequence of entries.

    Returns:
        DER bytes (base64-encode them for the body). Each attribute's values
        SET is sorted as DER requires; entry order is kept.

    Raises:
        LocalProtocolError: an entry is not a RequiredOID/RequestedAttribute.
    """
    if not isinstance(attrs, CsrAttributes):
        if isinstance(attrs, (bytes, str)):
            raise LocalProtocolError("encode_csrattrs takes CsrAttributes, not bytes/str")
        attrs = CsrAttributes(tuple(attrs))
    children = []
    for entry in attrs.entries:
        if isinstance(entry, RequiredOID):
            children.append(asn1.AttrOrOID(name="oid", value=core.ObjectIdentifier(entry.oid)))
        else:
            values = asn1.SetOfAny([core.Any.load(v) for v in entry.values])
            attribute = asn1.Attribute(
                {"type": core.ObjectIdentifier(entry.oid), "values": values}
            )
            children.append(asn1.AttrOrOID(name="attribute", value=attribute))
    try:
        return bytes(asn1.CsrAttrs(children).dump())
    except (ValueError, TypeError) as exc:  # an invalid OID arc, say
        raise LocalProtocolError(f"cannot encode CSR attributes: {exc}") from exc


def decode_csrattrs(
    der: bytes,
    *,
    max_size: int = MAX_DER_SIZE,
    max_entries: int = MAX_CSRATTRS_ENTRIES,
) -> CsrAttributes:
    """Decode a DER ``CsrAttrs`` (RFC 7030 4.5.2, RFC 9908).

    Unknown OIDs and attributes are kept, never fatal: "The client MUST
    ignore any OID or attribute it does not recognize" (RFC 7030 4.5.2).

    Args:
        der: the DER bytes (already base64-decoded).
        max_size: largest input accepted, checked before parsing.
        max_entries: most AttrOrOID entries accepted.

    Returns:
        A :class:`CsrAttributes` with every entry in order.

    Raises:
        MessageTooLarge: over *max_size* or *max_entries*.
        DecodeError: not a well-formed CsrAttrs.
    """
    seq = load_der(asn1.CsrAttrs, der, _WHAT, max_size)
    entries: list[Entry] = []
    try:
        _decode_entries(seq, entries, max_entries)
    except LocalProtocolError as exc:  # a value class refused what we parsed
        raise DecodeError(f"invalid {_WHAT}: {exc}") from exc
    return CsrAttributes(tuple(entries))


def _decode_entries(seq: Any, entries: list[Entry], max_entries: int) -> None:
    with decoding(_WHAT):
        count = len(seq)
        if count > max_entries:
            raise MessageTooLarge(
                f"{_WHAT} hold {count} entries, over the limit of {max_entries}"
            )
        for choice in seq:
            chosen = choice.chosen
            if choice.name == "oid":
                entries.append(RequiredOID(chosen.dotted))
            else:
                values = tuple(bytes(v.dump()) for v in chosen["values"])
                for value in values:
                    # Force the parse of each value's header so a truncated
                    # value fails here, not later in a view.
                    core.Any.load(value, strict=True).contents  # noqa: B018
                entries.append(RequestedAttribute(chosen["type"].dotted, values))
