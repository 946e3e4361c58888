"""The 8-head linear probe: each 160 ms patch vector predicts the beat activation of its eight 20 ms frames.

Frame k (0..7) of patch t is the sub-segment starting at 0.16 t + 0.02 k s, so the heads' outputs read row by row form a
50 fps activation (frame j = 8 t + k at j / 50 s). Targets use label widening (Boeck et al.): the frame nearest a beat is
1 and its neighbours get a reduced target, which eases the one-frame timing ambiguity of annotations.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FRAMES_PER_PATCH = 8
WIDEN_VALUE = 0.5
WIDEN_RADIUS = 1


def frames_per_second(patch_seconds: float = 0.16, frames_per_patch: int = FRAMES_PER_PATCH) -> float:
    return frames_per_patch / patch_seconds


def frame_times(n_patch: int, patch_seconds: float = 0.16, frames_per_patch: int = FRAMES_PER_PATCH) -> np.ndarray:
    """(n_patch, frames_per_patch) start time of frame k of patch t: patch_seconds * t + k * patch_seconds / frames_per_patch."""
    t = np.arange(n_patch)[:, None]
    k = np.arange(frames_per_patch)[None, :]
    return t * patch_seconds + k * (patch_seconds / frames_per_patch)


def beat_targets(beats, n_frames: int, fps: float, widen: float = WIDEN_VALUE, radius: int = WIDEN_RADIUS) -> np.ndarray:
    """float32 (n_frames,) targets: 1 at the frame nearest each beat, `widen` at up to `radius` frames either side."""
    target = np.zeros(n_frames, dtype=np.float32)
    idx = np.round(np.asarray(beats, dtype=np.float64) * fps).astype(np.int64)
    idx = idx[(idx >= 0) & (idx < n_frames)]
    for off in range(1, radius + 1):
        for j in (idx - off, idx + off):
            j = j[(j >= 0) & (j < n_frames)]
            target[j] = np.maximum(target[j], widen)
    target[idx] = 1.0
    return target


def patch_targets(beats, n_patch: int, patch_seconds: float = 0.16, **kw) -> np.ndarray:
    """Targets laid out like the heads: (n_patch, FRAMES_PER_PATCH)."""
    fps = frames_per_second(patch_seconds)
    return beat_targets(beats, n_patch * FRAMES_PER_PATCH, fps, **kw).reshape(n_patch, FRAMES_PER_PATCH)


def _module():
    import torch

    class BeatProbe(torch.nn.Module):
        """Standardisation (training-set mean/std, fixed) then one Linear(in_dim, 8): the eight heads share nothing else."""

        def __init__(self, in_dim: int, frames_per_patch: int = FRAMES_PER_PATCH):
            super().__init__()
            self.register_buffer("mean", torch.zeros(in_dim))
            self.register_buffer("std", torch.ones(in_dim))
            self.heads = torch.nn.Linear(in_dim, frames_per_patch)

        def forward(self, x):  # (N, in_dim) -> (N, frames_per_patch) logits
            return self.heads((x - self.mean) / self.std)

    return BeatProbe


def make_probe(in_dim: int):
    return _module()(in_dim)


@dataclass
class ProbeConfig:
    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256  # patches per step (x 8 frames)
    shuffle_buffer: int = 16384  # patches mixed across tracks before batching
    seed: int = 0


def _feature_stats(features: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    dim = features[0].shape[1]
    s, ss, n = np.zeros(dim), np.zeros(dim), 0
    for f in features:
        f = np.asarray(f, dtype=np.float64)
        s += f.sum(0)
        ss += (f * f).sum(0)
        n += len(f)
    mean = s / n
    std = np.sqrt(np.maximum(ss / n - mean * mean, 0.0))
    return mean.astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32)


def _batches(features, targets, cfg: ProbeConfig, rng: np.random.Generator):
    """Mini-batches of (patch vectors, targets) drawn through a shuffle buffer over tracks in random order."""
    buf_x, buf_y, size = [], [], 0

    def flush():
        x, y = np.concatenate(buf_x), np.concatenate(buf_y)
        perm = rng.permutation(len(x))
        for i in range(0, len(x), cfg.batch_size):
            j = perm[i : i + cfg.batch_size]
            yield x[j], y[j]

    for i in rng.permutation(len(features)):
        buf_x.append(np.asarray(features[i], dtype=np.float32))
        buf_y.append(targets[i])
        size += len(buf_x[-1])
        if size >= cfg.shuffle_buffer:
            yield from flush()
            buf_x, buf_y, size = [], [], 0
    if buf_x:
        yield from flush()


def fit_probe(features: list[np.ndarray], targets: list[np.ndarray], cfg: ProbeConfig | None = None, progress=None):
    """Train a probe on (n_patch, D) feature arrays and their (n_patch, 8) targets; the encoder is not involved.

    `progress` (a tqdm-like object or None) is advanced once per epoch and shows the loss.
    """
    import torch

    cfg = cfg or ProbeConfig()
    if not features:
        raise ValueError("no training tracks")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    probe = make_probe(features[0].shape[1])
    mean, std = _feature_stats(features)
    probe.mean.copy_(torch.from_numpy(mean))
    probe.std.copy_(torch.from_numpy(std))
    opt = torch.optim.AdamW(probe.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    probe.train()
    for _ in range(cfg.epochs):
        total, count = 0.0, 0
        for x, y in _batches(features, targets, cfg, rng):
            loss = loss_fn(probe(torch.from_numpy(x)), torch.from_numpy(y))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(x)
            count += len(x)
        if progress is not None:
            progress.set_postfix(loss=f"{total / max(count, 1):.4f}")
            progress.update(1)
    probe.eval()
    return probe


def activation(probe, features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """50 fps beat activation (n_patch * 8,) of one track: sigmoid of the heads, frame j = 8 t + k."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(features), batch_size):
            x = torch.from_numpy(np.asarray(features[i : i + batch_size], dtype=np.float32))
            out.append(torch.sigmoid(probe(x)).numpy())
    return np.concatenate(out).reshape(-1)
