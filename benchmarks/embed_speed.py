"""Embedding (indexing) speed on this machine: the project's embed path against a minimal ViT forward written directly
in PyTorch, in the same run, in fp32 and in bf16, for the paper's `base` encoder and the tiny/default model.

Rows, per model size and precision:
- project reference embedding (`embed_many`: waveform -> chunking -> log-mel -> target encoder -> masked pooling), and
  query embedding (`query_many`: context encoder + FiLM predictor; phase-2 model with class conditioning), chunks/s;
- minimal reference: the same ViT (dims, patches, fixed positions, pre-norm blocks, SDPA) written plainly in PyTorch
  (as /work/shared/anchors/cpu_embed_anchor.py does), fed precomputed log-mel (no front-end), chunks/s;
- ratio project / minimal at the same precision, and x real time (seconds of audio embedded per second).
Indexing: `build_index` on a folder of generated stems (WAV; a mix of one-shots and longer loops), files/s and
chunks/s, the projected time for 1,000 three-minute stems at the measured chunks/s, and the same files embedded one at a
time (the old per-file path of `stemjepa embed`) against the streamed cross-file batches.
Agreement: cosine of bf16 against fp32 embeddings (references and queries) and whether retrieval ranks change on a small
generated test set (top-1 unchanged, top-10 overlap, rank of the true stem unchanged).

bf16 speed rows run only where the CPU has native bf16 (models/precision.py: AVX512-BF16 / AMX / Arm BF16) or with
--force-bf16: elsewhere bf16 is emulated and about 10x slower than fp32 (a base row then takes minutes). The agreement
check runs bf16 anyway on the tiny model (small), and on base only with native bf16 or --force-bf16.

Usage:  python benchmarks/embed_speed.py            (full: base + tiny, a few minutes on 2 cores)
        python benchmarks/embed_speed.py --quick    (tiny only, small sizes: seconds; tests the script)
Options: --sizes base,tiny  --batch 8  --reps 3  --threads N  --model NAME_OR_PATH (the tiny/default model; default:
the built-in default model when there is one, else random tiny weights)  --force-bf16  --json OUT.json  --compile
(also time torch.compile'd encoders; compile time reported separately).
Prints a Markdown table; writes JSON (default embed_speed.json).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from stemjepa.config import load_config  # noqa: E402
from stemjepa.models import precision as P  # noqa: E402
from stemjepa.models.encoder import encoder_dims  # noqa: E402
from stemjepa.models.stemjepa import StemJEPA  # noqa: E402

CLASSES = ["bass", "drums", "piano", "guitar", "strings", "voice", "synth", "music"]


# ----------------------------------------------------------------------------------------------------------------------
# the minimal reference
# ----------------------------------------------------------------------------------------------------------------------
class RefBlock(nn.Module):
    def __init__(self, d: int, heads: int, mlp: int):
        super().__init__()
        self.h = heads
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, mlp), nn.Linear(mlp, d)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.n1(x)).view(b, n, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.n2(x))))


class RefViT(nn.Module):
    """Patch conv, fixed positions (a buffer), pre-norm blocks, final norm, mean over tokens."""

    def __init__(self, d: int, depth: int, heads: int, mlp: int, patch: int, grid: tuple[int, int]):
        super().__init__()
        self.patch, self.grid = patch, grid
        self.embed = nn.Conv2d(1, d, patch, patch)
        self.register_buffer("pos", torch.randn(1, grid[0] * grid[1], d) * 0.02)
        self.blocks = nn.ModuleList(RefBlock(d, heads, mlp) for _ in range(depth))
        self.norm = nn.LayerNorm(d)

    def forward(self, mel):
        f, t = self.grid
        x = self.embed(mel[:, None, : f * self.patch, : t * self.patch]).flatten(2).transpose(1, 2) + self.pos
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x).mean(1)


# ----------------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------------
def best_times(fns, reps: int) -> list[float]:
    """Best time of each function over `reps` interleaved rounds, so that a drift in the machine's speed (frequency,
    a neighbour's load) reaches all of them alike and their ratio stays fair."""
    for fn in fns:
        fn()  # warm-up
    times = [[] for _ in fns]
    for _ in range(reps):
        for fn, out in zip(fns, times):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return [min(t) for t in times]


def best_time(fn, reps: int) -> float:
    return best_times([fn], reps)[0]


def build(size: str, phase: int, args) -> StemJEPA:
    torch.manual_seed(0)
    if size == "base":
        cfg = load_config("paper_phase1" if phase == 1 else "paper_phase2", ["model.conditioning.kind=classes"])
    else:
        cfg = load_config("tiny_phase1" if phase == 1 else "tiny", ["model.conditioning.kind=classes"])
    if phase == 2:
        cfg.model.conditioning.classes = list(CLASSES)
    return StemJEPA(cfg.model, cfg.phase).eval()


def load_default(name: str | None):
    """The tiny/default model: --model, else the built-in default model when this checkout has one, else None."""
    try:
        from stemjepa.models.registry import load_model
    except ImportError:
        from stemjepa.models.checkpoint import load_model
        if name is None:
            return None
    try:
        return load_model(name or "default", device="cpu")
    except Exception as exc:  # noqa: BLE001
        if name is not None:
            raise
        print(f"(no built-in default model: {type(exc).__name__}: {str(exc)[:100]}; random tiny weights)", file=sys.stderr)
        return None


def signals(n: int, seconds: float, sr: int, seed: int) -> list[np.ndarray]:
    """Distinct test stems: harmonic tones with an amplitude pattern, filtered noise bursts, chirps."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            f0 = 55.0 * 2 ** (rng.integers(0, 48) / 12)
            x = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 5))
            x *= 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * rng.uniform(0.5, 4) * t))
        elif kind == 1:
            x = rng.standard_normal(len(t))
            k = int(rng.integers(2, 30))
            x = np.convolve(x, np.ones(k) / k, mode="same") * (np.sin(2 * np.pi * rng.uniform(1, 6) * t) > 0.6)
        else:
            f = rng.uniform(100, 2000) * (1 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.1, 1) * t))
            x = np.sin(2 * np.pi * np.cumsum(f) / sr)
        out.append((0.3 * x / (np.abs(x).max() + 1e-9)).astype(np.float32))
    return out


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def unit(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


# ----------------------------------------------------------------------------------------------------------------------
# measurements
# ----------------------------------------------------------------------------------------------------------------------
def speed_rows(size: str, model_ref: StemJEPA, model_q: StemJEPA, precisions: list[str], args) -> list[dict]:
    rows = []
    b = args.batch
    cs, sr = model_ref.chunk_samples, model_ref.sample_rate
    chunk_s = cs / sr
    waves = signals(b, chunk_s, sr, seed=1)  # exactly one chunk each: b chunks per call
    d, depth, heads = encoder_dims(model_ref.config.encoder)
    mlp = int(d * model_ref.config.encoder.mlp_ratio)
    ref = RefViT(d, depth, heads, mlp, model_ref.config.encoder.patch_size, model_ref.encoder.grid).eval()
    with torch.no_grad():
        mel = model_ref.frontend(torch.from_numpy(np.stack(waves)))
    for prec in precisions:
        dtype = P.resolve_precision(prec, "cpu")
        def minimal():
            with torch.no_grad(), P.autocast(dtype, "cpu"):
                ref(mel)

        t_emb, t_query, t_min = best_times([
            lambda: model_ref.embed_many(waves, batch_size=b, precision=prec),
            lambda: model_q.query_many(waves, ["bass"] * b, batch_size=b, precision=prec),
            minimal], args.reps)
        row = {"size": size, "precision": prec, "batch": b, "chunk_seconds": chunk_s,
               "project_embed_chunks_s": b / t_emb, "project_query_chunks_s": b / t_query,
               "minimal_chunks_s": b / t_min, "ratio_embed_to_minimal": t_min / t_emb,
               "embed_x_realtime": b * chunk_s / t_emb, "query_x_realtime": b * chunk_s / t_query}
        if args.compile:
            row.update(compiled_row(model_ref, waves, prec, args))
        rows.append(row)
        print(f"  {size} {prec}: project {row['project_embed_chunks_s']:.2f} chunks/s, minimal "
              f"{row['minimal_chunks_s']:.2f}, query {row['project_query_chunks_s']:.2f}", file=sys.stderr, flush=True)
    return rows


def compiled_row(model: StemJEPA, waves, prec: str, args) -> dict:
    """The project's embed path with torch.compile'd encoders (inductor; needs a C++ compiler)."""
    enc = model.encoder
    try:
        t0 = time.perf_counter()
        model.encoder = torch.compile(enc, dynamic=False)
        model.embed_many(waves, batch_size=args.batch, precision=prec)  # compiles
        compile_s = time.perf_counter() - t0
        t = best_time(lambda: model.embed_many(waves, batch_size=args.batch, precision=prec), args.reps)
        return {"compiled_embed_chunks_s": args.batch / t, "compile_seconds": compile_s}
    except Exception as exc:  # noqa: BLE001
        return {"compiled_embed_chunks_s": None, "compile_error": f"{type(exc).__name__}: {str(exc)[:120]}"}
    finally:
        model.encoder = enc


def write_library(folder: Path, n: int, sr: int, chunk_s: float, seed: int) -> tuple[int, float]:
    """n WAV stems: a third one-shots (0.3-1.5 s), a third loops of 1-2 chunks, a third of 3-4 chunks."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    seconds_total = 0.0
    for i in range(n):
        kind = i % 3
        sec = rng.uniform(0.3, 1.5) if kind == 0 else rng.uniform(1, 2) * chunk_s if kind == 1 else rng.uniform(3, 4) * chunk_s
        wave = signals(1, sec, sr, seed=seed * 1000 + i)[0]
        sf.write(folder / f"stem_{i:04d}.wav", wave, sr, subtype="PCM_16")
        seconds_total += len(wave) / sr
    return n, seconds_total


def indexing_row(size: str, model: StemJEPA, args) -> dict:
    from stemjepa.audio.io import load_audio
    from stemjepa.search import build_index

    sr, cs = model.sample_rate, model.chunk_samples
    chunk_s = cs / sr
    with tempfile.TemporaryDirectory() as tmp:
        lib = Path(tmp) / "lib"
        n, seconds = write_library(lib, args.files, sr, chunk_s, seed=7)
        paths = sorted(lib.glob("*.wav"))
        chunks = sum(max(1, math.ceil(len(load_audio(p, sr)) / cs)) for p in paths)
        t = time.perf_counter()
        build_index(lib, Path(tmp) / "index", model, batch_size=args.batch, progress=False)
        t_index = time.perf_counter() - t
        # the same files through the streamed cross-file batches vs one file at a time (the old `embed` CLI path)
        decoded = [load_audio(p, sr) for p in paths]
        t_stream = best_time(lambda: list(model.iter_tracks(iter(decoded), batch_size=args.batch)), 1)
        t_each = best_time(lambda: [model.embed(w, batch_size=args.batch) for w in decoded], 1)
    per_stem = math.ceil(180.0 / chunk_s)
    chunk_rate = chunks / t_index
    return {"size": size, "precision": model.resolved_precision(), "files": n, "audio_seconds": seconds,
            "chunks": chunks, "index_seconds": t_index, "files_s": n / t_index, "index_chunks_s": chunk_rate,
            "projected_1000x3min_hours": 1000 * per_stem / chunk_rate / 3600,
            "streamed_seconds": t_stream, "one_file_at_a_time_seconds": t_each}


def test_set(model_q: StemJEPA, n_songs: int, stems: int, seed: int):
    """Generated songs: `stems` stems each (references), and per stem a query = the mix of the others + its label."""
    sr, cs = model_q.sample_rate, model_q.chunk_samples
    refs, queries, labels, targets = [], [], [], []
    for s in range(n_songs):
        song = signals(stems, 1.5 * cs / sr, sr, seed=seed + s)
        for j in range(stems):
            targets.append(len(refs) + j)
            queries.append(sum(song[k] for k in range(stems) if k != j).astype(np.float32))
            labels.append(CLASSES[j % len(CLASSES)])
        refs += song
    return refs, queries, labels, np.array(targets)


def agreement_row(size: str, model_q: StemJEPA, args) -> dict:
    n_songs, stems = (3, 3) if args.quick else (6, 4)
    refs, queries, labels, targets = test_set(model_q, n_songs, stems, seed=11)
    out = {"size": size, "references": len(refs), "queries": len(queries)}
    emb = {}
    for prec in ("fp32", "bf16"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # emulated bf16: slow, and we know
            r = model_q.embed_many(refs, batch_size=args.batch, precision=prec)
            q = model_q.query_many(queries, labels, batch_size=args.batch, precision=prec)
        emb[prec] = (np.stack([e.vector for e in r]), np.stack([e.vector for e in q]))
    (r32, q32), (r16, q16) = emb["fp32"], emb["bf16"]
    cos_r = [cosine(a, b) for a, b in zip(r32, r16)]
    cos_q = [cosine(a, b) for a, b in zip(q32, q16)]
    s32, s16 = unit(q32) @ unit(r32).T, unit(q16) @ unit(r16).T
    o32, o16 = np.argsort(-s32, axis=1), np.argsort(-s16, axis=1)
    k = min(10, len(refs))
    rank32 = np.array([int(np.where(o32[i] == t)[0][0]) + 1 for i, t in enumerate(targets)])
    rank16 = np.array([int(np.where(o16[i] == t)[0][0]) + 1 for i, t in enumerate(targets)])
    out.update({
        "ref_cosine_min": min(cos_r), "ref_cosine_mean": float(np.mean(cos_r)),
        "query_cosine_min": min(cos_q), "query_cosine_mean": float(np.mean(cos_q)),
        "top1_unchanged": float(np.mean(o32[:, 0] == o16[:, 0])),
        "top10_overlap": float(np.mean([len(set(o32[i, :k]) & set(o16[i, :k])) / k for i in range(len(o32))])),
        "target_rank_unchanged": float(np.mean(rank32 == rank16)),
        "target_rank_max_shift": int(np.abs(rank32 - rank16).max()),
        "fp32_R@1": float(np.mean(rank32 == 1)), "bf16_R@1": float(np.mean(rank16 == 1)),
    })
    return out


# ----------------------------------------------------------------------------------------------------------------------
def fmt(x, nd=2):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model only, small sizes (seconds; tests the script)")
    ap.add_argument("--sizes", default=None, help="comma-separated: base,tiny (default both; --quick: tiny)")
    ap.add_argument("--batch", type=int, default=None, help="chunks per forward pass (default 8; --quick 2)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions, best kept (default 3; --quick 1)")
    ap.add_argument("--files", type=int, default=None, help="stems in the indexing folder (default 24; --quick 6)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's, = cores)")
    ap.add_argument("--model", default=None, help="the tiny/default model (name or path; default: built-in default)")
    ap.add_argument("--force-bf16", action="store_true", help="time bf16 even on a CPU without native bf16 (slow)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd encoders")
    ap.add_argument("--json", default="embed_speed.json", help="write the results here (default embed_speed.json)")
    args = ap.parse_args()
    args.sizes = (args.sizes or ("tiny" if args.quick else "base,tiny")).split(",")
    args.batch = args.batch or (2 if args.quick else 8)
    args.reps = args.reps or (1 if args.quick else 3)
    args.files = args.files or (6 if args.quick else 24)
    if args.threads:
        torch.set_num_threads(args.threads)
    native, why = P.detect_cpu_bf16()
    speed_precisions = ["fp32"] + (["bf16"] if native or args.force_bf16 else [])
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native, "bf16_check": why,
           "auto": P.describe("cpu"), "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
           "quick": args.quick}
    print(f"torch {env['torch']}, {env['threads']} threads, {env['cpu_capability']}; {env['auto']}; load average "
          f"{env['load_average']}", file=sys.stderr)
    result = {"env": env, "speed": [], "indexing": [], "agreement": []}
    for size in args.sizes:
        if size == "base":
            m_ref, m_q = build("base", 1, args), build("base", 2, args)
            label = "base (ViT-B, 8 s chunks, random weights)"
        else:
            default = load_default(args.model) if not args.quick or args.model else None
            if default is not None:
                m_ref = m_q = default
                label = f"tiny/default ({Path(default.source.file or args.model or 'default').name})"
            else:
                m_ref, m_q = build("tiny", 1, args), build("tiny", 2, args)
                label = "tiny (random weights)"
        print(f"{label}", file=sys.stderr, flush=True)
        for row in speed_rows(size, m_ref, m_q, speed_precisions, args):
            row["model"] = label
            result["speed"].append(row)
        m_ref.precision = "auto"
        result["indexing"].append({**indexing_row(size, m_ref, args), "model": label})
        if size == "tiny" or native or args.force_bf16:
            result["agreement"].append({**agreement_row(size, m_q, args), "model": label})
        else:
            result["agreement"].append({"size": size, "model": label, "skipped": "no native bf16 (" + why + "); "
                                        "--force-bf16 to run it emulated (minutes)"})

    lines = [f"torch {env['torch']}, {env['threads']} threads, CPU capability {env['cpu_capability']}, native bf16: "
             f"{native} ({why}); load average at start {env['load_average']}", ""]
    lines += ["| model | precision | batch | project embed chunks/s | minimal ViT chunks/s | ratio | x real time | "
              "project query chunks/s" + (" | compiled embed chunks/s | compile s" if args.compile else "") + " |",
              "|---|---|---|---|---|---|---|---" + ("|---|---" if args.compile else "") + "|"]
    for r in result["speed"]:
        lines.append(f"| {r['model']} | {r['precision']} | {r['batch']} | {fmt(r['project_embed_chunks_s'])} | "
                     f"{fmt(r['minimal_chunks_s'])} | {fmt(r['ratio_embed_to_minimal'])} | {fmt(r['embed_x_realtime'], 1)} | "
                     f"{fmt(r['project_query_chunks_s'])}"
                     + (f" | {fmt(r.get('compiled_embed_chunks_s'))} | "
                        f"{fmt(r.get('compile_seconds'), 1)}" if args.compile else "")
                     + " |")
    if not native and not args.force_bf16:
        lines.append(f"\nbf16 speed rows skipped: {why} (auto -> fp32; --force-bf16 to time emulated bf16).")
    lines += ["", "| model | precision | files | audio min | chunks | index s | files/s | chunks/s | 1,000 x 3 min stems "
              "(h) | streamed s | one file at a time s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["indexing"]:
        lines.append(f"| {r['model']} | {r['precision']} | {r['files']} | {fmt(r['audio_seconds'] / 60, 1)} | {r['chunks']} | "
                     f"{fmt(r['index_seconds'], 1)} | {fmt(r['files_s'])} | {fmt(r['index_chunks_s'])} | "
                     f"{fmt(r['projected_1000x3min_hours'])} | {fmt(r['streamed_seconds'], 2)} | "
                     f"{fmt(r['one_file_at_a_time_seconds'], 2)} |")
    lines += ["", "| model | refs / queries | ref cosine min (mean) | query cosine min (mean) | top-1 unchanged | "
              "top-10 overlap | true-stem rank unchanged (max shift) | R@1 fp32 / bf16 |", "|---|---|---|---|---|---|---|---|"]
    for r in result["agreement"]:
        if "skipped" in r:
            lines.append(f"| {r['model']} | skipped: {r['skipped']} | | | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['references']} / {r['queries']} | {r['ref_cosine_min']:.5f} "
                     f"({r['ref_cosine_mean']:.5f}) | {r['query_cosine_min']:.5f} ({r['query_cosine_mean']:.5f}) | "
                     f"{r['top1_unchanged']:.2f} | {r['top10_overlap']:.2f} | {r['target_rank_unchanged']:.2f} "
                     f"({r['target_rank_max_shift']}) | {r['fp32_R@1']:.2f} / {r['bf16_R@1']:.2f} |")
    table = "\n".join(lines)
    print(table)
    result["markdown"] = table
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
