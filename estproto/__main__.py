"""``python -m estproto``: the command line (see :mod:`estproto._demo`)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="estproto",
        description="estproto: EST (RFC 7030) enrollment, sans-I/O core.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "demo",
        help="enroll a fresh key against an in-memory EST server over real TLS",
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import run

        return run()
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
