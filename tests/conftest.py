"""Shared pytest configuration and fixtures."""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING, Iterator

import pytest
from hypothesis import HealthCheck, settings

from server_thread import FRAMEWORKS

# Bounded so the whole suite stays fast; long fuzzing runs live outside it.
settings.register_profile(
    "default", max_examples=150, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("fuzz", max_examples=20_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

if TYPE_CHECKING:
    from postgres_server import PostgresServer


def require_tool(name: str) -> str:
    """Return the path of external tool *name*, or skip the test.

    Under ``CI=true`` a missing tool is a failure, not a skip: ``.ci/run``
    installs every tool the tests use, so a skip there would hide a gap.
    """
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is required under CI=true but is not installed")
        pytest.skip(f"{name} is not installed")
    return path


@pytest.fixture
def openssl() -> str:
    return require_tool("openssl")


@pytest.fixture
def strongswan_pki() -> str:
    return require_tool("pki")


@pytest.fixture(scope="module", params=FRAMEWORKS)
def server_framework(request: pytest.FixtureRequest) -> str:
    """The server adapter (``estproto serve --framework``) the real peers of
    an interop module talk to: the module's tests run once per framework."""
    return str(request.param)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator["PostgresServer"]:
    """One real PostgreSQL server for the session (started on first use)."""
    from postgres_server import PostgresServer

    server = PostgresServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_url(postgres_server: "PostgresServer", monkeypatch: pytest.MonkeyPatch,
                 request: pytest.FixtureRequest) -> str:
    """A new empty database on the session's server; PGPASSWORD set."""
    import re
    import secrets

    monkeypatch.setenv("PGPASSWORD", postgres_server.password)
    name = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:40] + "_" + secrets.token_hex(3)
    return postgres_server.create_database(name)
