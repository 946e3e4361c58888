"""A searchable stem library: `build_index` (create / update a folder index) and `StemIndex` (open and query it).

Index folder layout:
    index.sqlite               metadata + vectors of every file (source of truth), see store.py
    snapshot-<G>.ids.npy       int64 row ids of the files searchable at generation G, ascending
    snapshot-<G>.vectors.npy   float32 (n, d) their L2-normalised file vectors, same order (memory-mapped by queries)
    snapshot-<G>.bf16.npy      the same in bfloat16 (exact index only): fast screening, re-scored in float32
    snapshot-<G>.ann.faiss     the approximate index over those rows (ivfpq / hnsw only)
    index.lock                 held (flock) by the one `index` run allowed at a time
Snapshots are written under temporary names and renamed, then `generation = G` is committed in SQLite: a reader
sees generation G-1 or G, complete. The snapshot of G-1 is kept so readers that opened it keep working.
"""
from __future__ import annotations

import fcntl
import inspect
import itertools
import math
import os
import sqlite3
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .. import __version__
from ..audio.io import load_audio
from ..errors import AudioError, CheckpointError, DataError, StemJepaError
from ..audio.quality import check_embeddable
from .inputs import check_instrument, load_query
from .scores import PoolStats, percentile, standardised
from ..fsutil import WriteError, describe_write_error
from .integrity import check_snapshot, snapshot_record, unit_rows_ok
from .store import DB_NAME, FORMAT_VERSION, LOCK_NAME, MetaStore, StemIndexError, check_index_folder
from .vectors import (INDEX_POLICIES, VectorSearcher, bf16_bits, build_ann, default_params, normalize, read_ann,
                      resolve_index_type, save_vectors, write_ann)
from .walk import FileInfo, file_checksum, stat_file, walk_audio


DEFAULT_CHUNK_SAMPLES = 128000


# ------------------------------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------------------------------
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


@dataclass
class IndexSummary:
    """What an `index` run did. `failed` lists (path, problem) for files that were skipped."""

    index: str
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    reused: int = 0  # embeddings copied from an identical file (same checksum) instead of recomputed
    resumed: int = 0  # embeddings kept from a run that was interrupted
    failed: list[tuple[str, str]] = field(default_factory=list)
    found: int = 0  # audio files found under the folder
    total: int = 0
    index_type: str = ""
    generation: int = 0
    repaired: str = ""  # the damaged snapshot that this run rewrote

    def text(self) -> str:
        lines = [f"{self.index}: {self.total} files searchable ({self.index_type}, generation {self.generation}); "
                 f"{self.added} added, {self.updated} updated, {self.unchanged} unchanged, {self.removed} removed, "
                 f"{len(self.failed)} failed"]
        extra = [f"{n} {what}" for n, what in ((self.resumed, "kept from an interrupted run"),
                                               (self.reused, "copied from identical files")) if n]
        if extra:
            lines[0] += f" ({', '.join(extra)})"
        if self.repaired:
            lines.append(f"  repaired: {self.repaired}; the snapshot was rebuilt from {DB_NAME}")
        if not self.found:
            lines.append("  note: no audio files found under the folder (looked for "
                         "wav, flac, mp3, ogg, opus, m4a, mp4, aac, aif(f), wma)")
        lines += [f"  failed: {path}: {problem}" for path, problem in self.failed]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------------
# model plumbing
# ------------------------------------------------------------------------------------------------------------------
def load_checkpoint_model(checkpoint, device=None):
    """The model of a built-in name, a .safetensors export or a .ckpt checkpoint (`stemjepa.models.registry`), with
    one-line errors (unknown name, missing file)."""
    from ..models.registry import load_model

    return load_model(checkpoint, device=device)


def model_reference(checkpoint) -> str | None:
    """What an index records for the model it was built with: a built-in model's versioned name, else the file's
    absolute path (a name that is neither, e.g. a test's fake, is kept as an absolute path too)."""
    if not checkpoint:
        return None
    from ..models.registry import resolve

    try:
        return resolve(checkpoint).ref
    except CheckpointError:
        return str(Path(checkpoint).resolve())


def _model_sample_rate(model) -> int:
    return int(getattr(model, "sample_rate", 16000))


def _embed_many(model, waves: list[np.ndarray], batch_size: int):
    fn = model.embed_many
    try:
        takes_batch = "batch_size" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes_batch = False
    return fn(waves, batch_size=batch_size) if takes_batch else fn(waves)


def _embedding_arrays(emb, dim: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(unit file vector, unit chunk vectors, offsets, weights) of a TrackEmbedding, checked."""
    vector = np.asarray(emb.vector, dtype=np.float32).reshape(-1)
    chunks = np.asarray(emb.chunks, dtype=np.float32).reshape(-1, vector.shape[0])
    offsets = np.asarray(emb.offsets, dtype=np.float32).reshape(-1)
    weights = np.asarray(getattr(emb, "weights", np.ones(len(offsets))), dtype=np.float32).reshape(-1)
    if dim is not None and vector.shape[0] != dim:
        raise StemJepaError(f"model returned {vector.shape[0]}-d vectors, the index holds {dim}-d")
    if not (np.all(np.isfinite(vector)) and np.all(np.isfinite(chunks))) or np.linalg.norm(vector) == 0:
        raise StemJepaError("model returned a non-finite or zero embedding")
    if len(chunks) != len(offsets) or len(weights) != len(offsets) or len(offsets) == 0:
        raise StemJepaError("model returned inconsistent chunks/offsets/weights")
    return normalize(vector), normalize(chunks), offsets, weights


# ------------------------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------------------------
def snapshot_paths(folder: Path, generation: int) -> dict[str, Path]:
    return {name: folder / f"snapshot-{generation}.{name}.{ext}"
            for name, ext in (("ids", "npy"), ("vectors", "npy"), ("bf16", "npy"), ("ann", "faiss"))}


@contextmanager
def _writer_lock(folder: Path):
    """One writer per index; the lock dies with the process, so a killed run never blocks the next one."""
    fh = open(folder / LOCK_NAME, "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StemIndexError(
                f"{folder}: another `stemjepa index` run is updating this index; wait for it") from None
        yield
    finally:
        fh.close()


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise StemIndexError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and not (out / DB_NAME).exists() and any(p.name != LOCK_NAME for p in out.iterdir()):
        raise StemIndexError(f"{out}: folder is not empty and holds no stem index; choose an empty or new --out folder")
    out.mkdir(parents=True, exist_ok=True)


def _prefetch(items: Sequence, load: Callable, workers: int = 2, ahead: int = 8):
    """Yield (item, future) in order while up to `ahead` loads run in threads (decoding overlaps inference)."""
    with ThreadPoolExecutor(workers) as pool:
        it = iter(items)
        queue = deque((x, pool.submit(load, x)) for x in itertools.islice(it, ahead))
        while queue:
            item, fut = queue.popleft()
            nxt = next(it, None)
            if nxt is not None:
                queue.append((nxt, pool.submit(load, nxt)))
            yield item, fut


def build_index(root, out, model, checkpoint=None, batch_size: int = 16, index_type: str | None = None,
                progress: bool = True, on_phase: Callable[[str], None] | None = None,
                allow_empty: bool = False, precision: str | None = None) -> IndexSummary:
    """Create or update the index in `out` for the audio files under `root`, embedded with `model`.

    New files are embedded, files unchanged since the last run (size + mtime, or checksum when only the mtime moved)
    are skipped, deleted files are dropped. Work is committed after every batch, so a run that is killed resumes where
    it stopped; the searchable index changes only at the final commit. `index_type` (auto|exact|ivfpq|hnsw) defaults
    to the index's current policy (auto for a new index). `batch_size` is the number of model chunks per forward pass.
    `on_phase(name)` is called at "batch" (a batch committed) and "snapshot" (snapshot written, not yet committed).
    An update that would remove every file of a non-empty index (an unmounted drive) is refused unless `allow_empty`.
    A full disk or a write error ends the run with one line; the previous generation stays searchable.
    `precision` (auto|fp32|bf16|fp16), when given, is set on the model (`model.precision`, models/precision.py).
    """
    root, out = Path(root).expanduser().resolve(), Path(out).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{root}: folder not found (give the folder holding your stems)")
    if index_type is not None and index_type not in INDEX_POLICIES:
        raise StemJepaError(f"unknown index type {index_type!r} (choose from {', '.join(INDEX_POLICIES)})")
    if batch_size < 1:
        raise StemJepaError(f"--batch-size must be at least 1, got {batch_size}")
    if precision is not None and hasattr(model, "precision"):
        model.precision = precision
    try:
        _prepare_out(out)
        with _writer_lock(out):
            store = MetaStore(out, create=True)
            try:
                return _Updater(store, root, model, checkpoint, batch_size, index_type, progress, on_phase,
                                allow_empty).run()
            finally:
                store.close()
    except WriteError as exc:
        raise StemIndexError(f"{exc} (the previous index is still usable)") from None
    except sqlite3.OperationalError as exc:
        full = "full" in str(exc).lower()
        raise StemIndexError(f"{out / DB_NAME}: " + ("disk full (no space left on the device)" if full else f"cannot write "
                             f"({exc})") + "; the previous index is still usable: free some space and run again") from None
    except OSError as exc:
        raise StemIndexError(f"{describe_write_error(getattr(exc, 'filename', None) or out, exc)} "
                             "(the previous index is still usable)") from None


class _Updater:
    """One `index` run on generation N = committed + 1 (see store.py)."""

    def __init__(self, store: MetaStore, root: Path, model, checkpoint, batch_size: int, index_type: str | None,
                 progress: bool, on_phase, allow_empty: bool = False):
        self.store, self.root, self.model = store, root, model
        self.allow_empty = allow_empty
        self.checkpoint = model_reference(checkpoint)
        self.batch_size, self.progress = batch_size, progress
        self.on_phase = on_phase or (lambda phase: None)
        self.summary = IndexSummary(index=str(store.folder))
        self._init_info(index_type)
        self.G = store.generation
        self.N = self.G + 1

    def _init_info(self, index_type: str | None) -> None:
        s, model_id = self.store, str(self.model.model_id)
        with s.transaction():
            if s.get("format_version") is None:
                s.set("format_version", FORMAT_VERSION)
                s.set("model_id", model_id)
                s.set("generation", 0)
                s.set("index_policy", index_type or "auto")
                s.set("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
                s.set("sample_rate", _model_sample_rate(self.model))
                s.set("checksum", "blake2b-128")
            elif s.get("model_id") != model_id:
                raise CheckpointError(
                    f"{s.folder}: index was built with model {s.get('model_id')} (checkpoint {s.get('checkpoint')}), "
                    f"this checkpoint is model {model_id}: index with the same checkpoint, or choose a new --out "
                    "folder")
            if self.checkpoint:
                s.set("checkpoint", self.checkpoint)
            if index_type is not None:
                s.set("index_policy", index_type)
            s.set("stemjepa_version", __version__)
            if s.get("embed_dim") is None and getattr(self.model, "embed_dim", None):
                s.set("embed_dim", int(self.model.embed_dim))
        self.dim = s.get("embed_dim")
        self.policy = s.get("index_policy")

    # --- plan ------------------------------------------------------------------------------------------------------
    def run(self) -> IndexSummary:
        s, G, N = self.store, self.G, self.N
        with s.transaction():  # forget the removals of an interrupted run: they are recomputed below
            s.conn.execute("UPDATE files SET gen_removed = NULL WHERE gen_removed >= ?", (N,))
        live, pending = s.live_stats(G), s.pending_stats(N)
        found, walk_errors = walk_audio(self.root, exclude=[s.folder])
        self.summary.failed += walk_errors
        self.summary.found = len(found)
        on_disk = {f.path for f in found}

        to_embed: list[tuple[FileInfo, int | None]] = []  # (file, live row id it replaces)
        remove: list[int] = []
        drop_pending: list[int] = []
        touch: list[tuple[int, int]] = []
        for f in found:
            old, done = live.get(f.path), pending.get(f.path)
            if done is not None:
                if (done[1], done[2]) == (f.size, f.mtime_ns):
                    self.summary.resumed += 1
                    self.summary.updated += old is not None
                    self.summary.added += old is None
                    if old is not None:
                        remove.append(old[0])
                    continue
                drop_pending.append(done[0])
            if old is not None and old[1] == f.size:
                if old[2] == f.mtime_ns or self._checksum(f) == old[3]:
                    if old[2] != f.mtime_ns:
                        touch.append((f.mtime_ns, old[0]))
                    self.summary.unchanged += 1
                    continue
            to_embed.append((f, old[0] if old else None))
        drop_pending += [row[0] for path, row in pending.items() if path not in on_disk]
        for path, row in live.items():
            if path in on_disk:
                continue
            under_root = path.startswith(str(self.root) + os.sep)
            # deleted; files indexed from another folder stay while they exist
            if under_root or stat_file(path) is None:
                remove.append(row[0])
                self.summary.removed += 1
        keeps = to_embed or self.summary.unchanged or self.summary.resumed
        if live and len(remove) == len(live) and not keeps and not self.allow_empty:
            raise StemIndexError(
                f"{self.root}: this update would remove all {len(live)} files of the index {s.folder} (no audio file "
                "found where they were: is the drive mounted?); nothing was changed. Pass --allow-empty to empty it")
        with s.transaction():
            s.conn.executemany("DELETE FROM files WHERE id = ?", [(i,) for i in drop_pending])
            s.conn.executemany("UPDATE files SET mtime_ns = ? WHERE id = ?", touch)
            s.conn.executemany("UPDATE files SET gen_removed = ? WHERE id = ?", [(N, i) for i in remove])

        self._embed_all(to_embed)
        self._finish()
        return self.summary

    def _checksum(self, f: FileInfo) -> str | None:
        try:
            return file_checksum(f.path)
        except OSError:
            return None

    # --- embed -----------------------------------------------------------------------------------------------------
    def _load(self, item: tuple[FileInfo, int | None]):
        f = item[0]
        checksum = file_checksum(f.path)
        reuse = self.store_reuse(checksum)
        if reuse is not None:
            return None, checksum, reuse
        wave = load_audio(f.path, sample_rate=_model_sample_rate(self.model), mono=True)
        check_embeddable(wave, _model_sample_rate(self.model), f.path)
        return wave, checksum, None

    def store_reuse(self, checksum: str):
        """A stored row with identical bytes (a copied or renamed file): its vectors are reused, not recomputed."""
        if self.dim is None:
            return None
        with self._db_lock:
            return self.store.row_by_checksum(checksum, self.dim)

    def _embed_all(self, to_embed: list[tuple[FileInfo, int | None]]) -> None:
        import threading

        self._db_lock = threading.Lock()
        if not to_embed:
            return
        chunk = int(getattr(self.model, "chunk_samples", DEFAULT_CHUNK_SAMPLES))
        bar = _progress(len(to_embed), self.progress, "embedding")
        batch: list = []
        batch_chunks = 0
        try:
            for item, fut in _prefetch(to_embed, self._load):
                try:
                    wave, checksum, reuse = fut.result()
                except (AudioError, OSError) as exc:
                    self._failed(item, getattr(exc, "problem", None) or str(exc))
                    bar.update(1)
                    continue
                batch.append((item, wave, checksum, reuse))
                batch_chunks += 0 if wave is None else max(1, math.ceil(len(wave) / chunk))
                if batch_chunks >= self.batch_size or len(batch) >= 4 * self.batch_size:
                    self._flush(batch, bar)
                    batch, batch_chunks = [], 0
            if batch:
                self._flush(batch, bar)
        finally:
            bar.close()

    def _failed(self, item: tuple[FileInfo, int | None], problem: str) -> None:
        """Report a file that could not be indexed; if it changed since it was indexed, its old entry goes too."""
        f, replaces = item
        self.summary.failed.append((f.path, problem))
        if replaces is not None:
            with self._db_lock, self.store.transaction():
                self.store.conn.execute("UPDATE files SET gen_removed = ? WHERE id = ?", (self.N, replaces))
            self.summary.removed += 1

    def _flush(self, batch: list, bar) -> None:
        """Embed one batch and commit its rows in one transaction."""
        to_model = [b for b in batch if b[3] is None]
        embs: dict[int, object] = {}
        if to_model:
            waves = [b[1] for b in to_model]
            try:
                out = _embed_many(self.model, waves, self.batch_size)
                embs = {id(b): e for b, e in zip(to_model, out)}
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception:  # noqa: BLE001 - isolate the file that breaks the batch
                for b in to_model:
                    try:
                        embs[id(b)] = _embed_many(self.model, [b[1]], self.batch_size)[0]
                    except (KeyboardInterrupt, MemoryError):
                        raise
                    except Exception as exc:  # noqa: BLE001
                        embs[id(b)] = exc
        rows = []
        for b in batch:
            (f, replaces), wave, checksum, reuse = b
            try:
                if reuse is not None:
                    arrays = (reuse.vector, reuse.chunks.astype(np.float32), reuse.offsets, reuse.weights)
                    duration = reuse.duration
                    self.summary.reused += 1
                else:
                    emb = embs.get(id(b))
                    if isinstance(emb, Exception) or emb is None:
                        raise StemJepaError(f"embedding failed ({type(emb).__name__}: {emb})")
                    arrays = _embedding_arrays(emb, self.dim)
                    duration = len(wave) / _model_sample_rate(self.model)
            except StemJepaError as exc:
                self._failed((f, replaces), str(exc))
                continue
            rows.append((f, replaces, checksum, duration, arrays))
        s = self.store
        with self._db_lock, s.transaction():
            if self.dim is None and rows:
                self.dim = int(rows[0][4][0].shape[0])
                s.set("embed_dim", self.dim)
            for f, replaces, checksum, duration, (vector, chunks, offsets, weights) in rows:
                s.insert_row(f.path, f.size, f.mtime_ns, checksum, duration, offsets, weights, chunks, vector, self.N)
                if replaces is not None:
                    s.conn.execute("UPDATE files SET gen_removed = ? WHERE id = ?", (self.N, replaces))
                    self.summary.updated += 1
                else:
                    self.summary.added += 1
        bar.update(len(batch))
        self.on_phase("batch")

    # --- publish ---------------------------------------------------------------------------------------------------
    def _finish(self) -> None:
        s, G, N = self.store, self.G, self.N
        sm = self.summary
        old_paths = snapshot_paths(s.folder, G)
        records = s.get("snapshot_files")
        problem = check_snapshot(old_paths, records, full=True) if G > 0 else "no snapshot yet"
        snapshot_ok = problem is None and records is not None  # an older index without records gets them now
        if G > 0 and problem:
            sm.repaired = problem
        n_live = len(s.live_stats(N)) if self.dim else 0
        kind = resolve_index_type(self.policy, n_live)
        changed = sm.added or sm.updated or sm.removed or not snapshot_ok or kind != s.get("index_type")
        if not changed:
            sm.total, sm.index_type, sm.generation = n_live, kind, G
            return
        if self.dim:
            ids, vectors = s.visible_vectors(N, self.dim)
        else:  # nothing was ever embedded
            ids, vectors = np.zeros(0, np.int64), np.zeros((0, 1), np.float32)
        params = self._params(kind, len(ids))
        paths = snapshot_paths(s.folder, N)
        if self.progress:
            print(f"writing the {kind} index of {len(ids)} files...", file=sys.stderr, flush=True)
        written = ["ids", "vectors"]
        save_vectors(paths["ids"], ids)
        save_vectors(paths["vectors"], vectors)
        if kind == "exact" and len(ids):
            save_vectors(paths["bf16"], bf16_bits(vectors))  # screening copy for fast exact search
            written.append("bf16")
        ann = build_ann(kind, vectors, params, previous=self._previous_ann(kind))
        if ann is not None:
            write_ann(ann, paths["ann"])
            written.append("ann")
        record = snapshot_record({name: paths[name] for name in written})
        self.on_phase("snapshot")
        with s.transaction():
            s.set("generation", N)
            s.set("snapshot_files", record)
            s.set("index_type", kind)
            s.set("index_params", params)
            s.set("count", int(len(ids)))
            s.set("updated", time.strftime("%Y-%m-%dT%H:%M:%S"))
            s.conn.execute("DELETE FROM files WHERE gen_removed IS NOT NULL AND gen_removed < ?", (N,))
        self._cleanup(N)
        sm.total, sm.index_type, sm.generation = int(len(ids)), kind, N

    def _params(self, kind: str, n: int) -> dict:
        params = default_params(kind, n, self.dim or 1)
        old = self.store.get("index_params") or {}
        if kind == "ivfpq" and self.store.get("index_type") == "ivfpq":
            trained_n = old.get("trained_n", 0)
            if trained_n and 0.5 <= n / trained_n <= 2.0:  # keep the trained quantisers while the library is similar
                params = {**params, **{k: old[k] for k in ("nlist", "m", "nbits", "nprobe", "train_size") if k in old}}
                params["trained_n"] = trained_n
                return params
        if kind == "ivfpq":
            params["trained_n"] = n
        return params

    def _previous_ann(self, kind: str):
        if kind != "ivfpq" or self.store.get("index_type") != "ivfpq":
            return None
        path = snapshot_paths(self.store.folder, self.G)["ann"]
        try:
            return read_ann(path) if path.exists() else None
        except Exception:  # noqa: BLE001 - retrain instead
            return None

    def _cleanup(self, N: int) -> None:
        """Delete snapshots older than N-1 (readers may still hold N-1) and temp files of killed runs."""
        for p in self.store.folder.iterdir():
            name = p.name
            if name.startswith(".snapshot-") and (".tmp-" in name or name.endswith(".tmp")):
                p.unlink(missing_ok=True)
            elif name.startswith("snapshot-"):
                try:
                    gen = int(name.split(".")[0].split("-")[1])
                except (IndexError, ValueError):
                    continue
                if gen < N - 1 or gen > N:
                    p.unlink(missing_ok=True)


def _progress(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="file", disable=not enabled, dynamic_ncols=True)


# ------------------------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------------------------
class StemIndex:
    """A stem index opened for queries. Safe to use while an `index` run updates the folder: each query first checks
    for a newer committed generation and switches to it.

    >>> index = StemIndex.open("my_index")                       # checkpoint recorded in the index
    >>> index.query("song_without_bass.wav", "bass", k=5)        # [SearchResult(rank=1, score=..., path=...), ...]
    """

    def __init__(self, folder: Path, store: MetaStore, model=None, checkpoint: str | None = None, device=None,
                 precision: str | None = None):
        self._precision = precision
        self.folder, self.store = folder, store
        self._model, self._checkpoint, self._device = model, checkpoint, device
        self.generation = -1
        self.refresh()
        if model is not None:
            self._check_model(model)

    @classmethod
    def open(cls, path, checkpoint=None, model=None, device=None, precision: str | None = None) -> "StemIndex":
        """Open the index folder `path`. Queries embed with `model`, else `checkpoint`, else the index's checkpoint;
        a checkpoint whose model id differs from the one that built the index is refused. `precision`
        (auto|fp32|bf16|fp16), when given, is the model's inference precision for queries."""
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
                self._load_snapshot(gen)
                return True
            except FileNotFoundError:
                time.sleep(0.05)  # a writer published and cleaned up in between: read the generation again
        raise StemIndexError(f"{self.folder}: snapshot files of generation {gen} are missing; re-run `stemjepa index`")

    def _load_snapshot(self, gen: int) -> None:
        info = self.store.info()  # one statement: the generation and its file records belong together
        if int(info.get("generation", 0)) != gen:
            raise FileNotFoundError(gen)  # a writer committed in between: read again
        paths = snapshot_paths(self.folder, gen)
        repair = "; run `stemjepa index` on the library again to repair it"
        if not paths["ids"].exists():
            raise FileNotFoundError(paths["ids"])
        problem = check_snapshot(paths, info.get("snapshot_files"))
        if problem:
            raise StemIndexError(f"{problem}{repair}")
        kind = info.get("index_type", "exact")
        try:
            ids = np.load(paths["ids"])
            if len(ids):
                vectors = np.load(paths["vectors"], mmap_mode="r")
                if vectors.ndim != 2 or len(vectors) != len(ids) or not unit_rows_ok(vectors):
                    raise ValueError("vectors do not match the ids or are not unit vectors")
            else:
                vectors = np.zeros((0, info.get("embed_dim") or 1), np.float32)
            ann = None
            if kind != "exact" and len(ids):
                if not paths["ann"].exists():
                    raise FileNotFoundError(paths["ann"])
                ann = read_ann(paths["ann"])
            screen = np.load(paths["bf16"], mmap_mode="r") if kind == "exact" and paths["bf16"].exists() else None
        except FileNotFoundError:
            raise
        except (OSError, ValueError, RuntimeError) as exc:
            raise StemIndexError(f"{self.folder}: snapshot of generation {gen} is damaged ({str(exc)[:120]}){repair}") from None
        self.searcher = VectorSearcher(kind, info.get("index_params") or {}, vectors, ann, screen=screen)
        self.ids, self.dim, self.generation = ids, int(vectors.shape[1]), gen
        self.pool = PoolStats(vectors)  # places each query's cosines within the library (readable scores)

    # --- model -----------------------------------------------------------------------------------------------------
    @property
    def model(self):
        if self._model is None:
            ckpt = self._checkpoint or self.store.get("checkpoint")
            if not ckpt:
                raise CheckpointError(f"{self.folder}: the index records no model; pass one (--model NAME_OR_PATH)")
            from ..models.registry import resolve

            try:
                resolve(ckpt)
            except CheckpointError:
                raise CheckpointError(f"{ckpt}: model not found (the index {self.folder} was built with it, model "
                                      f"{self.model_id}); pass its new name or path with --model") from None
            model = load_checkpoint_model(ckpt, device=self._device)
            self._check_model(model, ckpt)
            self._model = model
        return self._model

    def _check_model(self, model, checkpoint=None) -> None:
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
                   batch_size: int | None = None) -> list[list[SearchResult]]:
        """Batched `query`: `instruments` is one text for all mixes or one per mix. Arrays are at `sample_rate`
        (default: the model's)."""
        if isinstance(instruments, str):
            instruments = [instruments] * len(mixes)
        if len(instruments) != len(mixes):
            raise StemJepaError(f"{len(mixes)} mixes but {len(instruments)} instrument texts")
        labels = [check_instrument(t) for t in instruments]
        if k < 1:
            raise StemJepaError(f"k must be at least 1, got {k}")
        model = self.model
        if self._precision is not None and hasattr(model, "precision"):
            model.precision = self._precision
        sr = _model_sample_rate(model)
        waves = []
        for mix in mixes:
            wave, _ = load_query(mix, sr)
            if sample_rate and sample_rate != sr and not isinstance(mix, (str, Path)):
                from ..audio.io import resample

                wave = resample(wave, sample_rate, sr)
            waves.append(wave)
        if batch_size is not None and "batch_size" in inspect.signature(model.query_many).parameters:
            embs = model.query_many(waves, labels, batch_size=batch_size)
        else:
            embs = model.query_many(waves, labels)
        vectors = np.stack([np.asarray(e.vector, np.float32).reshape(-1) for e in embs])
        if not np.all(np.isfinite(vectors)):
            raise CheckpointError(f"{getattr(model, 'checkpoint_path', 'the model')}: the model returned NaN or infinite "
                                  "values for the query (damaged weights?)")
        return self.search_vectors(vectors, k)

    def search_vectors(self, vectors: np.ndarray, k: int = 10) -> list[list[SearchResult]]:
        """Search with query vectors already computed (q, d): the best files, with their best-matching chunk."""
        self.refresh()
        q = normalize(np.atleast_2d(vectors))
        if len(self.ids) == 0:
            return [[] for _ in range(len(q))]
        if q.shape[1] != self.dim:
            raise StemJepaError(f"query vectors have dimension {q.shape[1]}, the index {self.dim}")
        scores, pos = self.searcher.search(q, k)
        wanted = {int(self.ids[p]) for p in pos.ravel() if p >= 0}
        rows = self.store.rows_by_id(wanted, self.dim)
        out = []
        for qi in range(len(q)):
            results = []
            mean, std = self.pool.moments(q[qi])
            for s, p in zip(scores[qi], pos[qi]):
                row = rows.get(int(self.ids[p])) if p >= 0 else None
                if row is None:
                    continue
                chunk_scores = row.chunks.astype(np.float32) @ q[qi]
                best = int(np.argmax(chunk_scores))
                rank = len(results) + 1
                results.append(SearchResult(rank=rank, score=standardised(float(s), mean, std),
                                            percentile=percentile(rank, len(self.ids)), cosine=float(s), path=row.path,
                                            offset=float(row.offsets[best]), chunk_cosine=float(chunk_scores[best]),
                                            duration=float(row.duration)))
            out.append(results)
        return out
