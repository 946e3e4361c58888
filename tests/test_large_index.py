"""Large-library storage and parameters (search/vectors.py, snapshot.py): float16 vectors in the snapshot, the ivfpq
shape used from LARGE_IVF_ROWS on (two-level coarse quantiser and k-means, optional OPQ), streamed writes. Tiny
sizes: the mode is forced through the parameters; nothing here is timed."""
from __future__ import annotations

import json

import numpy as np
import pytest
from test_search_shards import Library  # the index folder written generation by generation

from stemjepa.search import StemIndex
from stemjepa.search import snapshot as snapshot_module
from stemjepa.search import vectors as vectors_module
from stemjepa.search.snapshot import check_previous, manifest_path, snapshot_paths
from stemjepa.search.vectors import (
    NpyRows,
    StreamedRows,
    VectorSearcher,
    _split_lists,
    build_ann,
    default_params,
    layout_params,
    normalize,
    save_vectors,
    settle_params,
    two_level_centroids,
)

DIM = 32
GB = 1 << 30


def clustered(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = normalize(np.random.default_rng(99).standard_normal((12, dim), dtype=np.float32))
    return normalize(centres[rng.integers(0, 12, n)] + 0.4 * rng.standard_normal((n, dim), dtype=np.float32))


def large_params(n: int, storage: str = "float16", **extra) -> dict:
    """The large-library ivfpq shape at a tiny size: two-level coarse quantiser over 32 lists, float16 storage."""
    params = default_params("ivfpq", n, DIM, storage=storage)
    params.update({"nlist": 32, "nprobe": 16, "candidates": 500, "coarse": "ivf", "train_size": n, **extra})
    return params


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found.tolist(), truth.tolist())]))


def exact_top(x: np.ndarray, q: np.ndarray, k: int = 10) -> np.ndarray:
    return np.argsort(-(normalize(q) @ x.T), axis=1, kind="stable")[:, :k]


@pytest.fixture()
def incremental(monkeypatch):
    monkeypatch.setattr(snapshot_module, "COMPACT_BELOW_ROWS", 0)  # tiny libraries too: shards, not rewrites


# --- parameters ------------------------------------------------------------------------------------------------------
def test_parameters_for_ten_million_files_are_the_documented_ones(monkeypatch):
    monkeypatch.delenv("STEMJEPA_VECTOR_STORAGE", raising=False)
    monkeypatch.setattr(vectors_module, "memory_bytes", lambda: 24 * GB)
    p = default_params("ivfpq", 10_000_000, 768)
    assert p == {"nlist": 16384, "m": 96, "nbits": 8, "nprobe": 32, "candidates": 2000, "train_size": 655360,
                 "coarse": "ivf", "coarse_nprobe": 32, "storage": "float16"}
    p = default_params("ivfpq", 10_000_000, 256)  # 10.2 GB of float32 > a quarter of 24 GB
    assert (p["nlist"], p["m"], p["storage"], p["coarse"]) == (16384, 32, "float16", "ivf")
    p = default_params("ivfpq", 1_000_000, 768)  # 3.1 GB: float32, the flat quantiser of before
    assert (p["nlist"], p["m"], p["nbits"], p["nprobe"], p["candidates"]) == (2000, 96, 8, 33, 500)
    assert "storage" not in p and "coarse" not in p
    assert default_params("ivfpq", 2_000_000, 768)["coarse"] == "ivf"  # LARGE_IVF_ROWS
    assert default_params("exact", 1000, 768) == {}  # small exact indexes: the parameters they always had
    assert default_params("exact", 1000, 768, storage="float16") == {"storage": "float16"}
    monkeypatch.setattr(vectors_module, "memory_bytes", lambda: 256 * GB)
    assert "storage" not in default_params("ivfpq", 10_000_000, 768)  # float32 fits a large machine
    monkeypatch.setenv("STEMJEPA_VECTOR_STORAGE", "float16")
    assert default_params("hnsw", 1000, 768)["storage"] == "float16"
    monkeypatch.setenv("STEMJEPA_VECTOR_STORAGE", "float8")
    with pytest.raises(Exception, match="STEMJEPA_VECTOR_STORAGE"):
        default_params("ivfpq", 1000, 768)


def test_settled_parameters_keep_the_quantiser_of_kept_lists_and_the_storage_near_its_threshold(monkeypatch):
    monkeypatch.delenv("STEMJEPA_VECTOR_STORAGE", raising=False)
    monkeypatch.setattr(vectors_module, "memory_bytes", lambda: 24 * GB)
    fresh = default_params("ivfpq", 2_100_000, 768)  # just past LARGE_IVF_ROWS, lists kept from 1.5M (build.py)
    kept = {**fresh, "nlist": 2449, "trained_n": 1_500_000}
    assert "coarse" not in settle_params("ivfpq", kept, 2_100_000, 768, None)
    assert settle_params("ivfpq", {**fresh, "trained_n": 2_100_000}, 2_100_000, 768, None)["coarse"] == "ivf"
    assert settle_params("ivfpq", {"nlist": 32, "coarse": "ivf"}, 900, 768, None)["coarse"] == "ivf"  # as given
    threshold_rows = int(0.25 * 24 * GB / (4 * 768))
    near = default_params("ivfpq", threshold_rows + 1000, 768)
    assert near["storage"] == "float16"
    assert "storage" not in settle_params("ivfpq", near, threshold_rows + 1000, 768, {"nlist": 1})  # stays float32
    far = default_params("ivfpq", 2 * threshold_rows, 768)
    assert settle_params("ivfpq", far, 2 * threshold_rows, 768, {"nlist": 1})["storage"] == "float16"
    back = settle_params("ivfpq", default_params("ivfpq", threshold_rows - 1000, 768), threshold_rows - 1000, 768,
                         {"storage": "float16"})
    assert back["storage"] == "float16"  # and float16 stays just below the threshold
    assert layout_params({"nlist": 4, "nprobe": 2, "candidates": 9}) == {"nlist": 4}


def test_lists_are_split_in_proportion_and_never_beyond_the_rows():
    per = _split_lists(np.array([500, 3, 0, 97, 400]), 64)
    assert per.sum() == 64 and per[2] == 0 and per[1] <= 3 and all(per[[0, 1, 3, 4]] >= 1)
    assert per[0] > per[4] > per[3]
    x = clustered(3000, 0)
    top, centroids = two_level_centroids(x, 64)
    assert top.shape == (8, DIM) and centroids.shape == (64, DIM) and np.isfinite(centroids).all()


# --- files -----------------------------------------------------------------------------------------------------------
def test_streamed_rows_are_written_and_read_back_a_block_at_a_time(tmp_path):
    x = clustered(1000, 1)
    path = tmp_path / "v.npy"
    save_vectors(path, StreamedRows((x[a:a + 300] for a in range(0, 1000, 300)), 1000, DIM, np.float16))
    loaded = np.load(path)
    assert loaded.dtype == np.float16 and np.array_equal(loaded, x.astype(np.float16))
    rows = NpyRows(path)
    assert rows.shape == (1000, DIM) and np.array_equal(rows[250:700], loaded[250:700])
    assert np.array_equal(rows[np.array([3, 17, 999])], loaded[[3, 17, 999]])
    dense = np.random.default_rng(0).permutation(1000)[:400]  # read as sequential blocks, returned in the order asked
    assert np.array_equal(rows[dense], loaded[dense]) and np.array_equal(rows._dense(dense, block=128), loaded[dense])
    with pytest.raises(ValueError, match="announced"):
        save_vectors(tmp_path / "w.npy", StreamedRows(iter([x[:10]]), 11, DIM, np.float32))
    assert not (tmp_path / "w.npy").exists()


# --- search ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opq", [False, True])
def test_large_ivfpq_shape_on_float16_rows_finds_the_float32_neighbours(tmp_path, opq):
    x = clustered(4000, 2)
    q = clustered(60, 3)
    path = tmp_path / "v.npy"
    save_vectors(path, StreamedRows(iter([x]), len(x), DIM, np.float16))
    params = large_params(len(x), opq=opq) if opq else large_params(len(x))
    ann = build_ann("ivfpq", NpyRows(path), params)
    import faiss

    ivf = faiss.downcast_index(faiss.extract_index_ivf(ann))
    coarse = faiss.downcast_index(ivf.quantizer)
    assert isinstance(coarse, faiss.IndexIVFFlat) and coarse.ntotal == ivf.nlist == 32 and coarse.nprobe == 2
    assert isinstance(faiss.downcast_index(ann), faiss.IndexPreTransform) == opq
    searcher = VectorSearcher("ivfpq", params, np.load(path, mmap_mode="r"), ann)
    assert coarse.nprobe == coarse.nlist == 6  # queries search all the groups there are (up to 32)
    searcher.set_query_params({**params, "coarse_nprobe": 3, "nprobe": 5})
    assert (coarse.nprobe, ivf.nprobe) == (3, 5)
    searcher.set_query_params(params)
    scores, pos = searcher.search(q, 10)
    assert recall(pos, exact_top(x, q)) >= 0.95  # against exact float32 search
    np.testing.assert_allclose(scores, np.take_along_axis(normalize(q) @ x.T, pos, axis=1), atol=2e-3)


@pytest.mark.parametrize("kind", ["exact", "ivfpq", "hnsw"])
def test_float16_storage_answers_as_float32_storage(tmp_path, kind):
    x, q = clustered(1500, 4), clustered(40, 5)
    answers = {}
    for storage in ("float32", "float16"):
        params = default_params(kind, len(x), DIM, storage=storage)
        lib = Library(tmp_path / storage, kind, params)
        lib.update(x)
        paths = snapshot_paths(lib.store.folder, 1)
        assert np.load(paths["vectors"], mmap_mode="r").dtype == np.dtype(storage)
        assert paths["bf16"].exists() == (kind == "exact" and storage == "float32")  # no bf16 copy beside float16
        with StemIndex.open(lib.store.folder) as index:
            answers[storage] = np.array(lib.ids_of(index.search_vectors(q, k=10)))
        lib.close()
    assert recall(answers["float16"], answers["float32"]) >= 0.97
    truth = np.array(sorted(lib.vectors))[exact_top(x, q)]
    assert recall(answers["float16"], truth) >= (0.97 if kind == "exact" else 0.9)


def test_float16_snapshot_survives_added_and_removed_generations_and_reopens(tmp_path, incremental):
    lib = Library(tmp_path / "idx", "ivfpq", large_params(1200))
    base = lib.update(clustered(1200, 0))
    added = lib.update(clustered(80, 1))
    removed = base[::20] + added[:4]
    lib.update(remove=removed)
    more = lib.update(clustered(40, 2), remove=base[1:40:20])
    removed += base[1:40:20]
    m = lib.manifest()
    assert [sh["gen"] for sh in m["shards"]] == [1, 2, 4] and not m["compacted"]
    assert m["params"]["storage"] == "float16" and m["params"]["coarse"] == "ivf"
    for sh in m["shards"]:
        assert np.load(snapshot_paths(lib.store.folder, sh["gen"])["vectors"], mmap_mode="r").dtype == np.float16
    assert check_previous(lib.store).problem is None  # sizes and checksums as recorded
    probes = [i for i in added[4:] + more]
    with StemIndex.open(lib.store.folder) as index:
        assert len(index) == len(lib.vectors)
        gone = np.stack([clustered(1200, 0)[base.index(i)] if i in base else clustered(80, 1)[added.index(i)]
                         for i in removed])
        assert not set(removed) & {i for row in lib.ids_of(index.search_vectors(gone, k=10)) for i in row}
        top = lib.ids_of(index.search_vectors(np.stack([lib.vectors[i] for i in probes]), k=1))
        assert np.mean([t[0] == i for t, i in zip(top, probes)]) >= 0.95
        q = clustered(20, 7)
        before = lib.ids_of(index.search_vectors(q, k=10))
    lib.update(force_full=True)  # compaction keeps the storage
    assert lib.manifest()["compacted"] and lib.manifest()["params"]["storage"] == "float16"
    with StemIndex.open(lib.store.folder) as index:
        after = lib.ids_of(index.search_vectors(q, k=10))
    assert recall(np.array(after), np.array(before)) >= 0.95
    lib.close()


def test_a_change_of_storage_rewrites_and_a_change_of_candidates_does_not(tmp_path, incremental):
    params = default_params("ivfpq", 1000, DIM, storage="float32")
    lib = Library(tmp_path / "idx", "ivfpq", {**params, "trained_n": 1000})
    lib.update(clustered(1000, 0))
    lib.params = {**lib.params, "candidates": 300}  # read by queries only: a new shard, no rewrite
    lib.update(clustered(30, 1))
    m = lib.manifest()
    assert not m["compacted"] and m["params"]["candidates"] == 300 and len(m["shards"]) == 2
    lib.params = {**lib.params, "storage": "float16"}
    lib.update(clustered(30, 2))
    m = lib.manifest()
    assert m["compacted"] and [sh["gen"] for sh in m["shards"]] == [3] and m["params"]["storage"] == "float16"
    assert np.load(snapshot_paths(lib.store.folder, 3)["vectors"], mmap_mode="r").dtype == np.float16
    with StemIndex.open(lib.store.folder) as index:
        assert len(index) == 1060
    lib.close()


def test_vectors_whose_dtype_is_not_the_manifests_are_refused(tmp_path):
    lib = Library(tmp_path / "idx", "exact", default_params("exact", 300, DIM, storage="float16"))
    lib.update(clustered(300, 0))
    path = snapshot_paths(lib.store.folder, 1)["vectors"]
    m = json.loads(manifest_path(lib.store.folder, 1).read_text())
    from stemjepa.search.snapshot import _load_shard

    with pytest.raises(Exception, match="float16"):
        _load_shard(lib.store.folder, 1, m["shards"][0], "exact", -1, "float32")
    assert np.load(path, mmap_mode="r").dtype == np.float16
    lib.close()
