"""The snapshot of one generation: what queries map, made of immutable shards and a tombstone list.

    snapshot-<S>.ids.npy        int64 row ids of shard S (the shard written by generation S), ascending; every id of
                                a later shard is larger (SQLite's AUTOINCREMENT)
    snapshot-<S>.vectors.npy    float32 (n, d) their L2-normalised file vectors (memory-mapped by queries); float16
                                when the parameters say `"storage": "float16"` (libraries whose float32 vectors
                                would not fit in memory, vectors.vector_storage): the same file, half the size
    snapshot-<S>.bf16.npy       the same in bfloat16 (exact index with float32 storage only): fast screening,
                                re-scored in float32
    snapshot-<S>.ann.faiss      the shard's approximate index: ivfpq lists encoded with the quantisers every shard
                                shares (merged into one index at load), or an hnsw graph (searched per shard); an
                                update's ivfpq shard holds an empty coarse quantiser in place of the first shard's
    snapshot-<S>.trained.faiss  ivfpq, the first shard (a compaction's) only: the empty trained index, read by the
                                updates that encode new shards with its quantisers
    snapshot-<G>.deleted.npy    int64 ids, ascending, of the rows still in a shard of G that left the library
    snapshot-<G>.manifest.json  generation G: kind, parameters, its shards (rows, id range, each file's size and
                                checksums) and its tombstone file

An update (generation N) keeps the shards of N - 1 as they are (never rewritten), writes one shard with the rows it
adds, and a tombstone list with the rows it removes: it writes and reads what changed, not the library. Every file
is written under a temporary name and renamed (fsutil.atomic_write), the manifest last; the writer then commits
`generation = N` with the manifest's size and checksum in SQLite (store.py), so a reader sees generation N - 1 or N,
complete. The files of N - 1 are kept so that readers that opened it keep working; older unreferenced files go.
A shard is written from index.sqlite a block of rows at a time and its index built from the file it wrote
(vectors.StreamedRows, NpyRows): a 10M-file library is never held in memory.

Compaction (one shard with every live row, the ivfpq quantisers retrained when the library size moved away from
the trained one) happens only when worthwhile: the first build, a change of index type or parameters, a library of
at most COMPACT_BELOW_ROWS rows (rewriting it costs less than carrying shards), tombstones above MAX_DEAD_FRACTION
of the rows, or a snapshot that does not match index.sqlite (damaged: repaired). Past MAX_SHARDS shards, the shards
after the first are merged into one (the rows added since the last compaction), or all of them when those are
more than half of the library.

Integrity: each file's size, checksum (blake2b-128) and the checksum of sampled blocks are recorded once, when it is
written. A query checks the manifest's checksum and each file's size and sampled blocks; `stemjepa index` does the
same and also checks in full the files written by the previous run (bounded by FULL_CHECK_BYTES): it never re-reads
the whole library. A damaged or missing file makes the next `index` run rebuild the snapshot from index.sqlite.
Indexes of format 1 (one `snapshot-<G>.*` set, its records in SQLite's `snapshot_files`) are read as a snapshot of
one shard, and the next `index` run turns that shard into the first of the new layout (kept, not rewritten).
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..fsutil import atomic_write
from .integrity import check_file, check_snapshot, file_record, snapshot_record, unit_rows_ok
from .scores import SAMPLE_SIZE, PoolStats
from .store import FORMAT_VERSION, MetaStore, StemIndexError
from .vectors import (
    NpyRows,
    StreamedRows,
    VectorSearcher,
    _same_ivfpq,
    add_rows,
    bf16_bits,
    import_faiss,
    layout_params,
    merge_ivf,
    read_ann,
    save_vectors,
    settle_params,
    share_quantizer,
    stack_rows,
    train_ann,
    write_ann,
)

REPAIR = "; run `stemjepa index` on the library again to repair it"
LAYOUT = 2  # manifest layout; 1: an index of format 1 read as one shard
COMPACT_BELOW_ROWS = 4096  # a library this small is rewritten in full by every update (a few MB)
MAX_DEAD_FRACTION = 0.2  # more tombstoned rows than this share of the shards' rows: compact
MAX_SHARDS = 16  # more shards than this: merge the shards after the first
FULL_CHECK_BYTES = 256 << 20  # `index` checks in full the files of the previous run up to this size (else sampled)


def snapshot_paths(folder: Path, generation: int) -> dict[str, Path]:
    """The files of the shard written by `generation` (and of a format-1 snapshot)."""
    return {name: Path(folder) / f"snapshot-{generation}.{name}.{ext}"
            for name, ext in (("ids", "npy"), ("vectors", "npy"), ("bf16", "npy"), ("ann", "faiss"), ("trained", "faiss"))}


def manifest_path(folder: Path, generation: int) -> Path:
    return Path(folder) / f"snapshot-{generation}.manifest.json"


def deleted_path(folder: Path, generation: int) -> Path:
    return Path(folder) / f"snapshot-{generation}.deleted.npy"


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass
class Snapshot:
    """One generation opened for search: row ids by position (tombstoned rows included, never returned), the
    searcher over their vectors, the pool for readable scores, and `count`, the rows of the library."""

    generation: int
    ids: np.ndarray
    searcher: VectorSearcher
    pool: PoolStats
    count: int = -1

    def __post_init__(self):
        if self.count < 0:
            self.count = self.searcher.n_live

    @property
    def dim(self) -> int:
        return self.searcher.d


# --- reading --------------------------------------------------------------------------------------------------------
def read_manifest(folder: Path, info: dict) -> dict:
    """The manifest of the generation committed in `info` (the store's info table, read in one statement); an index
    of format 1 gives a manifest of one shard (`layout` 1, `files` None when it has no records).

    FileNotFoundError: the files are gone (a writer published and cleaned up meanwhile); StemIndexError: damaged.
    """
    folder = Path(folder)
    gen = int(info.get("generation", 0))
    record = info.get("snapshot_manifest")
    if record is None:  # format 1
        paths = snapshot_paths(folder, gen)
        if not paths["ids"].exists():
            raise FileNotFoundError(paths["ids"])
        return {"layout": 1, "generation": gen, "kind": info.get("index_type", "exact"),
                "params": info.get("index_params") or {}, "dim": info.get("embed_dim"),
                "shards": [{"gen": gen, "rows": None, "files": info.get("snapshot_files")}], "deleted": None,
                "count": info.get("count")}
    path = manifest_path(folder, gen)
    data = path.read_bytes()  # FileNotFoundError: cleaned up by a writer meanwhile
    if len(data) != record.get("size") or _digest(data) != record.get("digest"):
        raise StemIndexError(f"{path}: does not match the checksum recorded at write time (damaged){REPAIR}")
    try:
        manifest = json.loads(data)
        if manifest.get("layout") != LAYOUT or int(manifest["generation"]) != gen:
            raise ValueError("not the manifest of this generation")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise StemIndexError(f"{path}: damaged ({str(exc)[:120]}){REPAIR}") from None
    return manifest


def load_snapshot(folder: Path, info: dict) -> Snapshot:
    """Open the snapshot of the generation committed in `info` (the store's info table, read in one statement).

    FileNotFoundError: its files are gone (a writer published and cleaned up meanwhile: read the generation again);
    StemIndexError: they are damaged.
    """
    folder = Path(folder)
    gen = int(info.get("generation", 0))
    manifest = read_manifest(folder, info)
    kind = manifest["kind"]
    storage = (manifest.get("params") or {}).get("storage", "float32")
    ids_parts, vec_parts, screen_parts, anns = [], [], [], []
    offset, last_id = 0, -1
    for shard in manifest["shards"]:
        loaded = _load_shard(folder, gen, shard, kind, last_id, storage)
        if loaded is None:
            continue  # a format-1 snapshot of an emptied library
        ids, vectors, screen, ann = loaded
        screen_parts.append(screen)
        if ann is not None:
            if "quantizer" in shard:  # an update's shard: the coarse quantiser is the first shard's
                ann = _with_first_quantizer(folder, gen, shard, ann, anns)
            anns.append((offset, ann))
        ids_parts.append(ids)
        vec_parts.append(vectors)
        offset += len(ids)
        last_id = int(ids[-1])
    if not ids_parts:
        ids = np.zeros(0, np.int64)
        vectors = np.zeros((0, manifest.get("dim") or info.get("embed_dim") or 1), np.float32)
        searcher = VectorSearcher(kind, manifest.get("params") or {}, vectors)
        return Snapshot(gen, ids, searcher, PoolStats(vectors), 0)
    ids = np.concatenate(ids_parts)
    vectors = stack_rows(vec_parts)
    screen = stack_rows(screen_parts) if all(p is not None for p in screen_parts) and screen_parts else None
    dead = _dead_rows(folder, gen, manifest, ids)
    ann = None
    try:
        if kind == "ivfpq":
            ann = merge_ivf(anns)
            if dead is not None:
                ann.remove_ids(import_faiss().IDSelectorBatch(np.flatnonzero(dead).astype(np.int64)))
        elif kind == "hnsw":
            ann = anns
        searcher = VectorSearcher(kind, manifest.get("params") or {}, vectors, ann, screen=screen, dead=dead)
    except (RuntimeError, ValueError) as exc:  # FAISS refuses shards that do not fit together
        raise StemIndexError(f"{folder}: snapshot of generation {gen} is damaged ({str(exc)[:120]}){REPAIR}") from None
    return Snapshot(gen, ids, searcher, _pool(vectors, dead))


def _load_shard(folder: Path, gen: int, shard: dict, kind: str, last_id: int, storage: str = "float32"):
    """(ids, memory-mapped vectors, bf16 screen or None, ANN or None) of one shard, checked against its recorded files
    and the manifest (`storage`: the dtype of its vectors); None for an empty one. FileNotFoundError /
    StemIndexError as `load_snapshot`."""
    paths = snapshot_paths(folder, shard["gen"])
    if not paths["ids"].exists():
        raise FileNotFoundError(paths["ids"])
    problem = check_snapshot(paths, shard.get("files"))
    if problem:
        raise StemIndexError(f"{problem}{REPAIR}")
    try:
        ids = np.load(paths["ids"])
        if not len(ids):
            return None
        vectors = np.load(paths["vectors"], mmap_mode="r")
        if vectors.ndim != 2 or len(vectors) != len(ids) or not unit_rows_ok(vectors):
            raise ValueError("vectors do not match the ids or are not unit vectors")
        if vectors.dtype != np.dtype(storage):
            raise ValueError(f"vectors are {vectors.dtype}, the manifest says {storage}")
        if shard.get("rows") not in (None, len(ids)) or ids[0] <= last_id or np.any(np.diff(ids) <= 0):
            raise ValueError("row ids do not match the manifest")
        if kind == "exact":
            has_bf16 = paths["bf16"].exists() and (shard.get("files") is None or "bf16" in shard["files"])
            return ids, vectors, np.load(paths["bf16"], mmap_mode="r") if has_bf16 else None, None
        if not paths["ann"].exists():
            raise FileNotFoundError(paths["ann"])
        return ids, vectors, None, read_ann(paths["ann"])
    except FileNotFoundError:
        raise
    except (OSError, ValueError, RuntimeError) as exc:
        raise StemIndexError(f"{folder}: shard {shard['gen']} of the snapshot of generation {gen} is damaged "
                             f"({str(exc)[:120]}){REPAIR}") from None


def _with_first_quantizer(folder: Path, gen: int, shard: dict, ann, anns: list):
    """`ann` (a shard written without its coarse quantiser) given the first shard's; StemIndexError when it cannot be."""
    try:
        if shard["quantizer"] != "first shard" or not anns or anns[0][0] != 0:
            raise ValueError(f"no first shard to take the coarse quantiser from ({shard['quantizer']!r})")
        return share_quantizer(ann, anns[0][1])
    except (ValueError, RuntimeError) as exc:
        raise StemIndexError(f"{folder}: shard {shard['gen']} of the snapshot of generation {gen} is damaged "
                             f"({str(exc)[:120]}){REPAIR}") from None


def _dead_rows(folder: Path, gen: int, manifest: dict, ids: np.ndarray) -> np.ndarray | None:
    """Boolean mask of the tombstoned positions, or None."""
    deleted = manifest.get("deleted")
    if not deleted:
        return None
    path = deleted_path(folder, gen)
    if not path.exists():
        raise FileNotFoundError(path)
    problem = check_file(path, deleted.get("file"))
    if problem:
        raise StemIndexError(f"{path}: {problem}{REPAIR}")
    try:
        dead_ids = np.load(path)
        at = np.searchsorted(ids, dead_ids)
        if len(dead_ids) != deleted.get("rows") or np.any(at >= len(ids)) or np.any(ids[np.minimum(at, len(ids) - 1)]
                                                                                    != dead_ids):
            raise ValueError("tombstones name rows that are not in the shards")
    except (OSError, ValueError) as exc:
        raise StemIndexError(f"{path}: damaged ({str(exc)[:120]}){REPAIR}") from None
    dead = np.zeros(len(ids), bool)
    dead[at] = True
    return dead


def _pool(vectors, dead: np.ndarray | None) -> PoolStats:
    """The pool of the live rows: the same sample as a compacted snapshot of them would give."""
    if dead is None:
        return PoolStats(vectors)
    live = np.flatnonzero(~dead)
    rows = live if len(live) <= SAMPLE_SIZE else live[np.linspace(0, len(live) - 1, SAMPLE_SIZE).round().astype(np.int64)]
    pool = PoolStats(np.asarray(vectors[rows], dtype=np.float32))
    pool.n = len(live)
    return pool


# --- writing --------------------------------------------------------------------------------------------------------
@dataclass
class Previous:
    """The committed generation as the next update finds it: `manifest` None when nothing of it can be kept (no
    snapshot yet, damaged, or a format-1 index without checksums); `problem`: the damage found, if any."""

    manifest: dict | None
    problem: str | None = None


def check_previous(store: MetaStore) -> Previous:
    """Check the committed snapshot before an update builds on it: each file's size and sampled checksum, and the
    full checksum of the files written by the previous run (a format-1 snapshot: all of it, once)."""
    info = store.info()
    gen = int(info.get("generation", 0))
    if gen == 0:
        return Previous(None)
    folder = store.folder
    try:
        manifest = read_manifest(folder, info)
    except FileNotFoundError as exc:
        return Previous(None, f"{exc.filename or exc}: missing")
    except StemIndexError as exc:
        return Previous(None, str(exc).replace(REPAIR, ""))
    legacy = manifest["layout"] == 1
    for shard in manifest["shards"]:
        paths = snapshot_paths(folder, shard["gen"])
        files = shard.get("files")
        if files is None:  # an older index without checksums: rebuilt (and recorded) now
            return Previous(None)
        new = shard["gen"] == gen and sum(int(r["size"]) for r in files.values()) <= FULL_CHECK_BYTES
        problem = check_snapshot(paths, files, full=legacy or new)
        if problem:
            return Previous(None, problem)
        if legacy:
            try:
                ids = np.load(paths["ids"])
            except (OSError, ValueError) as exc:
                return Previous(None, f"{paths['ids']}: cannot be read ({str(exc)[:120]})")
            if not len(ids):
                return Previous(None)
            shard.update(rows=len(ids), first_id=int(ids[0]), last_id=int(ids[-1]))
    if manifest.get("deleted"):
        path = deleted_path(folder, gen)
        problem = check_file(path, manifest["deleted"].get("file"), full=True)
        if problem:
            return Previous(None, f"{path}: {problem}")
    return Previous(manifest)


def write_shard(store: MetaStore, generation: int, kind: str, params: dict, after_id: int = 0,
                trained=None, full: bool = True) -> dict | None:
    """Write the files of the shard of `generation`: the rows visible at it whose id is above `after_id`, read from
    index.sqlite a block at a time, stored as params["storage"] says (`trained`: an ivfpq index whose quantisers
    encode it); returns its manifest entry, or None when there are no such rows.

    ivfpq: the shard of a compaction (`full`) also writes its empty trained index (`trained` file); the shard of an
    update is written without the coarse quantiser, which it shares with the first shard (manifest entry
    "quantizer": "first shard"): an update writes its rows' codes, not the quantiser (50 MB in a 10M x 768 library)."""
    dim = int(store.get("embed_dim"))
    n = store.count_after(generation, after_id)
    if n == 0:
        return None
    paths = snapshot_paths(store.folder, generation)
    dtype = np.float16 if params.get("storage") == "float16" else np.float32
    id_blocks = []

    def blocks():
        for ids, vectors in store.visible_vector_blocks(generation, dim, after_id):
            id_blocks.append(ids)
            yield vectors

    try:
        save_vectors(paths["vectors"], StreamedRows(blocks(), n, dim, dtype))
    except ValueError as exc:  # rows that changed under the writer, or a stored vector of another width
        raise StemIndexError(f"{paths['vectors']}: not written: {exc} ({store.db_path})") from None
    ids = np.concatenate(id_blocks)
    save_vectors(paths["ids"], ids)
    written = ["ids", "vectors"]
    rows = NpyRows(paths["vectors"])  # what the index is built from: read back a block at a time
    if kind == "exact" and dtype is np.float32:  # screening copy for fast exact search
        bf16 = (bf16_bits(rows[a:a + 65536]) for a in range(0, n, 65536))
        save_vectors(paths["bf16"], StreamedRows(bf16, n, dim, np.int16))
        written.append("bf16")
    ann = train_ann(kind, rows, params, previous=trained)
    shared = kind == "ivfpq" and not full
    if kind == "ivfpq" and full:  # the trained quantisers alone, which the shards of later updates share
        write_ann(ann, paths["trained"])
        written.append("trained")
    if ann is not None:
        add_rows(ann, rows)
        write_ann(ann, paths["ann"], coarse_quantizer=not shared)
        written.append("ann")
    entry = {"gen": int(generation), "rows": int(len(ids)), "first_id": int(ids[0]), "last_id": int(ids[-1]),
             "files": snapshot_record({name: paths[name] for name in written})}
    if shared:
        entry["quantizer"] = "first shard"
    return entry


def _trained(folder: Path, manifest: dict | None, dim: int, params: dict):
    """The ivfpq quantisers of the previous snapshot, when they fit `params`; None otherwise. Read from the first
    shard's trained index, or (snapshots written before it existed) from the smallest shard: all shards share them."""
    if manifest is None or manifest.get("kind") != "ivfpq" or not manifest["shards"]:
        return None
    first = manifest["shards"][0]
    if "trained" in (first.get("files") or {}):
        path = snapshot_paths(folder, first["gen"])["trained"]
    else:
        own = [sh for sh in manifest["shards"] if "quantizer" not in sh]
        path = snapshot_paths(folder, min(own, key=lambda sh: sh.get("rows") or 0)["gen"])["ann"]
    try:
        index = read_ann(path)
    except Exception:  # noqa: BLE001 - retrain instead
        return None
    return index if _same_ivfpq(index, dim, params) else None


@dataclass
class _Plan:
    """What generation N writes: the shards it keeps, the rows of its new shard (those above `after_id`), and the
    tombstoned ids; `full`: a compaction."""

    full: bool
    keep: list
    after_id: int = 0
    dead: np.ndarray | None = None
    trained: object = None


def _plan(store: MetaStore, generation: int, kind: str, params: dict, manifest: dict | None, count: int,
          dim: int, force_full: bool) -> _Plan:
    def full() -> _Plan:  # ivfpq: the previous quantisers, when they fit, are reused (read only when needed)
        return _Plan(True, [], trained=_trained(store.folder, manifest, dim, params) if kind == "ivfpq" else None)

    if (force_full or manifest is None or manifest.get("kind") != kind
            or layout_params(manifest.get("params")) != layout_params(params) or count <= COMPACT_BELOW_ROWS):
        return full()
    shards = list(manifest["shards"])
    try:
        prev_dead = np.load(deleted_path(store.folder, manifest["generation"])) if manifest.get("deleted") else None
    except (OSError, ValueError):
        return full()
    dead = np.union1d(np.zeros(0, np.int64) if prev_dead is None else prev_dead, store.removed_at(generation))
    dead = dead.astype(np.int64)
    physical = sum(int(sh["rows"]) for sh in shards)
    last_id = int(shards[-1]["last_id"]) if shards else 0
    added = store.count_after(generation, last_id)
    if physical + added - len(dead) != count or len(dead) > MAX_DEAD_FRACTION * (physical + added):
        return full()  # tombstones past the threshold, or a snapshot that no longer matches index.sqlite: rebuild
    plan = _Plan(False, shards, last_id, dead)
    if added and len(shards) + 1 > MAX_SHARDS:
        tail_first = int(shards[1]["first_id"])
        tail = sum(int(sh["rows"]) for sh in shards[1:]) - int(np.count_nonzero(dead >= tail_first)) + added
        if tail > count / 2:
            return full()
        plan = _Plan(False, shards[:1], tail_first - 1, dead[dead < tail_first])
    if kind == "ivfpq" and added:
        plan.trained = _trained(store.folder, manifest, dim, params)
        if plan.trained is None:
            return full()
    return plan


def publish_generation(store: MetaStore, generation: int, kind: str, params: dict, previous: Previous,
                       on_written: Callable[[], None] | None = None, force_full: bool = False) -> dict:
    """Write the snapshot of `generation` from the rows of index.sqlite (a shard of what it adds and the tombstones
    of what it removes, or a compaction) and commit it; returns its manifest. `on_written` runs when every file is
    written, before the commit. `params` are settled first (vectors.settle_params: the coarse quantiser that goes
    with the kept lists, the storage kept near its threshold)."""
    folder = store.folder
    dim = int(store.get("embed_dim"))
    count = store.count_visible(generation)
    before = previous.manifest.get("params") if previous.manifest is not None else None
    params = settle_params(kind, params, count, dim, before)
    plan = _plan(store, generation, kind, params, previous.manifest, count, dim, force_full)
    shard = write_shard(store, generation, kind, params, 0 if plan.full else plan.after_id, plan.trained, plan.full)
    new = [shard] if shard is not None else []
    shards, dead = (new, np.zeros(0, np.int64)) if plan.full else (plan.keep + new, plan.dead)
    deleted = None
    if len(dead):
        path = deleted_path(folder, generation)
        save_vectors(path, dead)
        deleted = {"rows": int(len(dead)), "file": file_record(path)}
    manifest = {"layout": LAYOUT, "generation": int(generation), "kind": kind, "params": params, "dim": dim,
                "shards": shards, "deleted": deleted, "count": int(count),
                "compacted": bool(plan.full)}
    data = json.dumps(manifest, indent=1).encode()
    atomic_write(manifest_path(folder, generation), lambda fh: fh.write(data))
    if on_written is not None:
        on_written()
    with store.transaction():
        store.set("generation", int(generation))
        store.set("snapshot_manifest", {"size": len(data), "digest": _digest(data)})
        store.unset("snapshot_files")  # format 1's records
        store.set("format_version", FORMAT_VERSION)
        store.set("index_type", kind)
        store.set("index_params", params)
        store.set("count", int(count))
        store.set("updated", time.strftime("%Y-%m-%dT%H:%M:%S"))
        store.purge_removed(generation)
    remove_old_snapshots(folder, generation)
    return manifest


def _referenced(folder: Path, generation: int) -> set[str] | None:
    """Names of the files the snapshot of `generation` uses; None when its manifest cannot be read (format 1, or
    damaged: then every file named after the generation is kept)."""
    try:
        manifest = json.loads(manifest_path(folder, generation).read_bytes())
        names = {manifest_path(folder, generation).name}
        if manifest.get("deleted"):
            names.add(deleted_path(folder, generation).name)
        for shard in manifest["shards"]:
            paths = snapshot_paths(folder, shard["gen"])
            names |= {paths[name].name for name in shard["files"]}
        return names
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def remove_old_snapshots(folder: Path, generation: int) -> None:
    """Delete the snapshot files that neither `generation` nor the one before (readers may still hold it) uses, and
    the temp files of killed runs."""
    folder = Path(folder)
    keep: set[str] = set()
    for gen in (generation, generation - 1):
        names = _referenced(folder, gen)
        keep |= names if names is not None else {p.name for p in folder.glob(f"snapshot-{gen}.*")}
    for p in folder.iterdir():
        name = p.name
        if name.startswith(".snapshot-") and (".tmp-" in name or name.endswith(".tmp")):
            p.unlink(missing_ok=True)
        elif name.startswith("snapshot-") and name not in keep:
            p.unlink(missing_ok=True)
