"""Reading a stem index: `StemIndex.open(folder)` and its queries (the writer is build.py).

A reader never writes: it opens the SQLite file read-only and memory-maps the snapshot of the committed generation
(snapshot.py: its shards, without the tombstoned rows), switching to a newer one when an `index` run commits it.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from ..audio.mix import Mix, load_query
from ..errors import AudioError, CheckpointError, DataError, StemJepaError
from .filtering import Filters, filtered_search, row_tags
from .inputs import QueryError, check_instrument
from .scores import compat_score, percentile, pool_percentile, standardised
from .snapshot import Snapshot, load_snapshot
from .store import MetaStore, StemIndexError, check_index_folder
from .vectors import normalize

if TYPE_CHECKING:  # the protocol imports torch, which a reader with a given model does not need
    from ..analysis import Analysis
    from ..analysis.compat import BpmFilter, KeyFilter
    from ..models.protocol import EmbeddingModel

RANKS = ("model", "compat")
MODEL_KEY = "model"  # the index info key of the model reference (written by build.py)
OLD_MODEL_KEY = "checkpoint"  # its name in indexes written before it was renamed; still read
COMPAT_FETCH = 100  # rank="compat" re-ranks at least this many of the model's best (more until the order is exact)


@dataclass
class SearchResult:
    """One retrieved stem and the chunk that matches best (`offset`, seconds). `z`: standard deviations above the
    library's average stem for this query; `percentile`: its place in the index; `cosine`: the raw cosine of the file
    vector, `chunk_cosine` that of the best chunk (search/scores.py). `analysis`: the stem's tempo and key (None: not
    analysed); `compatibility`: 0..1 fit of that tempo and key to the mix's (None when the mix was not analysed)."""

    rank: int
    z: float
    percentile: float
    cosine: float
    path: str
    offset: float
    chunk_cosine: float
    duration: float
    analysis: Analysis | None = None
    compatibility: float | None = None

    @property
    def score(self) -> float:
        """The former name of `z` (Python callers of earlier versions)."""
        return self.z

    def to_dict(self) -> dict:
        """JSON-safe: the figures, and "analysis" as {"bpm", "key", ...} or None."""
        return {"rank": self.rank, "z": self.z, "percentile": self.percentile, "cosine": self.cosine, "path": self.path,
                "offset": self.offset, "chunk_cosine": self.chunk_cosine, "duration": self.duration,
                "analysis": None if self.analysis is None else self.analysis.to_dict(),
                "compatibility": self.compatibility}


def recorded_model(store: MetaStore) -> str | None:
    """The model reference an index records: its "model", or "checkpoint" in an index written before the rename."""
    return store.get(MODEL_KEY) or store.get(OLD_MODEL_KEY)


def _stored_analysis(d: dict | None) -> Analysis | None:
    """The Analysis of a stored row; None when missing or damaged (the row is then shown without tempo and key)."""
    if d is None:
        return None
    from ..analysis import Analysis

    try:
        return Analysis.from_dict(d)
    except (DataError, TypeError, ValueError, KeyError):
        return None


class StemIndex:
    """A stem index opened for queries. Safe to use while an `index` run updates the folder: each query first checks
    for a newer committed generation and switches to it.

    >>> index = StemIndex.open("my_index")                       # the model recorded in the index
    >>> index.query("song_without_bass.wav", "bass", k=5)        # [SearchResult(rank=1, score=..., path=...), ...]
    """

    batch_size = 16  # model chunks per forward pass of the queries

    def __init__(self, folder: Path, store: MetaStore, model: EmbeddingModel | str | Path | None = None, device=None,
                 precision: str | None = None):
        self.folder, self.store = folder, store
        self._model_ref = str(model) if isinstance(model, (str, Path)) else None
        self._model = None if self._model_ref else model
        self._device, self._precision = device, precision
        self.snapshot: Snapshot | None = None
        self.refresh()
        if self._model is not None:
            self._check_model(self._model)

    @classmethod
    def open(cls, path, model: EmbeddingModel | str | Path | None = None, device=None, precision: str | None = None, *,
             checkpoint=None) -> StemIndex:
        """Open the index folder `path`. Queries embed with `model` (a loaded model, or a NAME_OR_PATH loaded now),
        else the model recorded in the index; a model whose id differs from the one that built the index is refused.
        `checkpoint` is the former name of a NAME_OR_PATH `model`. `precision` (auto|fp32|bf16|fp16), when given, is
        the inference precision of the queries (else the model's own)."""
        folder = Path(path).expanduser()
        check_index_folder(folder)
        store = MetaStore(folder)
        model = model if model is not None else checkpoint
        try:
            self = cls(folder, store, model=model, device=device, precision=precision)
            if self._model_ref:
                self.model  # load now: a wrong model is refused at open  # noqa: B018
            return self
        except BaseException:
            store.close()
            raise

    def close(self) -> None:
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self) -> int:
        return self.snapshot.count

    @property
    def info(self) -> dict:
        return self.store.info()

    @property
    def model_id(self) -> str:
        return self.store.get("model_id")

    @property
    def generation(self) -> int:
        """The generation being searched (-1 before the first snapshot is loaded)."""
        return -1 if self.snapshot is None else self.snapshot.generation

    @property
    def searcher(self):
        return self.snapshot.searcher

    # --- snapshot --------------------------------------------------------------------------------------------------
    def refresh(self) -> bool:
        """Switch to the newest committed generation if it changed; True when it did."""
        for _attempt in range(5):
            gen = self.store.generation
            if gen == self.generation:
                return False
            if gen == 0:
                raise StemIndexError(f"{self.folder}: index has no finished build yet (was the first `stemjepa index` "
                                     "run interrupted? run it again)")
            try:
                self.snapshot = load_snapshot(self.folder, self.store.info())  # one statement: generation + records
                return True
            except FileNotFoundError:
                time.sleep(0.05)  # a writer published and cleaned up in between: read the generation again
        raise StemIndexError(f"{self.folder}: snapshot files of generation {gen} are missing; re-run `stemjepa index`")

    # --- model -----------------------------------------------------------------------------------------------------
    @property
    def model(self) -> EmbeddingModel:
        if self._model is None:
            ref = self._model_ref or recorded_model(self.store)
            if not ref:
                raise CheckpointError(f"{self.folder}: the index records no model; pass one (--model NAME_OR_PATH)")
            from ..models.registry import load_model, resolve

            try:
                resolve(ref)
            except CheckpointError:
                raise CheckpointError(f"{ref}: model not found (the index {self.folder} was built with it, model "
                                      f"{self.model_id}); pass its new name or path with --model") from None
            model = load_model(ref, device=self._device)
            self._check_model(model, ref)
            self._model = model
        return self._model

    def _check_model(self, model: EmbeddingModel, ref=None) -> None:
        if str(model.model_id) != str(self.model_id):
            what = f"--model {ref}" if ref else "the given model"
            raise CheckpointError(
                f"{self.folder}: index was built with model {self.model_id} ({recorded_model(self.store)}), but "
                f"{what} is model {model.model_id}: query with the model that built the index, or re-index with "
                "this one into a new folder")

    # --- queries ---------------------------------------------------------------------------------------------------
    def query(self, mix, instrument: str, k: int = 10, sample_rate: int | None = None,
              bpm: BpmFilter | str | None = None, key: KeyFilter | str | None = None,
              rank: Literal["model", "compat"] = "model", mix_analysis: Analysis | None = None) -> list[SearchResult]:
        """The k stems of the library that best fit `mix` (path or numpy array) as `instrument` (free text).

        `bpm` / `key`: keep only stems of that tempo / key (a filter or its text: "120+-4", "Am:camelot", see
        stemjepa.analysis.compat). `rank="compat"`: order by the model's z lowered by a poor tempo/key fit to the
        mix (search/scores.py, compat_score); the mix is analysed unless `mix_analysis` is given."""
        return self.query_many([mix], [instrument], k=k, sample_rate=sample_rate, bpm=bpm, key=key, rank=rank,
                               mix_analyses=None if mix_analysis is None else [mix_analysis])[0]

    def analyse_mix(self, wave, sample_rate: int | None = None) -> Analysis:
        """Tempo, beats and key of a mix (array at `sample_rate`, default the model's, any channel layout that
        `stemjepa.audio.io.array_to_mono` reads; or a path): what rank="compat" and the fit to the mix use."""
        from ..analysis import analyse

        sr = int(sample_rate or self.store.get("sample_rate") or 16000)
        if isinstance(wave, Mix):  # checked already, at its own rate
            wave, sr = wave.wave, wave.sample_rate
        elif isinstance(wave, (str, Path)):
            wave = load_query(wave, sr).wave
        else:
            from ..audio.io import array_to_mono

            wave = array_to_mono(wave, sr, sr, "mix")
        return analyse(np.ascontiguousarray(wave, dtype=np.float32), sr)

    def query_many(self, mixes: Sequence, instruments, k: int = 10, sample_rate: int | None = None,
                   bpm: BpmFilter | str | None = None, key: KeyFilter | str | None = None,
                   rank: Literal["model", "compat"] = "model",
                   mix_analyses: Sequence[Analysis] | None = None) -> list[list[SearchResult]]:
        """Batched `query`: `instruments` is one text for all mixes or one per mix. A mix is a path, an array at
        `sample_rate` (default: the model's) or a `stemjepa.audio.mix.Mix` (`load_query`: checked once, not again).
        `bpm`, `key`, `rank`: see `query`; `mix_analyses`: one Analysis per mix, computed here when rank="compat"
        needs them. `StemIndex.batch_size` is the number of model chunks per forward pass."""
        if isinstance(instruments, str):
            instruments = [instruments] * len(mixes)
        if len(instruments) != len(mixes):
            raise StemJepaError(f"{len(mixes)} mixes but {len(instruments)} instrument texts")
        labels = [check_instrument(t) for t in instruments]
        if k < 1:
            raise StemJepaError(f"k must be at least 1, got {k}")
        bpm, key = (f := Filters.of(bpm, key)).bpm, f.key  # a bad filter is refused before the model runs
        _check_rank(rank)
        model = self.model
        sr = model.sample_rate
        waves = []
        for i, mix in enumerate(mixes):
            if sample_rate and sample_rate != sr and not isinstance(mix, (str, Path, Mix)):
                from ..audio.io import array_to_mono

                mix = array_to_mono(mix, sample_rate, sr, f"mix {i + 1}")  # to the model's rate before length checks
            waves.append(load_query(mix, sr).wave)
        if rank == "compat" and mix_analyses is None:
            mix_analyses = [self.analyse_mix(w, sr) for w in waves]
        embs = model.query_many(waves, labels, batch_size=self.batch_size, precision=self._precision)
        vectors = np.stack([np.asarray(e.vector, np.float32).reshape(-1) for e in embs])
        bad = [i for i, v in enumerate(vectors) if not np.all(np.isfinite(v))]
        if len(bad) == len(vectors):
            raise CheckpointError(f"{model.source.file or 'the model'}: the model returned NaN or infinite "
                                  "values for every query (damaged weights?)")
        if bad:
            names = ", ".join(_mix_name(mixes[i], i) for i in bad)
            raise AudioError(names, "the model returned NaN or infinite values for this mix (the other mixes were "
                                    "fine); leave it out and query again")
        return self.search_vectors(vectors, k, bpm=bpm, key=key, rank=rank, mix_analyses=mix_analyses)

    def search_vectors(self, vectors: np.ndarray, k: int = 10, bpm: BpmFilter | str | None = None,
                       key: KeyFilter | str | None = None, rank: Literal["model", "compat"] = "model",
                       mix_analyses: Sequence[Analysis | None] | None = None) -> list[list[SearchResult]]:
        """Search with query vectors already computed (q, d): the best files, with their best-matching chunk.
        `bpm`, `key`, `rank`, `mix_analyses` (one per query vector, or None): see `query`/`query_many`."""
        filters = Filters.of(bpm, key)
        _check_rank(rank)
        for _attempt in range(4):
            try:
                return self._search(vectors, k, filters, rank, mix_analyses)
            except _RowsPurged:  # two updates committed during this search: search the newest generation
                continue
        return self._search(vectors, k, filters, rank, mix_analyses, purged_ok=True)

    def _search(self, vectors, k: int, filters: Filters, rank: str, mix_analyses,
                purged_ok: bool = False) -> list[list[SearchResult]]:
        self.refresh()
        snap = self.snapshot
        q = normalize(np.atleast_2d(vectors))
        if mix_analyses is not None and len(mix_analyses) != len(q):
            raise QueryError(f"{len(q)} query vectors but {len(mix_analyses)} mix analyses")
        if rank == "compat" and (mix_analyses is None or any(a is None for a in mix_analyses)):
            raise QueryError('rank="compat" needs the analysis of every mix (StemIndex.analyse_mix)')
        if snap.count == 0:
            return [[] for _ in range(len(q))]
        if q.shape[1] != snap.dim:
            raise StemJepaError(f"query vectors have dimension {q.shape[1]}, the index {snap.dim}")
        allowed = filters.allowed(self.store, snap) if filters else None
        if allowed is not None and not row_tags(self.store, snap).analysed.any():
            raise QueryError(f"{self.folder}: no stem of this index has a tempo or key yet (an index made before "
                             "stemjepa analysed them): run `stemjepa index` on its folder once to add them, then filter")
        mixes = list(mix_analyses) if mix_analyses is not None else [None] * len(q)
        if rank == "model":  # one batched search for all queries
            scores, pos = filtered_search(snap, q, k, allowed)
            return [self._results(snap, q[i], scores[i], pos[i], mixes[i], exact_percentile=allowed is None,
                                  purged_ok=purged_ok) for i in range(len(q))]
        return [self._compat_ranked(snap, q[i], k, allowed, mixes[i], purged_ok) for i in range(len(q))]

    def _compat_ranked(self, snap: Snapshot, q: np.ndarray, k: int, allowed: np.ndarray | None,
                       mix: Analysis, purged_ok: bool = False) -> list[SearchResult]:
        """The k best by compat_score: the model's best re-ranked, fetching more until no row left out can enter (an
        unfetched row has a lower z than every fetched one, and compat_score never exceeds z)."""
        n_allowed = snap.count if allowed is None else int(allowed.sum())
        fetch = max(k, COMPAT_FETCH)
        while True:
            scores, pos = filtered_search(snap, q[None], fetch, allowed)
            results = self._results(snap, q, scores[0], pos[0], mix, exact_percentile=False, purged_ok=purged_ok)
            lowest = min((r.z for r in results), default=0.0)
            results.sort(key=lambda r: -compat_score(r.z, r.compatibility))  # stable: the model's order on ties
            if fetch >= n_allowed or len(results) < fetch or (
                    len(results) >= k and compat_score(results[k - 1].z, results[k - 1].compatibility) >= lowest):
                break
            fetch *= 4
        results = results[:k]
        for i, r in enumerate(results):
            r.rank = i + 1
        return results

    def _results(self, snap: Snapshot, q: np.ndarray, scores: np.ndarray, pos: np.ndarray, mix: Analysis | None,
                 exact_percentile: bool, purged_ok: bool = False) -> list[SearchResult]:
        """SearchResults of one query's (cosine, position) pairs, in the model's order."""
        from ..analysis.compat import compatibility

        rows = self.store.rows_by_id({int(snap.ids[p]) for p in pos if p >= 0}, snap.dim)
        pool = snap.pool.cosines(q)
        mean, std = (float(pool.mean()), float(pool.std())) if len(pool) else (0.0, 0.0)
        n = snap.count  # the library's rows (tombstoned rows of a shard do not count)
        results = []
        for s, p in zip(scores, pos):
            row = rows.get(int(snap.ids[p])) if p >= 0 else None
            if row is None:
                if p >= 0 and not purged_ok and self.store.generation > snap.generation + 1:
                    raise _RowsPurged  # a row of this generation was purged by the one after the next
                continue
            chunk_scores = row.chunks.astype(np.float32) @ q
            best = int(np.argmax(chunk_scores))
            rank = len(results) + 1
            analysis = _stored_analysis(row.analysis)
            results.append(SearchResult(
                rank=rank, z=standardised(float(s), mean, std),
                percentile=percentile(rank, n) if exact_percentile else pool_percentile(float(s), pool),
                cosine=float(s), path=row.path, offset=float(row.offsets[best]), chunk_cosine=float(chunk_scores[best]),
                duration=float(row.duration), analysis=analysis,
                compatibility=None if mix is None or analysis is None else compatibility(mix, analysis)))
        return results


def _mix_name(mix, i: int) -> str:
    return mix.name if isinstance(mix, Mix) else str(mix) if isinstance(mix, (str, Path)) else f"mix {i + 1}"


class _RowsPurged(Exception):
    """A row of the searched generation left index.sqlite meanwhile (rows removed at G + 1 are purged at G + 2)."""


def _check_rank(rank) -> None:
    if rank not in RANKS:
        raise QueryError(f"unknown rank {rank!r} (choose from {', '.join(RANKS)})")
