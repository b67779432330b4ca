"""Shared plumbing for the DER decoders: size checks and error translation.

asn1crypto parses lazily: ``Spec.load()`` only reads the outer header, and a
malformed inner field raises ``ValueError``/``TypeError``/``KeyError``/... when
it is first touched. So every decoder reads all the fields it exposes inside
:func:`decoding`, which turns any of those into our :class:`DecodeError`.
``RecursionError`` is caught too: asn1crypto recurses once per nesting level,
and the size limit alone still allows a deeply nested bomb.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from cryptography.exceptions import InternalError, UnsupportedAlgorithm
from cryptography.x509 import InvalidVersion

from .._errors import DecodeError, MessageTooLarge

__all__ = ["decoding", "check_size", "load_der"]

# Everything asn1crypto (and cryptography's loaders) raise on malformed input.
_LOWER_LAYER_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    OverflowError,
    RecursionError,
    AttributeError,
    NotImplementedError,
    # cryptography's loaders: not ValueErrors, but still "this input is bad".
    InternalError,
    UnsupportedAlgorithm,
    InvalidVersion,
)


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


@contextmanager
def decoding(what: str) -> Iterator[None]:
    """Translate lower-layer parse errors raised inside the block.

    Args:
        what: names the thing being decoded, e.g. ``"PKCS#10 request"``; it
            starts the error message.

    Raises:
        DecodeError: for any asn1crypto/cryptography parse error. Our own
            :class:`~estproto.DecodeError` subclasses pass through unchanged.
    """
    try:
        yield
    except DecodeError:
        raise
    except _LOWER_LAYER_ERRORS as exc:
        raise DecodeError(f"invalid {what}: {_first_line(exc)}") from exc


def check_size(data: bytes, max_size: int, what: str) -> None:
    """Raise :class:`MessageTooLarge` if *data* is longer than *max_size*."""
    if len(data) > max_size:
        raise MessageTooLarge(
            f"{what} is {len(data)} bytes, over the {max_size}-byte limit"
        )


def load_der(spec: Any, data: bytes, what: str, max_size: int) -> Any:
    """Size-check *data*, then load it as the asn1crypto type *spec*.

    ``strict=True`` makes asn1crypto reject trailing bytes after the value.
    The returned object is still lazily parsed: read its fields inside
    :func:`decoding`.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes, not {type(data).__name__}")
    check_size(data, max_size, what)
    if not data:
        raise DecodeError(f"invalid {what}: empty")
    with decoding(what):
        return spec.load(bytes(data), strict=True)
