"""The README's promises: its snippets run, and .ci/run runs its test command."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_python_snippets_run() -> None:
    blocks = _blocks("python")
    assert blocks, "the README should show a runnable example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})


def test_shown_snippets_compile_and_their_imports_exist() -> None:
    # ```py blocks need a live server, so they are shown, not run; what
    # they import and their syntax must still be real.
    blocks = _blocks("py")
    assert blocks
    for block in blocks:
        compile(block, "README.md", "exec")
        imports = "\n".join(line for line in block.splitlines() if line.startswith(("from ", "import ")))
        exec(compile(imports, "README.md", "exec"), {"__name__": "readme"})


def test_ci_runs_the_readme_test_command() -> None:
    commands = [line.strip() for block in _blocks("sh") for line in block.splitlines() if line.strip()]
    test_commands = [c for c in commands if "pytest" in c]
    assert len(test_commands) == 1
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_commands[0] in [line.strip() for line in ci]


def test_main_job_command_runs() -> None:
    commands = [line.strip() for block in _blocks("sh") for line in block.splitlines() if line.strip()]
    demo = [c for c in commands if "estproto demo" in c]
    assert len(demo) == 1
    # The venv part is what a fresh machine needs; here the package is installed,
    # so run the final step with this interpreter.
    result = subprocess.run(
        [sys.executable, "-m", "estproto", "demo"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "BEGIN CERTIFICATE" in result.stdout
    assert "the certificate holds the key we generated: True" in result.stdout
