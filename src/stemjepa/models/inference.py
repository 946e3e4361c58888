"""Embedding whole tracks chunk by chunk (inference side of the model; see docs/ARCHITECTURE.md).

Chunks of consecutive tracks share forward passes (`iter_tracks`): a library of short one-shots runs full batches, not
one tiny batch per file, and tracks are handed back in order as soon as their last chunk is done, so a caller can feed
an iterator of waves decoded in background threads (`prefetch`) and decoding overlaps compute. Reduced precision
(`precision`: auto, fp32, bf16, fp16) is chosen by models/precision.py; the reference side's encoder can run in int8
ONNX Runtime (`quantize`: auto, none, int8; models/int8.py).
"""
from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ..audio.io import array_to_mono
from .int8 import Int8Encoder, check_quantize, default_quantize, int8_encoder, one_torch_thread, use_int8
from .precision import autocast, check_precision, precision_name, resolve_precision


@dataclass
class TrackEmbedding:
    """Per-chunk mean patch embeddings of a track, their start times and valid-patch counts, and the track vector."""

    chunks: np.ndarray  # (n_chunks, d)
    offsets: np.ndarray  # (n_chunks,) seconds
    weights: np.ndarray  # (n_chunks,) valid patches per chunk
    vector: np.ndarray  # (d,) mean of all valid patch embeddings


def valid_patches(n_samples: int, chunk_samples: int, patch_samples: int) -> np.ndarray:
    """Per chunk of a wave of n_samples, the number of time patches that hold real audio (at least 1)."""
    n = max(1, -(-n_samples // chunk_samples))
    t_max = chunk_samples // patch_samples
    rest = np.minimum(chunk_samples, n_samples - np.arange(n) * chunk_samples)
    return np.clip(-(-rest // patch_samples), 1, t_max).astype(np.int64)


def split_chunks(wave: np.ndarray, chunk_samples: int, patch_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut a mono wave into chunk_samples pieces, padding the last (and any too-short input) with silence.

    Returns the (n, chunk_samples) chunks and, per chunk, the number of time patches that hold real audio.
    """
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    n = max(1, -(-len(wave) // chunk_samples))
    padded = np.zeros(n * chunk_samples, dtype=np.float32)
    padded[: len(wave)] = wave
    return padded.reshape(n, chunk_samples), valid_patches(len(wave), chunk_samples, patch_samples)


def prefetch(items: Iterable, load: Callable, workers: int = 2, ahead: int = 8) -> Iterator[tuple[object, object]]:
    """Yield (item, future of load(item)) in order while up to `ahead` loads run in `workers` threads, so that
    decoding (soundfile, FFmpeg, soxr: they release the GIL) overlaps the model's forward passes."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        it = iter(items)
        queue = deque((x, pool.submit(load, x)) for x in itertools.islice(it, max(1, ahead)))
        while queue:
            item, fut = queue.popleft()
            for nxt in itertools.islice(it, 1):
                queue.append((nxt, pool.submit(load, nxt)))
            yield item, fut


class _Track:
    __slots__ = ("n", "valid", "sums", "done")

    def __init__(self, n_samples: int, chunk_samples: int, patch_samples: int, dim: int):
        self.valid = valid_patches(n_samples, chunk_samples, patch_samples)
        self.n = len(self.valid)
        self.sums = np.empty((self.n, dim), dtype=np.float32)
        self.done = 0


def _masked_sums(z: torch.Tensor, valid: np.ndarray) -> np.ndarray:
    """(b, d) sums of (b, F, T, d) patch embeddings over all frequency rows and the first `valid` time patches."""
    z = z.float()
    mask = torch.arange(z.shape[2], device=z.device)[None, :] < torch.from_numpy(valid).to(z.device)[:, None]
    return torch.einsum("bftd,bt->bd", z, mask.to(z.dtype)).cpu().numpy()


class InferenceMixin:
    """Methods of StemJEPA used by evaluation, search and the probes. All run without gradients on the model's device.

    `precision` (auto | fp32 | bf16 | fp16; attribute, or per call) sets the autocast of every forward pass: auto is
    bf16 on CUDA (fp16 on GPUs without bf16) and on CPUs with native bf16, fp32 on other CPUs (models/precision.py).
    """

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def conditioning_kind(self) -> str:
        """"text", "classes" (the conditioner's kind) or "none" (phase 1: no conditioner, no predictor)."""
        return self.config.conditioning.kind if self.has_predictor else "none"

    @property
    def distance(self) -> str:
        """The ranking the model was trained for: "cosine" for centred models (their InfoNCE compares batch-centred,
        normalised embeddings; the CPU configs and the built-in models), "l2" for the paper's (Eq. 3 is an L2 loss on raw
        embeddings, and the paper ranks by ||q - z||). Recorded by the model's config, so the file alone decides it."""
        return "cosine" if self.config.center_embeddings else "l2"

    @property
    def known_labels(self) -> list[str]:
        """Labels the model was trained with: the text table's labels, or the class names (none in phase 1)."""
        labels = [] if self.conditioning_kind == "none" else self.conditioner.labels
        return sorted({str(label) for label in labels if str(label).strip()})

    @property
    def precision(self) -> str:
        return getattr(self, "_precision", "auto")

    @precision.setter
    def precision(self, value: str | None) -> None:
        object.__setattr__(self, "_precision", check_precision(value))

    def set_precision(self, value: str | None):
        """Set the inference precision (auto, fp32, bf16, fp16); returns the model."""
        self.precision = value
        return self

    @property
    def quantize(self) -> str:
        """auto | none | int8: the reference side's encoder in int8 ONNX Runtime where it runs (models/int8.py);
        default (or set to None) $STEMJEPA_QUANTIZE, else none."""
        value = getattr(self, "_quantize", None)
        return value if value is not None else default_quantize()

    @quantize.setter
    def quantize(self, value: str | None) -> None:
        object.__setattr__(self, "_quantize", None if value is None else check_quantize(value))

    def int8_encoder(self, precision: str | None = None, target: bool = True) -> Int8Encoder | None:
        """The int8 runner of the reference side's encoder when `quantize` and `precision` (default: the model's)
        call for it on this device (models/int8.py), else None."""
        if not use_int8(self.quantize, precision or self.precision, self.device):
            return None
        encoder = self.target_encoder if (target and self.has_predictor) else self.encoder
        return int8_encoder(encoder, self.frontend.cfg.n_mels, self.frontend.num_frames(self.chunk_samples))

    def autocast_dtype(self, precision: str | None = None) -> torch.dtype | None:
        """The autocast dtype used on this model's device: None (fp32), torch.bfloat16 or torch.float16."""
        return resolve_precision(precision or self.precision, self.device)

    def resolved_precision(self, precision: str | None = None) -> str:
        """'fp32', 'bf16' or 'fp16': what `precision` (default: the model's) means on this model's device."""
        return precision_name(self.autocast_dtype(precision))

    def _autocast(self, precision: str | None = None):
        return autocast(self.autocast_dtype(precision), self.device)

    @torch.no_grad()
    def encode_chunks(self, waves: torch.Tensor, target: bool = False, precision: str | None = None) -> torch.Tensor:
        """(B, chunk_samples) -> (B, F, T, d) float32 patch grid (context encoder unless `target`)."""
        waves = torch.as_tensor(waves, dtype=torch.float32).to(self.device, non_blocking=True)
        with self._autocast(precision):
            return self.encode(waves, target=target).float()

    @torch.no_grad()  # not inference_mode: a new label grows the text table, which must stay a normal tensor
    def _pooled(self, batch: np.ndarray, valid: np.ndarray, labels: list[str] | None, target: bool,
                dtype: torch.dtype | None) -> np.ndarray:
        """Masked sums (b, d) over the valid time patches of one batch of chunks (all frequency rows)."""
        device = self.device
        waves = torch.from_numpy(batch).to(device)
        with autocast(dtype, device):
            if labels is not None and self.has_predictor:
                z = self.predict(self.encode(waves), labels)
            else:  # references: target encoder; mixes: context encoder
                z = self.encode(waves, target=target and labels is None)
        return _masked_sums(z, valid)

    @torch.no_grad()
    def _pooled_int8(self, batch: np.ndarray, valid: np.ndarray, int8: Int8Encoder) -> np.ndarray:
        """`_pooled` of a reference batch with the encoder in int8 (`int8_encoder`); the front-end and the pooling on one
        PyTorch thread: its OpenMP team spinning after each small op beside the decoding threads cost more than the ops."""
        with one_torch_thread():
            return _masked_sums(int8(self.frontend(torch.from_numpy(batch).to(self.device))), valid)

    def iter_tracks(self, waves: Iterable[np.ndarray], labels: Iterable[str] | None = None, batch_size: int = 16,
                    target: bool = True, precision: str | None = None, *,
                    sample_rate: int | None = None) -> Iterator[TrackEmbedding]:
        """TrackEmbeddings of `waves` in order, streamed: chunks of consecutive tracks fill batches of `batch_size`
        chunks, and each track is yielded once its last chunk is done. `waves` may be a lazy iterator (decoding in
        other threads); `labels` (one per wave) make these query embeddings (predictor, or the mix embedding).
        Each wave is checked and converted by `stemjepa.audio.io.array_to_mono` (see `embed_many`)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        dtype = self.autocast_dtype(precision)
        cs, ps, d = self.chunk_samples, self.patch_samples, self.embed_dim
        is_query = labels is not None
        int8 = None if is_query else self.int8_encoder(precision, target)
        center = self._center(is_query)
        buf = np.zeros((batch_size, cs), dtype=np.float32)
        buf_valid = np.zeros(batch_size, dtype=np.int64)
        owners: list[tuple[_Track, int]] = []
        buf_labels: list[str] = []
        pending: deque[_Track] = deque()

        def run_batch() -> None:
            n = len(owners)
            if int8 is not None:
                sums = self._pooled_int8(buf[:n], buf_valid[:n], int8)
            else:
                sums = self._pooled(buf[:n], buf_valid[:n], buf_labels[:n] if is_query else None, target, dtype)
            for (track, j), s in zip(owners, sums):
                track.sums[j] = s
                track.done += 1
            owners.clear()
            buf_labels.clear()

        def finished() -> Iterator[TrackEmbedding]:
            while pending and pending[0].done == pending[0].n:
                yield self._track_embedding(pending.popleft(), center)

        label_iter = iter(labels) if is_query else itertools.repeat(None)
        for i, wave in enumerate(waves):
            label = next(label_iter, None)
            if is_query and label is None:
                raise ValueError("iter_tracks needs one label per wave")
            wave = array_to_mono(wave, sample_rate, self.sample_rate, f"{'mixes' if is_query else 'waves'}[{i}]")
            track = _Track(len(wave), cs, ps, d)
            pending.append(track)
            for j in range(track.n):
                piece = wave[j * cs:(j + 1) * cs]
                row = len(owners)
                buf[row, :len(piece)] = piece
                buf[row, len(piece):] = 0.0
                buf_valid[row] = track.valid[j]
                owners.append((track, j))
                if is_query:
                    buf_labels.append(label)
                if len(owners) == batch_size:
                    run_batch()
                    yield from finished()
        if owners:
            run_batch()
        yield from finished()

    def _center(self, is_query: bool) -> np.ndarray | float:
        """The running centre subtracted from this side's embeddings (0 for models that do not centre them)."""
        if not self.center_embeddings:
            return 0.0
        return (self.query_center if is_query else self.reference_center).float().cpu().numpy()

    def _track_embedding(self, t: _Track, center: np.ndarray | float) -> TrackEmbedding:
        """A finished track's TrackEmbedding: per-chunk means and the mean of all its valid patches, centred."""
        counts = (t.valid * self.encoder.grid[0]).astype(np.float64)
        return TrackEmbedding(
            chunks=(t.sums / counts[:, None] - center).astype(np.float32),
            offsets=(np.arange(t.n) * self.chunk_samples / self.sample_rate).astype(np.float32),
            weights=t.valid.astype(np.float32),
            vector=(t.sums.astype(np.float64).sum(0) / counts.sum() - center).astype(np.float32),
        )

    def _tracks(self, waves: list, labels: list[str] | None, batch_size: int, target: bool = True,
                precision: str | None = None, sample_rate: int | None = None) -> list[TrackEmbedding]:
        return list(self.iter_tracks(waves, labels, batch_size, target, precision, sample_rate=sample_rate))

    def embed_many(self, waves: Sequence[np.ndarray], batch_size: int = 16, target: bool = True,
                   precision: str | None = None, *, sample_rate: int | None = None) -> list[TrackEmbedding]:
        """Reference embeddings of isolated stems (target encoder when the model has one; the context encoder if not
        `target`). Chunks of all the waves share batches of `batch_size`; `precision` overrides the model's.

        Input: numpy arrays (N,) mono, or 2-D (channels, N) / (N, channels) (the short axis is the channel axis, at most
        64 channels; a square or otherwise ambiguous shape is refused). `sample_rate` is the rate of the arrays: they are
        resampled to `self.sample_rate` (16 kHz) and down-mixed to mono. It is REQUIRED for 2-D arrays; 1-D arrays
        without it are taken to be at 16 kHz already (pass it whenever they are not: nothing in the samples tells).
        NaN, infinite or absurd values (beyond +60 dBFS) are refused. Errors: AudioError (a StemJepaError) naming the
        array (`waves[i]`).
        """
        return self._tracks(list(waves), None, batch_size, target, precision, sample_rate)

    def embed(self, wave: np.ndarray, batch_size: int = 16, precision: str | None = None, *,
              sample_rate: int | None = None) -> TrackEmbedding:
        """The reference embedding of one stem: `model.embed(wave, sample_rate=sr)`; input rules of `embed_many`."""
        return self.embed_many([wave], batch_size, precision=precision, sample_rate=sample_rate)[0]

    def query_many(self, mixes: Sequence[np.ndarray], labels: Sequence[str], batch_size: int = 16,
                   precision: str | None = None, *, sample_rate: int | None = None) -> list[TrackEmbedding]:
        """Predicted target embeddings for mixes conditioned on instrument labels (the mix embedding without a predictor).
        Input rules (arrays, `sample_rate`) of `embed_many`."""
        if len(mixes) != len(labels):
            raise ValueError("query_many needs one label per mix")
        return self._tracks(list(mixes), list(labels), batch_size, precision=precision, sample_rate=sample_rate)

    def query(self, mix: np.ndarray, label: str, batch_size: int = 16, precision: str | None = None, *,
              sample_rate: int | None = None) -> TrackEmbedding:
        """The predicted embedding of the `label` stem missing from `mix`: `model.query(mix, "bass", sample_rate=sr)`."""
        return self.query_many([mix], [label], batch_size, precision=precision, sample_rate=sample_rate)[0]
