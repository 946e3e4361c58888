"""The snapshot of one generation: the files a query maps, written once by `index` and never changed afterwards.

    snapshot-<G>.ids.npy       int64 row ids of the files searchable at generation G, ascending
    snapshot-<G>.vectors.npy   float32 (n, d) their L2-normalised file vectors, same order (memory-mapped by queries)
    snapshot-<G>.bf16.npy      the same in bfloat16 (exact index only): fast screening, re-scored in float32
    snapshot-<G>.ann.faiss     the approximate index over those rows (ivfpq / hnsw only)

Each file is written under a temporary name and renamed (fsutil.atomic_write); the writer then commits
`generation = G` with the files' records (integrity.py), so a reader sees generation G-1 or G, complete. The snapshot
of G-1 is kept so that readers that opened it keep working.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .integrity import check_snapshot, snapshot_record, unit_rows_ok
from .scores import PoolStats
from .store import StemIndexError
from .vectors import VectorSearcher, bf16_bits, build_ann, read_ann, save_vectors, write_ann

REPAIR = "; run `stemjepa index` on the library again to repair it"


def snapshot_paths(folder: Path, generation: int) -> dict[str, Path]:
    return {name: Path(folder) / f"snapshot-{generation}.{name}.{ext}"
            for name, ext in (("ids", "npy"), ("vectors", "npy"), ("bf16", "npy"), ("ann", "faiss"))}


@dataclass
class Snapshot:
    """One generation opened for search: row ids, the searcher over their vectors, and the pool for readable scores."""

    generation: int
    ids: np.ndarray
    searcher: VectorSearcher
    pool: PoolStats

    @property
    def dim(self) -> int:
        return self.searcher.d


def write_snapshot(folder: Path, generation: int, kind: str, ids: np.ndarray, vectors: np.ndarray, params: dict,
                   previous_ann=None) -> dict:
    """Write the snapshot files of `generation`; returns their records, to be committed with the generation."""
    paths = snapshot_paths(folder, generation)
    written = ["ids", "vectors"]
    save_vectors(paths["ids"], ids)
    save_vectors(paths["vectors"], vectors)
    if kind == "exact" and len(ids):
        save_vectors(paths["bf16"], bf16_bits(vectors))  # screening copy for fast exact search
        written.append("bf16")
    ann = build_ann(kind, vectors, params, previous=previous_ann)
    if ann is not None:
        write_ann(ann, paths["ann"])
        written.append("ann")
    return snapshot_record({name: paths[name] for name in written})


def previous_ann(folder: Path, generation: int):
    """The FAISS index of `generation`, to reuse its trained quantisers; None when missing or unreadable."""
    path = snapshot_paths(folder, generation)["ann"]
    try:
        return read_ann(path) if path.exists() else None
    except Exception:  # noqa: BLE001 - retrain instead
        return None


def load_snapshot(folder: Path, info: dict) -> Snapshot:
    """Open the snapshot of the generation committed in `info` (the store's info table, read in one statement).

    FileNotFoundError: its files are gone (a writer published and cleaned up meanwhile: read the generation again);
    StemIndexError: they are damaged.
    """
    gen = int(info.get("generation", 0))
    paths = snapshot_paths(folder, gen)
    if not paths["ids"].exists():
        raise FileNotFoundError(paths["ids"])
    problem = check_snapshot(paths, info.get("snapshot_files"))
    if problem:
        raise StemIndexError(f"{problem}{REPAIR}")
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
        raise StemIndexError(f"{folder}: snapshot of generation {gen} is damaged ({str(exc)[:120]}){REPAIR}") from None
    searcher = VectorSearcher(kind, info.get("index_params") or {}, vectors, ann, screen=screen)
    return Snapshot(gen, ids, searcher, PoolStats(vectors))


def remove_old_snapshots(folder: Path, generation: int) -> None:
    """Delete snapshots other than `generation` and the one before (readers may still hold it), and the temp files
    of killed runs."""
    for p in Path(folder).iterdir():
        name = p.name
        if name.startswith(".snapshot-") and (".tmp-" in name or name.endswith(".tmp")):
            p.unlink(missing_ok=True)
        elif name.startswith("snapshot-"):
            try:
                gen = int(name.split(".")[0].split("-")[1])
            except (IndexError, ValueError):
                continue
            if gen < generation - 1 or gen > generation:
                p.unlink(missing_ok=True)
