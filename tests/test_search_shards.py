"""Sharded snapshots (search/snapshot.py): an update writes a shard of what it adds and tombstones what it removes;
readers see a complete generation; tombstoned rows never come back (exact, ivfpq, hnsw); compaction answers as a
fresh build. Built straight through the store (no audio, no model)."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from stemjepa.search import StemIndex
from stemjepa.search import snapshot as snapshot_module
from stemjepa.search.snapshot import check_previous, manifest_path, publish_generation, snapshot_paths
from stemjepa.search.store import FileVectors, MetaStore
from stemjepa.search.vectors import default_params, normalize
from stemjepa.search.walk import FileInfo

DIM = 32


def clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = normalize(rng.standard_normal((12, DIM), dtype=np.float32))
    return normalize(centres[rng.integers(0, 12, n)] + 0.4 * rng.standard_normal((n, DIM), dtype=np.float32))


class Library:
    """An index folder written generation by generation through MetaStore + publish_generation."""

    def __init__(self, folder, kind: str, params: dict | None = None, n_params: int = 600):
        folder.mkdir(parents=True)
        self.store = MetaStore(folder, create=True)
        self.kind = kind
        self.params = params or default_params(kind, n_params, DIM)
        if kind == "ivfpq" and params is None:
            self.params["trained_n"] = n_params
        self.vectors: dict[int, np.ndarray] = {}
        self.id_of: dict[str, int] = {}  # path -> row id
        with self.store.transaction():
            for key, value in (("format_version", 2), ("model_id", "fake"), ("generation", 0), ("embed_dim", DIM),
                               ("index_policy", kind), ("sample_rate", 16000)):
                self.store.set(key, value)

    def update(self, add: np.ndarray | None = None, remove=(), force_full: bool = False) -> list[int]:
        s = self.store
        n = s.generation + 1
        ids = []
        with s.transaction():
            for v in [] if add is None else add:
                path = f"/lib/{len(self.id_of)}.wav"
                i = s.insert_row(FileInfo(path, 1, 1), "x", 1.0,
                                 FileVectors(v, v[None], np.zeros(1, np.float32), np.ones(1, np.float32)), n)
                self.vectors[i], self.id_of[path] = v, i
                ids.append(i)
            s.mark_removed(list(remove), n)
        for i in remove:
            self.vectors.pop(int(i))
        publish_generation(s, n, self.kind, self.params, check_previous(s), force_full=force_full)
        return ids

    def ids_of(self, results) -> list[list[int]]:
        return [[self.id_of[r.path] for r in rs] for rs in results]

    def manifest(self) -> dict:
        return json.loads(manifest_path(self.store.folder, self.store.generation).read_text())

    def close(self):
        self.store.close()




@pytest.fixture(autouse=True)
def incremental(monkeypatch):
    monkeypatch.setattr(snapshot_module, "COMPACT_BELOW_ROWS", 0)  # tiny libraries too: shards, not rewrites


@pytest.mark.parametrize("kind", ["exact", "ivfpq", "hnsw"])
def test_updates_add_a_shard_and_tombstones_that_never_come_back(tmp_path, kind):
    lib = Library(tmp_path / "idx", kind)
    base = lib.update(clustered(600, 0))
    shard1 = snapshot_paths(lib.store.folder, 1)["vectors"]
    before = (shard1.stat().st_ino, shard1.stat().st_mtime_ns)
    added = lib.update(clustered(50, 1))
    removed = base[::15] + added[:5]  # 40 + 5 rows, from both shards
    gone = np.stack([lib.vectors[i] for i in removed])
    lib.update(remove=removed)
    m = lib.manifest()
    assert [sh["gen"] for sh in m["shards"]] == [1, 2] and m["deleted"]["rows"] == 45 and not m["compacted"]
    assert (shard1.stat().st_ino, shard1.stat().st_mtime_ns) == before  # never rewritten
    assert m["count"] == 650 - 45 and not snapshot_paths(lib.store.folder, 3)["vectors"].exists()

    with StemIndex.open(lib.store.folder) as index:
        assert len(index) == 605 and index.generation == 3
        found = lib.ids_of(index.search_vectors(gone, k=10))
        assert not set(removed) & {i for row in found for i in row}  # a removed row's own vector does not find it
        kept = [i for i in added if i not in removed]
        top = lib.ids_of(index.search_vectors(np.stack([lib.vectors[i] for i in kept]), k=1))
        assert np.mean([t[0] == i for t, i in zip(top, kept)]) >= 0.95
        q = clustered(20, 7)
        incremental = index.search_vectors(q, k=10)
        all_hits = lib.ids_of(index.search_vectors(q, k=700))
        assert all(len(row) == 605 or kind != "exact" for row in all_hits)  # k beyond the library: live rows only
        assert not set(removed) & {i for row in all_hits for i in row}

    lib.update(force_full=True)  # compaction: one shard, no tombstones, same answers as a fresh build
    m = lib.manifest()
    assert [sh["gen"] for sh in m["shards"]] == [4] and m["deleted"] is None and m["compacted"]
    fresh = Library(tmp_path / "fresh", kind)
    fresh.update(np.stack([lib.vectors[i] for i in sorted(lib.vectors)]))
    with StemIndex.open(lib.store.folder) as a, StemIndex.open(fresh.store.folder) as b:
        compacted, rebuilt = a.search_vectors(q, k=10), b.search_vectors(q, k=10)
    for x, y, z in zip(incremental, compacted, rebuilt):
        assert [r.cosine for r in x] == pytest.approx([r.cosine for r in y], abs=1e-5)
        assert [r.cosine for r in y] == pytest.approx([r.cosine for r in z], abs=1e-5)
        assert [r.z for r in x] == pytest.approx([r.z for r in z], abs=1e-4)  # the pool leaves tombstones out
    lib.close()
    fresh.close()


def test_an_ivfpq_update_writes_its_codes_not_the_coarse_quantiser(tmp_path):
    import faiss

    lib = Library(tmp_path / "idx", "ivfpq")
    lib.update(clustered(600, 0))
    added = lib.update(clustered(50, 1))
    first, update = lib.manifest()["shards"]
    assert "trained" in first["files"] and "quantizer" not in first
    assert update["quantizer"] == "first shard" and "trained" not in update["files"]
    files = [faiss.read_index(str(snapshot_paths(lib.store.folder, g)[name])) for g, name in ((2, "ann"), (1, "trained"))]
    ann, trained = (faiss.extract_index_ivf(f) for f in files)  # `files` owns them
    assert ann.ntotal == 50 and ann.quantizer.ntotal == 0  # an empty stand-in
    assert trained.ntotal == 0 and trained.quantizer.ntotal == trained.nlist > 0
    with StemIndex.open(lib.store.folder) as index:  # the update's rows are found through the first shard's lists
        top = lib.ids_of(index.search_vectors(np.stack([lib.vectors[i] for i in added]), k=1))
    assert np.mean([t[0] == i for t, i in zip(top, added)]) >= 0.95
    manifest = lib.manifest()
    reused = snapshot_module._trained(lib.store.folder, manifest, DIM, lib.params)
    assert reused is not None and reused.ntotal == 0
    del manifest["shards"][0]["files"]["trained"]  # a snapshot from before trained files: its own quantiser is read
    assert snapshot_module._trained(lib.store.folder, manifest, DIM, lib.params).ntotal == 600
    lib.close()


def test_a_shard_without_its_quantiser_and_no_first_shard_is_damaged(tmp_path):
    lib = Library(tmp_path / "idx", "ivfpq")
    lib.update(clustered(600, 0))
    lib.update(clustered(50, 1))
    manifest = lib.manifest()
    ann = snapshot_module.read_ann(snapshot_paths(lib.store.folder, 2)["ann"])
    with pytest.raises(snapshot_module.StemIndexError, match="shard 2 .* damaged"):
        snapshot_module._with_first_quantizer(lib.store.folder, 2, manifest["shards"][1], ann, [])
    lib.close()


def test_exact_search_with_tombstones_is_exact(tmp_path):
    lib = Library(tmp_path / "idx", "exact")
    base = lib.update(clustered(400, 0))
    lib.update(clustered(30, 1), remove=base[:200:3])
    lib.update(clustered(30, 2))
    q = clustered(15, 5)
    live = sorted(lib.vectors)
    x = np.stack([lib.vectors[i] for i in live])
    expected = [[live[j] for j in row] for row in np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :12]]
    with StemIndex.open(lib.store.folder) as index:
        assert [sh["gen"] for sh in lib.manifest()["shards"]] == [1, 2, 3]
        got = lib.ids_of(index.search_vectors(q, k=12))
    assert got == expected
    lib.close()


def test_a_reader_sees_one_complete_generation_while_updates_add_and_remove(tmp_path):
    lib = Library(tmp_path / "idx", "exact")
    base = lib.update(clustered(300, 0))
    visible = {1: set(lib.vectors)}
    probes = {i: lib.vectors[i] for i in base[:40]}
    index = StemIndex.open(lib.store.folder)
    held = index.snapshot  # a reader in the middle of a query keeps the generation it opened
    seen, errors, stop, lock = [], [], threading.Event(), threading.Lock()

    def read():
        try:
            while not stop.is_set():
                with lock:
                    ids, vecs = list(probes), np.stack(list(probes.values()))
                top = lib.ids_of(index.search_vectors(vecs, k=1))
                seen.append((index.generation, ids, {i for i, t in zip(ids, top) if t and t[0] == i}))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for g in range(2, 8):
            new = lib.update(clustered(20, g), remove=[i for i in base[(g - 2) * 6:(g - 1) * 6]])
            with lock:
                probes.update({i: lib.vectors[i] for i in new[:3]})
            visible[g] = set(lib.vectors)
    finally:
        stop.set()
        reader.join()
    assert not errors and seen
    for gen, ids, found in seen:  # each answer is that of one generation: its rows, and all of the probes it holds
        assert found == {i for i in ids if i in visible[gen]}, gen
    assert len({gen for gen, _, _ in seen}) >= 2
    s, p = held.searcher.search(np.stack([probes[i] for i in base[:6]]), 1)
    assert [int(held.ids[j]) for j in p[:, 0]] == base[:6]  # generation 1, as opened, after 6 updates
    index.close()
    lib.close()


def test_shards_beyond_the_limit_are_merged_and_tombstones_past_the_threshold_compact(tmp_path, monkeypatch):
    monkeypatch.setattr(snapshot_module, "MAX_SHARDS", 3)
    lib = Library(tmp_path / "idx", "exact")
    base = lib.update(clustered(300, 0))
    for g in range(2, 5):
        lib.update(clustered(10, g))
    assert [sh["gen"] for sh in lib.manifest()["shards"]] == [1, 4]  # shards 2, 3 and the rows of 4 merged
    lib.update(remove=base[:70])  # 70 / 330 > 20 %: compacted
    m = lib.manifest()
    assert m["compacted"] and [sh["gen"] for sh in m["shards"]] == [5] and m["count"] == 260
    names = {p.name for p in lib.store.folder.iterdir() if p.name.startswith("snapshot-")}
    assert {n.split(".")[0] for n in names} == {"snapshot-1", "snapshot-4", "snapshot-5"}  # 4 and 5 in use
    with StemIndex.open(lib.store.folder) as index:
        assert len(index) == 260
    lib.close()


def test_an_update_hashes_what_it_writes_not_the_library(tmp_path, monkeypatch):
    from stemjepa.search import integrity

    lib = Library(tmp_path / "idx", "exact")
    base = lib.update(clustered(500, 0))
    lib.update(clustered(20, 1))
    hashed = []
    real = integrity.full_digest
    monkeypatch.setattr(integrity, "full_digest", lambda path: hashed.append(path.name) or real(path))
    lib.update(clustered(20, 2), remove=base[:5])
    assert hashed and not [n for n in hashed if n.startswith("snapshot-1.")]  # the 500-row shard is not re-read
    assert {n.split(".")[0] for n in hashed} == {"snapshot-2", "snapshot-3"}  # the last run's files, and its own
    lib.close()
