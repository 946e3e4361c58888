"""Training throughput of the project's real training step against a minimal reference step, on one GPU.

Project step: `stemjepa.training.fit` exactly as `stemjepa fit` runs it (Lightning, data loader workers reading a training cache
of synthetic songs, pinned asynchronous copies, context mixing and log-mel on the GPU, bf16 autocast, torch.compile, fused AdamW,
foreach EMA), paper config (ViT-B, batch 256). Phase 2 uses class conditioning with 512-d embeddings, which costs the same as
FiLM on 512-d CLAP text embeddings (no CLAP weights on the benchmark machine).
Reference step: the same model written directly here in plain PyTorch, fed with random log-mel tensors already on the GPU.

Prints samples/s, model TFLOP/s and the ratio project / reference for both phases, and encoder inference chunks/s.
Usage: python benchmarks/train_throughput.py [--quick] [--json OUT.json]   (--quick: tiny sizes on CPU, to test the script)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


# ----------------------------------------------------------------------------------------------------------------- data
def build_cache(root: Path, n_songs: int, seconds: float, n_stems: int, seed: int = 0) -> Path:
    """A training cache of synthetic multitrack songs (harmonic tones and noise bursts at song-specific tempi)."""
    from stemjepa.audio import SAMPLE_RATE as sr
    from stemjepa.data.multitrack import LoadedSong, Song, Stem
    from stemjepa.data.training_cache import finalize_cache, write_cache_song

    t = np.arange(int(seconds * sr), dtype=np.float32) / sr
    for i in range(n_songs):
        rng = np.random.default_rng([seed, i])
        beat = 60.0 / rng.uniform(70, 170)
        env = np.exp(-8 * ((t % beat) / beat)).astype(np.float32)
        stems = []
        for s in range(n_stems):
            f = 55.0 * 2 ** rng.uniform(0, 4)
            wave = (0.2 * np.sin(2 * np.pi * f * t) * env if s % 2 else 0.1 * rng.standard_normal(len(t)) * env ** 4)
            stems.append(wave.astype(np.float32))
        song = Song(id=f"bench_{i:04d}",
                    stems=[Stem(name=f"s{s}", path=root / "none.wav", labels=[["bass", "drums", "vocals", "other"][s % 4]])
                           for s in range(n_stems)])
        write_cache_song(root, LoadedSong(song, song.stems, np.stack(stems), sr))
    finalize_cache(root, "bench")
    return root


# ------------------------------------------------------------------------------------------------------ reference model
class RefBlock(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.n1(x)).view(b, n, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.n2(x))))


class RefViT(nn.Module):
    def __init__(self, d, depth, h, grid=(5, 50)):
        super().__init__()
        self.patch = nn.Conv2d(1, d, 16, 16)
        self.pos = nn.Parameter(torch.zeros(1, grid[0] * grid[1], d), requires_grad=False)
        self.blocks = nn.ModuleList(RefBlock(d, h) for _ in range(depth))
        self.norm = nn.LayerNorm(d)

    def forward(self, mel):  # (B, 80, 800)
        x = self.patch(mel[:, None]).flatten(2).transpose(1, 2) + self.pos
        for b in self.blocks:
            x = b(x)
        return self.norm(x)


class RefFiLM(nn.Module):
    def __init__(self, d, p, m, layers):
        super().__init__()
        self.m, self.L = m, layers
        dims = [d] + [m] * (layers - 1) + [d]
        self.lin = nn.ModuleList(nn.Linear(dims[i], dims[i + 1]) for i in range(layers))
        self.film = nn.Linear(p, 2 * m * (layers - 1))

    def forward(self, z, c):
        gb = self.film(c).view(c.shape[0], self.L - 1, 2, self.m)
        h = z
        for l in range(self.L - 1):
            h = torch.relu(gb[:, l, 0, None] * self.lin[l](h) + gb[:, l, 1, None])
        return self.lin[-1](h)


def reference_throughput(phase, d, depth, heads, batch, steps, warmup, device, compile_):
    torch.manual_seed(0)
    enc = RefViT(d, depth, heads).to(device)
    params = list(enc.parameters())
    if phase == 2:
        tgt = RefViT(d, depth, heads).to(device).requires_grad_(False)
        pred = RefFiLM(d, 512, 1024 if d >= 256 else 256, 6 if d >= 256 else 4).to(device)
        params += list(pred.parameters())
    else:
        log_t = nn.Parameter(torch.tensor(-2.3, device=device))
        params.append(log_t)
    if compile_:
        enc.compile()
        if phase == 2:
            tgt.compile()
            pred.compile()
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=device.type == "cuda")
    mel = torch.randn(2 * batch, 80, 800, device=device)
    cond = torch.randn(batch, 512, device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        with amp:
            if phase == 1:
                s = enc(mel).float().mean(1)
                a, b = F.normalize(s[:batch], dim=-1), F.normalize(s[batch:], dim=-1)
                loss = F.cross_entropy(a @ b.T / log_t.exp(), torch.arange(batch, device=device))
            else:
                z = enc(mel[:batch])
                with torch.no_grad():
                    zt = tgt(mel[batch:])
                p = pred(z, cond)
                loss = (F.normalize(p.float(), dim=-1) - F.normalize(zt.float(), dim=-1)).square().sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 3.0)
        opt.step()
        if phase == 2:
            with torch.no_grad():
                torch._foreach_lerp_(list(tgt.parameters()), list(enc.parameters()), 1e-4)

    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * steps / (time.perf_counter() - t0)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# -------------------------------------------------------------------------------------------------------- project step
def project_throughput(phase, cache, out, overrides, steps, warmup, device, compile_, init=None):
    from stemjepa.config import load_config
    from stemjepa.training.callbacks import Throughput
    from stemjepa.training.fit import FitOptions, fit

    cfg = load_config("paper_phase1" if phase == 1 else "paper_phase2",
                      overrides + [f"max_steps={warmup + steps}", f"compile={str(compile_).lower()}", "checkpoint_every=1000000"]
                      + (["model.conditioning.kind=classes", "model.conditioning.class_dim=512"] if phase == 2 else []))
    timer = Throughput(warmup=warmup)
    last = fit(cfg, FitOptions(data=str(cache), out=str(out), device="cuda" if device.type == "cuda" else "cpu",
                               progress=False, callbacks=[timer], init=init))
    return timer.samples_per_second, last


def inference_throughput(ckpt, batch, iters, device, compile_):
    from stemjepa.models import load_model

    model = load_model(ckpt, device=str(device))
    if compile_:
        model.encoder.compile()
        model.target_encoder.compile() if model.has_predictor else None
    waves = torch.randn(batch, model.chunk_samples, device=device) * 0.1
    for _ in range(3):
        model.encode_chunks(waves, target=True)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        model.encode_chunks(waves, target=True)
    sync(device)
    return batch * iters / (time.perf_counter() - t0)


def encoder_gflop(d, depth, tokens=250, patch=256):
    per_block = tokens * d * 3 * d * 2 + 2 * tokens * tokens * d * 2 + tokens * d * d * 2 + 2 * tokens * d * 4 * d * 2
    return (tokens * patch * d * 2 + depth * per_block) / 1e9


def predictor_gflop(d, m, layers, tokens=250):
    return tokens * 2 * (d * m + (layers - 2) * m * m + m * d) / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes on CPU (tests the script)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=min(12, (os.cpu_count() or 2) - 2))
    ap.add_argument("--songs", type=int, default=48)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--phases", default="1,2")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    compile_ = device.type == "cuda" and not args.no_compile
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if args.quick:
        d, depth, heads, batch, steps, warmup, workers, songs = 64, 2, 4, 4, 3, 1, 1, 4
        size = ["model.encoder.size=tiny", f"model.encoder.embed_dim={d}", f"model.encoder.depth={depth}",
                f"model.encoder.num_heads={heads}", "model.predictor.hidden_dim=256", "model.predictor.num_layers=4"]
    else:
        d, depth, heads = 768, 12, 12
        batch, steps, warmup, workers, songs = args.batch_size, args.steps, args.warmup, args.workers, args.songs
        size = []
    overrides = size + [f"data.batch_size={batch}", f"data.num_workers={workers}", "data.prefetch_factor=2", "log_every=1000"]
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}, batch {batch}, compile {compile_}, workers {workers}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="stemjepa_bench_"))
    t = time.time()
    cache = build_cache(work / "cache", songs, 30.0, 6)
    print(f"cache of {songs} synthetic songs built in {time.time() - t:.1f} s", flush=True)
    m, L_ = (1024, 6) if not args.quick else (256, 4)
    flops = {1: 2 * 3 * encoder_gflop(d, depth),
             2: 3 * encoder_gflop(d, depth) + encoder_gflop(d, depth) + 3 * predictor_gflop(d, m, L_)}
    rows, ckpt = [], None
    for phase in [int(p) for p in args.phases.split(",")]:
        t = time.time()
        ref = reference_throughput(phase, d, depth, heads, batch, steps, warmup, device, compile_)
        print(f"phase {phase} reference: {ref:.1f} samples/s ({time.time() - t:.0f} s)", flush=True)
        t = time.time()
        proj, last = project_throughput(phase, cache, work / f"run{phase}", overrides, steps, warmup, device, compile_)
        print(f"phase {phase} project: {proj:.1f} samples/s ({time.time() - t:.0f} s)", flush=True)
        ckpt = last
        rows.append({"phase": phase, "project_samples_s": proj, "reference_samples_s": ref, "ratio": proj / ref,
                     "gflop_per_sample": flops[phase], "project_tflops": proj * flops[phase] / 1e3,
                     "reference_tflops": ref * flops[phase] / 1e3})
    inf = {}
    if ckpt is not None:
        inf["eager"] = inference_throughput(ckpt, batch, 10 if not args.quick else 2, device, False)
        if compile_:
            inf["compiled"] = inference_throughput(ckpt, batch, 10, device, True)
    print()
    print(f"| phase | project samples/s | reference samples/s | ratio | project TFLOP/s | reference TFLOP/s |   ({name})")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['phase']} | {r['project_samples_s']:.1f} | {r['reference_samples_s']:.1f} | ratio {r['ratio']:.2f} | "
              f"{r['project_tflops']:.1f} | {r['reference_tflops']:.1f} |")
    for k, v in inf.items():
        print(f"encoder inference ({k}, batch {batch}, log-mel included): {v:.0f} chunks/s")
    result = {"device": name, "torch": torch.__version__, "batch": batch, "compile": compile_, "rows": rows,
              "inference_chunks_s": inf}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
