"""The embedded CA: backend interface, issuing, and its SQLite store.

* :mod:`.backend`: :class:`CABackend`, the interface an EST server calls
  (replace it to put estproto in front of your own PKI), and
  :func:`make_handler`, which turns a backend into the request handler the
  trio and asyncio servers run.
* :mod:`.authority`: :class:`EmbeddedCA`, the default backend: a CA in a
  data directory, with users, manual approval, serverkeygen and fullcmc.
* :mod:`.store`: :class:`Store` and :class:`SQLiteStore` (WAL, synchronous
  FULL, group commit, versioned schema).
"""

from .authority import CA_FILES, CAError, CASettings, EmbeddedCA, KeyType, Profile
from .backend import CABackend, Handler, Principal, make_handler
from .store import (
    SCHEMA_VERSION,
    AuditRecord,
    DuplicateSerialError,
    IssuedRecord,
    NotFoundError,
    PendingRecord,
    PendingState,
    SchemaVersionError,
    SQLiteStore,
    StateError,
    Store,
    StoreError,
    UserRecord,
)

__all__ = [
    "CABackend", "Principal", "Handler", "make_handler",
    "EmbeddedCA", "CASettings", "Profile", "CAError", "KeyType", "CA_FILES",
    "Store", "SQLiteStore", "StoreError", "SchemaVersionError", "DuplicateSerialError",
    "NotFoundError", "StateError", "PendingState", "IssuedRecord", "PendingRecord",
    "UserRecord", "AuditRecord", "SCHEMA_VERSION",
]
