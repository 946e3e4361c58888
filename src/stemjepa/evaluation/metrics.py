"""Retrieval metrics of Table I (Recall@k, normalised rank) and the K = 64 top-1 protocol of COCOLA / PHALAR.

Everything works on a query x pool score matrix (higher = closer) computed in float64, so that identical vectors give
bit-identical scores and ties are real ties, not rounding noise. The score is minus the Euclidean distance of the raw vectors
(`l2`, the paper's "sorted list of distances ||q - z||", Sec. III-A) or the cosine similarity (`cosine`).

Tie rule (pessimistic): a pool item whose similarity equals the target's counts as ranked *before* the target.
The rank of the target is therefore 1 + the number of other pool items at least as similar as it, and a query whose
target ties with another item for the first place is not a hit at R@1. This keeps a degenerate model (e.g. one
that maps everything to the same vector) from scoring perfectly.
"""
from __future__ import annotations

import numpy as np

RECALL_KS = (1, 5, 10)
DISTANCES = ("l2", "cosine")
# Table I's five columns, in its order, as (key in metrics.json, heading): every table, report and summary shows these
METRIC_COLUMNS = tuple([(f"R@{k}", f"R@{k}") for k in RECALL_KS] + [("norm_rank_mean", "mean rank"),
                                                                  ("norm_rank_median", "median rank")])
METRIC_KEYS = tuple(k for k, _ in METRIC_COLUMNS)


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length in float64; all-zero rows stay zero (their cosine with anything is 0)."""
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)


def cosine_similarities(queries: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """(Q, d) x (P, d) -> (Q, P) cosine similarities (float64)."""
    return l2_normalise(queries) @ l2_normalise(pool).T


def negative_l2_distances(queries: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """(Q, d) x (P, d) -> (Q, P) minus the Euclidean distance between raw vectors (float64; higher = closer)."""
    q = np.asarray(queries, dtype=np.float64)
    p = np.asarray(pool, dtype=np.float64)
    sq = (q * q).sum(1)[:, None] - 2.0 * (q @ p.T) + (p * p).sum(1)[None, :]
    return -np.sqrt(np.maximum(sq, 0.0))


def similarities(queries: np.ndarray, pool: np.ndarray, distance: str = "l2") -> np.ndarray:
    """The (Q, P) score matrix of `distance` ("l2": minus the Euclidean distance, "cosine": cosine similarity)."""
    if distance == "l2":
        return negative_l2_distances(queries, pool)
    if distance == "cosine":
        return cosine_similarities(queries, pool)
    raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, not {distance!r}")


def chance_metrics(pool_size: int, ks=RECALL_KS) -> dict[str, float]:
    """What a model that ranks the pool at random scores, in percent: R@k = k / |pool|, and an expected normalised rank
    (mean and median) of (|pool| + 1) / (2 |pool|), i.e. about 50 %."""
    if pool_size <= 0:
        raise ValueError("empty pool")
    out = {f"R@{k}": 100.0 * min(k, pool_size) / pool_size for k in ks}
    out["norm_rank_mean"] = out["norm_rank_median"] = 100.0 * (pool_size + 1) / (2 * pool_size)
    return out


def target_ranks(sim: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each query's target in its row of `sim`, ties counted against the query (pessimistic)."""
    sim = np.asarray(sim)
    targets = np.asarray(targets, dtype=np.int64)
    target_sim = sim[np.arange(len(targets)), targets]
    # every item >= the target's score, the target itself included, so the target alone gives rank 1
    return (sim >= target_sim[:, None]).sum(axis=1).astype(np.int64)


def nearest_neighbours(sim: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Index of each query's nearest pool item; on a tie at the top a non-target item wins (same rule as the ranks)."""
    sim = np.asarray(sim)
    targets = np.asarray(targets, dtype=np.int64)
    rows = np.arange(len(targets))
    top = sim.max(axis=1)
    at_top = sim >= top[:, None]
    at_top_not_target = at_top.copy()
    at_top_not_target[rows, targets] = False
    nn = np.argmax(at_top, axis=1)
    tied = at_top_not_target.any(axis=1)
    nn[tied] = np.argmax(at_top_not_target[tied], axis=1)
    return nn


def retrieval_metrics(ranks: np.ndarray, pool_size: int, ks=RECALL_KS) -> dict[str, float]:
    """Recall@k and mean / median normalised rank (rank / |pool|), all in percent as in Table I."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no queries to score")
    if pool_size <= 0:
        raise ValueError("empty pool")
    out = {f"R@{k}": float(100.0 * np.mean(ranks <= k)) for k in ks}
    norm = 100.0 * ranks / pool_size
    out["norm_rank_mean"] = float(norm.mean())
    out["norm_rank_median"] = float(np.median(norm))
    return out


def distractor_count(query_groups: np.ndarray, pool_groups: np.ndarray, k: int = 64) -> int:
    """How many distractors every query can get: k - 1, or fewer when some track has fewer other-track stems."""
    pool_groups = np.asarray(pool_groups)
    values, counts = np.unique(pool_groups, return_counts=True)
    same = dict(zip(values.tolist(), counts.tolist()))
    n_other = min(len(pool_groups) - same.get(g, 0) for g in np.asarray(query_groups).tolist())
    return int(max(0, min(k - 1, n_other)))


def top1_hits(
    sim: np.ndarray,
    targets: np.ndarray,
    query_groups: np.ndarray,
    pool_groups: np.ndarray,
    n_distract: int,
    n_draws: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Per query, the fraction of `n_draws` draws of `n_distract` other-track distractors its target beats strictly."""
    sim = np.asarray(sim)
    targets = np.asarray(targets, dtype=np.int64)
    other = np.asarray(query_groups)[:, None] != np.asarray(pool_groups)[None, :]  # allowed distractors
    target_sim = sim[np.arange(len(targets)), targets]
    hits = np.zeros(len(targets))
    for _ in range(n_draws):
        keys = rng.random(sim.shape)
        keys[~other] = np.inf  # never drawn
        picks = np.argpartition(keys, n_distract - 1, axis=1)[:, :n_distract]
        best_distractor = np.take_along_axis(sim, picks, axis=1).max(axis=1)
        hits += target_sim > best_distractor
    return hits / n_draws


def top1_at_k(
    sim: np.ndarray,
    targets: np.ndarray,
    query_groups: np.ndarray,
    pool_groups: np.ndarray,
    k: int = 64,
    n_draws: int = 10,
    seed: int = 0,
) -> tuple[float, int]:
    """Top-1 accuracy (percent) of the true stem among itself and k-1 stems drawn from *other* tracks.

    For each of `n_draws` seeded draws, every query gets its own random set of k-1 distractors, drawn without replacement
    among the pool items whose group (track) differs from the query's. The query is right when its target scores
    strictly higher than every distractor (ties count against it). Returns (accuracy averaged over draws and queries,
    the number of candidates actually used: smaller than k when the pool has fewer than k-1 stems from other tracks).
    """
    if len(targets) == 0:
        raise ValueError("no queries to score")
    n_distract = distractor_count(query_groups, pool_groups, k)
    if n_distract == 0:
        return float("nan"), 1
    hits = top1_hits(sim, targets, query_groups, pool_groups, n_distract, n_draws, np.random.default_rng(seed))
    return float(100.0 * hits.mean()), n_distract + 1
