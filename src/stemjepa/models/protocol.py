"""What search, evaluation and the app need from a model: the `EmbeddingModel` protocol.

StemJEPA implements it, and so does every test fake, so callers use these members directly (no attribute fallbacks,
no signature probing). A model embeds isolated stems (`embed_many`, the reference side) and mixes conditioned on an
instrument label (`query_many`, the query side); both return one TrackEmbedding per input, in order. Where it comes from
is one record, `source` (`models.source.ModelSource`; `IN_MEMORY` for a model not loaded from a file).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from .inference import TrackEmbedding
from .source import IN_MEMORY, ModelSource


@runtime_checkable
class EmbeddingModel(Protocol):
    sample_rate: int  # Hz of the waves it takes (mono float32)
    chunk_samples: int  # samples per chunk the encoder sees; longer waves are cut into chunks
    embed_dim: int  # size of every embedding vector
    has_predictor: bool  # phase 2 (queries are predictions) or phase 1 (queries are the mix embedding)
    precision: str  # auto | fp32 | bf16 | fp16, the default of embed_many / query_many
    source: ModelSource  # where it comes from: kind, file, built-in name, training config and songs (provenance only)

    @property
    def conditioning_kind(self) -> str:
        """How a query names its instrument: "text" (any text), "classes" (a fixed class list, queried with the
        label path) or "none" (no predictor: the label is ignored)."""

    @property
    def model_id(self) -> str:
        """Stable id of the weights: an index or cache built with another id is stale."""

    @property
    def distance(self) -> str:
        """The ranking it was trained for, "cosine" or "l2": evaluation ranks by it unless told otherwise."""

    @property
    def known_labels(self) -> list[str]:
        """Instrument labels the model was trained with (suggestions; any text works with text conditioning)."""

    def embed_many(self, waves: Sequence[np.ndarray], batch_size: int = 16, target: bool = True,
                   precision: str | None = None) -> list[TrackEmbedding]:
        """Reference embeddings of isolated stems."""

    def query_many(self, mixes: Sequence[np.ndarray], labels: Sequence[str], batch_size: int = 16,
                   precision: str | None = None) -> list[TrackEmbedding]:
        """Query embeddings of mixes, one instrument label per mix."""


__all__ = ["IN_MEMORY", "EmbeddingModel", "ModelSource", "TrackEmbedding"]
