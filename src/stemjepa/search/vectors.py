"""Vector search over L2-normalised file vectors: exact inner product, or an approximate FAISS index.

- exact: a flat inner-product scan (what FAISS's `IndexFlatIP` computes), the default below AUTO_APPROX_THRESHOLD
  vectors. Done as blocked matrix products straight on the memory-mapped snapshot (no copy in RAM): the OpenBLAS
  bundled in the faiss-cpu wheel measured 2-3x slower than numpy's on a batch of 100 here. On CPUs with bfloat16
  instructions all rows are first scored in bfloat16 and the rows that can still be in the top k (error bound
  BF16_MARGIN) are re-scored in float32, so results and scores stay exact at 2-3x the speed.
- ivfpq: inverted file + product quantisation gives candidates fast and small (codes of `m` bytes per vector); the
  candidates are then re-ranked with the exact inner product read from the stored float32 vectors (a memory-mapped
  .npy, so only the candidates' rows are touched). Scores returned are therefore exact cosines.
- hnsw: a graph over the full vectors (more memory, no training, exact scores for what it finds).
On unit vectors ranking by L2 distance equals ranking by inner product, so the approximate indexes use FAISS's L2
code paths (the most tuned) and scores are converted back: ip = 1 - d2 / 2.
Parameters (nlist, nprobe, ...) are chosen from the library size here and saved with the index.
A snapshot made of several shards (snapshot.py) is searched as one: its rows are a RowStack (positions run on from
shard to shard), the ivfpq lists of its shards are merged into one index at load, an hnsw graph is searched per shard,
and tombstoned rows (`dead`) are never returned: masked in exact scans, removed from the merged ivfpq lists, and
skipped by an IDSelector in hnsw graphs.
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np

from ..errors import ConfigError
from ..fsutil import atomic_write

INDEX_TYPES = ("exact", "ivfpq", "hnsw")
INDEX_POLICIES = ("auto",) + INDEX_TYPES
AUTO_APPROX_THRESHOLD = 100_000  # `auto` switches from exact to ivfpq at this many files
MIN_IVFPQ_VECTORS = 256  # below this, product quantisers cannot be trained: ivfpq falls back to exact


def import_faiss():
    """Import faiss with OpenMP threads that sleep instead of spin while idle.

    On a machine whose cores are busy with other work, spinning OpenMP threads made FAISS training 10x slower
    (measured: PQ training 42 s -> 4 s). Only applies if the user has not set OMP_WAIT_POLICY and faiss is not loaded.
    """
    import sys

    if "faiss" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import faiss

    return faiss


def resolve_index_type(policy: str, n: int) -> str:
    """Concrete index type for a policy (auto|exact|ivfpq|hnsw) and a library of n vectors."""
    if policy not in INDEX_POLICIES:
        raise ConfigError(f"unknown index type {policy!r} (choose from {', '.join(INDEX_POLICIES)})")
    if policy == "auto":
        return "ivfpq" if n >= AUTO_APPROX_THRESHOLD else "exact"
    if policy == "ivfpq" and n < MIN_IVFPQ_VECTORS:
        return "exact"
    return policy


def _pq_subquantizers(d: int) -> int:
    """Largest divisor of d giving sub-vectors of at least 8 dims (768 -> 96: 96-byte codes)."""
    target = max(1, d // 8)
    return max(m for m in range(1, target + 1) if d % m == 0)


def default_params(kind: str, n: int, d: int) -> dict:
    """Parameters of an index of `kind` for n vectors of dimension d; stored in the index so queries use the same."""
    if kind == "exact":
        return {}
    if kind == "ivfpq":
        nlist = max(1, min(int(round(2 * math.sqrt(n))), n // 16 if n >= 16 else 1))
        nbits = 8 if n >= 4096 else max(4, min(8, int(math.log2(max(2, n // 16)))))
        return {
            "nlist": nlist,
            "m": _pq_subquantizers(d),
            "nbits": nbits,
            # probe enough lists to scan ~16k codes (all of them in small libraries, where it costs nothing)
            "nprobe": min(nlist, max(16, math.ceil(nlist / 64), math.ceil(16384 * nlist / max(n, 1)))),
            # re-ranked exactly (at least k are fetched): recall@10 on clustered data is limited by how many PQ
            # candidates are re-ranked, not by nprobe (benchmarks/search_speed.py: 200 -> 0.93, 400 -> 0.99)
            "candidates": 400,
            "train_size": min(n, max(64 * nlist, 256 * 64)),
        }
    if kind == "hnsw":
        return {"M": 32, "ef_construction": 80, "ef_search": 128}
    raise ConfigError(f"unknown index type {kind!r} (choose from {', '.join(INDEX_TYPES)})")


def normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32; zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def _quiet(cp) -> None:
    """Small libraries: let k-means run on few points without FAISS printing a warning per sub-quantiser."""
    cp.min_points_per_centroid = 1
    cp.verbose = False


def build_ann(kind: str, vectors: np.ndarray, params: dict, previous=None, seed: int = 0):
    """Build the FAISS index for `kind` over `vectors` (ids = row positions); None for exact (built at load time).

    `previous` is an earlier ivfpq index with the same shape parameters: its trained quantisers are reused (emptied and
    refilled), so an incremental update does not pay for k-means again.
    """
    faiss = import_faiss()

    n, d = vectors.shape
    if kind == "exact" or n == 0:
        return None
    if kind == "ivfpq":
        if previous is not None and _same_ivfpq(previous, d, params):
            index = previous  # trained: a shard of any size is encoded with the same quantisers
            index.reset()
        else:
            if n < MIN_IVFPQ_VECTORS:
                raise ValueError(f"ivfpq needs at least {MIN_IVFPQ_VECTORS} vectors, got {n}")
            quantizer = faiss.IndexFlatL2(d)
            index = faiss.IndexIVFPQ(quantizer, d, params["nlist"], params["m"], params["nbits"])
            _quiet(index.cp)
            _quiet(index.pq.cp)
            index.cp.niter = 10  # coarse k-means: more iterations barely move recall once candidates are re-ranked
            index.pq.cp.niter = 15
            rng = np.random.default_rng(seed)
            take = min(n, params["train_size"])
            sample = vectors if take == n else vectors[np.sort(rng.choice(n, take, replace=False))]
            index.train(np.ascontiguousarray(sample, dtype=np.float32))
        for start in range(0, n, 65536):
            index.add(np.ascontiguousarray(vectors[start:start + 65536], dtype=np.float32))
        return index
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, params["M"])
        index.hnsw.efConstruction = params["ef_construction"]
        for start in range(0, n, 65536):
            index.add(np.ascontiguousarray(vectors[start:start + 65536], dtype=np.float32))
        return index
    raise ConfigError(f"unknown index type {kind!r}")


def _same_ivfpq(index, d: int, params: dict) -> bool:
    faiss = import_faiss()

    try:
        ivf = faiss.downcast_index(index)
    except Exception:  # noqa: BLE001
        return False
    return (isinstance(ivf, faiss.IndexIVFPQ) and ivf.d == d and ivf.nlist == params["nlist"]
            and ivf.pq.M == params["m"] and ivf.pq.nbits == params["nbits"] and ivf.is_trained)


def write_ann(index, path) -> None:
    """Write a FAISS index atomically (temp file + rename). FAISS writes through our file object, so a full disk is
    an OSError with its errno (FAISS's own file writer would only raise a RuntimeError)."""
    faiss = import_faiss()

    atomic_write(path, lambda fh: faiss.write_index(index, faiss.PyCallbackIOWriter(fh.write)))


def read_ann(path):
    faiss = import_faiss()

    return faiss.read_index(str(path))


# |bf16 score - fp32 score| for unit vectors is at most ~0.012 (q and x rounded to bf16: 2 x 2^-8, the bf16 output:
# 2^-8, fp32 accumulation: < 1e-4). Candidates within 2 x that of the k-th screened score contain the exact top k.
BF16_MARGIN = 0.025


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """bfloat16 copy of float32 rows, as int16 bit patterns (numpy has no bfloat16; torch views them back)."""
    import torch

    with warnings.catch_warnings():  # a read-only memory map is only read
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return t.to(torch.bfloat16).view(torch.int16).numpy()


def fast_bf16() -> bool:
    """True where the CPU multiplies bfloat16 natively (AVX512-BF16 / AMX); elsewhere torch emulates it, slower than
    float32, and exact search stays in float32. STEMJEPA_BF16=0/1 overrides."""
    env = os.environ.get("STEMJEPA_BF16")
    if env is not None:
        return env not in ("0", "", "false")
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read(1 << 16)
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


class RowStack:
    """The rows of several (n_i, d) arrays (memory-mapped shards) read as one (sum n_i, d) array: what a sharded
    snapshot searches. Supports what the searchers use: len, shape, dtype, a slice of rows, an array of positions."""

    def __init__(self, parts: list[np.ndarray]):
        if not parts:
            raise ValueError("a RowStack needs at least one part")
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts]).astype(np.int64)
        self.shape = (int(self.starts[-1]), int(parts[0].shape[1]))
        self.dtype = parts[0].dtype
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return sum(int(p.nbytes) for p in self.parts)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step != 1:
                return self[np.arange(start, stop, step)]
            first = int(np.searchsorted(self.starts, start, side="right")) - 1
            pieces = []
            i = max(first, 0)
            while i < len(self.parts) and self.starts[i] < stop:
                a, b = max(start, self.starts[i]) - self.starts[i], min(stop, self.starts[i + 1]) - self.starts[i]
                if b > a:
                    pieces.append(self.parts[i][a:b])
                i += 1
            if len(pieces) == 1:
                return pieces[0]
            return np.concatenate(pieces) if pieces else np.zeros((0, self.shape[1]), self.dtype)
        idx = np.asarray(key)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        if idx.ndim == 0:
            i = int(idx) + self.shape[0] if int(idx) < 0 else int(idx)
            part = int(np.searchsorted(self.starts, i, side="right")) - 1
            return self.parts[part][i - self.starts[part]]
        flat = idx.reshape(-1).astype(np.int64)
        flat = np.where(flat < 0, flat + self.shape[0], flat)
        out = np.empty((len(flat), self.shape[1]), self.dtype)
        part_of = np.searchsorted(self.starts, flat, side="right") - 1
        for part in np.unique(part_of):
            sel = part_of == part
            out[sel] = self.parts[part][flat[sel] - self.starts[part]]
        return out.reshape(idx.shape + (self.shape[1],))

    def __array__(self, dtype=None, copy=None):
        out = np.concatenate([np.asarray(p) for p in self.parts])
        return out if dtype is None else out.astype(dtype, copy=False)


def stack_rows(parts: list[np.ndarray]):
    """One part as is (a compacted snapshot: no indirection), several as a RowStack."""
    return parts[0] if len(parts) == 1 else RowStack(parts)


def merge_ivf(parts: list[tuple[int, object]]):
    """One ivfpq index over the (offset, index) shards (each numbered from 0, trained with the same quantisers): the
    lists of the later shards are moved into the first, their ids shifted to the rows' positions."""
    base = parts[0][1]
    if parts[0][0] != 0:
        raise ValueError("the first shard starts at row 0")
    for offset, index in parts[1:]:
        base.merge_from(index, int(offset))
    return base


class VectorSearcher:
    """Top-k search over one snapshot: `vectors` (n, d) unit rows (may be memory-mapped, or a RowStack of shards) and
    the kind's FAISS index (hnsw: one index, or (offset, index) per shard).

    `screen` (optional, exact only): the same rows in bfloat16 (int16 bits, see bf16_bits). Exact search then scores
    all rows in bfloat16 (2-3x faster than float32 where the CPU has bf16 instructions, half the memory traffic) and
    re-scores in float32 every row that could be in the top k given the bf16 error bound: the result is still exact.
    `dead` (optional): boolean mask of the rows that are tombstoned (removed from the library, still in a shard):
    never returned. For ivfpq they must already be removed from `ann` (merge_ivf + remove_ids, as snapshot.py does).
    """

    def __init__(self, kind: str, params: dict, vectors: np.ndarray, ann=None, screen: np.ndarray | None = None,
                 dead: np.ndarray | None = None):
        faiss = import_faiss()
        self.kind = kind
        self.params = dict(params)
        self.vectors = vectors
        self.n, self.d = vectors.shape
        self.dead = dead if dead is not None and dead.any() else None
        self.n_live = self.n - (0 if self.dead is None else int(self.dead.sum()))
        self.screen = screen if screen is not None and len(screen) == self.n and fast_bf16() else None
        self._live_bits = None
        if kind == "exact" or self.n == 0:
            self.kind = "exact"
            self.ann = None
        else:
            if ann is None:
                raise ValueError(f"a {kind} index needs its FAISS index")
            self.ann = ann
            if kind == "ivfpq":
                faiss.extract_index_ivf(ann).nprobe = int(params["nprobe"])
            elif kind == "hnsw":
                if not isinstance(ann, list):
                    self.ann = [(0, ann)]
                if self.dead is not None:  # per shard: bit i set = row offset + i may be returned
                    self._live_bits = [np.packbits(~self.dead[o:o + ix.ntotal], bitorder="little")
                                       for o, ix in self.ann]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, positions), each (q, k'), k' = min(k, live rows), best first; scores are inner products (cosines)."""
        q = normalize(np.atleast_2d(queries))
        if q.shape[1] != self.d:
            raise ValueError(f"query vectors have dimension {q.shape[1]}, the index {self.d}")
        k = min(int(k), self.n_live)
        if k <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if self.kind == "exact":
            return self._screened(q, k) if self.screen is not None else self._flat(q, k)
        if self.kind == "hnsw":
            return self._hnsw(q, k)
        # ivfpq: approximate candidates, exact re-ranking from the stored vectors
        kc = min(self.n, max(k, int(self.params["candidates"])))
        _, cand = self.ann.search(q, kc)
        return self._rerank(q, cand, k)

    def _hnsw(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each shard's graph, tombstoned rows skipped by a selector, then the best k of all shards."""
        faiss = import_faiss()
        ef = max(int(self.params["ef_search"]), k)
        all_d, all_p = [], []
        for i, (offset, index) in enumerate(self.ann):
            n_s = index.ntotal
            kk = min(k, n_s)
            if kk <= 0:
                continue
            if self._live_bits is None:
                index.hnsw.efSearch = ef
                d2, pos = index.search(q, kk)
            else:
                live = self._live_bits[i]  # referenced while the selector is used
                params = faiss.SearchParametersHNSW()
                params.efSearch = ef
                params.sel = faiss.IDSelectorBitmap(n_s, faiss.swig_ptr(live))
                d2, pos = index.search(q, kk, params=params)
            all_d.append(np.where(pos >= 0, d2, np.inf))
            all_p.append(np.where(pos >= 0, pos + offset, -1))
        d2, pos = np.concatenate(all_d, axis=1), np.concatenate(all_p, axis=1)
        order = np.argsort(d2, axis=1, kind="stable")[:, :k]
        d2, pos = np.take_along_axis(d2, order, axis=1), np.take_along_axis(pos, order, axis=1).astype(np.int64)
        scores = np.where(pos >= 0, 1.0 - d2 / 2.0, -np.inf).astype(np.float32)
        return scores, pos

    def _mask_dead(self, scores: np.ndarray, start: int, stop: int) -> np.ndarray:
        if self.dead is not None:
            scores[:, self.dead[start:stop]] = -np.inf
        return scores

    @staticmethod
    def _blockwise_topk(n: int, k: int, score_block, block: int) -> tuple[np.ndarray, np.ndarray]:
        """Running top-k over row blocks: `score_block(start, stop)` -> float32 (q, rows). torch's top-k is 10x
        faster than numpy's argpartition on 100 x 131072 scores."""
        import torch

        best_s = best_p = None
        for start in range(0, n, block):
            scores = score_block(start, min(n, start + block))
            vals, idx = torch.topk(torch.from_numpy(scores), min(k, scores.shape[1]), dim=1)
            vals, idx = vals.numpy(), idx.numpy().astype(np.int64) + start
            if best_s is None:
                best_s, best_p = vals, idx
                continue
            both_s, both_p = np.concatenate([best_s, vals], axis=1), np.concatenate([best_p, idx], axis=1)
            vals, idx = torch.topk(torch.from_numpy(both_s), min(k, both_s.shape[1]), dim=1)
            best_s, best_p = vals.numpy(), np.take_along_axis(both_p, idx.numpy(), axis=1)
        return best_s, best_p

    def _flat(self, q: np.ndarray, k: int, block: int = 131072) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k by float32 inner product, a block of rows at a time (BLAS speed, bounded memory)."""
        s, p = self._blockwise_topk(
            self.n, k, lambda a, b: self._mask_dead(q @ np.asarray(self.vectors[a:b], dtype=np.float32).T, a, b),
            block)
        order = np.argsort(-s, axis=1, kind="stable")
        return np.take_along_axis(s, order, axis=1), np.take_along_axis(p, order, axis=1)

    def _screened(self, q: np.ndarray, k: int, block: int = 131072) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k: bfloat16 scores for all rows, float32 re-scoring of every row that can still be in the top k."""
        import torch

        kc = min(self.n, max(4 * k, 256))
        qb = torch.from_numpy(q).to(torch.bfloat16)
        screen = self.screen

        def score(a: int, b: int) -> np.ndarray:
            with warnings.catch_warnings():  # read-only memory map: torch only reads it
                warnings.simplefilter("ignore", UserWarning)
                rows = torch.from_numpy(np.asarray(screen[a:b])).view(torch.bfloat16)
            return self._mask_dead((qb @ rows.T).float().numpy(), a, b)

        s, cand = self._blockwise_topk(self.n, kc, score, block)
        if kc < self.n:
            s = np.sort(s, axis=1)[:, ::-1]
            unsafe = s[:, kc - 1] >= s[:, k - 1] - BF16_MARGIN  # near-ties beyond the candidates: scan in float32
        else:
            unsafe = np.zeros(len(q), bool)
        out_s, out_p = self._rerank(q, cand, k)
        if unsafe.any():
            out_s[unsafe], out_p[unsafe] = self._flat(q[unsafe], k)
        return out_s, out_p

    def _rerank(self, q: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = np.full(cand.shape, -np.inf, np.float32)
        for i in range(len(q)):
            valid = cand[i] >= 0
            if self.dead is not None:
                valid &= ~self.dead[np.maximum(cand[i], 0)]
            rows = cand[i][valid]
            order = np.argsort(rows)  # sorted reads from the memory-mapped file
            vecs = np.asarray(self.vectors[rows[order]], dtype=np.float32)
            s = np.empty(len(rows), np.float32)
            s[order] = vecs @ q[i]
            scores[i, valid] = s
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        out_scores = np.take_along_axis(scores, top, axis=1)
        out_pos = np.take_along_axis(cand, top, axis=1).astype(np.int64)
        out_pos[~np.isfinite(out_scores)] = -1
        return out_scores, out_pos


def save_vectors(path, vectors: np.ndarray) -> None:
    """Atomic np.save (the snapshot's float32 matrix or its id array)."""
    atomic_write(path, lambda fh: np.save(fh, vectors))
