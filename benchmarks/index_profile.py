"""Where `stemjepa index` spends its time after start-up, and what the model path's candidate speed-ups give (issue 27,
item 4; figures in RESULTS.md, "Index updates and indexing speed").

Part `profile` (on the index_speed.py library, written or reused under --lib):
- single-thread costs: decode + resample per format, checksum, log-mel front-end, encoder (fp32, bf16 autocast, int8),
  `embed_many` of every file (the whole model path);
- `build_index` in this process (tempo/key off) per --quantize setting: wall time, CPU time (cores busy), and the main
  thread's time in model calls, in SQLite commits and the rest (waiting for decoded files).
Part `candidates` (the same batches of log-mel, random tones, front-end excluded; interleaved rounds, best of --reps):
encoder chunks/s of PyTorch fp32, bf16 autocast (the path before int8), bf16 on 1 thread, torch.ao dynamic int8 of the
Linear layers, ONNX Runtime fp32 and int8 (per tensor with the patch convolution; per channel, MatMuls only: the one
adopted, models/int8.py) with spinning threads and on 1 thread; the speed against bf16 autocast and the largest
1 - cosine of a chunk embedding against bf16 autocast and against fp32.

Usage:  python benchmarks/index_profile.py --lib DIR [--files 300] [--part profile|candidates|all]
        [--model NAME] [--batch 16] [--reps 5] [--quick]   (--quick: tiny model, 8 files; tests the script)
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def best_of(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


# ----------------------------------------------------------------------------------------------------------------------
# profile
# ----------------------------------------------------------------------------------------------------------------------
def decode_costs(files: list[Path], sr: int) -> tuple[list[np.ndarray], dict]:
    """The waves, and single-thread seconds of decode + resample per format and of the checksums."""
    from stemjepa.audio.io import load_audio
    from stemjepa.search.walk import file_checksum

    waves, per = [], {}
    for p in files:
        t = time.perf_counter()
        waves.append(load_audio(p, sample_rate=sr, mono=True))
        per[p.suffix] = per.get(p.suffix, 0.0) + time.perf_counter() - t
    t = time.perf_counter()
    for p in files:
        file_checksum(p)
    return waves, {"decode_s": per, "checksum_s": time.perf_counter() - t}


def model_costs(model, waves: list[np.ndarray], batch: int) -> dict:
    """Seconds of the front-end, the encoder in fp32 / bf16 / int8 and embed_many (none, int8) over all the chunks."""
    from stemjepa.models.inference import split_chunks

    chunks = np.concatenate([split_chunks(w, model.chunk_samples, model.patch_samples)[0] for w in waves])
    batches = [torch.from_numpy(chunks[i:i + batch]) for i in range(0, len(chunks), batch)]
    enc = model.target_encoder
    out = {"chunks": len(chunks)}
    with torch.no_grad():
        mels = [model.frontend(b) for b in batches]
        out["frontend_s"] = best_of(lambda: [model.frontend(b) for b in batches], 2)
        out["encoder_fp32_s"] = best_of(lambda: [enc(m) for m in mels], 1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out["encoder_bf16_s"] = best_of(lambda: [enc(m) for m in mels], 2)
        int8 = model.int8_encoder("auto") if model.quantize != "none" else None
        if int8 is not None:
            out["encoder_int8_s"] = best_of(lambda: [int8(m) for m in mels], 2)
    for q in ("none", "auto"):
        model.quantize = q
        out[f"embed_many_{q}_s"] = best_of(lambda: model.embed_many(waves, batch_size=batch), 1)
    return out


def index_in_process(model, lib: Path, work: Path, quantize: str, batch: int) -> dict:
    """build_index of the library here, with the main thread's time split into model calls, commits and the rest."""
    import shutil

    from stemjepa.models import pipeline as P
    from stemjepa.search import build as B

    acc = {"model": 0.0, "flush": 0.0}
    originals = {(P._Run, "_call"): "model", (B._Update, "_flush"): "flush"}
    saved = {k: getattr(*k) for k in originals}

    def timed(f, key):
        def g(*a, **kw):
            t = time.perf_counter()
            try:
                return f(*a, **kw)
            finally:
                acc[key] += time.perf_counter() - t
        return g

    for (cls, name), key in originals.items():
        setattr(cls, name, timed(saved[(cls, name)], key))
    model.quantize = quantize
    model.embed_many([np.full(model.sample_rate, 0.01, np.float32)])  # the int8 graph is start-up, not indexing
    out = work / f"profile-{quantize}"
    shutil.rmtree(out, ignore_errors=True)
    try:
        c0, t0 = os.times(), time.perf_counter()
        B.build_index(lib, out, model, options=B.IndexOptions(batch_size=batch, progress=False))
        wall, c1 = time.perf_counter() - t0, os.times()
    finally:
        for (cls, name), f in saved.items():
            setattr(cls, name, f)
    cpu = c1.user - c0.user + c1.system - c0.system
    return {"wall_s": wall, "cpu_s": cpu, "cores_busy": cpu / wall, "model_s": acc["model"], "commits_s": acc["flush"],
            "rest_s": wall - acc["model"] - acc["flush"]}


def run_profile(args, lib: Path, seconds: float) -> dict:
    from stemjepa.models.registry import load_model

    os.environ["STEMJEPA_ANALYSIS"] = "0"
    model = load_model(args.model, device="cpu")
    files = sorted(p for p in lib.rglob("*") if p.is_file())
    waves, dec = decode_costs(files, int(model.sample_rate))
    model.quantize = "auto"
    res = {"files": len(files), "audio_s": seconds, **dec, **model_costs(model, waves, args.batch)}
    res["index"] = {q: index_in_process(model, lib, Path(args.lib), q, args.batch) for q in ("none", "auto")}
    decode = sum(dec["decode_s"].values())
    chunk_s = model.chunk_samples / model.sample_rate
    print(f"{len(files)} files, {seconds:.0f} s of audio, {res['chunks']} chunks of {chunk_s:g} s "
          f"({seconds / (res['chunks'] * chunk_s):.2f} of their length is audio)")
    print(f"1 thread: decode + resample {decode:.2f} s ({', '.join(f'{k} {v:.2f}' for k, v in dec['decode_s'].items())}), "
          f"checksum {dec['checksum_s']:.2f} s")
    print(f"{torch.get_num_threads()} threads: front-end {res['frontend_s']:.2f} s, encoder fp32 {res['encoder_fp32_s']:.2f} s, "
          f"bf16 {res['encoder_bf16_s']:.2f} s, int8 {res.get('encoder_int8_s', float('nan')):.2f} s; embed_many none "
          f"{res['embed_many_none_s']:.2f} s, auto {res['embed_many_auto_s']:.2f} s")
    for q, r in res["index"].items():
        print(f"build_index --quantize {q}: {r['wall_s']:.2f} s ({seconds / r['wall_s']:.0f} audio-s/s), CPU {r['cpu_s']:.2f} s "
              f"({r['cores_busy']:.2f} cores busy); main thread: model {r['model_s']:.2f} s, commits {r['commits_s']:.2f} s, "
              f"rest (waiting for files) {r['rest_s']:.2f} s")
    return res


# ----------------------------------------------------------------------------------------------------------------------
# candidates
# ----------------------------------------------------------------------------------------------------------------------
def candidate_runners(model, mels: list[torch.Tensor]) -> dict:
    """name -> function returning the (B, F, T, d) tokens of every batch."""
    from stemjepa.models import int8 as I

    enc = model.target_encoder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notes
        qenc = torch.ao.quantization.quantize_dynamic(copy.deepcopy(enc), {torch.nn.Linear}, dtype=torch.qint8)

    def torch_path(e, dtype=None, threads=None):
        def run():
            before = torch.get_num_threads()
            torch.set_num_threads(threads or before)
            try:
                with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                    return [e(m).float() for m in mels]
            finally:
                torch.set_num_threads(before)
        return run

    n_mels, frames = mels[0].shape[1:]
    runners = {"PyTorch fp32": torch_path(enc), "PyTorch bf16 autocast (before)": torch_path(enc, torch.bfloat16),
               "PyTorch bf16 autocast, 1 thread": torch_path(enc, torch.bfloat16, 1),
               "torch.ao dynamic int8 (Linear; rest fp32)": torch_path(qenc)}
    graphs = {"ONNX Runtime fp32": _onnx_fp32(enc, n_mels, frames),
              "ONNX Runtime int8, per tensor, MatMul + Conv": _onnx_int8_per_tensor(enc, n_mels, frames),
              "ONNX Runtime int8, per channel, MatMul (adopted)": I.quantized_graph(enc, n_mels, frames)}
    for name, graph in graphs.items():
        runners[name] = _ort_runner(graph, mels)
    adopted = graphs["ONNX Runtime int8, per channel, MatMul (adopted)"]
    runners["... adopted, threads spinning"] = _ort_runner(adopted, mels, spin=True)
    runners["... adopted, 1 thread"] = _ort_runner(adopted, mels, threads=1)
    return runners


def _onnx_fp32(enc, n_mels: int, frames: int) -> bytes:
    import io

    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(enc, (torch.zeros(2, n_mels, frames),), buf, input_names=["mel"], output_names=["tokens"],
                          dynamic_axes={"mel": {0: "batch"}, "tokens": {0: "batch"}}, opset_version=17, dynamo=False)
    return buf.getvalue()


def _onnx_int8_per_tensor(enc, n_mels: int, frames: int) -> bytes:
    import logging
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        quantize_dynamic(onnx.load_from_string(_onnx_fp32(enc, n_mels, frames)), f"{tmp}/q.onnx",
                         weight_type=QuantType.QInt8)
        return Path(f"{tmp}/q.onnx").read_bytes()


def _ort_runner(graph: bytes, mels: list[torch.Tensor], threads: int | None = None, spin: bool = False):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
    inputs = [m.numpy() for m in mels]
    return lambda: [torch.from_numpy(session.run(None, {"mel": x})[0]) for x in inputs]


def tone_batches(model, n: int, batch: int) -> list[torch.Tensor]:
    """Log-mel batches of n chunks of modulated tones with a little noise (the index_speed library's kind of audio)."""
    rng = np.random.default_rng(0)
    t = np.arange(model.chunk_samples) / model.sample_rate
    waves = np.stack([0.3 * np.sin(2 * np.pi * rng.uniform(50, 2000) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(
        0.5, 4) * t)) + 0.02 * rng.standard_normal(len(t)) for _ in range(n)]).astype(np.float32)
    with torch.no_grad():
        return [model.frontend(torch.from_numpy(waves[i:i + batch])) for i in range(0, n, batch)]


def run_candidates(args) -> dict:
    from stemjepa.models.registry import load_model

    model = load_model(args.model, device="cpu").eval()
    mels = tone_batches(model, args.chunks, args.batch)
    runners = candidate_runners(model, mels)
    centre = model.reference_center.float()
    with torch.no_grad():
        pooled = {k: (torch.cat(f()).mean((1, 2)) - centre).double() for k, f in runners.items()}
        best = {k: float("inf") for k in runners}
        for _ in range(args.reps):  # interleaved: a slow moment of a shared machine hits every candidate alike
            for k, f in runners.items():
                best[k] = min(best[k], best_of(f, 1))
    base, fp32 = pooled["PyTorch bf16 autocast (before)"], pooled["PyTorch fp32"]
    t_base = best["PyTorch bf16 autocast (before)"]
    rows = {k: {"chunks_s": args.chunks / best[k], "speed": t_base / best[k],
                "max_1_minus_cos_vs_before": float((1 - torch.nn.functional.cosine_similarity(v, base)).max()),
                "max_1_minus_cos_vs_fp32": float((1 - torch.nn.functional.cosine_similarity(v, fp32)).max())}
            for k, v in pooled.items()}
    print(f"model {args.model}, {args.chunks} chunks in batches of {args.batch}, {torch.get_num_threads()} threads, best of "
          f"{args.reps} interleaved rounds\n")
    print("| encoder path | chunks/s | vs bf16 autocast | max 1 - cos vs bf16 autocast | max 1 - cos vs fp32 |")
    print("|---|---:|---:|---:|---:|")
    for k, r in rows.items():
        print(f"| {k} | {r['chunks_s']:.0f} | {r['speed']:.2f}x | {r['max_1_minus_cos_vs_before']:.1e} | "
              f"{r['max_1_minus_cos_vs_fp32']:.1e} |")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", default=None, help="folder of the library (written there when it holds none)")
    ap.add_argument("--files", type=int, default=300)
    ap.add_argument("--part", choices=["profile", "candidates", "all"], default="all")
    ap.add_argument("--model", default=None)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--chunks", type=int, default=256, help="candidates: chunks per round")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default="index_profile.json")
    args = ap.parse_args(argv)
    args.model = args.model or ("stemjepa-tiny-synth-v1" if args.quick else "default")
    if args.quick:
        args.files, args.chunks, args.reps = 8, 32, 1
    out = {"load_before": open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None}
    if args.part in ("profile", "all"):
        if not args.lib:
            ap.error("--lib DIR is needed for the profile")
        from index_speed import library

        lib, seconds = library(Path(args.lib), args.files, args.quick)
        out["profile"] = run_profile(args, lib, seconds)
    if args.part in ("candidates", "all"):
        out["candidates"] = run_candidates(args)
    out["load_after"] = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None
    print(f"\nload average before / after: {out['load_before']} / {out['load_after']}")
    Path(args.json).write_text(json.dumps(out, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
