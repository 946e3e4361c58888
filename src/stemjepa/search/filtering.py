"""Tempo and key filters on an index search: which rows a filter keeps, and the top k among them.

The rows' tempo and key are read from SQLite once per generation (and again after an `index` run analysed rows in
place: `analysis_epoch`) into arrays, so a filter costs a few vector operations per query. The search is exact over
the kept rows when they are few (scored directly), else the searcher's top k is over-fetched and filtered, fetching
more until k rows pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..analysis.compat import PITCHES, BpmFilter, KeyFilter, parse_bpm_filter, parse_key, parse_key_filter
from .snapshot import Snapshot
from .store import AnalysisColumns, MetaStore

EXACT_SUBSET_ROWS = 50_000  # kept rows scored directly (exact) up to this many; above, over-fetch from the searcher
_BLOCK = 16384
_NO_KEY, _BAD_KEY = -1, -2


def _key_code(name) -> int:
    if name is None:
        return _NO_KEY
    k = parse_key(name)
    return _BAD_KEY if k is None else 2 * k.tonic + int(k.minor)


def _code_of_name(name: str) -> int:
    tonic, mode = name.split(" ")
    return 2 * PITCHES.index(tonic) + int(mode == "minor")


@dataclass(frozen=True)
class RowTags:
    """Tempo and key of the rows of one snapshot, by snapshot position: `bpm` (NaN: no beat), `key` (code 2 * tonic +
    minor; -1 no key; -2 unreadable), `analysed` (False: never analysed or the analysis failed)."""

    bpm: np.ndarray
    key: np.ndarray
    analysed: np.ndarray

    @classmethod
    def of(cls, cols: AnalysisColumns, ids: np.ndarray) -> RowTags:
        n = len(ids)
        bpm, key, analysed = np.full(n, np.nan), np.full(n, _BAD_KEY, np.int8), np.zeros(n, bool)
        at = np.searchsorted(ids, cols.ids)
        ok = (at < n) & (ids[np.minimum(at, max(n - 1, 0))] == cols.ids) if n else np.zeros(len(cols.ids), bool)
        at = at[ok]
        bpm[at] = cols.bpm[ok]
        key[at] = np.fromiter((_key_code(k) for k in cols.keys[ok]), np.int8, int(ok.sum()))
        analysed[at] = cols.analysed[ok]
        return cls(bpm, key, analysed)


@dataclass(frozen=True)
class Filters:
    """The tempo and key filters of one search (either may be None)."""

    bpm: BpmFilter | None = None
    key: KeyFilter | None = None

    @classmethod
    def of(cls, bpm=None, key=None) -> Filters:
        """From filters or their text (FilterError, naming the text, when it cannot be read)."""
        return cls(None if bpm is None else parse_bpm_filter(bpm), None if key is None else parse_key_filter(key))

    def __bool__(self) -> bool:
        return self.bpm is not None or self.key is not None

    def mask(self, tags: RowTags) -> np.ndarray:
        """Rows kept: analysed, and passing each filter (no beat / no key passes: tempo- / key-neutral)."""
        keep = tags.analysed.copy()
        if self.bpm is not None:
            keep &= self.bpm.mask(tags.bpm)
        if self.key is not None:
            codes = [_code_of_name(name) for name in self.key.keys()] + [_NO_KEY]
            keep &= np.isin(tags.key, codes)
        return keep

    def allowed(self, store: MetaStore, snap: Snapshot) -> np.ndarray:
        """Boolean mask over the snapshot's rows."""
        return self.mask(row_tags(store, snap))


_CACHE: dict[tuple, RowTags] = {}


def row_tags(store: MetaStore, snap: Snapshot) -> RowTags:
    """The RowTags of `snap`, cached while its generation and the index's analysis epoch stay the same."""
    key = (str(store.db_path), snap.generation, int(store.get("analysis_epoch", 0)), len(snap.ids))
    tags = _CACHE.get(key)
    if tags is None:
        tags = RowTags.of(store.analysis_columns(snap.generation), np.asarray(snap.ids))
        _CACHE.clear()  # one index's tags at a time (memory stays bounded by one index)
        _CACHE[key] = tags
    return tags


def filtered_search(snap: Snapshot, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(cosines, positions) of the top k rows of `snap` for the unit queries `q` (n_q, d) among the `allowed` rows
    (None: all), best first, positions padded with -1 where fewer rows are kept."""
    searcher = snap.searcher
    if allowed is None:
        return searcher.search(q, k)
    keep = np.flatnonzero(allowed)
    m, n = len(keep), len(allowed)
    k = min(int(k), m)
    if k <= 0:
        return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    if m <= EXACT_SUBSET_ROWS:
        scores = np.concatenate([q @ np.asarray(searcher.vectors[keep[a:a + _BLOCK]], np.float32).T
                                 for a in range(0, m, _BLOCK)], axis=1)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, top, axis=1).astype(np.float32), keep[top]
    fetch = min(n, max(4 * k, 2 * k * n // m))
    while True:
        s, p = searcher.search(q, fetch)
        ok = (p >= 0) & allowed[np.maximum(p, 0)]
        if fetch >= n or ok.sum(axis=1).min() >= k:
            break
        fetch = min(n, fetch * 4)
    out_s = np.full((len(q), k), -np.inf, np.float32)
    out_p = np.full((len(q), k), -1, np.int64)
    for i in range(len(q)):
        got = np.flatnonzero(ok[i])[:k]
        out_s[i, :len(got)], out_p[i, :len(got)] = s[i, got], p[i, got]
    return out_s, out_p
