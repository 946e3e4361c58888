"""Checkpoints: a Lightning checkpoint file plus a `stemjepa` entry holding the config, so loading needs no training code.

Files are read with `torch.load(weights_only=True)`: no code from the file is executed; and memory-mapped (`mmap=True`),
so reading one costs no memory until a tensor is used: `load_model` hands the state dict to `models.rebuild`, which checks
the config's sizes and the tensors' names, shapes and dtypes (`models.architecture`) before it builds the model.
"""
from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import torch

from ..config import TrainConfig, from_dict
from ..errors import CheckpointError, ConfigError, StemJepaError

FORMAT_VERSION = 1
INTEGER_BUFFERS = ("center_updates",)  # the model's only integer tensor: a counter, not a weight


def _unsafe_detail(message: str) -> str:
    """The line of torch's refusal that names what the file wanted to load (e.g. 'GLOBAL posix.system')."""
    for line in message.splitlines():
        if "GLOBAL" in line or "Unsupported" in line or "unsupported" in line:
            return line.strip()[:160]
    return ""


def _load(path: Path):
    """torch.load, weights only, memory-mapped where the file allows it (zip format: every file torch writes since 1.6)."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap can only be used" not in str(exc):
            raise
    return torch.load(str(path), map_location="cpu", weights_only=True)  # legacy format: read whole (its size is the file's)


def read_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = _load(path)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():  # a damaged file, not a refused object
            raise CheckpointError(f"{path}: not a readable checkpoint (damaged file: {str(exc)[:120]})") from None
        detail = _unsafe_detail(str(exc))
        raise CheckpointError(
            f"{path}: refused: the file holds Python objects other than tensors and plain values"
            + (f" ({detail})" if detail else "") + ", and loading those can run arbitrary code. stemjepa only reads "
            "weights (a checkpoint written by `stemjepa fit`); if you trust where this file comes from, re-save its "
            "weights in a trusted Python session") from None
    except Exception as exc:  # noqa: BLE001 - any failure here means the file is not a usable checkpoint
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(ckpt, dict) or "stemjepa" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a stemjepa checkpoint (no 'stemjepa' entry)")
    meta = ckpt["stemjepa"]
    if not isinstance(meta, dict) or not isinstance(ckpt["state_dict"], dict):
        raise CheckpointError(f"{path}: not a stemjepa checkpoint (its 'stemjepa' or 'state_dict' entry is not a mapping)")
    version = meta.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{path}: corrupt checkpoint (format_version {version!r} is not an integer)")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer stemjepa (format {version})")
    return ckpt


def check_finite_weights(state: dict, path) -> None:
    """Refuse weights that are not floating point (integer, bool or complex tensors would be cast silently into the model
    and embed garbage; integer buffers such as `center_updates` excepted), or that hold NaN or inf: every embedding made
    from them would be NaN, and rankings meaningless."""
    for k, v in state.items():
        if torch.is_tensor(v) and not v.is_floating_point() and (v.is_complex() or v.dtype == torch.bool
                                                                  or not k.endswith(INTEGER_BUFFERS)):
            raise CheckpointError(f"{path}: tensor {k} is {str(v.dtype).replace('torch.', '')}: only floating-point "
                                  "weights are loaded; the file is damaged or not a stemjepa model")
    bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} weight tensors hold NaN or infinite values (e.g. {bad[0]}); the "
                              "training diverged or the file is damaged: use an earlier checkpoint")


def checkpoint_config(ckpt: dict, path="checkpoint") -> TrainConfig:
    try:
        return from_dict(ckpt["stemjepa"]["config"])
    except (ConfigError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: config inside the checkpoint is not usable ({exc})") from None


def model_state(ckpt: dict) -> dict:
    """The StemJEPA state dict inside a Lightning checkpoint (keys under 'model.')."""
    return {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}


def training_songs(ckpt: dict) -> dict | None:
    """The songs a checkpoint was trained on ({family: {"n", "digest", "ids"}}), None for checkpoints written before
    they were recorded. Written at save time by `stemjepa.training.songs_record`; see `stemjepa.data.provenance`."""
    record = ckpt.get("training_songs")
    return record if isinstance(record, dict) else None


def checkpoint_labels(state: dict):
    """The label list saved beside a text conditioner's table (None when there is none)."""
    extra = state.get("conditioner._extra_state")
    labels = extra.get("labels") if isinstance(extra, dict) else None
    return labels if isinstance(labels, list) else None


def load_model(path, device=None, eval_mode: bool = True, source=None):
    """Rebuild a StemJEPA from a checkpoint file alone (`rebuild`). device=None: CUDA when present, else CPU. `source`:
    where the file was found (`registry.resolve`), completed with what the file records and set as `model.source`."""
    from .rebuild import rebuild
    from .source import ModelSource

    ckpt = read_checkpoint(path)  # memory-mapped: nothing read yet
    located = source or ModelSource("checkpoint", Path(path))
    model = rebuild(checkpoint_config(ckpt, path), model_state(ckpt),
                    replace(located, training_songs=training_songs(ckpt)))
    return place_model(model, device, eval_mode)


def place_model(model, device=None, eval_mode: bool = True):
    """Move a rebuilt model to `device` (None: CUDA when present, else CPU), with one-line errors."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise StemJepaError(f"device {device!r} asked for, but no CUDA GPU is available (use --device cpu)")
    try:
        model.to(device)
    except (RuntimeError, ValueError) as exc:
        raise StemJepaError(f"cannot use device {device!r} ({exc})") from None
    return model.eval() if eval_mode else model
