"""`stemjepa eval ...`: the evaluation subcommands (retrieval, compare, beats), each in its own module."""
from __future__ import annotations

import importlib

SUBCOMMANDS = ["eval_retrieval", "eval_beats"]


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a checkpoint (retrieval benchmark, beat-tracking probe)")
    sub = parser.add_subparsers(dest="eval_command", metavar="TASK")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"stemjepa.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"stemjepa.cli.{name}":
                continue
            raise
        module.add_parser(sub)
    parser.set_defaults(func=lambda args: parser.print_help() or 1)
