"""estproto: a sans-I/O implementation of EST (RFC 7030, RFC 8951).

The package is layered like the protocol: :mod:`estproto.codecs` turns every
EST payload into bytes and back; the connection objects (server and client)
stack EST over HTTP/1.1 (h11) over TLS (pyOpenSSL memory BIOs); the trio and
asyncio adapters only move bytes between sockets and those objects.
"""

from ._errors import (
    BadSignature,
    DecodeError,
    LocalProtocolError,
    MessageTooLarge,
    ProtocolError,
    RemoteProtocolError,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "BadSignature",
    "DecodeError",
    "LocalProtocolError",
    "MessageTooLarge",
    "ProtocolError",
    "RemoteProtocolError",
]
