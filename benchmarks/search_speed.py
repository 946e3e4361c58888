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

`--update`: the cost of an index update (search/snapshot.py: a shard of the added rows + tombstones), the way
`stemjepa index` writes it, without audio or a model. An index of N clustered vectors is written through the store
(index.sqlite rows with one chunk each) and published as generation 1 (index type `auto`: exact below 100k, ivfpq
above); then --change rows are added (generation 2) and --change rows removed (generation 3). For each: wall time
(SQLite rows + snapshot + commit + checkpoint) and bytes written: `wchar` (every write() of the process: SQLite's WAL
and its checkpoint, the snapshot files), `write_bytes` (what reached the storage layer, /proc/self/io) and the size of
the snapshot files created. Then a reader opens the index (time) and checks that removed rows never come back and
added ones are found; `--full-rewrite` also times a compaction (what every update cost before the shards). The cost
should not grow with N: compare `--n 100000` with `--n 1000000` (~10 GB of disk in --tmp at 1M, ~7 GB of RAM).

`--stream`: the large-library path (search/vectors.py, _large_ivfpq_params), at 1M-10M rows, as `stemjepa index`
builds it without ever holding the library in RAM. The clustered vectors are generated a block of 100k at a time
(each block from its own seed) and written straight to one .npy in the storage the index would use (`--storage
auto`: vector_storage, float16 for 10M x 768 on 24 GB; no float32 copy is kept); while each float32 block exists, the
exact float32 scores of the --queries queries against it give the true top-10 (recall is measured against exact
float32 search, whatever the storage). Then the ivfpq index is trained (sample read from the file) and filled block
by block from the file, written and read back as a reader would, and searched over the memory-mapped file. Reports
build time (train, add), peak resident memory (VmHWM, reset between phases: generation, build, open + queries; and
RssAnon / RssFile, since pages of the memory-mapped file count too), single-query and batch-of-100 latency p50 / p95,
recall@10, file sizes. The files go to a temporary folder in --tmp, deleted at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from stemjepa.search.vectors import (  # noqa: E402
    NpyRows,
    StreamedRows,
    VectorSearcher,
    add_rows,
    bf16_bits,
    build_ann,
    default_params,
    import_faiss,
    normalize,
    read_ann,
    save_vectors,
    train_ann,
    write_ann,
)


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


def io_counters() -> dict[str, int]:
    """wchar / write_bytes of this process (Linux /proc/self/io; zeros elsewhere)."""
    out = {"wchar": 0, "write_bytes": 0}
    try:
        with open("/proc/self/io") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in out:
                    out[key] = int(value)
    except OSError:
        pass
    return out


def snapshot_files(folder: Path) -> dict[str, tuple[int, int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino)
            for p in folder.iterdir() if p.name.startswith("snapshot-")}


def measured(store, fn) -> dict:
    """Run `fn` (an update) and the checkpoint an `index` run ends with: seconds and bytes written."""
    folder = store.folder
    before, io0, t = snapshot_files(folder), io_counters(), time.perf_counter()
    fn()
    store.checkpoint()
    seconds, io1, after = time.perf_counter() - t, io_counters(), snapshot_files(folder)
    created = sum(v[0] for name, v in after.items() if before.get(name) != v)
    return {"seconds": round(seconds, 2), "wchar_mb": round((io1["wchar"] - io0["wchar"]) / 2**20, 1),
            "write_bytes_mb": round((io1["write_bytes"] - io0["write_bytes"]) / 2**20, 1),
            "snapshot_files_written_mb": round(created / 2**20, 1)}


def update_benchmark(args, folder: Path) -> dict:
    from stemjepa.search import StemIndex
    from stemjepa.search.snapshot import check_previous, publish_generation
    from stemjepa.search.store import FileVectors, MetaStore
    from stemjepa.search.vectors import resolve_index_type
    from stemjepa.search.walk import FileInfo

    folder.mkdir(parents=True)
    store = MetaStore(folder, create=True)
    with store.transaction():
        for key, value in (("format_version", 2), ("model_id", "benchmark"), ("generation", 0),
                           ("embed_dim", args.dim), ("index_policy", "auto"), ("sample_rate", 16000)):
            store.set(key, value)
    rng = np.random.default_rng(args.seed)
    centres = normalize(rng.standard_normal((args.clusters, args.dim), dtype=np.float32))
    one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)
    made = [0]

    def insert(vectors: np.ndarray, generation: int) -> list[int]:
        ids = []
        for start in range(0, len(vectors), 10_000):
            with store.transaction():
                for v in vectors[start:start + 10_000]:
                    ids.append(store.insert_row(FileInfo(f"/library/{made[0]}.wav", 1, 1), "-", 1.0,
                                                FileVectors(v, v[None], zero, one), generation))
                    made[0] += 1
        return ids

    def publish(generation: int, force_full: bool = False) -> None:
        n = store.count_visible(generation)
        kind = resolve_index_type("auto", n)
        params = store.get("index_params") if kind == store.get("index_type") else default_params(kind, n, args.dim)
        if kind == "ivfpq":
            params.setdefault("trained_n", n)
        publish_generation(store, generation, kind, params, check_previous(store), force_full=force_full)

    report = {"n": args.n, "dim": args.dim, "change": args.change, "cpus": os.cpu_count()}
    t = time.perf_counter()
    ids = []
    for start in range(0, args.n, 100_000):
        ids += insert(mixture(rng, centres, min(100_000, args.n - start), args.sigma), 1)
    report["library_rows_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    publish(1)
    report["first_snapshot_s"] = round(time.perf_counter() - t, 1)
    report["index_type"] = store.get("index_type")
    print(f"library of {args.n}: rows {report['library_rows_s']} s, snapshot {report['first_snapshot_s']} s "
          f"({report['index_type']})", flush=True)

    added_vectors = mixture(rng, centres, args.change, args.sigma)
    added: list[int] = []
    report["add"] = measured(store, lambda: (added.extend(insert(added_vectors, 2)), publish(2)))
    print("add   ", json.dumps(report["add"]), flush=True)
    removed = sorted(int(i) for i in rng.choice(np.array(ids), args.change, replace=False))
    removed_vectors = np.stack([np.frombuffer(r.vector, np.float32) for r in store.rows_by_id(removed, args.dim).values()])

    def remove():
        with store.transaction():
            store.mark_removed(removed, 3)
        publish(3)

    report["remove"] = measured(store, remove)
    print("remove", json.dumps(report["remove"]), flush=True)

    t = time.perf_counter()
    with StemIndex.open(folder) as index:
        report["reader_open_s"] = round(time.perf_counter() - t, 2)
        report["shards"] = len(json.loads((folder / "snapshot-3.manifest.json").read_text())["shards"])
        id_of = {f"/library/{i}.wav": row for i, row in enumerate(ids + added)}
        back = {id_of[r.path] for rs in index.search_vectors(removed_vectors[:100], k=10) for r in rs}
        found = [rs[0].path for rs in index.search_vectors(added_vectors[:100], k=1)]
        report["removed_rows_returned"] = len(back & set(removed))
        report["added_found_at_rank_1"] = float(np.mean([id_of[p] == i for p, i in zip(found, added[:100])]))
    if args.full_rewrite:
        report["full_rewrite"] = measured(store, lambda: publish(4, force_full=True))
        print("full  ", json.dumps(report["full_rewrite"]), flush=True)
    store.close()
    return report


def memory_status() -> dict[str, float]:
    """VmHWM (peak since the last reset_peak), VmRSS, RssAnon, RssFile of this process in GiB (Linux)."""
    out = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                    out[key] = round(int(value.split()[0]) / 2**20, 2)
    except OSError:
        pass
    return out


def reset_peak() -> None:
    """Start a new VmHWM measurement (Linux: `5` to /proc/self/clear_refs); a no-op where it is refused."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


class ExactTopK:
    """The running exact top-k of some queries over rows that arrive in blocks (float32 scores)."""

    def __init__(self, queries: np.ndarray, k: int):
        self.queries, self.k = queries, k
        self.scores = np.full((len(queries), 0), -np.inf, np.float32)
        self.rows = np.zeros((len(queries), 0), np.int64)

    def add(self, start: int, block: np.ndarray) -> None:
        import torch

        vals, idx = torch.topk(torch.from_numpy(self.queries @ block.T), min(self.k, len(block)), dim=1)
        s = np.concatenate([self.scores, vals.numpy()], axis=1)
        pos = np.concatenate([self.rows, idx.numpy().astype(np.int64) + start], axis=1)
        vals, idx = torch.topk(torch.from_numpy(s), min(self.k, s.shape[1]), dim=1)
        self.scores, self.rows = vals.numpy(), np.take_along_axis(pos, idx.numpy(), axis=1)


def streamed_library(path: Path, args, dtype, truth: ExactTopK, centres: np.ndarray, block: int = 100_000) -> None:
    """Write the n clustered rows to `path` in `dtype`, a block at a time, feeding each float32 block to `truth`."""
    def blocks():
        for b, start in enumerate(range(0, args.n, block)):
            rows = mixture(np.random.default_rng([args.seed, 1, b]), centres, min(block, args.n - start), args.sigma)
            truth.add(start, rows)
            if b % 10 == 9:
                print(f"  generated {start + len(rows):,} rows", flush=True)
            yield rows

    save_vectors(path, StreamedRows(blocks(), args.n, args.dim, dtype))


def percentiles(seconds: list[float], scale: float = 1000.0) -> dict[str, float]:
    return {"p50": round(float(np.percentile(seconds, 50)) * scale, 2),
            "p95": round(float(np.percentile(seconds, 95)) * scale, 2)}


def timed_queries(searcher: VectorSearcher, queries: np.ndarray, n_single: int, k: int):
    """(single seconds, batch-of-100 seconds, positions found in batches for every query)."""
    searcher.search(queries[:1], k)  # warm-up
    singles = []
    for i in range(n_single):
        t = time.perf_counter()
        searcher.search(queries[i:i + 1], k)
        singles.append(time.perf_counter() - t)
    batches, found = [], []
    for b in range(0, len(queries), 100):
        t = time.perf_counter()
        _, pos = searcher.search(queries[b:b + 100], k)
        batches.append(time.perf_counter() - t)
        found.append(pos)
    return singles, batches, np.concatenate(found)


def stream_params(args) -> dict:
    storage = None if args.storage == "auto" else args.storage
    params = default_params("ivfpq", args.n, args.dim, storage=storage)
    for key in ("nprobe", "candidates", "m"):
        if getattr(args, key):
            params[key] = getattr(args, key)
    if args.opq:
        params["opq"] = True
    return params


def stream_benchmark(args, folder: Path) -> dict:
    """--stream: see the module's docstring."""
    faiss = import_faiss()
    k, params = 10, stream_params(args)
    dtype = np.float16 if params.get("storage") == "float16" else np.float32
    need = args.n * (args.dim * np.dtype(dtype).itemsize + params["m"] + 16) + (1 << 30)  # vectors, index, margin
    free = shutil.disk_usage(folder).free
    if free < need:
        raise SystemExit(f"{folder}: {free / 2**30:.1f} GiB free, the benchmark needs ~{need / 2**30:.1f} GiB (--tmp)")
    report = {"mode": "stream", "n": args.n, "dim": args.dim, "clusters": args.clusters, "sigma": args.sigma, "k": k,
              "cpus": os.cpu_count(), "faiss": faiss.__version__, "params": params, "storage": np.dtype(dtype).name}
    rng = np.random.default_rng([args.seed, 0])
    centres = normalize(rng.standard_normal((args.clusters, args.dim), dtype=np.float32))
    queries = mixture(np.random.default_rng([args.seed, 2]), centres, args.queries, args.sigma)
    truth, path = ExactTopK(queries, k), folder / "vectors.npy"
    reset_peak()
    t = time.perf_counter()
    streamed_library(path, args, dtype, truth, centres)
    report["generate_and_exact_s"] = round(time.perf_counter() - t, 1)
    report["memory_generate_gib"] = memory_status()
    print(f"library: {args.n:,} x {args.dim} {report['storage']} in {report['generate_and_exact_s']} s", flush=True)
    report.update(stream_build(path, params, folder / "index.faiss"))
    report.update(stream_search(path, params, folder / "index.faiss", queries, truth, args.single, args.sweep))
    report["files_gib"] = {"vectors": round(path.stat().st_size / 2**30, 2),
                           "index": round((folder / "index.faiss").stat().st_size / 2**30, 2)}
    phases = ("memory_generate_gib", "memory_build_gib", "memory_search_gib")
    report["peak_rss_gib"] = max(report[p].get("VmHWM", 0.0) for p in phases)
    return report


def stream_build(path: Path, params: dict, index_path: Path) -> dict:
    """Train, fill (a block at a time from the file) and write the index; times and memory of the build."""
    rows = NpyRows(path)
    reset_peak()
    t = time.perf_counter()
    index = train_ann("ivfpq", rows, params)
    train_s = time.perf_counter() - t
    print(f"trained in {train_s:.1f} s", flush=True)
    t = time.perf_counter()
    add_rows(index, rows)
    add_s = time.perf_counter() - t
    print(f"added in {add_s:.1f} s", flush=True)
    write_ann(index, index_path)
    out = {"train_s": round(train_s, 1), "add_s": round(add_s, 1), "build_s": round(train_s + add_s, 1),
           "memory_build_gib": memory_status()}
    del index
    return out


def stream_search(path: Path, params: dict, index_path: Path, queries: np.ndarray, truth: ExactTopK,
                  n_single: int, sweep: list[str] | None = None) -> dict:
    """Open the index as a reader does, time single and batched queries, recall@10 against exact float32."""
    reset_peak()
    t = time.perf_counter()
    searcher = VectorSearcher("ivfpq", params, np.load(path, mmap_mode="r"), read_ann(index_path))
    open_s = time.perf_counter() - t
    singles, batches, found = timed_queries(searcher, queries, n_single, truth.k)
    out = {"open_s": round(open_s, 2), "single_queries": n_single, "single_ms": percentiles(singles),
           "single_candidates_only_ms": percentiles(candidate_times(searcher, queries[:n_single])),
           "batches_of_100": len(batches), "batch100_ms": percentiles(batches),
           "recall_at_10": recall_at(found, truth), "memory_search_gib": memory_status()}
    print(json.dumps(out), flush=True)
    if sweep:
        out["sweep"] = sweep_params(searcher, queries, truth, sweep)
    return out


def recall_at(found: np.ndarray, truth: ExactTopK) -> float:
    hits = [len(set(a) & set(b)) for a, b in zip(found.tolist(), truth.rows.tolist())]
    return round(float(np.mean(hits)) / truth.k, 4)


def candidate_times(searcher: VectorSearcher, queries: np.ndarray) -> list[float]:
    """Seconds of the FAISS candidate search alone (no re-rank), one query at a time."""
    kc = max(10, int(searcher.params["candidates"]))
    out = []
    for i in range(len(queries)):
        t = time.perf_counter()
        searcher.ann.search(queries[i:i + 1], kc)
        out.append(time.perf_counter() - t)
    return out


def sweep_params(searcher: VectorSearcher, queries: np.ndarray, truth: ExactTopK, sweep: list[str]) -> list[dict]:
    """Recall and batch latency with other nprobe / coarse_nprobe / candidates values (`--sweep nprobe=16,32`), the
    rest as saved."""
    saved, rows = dict(searcher.params), []
    for spec in sweep:
        key, _, values = spec.partition("=")
        for value in (int(v) for v in values.split(",")):
            searcher.set_query_params({**saved, key: value})
            batches, found = [], []
            for b in range(0, len(queries), 100):
                t = time.perf_counter()
                found.append(searcher.search(queries[b:b + 100], truth.k)[1])
                batches.append(time.perf_counter() - t)
            rows.append({key: value, "recall_at_10": recall_at(np.concatenate(found), truth),
                         "batch100_ms": percentiles(batches)})
            print(json.dumps(rows[-1]), flush=True)
    searcher.set_query_params(saved)
    return rows


def parse_args(argv=None) -> argparse.Namespace:
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
    ap.add_argument("--update", action="store_true", help="time and bytes of an index update (see above)")
    ap.add_argument("--change", type=int, default=1000, help="--update: rows added, then rows removed")
    ap.add_argument("--full-rewrite", action="store_true", help="--update: also time a compaction")
    ap.add_argument("--tmp", type=Path, default=None, help="folder for the temporary index (default: the system's)")
    ap.add_argument("--stream", action="store_true", help="the large-library path, 1M-10M rows (see above)")
    ap.add_argument("--storage", default="auto", choices=("auto", "float32", "float16"), help="--stream: vectors' dtype")
    ap.add_argument("--queries", type=int, default=1000, help="--stream: queries (in batches of 100; recall over all)")
    ap.add_argument("--opq", action="store_true", help="--stream: add an OPQ rotation in front of the PQ")
    ap.add_argument("--m", type=int, default=None, help="--stream: PQ sub-quantisers (bytes per code), instead of d/8")
    ap.add_argument("--sweep", action="append", default=None, metavar="KEY=V1,V2",
                    help="--stream: recall and batch time for other nprobe / coarse_nprobe / candidates (repeatable)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        if args.stream:
            report = stream_benchmark(args, Path(tmp))
        elif args.update:
            report = update_benchmark(args, Path(tmp) / "index")
        else:
            report = types_benchmark(args, Path(tmp))
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


def types_benchmark(args, folder: Path) -> dict:
    """The default mode: each of --types built over the same memory-mapped library, timed, recall against exact."""
    k = 10
    faiss = import_faiss()  # with the same OpenMP settings as the index

    report = {"n": args.n, "dim": args.dim, "clusters": args.clusters, "sigma": args.sigma, "k": k,
              "cpus": os.cpu_count(), "faiss": faiss.__version__, "omp_threads": faiss.omp_get_max_threads(),
              "results": {}}
    t = time.perf_counter()
    vectors, screen, queries = make_library(folder / "vectors.npy", args.n, args.dim, args.clusters, args.sigma,
                                            args.seed)
    print(f"library: {args.n} x {args.dim} in {time.perf_counter() - t:.1f} s", flush=True)
    exact_found = None
    for name in args.types.split(","):
        row, found = type_row(args, name, vectors, screen, queries, k)
        if exact_found is None and name in ("exact", "exact_fp32"):
            exact_found = found
        elif exact_found is not None:
            hits = [len(set(a) & set(b)) for a, b in zip(found.tolist(), exact_found.tolist())]
            row["recall_at_10"] = round(float(np.mean(hits)) / k, 4)
        report["results"][name] = row
        print(f"{name:10s} " + json.dumps(row), flush=True)
    return report


def type_row(args, name: str, vectors, screen, queries: np.ndarray, k: int) -> tuple[dict, np.ndarray]:
    """Build one index type over the library and time its searches: (figures, positions found in the batches)."""
    faiss = import_faiss()
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
    singles, batches, found = timed_queries(searcher, queries[:args.batches * 100], n_single, k)
    single, batch = statistics.median(singles), statistics.median(batches)
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
    return row, found


if __name__ == "__main__":
    sys.exit(main())
