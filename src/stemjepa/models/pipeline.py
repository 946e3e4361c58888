"""The one inference pipeline from audio files to embeddings: `embed_files` (`stemjepa embed`, `stemjepa index`, the web
app).

Files are decoded in threads while the model runs (`prefetch`: at most `ahead` files decoded ahead of it, so a folder is
never all in memory); a file that cannot be embedded (unreadable, too short, silent: `decode_for_model`) is reported, not
raised; chunks of consecutive files share forward passes (files are grouped until their chunks fill a batch); a group
that makes the model fail is retried file by file, so only the failing file is reported and the others go on; each file
comes back in order with its embedding or its problem, and `on_progress(done, total, seconds)` follows every step.

A long file can be embedded piece by piece (`EmbedOptions.piece_chunks`; the web app, to show progress inside one mix):
a piece starts on a chunk boundary, so the pieces' chunks are the file's chunks, and their patch-weighted mean is the
file's vector (each track vector is the mean of its valid patch embeddings, minus the model's centre).

Only the `EmbeddingModel` protocol is used (`embed_many`, `query_many`), so every test fake runs through it too. This
module sits beside `inference.py` (the model's own chunked embedding) rather than in it: that file is the model's mixin,
this one is about files, threads and problems, and works for any model.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ..audio.io import load_audio
from ..audio.quality import check_embeddable, check_finite_embedding
from ..errors import AudioError, StemJepaError
from .inference import TrackEmbedding, prefetch

if TYPE_CHECKING:
    from .protocol import EmbeddingModel

GROUP_FILES = 4  # a group also closes at GROUP_FILES x batch_size files (many files with nothing to embed)

Progress = Callable[[int, int, float], None]  # (files done, files in all, seconds of audio embedded)


@dataclass(frozen=True)
class EmbedOptions:
    """How `embed_files` runs."""

    batch_size: int = 16  # model chunks per forward pass, shared across files
    workers: int = 2  # decoding threads
    ahead: int = 8  # files decoded ahead of the model at most (the bounded queue)
    precision: str | None = None  # auto | fp32 | bf16 | fp16 of every forward pass; None: the model's
    piece_chunks: int | None = None  # files longer than this many chunks are embedded piece by piece; None: whole


@dataclass
class Decoded:
    """What a loader gives the pipeline: the mono wave at the model's rate to embed (None: nothing to embed, the item
    passes through, e.g. a file whose stored vectors are reused) and anything else it computed beside it (`extra`:
    the index's checksum and tempo/key analysis), handed back with the result."""

    wave: np.ndarray | None
    extra: Any = None


class FileEmbedding(NamedTuple):
    """One file's result, in the order the files were given."""

    item: Any  # the path (or the item the loader took)
    embedding: TrackEmbedding | None  # None: not embedded (see `problem`; or the loader gave no wave)
    problem: str | None = None  # why it could not be embedded, one line without the file name
    decoded: Decoded | None = None  # what the loader returned; None when it failed
    batch_end: bool = False  # the last file of a group: every earlier result is final (the index commits here)


def decode_for_model(path, sample_rate: int) -> np.ndarray:
    """The mono wave of `path` at `sample_rate`, refused (AudioError naming the file) when it cannot be embedded: not
    decodable, too short, silent (`stemjepa.audio.quality.check_embeddable`)."""
    wave = load_audio(path, sample_rate=sample_rate, mono=True)
    check_embeddable(wave, sample_rate, path)
    return wave


def embed_files(model: EmbeddingModel, paths: Sequence, options: EmbedOptions | None = None, *,
                label: str | None = None, load: Callable[[Any], Decoded] | None = None,
                on_progress: Progress | None = None) -> Iterator[FileEmbedding]:
    """A `FileEmbedding` per item of `paths`, in order: its TrackEmbedding (the reference side; with `label`, the query
    side: `model.query_many` conditioned on it) or its problem.

    `load(item) -> Decoded` runs in the decoding threads (default: `decode_for_model` of the path at the model's rate);
    the AudioError or OSError it raises is the item's problem. A file the model fails on, or whose embedding is not
    finite, is reported with its problem. `on_progress(done, total, seconds)` is called after every model call and
    every file that needed none."""
    opts = options or EmbedOptions()
    if opts.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {opts.batch_size}")
    sr = int(model.sample_rate)
    load = load or (lambda path: Decoded(decode_for_model(path, sr)))
    run = _Run(model, opts, label, on_progress, len(paths))
    group: list[FileEmbedding] = []
    chunks = 0
    for _, fut in prefetch(paths, lambda x: _load_one(load, x), opts.workers, opts.ahead):
        got: FileEmbedding = fut.result()
        wave = got.decoded.wave if got.decoded is not None else None
        n = 0 if wave is None else run.chunks_of(wave)
        if opts.piece_chunks and n > opts.piece_chunks:  # alone, piece by piece
            yield from run.embed(group)
            group, chunks = [], 0
            yield run.in_pieces(got)
            continue
        group.append(got)
        chunks += n
        if chunks >= opts.batch_size or len(group) >= GROUP_FILES * opts.batch_size:
            yield from run.embed(group)
            group, chunks = [], 0
    yield from run.embed(group)


def _load_one(load: Callable[[Any], Decoded], item) -> FileEmbedding:
    """Runs in a decoding thread: the loaded item, or its problem."""
    try:
        return FileEmbedding(item, None, None, load(item))
    except AudioError as exc:
        return FileEmbedding(item, None, exc.problem)
    except OSError as exc:
        return FileEmbedding(item, None, str(exc))


def join_pieces(pieces: Sequence[TrackEmbedding], starts: Sequence[float]) -> TrackEmbedding:
    """One TrackEmbedding from those of consecutive pieces of a wave starting at `starts` seconds (chunk boundaries):
    the chunks in turn, and the vector weighted by each piece's valid patches, as one pass would give it."""
    weights = np.array([float(np.sum(p.weights)) for p in pieces], np.float64)
    vectors = np.stack([np.asarray(p.vector, np.float64) for p in pieces])
    return TrackEmbedding(
        chunks=np.concatenate([p.chunks for p in pieces]).astype(np.float32),
        offsets=np.concatenate([np.asarray(p.offsets) + s for p, s in zip(pieces, starts)]).astype(np.float32),
        weights=np.concatenate([p.weights for p in pieces]).astype(np.float32),
        vector=(weights @ vectors / weights.sum()).astype(np.float32))


class _Run:
    """The model side of one `embed_files` call: model calls, the isolation of a failing file, progress."""

    def __init__(self, model: EmbeddingModel, opts: EmbedOptions, label: str | None, on_progress: Progress | None,
                 total: int):
        self.model, self.opts, self.label = model, opts, label
        self.on_progress = on_progress or (lambda done, total, seconds: None)
        self.total, self.done, self.seconds = total, 0, 0.0

    def chunks_of(self, wave: np.ndarray) -> int:
        return max(1, math.ceil(len(wave) / self.model.chunk_samples))

    def _call(self, waves: list[np.ndarray]) -> list[TrackEmbedding]:
        bs, precision = self.opts.batch_size, self.opts.precision
        if self.label is None:
            embs = self.model.embed_many(waves, batch_size=bs, precision=precision)
        else:
            embs = self.model.query_many(waves, [self.label] * len(waves), batch_size=bs, precision=precision)
        if len(embs) != len(waves):
            raise ValueError(f"the model returned {len(embs)} embeddings for {len(waves)} waves")
        return list(embs)

    def _isolated(self, waves: list[np.ndarray]) -> list[TrackEmbedding | str]:
        """The embedding of each wave, or the problem of a wave the model fails on: a failing batch is retried wave by
        wave, so one bad file does not cost the others."""
        try:
            embs = self._call(waves)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - isolate the file that breaks the batch
            if isinstance(exc, StemJepaError) and not isinstance(exc, AudioError):
                raise  # a setting (precision, model) that fails every file: said once, not per file
            if len(waves) == 1:
                return [f"embedding failed ({type(exc).__name__}: {exc})"]
            return [self._isolated([w])[0] for w in waves]
        return [_checked(e) for e in embs]

    def _progress(self, files: int, samples: int) -> None:
        self.done += files
        self.seconds += samples / self.model.sample_rate
        self.on_progress(self.done, self.total, self.seconds)

    def embed(self, group: list[FileEmbedding]) -> Iterator[FileEmbedding]:
        """Embed a group in one model call (isolating a failure) and hand its results back in order."""
        if not group:
            return
        todo = [i for i, g in enumerate(group) if g.decoded is not None and g.decoded.wave is not None]
        waves = [group[i].decoded.wave for i in todo]
        results = dict(zip(todo, self._isolated(waves) if waves else []))
        self._progress(len(group), sum(len(w) for w in waves))
        for i, g in enumerate(group):
            got = results.get(i)
            if isinstance(got, str):
                g = g._replace(problem=got)
            elif got is not None:
                g = g._replace(embedding=got)
            yield g._replace(batch_end=i == len(group) - 1)

    def in_pieces(self, got: FileEmbedding) -> FileEmbedding:
        """A long file embedded piece_chunks chunks at a time, progress after each piece."""
        wave, step = got.decoded.wave, self.opts.piece_chunks * self.model.chunk_samples
        pieces = []
        for start in range(0, len(wave), step):
            piece = wave[start:start + step]
            emb = self._isolated([piece])[0]
            if isinstance(emb, str):  # the file is done: it failed
                self._progress(1, len(piece))
                return got._replace(problem=emb, batch_end=True)
            pieces.append(emb)
            self._progress(int(start + step >= len(wave)), len(piece))
        sr = self.model.sample_rate
        return got._replace(embedding=join_pieces(pieces, [i * step / sr for i in range(len(pieces))]), batch_end=True)


def _checked(emb: TrackEmbedding) -> TrackEmbedding | str:
    """The embedding, or the problem when the model returned NaN or infinite values for it."""
    try:
        check_finite_embedding(np.asarray(emb.vector), "file")
        check_finite_embedding(np.asarray(emb.chunks), "file")
    except AudioError as exc:
        return exc.problem
    return emb
