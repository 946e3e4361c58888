"""Search speed of the stem index's vector search (the code `stemjepa query` runs), exact vs approximate.

Data: N random unit vectors of dimension D drawn from a Gaussian mixture (clustered, as embeddings of similar sounds
are: C random centres, each point = centre + isotropic noise of norm ~SIGMA), written to a memory-mapped .npy
exactly as an index snapshot stores them. Queries are fresh draws from the same mixture (not in the library).

Reports, per index type: build time, memory (RSS growth while building, and after the searches: memory-mapped pages
that were read count too), the data each needs, median latency of a single query and of a batch of 100 queries (k=10),
and recall@10 against exact search on the same queries (exact_fp32, the plain float32 scan, should give 1.0: it checks
that the bf16-screened exact search is exact).
Run: `python benchmarks/search_speed.py` (1,000,000 x 768: about 4 minutes on 2 cores, ~6 GB of RAM and /tmp);
`--n 100000` for a quick look; `--types exact,ivfpq,hnsw` to add HNSW (slow to build on few cores).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from stemjepa.search.vectors import VectorSearcher, bf16_bits, build_ann, default_params, import_faiss, normalize  # noqa: E402


def rss_mb() -> float:
    """Resident memory of this process in MiB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def mixture(rng: np.random.Generator, centres: np.ndarray, n: int, sigma: float) -> np.ndarray:
    d = centres.shape[1]
    labels = rng.integers(0, len(centres), n)
    x = centres[labels] + rng.standard_normal((n, d), dtype=np.float32) * (sigma / np.sqrt(d))
    return normalize(x)


def make_library(path: Path, n: int, d: int, clusters: int, sigma: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = normalize(rng.standard_normal((clusters, d), dtype=np.float32))
    out = np.lib.format.open_memmap(str(path), mode="w+", dtype=np.float32, shape=(n, d))
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        out[start:stop] = mixture(rng, centres, stop - start, sigma)
    out.flush()
    del out
    queries = mixture(rng, centres, 1000, sigma)
    vectors = np.load(str(path), mmap_mode="r")
    screen = np.lib.format.open_memmap(str(path.with_suffix(".bf16.npy")), mode="w+", dtype=np.int16, shape=(n, d))
    for start in range(0, n, 100_000):
        screen[start:start + 100_000] = bf16_bits(vectors[start:start + 100_000])
    screen.flush()
    del screen
    return vectors, np.load(str(path.with_suffix(".bf16.npy")), mmap_mode="r"), queries


def time_searches(searcher: VectorSearcher, queries: np.ndarray, n_single: int, n_batches: int, k: int):
    searcher.search(queries[:1], k)  # warm-up
    singles = []
    for i in range(n_single):
        t = time.perf_counter()
        searcher.search(queries[i:i + 1], k)
        singles.append(time.perf_counter() - t)
    batches, found = [], []
    for b in range(n_batches):
        q = queries[b * 100:(b + 1) * 100]
        t = time.perf_counter()
        _, pos = searcher.search(q, k)
        batches.append(time.perf_counter() - t)
        found.append(pos)
    return statistics.median(singles), statistics.median(batches), np.concatenate(found)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--sigma", type=float, default=1.0, help="noise norm relative to the unit centres")
    ap.add_argument("--types", default="exact,ivfpq,exact_fp32",
                    help="exact (bf16 screening + float32 re-scoring where the CPU has bf16), exact_fp32, ivfpq, hnsw")
    ap.add_argument("--single", type=int, default=300, help="single queries timed (approximate indexes)")
    ap.add_argument("--single-exact", type=int, default=30, help="single queries timed for exact search (slow)")
    ap.add_argument("--batches", type=int, default=5, help="batches of 100 timed (their results give recall)")
    ap.add_argument("--nprobe", type=int, default=None, help="override the saved default")
    ap.add_argument("--candidates", type=int, default=None, help="override the saved default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    k = 10
    faiss = import_faiss()  # with the same OpenMP settings as the index

    report = {"n": args.n, "dim": args.dim, "clusters": args.clusters, "sigma": args.sigma, "k": k,
              "cpus": os.cpu_count(), "faiss": faiss.__version__, "omp_threads": faiss.omp_get_max_threads(),
              "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        vectors, screen, queries = make_library(Path(tmp) / "vectors.npy", args.n, args.dim, args.clusters, args.sigma,
                                                args.seed)
        print(f"library: {args.n} x {args.dim} in {time.perf_counter() - t:.1f} s", flush=True)
        exact_found = None
        for name in args.types.split(","):
            kind = "exact" if name == "exact_fp32" else name
            params = default_params(kind, args.n, args.dim)
            if kind == "ivfpq":
                params.update({k_: v for k_, v in (("nprobe", args.nprobe), ("candidates", args.candidates)) if v})
            rss0 = rss_mb()
            t = time.perf_counter()
            ann = build_ann(kind, vectors, params)
            searcher = VectorSearcher(kind, params, vectors, ann, screen=screen if name == "exact" else None)
            build_s = time.perf_counter() - t
            build_mem = rss_mb() - rss0
            n_single = args.single_exact if kind == "exact" else args.single
            single, batch, found = time_searches(searcher, queries, n_single, args.batches, k)
            fp32_mb = vectors.nbytes / 2**20
            row = {"params": params, "single_queries_timed": n_single, "build_s": round(build_s, 1),
                   "build_rss_mb": round(build_mem), "rss_growth_mb": round(rss_mb() - rss0),
                   "single_ms": round(single * 1000, 2), "batch100_ms": round(batch * 1000, 1)}
            if kind == "ivfpq":
                index_mb = faiss.serialize_index(ann).nbytes / 2**20
                row["index_mb"] = round(index_mb, 1)
                row["data_mb"] = {"in_ram": round(index_mb), "memory_mapped_for_reranking": round(fp32_mb)}
            elif name == "exact":
                row["bf16_screening"] = searcher.screen is not None
                bf16_mb = screen.nbytes / 2**20 if searcher.screen is not None else 0
                row["data_mb"] = {"memory_mapped": round(fp32_mb + bf16_mb)}
            else:
                row["data_mb"] = {"memory_mapped": round(fp32_mb)}
            if exact_found is None and kind == "exact":
                exact_found = found
            elif exact_found is not None:
                hits = [len(set(a) & set(b)) for a, b in zip(found.tolist(), exact_found.tolist())]
                row["recall_at_10"] = round(float(np.mean(hits)) / k, 4)
            report["results"][name] = row
            print(f"{name:10s} " + json.dumps(row), flush=True)
            del searcher, ann
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
