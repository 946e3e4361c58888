"""Embedding whole tracks chunk by chunk (inference side of the model; see docs/ARCHITECTURE.md)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class TrackEmbedding:
    """Per-chunk mean patch embeddings of a track, their start times and valid-patch counts, and the track vector."""

    chunks: np.ndarray  # (n_chunks, d)
    offsets: np.ndarray  # (n_chunks,) seconds
    weights: np.ndarray  # (n_chunks,) valid patches per chunk
    vector: np.ndarray  # (d,) mean of all valid patch embeddings


def split_chunks(wave: np.ndarray, chunk_samples: int, patch_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut a mono wave into chunk_samples pieces, padding the last (and any too-short input) with silence.

    Returns the (n, chunk_samples) chunks and, per chunk, the number of time patches that hold real audio.
    """
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    n = max(1, -(-len(wave) // chunk_samples))
    padded = np.zeros(n * chunk_samples, dtype=np.float32)
    padded[: len(wave)] = wave
    t_max = chunk_samples // patch_samples
    valid = np.array([min(t_max, max(1, -(-(min(chunk_samples, len(wave) - i * chunk_samples)) // patch_samples)))
                      for i in range(n)])
    return padded.reshape(n, chunk_samples), valid


class InferenceMixin:
    """Methods of StemJEPA used by evaluation, search and the probes. All run without gradients on the model's device."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _autocast(self):
        dev = self.device.type
        return torch.autocast(device_type=dev, dtype=torch.bfloat16, enabled=dev == "cuda")

    @torch.no_grad()
    def encode_chunks(self, waves: torch.Tensor, target: bool = False) -> torch.Tensor:
        """(B, chunk_samples) -> (B, F, T, d) float32 patch grid (context encoder unless `target`)."""
        waves = torch.as_tensor(waves, dtype=torch.float32).to(self.device, non_blocking=True)
        with self._autocast():
            return self.encode(waves, target=target).float()

    @torch.no_grad()
    def _tracks(self, waves: list[np.ndarray], labels: list[str] | None, batch_size: int, target: bool = True) -> list[TrackEmbedding]:
        pieces = [split_chunks(w, self.chunk_samples, self.patch_samples) for w in waves]
        owners = np.concatenate([np.full(len(p[0]), i) for i, p in enumerate(pieces)])
        all_chunks = np.concatenate([p[0] for p in pieces])
        all_valid = np.concatenate([p[1] for p in pieces])
        use_predictor = labels is not None and self.has_predictor
        sums = []
        for start in range(0, len(all_chunks), batch_size):
            batch = torch.from_numpy(all_chunks[start:start + batch_size])
            if use_predictor:
                z = self.encode_chunks(batch)
                chunk_labels = [labels[i] for i in owners[start:start + batch_size]]
                with self._autocast():
                    z = self.predict(z, chunk_labels).float()
            else:
                z = self.encode_chunks(batch, target=target and labels is None)  # references: target encoder; mixes: context encoder
            valid = torch.from_numpy(all_valid[start:start + batch_size]).to(z.device)
            mask = (torch.arange(z.shape[2], device=z.device)[None, :] < valid[:, None]).to(z.dtype)  # (b, T)
            sums.append(torch.einsum("bftd,bt->bd", z, mask).cpu().numpy())
        sums = np.concatenate(sums)
        counts = all_valid * self.encoder.grid[0]
        center = 0.0
        if self.center_embeddings:
            center = (self.query_center if labels is not None else self.reference_center).float().cpu().numpy()
        out = []
        for i in range(len(waves)):
            sel = owners == i
            s, c = sums[sel], counts[sel]
            out.append(TrackEmbedding(
                chunks=(s / c[:, None] - center).astype(np.float32),
                offsets=(np.arange(sel.sum()) * self.chunk_samples / self.sample_rate).astype(np.float32),
                weights=all_valid[sel].astype(np.float32),
                vector=(s.sum(0) / c.sum() - center).astype(np.float32),
            ))
        return out

    def embed_many(self, waves: list[np.ndarray], batch_size: int = 16, target: bool = True) -> list[TrackEmbedding]:
        """Reference embeddings of isolated stems (target encoder when the model has one; the context encoder if not `target`)."""
        return self._tracks(list(waves), None, batch_size, target)

    def embed(self, wave: np.ndarray, batch_size: int = 16) -> TrackEmbedding:
        return self.embed_many([wave], batch_size)[0]

    def query_many(self, mixes: list[np.ndarray], labels: list[str], batch_size: int = 16) -> list[TrackEmbedding]:
        """Predicted target embeddings for mixes conditioned on instrument labels (the mix embedding without a predictor)."""
        if len(mixes) != len(labels):
            raise ValueError("query_many needs one label per mix")
        return self._tracks(list(mixes), list(labels), batch_size)

    def query(self, mix: np.ndarray, label: str, batch_size: int = 16) -> TrackEmbedding:
        return self.query_many([mix], [label], batch_size)[0]
