"""Scores a person can read: how far a stem stands out from the rest of the library for this query.

A raw cosine says little on its own: when the embeddings of a library share a common direction every stem scores
about the same (0.99 for all), and what counts as high differs from one model to the next. So a result carries:

- `score`: the standardised similarity z = (cosine - mean) / std, where mean and std are those of the query's cosines
  to all the files of the index (estimated from a fixed, evenly spread sample of SAMPLE_SIZE files when the index is
  larger). 0 means "as similar as an average stem of the library", 3 "three standard deviations above it". It is a
  monotone function of the cosine for one query, so it never changes the ranking.
- `percentile`: the share of the other files of the index that score below this one, in %, from the rank (100 for the
  best of the index, 0 for the worst); exact for exact search.
- `cosine`: the raw cosine, as before, for machines (`--json`).

With `rank="compat"` the order follows `compat_score`: z lowered by a poor tempo/key fit to the mix
(stemjepa.analysis.compat.compatibility); the figures shown stay the model's own z and percentile.
"""
from __future__ import annotations

import numpy as np

SAMPLE_SIZE = 8192  # pool rows used to estimate the mean and spread of a query's cosines (all of them below this)


class PoolStats:
    """A fixed sample of an index's unit vectors, to place one query's cosines within the whole library."""

    def __init__(self, vectors: np.ndarray, sample_size: int = SAMPLE_SIZE):
        n = len(vectors)
        self.n = n
        if n > sample_size:
            rows = np.linspace(0, n - 1, sample_size).round().astype(np.int64)
            self.sample = np.asarray(vectors[rows], dtype=np.float32)
        else:
            self.sample = np.asarray(vectors, dtype=np.float32)

    def cosines(self, query: np.ndarray) -> np.ndarray:
        """The cosines (float64) between the unit `query` (d,) and the sampled files."""
        if len(self.sample) == 0:
            return np.zeros(0)
        return (self.sample @ np.asarray(query, dtype=np.float32)).astype(np.float64)

    def moments(self, query: np.ndarray) -> tuple[float, float]:
        """(mean, std) of the cosines between the unit `query` (d,) and the library's files."""
        cos = self.cosines(query)
        return (float(cos.mean()), float(cos.std())) if len(cos) else (0.0, 0.0)


def standardised(cosine: float, mean: float, std: float) -> float:
    """z-score of one cosine; 0 when the library's cosines do not spread (a single file, or identical vectors)."""
    return float((cosine - mean) / std) if std > 1e-9 else 0.0


def percentile(rank: int, n: int) -> float:
    """Share (%) of the other n - 1 files of the index that rank below `rank` (1-based)."""
    return 100.0 if n <= 1 else float(100.0 * (n - rank) / (n - 1))


def pool_percentile(cosine: float, pool_cosines: np.ndarray) -> float:
    """Share (%) of the library's files scoring below `cosine`, from the pool's cosines to the same query (exact for
    an index of up to SAMPLE_SIZE files): the percentile of a result whose rank in the whole index is not known (a
    filtered or compatibility-ranked query). The file itself (same cosine, up to rounding) does not count."""
    n = len(pool_cosines)
    if n <= 1:
        return 100.0
    below = int(np.count_nonzero(pool_cosines < cosine - 1e-5))
    return float(min(100.0, 100.0 * below / (n - 1)))


COMPAT_WEIGHT = 1.5  # rank="compat": z + COMPAT_WEIGHT * (compatibility - 1): a clash costs up to 1.5 standard deviations
UNKNOWN_COMPAT = 0.5  # a candidate whose tempo and key are unknown (not analysed) ranks as a half fit


def compat_score(z: float, compatibility: float | None) -> float:
    """The ranking score of rank="compat": the model's z lowered by how badly the candidate's tempo and key fit the
    mix (never raised: a perfect fit keeps z, so model-ranked candidates beyond the fetched ones cannot overtake)."""
    c = UNKNOWN_COMPAT if compatibility is None else min(max(float(compatibility), 0.0), 1.0)
    return float(z + COMPAT_WEIGHT * (c - 1.0))
