"""Embedding a library over many processes or machines: each *shard* embeds its files into a *part*, and a merge folds
the parts into the index through the normal writer (build.py), so the index is the one a single process would write.

    stemjepa index DIR --out INDEX --shard I/N     # no engine: a SLURM array task, a loop over hosts...
    stemjepa index DIR --out INDEX --merge         # once every part is finished: one new generation, nothing embedded
    stemjepa index DIR --out INDEX --engine lightning --workers 2 [--num-nodes M]   # both, through Lightning Fabric

Shard I of N holds the audio files whose path relative to DIR hashes to I (`shard_of`: a stable hash, so adding files
moves no other file between shards), except those the index already holds unchanged. Its part, `INDEX/parts/I-of-N/`
(or `--parts DIR`), is an SQLite file with the index's own row schema (store.py): path, size, mtime, checksum,
duration, file and chunk vectors, chunk offsets and weights, tempo and key, plus the problems of the files it could
not embed. Rows are committed after every model batch, so a killed shard resumes where it stopped (files already in
its part are skipped); the part is marked finished at the end. A merge refuses until all N parts are finished; it then
runs the normal update, which takes each file's row from the part that holds it (same path, size and mtime; the
checksum and vectors are copied, so the merged index equals a one-process index of the same files bit for bit), and
embeds only files that no part holds (added after the shards ran). Once the merge is committed, the parts are marked
merged and deleted.

The engine is Lightning Fabric (already used by training): it launches `--workers` local processes, or joins those that
torchrun or SLURM started (its cluster environments), and gives each its rank and device; each rank runs its shard,
waits for the others (a gloo barrier: no tensor leaves the device), and rank 0 merges.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ..errors import CheckpointError, DataError, StemJepaError
from .build import (
    PARTS_DIR,
    IndexOptions,
    IndexSummary,
    _Embedded,
    _index_options,
    _prepare_out,
    _Todo,
    _Update,
    _writer_lock,
    build_index,
)
from .store import DB_NAME, FileRow, MetaStore, StemIndexError
from .walk import FileInfo, walk_audio

if TYPE_CHECKING:
    from ..models.protocol import EmbeddingModel

PART_DB = "part.sqlite"
_PART_NAME = re.compile(r"^(\d+)-of-(\d+)$")
_PART_SCHEMA = """
CREATE TABLE IF NOT EXISTS problems (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    problem TEXT NOT NULL,
    embedded INTEGER NOT NULL   -- 0: not embedded (reported as failed), 1: embedded without tempo/key
);
"""
BARRIER_TIMEOUT = timedelta(days=7)  # the ranks wait for the slowest shard (a dead rank ends the wait at once)


def shard_of(relative_path: str, n: int) -> int:
    """The shard (0..n-1) of a file, from its path relative to the library folder (stable across runs and machines)."""
    digest = hashlib.blake2b(relative_path.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n


def parse_shard(text: str) -> tuple[int, int]:
    """(I, N) of an `I/N` shard, 0 <= I < N."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or not 0 <= int(m[1]) < int(m[2]):
        raise ValueError(f"{text!r} is not a shard I/N with 0 <= I < N (e.g. 0/4 ... 3/4)")
    return int(m[1]), int(m[2])


def parts_folder(out, parts=None) -> Path:
    """Where the parts of the index `out` are written: `parts`, or INDEX/parts."""
    return Path(parts).expanduser().resolve() if parts else Path(out).expanduser().resolve() / PARTS_DIR


class PartStore(MetaStore):
    """The SQLite file of one part: the index's row schema (all rows at generation 1) and the problems of its files."""

    db_name = PART_DB

    def _connect(self):
        conn = super()._connect()
        conn.executescript(_PART_SCHEMA)
        return conn

    def problems(self) -> dict[str, tuple[int, int, str, bool]]:
        """path -> (size, mtime_ns, problem, embedded)."""
        return {r[0]: (r[1], r[2], r[3], bool(r[4]))
                for r in self.conn.execute("SELECT path, size, mtime_ns, problem, embedded FROM problems")}


@dataclass
class PartSummary:
    """What a `--shard I/N` run did."""

    part: str
    shard: tuple[int, int]
    files: int = 0  # audio files of this shard
    embedded: int = 0  # rows added to the part by this run
    kept: int = 0  # already in the part (a resumed run)
    in_index: int = 0  # unchanged in the index: nothing to do
    failed: list[tuple[str, str]] = field(default_factory=list)
    unanalysed: list[tuple[str, str]] = field(default_factory=list)

    def text(self) -> str:
        i, n = self.shard
        lines = [f"{self.part}: shard {i}/{n}: {self.files} files; {self.embedded} embedded, {self.kept} kept from an "
                 f"earlier run, {self.in_index} unchanged in the index, {len(self.failed)} failed; part finished (merge "
                 "with --merge once every shard is)"]
        lines += [f"  failed: {path}: {problem}" for path, problem in self.failed]
        lines += [f"  no tempo/key (embedded without them): {path}: {problem}" for path, problem in self.unanalysed]
        return "\n".join(lines)


class _PartRun(_Update):
    """One shard's run into its part: the index run's embedding code (build.py), rows committed to the part."""

    def __init__(self, store: PartStore, root: Path, model, options: IndexOptions, index_folder: Path,
                 index_live: dict, shard: tuple[int, int]):
        super().__init__(store, root, model, None, options, None)
        self.index_folder, self.index_live, self.shard = index_folder, index_live, shard
        self.files: dict[str, FileInfo] = {}
        self._noted = (0, 0)  # summary.failed / summary.unanalysed entries already committed to the part

    def run(self) -> PartSummary:  # type: ignore[override]
        s, (i, n) = self.store, self.shard
        record = {"root": str(self.root), "shard": i, "of": n, "finished": False}
        with s.transaction():
            s.set("part", record)
        found, walk_errors = walk_audio(self.root, exclude=[self.index_folder],
                                        select=lambda rel: shard_of(rel, n) == i)
        self.files = {f.path: f for f in found}
        out = PartSummary(str(s.folder), self.shard, files=len(found), failed=list(walk_errors))
        have, problems = s.pending_stats(self.N), s.problems()
        to_embed, drop, forget = [], [], []
        for f in found:
            row, known = have.get(f.path), problems.get(f.path)
            if row is not None and (row.size, row.mtime_ns) == (f.size, f.mtime_ns):
                out.kept += 1
                continue
            if row is not None:
                drop.append(row.id)
            if known is not None and known[:2] == (f.size, f.mtime_ns) and not known[3]:
                out.failed.append((f.path, known[2]))  # failed before on the same bytes: not tried again
                continue
            old = self.index_live.get(f.path)
            if old is not None and old.size == f.size and (old.mtime_ns == f.mtime_ns or self._checksum(f) == old.checksum):
                out.in_index += 1
                continue
            to_embed.append(_Todo(f, None))
        drop += [r.id for path, r in have.items() if path not in self.files]  # gone, or no longer of this shard
        forget = [path for path, known in problems.items() if path not in self.files or known[:2] != (
            self.files[path].size, self.files[path].mtime_ns) or (known[3] and path not in have)]
        with s.transaction():
            s.delete_rows(drop)
            s.conn.executemany("DELETE FROM problems WHERE path = ?", [(p,) for p in forget])
        self._embed_all(to_embed)
        out.embedded = self.summary.added
        out.failed += self.summary.failed
        out.unanalysed = self.summary.unanalysed
        with s.transaction():
            s.set("part", {**record, "finished": True, "files": len(found)})
        return out

    def _commit_also(self, rows: list[_Embedded]) -> None:
        """The problems found since the last batch, with its rows: a resumed shard neither retries nor forgets them."""
        failed, unanalysed = self.summary.failed, self.summary.unanalysed
        new = [(p, q, 0) for p, q in failed[self._noted[0]:]] + [(p, q, 1) for p, q in unanalysed[self._noted[1]:]]
        self._noted = (len(failed), len(unanalysed))
        self.store.conn.executemany(
            "INSERT OR REPLACE INTO problems(path, size, mtime_ns, problem, embedded) VALUES (?, ?, ?, ?, ?)",
            [(p, self.files[p].size, self.files[p].mtime_ns, q, e) for p, q, e in new if p in self.files])


def embed_part(root, out, model: EmbeddingModel, shard: tuple[int, int], options: IndexOptions | None = None,
               parts=None, **settings) -> PartSummary:
    """Embed shard `shard` = (I, N) of the audio files under `root` into its part (`parts_folder(out, parts)/I-of-N`),
    skipping files that the index `out` (when it exists) holds unchanged and files already in the part. The index
    itself is not written: `build_index(..., merge_from=...)` (`--merge`) folds the finished parts in."""
    opts = _index_options(options, settings)
    i, n = shard
    if not 0 <= i < n:
        raise StemJepaError(f"shard {i}/{n}: I must be in 0..N-1")
    root, out = Path(root).expanduser().resolve(), Path(out).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{root}: folder not found (give the folder holding your stems)")
    _prepare_out(out)  # a folder that is not an index is never written into
    folder = parts_folder(out, parts) / f"{i}-of-{n}"
    folder.mkdir(parents=True, exist_ok=True)
    index_live = _index_live(out, model)
    with _writer_lock(folder):
        store = PartStore(folder, create=True)
        try:
            record = store.get("part")
            if record and (record.get("root") != str(root) or store.get("model_id") != str(model.model_id)):
                raise StemIndexError(
                    f"{folder}: part of another library or model ({record.get('root')}, model {store.get('model_id')});"
                    " delete it, or run this shard with the same DIR and --model")
            return _PartRun(store, root, model, opts, out, index_live, (i, n)).run()
        finally:
            store.close()


def _index_live(out: Path, model) -> dict:
    """path -> FileStat of the files the index `out` holds (none when there is no index yet)."""
    if not (out / DB_NAME).is_file():
        return {}
    store = MetaStore(out)
    try:
        if store.get("model_id") not in (None, str(model.model_id)):
            raise CheckpointError(f"{out}: index was built with model {store.get('model_id')}, this --model is model "
                                  f"{model.model_id}: shard with the same model, or choose a new --out folder")
        return store.live_stats(store.generation)
    finally:
        store.close()


class PartHit(NamedTuple):
    """A file found in a part: its row (None: the shard could not embed it) and its problem, if any."""

    row: FileRow | None
    problem: str | None


class PartSet:
    """The finished parts of N shards, opened by a merge (build.py `_Update._load` looks files up in them)."""

    def __init__(self, folder: Path, stores: list[PartStore], dim: int):
        self.folder, self.stores, self.dim = folder, stores, dim
        self._lock = threading.Lock()
        self.rows: dict[str, tuple[int, int, int, int]] = {}  # path -> (part, row id, size, mtime_ns)
        self.problems: dict[str, tuple[int, int, str, bool]] = {}
        for k, s in enumerate(stores):
            self.rows.update({p: (k, st.id, st.size, st.mtime_ns) for p, st in s.pending_stats(1).items()})
            self.problems.update(s.problems())

    @classmethod
    def open(cls, folder: Path, root: Path, model) -> PartSet:
        """The parts in `folder`, refused unless they are the N finished parts of `root` embedded with `model`."""
        found = sorted((int(m[1]), int(m[2]), p) for p in (folder.iterdir() if folder.is_dir() else [])
                       if (m := _PART_NAME.match(p.name)) and (p / PART_DB).is_file())
        run_shards = "run `stemjepa index DIR --out INDEX --shard I/N` for every I in 0..N-1 first"
        if not found:
            raise StemIndexError(f"{folder}: no shard parts to merge; {run_shards}")
        counts = sorted({n for _, n, _ in found})
        if len(counts) > 1:
            raise StemIndexError(f"{folder}: parts of different shard counts ({', '.join(map(str, counts))}); "
                                 "keep the parts of one --shard I/N set and delete the others")
        stores = [PartStore(p, create=True) for _, _, p in found]
        try:
            merged = [s.get("merged_into") is not None for s in stores]
            if all(merged):  # a merge committed, then stopped while deleting them
                for s in stores:
                    s.close()
                _delete_parts(folder, [p for _, _, p in found])
                raise StemIndexError(f"{folder}: no shard parts to merge (they were merged already); {run_shards}")
            n = counts[0]
            missing = sorted(set(range(n)) - {i for i, _, _ in found})
            if missing:
                raise StemIndexError(f"{folder}: shard parts {', '.join(f'{i}/{n}' for i in missing)} missing; run them "
                                     "(`--shard I/N`) before --merge")
            for (i, _, p), s in zip(found, stores):
                record = s.get("part") or {}
                if record.get("root") != str(root):
                    raise StemIndexError(f"{p}: part of the library {record.get('root')}, not {root}")
                if s.get("model_id") != str(model.model_id):
                    raise CheckpointError(f"{p}: part embedded with model {s.get('model_id')}, this --model is model "
                                          f"{model.model_id}: merge with the same model")
                if not record.get("finished") and not s.get("merged_into"):
                    raise StemIndexError(f"{p}: shard {i}/{n} is not finished (killed, or still running); run "
                                         f"`--shard {i}/{n}` again (it resumes), then --merge")
            return cls(folder, stores, int(stores[0].get("embed_dim") or model.embed_dim))
        except BaseException:
            for s in stores:
                s.conn.close()
            raise

    def lookup(self, f: FileInfo) -> PartHit | None:
        """The part's row of a file with this path, size and mtime, or the reason it has none; None: in no part."""
        known = self.problems.get(f.path)
        if known is not None and known[:2] != (f.size, f.mtime_ns):
            known = None  # about an earlier version of the file
        at = self.rows.get(f.path)
        if at is not None and at[2:] == (f.size, f.mtime_ns):
            with self._lock:
                row = self.stores[at[0]].rows_by_id([at[1]], self.dim)[at[1]]
            return PartHit(row, known[2] if known is not None and known[3] else None)
        if known is not None and not known[3]:
            return PartHit(None, known[2])
        return None

    def close(self) -> None:
        for s in self.stores:
            s.conn.close()

    def merged(self, generation: int) -> None:
        """After the merge's commit: mark every part merged (a merge stopped while deleting them finds them marked),
        then delete them."""
        paths = [s.folder for s in self.stores]
        for p in paths:
            s = PartStore(p, create=True)
            try:
                with s.transaction():
                    s.set("merged_into", int(generation))
            finally:
                s.conn.close()
        _delete_parts(self.folder, paths)


def _delete_parts(folder: Path, paths: list[Path]) -> None:
    for p in paths:
        shutil.rmtree(p, ignore_errors=True)
    try:
        folder.rmdir()  # only when empty: nothing else the user keeps there is touched
    except OSError:
        pass


@dataclass(frozen=True)
class Cluster:
    """Where `--engine lightning` runs: `workers` processes per node (launched here, or those torchrun / SLURM
    started), `num_nodes` nodes, on `accelerator` (auto, cpu, cuda, cuda:1...)."""

    workers: int = 1
    num_nodes: int = 1
    accelerator: str = "auto"


def index_with_lightning(root, out, load: Callable[[object], EmbeddingModel], model_ref=None,
                         options: IndexOptions | None = None, *, cluster: Cluster = Cluster(),
                         parts=None) -> IndexSummary | PartSummary:
    """`--engine lightning`: Lightning Fabric launches the `cluster`'s local processes (or joins those torchrun or
    SLURM started); each loads the model with `load(device)` and embeds its shard (rank/world size) into its part,
    then rank 0 merges every part into the index. Rank 0 returns the index's summary, the other ranks their part's."""
    import lightning as L
    import torch
    from lightning.fabric.strategies import DDPStrategy

    from ..training.fit import quiet_lightning

    quiet_lightning()
    opts = options or IndexOptions()
    accelerator = "gpu" if cluster.accelerator.startswith(("cuda", "gpu")) else cluster.accelerator  # Lightning's name
    fabric = L.Fabric(accelerator=accelerator, devices=cluster.workers, num_nodes=cluster.num_nodes,
                      strategy=DDPStrategy(process_group_backend="gloo", timeout=BARRIER_TIMEOUT))
    fabric.launch()
    rank, world = fabric.global_rank, fabric.world_size
    if fabric.device.type == "cpu":  # the node's cores shared between its processes
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, cluster.workers)))
    error: BaseException | None = None
    part = None
    try:
        model = load(fabric.device)
        part = embed_part(root, out, model, (rank, world), replace(opts, progress=opts.progress and rank == 0),
                          parts=parts)
    except Exception as exc:  # noqa: BLE001 - every rank must reach the barrier; raised after it
        error = exc
    fabric.barrier()  # every part finished (or failed: the merge then names it)
    if error is not None:
        raise error
    if rank != 0:
        return part
    return build_index(root, out, model, model_ref=model_ref,
                       options=replace(opts, merge_from=str(parts_folder(out, parts))))


__all__ = ["PART_DB", "Cluster", "PartHit", "PartSet", "PartStore", "PartSummary", "embed_part", "index_with_lightning",
           "parse_shard", "parts_folder", "shard_of"]
