"""``estproto serve --config FILE``: serve's settings from a file.

The file is INI (Python's ``configparser``: it is in every supported
Python, where ``tomllib`` is not) with one ``[serve]`` section whose keys
are serve's long flag names without the dashes::

    [serve]
    data-dir = /var/lib/estproto        # relative: to the file's directory
    host = 0.0.0.0
    port = 8443
    hostname = est.example, 192.0.2.10  # repeatable flags: comma-separated
    manual-approval = true              # on/off flags: true or false
    retry-after = 30

Strategy: the settings become ordinary flags placed *before* the command
line's own, so that argparse checks them exactly as if typed, and a flag
given on the command line wins (the last value counts; a repeatable flag
given there replaces the file's list instead of adding to it). A key that
is not a serve flag, or a value its flag refuses, stops ``serve`` with the
file and key named: a typo in a config file must not pass silently.
"""

from __future__ import annotations

import argparse
import configparser
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ._common import CLIError, ExitCode

__all__ = ["Setting", "SECTION", "apply_config_file"]

#: The one section the file has.
SECTION = "serve"

#: Flags a file cannot set: the file itself, and the internal worker flag.
_NOT_IN_FILES = frozenset({"config", "reuse-port"})

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


@dataclass(frozen=True)
class Setting:
    """One serve flag, as a config file may give it.

    Attributes:
        name: the long flag without its dashes (``retry-after``).
        kind: ``"switch"`` (on/off), ``"list"`` (repeatable), ``"count"``
            (``-v``) or ``"value"``.
        action: the argparse action, for its type and choices.
    """

    name: str
    kind: str
    action: argparse.Action


def _given_on_command_line(argv: Sequence[str], setting: Setting) -> bool:
    flags = setting.action.option_strings
    return any(arg in flags or any(arg.startswith(f + "=") for f in flags if f.startswith("--"))
               for arg in argv)


def _config_path(argv: Sequence[str]) -> str | None:
    path = None
    for i, arg in enumerate(argv):
        if arg == "--config":
            if i + 1 >= len(argv):
                raise CLIError(ExitCode.USAGE, "--config needs a FILE")
            path = argv[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
    return path


def _read(path: str) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as exc:
        raise CLIError(ExitCode.USAGE, f"--config {path}: {exc.strerror or exc}") from None
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise CLIError(ExitCode.USAGE, f"--config {path}: not an INI file ({exc})") from None
    other = [s for s in parser.sections() if s != SECTION]
    if other:
        raise CLIError(ExitCode.USAGE, f"--config {path}: unknown section [{other[0]}] "
                                       f"(only [{SECTION}])")
    if not parser.has_section(SECTION):
        raise CLIError(ExitCode.USAGE, f"--config {path}: no [{SECTION}] section")
    return dict(parser.items(SECTION))


def _check(path: str, setting: Setting, value: str) -> None:
    """The value as its flag would judge it, but naming the file and key."""
    action = setting.action
    try:
        converted = action.type(value) if callable(action.type) else value
    except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
        raise CLIError(ExitCode.USAGE, f"--config {path}: {setting.name}: {exc}") from None
    if action.choices is not None and converted not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise CLIError(ExitCode.USAGE, f"--config {path}: {setting.name} = {value!r}: "
                                       f"expected one of {choices}")


def _flags(path: str, setting: Setting, value: str) -> list[str]:
    flag = next(f for f in setting.action.option_strings if f.startswith("--"))
    if setting.kind == "switch":
        word = value.strip().lower()
        if word not in _TRUE | _FALSE:
            raise CLIError(ExitCode.USAGE, f"--config {path}: {setting.name} = {value!r}: "
                                           "expected true or false")
        return [flag] if word in _TRUE else []
    if setting.kind == "count":
        if not value.strip().isdigit() or int(value) > 3:
            raise CLIError(ExitCode.USAGE, f"--config {path}: {setting.name} = {value!r}: "
                                           "expected 0 to 3")
        return [flag] * int(value)
    values = [v.strip() for v in value.split(",")] if setting.kind == "list" else [value.strip()]
    if not all(values):
        raise CLIError(ExitCode.USAGE, f"--config {path}: {setting.name}: empty value")
    flags: list[str] = []
    for v in values:
        if setting.name == "data-dir" and not Path(v).is_absolute():
            # Relative to the file, so a unit file's working directory
            # does not decide which CA is served.
            v = str(Path(path).resolve().parent / v)
        _check(path, setting, v)
        flags += [flag, v]
    return flags


def apply_config_file(argv: Sequence[str], settings: Sequence[Setting]) -> list[str]:
    """*argv* (serve's arguments) with its ``--config`` file's settings put
    in front as flags; *argv* unchanged when there is no ``--config``.

    Raises:
        CLIError: USAGE naming the file (and key) for an unreadable file,
            an unknown key or a bad value.
    """
    path = _config_path(argv)
    if path is None:
        return list(argv)
    by_name = {s.name: s for s in settings if s.name not in _NOT_IN_FILES}
    flags: list[str] = []
    for key, value in _read(path).items():
        name = key.strip().lower().replace("_", "-")
        setting = by_name.get(name)
        if setting is None:
            known = ", ".join(sorted(by_name))
            raise CLIError(ExitCode.USAGE, f"--config {path}: unknown setting {key!r} (known: {known})")
        these = _flags(path, setting, value)  # checked even when overridden
        if not _given_on_command_line(argv, setting):
            flags += these  # else the command line wins
    return flags + list(argv)
