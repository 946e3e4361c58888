"""Patch features over whole tracks: one F*d vector per 160 ms patch, computed once with the frozen encoder and cached.

A track is cut into consecutive chunks (chunk i covers [8i, 8i+8) s), the last one padded with silence; the (F, T, d)
patch grid of each chunk is flattened along frequency, the chunks are joined in time and the patches that lie wholly in
the padding are trimmed, so every 160 ms of audio has exactly one vector.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ...errors import StemJepaError
from ...fsutil import atomic_write, safe_component


def patch_samples(model) -> int:
    """Samples per time patch; the chunk must hold a whole number of them."""
    n = int(round(model.patch_seconds * model.sample_rate))
    if n <= 0 or model.chunk_samples % n:
        raise StemJepaError(
            f"model chunk of {model.chunk_samples} samples is not a whole number of {model.patch_seconds} s patches"
        )
    return n


def n_patches(n_samples: int, patch_len: int) -> int:
    """Patches covering `n_samples` (a last partial patch counts: beats can lie in it)."""
    return max(1, -(-int(n_samples) // patch_len))


def chunk_waveform(wave: np.ndarray, chunk_samples: int) -> np.ndarray:
    """(N,) -> (n_chunks, chunk_samples): consecutive chunks, the last zero-padded; at least one chunk."""
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    n_chunks = max(1, -(-len(wave) // chunk_samples))
    padded = np.zeros(n_chunks * chunk_samples, dtype=np.float32)
    padded[: len(wave)] = wave
    return padded.reshape(n_chunks, chunk_samples)


def grid_to_vectors(grid) -> np.ndarray:
    """(B, F, T, d) patch grid -> (B * T, F * d): frequency tokens of one time patch concatenated, chunks in order."""
    g = np.asarray(grid, dtype=np.float32)
    if g.ndim != 4:
        raise StemJepaError(f"encode_chunks returned shape {g.shape}, expected (B, F, T, d)")
    b, f, t, d = g.shape
    return np.ascontiguousarray(g.transpose(0, 2, 1, 3).reshape(b * t, f * d))


def track_features(model, wave: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Frozen-encoder features of a whole track: float32 (n_patches, F * d), one row per 160 ms from time 0."""
    import torch

    plen = patch_samples(model)
    per_chunk = model.chunk_samples // plen
    chunks = chunk_waveform(wave, model.chunk_samples)
    parts = []
    with torch.no_grad():
        for i in range(0, len(chunks), batch_size):
            grid = model.encode_chunks(torch.from_numpy(chunks[i : i + batch_size]))
            grid = grid.detach().float().cpu().numpy() if hasattr(grid, "detach") else np.asarray(grid)
            if grid.ndim != 4 or grid.shape[2] != per_chunk:
                raise StemJepaError(
                    f"encode_chunks returned shape {tuple(grid.shape)}; expected (B, F, {per_chunk}, d) for "
                    f"{model.chunk_samples}-sample chunks of {model.patch_seconds} s patches"
                )
            parts.append(grid_to_vectors(grid))
    feats = np.concatenate(parts, axis=0)
    return feats[: n_patches(len(wave), plen)]


class FeatureCache:
    """Features on disk as float16 .npy (memory-mapped when read), keyed by model id, dataset, track and audio stats.

    With `root=None` features are kept in memory only.
    """

    def __init__(self, root, model_id: str):
        self.root = Path(root) / safe_component(model_id) if root is not None else None
        self._memory: dict[str, np.ndarray] = {}

    def path(self, track) -> Path:
        safe = safe_component(track.id, limit=80, strip=True, empty="track")
        digest = hashlib.sha1(f"{track.dataset}|{track.id}|{track.source_signature()}".encode()).hexdigest()[:10]
        return self.root / safe_component(track.dataset) / f"{safe}-{digest}.npy"

    def get(self, track, compute) -> np.ndarray:
        """Cached features of `track`, else `compute()` (-> float32 array) stored and returned."""
        if self.root is None:
            key = f"{track.dataset}|{track.id}"
            if key not in self._memory:
                self._memory[key] = np.asarray(compute(), dtype=np.float32)
            return self._memory[key]
        path = self.path(track)
        if path.is_file():
            try:
                return np.load(path, mmap_mode="r")
            except (OSError, ValueError):
                pass  # a truncated file from an interrupted run: recompute it
        feats = np.asarray(compute(), dtype=np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: np.save(f, np.clip(feats, -65000, 65000).astype(np.float16)))
        return np.load(path, mmap_mode="r")
