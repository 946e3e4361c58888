"""Writing a stem index: `build_index(root, out, model)` creates or updates the index folder (the reader is reader.py).

Index folder layout:
    index.sqlite               metadata + vectors of every file (source of truth), see store.py
    snapshot-<S|G>.*           what queries map: immutable shards + tombstones + one manifest per generation,
                               see snapshot.py
    index.lock                 held (flock) by the one `index` run allowed at a time
An update works on generation N = committed + 1, commits after every batch (a killed run resumes), writes the
snapshot of N (a shard of the rows it adds, the tombstones of those it removes: O(change)), then commits
`generation = N`: the moment the update appears to readers.
"""
from __future__ import annotations

import fcntl
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .. import __version__
from ..audio.io import AUDIO_EXTENSIONS, load_audio
from ..audio.quality import check_embeddable
from ..errors import AudioError, CheckpointError, DataError, StemJepaError
from ..fsutil import WriteError, describe_write_error
from .reader import MODEL_KEY, OLD_MODEL_KEY, recorded_model
from .snapshot import LAYOUT, check_previous, publish_generation
from .store import (
    ANALYSIS_CHECKED,
    DB_NAME,
    FORMAT_VERSION,
    LOCK_NAME,
    FileRow,
    FileVectors,
    IndexWriteError,
    MetaStore,
    StemIndexError,
    sqlite_write_error,
)
from .vectors import INDEX_POLICIES, default_params, normalize, resolve_index_type
from .walk import FileInfo, file_checksum, stat_file, walk_audio

if TYPE_CHECKING:  # the pipeline imports torch: loaded when the index embeds, not when a reader imports this module
    from ..models.pipeline import Decoded, FileEmbedding
    from ..models.protocol import EmbeddingModel


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
    merged: int = 0  # embeddings taken from the parts of sharded runs (--merge, parts.py)
    failed: list[tuple[str, str]] = field(default_factory=list)
    found: int = 0  # audio files found under the folder
    total: int = 0
    index_type: str = ""
    generation: int = 0
    repaired: str = ""  # the damaged snapshot that this run rewrote
    analysed: int = 0  # files already in the index analysed for tempo and key by this run (older index, new analyser)
    unanalysed: list[tuple[str, str]] = field(default_factory=list)  # indexed, but tempo/key analysis failed: (path, why)

    def text(self) -> str:
        lines = [f"{self.index}: {self.total} files searchable ({self.index_type}, generation {self.generation}); "
                 f"{self.added} added, {self.updated} updated, {self.unchanged} unchanged, {self.removed} removed, "
                 f"{len(self.failed)} failed"]
        extra = [f"{n} {what}" for n, what in ((self.resumed, "kept from an interrupted run"),
                                               (self.merged, "embedded by sharded runs"),
                                               (self.reused, "copied from identical files"),
                                               (self.analysed, "indexed before, now analysed for tempo and key")) if n]
        if extra:
            lines[0] += f" ({', '.join(extra)})"
        if self.repaired:
            lines.append(f"  repaired: {self.repaired}; the snapshot was rebuilt from {DB_NAME}")
        if not self.found:
            lines.append("  note: no audio files found under the folder (looked for "
                         f"{', '.join(e.lstrip('.') for e in AUDIO_EXTENSIONS)})")
        lines += [f"  failed: {path}: {problem}" for path, problem in self.failed]
        lines += [f"  no tempo/key (indexed without them): {path}: {problem}" for path, problem in self.unanalysed]
        return "\n".join(lines)


class _Todo(NamedTuple):
    """A file to embed and the live row of its previous version (None for a new file)."""

    file: FileInfo
    replaces: int | None


@dataclass
class _Loaded:
    """A file read for embedding: its wave, or the vectors of a stored file with the same bytes (`reuse`); its tempo
    and key analysis (`analysis_version` None: not analysed, `problem`: why the analysis failed)."""

    todo: _Todo
    checksum: str
    wave: np.ndarray | None
    reuse: FileRow | None
    analysis: dict | None = None
    analysis_version: int | None = None
    problem: str | None = None
    from_part: bool = False  # `reuse` is the row of a shard's part (a merge), not of this index


@dataclass
class _Embedded:
    """A file's row, ready to insert."""

    todo: _Todo
    checksum: str
    duration: float
    vectors: FileVectors
    analysis: dict | None = None
    analysis_version: int | None = None


def model_reference(spec) -> str | None:
    """What an index records for the model it was built with (NAME_OR_PATH): a built-in model's versioned name, else
    the file's absolute path (a name that is neither, e.g. a test's fake, is kept as an absolute path too)."""
    if not spec:
        return None
    from ..models.registry import resolve

    try:
        return resolve(spec).ref
    except CheckpointError:
        return str(Path(spec).resolve())


@dataclass(frozen=True)
class IndexOptions:
    """How an `index` run works; `build_index` also takes each of these by name."""

    batch_size: int = 16  # model chunks per forward pass, shared across files
    index_type: str | None = None  # auto | exact | ivfpq | hnsw; None: the index's current policy (auto when new)
    progress: bool = True  # progress bars on stderr
    allow_empty: bool = False  # allow an update that removes every file of a non-empty index
    precision: str | None = None  # auto | fp32 | bf16 | fp16 of every forward pass; None: the model's
    workers: int = 2  # decoding threads
    merge_from: str | None = None  # fold in the finished parts of `--shard` runs in this folder (parts.py)


def _index_options(options: IndexOptions | None, settings: dict) -> IndexOptions:
    options = options or IndexOptions()
    names = set(IndexOptions.__dataclass_fields__)
    unknown = sorted(set(settings) - names)
    if unknown:
        raise TypeError(f"build_index() got an unexpected keyword argument {unknown[0]!r}")
    return replace(options, **settings)


def analyse_wave(wave: np.ndarray, sample_rate: int) -> tuple[dict | None, str | None]:
    """(Analysis.to_dict(), None) of a decoded file, or (None, the problem) when the analyser fails on it: the file is
    still indexed, without tempo and key."""
    from ..analysis import analyse

    try:
        return analyse(np.asarray(wave, np.float32), int(sample_rate)).to_dict(), None
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - one file's analysis must not stop the index
        return None, f"tempo/key analysis failed ({type(exc).__name__}: {str(exc)[:160]})"


def _file_vectors(emb, dim: int) -> FileVectors:
    """The unit vectors of a TrackEmbedding, checked (a broken model must not put garbage into the index)."""
    vector = np.asarray(emb.vector, dtype=np.float32).reshape(-1)
    chunks = np.asarray(emb.chunks, dtype=np.float32).reshape(-1, vector.shape[0])
    offsets = np.asarray(emb.offsets, dtype=np.float32).reshape(-1)
    weights = np.asarray(emb.weights, dtype=np.float32).reshape(-1)
    if vector.shape[0] != dim:
        raise StemJepaError(f"model returned {vector.shape[0]}-d vectors, the index holds {dim}-d")
    if not (np.all(np.isfinite(vector)) and np.all(np.isfinite(chunks))) or np.linalg.norm(vector) == 0:
        raise StemJepaError("model returned a non-finite or zero embedding")
    if len(chunks) != len(offsets) or len(weights) != len(offsets) or len(offsets) == 0:
        raise StemJepaError("model returned inconsistent chunks/offsets/weights")
    return FileVectors(normalize(vector), normalize(chunks), offsets, weights)


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


PARTS_DIR = "parts"  # where `--shard I/N` runs write their parts by default (parts.py): INDEX/parts/I-of-N/


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise StemIndexError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and not (out / DB_NAME).exists() and any(p.name not in (LOCK_NAME, PARTS_DIR)
                                                              for p in out.iterdir()):
        raise StemIndexError(f"{out}: folder is not empty and holds no stem index; choose an empty or new --out folder")
    out.mkdir(parents=True, exist_ok=True)


def _checked_args(root, out, opts: IndexOptions) -> tuple[Path, Path]:
    """The library and index folders, resolved, once the options are known good (before anything is written)."""
    root, out = Path(root).expanduser().resolve(), Path(out).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{root}: folder not found (give the folder holding your stems)")
    if opts.index_type is not None and opts.index_type not in INDEX_POLICIES:
        raise StemJepaError(f"unknown index type {opts.index_type!r} (choose from {', '.join(INDEX_POLICIES)})")
    if opts.batch_size < 1:
        raise StemJepaError(f"--batch-size must be at least 1, got {opts.batch_size}")
    return root, out


def build_index(root, out, model: EmbeddingModel, model_ref=None, options: IndexOptions | None = None,
                on_phase: Callable[[str], None] | None = None, **settings: Any) -> IndexSummary:
    """Create or update the index in `out` for the audio files under `root`, embedded with `model`; the index records
    `model_ref` (its NAME_OR_PATH, `model_reference`: what queries load by default; `checkpoint=` is its former name).
    `options` (`IndexOptions`), or any of its fields by name (`batch_size=8, progress=False`), say how.

    New files are embedded, files unchanged since the last run (size + mtime, or checksum when only the mtime moved)
    are skipped, deleted files are dropped. Work is committed after every batch, so a run that is killed resumes where
    it stopped; the searchable index changes only at the final commit. `index_type` (auto|exact|ivfpq|hnsw) defaults
    to the index's current policy (auto for a new index). `batch_size` is the number of model chunks per forward pass.
    Each embedded file's tempo and key (stemjepa.analysis) are estimated from the wave decoded for the model and stored
    with its row; rows without an analysis of the current ANALYSIS_VERSION (an older index or analyser) are analysed in
    place, their vectors kept. A file whose analysis fails is indexed without it and listed in `summary.unanalysed`.
    `on_phase(name)` is called at "batch" (a batch committed), "analysis" (a batch of older rows analysed) and
    "snapshot" (snapshot written, not yet committed).
    An update that would remove every file of a non-empty index (an unmounted drive) is refused unless `allow_empty`.
    A full disk or a write error ends the run with one line; the previous generation stays searchable.
    `precision` (auto|fp32|bf16|fp16; default: the model's) is that of every forward pass (models/precision.py).
    `merge_from` (a folder of `--shard` parts, parts.py): the files they embedded are taken from them, not embedded;
    refused unless all N parts are there and finished; they are deleted once the generation is committed.
    """
    model_ref = model_ref or settings.pop(OLD_MODEL_KEY, None)
    opts = _index_options(options, settings)
    root, out = _checked_args(root, out, opts)
    try:
        _prepare_out(out)
        with _writer_lock(out):
            parts = None
            if opts.merge_from is not None:  # checked before the index is touched
                from .parts import PartSet

                parts = PartSet.open(Path(opts.merge_from).expanduser().resolve(), root, model)
            store = MetaStore(out, create=True)
            try:
                summary = _Update(store, root, model, model_ref, opts, on_phase, parts).run()
            finally:
                store.close()
                if parts is not None:
                    parts.close()
            if parts is not None:
                parts.merged(summary.generation)  # committed: the parts are not needed any more
            return summary
    except IndexWriteError:
        raise
    except WriteError as exc:
        if exc.errno is None:
            raise StemIndexError(f"{exc} (the previous index is still usable)") from None
        raise IndexWriteError(exc.path, OSError(exc.errno, os.strerror(exc.errno))) from None
    except sqlite3.Error as exc:
        raise sqlite_write_error(out / DB_NAME, exc) from None
    except OSError as exc:
        path = getattr(exc, "filename", None) or out
        if exc.errno is None:
            raise StemIndexError(f"{describe_write_error(path, exc)} (the previous index is still usable)") from None
        raise IndexWriteError(path, exc) from None


class _Update:
    """One `index` run on generation N = committed + 1 (see store.py): plan, embed, publish."""

    def __init__(self, store: MetaStore, root: Path, model: EmbeddingModel, model_ref, options: IndexOptions,
                 on_phase: Callable[[str], None] | None, parts=None):
        self.store, self.root, self.model, self.options = store, root, model, options
        self.parts = parts  # parts.PartSet of a merge: rows embedded by `--shard` runs, looked up by path
        self.allow_empty, self.precision = options.allow_empty, options.precision
        self.model_ref = model_reference(model_ref)
        self.batch_size, self.progress = options.batch_size, options.progress
        self.on_phase = on_phase or (lambda phase: None)
        self.summary = IndexSummary(index=str(store.folder))
        self._db_lock = threading.Lock()  # the loader threads look up reusable rows on the same connection
        from ..analysis import ANALYSIS_VERSION, index_time_analysis

        self.analysis_version = int(ANALYSIS_VERSION)
        self.analyse = index_time_analysis()  # off: rows are stored without tempo/key, a later run adds them
        self._init_info(options.index_type)
        self.G = store.generation
        self.N = self.G + 1
        self._checked: dict | None = None  # the analysis check to record with the commit (_analyse_stale)

    def _init_info(self, index_type: str | None) -> None:
        s, model_id = self.store, str(self.model.model_id)
        with s.transaction():
            if s.get("format_version") is None:
                s.set("format_version", FORMAT_VERSION)
                s.set("model_id", model_id)
                s.set("generation", 0)
                s.set("index_policy", index_type or "auto")
                s.set("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
                s.set("sample_rate", int(self.model.sample_rate))
                s.set("checksum", "blake2b-128")
            elif s.get("model_id") != model_id:
                raise CheckpointError(
                    f"{s.folder}: index was built with model {s.get('model_id')} ({recorded_model(s)}), this "
                    f"--model is model {model_id}: index with the same model, or choose a new --out folder")
            if self.model_ref:
                s.set(MODEL_KEY, self.model_ref)
            if index_type is not None:
                s.set("index_policy", index_type)
            s.set("stemjepa_version", __version__)
            if s.get("embed_dim") is None:
                s.set("embed_dim", int(self.model.embed_dim))
        self.dim = int(s.get("embed_dim"))
        self.policy = s.get("index_policy")

    # --- plan ------------------------------------------------------------------------------------------------------
    def run(self) -> IndexSummary:
        s, G, N, sm = self.store, self.G, self.N, self.summary
        with s.transaction():  # forget the removals of an interrupted run: they are recomputed below
            s.forget_removals(N)
        live, pending = s.live_stats(G), s.pending_stats(N)
        found, walk_errors = walk_audio(self.root, exclude=[s.folder])
        sm.failed += walk_errors
        sm.found = len(found)
        on_disk = {f.path for f in found}

        to_embed: list[_Todo] = []
        remove: list[int] = []
        drop_pending: list[int] = []
        touched: dict[int, int] = {}  # row id -> new mtime_ns (same bytes)
        for f in found:
            old, done = live.get(f.path), pending.get(f.path)
            if done is not None:
                if (done.size, done.mtime_ns) == (f.size, f.mtime_ns):
                    sm.resumed += 1
                    sm.updated += old is not None
                    sm.added += old is None
                    if old is not None:
                        remove.append(old.id)
                    continue
                drop_pending.append(done.id)
            if old is not None and old.size == f.size:
                if old.mtime_ns == f.mtime_ns or self._checksum(f) == old.checksum:
                    if old.mtime_ns != f.mtime_ns:
                        touched[old.id] = f.mtime_ns
                    sm.unchanged += 1
                    continue
            to_embed.append(_Todo(f, old.id if old else None))
        drop_pending += [row.id for path, row in pending.items() if path not in on_disk]
        for path, row in live.items():
            if path in on_disk:
                continue
            under_root = path.startswith(str(self.root) + os.sep)
            # deleted; files indexed from another folder stay while they exist
            if under_root or stat_file(path) is None:
                remove.append(row.id)
                sm.removed += 1
        keeps = to_embed or sm.unchanged or sm.resumed
        if live and len(remove) == len(live) and not keeps and not self.allow_empty:
            raise StemIndexError(
                f"{self.root}: this update would remove all {len(live)} files of the index {s.folder} (no audio file "
                "found where they were: is the drive mounted?); nothing was changed. Pass --allow-empty to empty it")
        with s.transaction():
            s.delete_rows(drop_pending)
            s.set_mtimes(touched)
            s.mark_removed(remove, N)

        self._embed_all(to_embed)
        self._analyse_stale()
        self._publish()
        return sm

    @staticmethod
    def _checksum(f: FileInfo) -> str | None:
        try:
            return file_checksum(f.path)
        except OSError:
            return None

    # --- embed -----------------------------------------------------------------------------------------------------
    def _load(self, todo: _Todo) -> Decoded:
        """Runs in a loader thread: checksum, then the stored vectors of identical bytes or the decoded wave."""
        from ..models.pipeline import Decoded

        path = todo.file.path
        hit = self.parts.lookup(todo.file) if self.parts is not None else None  # a merge: embedded by a shard
        if hit is not None and hit.row is None:
            raise AudioError(path, hit.problem)  # the shard could not embed it: reported, not tried again
        if hit is not None:
            checksum, reuse, note = hit.row.checksum, hit.row, hit.problem
        else:
            checksum, note = file_checksum(path), None
            with self._db_lock:  # a copied or renamed file: its vectors are reused, not recomputed
                reuse = self.store.row_by_checksum(checksum, self.dim)
        version, from_part = self.analysis_version, hit is not None
        if reuse is not None and (reuse.analysis_version == version or not self.analyse):
            return Decoded(None, _Loaded(todo, checksum, None, reuse, reuse.analysis, reuse.analysis_version, note,
                                         from_part))
        sr = self.model.sample_rate
        if reuse is not None:  # same vectors; analysed now (a row of an older index or analyser); else next run
            try:
                analysis, problem = analyse_wave(load_audio(path, sample_rate=sr, mono=True), sr)
            except (AudioError, OSError) as exc:
                problem = getattr(exc, "problem", None) or str(exc)
                return Decoded(None, _Loaded(todo, checksum, None, reuse, None, None, problem, from_part))
            return Decoded(None, _Loaded(todo, checksum, None, reuse, analysis, version, problem, from_part))
        wave = load_audio(path, sample_rate=sr, mono=True)  # the one decode of the file, for the model and the analyser
        check_embeddable(wave, sr, path)  # the pipeline's rule (models.pipeline.decode_for_model)
        if not self.analyse:
            return Decoded(wave, _Loaded(todo, checksum, wave, None))
        analysis, problem = analyse_wave(wave, sr)  # from the wave decoded for the model: each file is decoded once
        return Decoded(wave, _Loaded(todo, checksum, wave, None, analysis, version, problem))

    def _embed_all(self, to_embed: list[_Todo]) -> None:
        """Embed the files (models.pipeline.embed_files) and commit their rows after every model batch."""
        from ..models.pipeline import EmbedOptions, embed_files

        if not to_embed:
            return
        bar = _progress(len(to_embed), self.progress, "embedding")
        options = EmbedOptions(batch_size=self.batch_size, workers=self.options.workers, precision=self.precision)
        rows: list[_Embedded] = []
        try:
            for got in embed_files(self.model, to_embed, options, load=self._load,
                                   on_progress=lambda done, total, seconds: bar.update(done - bar.n)):
                row = self._row(got)
                if row is not None:
                    rows.append(row)
                if got.batch_end:
                    self._flush(rows)
                    rows = []
        finally:
            bar.close()

    def _failed(self, todo: _Todo, problem: str) -> None:
        """Report a file that could not be indexed; if it changed since it was indexed, its old entry goes too."""
        self.summary.failed.append((todo.file.path, problem))
        if todo.replaces is not None:
            with self._db_lock, self.store.transaction():
                self.store.mark_removed([todo.replaces], self.N)
            self.summary.removed += 1

    def _row(self, got: FileEmbedding) -> _Embedded | None:
        """The row of one file of the pipeline: its reused or new vectors; None (reported) when it failed."""
        if got.problem is not None:
            self._failed(got.item, got.problem)
            return None
        b: _Loaded = got.decoded.extra
        try:
            if b.reuse is not None:
                row = _Embedded(b.todo, b.checksum, b.reuse.duration, b.reuse.vectors, b.analysis, b.analysis_version)
                if b.from_part:
                    self.summary.merged += 1
                else:
                    self.summary.reused += 1
            else:
                duration = len(b.wave) / self.model.sample_rate
                row = _Embedded(b.todo, b.checksum, duration, _file_vectors(got.embedding, self.dim), b.analysis,
                                b.analysis_version)
        except StemJepaError as exc:
            self._failed(b.todo, str(exc))
            return None
        if b.problem:
            self.summary.unanalysed.append((b.todo.file.path, b.problem))
        return row

    def _flush(self, rows: list[_Embedded]) -> None:
        """Commit the rows of one model batch in one transaction."""
        s = self.store
        with self._db_lock, s.transaction():
            for row in rows:
                s.insert_row(row.todo.file, row.checksum, row.duration, row.vectors, self.N, row.analysis,
                             row.analysis_version)
            s.mark_removed([r.todo.replaces for r in rows if r.todo.replaces is not None], self.N)
            self._commit_also(rows)
        replaced = sum(r.todo.replaces is not None for r in rows)
        self.summary.updated += replaced
        self.summary.added += len(rows) - replaced
        self.on_phase("batch")

    def _commit_also(self, rows: list[_Embedded]) -> None:
        """What else is committed with a batch's rows (a shard's part: the problems of its files)."""

    # --- tempo and key of rows indexed before --------------------------------------------------------------------------
    def _analyse_stale(self) -> None:
        """Analyse the files of the index that have no analysis of this ANALYSIS_VERSION (an index written before
        analysis existed, or by an older analyser): decoded again (their vectors are kept), updated in place.
        Only the rows added since the last complete check are looked at (`ANALYSIS_CHECKED`: a range of row ids, so a
        run on a large unchanged library reads none of its rows)."""
        if not self.analyse:  # the rows stay unanalysed, and are found by the next run that analyses
            return
        s, version = self.store, self.analysis_version
        checked = s.get(ANALYSIS_CHECKED) or {}
        after = int(checked.get("through_id", 0)) if checked.get("version") == version else 0
        top = s.max_id()
        stale = s.stale_analysis(self.N, version, after_id=after)
        unreadable: list[int] = []  # left unanalysed: tried again next run
        if stale:
            self._analyse_rows(stale, unreadable)
        through = min(unreadable) - 1 if unreadable else top
        if (after, checked.get("version")) != (through, version):  # recorded once generation N is committed (a row
            self._checked = {"version": version, "through_id": int(through)}  # this run removes may come back if not)

    def _analyse_rows(self, stale: list[tuple[int, str]], unreadable: list[int], batch: int = 32) -> None:
        from ..models.inference import prefetch

        sr = self.model.sample_rate

        def load(item):
            return analyse_wave(load_audio(item[1], sample_rate=sr, mono=True), sr)

        bar = _progress(len(stale), self.progress, "tempo and key")
        done: list[tuple[int, dict | None]] = []
        try:
            for (row_id, path), fut in prefetch(stale, load):
                try:
                    analysis, problem = fut.result()
                except (AudioError, OSError) as exc:  # unreadable now: left unanalysed, tried again next run
                    self.summary.unanalysed.append((path, getattr(exc, "problem", None) or str(exc)))
                    unreadable.append(row_id)
                    bar.update(1)
                    continue
                if problem:
                    self.summary.unanalysed.append((path, problem))
                done.append((row_id, analysis))
                bar.update(1)
                if len(done) >= batch:
                    self._store_analyses(done)
                    done = []
            self._store_analyses(done)
        finally:
            bar.close()

    def _store_analyses(self, done: list[tuple[int, dict | None]]) -> None:
        if not done:
            return
        s = self.store
        with self._db_lock, s.transaction():
            for row_id, analysis in done:
                s.set_analysis(row_id, analysis, self.analysis_version)
            s.analyses_changed()
        self.summary.analysed += len(done)
        self.on_phase("analysis")

    # --- publish ---------------------------------------------------------------------------------------------------
    def _publish(self) -> None:
        """Write the snapshot of N and commit it (snapshot.py: a shard of the added rows and the tombstones of the
        removed ones, or a compaction when worthwhile), unless nothing changed and the current snapshot is sound.
        A damaged snapshot (sizes and sampled checksums; the previous run's files in full) is rebuilt from SQLite;
        a format-1 index is migrated (its snapshot kept as the first shard)."""
        s, G, N, sm = self.store, self.G, self.N, self.summary
        previous = check_previous(s)
        if G > 0 and previous.problem:
            sm.repaired = previous.problem
        n_live = s.count_visible(N)
        kind = resolve_index_type(self.policy, n_live)
        current = previous.manifest is not None and previous.manifest.get("layout") == LAYOUT
        changed = sm.added or sm.updated or sm.removed or not current or kind != s.get("index_type")
        if not changed:
            sm.total, sm.index_type, sm.generation = n_live, kind, G
            self._record_checked()
            return
        params = self._params(kind, n_live)
        if self.progress:
            print(f"writing generation {N} of the {kind} index ({n_live} files)...", file=sys.stderr, flush=True)
        publish_generation(s, N, kind, params, previous, on_written=lambda: self.on_phase("snapshot"))
        sm.total, sm.index_type, sm.generation = n_live, kind, N
        self._record_checked()

    def _record_checked(self) -> None:
        if self._checked is not None:
            with self.store.transaction():
                self.store.set(ANALYSIS_CHECKED, self._checked)

    def _params(self, kind: str, n: int) -> dict:
        params = default_params(kind, n, self.dim)
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


def _progress(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="file", disable=not enabled, dynamic_ncols=True)
