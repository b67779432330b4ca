"""Type checks of event fields, run when an event is constructed.

h11 refuses a malformed event in its constructor, so one cannot exist; our
events do the same. Each dataclass field's annotation is compiled, once per
class, into a check: ``CertificateResponse(certificate=None)`` raises
:class:`LocalProtocolError` instead of failing deep inside an encoder. Value
rules beyond the type (a label's characters, a status range) live in each
event's ``__post_init__``.

A list given where a tuple is declared is accepted and stored as a tuple:
the field stays immutable and hashable, the caller's list is not kept.
"""

from __future__ import annotations

import dataclasses
import datetime
import typing
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from ._errors import LocalProtocolError

__all__ = ["check_fields"]

#: Returns the value to store (a list made a tuple), or raises.
Check = Callable[[str, Any], Any]

#: Per class: (attribute, name for messages, check).
_COMPILED: dict[type, tuple[tuple[str, str, Check], ...]] = {}


def check_fields(obj: object) -> None:
    """Check every dataclass field of *obj* against its annotation.

    Raises:
        LocalProtocolError: a field holds a value of the wrong type.
    """
    cls = type(obj)
    checks = _COMPILED.get(cls)
    if checks is None:
        checks = _COMPILED[cls] = _compile(cls)
    for attribute, name, check in checks:
        value = getattr(obj, attribute)
        stored = check(name, value)
        if stored is not value:
            object.__setattr__(obj, attribute, stored)


def _compile(cls: type) -> tuple[tuple[str, str, Check], ...]:
    return tuple(
        (f.name, f"{cls.__name__}.{f.name}", _annotation(str(f.type).strip("'\"")))
        for f in dataclasses.fields(cls)
    )


def _split_top(text: str, separator: str) -> list[str]:
    """*text* split at *separator* outside brackets."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        depth += c == "["
        depth -= c == "]"
        if c == separator and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


def _annotation(text: str) -> Check:
    alternatives = _split_top(text, "|")
    if len(alternatives) > 1:
        if all(_is_plain(a) for a in alternatives):
            return _plain_union(alternatives, text)
        return _union([_annotation(a) for a in alternatives], text)
    if text.startswith("tuple[") and text.endswith("]"):
        items = _split_top(text[len("tuple["):-1], ",")
        if len(items) == 2 and items[1] == "...":
            return _tuple_of(_annotation(items[0]), text)
        return _fixed_tuple([_annotation(i) for i in items], text)
    if text == "object":
        return lambda name, value: value
    if text == "None":
        return _instance((type(None),), text)
    if text == "int":
        return _integer
    return _instance(_named_types(text), text)


def _is_plain(text: str) -> bool:
    return not text.startswith("tuple[") and text != "object"


def _plain_union(alternatives: list[str], text: str) -> Check:
    """One isinstance for ``int | datetime.datetime``, ``str | None`` ...
    (the common case: no exception per field)."""
    types: tuple[type, ...] = ()
    for a in alternatives:
        types += (type(None),) if a == "None" else (int,) if a == "int" else _named_types(a)
    no_bool = "int" in alternatives and "bool" not in alternatives

    def check(name: str, value: Any) -> Any:
        if isinstance(value, types) and not (no_bool and isinstance(value, bool)):
            return value
        raise _fail(name, text, value)
    return check


def _named_types(text: str) -> tuple[type, ...]:
    # Imported here: these modules import the events themselves.
    from . import auth
    from ._est_server import Reply
    from ._events import ClientRequest, ConnectionFacts
    from .codecs import cmc, csrattrs, pkcs10

    known: dict[str, tuple[type, ...]] = {
        "str": (str,),
        "bool": (bool,),
        "bytes": (bytes,),
        "x509.Certificate": (x509.Certificate,),
        "datetime.datetime": (datetime.datetime,),
        "ConnectionFacts": (ConnectionFacts,),
        "ClientRequest": (ClientRequest,),
        "Reply": (Reply,),
        "CertificationRequest": (pkcs10.CertificationRequest,),
        "CsrAttributes": (csrattrs.CsrAttributes,),
        "FullPKIRequest": (cmc.FullPKIRequest,),
        "FullPKIResponse": (cmc.FullPKIResponse,),
        "BasicCredentials": (auth.BasicCredentials,),
        "DigestCredentials": (auth.DigestCredentials,),
        "PrivateKeyTypes": typing.get_args(PrivateKeyTypes),
    }
    if text not in known:
        raise TypeError(f"no field check for the annotation {text!r}")  # a bug in estproto
    return known[text]


def _fail(name: str, expected: str, value: object) -> LocalProtocolError:
    return LocalProtocolError(f"{name} must be {expected}, not {type(value).__name__}")


def _instance(types: tuple[type, ...], text: str) -> Check:
    def check(name: str, value: Any) -> Any:
        if not isinstance(value, types):
            raise _fail(name, text, value)
        return value
    return check


def _integer(name: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(name, "int", value)
    return value


def _union(checks: list[Check], text: str) -> Check:
    def check(name: str, value: Any) -> Any:
        for alternative in checks:
            try:
                return alternative(name, value)
            except LocalProtocolError:
                continue
        raise _fail(name, text, value)
    return check


def _tuple_of(item: Check, text: str) -> Check:
    def check(name: str, value: Any) -> Any:
        if type(value) is tuple and not value:
            return value  # the usual default: nothing to check item by item
        if not isinstance(value, (tuple, list)):
            raise _fail(name, text, value)
        items = tuple(item(f"{name}[{i}]", v) for i, v in enumerate(value))
        return value if isinstance(value, tuple) and all(a is b for a, b in zip(items, value)) else items
    return check


def _fixed_tuple(items: list[Check], text: str) -> Check:
    def check(name: str, value: Any) -> Any:
        if not isinstance(value, (tuple, list)) or len(value) != len(items):
            raise _fail(name, text, value)
        stored = tuple(c(f"{name}[{i}]", v) for i, (c, v) in enumerate(zip(items, value)))
        return value if isinstance(value, tuple) and all(a is b for a, b in zip(stored, value)) else stored
    return check
