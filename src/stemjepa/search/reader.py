"""Reading a stem index: `StemIndex.open(folder)` and its queries (the writer is build.py).

A reader never writes: it opens the SQLite file read-only and memory-maps the snapshot of the committed generation
(snapshot.py), switching to a newer one when an `index` run commits it.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import AudioError, CheckpointError, StemJepaError
from .inputs import check_instrument, load_query
from .scores import percentile, standardised
from .snapshot import Snapshot, load_snapshot
from .store import MetaStore, StemIndexError, check_index_folder
from .vectors import normalize

if TYPE_CHECKING:  # the protocol imports torch, which a reader with a given model does not need
    from ..models.protocol import EmbeddingModel


@dataclass
class SearchResult:
    """One retrieved stem and the chunk that matches best (`offset`, seconds). `score` is the readable score (standard
    deviations above the library's average for this query), `percentile` its place in the index, `cosine` the raw
    cosine of the file vector, `chunk_cosine` that of the best chunk: see search/scores.py."""

    rank: int
    score: float
    percentile: float
    cosine: float
    path: str
    offset: float
    chunk_cosine: float
    duration: float

    def to_dict(self) -> dict:
        return asdict(self)


class StemIndex:
    """A stem index opened for queries. Safe to use while an `index` run updates the folder: each query first checks
    for a newer committed generation and switches to it.

    >>> index = StemIndex.open("my_index")                       # checkpoint recorded in the index
    >>> index.query("song_without_bass.wav", "bass", k=5)        # [SearchResult(rank=1, score=..., path=...), ...]
    """

    def __init__(self, folder: Path, store: MetaStore, model: EmbeddingModel | None = None,
                 checkpoint: str | None = None, device=None, precision: str | None = None):
        self.folder, self.store = folder, store
        self._model, self._checkpoint, self._device, self._precision = model, checkpoint, device, precision
        self.snapshot: Snapshot | None = None
        self.refresh()
        if model is not None:
            self._check_model(model)

    @classmethod
    def open(cls, path, checkpoint=None, model: EmbeddingModel | None = None, device=None,
             precision: str | None = None) -> StemIndex:
        """Open the index folder `path`. Queries embed with `model`, else `checkpoint`, else the index's checkpoint;
        a checkpoint whose model id differs from the one that built the index is refused. `precision`
        (auto|fp32|bf16|fp16), when given, is the inference precision of the queries (else the model's own)."""
        folder = Path(path).expanduser()
        check_index_folder(folder)
        store = MetaStore(folder)
        try:
            self = cls(folder, store, model=model, checkpoint=str(checkpoint) if checkpoint else None, device=device,
                       precision=precision)
            if model is None and checkpoint is not None:
                self.model  # load now: a wrong checkpoint is refused at open  # noqa: B018
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
        return self.searcher.n

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
            ckpt = self._checkpoint or self.store.get("checkpoint")
            if not ckpt:
                raise CheckpointError(f"{self.folder}: the index records no model; pass one (--model NAME_OR_PATH)")
            from ..models.registry import load_model, resolve

            try:
                resolve(ckpt)
            except CheckpointError:
                raise CheckpointError(f"{ckpt}: model not found (the index {self.folder} was built with it, model "
                                      f"{self.model_id}); pass its new name or path with --model") from None
            model = load_model(ckpt, device=self._device)
            self._check_model(model, ckpt)
            self._model = model
        return self._model

    def _check_model(self, model: EmbeddingModel, checkpoint=None) -> None:
        if str(model.model_id) != str(self.model_id):
            what = f"checkpoint {checkpoint}" if checkpoint else "the given model"
            raise CheckpointError(
                f"{self.folder}: index was built with model {self.model_id} (checkpoint "
                f"{self.store.get('checkpoint')}), but {what} is model {model.model_id}: query with the checkpoint "
                "that built the index, or re-index with this one into a new folder")

    # --- queries ---------------------------------------------------------------------------------------------------
    def query(self, mix, instrument: str, k: int = 10, sample_rate: int | None = None) -> list[SearchResult]:
        """The k stems of the library that best fit `mix` (path or numpy array) as `instrument` (free text)."""
        return self.query_many([mix], [instrument], k=k, sample_rate=sample_rate)[0]

    def query_many(self, mixes: Sequence, instruments, k: int = 10, sample_rate: int | None = None,
                   batch_size: int = 16) -> list[list[SearchResult]]:
        """Batched `query`: `instruments` is one text for all mixes or one per mix. Arrays are at `sample_rate`
        (default: the model's); `batch_size` is the number of model chunks per forward pass."""
        if isinstance(instruments, str):
            instruments = [instruments] * len(mixes)
        if len(instruments) != len(mixes):
            raise StemJepaError(f"{len(mixes)} mixes but {len(instruments)} instrument texts")
        labels = [check_instrument(t) for t in instruments]
        if k < 1:
            raise StemJepaError(f"k must be at least 1, got {k}")
        model = self.model
        sr = model.sample_rate
        waves = []
        for i, mix in enumerate(mixes):
            if sample_rate and sample_rate != sr and not isinstance(mix, (str, Path)):
                from ..audio.io import array_to_mono

                mix = array_to_mono(mix, sample_rate, sr, f"mix {i + 1}")  # to the model's rate before length checks
            wave, _ = load_query(mix, sr)
            waves.append(wave)
        embs = model.query_many(waves, labels, batch_size=batch_size, precision=self._precision)
        vectors = np.stack([np.asarray(e.vector, np.float32).reshape(-1) for e in embs])
        bad = [i for i, v in enumerate(vectors) if not np.all(np.isfinite(v))]
        if len(bad) == len(vectors):
            raise CheckpointError(f"{model.checkpoint_path or 'the model'}: the model returned NaN or infinite "
                                  "values for every query (damaged weights?)")
        if bad:
            names = ", ".join(str(mixes[i]) if isinstance(mixes[i], (str, Path)) else f"mix {i + 1}" for i in bad)
            raise AudioError(names, "the model returned NaN or infinite values for this mix (the other mixes were "
                                    "fine); leave it out and query again")
        return self.search_vectors(vectors, k)

    def search_vectors(self, vectors: np.ndarray, k: int = 10) -> list[list[SearchResult]]:
        """Search with query vectors already computed (q, d): the best files, with their best-matching chunk."""
        self.refresh()
        snap = self.snapshot
        q = normalize(np.atleast_2d(vectors))
        n = len(snap.ids)
        if n == 0:
            return [[] for _ in range(len(q))]
        if q.shape[1] != snap.dim:
            raise StemJepaError(f"query vectors have dimension {q.shape[1]}, the index {snap.dim}")
        scores, pos = snap.searcher.search(q, k)
        wanted = {int(snap.ids[p]) for p in pos.ravel() if p >= 0}
        rows = self.store.rows_by_id(wanted, snap.dim)
        out = []
        for qi in range(len(q)):
            results = []
            mean, std = snap.pool.moments(q[qi])
            for s, p in zip(scores[qi], pos[qi]):
                row = rows.get(int(snap.ids[p])) if p >= 0 else None
                if row is None:
                    continue
                chunk_scores = row.chunks.astype(np.float32) @ q[qi]
                best = int(np.argmax(chunk_scores))
                rank = len(results) + 1
                results.append(SearchResult(rank=rank, score=standardised(float(s), mean, std),
                                            percentile=percentile(rank, n), cosine=float(s), path=row.path,
                                            offset=float(row.offsets[best]), chunk_cosine=float(chunk_scores[best]),
                                            duration=float(row.duration)))
            out.append(results)
        return out
