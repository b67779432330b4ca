"""SoftHSM2 for the tests: a token directory and config of its own in a
temporary directory (SOFTHSM2_CONF points at it), tokens made with
``softhsm2-util --init-token``. Nothing outside the directory is touched.

SoftHSM reads its token directory when a process first calls
C_Initialize: a token made later is invisible to that process, so tests
make their tokens before anything opens one in-process.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import require_tool

__all__ = ["SoftHSM", "PIN", "module_path"]

PIN = "4321-user"
SO_PIN = "8765-so"

_MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
            "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so")


def module_path() -> str:
    """SoftHSM2's PKCS#11 library, or skip (fail under CI=true)."""
    require_tool("softhsm2-util")
    for path in _MODULES:
        if os.path.exists(path):
            return path
    if os.environ.get("CI") == "true":
        pytest.fail("libsofthsm2.so is required under CI=true but is not installed")
    pytest.skip("libsofthsm2.so is not installed")


class SoftHSM:
    def __init__(self, root: Path) -> None:
        self.module = module_path()
        self.tokens = root / "tokens"
        self.tokens.mkdir(parents=True)
        self.conf = root / "softhsm2.conf"
        self.conf.write_text(f"directories.tokendir = {self.tokens}\n"
                             "objectstore.backend = file\nlog.level = ERROR\n")

    @property
    def env(self) -> dict[str, str]:
        return {"SOFTHSM2_CONF": str(self.conf)}

    def init_token(self, label: str, pin: str = PIN) -> None:
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label,
                        "--pin", pin, "--so-pin", SO_PIN],
                       env={**os.environ, **self.env}, check=True, capture_output=True, timeout=60)
