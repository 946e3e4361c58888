"""Instrument conditioning: label strings -> conditioning vectors c on the model's device.

`classes` (the Stem-JEPA baseline): a learned embedding per fixed class; a label is mapped to the first class it names.
`text` (the paper): the frozen text encoder's embedding of the free-form label. The labels seen in training are embedded
once into `table`, saved with the weights (part of the model id), so they need no text encoder at inference. A label
first seen in a query is embedded on demand and kept in a bounded cache (the QUERY_LABELS most recently used) outside
the state dict: queries never change the saved state, hence never the model id, and a stream of distinct texts (a web
page's users) cannot grow memory.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch
from torch import nn

from ..config import ConditioningConfig
from ..data.labels import label_key
from .text_encoders import get_text_encoder, text_dim


def to_device_async(values: list[int], device: torch.device) -> torch.Tensor:
    """Indices to `device` without a blocking copy: from pinned memory on CUDA, so the host never waits for the GPU queue."""
    idx = torch.tensor(values, dtype=torch.long)
    if device.type == "cuda":
        return idx.pin_memory().to(device, non_blocking=True)
    return idx.to(device)


QUERY_LABELS = 1024  # query-time labels whose text embedding is kept (least recently used dropped first)
LONG_KEY = 256  # a longer label is cached under its sha256, so the cache's keys stay small too



class ClassConditioner(nn.Module):
    def __init__(self, cfg: ConditioningConfig):
        super().__init__()
        if not cfg.classes:
            raise ValueError("classes conditioning needs a non-empty class list")
        self.classes = [label_key(c) for c in cfg.classes]
        fallback = label_key(cfg.class_fallback)
        self.fallback = self.classes.index(fallback) if fallback in self.classes else len(self.classes) - 1
        self.dim = cfg.class_dim
        self.embedding = nn.Embedding(len(self.classes), cfg.class_dim)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def class_index(self, label: str) -> int:
        """A label (or a ' > '-joined label path) maps to the first class it names, finest level first; else the fallback."""
        parts = [label_key(p) for p in str(label).split(">")]
        for part in reversed(parts):
            if part in self.classes:
                return self.classes.index(part)
        for part in reversed(parts):  # e.g. "electric bass" -> "bass"
            for i, c in enumerate(self.classes):
                if c in part.split():
                    return i
        return self.fallback

    @property
    def labels(self) -> list[str]:
        """The labels it knows (its classes), as TextConditioner.labels: callers need not ask which kind it is."""
        return list(self.classes)

    def vectors(self) -> torch.Tensor:
        """One conditioning vector per `labels` entry."""
        return self.embedding.weight

    def forward(self, labels: list[str]) -> torch.Tensor:
        idx = to_device_async([self.class_index(l) for l in labels], self.embedding.weight.device)
        return self.embedding(idx)


class TextConditioner(nn.Module):
    def __init__(self, cfg: ConditioningConfig):
        super().__init__()
        self.backend = cfg.text_backend
        self.clap_model = cfg.clap_model
        # a saved config records text_dim (see training.module), so loading needs no text encoder; else ask the encoder
        self.dim = cfg.text_dim if cfg.text_dim is not None else text_dim(cfg.text_backend, cfg.clap_model)
        self.labels: list[str] = []  # the rows of `table`: the labels seen in training
        self.index: dict[str, int] = {}
        self.register_buffer("table", torch.zeros(0, self.dim))
        # labels first seen in queries -> their embedding, least recently used first (not saved; see QUERY_LABELS)
        self.query_labels: OrderedDict[str, torch.Tensor] = OrderedDict()

    def vectors(self) -> torch.Tensor:
        """One conditioning vector per `labels` entry (the saved text-embedding table)."""
        return self.table

    def _embed(self, labels: list[str]) -> torch.Tensor:
        vectors = torch.from_numpy(get_text_encoder(self.backend, self.clap_model).encode(labels))
        return vectors.to(self.table.device, self.table.dtype)

    def add_labels(self, labels) -> None:
        """Embed training labels not in the table yet with the frozen text encoder and append them to the saved table."""
        new = sorted({label_key(l) for l in labels} - set(self.index))
        if not new:
            return
        self.table = torch.cat([self.table, self._embed(new)], dim=0)
        for label in new:
            self.index[label] = len(self.labels)
            self.labels.append(label)

    def forward(self, labels: list[str]) -> torch.Tensor:
        keys = [label_key(l) for l in labels]
        if all(k in self.index for k in keys):
            return self.table[to_device_async([self.index[k] for k in keys], self.table.device)]
        cache_keys = {k: _cache_key(k) for k in keys if k not in self.index}
        new = sorted({k for k, c in cache_keys.items() if c not in self.query_labels})
        fresh = dict(zip(new, self._embed(new))) if new else {}
        rows = []
        for k in keys:
            if k in self.index:
                rows.append(self.table[self.index[k]])
            elif k in fresh:
                rows.append(fresh[k])
            else:
                rows.append(self.query_labels[cache_keys[k]].to(self.table))
                self.query_labels.move_to_end(cache_keys[k])
        for k, vector in fresh.items():
            self.query_labels[cache_keys[k]] = vector
        while len(self.query_labels) > QUERY_LABELS:
            self.query_labels.popitem(last=False)
        return torch.stack(rows)

    # the label list travels with the table in the checkpoint
    def get_extra_state(self):
        return {"labels": list(self.labels)}

    def set_extra_state(self, state) -> None:
        self.labels = list(state.get("labels", []))
        self.index = {l: i for i, l in enumerate(self.labels)}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "table"
        if key in state_dict:  # the saved table may hold more labels than the fresh (empty) one
            self.table = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _cache_key(label: str) -> str:
    return label if len(label) <= LONG_KEY else "sha256:" + hashlib.sha256(label.encode()).hexdigest()


def build_conditioner(cfg: ConditioningConfig) -> nn.Module:
    if cfg.kind == "classes":
        return ClassConditioner(cfg)
    if cfg.kind == "text":
        return TextConditioner(cfg)
    raise ValueError(f"conditioning kind must be 'classes' or 'text', not {cfg.kind!r}")
