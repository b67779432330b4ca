"""The ``estproto`` command line (also ``python -m estproto``).

Commands::

    estproto serve --data-dir DIR --host 127.0.0.1 --port 8443   run an EST server on the embedded CA
    estproto ca init|add-user|list-users|remove-user|list|approve|reject|revoke|fingerprint|issue --data-dir DIR ...
    estproto cacerts|enroll|reenroll|serverkeygen|csrattrs|fullcmc URL ...   the EST client
    estproto demo                                                 the whole job in one command

Scripting contract (external test harnesses rely on exactly this, issue 4):

* ``estproto ca init --data-dir DIR --hostname 127.0.0.1`` is idempotent;
  ``serve`` does the same on its first start.
* ``ESTPROTO_PASSWORD=secret estproto ca add-user --data-dir DIR NAME``.
* ``estproto serve --data-dir DIR --host 127.0.0.1 --port PORT`` accepts
  Basic/Digest users and client certificates, and does not require
  proof-of-possession linking; it prints one line
  ``listening on https://HOST:PORT/.well-known/est`` (flushed) when ready.
* ``DIR/ca.pem`` holds what a client needs to trust both the TLS endpoint
  and the issued chain.

Exit codes (:class:`ExitCode`): 0 success; 1 usage error (bad arguments,
unreadable file, no password); 2 refused (HTTP 4xx/5xx or CMC failure from
the server, or a failed ``ca`` operation); 3 TLS failure (server not
trusted: chain, name or fingerprint); 4 still pending after the allowed
retries; 5 authentication failed (401); 6 network error (connect, bind,
timeout); 7 protocol error in the server's answer.

Strategy: argparse with one module per command family (:mod:`._serve`,
:mod:`._ca`, :mod:`._client`); heavy imports (trio, the CA) happen inside
the commands so ``--help`` stays quick. Errors travel as
:class:`CLIError` to :func:`main`, which prints one line and returns the code.
"""

from __future__ import annotations

import argparse
import os
import sys

from ._common import EXIT_CODES_HELP, CLIError, ExitCode, Parser

__all__ = ["main", "build_parser", "ExitCode", "CLIError"]


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks; a little wider help column."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


_DESCRIPTION = """\
estproto: EST (RFC 7030, Enrollment over Secure Transport), server and client.

Start here:
  estproto demo                     the whole job in one command: a CA, a server,
                                    a fresh key enrolled over TLS, the result checked"""

_EPILOG = f"""\
a server in three commands:
  estproto ca init --data-dir ./est-ca --hostname 127.0.0.1
  ESTPROTO_PASSWORD=secret estproto ca add-user --data-dir ./est-ca alice
  estproto serve --data-dir ./est-ca --host 127.0.0.1 --port 8443

and a client enrolling against it:
  ESTPROTO_PASSWORD=secret estproto enroll https://127.0.0.1:8443/.well-known/est \\
      --cacert ./est-ca/ca.pem --user alice --subject CN=device-1 \\
      --key-out device.key --out device.pem

'estproto COMMAND --help' explains each command, with examples.

{EXIT_CODES_HELP}"""


def _cmd_demo(args: argparse.Namespace) -> int:
    from .._demo import run

    return run()


def build_parser() -> argparse.ArgumentParser:
    """The whole ``estproto`` argument parser."""
    from . import _ca, _client, _serve

    from .. import __version__

    parser = Parser(prog="estproto", description=_DESCRIPTION, epilog=_EPILOG, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"estproto {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="run the whole EST job locally: CA, server, enrollment, checks",
        description="In a temporary directory: create a CA, start the EST server on "
                    "127.0.0.1, add a user, fetch the CA by fingerprint, enroll a fresh "
                    "key over real TLS, verify the certificate against ca.pem, stop.",
        epilog="example:\n  estproto demo", formatter_class=_Formatter,
    )
    demo.set_defaults(func=_cmd_demo)
    # Listed here for --help; main() hands its arguments to the suite's own parser.
    commands.add_parser(
        "conformance", add_help=False,
        help="check any EST server against RFC 7030/8951 (see 'estproto conformance --help')",
    )
    _serve.add_parser(commands, _Formatter)
    _ca.add_parser(commands, _Formatter)
    _client.add_parsers(commands, _Formatter)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).
    """
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["conformance"]:
        from ..conformance import main as conformance_main

        return conformance_main(arguments[1:])
    parser = build_parser()
    try:
        if arguments[:1] == ["serve"]:
            from ._serve import with_config_file

            arguments = ["serve", *with_config_file(arguments[1:])]
        args = parser.parse_args(arguments)
        return int(args.func(args))
    except CLIError as exc:
        print(f"estproto: {exc.message}", file=sys.stderr)
        return int(exc.code)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `estproto ca list | head`: the reader left. Say nothing more, and
        # keep Python from complaining while it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (PermissionError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        # A file or directory the command was pointed at (a data dir, a
        # key): one line naming it, not a traceback.
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"estproto: {where}{exc.strerror or exc}", file=sys.stderr)
        return int(ExitCode.USAGE)
