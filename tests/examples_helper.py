"""Loading the scripts in examples/ as modules, for the tests that drive them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(stem: str) -> ModuleType:
    """Import ``examples/<stem>.py`` as the module ``example_<stem>``."""
    spec = importlib.util.spec_from_file_location(f"example_{stem}", EXAMPLES / f"{stem}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered before running it: dataclasses and pickling look it up.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
