"""Songs per minute of `stemjepa synth` for 30 s songs (target: at least 20 with --jobs 2 on a 2-core machine).

    python benchmarks/synth_speed.py [--songs 12] [--seconds 30] [--jobs 2] [--also-serial]

Renders into a temporary folder (deleted afterwards); the time includes starting the worker processes.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from stemjepa.data.synth import synthesize_corpus


def measure(songs: int, seconds: float, jobs: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        folders = synthesize_corpus(Path(tmp) / "corpus", songs, seconds=seconds, seed=123, jobs=jobs, progress=False)
        elapsed = time.perf_counter() - t0
        assert len(folders) == songs
    return songs / elapsed * 60, elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--songs", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--also-serial", action="store_true", help="also measure --jobs 1")
    args = ap.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {os.cpu_count()} cores, load average {load:.1f} before the run")
    runs = [1, args.jobs] if args.also_serial and args.jobs != 1 else [args.jobs]
    for jobs in runs:
        rate, elapsed = measure(args.songs, args.seconds, jobs)
        verdict = "" if jobs != 2 else ("  (target >= 20: met)" if rate >= 20 else "  (target >= 20: NOT met)")
        print(f"jobs={jobs}: {args.songs} songs of {args.seconds:g} s in {elapsed:.1f} s -> {rate:.1f} songs/min{verdict}")


if __name__ == "__main__":
    main()
