"""Vector search: the bf16-screened exact scan is exact; approximate indexes agree with it on clustered data."""
from __future__ import annotations

import numpy as np
import pytest

from stemjepa.search.vectors import (
    AUTO_APPROX_THRESHOLD,
    VectorSearcher,
    bf16_bits,
    build_ann,
    default_params,
    normalize,
    resolve_index_type,
)


def clustered(n: int, d: int = 64, clusters: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = normalize(rng.standard_normal((clusters, d), dtype=np.float32))
    return normalize(centres[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, d), dtype=np.float32))


def reference_topk(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(normalize(q) @ x.T), axis=1, kind="stable")[:, :k]


def test_exact_search_with_bf16_screening_is_exact(monkeypatch):
    monkeypatch.setenv("STEMJEPA_BF16", "1")
    x = clustered(6000)
    x[100:900] = normalize(x[100] + 1e-4 * np.random.default_rng(1).standard_normal((800, 64), dtype=np.float32))
    q = np.concatenate([x[:20] + 0.05, x[100:103], np.random.default_rng(2).standard_normal((5, 64), dtype=np.float32)])
    plain = VectorSearcher("exact", {}, x)
    screened = VectorSearcher("exact", {}, x, screen=bf16_bits(x))
    assert screened.screen is not None and plain.screen is None
    for k in (1, 10, 300):
        ref = reference_topk(x, q, k)
        for searcher in (plain, screened):
            scores, pos = searcher.search(q, k)
            assert pos.shape == (len(q), k)
            exact = np.take_along_axis(normalize(q) @ x.T, ref, axis=1)
            np.testing.assert_allclose(scores, exact, atol=1e-5)  # same scores (ties may swap positions)
            np.testing.assert_allclose(np.take_along_axis(normalize(q) @ x.T, pos, axis=1), scores, atol=1e-5)


def test_screening_is_skipped_without_bf16(monkeypatch):
    monkeypatch.setenv("STEMJEPA_BF16", "0")
    x = clustered(100)
    assert VectorSearcher("exact", {}, x, screen=bf16_bits(x)).screen is None


@pytest.mark.parametrize("kind", ["ivfpq", "hnsw"])
def test_approximate_indexes_find_the_exact_neighbours(kind):
    x = clustered(4000)
    q = clustered(50, seed=3)
    params = default_params(kind, len(x), x.shape[1])
    searcher = VectorSearcher(kind, params, x, build_ann(kind, x, params))
    scores, pos = searcher.search(q, 10)
    ref = reference_topk(x, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(pos.tolist(), ref.tolist())])
    assert recall >= 0.95
    np.testing.assert_allclose(scores, np.take_along_axis(normalize(q) @ x.T, pos, axis=1), atol=2e-5)  # exact scores


def test_index_type_policy():
    assert resolve_index_type("auto", AUTO_APPROX_THRESHOLD - 1) == "exact"
    assert resolve_index_type("auto", AUTO_APPROX_THRESHOLD) == "ivfpq"
    assert resolve_index_type("ivfpq", 10) == "exact"  # too few vectors to train product quantisers
    assert resolve_index_type("hnsw", 10) == "hnsw"
    p = default_params("ivfpq", 1_000_000, 768)
    assert (p["nlist"], p["m"], p["nbits"], p["nprobe"]) == (2000, 96, 8, 33)
    x = clustered(5)
    assert VectorSearcher("exact", {}, x).search(x[:1], 10)[1].shape == (1, 5)  # k larger than the library
