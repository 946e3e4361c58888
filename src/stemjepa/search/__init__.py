"""Stem library search: index a folder of stems (FAISS vectors + SQLite metadata) and query it with a mix.

`build_index(root, out, model)` creates or updates an index;
`StemIndex.open(path).query(mix, instrument, k)` searches it.
Names are imported lazily so that `stemjepa --help` does not load numpy/faiss.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "build_index": "index", "IndexSummary": "index", "SearchResult": "index", "StemIndex": "index",
    "MIN_QUERY_SECONDS": "inputs", "QueryError": "inputs",
    "FORMAT_VERSION": "store", "StemIndexError": "store",
    "AUTO_APPROX_THRESHOLD": "vectors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
