"""`stemjepa models`: the built-in models (names, aliases, size, file and card)."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("models", help="list the built-in models usable with --model NAME",
                              description="List the models shipped in the package: versioned name, aliases (e.g. "
                                          "'default'), size, file and the summary of its card (training data, "
                                          "measured figures).")
    p.add_argument("--json", action="store_true", help="print the cards as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..models.registry import builtin_models, describe

    if args.json:
        import json

        print(json.dumps({n: {"file": str(e.file), "size_mb": round(e.size_mb, 2), "aliases": e.aliases, "card": e.card}
                          for n, e in builtin_models().items()}, indent=1))
    else:
        print(describe())
    return 0
