"""Stem library search: index a folder of stems (FAISS vectors + SQLite metadata) and query it with a mix.

`build_index(root, out, model)` (build.py, the writer) creates or updates an index;
`StemIndex.open(path).query(mix, instrument, k, bpm=, key=, rank=)` (reader.py) searches it, with tempo/key filters
(filtering.py) and compatibility ranking (scores.py). `model` is any `EmbeddingModel` (stemjepa.models.protocol). The
on-disk layout: store.py (SQLite, with each file's tempo and key) and snapshot.py (what queries map).
Names are imported lazily so that `stemjepa --help` does not load numpy/faiss.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "build_index": "build", "IndexSummary": "build", "SearchResult": "reader", "StemIndex": "reader",
    "MIN_QUERY_SECONDS": ".audio.mix", "QueryError": "inputs", "RANKS": "reader",
    "FORMAT_VERSION": "store", "StemIndexError": "store",
    "AUTO_APPROX_THRESHOLD": "vectors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)  # ".audio.mix": stemjepa.audio.mix
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
