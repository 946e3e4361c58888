"""argparse value types with ranges, so a bad option is refused at parse time (usage line, exit 2), never deep inside."""
from __future__ import annotations

import argparse


def _int(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} is not {what}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (steps, batch sizes, device counts)."""
    return _int(text, 1, "a positive integer (at least 1)")


def nonnegative_int(text: str) -> int:
    """An integer >= 0 (worker counts)."""
    return _int(text, 0, "a non-negative integer (0 or more)")


def positive_float(text: str) -> float:
    """A finite number > 0 (minutes, seconds)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def add_model_option(parser, default: str | None = "default", what: str = "model") -> None:
    """`--model NAME_OR_PATH` (alias `--checkpoint`): a built-in model name (`stemjepa models`), a .safetensors export
    or a .ckpt checkpoint; `default` is the built-in default model."""
    tail = " (default: the built-in model 'default')" if default == "default" else ""
    parser.add_argument("--model", "--checkpoint", dest="model", default=default, metavar="NAME_OR_PATH",
                        help=f"{what}: a built-in model name (`stemjepa models`), a .safetensors export or a .ckpt "
                             f"checkpoint{tail}")
