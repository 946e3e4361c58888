"""`stemjepa index` speed on a library of mixed formats, next to the decode-and-resample floor measured in the same run,
and the same library through the distributed paths (2 local workers).

Rows (files/s and audio-seconds/s; wall time of the command, model load and process start included):
- floor: every file decoded, resampled to the model's rate and checksummed in this process (what `index` cannot go
  below without embedding nothing), with the decoding threads `index` uses;
- index, 1 process: `stemjepa index LIB --out A` (the normal path); the start-up (process, imports, model load) is
  measured apart as `index` of an empty folder;
- index --engine lightning --workers 2: Lightning Fabric launches 2 processes (each half the cores), each embeds its
  shard into a part, rank 0 merges;
- index --shard 0/2 and 1/2 (run at the same time, no engine) then --merge: the SLURM-array path on one machine.
Agreement: the distributed indexes against the one-process index: same paths, max |difference| of the file vectors,
same top-10 of a few queries.

The library: stereo 44.1/48 kHz stems (resampled to the model's rate) as WAV (PCM 16), FLAC, MP3 and OGG Vorbis, a third
one-shots (0.3-1.5 s), a third loops (4-10 s), a third long stems (20-40 s).

Usage:  python benchmarks/index_speed.py             (full: 240 files, the default model; several minutes)
        python benchmarks/index_speed.py --quick     (12 short files, the tiny model; tests the script)
Options: --files N  --model NAME_OR_PATH  --batch 16  --no-analysis (STEMJEPA_ANALYSIS=0: no tempo/key)  --keep DIR
(keep the library and indexes there)  --json OUT.json (default index_speed.json). Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

FORMATS = [("wav", "WAV", "PCM_16"), ("flac", "FLAC", "PCM_16"), ("mp3", "MP3", "MPEG_LAYER_III"),
           ("ogg", "OGG", "VORBIS")]


def write_library(folder: Path, n: int, seed: int, quick: bool) -> float:
    """n stems in rotating formats and rates; returns the seconds of audio."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    total = 0.0
    for i in range(n):
        ext, fmt, subtype = FORMATS[i % len(FORMATS)]
        sr = (44100, 48000)[i % 2]
        kind = i % 3
        sec = rng.uniform(0.3, 1.5) if kind == 0 else rng.uniform(4, 10) if kind == 1 else rng.uniform(20, 40)
        if quick:
            sec = min(sec, 6.0)
        t = np.arange(int(sec * sr)) / sr
        f0 = 55.0 * 2 ** (rng.integers(0, 48) / 12)
        wave = 0.3 * np.sin(2 * np.pi * f0 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.5, 4) * t))
        wave = wave + 0.02 * rng.standard_normal(len(t))
        stereo = np.stack([wave, np.roll(wave, 17)], axis=1).astype(np.float32)
        path = folder / f"song{i // 4:03d}" / f"stem{i % 4}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), stereo, sr, format=fmt, subtype=subtype)
        total += sec
    return total


def floor(files: list[Path], sample_rate: int, workers: int = 2) -> float:
    """Seconds to decode, resample and checksum every file (the threads `index` decodes with)."""
    from stemjepa.audio.io import load_audio
    from stemjepa.search.walk import file_checksum

    def one(p):
        file_checksum(p)
        return len(load_audio(p, sample_rate=sample_rate, mono=True))

    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, files))
    return time.perf_counter() - t


def stemjepa(*args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stemjepa.cli.main", "index", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(procs: list[subprocess.Popen], what: str) -> None:
    for p in procs:
        out, err = p.communicate()
        if p.returncode not in (0, 1):  # 1: some files failed (reported), the index is written
            raise SystemExit(f"{what} failed ({p.returncode}):\n{out[-2000:]}\n{err[-3000:]}")


def timed(what: str, *commands: list[str], env: dict) -> float:
    """Wall seconds of running `commands` in turn; a list inside runs its members at the same time."""
    t = time.perf_counter()
    for cmd in commands:
        group = cmd if isinstance(cmd[0], list) else [cmd]
        finish([stemjepa(*c, env=env) for c in group], what)
    return time.perf_counter() - t


def vectors(index: Path) -> dict[str, np.ndarray]:
    con = sqlite3.connect(index / "index.sqlite")
    try:
        return {p: np.frombuffer(v, np.float32) for p, v in
                con.execute("SELECT path, vector FROM files WHERE gen_removed IS NULL ORDER BY id")}
    finally:
        con.close()


def agreement(a: Path, b: Path) -> dict:
    va, vb = vectors(a), vectors(b)
    same_paths = list(va) == list(vb)
    diff = max((float(np.max(np.abs(va[p] - vb[p]))) for p in va if p in vb), default=float("nan"))
    names = list(va)
    queries = [va[names[i]] for i in range(0, len(names), max(1, len(names) // 5))]
    top = []
    for v in (va, vb):
        mat = np.stack(list(v.values()))
        keys = list(v)
        top.append([[keys[j] for j in np.argsort(-(mat @ q), kind="stable")[:10]] for q in queries])
    return {"same_paths": same_paths, "max_abs_diff": diff, "same_top10": top[0] == top[1]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--files", type=int, default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--no-analysis", action="store_true")
    ap.add_argument("--keep", default=None)
    ap.add_argument("--json", default="index_speed.json")
    args = ap.parse_args()
    n = args.files or (12 if args.quick else 240)
    model_name = args.model or ("stemjepa-tiny-synth-v1" if args.quick else "default")

    from stemjepa.models.registry import load_model

    model = load_model(model_name, device="cpu")
    sr = int(model.sample_rate)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if args.no_analysis:
        env["STEMJEPA_ANALYSIS"] = "0"
    tmp = tempfile.TemporaryDirectory()
    work = Path(args.keep) if args.keep else Path(tmp.name)
    lib = work / "lib"
    seconds = write_library(lib, n, seed=11, quick=args.quick)
    files = sorted(p for p in lib.rglob("*") if p.is_file())
    common = ["--model", model_name, "--device", "cpu", "--batch-size", str(args.batch), "--quiet"]

    rows = [("decode + resample + checksum floor (2 threads)", floor(files, sr))]
    (work / "empty").mkdir(exist_ok=True)
    startup = timed("startup", [str(work / "empty"), "--out", str(work / "empty-index"), *common], env=env)
    one, eng, arr = work / "one", work / "engine", work / "array"
    rows.append(("index, 1 process", timed("index", [str(lib), "--out", str(one), *common], env=env)))
    rows.append(("index --engine lightning --workers 2",
                 timed("engine", [str(lib), "--out", str(eng), *common, "--engine", "lightning", "--workers", "2"],
                       env=env)))
    shards = [[str(lib), "--out", str(arr), *common, "--shard", f"{i}/2"] for i in range(2)]
    rows.append(("index --shard 0/2 + 1/2 (together), then --merge",
                 timed("shards", shards, [str(lib), "--out", str(arr), *common, "--merge"], env=env)))

    result = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "model": model_name,
              "files": n, "audio_seconds": seconds, "analysis": not args.no_analysis, "batch": args.batch,
              "formats": [f[0] for f in FORMATS],
              "rows": [{"path": name, "seconds": s, "files_s": n / s, "audio_s_per_s": seconds / s} for name, s in rows],
              "startup_seconds": startup, "agreement": {"engine": agreement(one, eng), "shards": agreement(one, arr)}}
    print(f"{n} files ({', '.join(result['formats'])}; {seconds:.0f} s of audio), model {model_name}, "
          f"{os.cpu_count()} CPUs, tempo/key {'on' if result['analysis'] else 'off'}; every `index` row includes "
          f"{startup:.1f} s of process start and model load (`index` of an empty folder)\n")
    print("| path | seconds | files/s | audio s/s |\n|---|---:|---:|---:|")
    for r in result["rows"]:
        print(f"| {r['path']} | {r['seconds']:.1f} | {r['files_s']:.2f} | {r['audio_s_per_s']:.1f} |")
    for what, a in result["agreement"].items():
        print(f"\n{what} vs 1 process: same files {a['same_paths']}, max |vector difference| {a['max_abs_diff']:.2e}, "
              f"same top-10 {a['same_top10']}")
    Path(args.json).write_text(json.dumps(result, indent=1))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
