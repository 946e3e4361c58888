"""The `stemjepa` command: one entry point, one module per subcommand.

Each module in COMMANDS defines `add_parser(subparsers)` which registers its sub-parser and sets `func=run(args)`.
A subcommand module that cannot be imported is an error naming it: skipping it would hide a broken install behind
"invalid choice".
User-facing errors (StemJepaError) are printed as one line and exit with status 2, never as a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .. import __version__
from ..errors import StemJepaError

COMMANDS = ["fit", "embed", "synth", "prepare", "eval", "index", "query", "serve", "demo", "models", "export"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stemjepa", description="Zero-shot musical stem retrieval with JEPAs.")
    parser.add_argument("--version", action="version", version=f"stemjepa {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="more logging, and full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_subcommands(sub, COMMANDS)
    return parser


def add_subcommands(subparsers, modules) -> None:
    """Register the sub-parser of each `stemjepa.cli.<module>`; one that fails to import raises an ImportError naming it."""
    for name in modules:
        module_name = f"stemjepa.cli.{name}"
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - whatever broke, the message must say which subcommand
            raise ImportError(f"{module_name}: the subcommand module cannot be imported "
                              f"({type(exc).__name__}: {exc})", name=module_name) from exc
        module.add_parser(subparsers)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setLevel(logging.INFO if args.verbose else logging.WARNING)  # also for records propagated from library loggers
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler])
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except StemJepaError as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk or a folder we may not write to, wherever it happens: one line, not a traceback
        from ..fsutil import USER_ERRNOS, describe_write_error

        if args.verbose or exc.errno not in USER_ERRNOS:
            raise
        print(f"error: {describe_write_error(exc.filename or 'a file', exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
