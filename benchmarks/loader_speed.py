"""Training pairs per second read from the training cache by ONE data-loader worker process.

A pair is what the training loop consumes: 8 s of context stems + 8 s of target at 16 kHz, with its label, drawn by
`stemjepa.data.sampling.ChunkPairDataset` (activity index, random chunk, target, non-empty context). The figure that
matters is a DataLoader with num_workers=1: sampling, slicing the memory maps, collation and the hand-over to the
training process through shared memory. Target: >= 500 pairs/s per worker.

The batches are those of training: ChunkPairDataset.__getitem__ per sample, packed by `collate_pairs` (only the
drawn context stems travel, with their owner row, and are mixed on the device by `mix_context`).

By default a synthetic cache (stems of noise with silent gaps, so the activity index matters) is written to a temporary
folder and sits in the page cache (a warm run); `--cache DIR` measures a cache made by `stemjepa prepare`.
The load average is printed: on a machine shared with other jobs the figures drop accordingly.

    python benchmarks/loader_speed.py [--cache DIR] [--seconds 8] [--batch-size 64]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from stemjepa.data.sampling import ChunkPairDataset


def write_synthetic_cache(out: Path, songs: int, stems: int, seconds: float, seed: int = 0) -> None:
    from stemjepa.audio import SAMPLE_RATE as sr
    from stemjepa.data.multitrack import LoadedSong, Song, Stem
    from stemjepa.data.training_cache import finalize_cache, write_cache_song

    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    for i in range(songs):
        audio = rng.standard_normal((stems, n), dtype=np.float32) * 0.1
        for s in range(stems):  # each stem is silent on ~30% of 2-s blocks
            for b in range(0, n, 2 * sr):
                if rng.random() < 0.3:
                    audio[s, b : b + 2 * sr] = 0.0
        stem_list = [Stem(name=f"s{s}", path=Path(f"s{s}.wav"), labels=["instrument", f"instrument {s}"]) for s in range(stems)]
        song = Song(id=f"song{i:04d}", stems=stem_list, split="train")
        write_cache_song(out, LoadedSong(song, stem_list, audio, sr), "synthetic")
    finalize_cache(out, "synthetic", [])


def measure(dataset: ChunkPairDataset, seconds: float, batch_size: int) -> float:
    from torch.utils.data import DataLoader

    from stemjepa.data.sampling import OffsetSampler, collate_pairs

    loader = DataLoader(dataset, batch_size=batch_size, sampler=OffsetSampler(len(dataset), 1_000_000), num_workers=1,
                        prefetch_factor=4, collate_fn=collate_pairs, drop_last=True)
    it = iter(loader)
    next(it)  # worker start-up is not counted
    t0, pairs = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        pairs += next(it)["target"].shape[0]
    rate = pairs / (time.perf_counter() - t0)
    del it
    return rate


def run(cache_dir: Path, seconds: float, batch_size: int, chunk_samples: int) -> dict:
    from stemjepa.config import DataConfig
    from stemjepa.data.training_cache import TrainingCache

    torch.set_num_threads(1)  # as in a data-loader worker; several OpenMP threads on a busy machine slow copies down
    cache = TrainingCache(cache_dir)
    cfg = DataConfig()
    dataset = ChunkPairDataset(cache, cfg, chunk_samples, length=10_000_000, seed=0)

    t0, i = time.perf_counter(), 0
    while time.perf_counter() - t0 < min(2.0, seconds / 2):
        dataset[i]
        i += 1
    in_process = i / (time.perf_counter() - t0)
    worker = measure(dataset, seconds, batch_size)
    ctx_stems = float(np.mean([len(dataset.draw(i)[3]) for i in range(200)]))
    return {
        "pairs_per_s_one_worker": round(worker, 1),
        "pairs_per_s_in_process_getitem": round(in_process, 1),
        "batch_size": batch_size, "chunk_seconds": chunk_samples / cache.sample_rate, "songs": len(cache),
        "mean_context_stems": round(ctx_stems, 2),
        "mb_per_pair": round((ctx_stems + 1) * chunk_samples * 2 / 1e6, 2),
        "load_average": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, help="a cache made by `stemjepa prepare` (default: a synthetic one)")
    parser.add_argument("--songs", type=int, default=16)
    parser.add_argument("--stems", type=int, default=6)
    parser.add_argument("--song-seconds", type=float, default=90.0)
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring time")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--chunk-seconds", type=float, default=8.0)
    args = parser.parse_args()
    from stemjepa.audio import SAMPLE_RATE

    chunk = int(args.chunk_seconds * SAMPLE_RATE)
    if args.cache:
        result = run(args.cache, args.seconds, args.batch_size, chunk)
    else:
        with tempfile.TemporaryDirectory(prefix="stemjepa-loader-") as tmp:
            write_synthetic_cache(Path(tmp), args.songs, args.stems, args.song_seconds)
            result = run(Path(tmp), args.seconds, args.batch_size, chunk)
    print(json.dumps(result))
    rate = result["pairs_per_s_one_worker"]
    print(f"one data-loader worker: {rate:.0f} pairs/s ({'meets' if rate >= 500 else 'below'} the 500 pairs/s target); "
          f"load average {result['load_average']:.1f} on {result['cpu_count']} cores")


if __name__ == "__main__":
    main()
