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

    def moments(self, query: np.ndarray) -> tuple[float, float]:
        """(mean, std) of the cosines between the unit `query` (d,) and the library's files."""
        if len(self.sample) == 0:
            return 0.0, 0.0
        cos = (self.sample @ np.asarray(query, dtype=np.float32)).astype(np.float64)
        return float(cos.mean()), float(cos.std())


def standardised(cosine: float, mean: float, std: float) -> float:
    """z-score of one cosine; 0 when the library's cosines do not spread (a single file, or identical vectors)."""
    return float((cosine - mean) / std) if std > 1e-9 else 0.0


def percentile(rank: int, n: int) -> float:
    """Share (%) of the other n - 1 files of the index that rank below `rank` (1-based)."""
    return 100.0 if n <= 1 else float(100.0 * (n - rank) / (n - 1))
