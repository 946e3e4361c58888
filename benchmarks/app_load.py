"""Loopback load test of the web app (`stemjepa serve`): many queries at once, then a stream of decode bombs.

The server is the real app under uvicorn, in a child process listening on 127.0.0.1 only (a port the system picks), with
the built-in default model on the CPU and an index of a small tone library written here. The child stops by itself
after --limit-s, and this script stops it when done. Two phases, each bounded in count and time:

1. queries: --queries queries of 10 s mixes (uploaded ones and ones of the mixes folder, in turn) from --threads
   threads; each submits a query and polls its job until done. Reports errors (anything but a finished job with k
   results), p50/p95 latency (submit to result), queries per second, and the server's RSS.
2. bombs: --bombs distinct FLACs of 590 s, 8 channels at 192 kHz (~1 MB each, 3.6 GB decoded; distinct bytes: the
   STREAMINFO MD5 differs), each uploaded once. Each must be refused (413); the server's RSS and peak RSS (VmHWM)
   before and after show whether memory stays flat.

Run: `python benchmarks/app_load.py` (~2 minutes on 2 cores); `--queries 800 --threads 8` for the issue's figures.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

SR = 16000
BOMB_SHAPE = (590, 8, 192000)  # seconds, channels, rate


def write_library(root: Path, songs: int, seconds: float = 10.0) -> None:
    """`songs` song folders of four tone stems (bass, keys, lead, noise drums) with their stems.json."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SR)) / SR
    for s in range(songs):
        folder = root / f"song_{s:03d}"
        folder.mkdir(parents=True)
        f0 = 55.0 * 2 ** (rng.integers(0, 12) / 12)
        stems = {
            "bass": 0.4 * np.sin(2 * np.pi * f0 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t)),
            "keys": 0.2 * sum(np.sin(2 * np.pi * f0 * 4 * r * t) for r in (1.0, 1.26, 1.5)),
            "lead": 0.3 * np.sin(2 * np.pi * f0 * 8 * t + 3 * np.sin(2 * np.pi * 5 * t)),
            "drums": 0.3 * rng.standard_normal(len(t)) * (np.sin(2 * np.pi * 4 * t) > 0.7),
        }
        for name, wave in stems.items():
            sf.write(folder / f"{name}.wav", wave.astype(np.float32), SR, subtype="PCM_16")
        (folder / "stems.json").write_text(json.dumps({"stems": [{"file": f"{n}.wav", "labels": [n]} for n in stems]}))


def write_mixes(library: Path, out: Path, n: int) -> list[Path]:
    """Mixes of the first `n` songs without their bass, as 10 s stereo WAVs at 44.1 kHz."""
    import soundfile as sf

    from stemjepa.audio.io import resample

    out.mkdir(parents=True)
    paths = []
    for song in sorted(library.iterdir())[:n]:
        mono = sum(sf.read(p, dtype="float32")[0] for p in sorted(song.glob("*.wav")) if p.stem != "bass")
        mono = resample(mono / (np.max(np.abs(mono)) + 1e-6) * 0.8, SR, 44100)
        paths.append(out / f"{song.name}.wav")
        sf.write(paths[-1], np.stack([mono, 0.9 * mono], 1), 44100, subtype="PCM_16")
    return paths


def write_bombs(folder: Path, n: int) -> list[bytes]:
    """One real decode bomb (digital silence: ~1 MB of FLAC), then `n` byte-distinct copies (the MD5 in STREAMINFO,
    which decoders do not check by default, differs)."""
    import soundfile as sf

    seconds, channels, rate = BOMB_SHAPE
    path = folder / "bomb.flac"
    block = np.zeros((rate * 10, channels), np.int16)
    with sf.SoundFile(path, "w", rate, channels, subtype="PCM_16", format="FLAC") as fh:
        for _ in range(seconds // 10):
            fh.write(block)
    data = path.read_bytes()
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0, "STREAMINFO is the first metadata block"
    md5 = 8 + 18  # "fLaC", block header (4), then 18 bytes of STREAMINFO before its 16-byte MD5
    return [data[:md5] + i.to_bytes(16, "big") + data[md5 + 16:] for i in range(1, n + 1)]


def proc_mb(pid: int, key: str) -> float:
    """VmRSS / VmHWM (peak) of a process in MiB, from /proc."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def serve(args) -> None:
    """The child: the app on 127.0.0.1 (port chosen by the system, printed), stopping by itself after --limit-s."""
    import socket

    import uvicorn

    from stemjepa.app import ServeConfig, create_app

    app = create_app(ServeConfig(indexes=[Path(args.index)], model="default", mixes=Path(args.mixes),
                                 uploads=Path(args.uploads), device="cpu"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    threading.Timer(args.limit_s, lambda: setattr(server, "should_exit", True)).start()
    print(sock.getsockname()[1], flush=True)
    server.run(sockets=[sock])
    os._exit(0)  # the timer thread must not keep the process


def query_once(client, body: dict, k: int, deadline: float) -> tuple[float, str | None]:
    started = time.perf_counter()
    res = client.post("/api/queries", json=body)
    if res.status_code != 202:
        return time.perf_counter() - started, f"submit {res.status_code}: {res.text[:120]}"
    url = res.json()["job_url"]
    while time.monotonic() < deadline:
        job = client.get(url)
        if job.status_code != 200:
            return time.perf_counter() - started, f"poll {job.status_code}: {job.text[:120]}"
        job = job.json()
        if job["state"] == "done":
            ok = len(job["result"]["results"]) == k
            return time.perf_counter() - started, None if ok else f"{len(job['result']['results'])} results"
        if job["state"] == "error":
            return time.perf_counter() - started, job["error"]
        time.sleep(0.01)
    return time.perf_counter() - started, "timed out"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--songs", type=int, default=16)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--bombs", type=int, default=20)
    ap.add_argument("--limit-s", type=float, default=600.0, help="the server and every phase stop after this")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--index", help=argparse.SUPPRESS)
    ap.add_argument("--mixes", help=argparse.SUPPRESS)
    ap.add_argument("--uploads", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args)
        return 0

    import httpx

    from stemjepa.models.registry import load_model
    from stemjepa.search import build_index

    tmp = Path(tempfile.mkdtemp(prefix="stemjepa-app-load-"))
    t0 = time.monotonic()
    write_library(tmp / "lib", args.songs)
    mixes = write_mixes(tmp / "lib", tmp / "mixes", 4)
    build_index(tmp / "lib", tmp / "idx", load_model("default", device="cpu"), model_ref="default", progress=False)
    bombs = write_bombs(tmp, args.bombs)
    print(f"setup: {args.songs * 4} stems indexed, {len(mixes)} mixes, {len(bombs)} bombs of "
          f"{len(bombs[0]) / 1e6:.2f} MB in {time.monotonic() - t0:.0f} s", file=sys.stderr)

    child = subprocess.Popen([sys.executable, __file__, "--serve", "--index", str(tmp / "idx"), "--mixes",
                              str(tmp / "mixes"), "--uploads", str(tmp / "uploads"), "--limit-s", str(args.limit_s)],
                             stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        if not line.strip().isdigit():
            raise SystemExit(f"the server did not start (exit code {child.poll()})")
        port = int(line)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + args.limit_s
        with httpx.Client(base_url=base, timeout=60) as client:
            for _ in range(600):  # bounded wait for the server to listen
                try:
                    if client.get("/api/info").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            bodies = [{"mix": p.name} for p in mixes]
            for p in mixes:
                res = client.post("/api/uploads", params={"filename": p.name}, content=p.read_bytes(),
                                  headers={"content-type": "application/octet-stream"})
                assert res.status_code == 201, res.text
                bodies.append({"upload": res.json()["id"]})
        rss_idle = proc_mb(child.pid, "VmRSS")

        # phase 1: queries from several threads
        latencies: list[float] = []
        errors: list[str] = []
        counter = iter(range(args.queries))
        lock = threading.Lock()

        def worker():
            with httpx.Client(base_url=base, timeout=60) as client:
                while time.monotonic() < deadline:
                    with lock:
                        i = next(counter, None)
                    if i is None:
                        return
                    body = {**bodies[i % len(bodies)], "instrument": ("bass", "drums", "keys")[i % 3], "k": args.k}
                    seconds, error = query_once(client, body, args.k, deadline)
                    with lock:
                        latencies.append(seconds)
                        if error:
                            errors.append(error)

        started = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        rss_queries, hwm_queries = proc_mb(child.pid, "VmRSS"), proc_mb(child.pid, "VmHWM")

        # phase 2: distinct decode bombs, each refused
        refused, other = 0, []
        with httpx.Client(base_url=base, timeout=60) as client:
            for i, data in enumerate(bombs):
                if time.monotonic() > deadline:
                    break
                res = client.post("/api/uploads", params={"filename": f"bomb_{i:03d}.flac"}, content=data,
                                  headers={"content-type": "audio/flac"})
                if res.status_code == 413:
                    refused += 1
                else:
                    other.append(f"{res.status_code}: {res.text[:120]}")
            detail = client.post("/api/uploads", params={"filename": "bomb.flac"}, content=bombs[0],
                                 headers={"content-type": "audio/flac"}).json()["detail"]
        rss_bombs, hwm_bombs = proc_mb(child.pid, "VmRSS"), proc_mb(child.pid, "VmHWM")
    finally:
        child.terminate()
        child.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)

    q = sorted(latencies)
    p95 = q[min(len(q) - 1, int(0.95 * len(q)))] if q else float("nan")
    print("\n| phase | count | errors | p50 s | p95 s | q/s | server RSS MiB (peak) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| idle (4 uploads) | - | - | - | - | - | {rss_idle:.0f} |")
    print(f"| queries, {args.threads} threads, 10 s mixes, k={args.k} | {len(latencies)} | {len(errors)} | "
          f"{statistics.median(q):.3f} | {p95:.3f} | {len(q) / wall:.1f} | {rss_queries:.0f} ({hwm_queries:.0f}) |")
    print(f"| distinct bombs ({BOMB_SHAPE[1]} ch x {BOMB_SHAPE[2]} Hz x {BOMB_SHAPE[0]} s, "
          f"{len(bombs[0]) / 1e6:.2f} MB each) | {len(bombs)} | {len(other)} not refused | - | - | - | "
          f"{rss_bombs:.0f} ({hwm_bombs:.0f}); {rss_bombs - rss_queries:+.0f} MiB over the stream |")
    print(f"\nrefused with 413: {refused}/{len(bombs)}; message: {detail}")
    for e in (errors + other)[:5]:
        print("error:", e)
    return 0 if not errors and not other and refused == len(bombs) else 1


if __name__ == "__main__":
    sys.exit(main())
