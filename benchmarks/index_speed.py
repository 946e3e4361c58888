"""`stemjepa index` speed on a library of mixed formats, next to the decode-and-resample floor measured in the same run,
with and without the int8 encoder (`--quantize`), and the same library through the distributed paths (2 local workers).

Rows (files/s and audio-seconds/s; wall time of the command, model load and process start included):
- floor: every file decoded, resampled to the model's rate and checksummed in this process (what `index` cannot go
  below without embedding nothing), with the decoding threads `index` uses;
- index, 1 process, --quantize Q for each Q of --quantize (default none, then auto: int8 where the CPU and onnxruntime
  allow, models/int8.py): `stemjepa index LIB --out A` (the normal path). Its start-up (process, imports, model load,
  the first batch, which builds the int8 graph) is measured apart as `index` of a folder of one 1 s file; the table
  gives the ratio to the floor with and without it, and the library length (hours of this mix of files) from which
  the ratio reaches 0.5 (start-up S amortised: T / F >= 0.5 (S + T / r));
- index --engine lightning --workers 2: Lightning Fabric launches 2 processes (each half the cores), each embeds its
  shard into a part, rank 0 merges;
- index --shard 0/2 and 1/2 (run at the same time, no engine) then --merge: the SLURM-array path on one machine.
Agreement of each 1-process index with the first, and of the distributed indexes with the 1-process index of the same
(default) --quantize: same paths, max |difference| and min cosine of the file vectors, the top-10 of every 5th file's
vector (mean overlap, all the same).

The library: stereo 44.1/48 kHz stems (resampled to the model's rate) as WAV (PCM 16), FLAC, MP3 and OGG Vorbis, a third
one-shots (0.3-1.5 s), a third loops (4-10 s), a third long stems (20-40 s); 300 files are 63.6 min.

Usage:  python benchmarks/index_speed.py             (full: 240 files, the default model; several minutes)
        python benchmarks/index_speed.py --quick     (12 short files, the tiny model; tests the script)
Options: --files N | --hours H (library length)  --model NAME_OR_PATH  --batch 16  --no-analysis (STEMJEPA_ANALYSIS=0:
no tempo/key)  --quantize none,auto (the 1-process rows)  --no-distributed (floor and 1-process rows only)  --keep DIR
(keep the library and indexes there; a later run of the same size reuses the library)  --json OUT.json (default
index_speed.json). Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
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
    """Index b against index a: same files, max |vector difference|, min cosine of a file's two vectors, and the top-10
    of a's vectors of every 5th file (as queries) in both: their mean overlap and whether all are the same."""
    va, vb = vectors(a), vectors(b)
    same_paths = list(va) == list(vb)
    common = [p for p in va if p in vb]
    diff = max((float(np.max(np.abs(va[p] - vb[p]))) for p in common), default=float("nan"))
    cos = min((float(va[p] @ vb[p] / (np.linalg.norm(va[p]) * np.linalg.norm(vb[p]) + 1e-12)) for p in common),
              default=float("nan"))
    queries = [va[common[i]] for i in range(0, len(common), 5)]
    top = []
    for v in (va, vb):
        mat = np.stack([v[p] for p in common])
        top.append([[common[j] for j in np.argsort(-(mat @ q), kind="stable")[:10]] for q in queries])
    overlap = float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(*top)])) if queries else float("nan")
    return {"same_paths": same_paths, "max_abs_diff": diff, "min_cosine": cos, "top10_overlap": overlap,
            "same_top10": top[0] == top[1]}


MEAN_SECONDS = (0.9 + 7.0 + 30.0) / 3  # mean file length of write_library (a third each of one-shots, loops, stems)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--files", type=int, default=None)
    ap.add_argument("--hours", type=float, default=None, help="library length instead of --files (about 285 files/h)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--no-analysis", action="store_true")
    ap.add_argument("--no-distributed", action="store_true", help="only the floor and the 1-process rows")
    ap.add_argument("--quantize", default="none,auto", help="--quantize settings of the 1-process rows (default none,auto)")
    ap.add_argument("--keep", default=None)
    ap.add_argument("--json", default="index_speed.json")
    return ap.parse_args(argv)


def library(work: Path, n: int, quick: bool) -> tuple[Path, float]:
    """The library (reused from an earlier --keep run of the same size), and its seconds of audio."""
    lib, marker = work / "lib", work / "lib.json"
    spec = {"files": n, "seed": 11, "quick": quick}
    if marker.is_file() and json.loads(marker.read_text()).get("spec") == spec:
        return lib, json.loads(marker.read_text())["seconds"]
    seconds = write_library(lib, n, seed=11, quick=quick)
    marker.write_text(json.dumps({"spec": spec, "seconds": seconds}))
    return lib, seconds


def one_process_rows(lib: Path, work: Path, common: list[str], settings: list[str], env: dict) -> tuple[list, dict]:
    """Per --quantize setting: (row name, seconds) of `index` of the library, and its start-up: `index` of a folder
    holding one 1 s file (process, imports, model load, the first batch), run once untimed first so that the int8 graph
    is in its cache (a first run ever builds it: 1.2 s more, once) and the files in the page cache."""
    import soundfile as sf

    one_file = work / "one-file"
    one_file.mkdir(exist_ok=True)
    sf.write(str(one_file / "a.wav"), (0.1 * np.sin(np.arange(16000) / 5.0)).astype(np.float32), 16000)
    rows, startup = [], {}
    for q in settings:
        out = work / f"one-{q}"
        timed("warm-up", [str(one_file), "--out", str(work / f"one-warm-{q}"), *common, "--quantize", q], env=env)
        startup[q] = timed("startup", [str(one_file), "--out", str(work / f"one-file-{q}"), *common, "--quantize", q],
                           env=env)
        rows.append((f"index, 1 process, --quantize {q}",
                     timed("index", [str(lib), "--out", str(out), *common, "--quantize", q], env=env)))
    return rows, startup


def distributed_rows(lib: Path, work: Path, common: list[str], env: dict) -> list:
    eng, arr = work / "engine", work / "array"
    rows = [("index --engine lightning --workers 2",
             timed("engine", [str(lib), "--out", str(eng), *common, "--engine", "lightning", "--workers", "2"], env=env))]
    shards = [[str(lib), "--out", str(arr), *common, "--shard", f"{i}/2"] for i in range(2)]
    rows.append(("index --shard 0/2 + 1/2 (together), then --merge",
                 timed("shards", shards, [str(lib), "--out", str(arr), *common, "--merge"], env=env)))
    return rows


def amortised_hours(floor_s: float, seconds: float, index_s: float, startup_s: float) -> float | None:
    """Hours of audio (this mix of files) from which `index` reaches 0.5 of the floor: start-up S plus T / r (r its
    rate without start-up) against T / F; None when r < F / 2 (no length reaches it)."""
    floor_rate = seconds / floor_s
    margin = 1 / floor_rate - 0.5 * (index_s - startup_s) / seconds
    return None if margin <= 0 else 0.5 * startup_s / margin / 3600


def report(result: dict) -> None:
    """The Markdown table, the ratios to the floor and the agreement lines."""
    floor_s = result["rows"][0]["seconds"]
    print(f"{result['files']} files ({', '.join(result['formats'])}; {result['audio_seconds']:.0f} s = "
          f"{result['audio_seconds'] / 3600:.2f} h of audio), model {result['model']}, {result['cpus']} CPUs, tempo/key "
          f"{'on' if result['analysis'] else 'off'}; load before the run {result['load']}; every `index` row includes its "
          "start-up (`index` of a one-file folder)\n")
    print("| path | seconds | files/s | audio s/s | / floor | start-up s | / floor without start-up | 0.5 of the floor from |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in result["rows"]:
        q = r.get("quantize")
        up = result["startup_seconds"].get(q) if q else None
        tail = " | | |"
        if up is not None and r["seconds"] > up:  # (not so on a tiny library timed on a busy machine)
            hours = amortised_hours(floor_s, result["audio_seconds"], r["seconds"], up)
            tail = (f" {up:.1f} | {floor_s / (r['seconds'] - up):.2f} | "
                    f"{'never' if hours is None else f'{hours:.2f} h'} |")
        print(f"| {r['path']} | {r['seconds']:.1f} | {r['files_s']:.2f} | {r['audio_s_per_s']:.1f} | "
              f"{floor_s / r['seconds']:.2f} |{tail}")
    for what, a in result["agreement"].items():
        print(f"\n{what}: same files {a['same_paths']}, max |vector difference| {a['max_abs_diff']:.2e}, min cosine "
              f"{a['min_cosine']:.6f}, top-10 overlap {a['top10_overlap']:.3f}, same top-10 {a['same_top10']}")


def main(argv=None) -> int:
    args = parse_args(argv)
    n = args.files or (round(args.hours * 3600 / MEAN_SECONDS) if args.hours else (12 if args.quick else 240))
    model_name = args.model or ("stemjepa-tiny-synth-v1" if args.quick else "default")
    settings = [q.strip() for q in args.quantize.split(",") if q.strip()]

    from stemjepa.models.int8 import describe
    from stemjepa.models.registry import load_model

    sr = int(load_model(model_name, device="cpu").sample_rate)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if args.no_analysis:
        env["STEMJEPA_ANALYSIS"] = "0"
    tmp = tempfile.TemporaryDirectory()
    work = Path(args.keep) if args.keep else Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    for old in work.glob("one-*"):  # indexes of an earlier --keep run: each row indexes from scratch
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    for old in ("engine", "array"):
        shutil.rmtree(work / old, ignore_errors=True)
    lib, seconds = library(work, n, args.quick)
    files = sorted(p for p in lib.rglob("*") if p.is_file())
    common = ["--model", model_name, "--device", "cpu", "--batch-size", str(args.batch), "--quiet"]

    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    rows = [("decode + resample + checksum floor (2 threads)", floor(files, sr))]
    one_rows, startup = one_process_rows(lib, work, common, settings, env)
    rows += one_rows
    if not args.no_distributed:
        rows += distributed_rows(lib, work, common, env)
    first = work / f"one-{settings[0]}"
    agree = {f"--quantize {q} vs {settings[0]}": agreement(first, work / f"one-{q}") for q in settings[1:]}
    if not args.no_distributed:  # they run with the default --quantize (auto): against that 1-process index
        same = work / f"one-{'auto' if 'auto' in settings else settings[0]}"
        agree.update({f"engine vs 1 process ({same.name})": agreement(same, work / "engine"),
                      f"shards vs 1 process ({same.name})": agreement(same, work / "array")})
    result = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "model": model_name,
              "files": n, "audio_seconds": seconds, "analysis": not args.no_analysis, "batch": args.batch,
              "formats": [f[0] for f in FORMATS], "load": load,
              "quantize": {q: describe(q, "auto", "cpu") for q in settings},
              "rows": [{"path": name, "seconds": s, "files_s": n / s, "audio_s_per_s": seconds / s,
                        "quantize": name.split("--quantize ")[1] if "--quantize " in name else None} for name, s in rows],
              "startup_seconds": startup, "agreement": agree}
    report(result)
    print("\n" + "; ".join(f"--quantize {q}: {d}" for q, d in result["quantize"].items()))
    Path(args.json).write_text(json.dumps(result, indent=1))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
