"""The embedded CA: backend interface, and the parts the default backend is made of.

* :mod:`.backend`: :class:`CABackend`, the interface an EST server calls
  (replace it to put estproto in front of your own PKI), and
  :func:`make_handler`, which turns a backend into the request handler the
  trio and asyncio servers run.
* :mod:`.authority`: :class:`EmbeddedCA`, the default backend: the
  composition of the parts below, with authorization and issuing.
* :mod:`.data_dir`: the data directory (create, extend, load).
* :mod:`.store`: :class:`Store`, the record store's interface, and its records.
* :mod:`.sqlite_store`: :class:`SQLiteStore`, the default (one file, WAL,
  synchronous FULL, versioned schema).
* :mod:`.postgres_store`: :class:`PostgreSQLStore`, one database shared by
  several front-ends.
* :mod:`.group_commit`: how both batch concurrent writes into one commit.
* :mod:`.signer`: :class:`Signer`, who signs for the issuing CA
  (:class:`KeySigner` by default: a key file, or a key in a PKCS#11 token,
  :class:`Pkcs11Settings`).
* :mod:`.policy`: :class:`Profile` and :class:`IssuingPolicy`, what an
  issued certificate holds.
* :mod:`.users`: :class:`UserDirectory`, HTTP users and their checks.
* :mod:`.approvals`: :class:`Approvals`, manual approval (RFC 7030 4.2.3).
* :mod:`.revocation`: :class:`Revocation`, revoking and what still counts.
* :mod:`.keygen`: the key /serverkeygen makes and whom it is encrypted to.
* :mod:`.keys`, :mod:`.errors`: key kinds and PEM files; CAError.
"""

from .approvals import Approvals
from .authority import CA_FILES, CASettings, EmbeddedCA, KeyType, Profile
from .errors import CAError, SignerError
from .policy import IssuingPolicy
from .revocation import Revocation
from .pkcs11_token import PIN_ENV, Pkcs11Settings
from .signer import KeyFileSigner, KeySigner, Signer
from .users import UserDirectory
from .backend import CABackend, Handler, Principal, make_handler
from .sqlite_store import SCHEMA_VERSION, SQLiteStore
from .store import (
    AuditRecord,
    DuplicateSerialError,
    IssuedRecord,
    NotFoundError,
    PendingRecord,
    PendingState,
    SchemaVersionError,
    StateError,
    Store,
    StoreError,
    UserRecord,
)

__all__ = [
    "CABackend", "Principal", "Handler", "make_handler",
    "EmbeddedCA", "CASettings", "Profile", "CAError", "KeyType", "CA_FILES",
    "SignerError", "Signer", "KeySigner", "KeyFileSigner", "Pkcs11Settings", "PIN_ENV", "IssuingPolicy", "UserDirectory", "Approvals", "Revocation",
    "Store", "SQLiteStore", "StoreError", "SchemaVersionError", "DuplicateSerialError",
    "NotFoundError", "StateError", "PendingState", "IssuedRecord", "PendingRecord",
    "UserRecord", "AuditRecord", "SCHEMA_VERSION",
]
