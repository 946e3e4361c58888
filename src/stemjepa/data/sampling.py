"""Context/target sampling for training (paper Sec. II-A/B/E), reading only the training cache.

Sample i is a pure function of (seed, i): a resumed run sees exactly the samples an uninterrupted run would have seen.
For each sample: a song (weighted by length), a random chunk, the stems active in it (frame RMS above a threshold on enough
frames, from the activity index, without reading audio), a target uniform among them and a context made of a uniformly-sized
random non-empty subset of the other active stems. Chunks with fewer than two active stems are redrawn, so a context is never
all silence. The context is returned as separate stems (packed per batch by `collate_pairs`) and mixed on the training device.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..config import DataConfig
from ..errors import DataError
from .labels import UNLABELLED, label_at
from .training_cache import TrainingCache

log = logging.getLogger(__name__)
MAX_TRIES = 64


def pick_label(labels: list[str], level: str, rng: np.random.Generator, unlabelled: str = UNLABELLED) -> str:
    """The conditioning label of a training stem (`data.labels.label_at`)."""
    return label_at(labels, level, rng, unlabelled)


class ChunkPairDataset(Dataset):
    """Map-style dataset of `length` (context stems, target, label) samples drawn from a TrainingCache."""

    def __init__(self, cache: TrainingCache, cfg: DataConfig, chunk_samples: int, length: int, seed: int = 0):
        self.cache = cache
        self.cfg = cfg
        self.chunk_samples = chunk_samples
        self.length = length
        self.seed = seed
        eligible, lengths, self.short_songs = [], [], []
        for i, song in enumerate(cache.songs):
            if len(song["stems"]) < 2:
                continue  # a song with one stem gives no (context, target) pair
            if song["n_samples"] < chunk_samples:
                self.short_songs.append(song["id"])
            eligible.append(i)
            lengths.append(max(song["n_samples"] - chunk_samples, 0) + cache.sample_rate)
        if not eligible:
            raise DataError(f"{cache.root}: no song with at least two stems to train on")
        if self.short_songs:
            log.warning("%d songs are shorter than one chunk and are padded with silence: %s", len(self.short_songs),
                        ", ".join(self.short_songs[:5]))
        self.songs = np.array(eligible)
        self.weights = np.array(lengths, dtype=np.float64) / np.sum(lengths)

    def __len__(self) -> int:
        return self.length

    def active_stems(self, song: int, start: int) -> np.ndarray:
        """Indices of the stems of `song` that are active in the chunk starting at sample `start`."""
        fs = self.cache.frame_samples(song)
        rms = self.cache.rms_db(song)
        f0 = start // fs
        f1 = max(f0 + 1, -(-(start + self.chunk_samples) // fs))
        window = rms[:, f0:f1]
        frac = (window > self.cfg.activity_db).mean(axis=1)
        return np.flatnonzero(frac >= self.cfg.min_active_fraction)

    def draw(self, index: int) -> tuple[int, int, int, np.ndarray, str, np.random.Generator]:
        rng = np.random.default_rng([self.seed, index])
        for _ in range(MAX_TRIES):
            song = int(rng.choice(self.songs, p=self.weights))
            n = self.cache.songs[song]["n_samples"]
            start = int(rng.integers(0, max(n - self.chunk_samples, 0) + 1))
            active = self.active_stems(song, start)
            if len(active) < 2:
                continue
            target = int(rng.choice(active))
            others = active[active != target]
            k = int(rng.integers(1, min(len(others), self.cfg.max_context_stems) + 1))
            context = np.sort(rng.choice(others, size=k, replace=False))
            labels = self.cache.songs[song]["stems"][target]["labels"]
            label = pick_label(labels, self.cfg.label_level, rng, self.cfg.unlabelled)
            return song, start, target, context, label, rng
        raise DataError(f"{self.cache.root}: found no chunk with two active stems after {MAX_TRIES} tries; "
                        f"is the activity threshold ({self.cfg.activity_db} dBFS) too high for this data?")

    def target_start(self, song: int, start: int, target: int, rng: np.random.Generator) -> int:
        """Where the target chunk starts: the context's time, or (with probability `unaligned_target`) another time of the
        song where the target stem is active. No random number is drawn when the option is off (samples unchanged)."""
        if self.cfg.unaligned_target <= 0 or rng.random() >= self.cfg.unaligned_target:
            return start
        n = self.cache.songs[song]["n_samples"]
        last = max(n - self.chunk_samples, 0)
        for _ in range(8):
            other = int(rng.integers(0, last + 1))
            if abs(other - start) >= self.chunk_samples // 2 and target in self.active_stems(song, other):
                return other
        return start

    def __getitem__(self, index: int) -> dict:
        song, start, target, context, label, rng = self.draw(index)
        audio = self.cache.audio(song)
        stop = min(start + self.chunk_samples, audio.shape[1])
        ctx = np.zeros((len(context), self.chunk_samples), dtype=np.float16)
        tgt = np.zeros(self.chunk_samples, dtype=np.float16)
        ctx[:, : stop - start] = audio[context, start:stop]
        t0 = self.target_start(song, start, target, rng)
        t1 = min(t0 + self.chunk_samples, audio.shape[1])
        tgt[: t1 - t0] = audio[target, t0:t1]
        gains = np.ones(len(context), dtype=np.float32)
        if self.cfg.gain_db > 0:
            gains = (10 ** (rng.uniform(-self.cfg.gain_db, self.cfg.gain_db, len(context)) / 20)).astype(np.float32)
        return {"context": torch.from_numpy(ctx), "gains": torch.from_numpy(gains), "target": torch.from_numpy(tgt),
                "label": label, "index": index}


def collate_pairs(items: list[dict]) -> dict:
    """Pack a batch: the context stems of all samples concatenated (sum_k, N) with their owner sample, so only the stems that
    are used travel to the device (no padding to a maximum count), and are mixed there by `mix_context`."""
    return {
        "context": torch.cat([it["context"] for it in items]),
        "owner": torch.cat([torch.full((len(it["context"]),), i, dtype=torch.long) for i, it in enumerate(items)]),
        "gains": torch.cat([it["gains"] for it in items]),
        "target": torch.stack([it["target"] for it in items]),
        "label": [it["label"] for it in items],
        "index": torch.tensor([it["index"] for it in items]),
    }


class OffsetSampler(Sampler[int]):
    """Sequential indices from `start`, strided over data-parallel ranks: rank r of W reads start + r, start + r + W, ...

    Used instead of a DistributedSampler so that the global batch b is samples [b*B, (b+1)*B) whatever the number of devices,
    and a resumed run starts exactly where the interrupted one stopped.
    """

    def __init__(self, length: int, start: int = 0, rank: int = 0, world_size: int = 1):
        self.length, self.start, self.rank, self.world_size = length, start, rank, world_size

    def __iter__(self):
        return iter(range(self.start + self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        # the whole epoch, not what is left after `start`: Lightning counts the batches restored from a checkpoint as
        # already fetched, and would otherwise end the epoch early and replay samples
        return max(0, -(-(self.length - self.rank) // self.world_size))


def mix_context(context: torch.Tensor, owner: torch.Tensor, gains: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Sum the packed context stems (sum_k, N) into one mix per sample (B, N) float32 on the training device."""
    mix = torch.zeros(batch_size, context.shape[-1], device=context.device, dtype=torch.float32)
    return mix.index_add_(0, owner, context.float() * gains.float()[:, None])
