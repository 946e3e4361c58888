"""Checkpoints: a Lightning checkpoint file plus a `stemjepa` entry holding the config, so loading needs no training code.

Files are read with `torch.load(weights_only=True)`: no code from the file is executed.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import TrainConfig, from_dict
from ..errors import CheckpointError, ConfigError, StemJepaError

FORMAT_VERSION = 1


def read_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means the file is not a usable checkpoint
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(ckpt, dict) or "stemjepa" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a stemjepa checkpoint (no 'stemjepa' entry)")
    if ckpt["stemjepa"].get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer stemjepa (format {ckpt['stemjepa']['format_version']})")
    return ckpt


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


def load_model(path, device=None, eval_mode: bool = True):
    """Rebuild a StemJEPA from a checkpoint file alone. device=None: CUDA when present, else CPU."""
    from .stemjepa import StemJEPA

    ckpt = read_checkpoint(path)
    cfg = checkpoint_config(ckpt, path)
    model = StemJEPA(cfg)
    try:
        model.load_state_dict(model_state(ckpt))
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the config inside it ({str(exc)[:300]})") from None
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise StemJepaError(f"device {device!r} asked for, but no CUDA GPU is available (use --device cpu)")
    try:
        model.to(device)
    except (RuntimeError, ValueError) as exc:
        raise StemJepaError(f"cannot use device {device!r} ({exc})") from None
    model.checkpoint_path = str(path)
    model.training_songs = training_songs(ckpt)
    _ = model.model_id  # fixed now, before queries of new labels grow the text table
    return model.eval() if eval_mode else model
