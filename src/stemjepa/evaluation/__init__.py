"""Evaluation: the retrieval benchmark of Table I, the instrument analysis of Fig. 2, reports; `beats/` the probe.

The public entry points are imported lazily so that `import stemjepa.evaluation` stays cheap.
"""
from __future__ import annotations

_LAZY = {
    "evaluate_retrieval": "retrieval",
    "RetrievalProtocol": "protocol",
    "evaluate_checkpoints": "retrieval",
    "load_songs": "retrieval",
    "compare_table": "report",
    "protocol_note": "report",
    "pool_diagnostics": "retrieval",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
