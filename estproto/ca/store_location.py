"""Where a CA's records live, as one string: the ``--store`` flag and the
``store`` entry of config.json.

* unset: the SQLite file DIR/estproto.db (the embedded default);
* ``postgresql://[user@]host[:port]/dbname[?options]`` (or ``postgres://``):
  :class:`~estproto.ca.postgres_store.PostgreSQLStore`;
* anything else: the path of an SQLite file.

A location never holds a password: it is printed, logged and written to
config.json, and a flag shows in the process list. libpq takes the password
from ``PGPASSWORD`` or a ``~/.pgpass`` file (``PGPASSFILE``) instead.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from .errors import CAError
from .sqlite_store import SQLiteStore
from .store import Store

__all__ = ["check_location", "is_postgresql", "open_store"]

_SCHEMES = ("postgresql", "postgres")


def is_postgresql(location: str) -> bool:
    return urllib.parse.urlsplit(location).scheme.lower() in _SCHEMES


def check_location(location: str) -> str:
    """*location* if it is usable, else :class:`CAError` saying why."""
    if not location or location != location.strip() or any(ord(c) < 0x20 for c in location):
        raise CAError(f"store location {location!r} is empty or has spaces or control characters")
    if not is_postgresql(location):
        if "://" in location:
            raise CAError(f"unknown store location {location.split('://')[0]}://... "
                          "(postgresql://HOST/DB, or a path to an SQLite file)")
        return location
    try:
        parts = urllib.parse.urlsplit(location)
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise CAError(f"unusable PostgreSQL URL: {exc}") from None
    query = urllib.parse.parse_qs(parts.query)
    if parts.password is not None or "password" in query:
        raise CAError("the store URL must not hold a password (it would show in the process "
                      "list, logs and config.json): set PGPASSWORD or use a ~/.pgpass file")
    if not parts.path.strip("/"):
        raise CAError("the store URL names no database (postgresql://HOST/DBNAME)")
    return location


def open_store(location: str | None, default: Path, *, group_commit: bool = True) -> Store:
    """The store at *location* (None: the SQLite file *default*).

    Raises:
        CAError: the location is unusable, or PostgreSQL support is not installed.
        StoreError: the store cannot be opened.
    """
    if location is None:
        return SQLiteStore(default, group_commit=group_commit)
    check_location(location)
    if not is_postgresql(location):
        return SQLiteStore(Path(location), group_commit=group_commit)
    try:
        from .postgres_store import PostgreSQLStore
    except ImportError as exc:
        raise CAError(str(exc)) from None
    return PostgreSQLStore(location, group_commit=group_commit)
