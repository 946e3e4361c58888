"""`stemjepa eval ...`: the evaluation subcommands (retrieval, compare, beats), each in its own module."""
from __future__ import annotations

SUBCOMMANDS = ["eval_retrieval", "eval_beats"]


def add_parser(subparsers) -> None:
    from .main import add_subcommands

    parser = subparsers.add_parser("eval", help="evaluate a model (retrieval benchmark, beat-tracking probe)",
                                   description="Evaluate a model: a built-in name, a .safetensors export or a .ckpt "
                                               "checkpoint (see `stemjepa eval TASK --help`).")
    sub = parser.add_subparsers(dest="eval_command", metavar="TASK")
    add_subcommands(sub, SUBCOMMANDS)
    parser.set_defaults(func=lambda args: parser.print_help() or 1)
