"""Slim model export: one safetensors file holding what inference needs, and its loader.

`stemjepa export CKPT OUT.safetensors` (or `export_model`) writes the model's whole state dict (front-end statistics and
mel filterbank, encoder, target encoder, predictor, conditioning table, the running centres `query_center`,
`reference_center`, `center_updates`) as plain tensors, and in the safetensors metadata (string -> string) the config
(JSON), the model id, the non-tensor state (the text conditioner's label list), the training-songs record and where the
file came from. No optimizer state, no Lightning state, no pickle: loading it reads tensors and JSON only, so no code
from the file can run.

The target encoder is kept (phase-2 models): references (the stems of a library) are embedded with the EMA target
encoder, whose space the predictor predicts into, while mixes go through the context encoder; dropping either would
change the embeddings. A phase-1 model has one encoder and no predictor. Keeping the whole state dict also keeps the model
id (`models.digest.weights_digest` of the state dict, `StemJEPA.model_id`) the same as the checkpoint's, so an index built
with the checkpoint accepts the export and vice versa; the loader checks that the rebuilt model has the id recorded in the
file.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from ..errors import CheckpointError, StemJepaError

FORMAT = "stemjepa-export"
FORMAT_VERSION = 1
SUFFIX = ".safetensors"
TARGET_ENCODER_NOTE = ("kept: library stems are embedded with the EMA target encoder (the space the predictor predicts "
                       "into), mixes with the context encoder")


def is_safetensors(path) -> bool:
    """True when the file starts like a safetensors file (8-byte header length, then a JSON object)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 27)


def _split_state(state: dict) -> tuple[dict, dict]:
    """(tensors, other values) of a state dict; non-tensor entries are the modules' extra state (JSON-able)."""
    tensors, extra = {}, {}
    for k, v in state.items():
        if torch.is_tensor(v):
            tensors[k] = v.detach().cpu().contiguous().clone()  # clone: safetensors refuses tensors sharing memory
        else:
            extra[k] = v
    try:
        json.dumps(extra)
    except TypeError as exc:
        raise StemJepaError(f"the model holds state that cannot be exported without pickle ({exc})") from None
    return tensors, extra


def saved_config(model) -> dict:
    """The config an export records, in the shape of a training config (which every loader reads): the model's own
    config and phase, over the training recipe it was loaded with (`model.source.training_config`) when there is one."""
    from ..config import to_dict

    recipe = model.source.training_config
    return {**(to_dict(recipe) if recipe is not None else {}), "phase": model.phase, "model": to_dict(model.config)}


def export_model(model, out, force: bool = False, source: str | None = None, extra_metadata: dict | None = None) -> dict:
    """Write `model` (a StemJEPA) to `out` (.safetensors) and return the metadata written.

    Refuses to replace an existing `out` unless `force`. The file is written atomically (temporary name, then rename).
    """
    from safetensors.torch import save

    from ..fsutil import atomic_write
    from ..version import __version__

    out = Path(out)
    if out.suffix != SUFFIX:
        raise StemJepaError(f"{out}: an export is a {SUFFIX} file; name it e.g. {out.with_suffix(SUFFIX).name}")
    if out.exists() and not force:
        raise StemJepaError(f"{out}: exists already; pass --force to replace it")
    if not out.parent.is_dir():
        raise StemJepaError(f"{out.parent}: folder not found (for {out.name})")
    tensors, extra = _split_state(model.state_dict())
    songs = model.source.training_songs
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "stemjepa_version": __version__,
        "config": json.dumps(saved_config(model), sort_keys=True),
        "model_id": str(model.model_id),
        "extra_state": json.dumps(extra, sort_keys=True),
        "training_songs": json.dumps(songs) if isinstance(songs, dict) else "null",
        "phase": str(model.phase),
        "target_encoder": TARGET_ENCODER_NOTE if model.has_predictor else "none: a phase-1 model has a single encoder",
        "source": str(source or model.source.file or ""),
    }
    for k, v in (extra_metadata or {}).items():
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v)
    blob = save(tensors, metadata=meta)
    atomic_write(out, lambda fh: fh.write(blob))
    return meta


def _dtype(name: str):
    from .architecture import SAFETENSORS_DTYPES

    return SAFETENSORS_DTYPES.get(name, name)  # an unknown name stays a string: it matches no model dtype


def read_export_header(path) -> tuple[dict, dict]:
    """(metadata, {name: (shape, dtype)}) of an export file, from its header alone: no tensor is read."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: model file not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            specs = {}
            for k in fh.keys():
                sl = fh.get_slice(k)
                specs[k] = (tuple(sl.get_shape()), _dtype(sl.get_dtype()))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(exc)[:160]})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: a safetensors file, but not a stemjepa export (no '{FORMAT}' metadata); "
                              "write one with `stemjepa export CHECKPOINT OUT.safetensors`")
    try:
        version = int(meta.get("format_version", "0"))
    except ValueError:
        raise CheckpointError(f"{path}: corrupt export (format_version {meta.get('format_version')!r})") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer stemjepa (export format {version}); upgrade stemjepa")
    try:
        meta["extra_state"] = json.loads(meta.get("extra_state", "{}"))
        meta["config"] = json.loads(meta["config"])
        meta["training_songs"] = json.loads(meta.get("training_songs", "null"))
    except (KeyError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: corrupt export metadata ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(meta["extra_state"], dict):
        raise CheckpointError(f"{path}: corrupt export metadata (extra_state is not a mapping)")
    return meta, specs


def _read_tensors(path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(exc)[:160]})") from None


def read_export(path) -> tuple[dict, dict]:
    """(state dict with extra state, metadata) of an export file; a one-line CheckpointError on any problem. Reads every
    tensor: `load_export` checks the header against the config first."""
    meta, _ = read_export_header(path)
    extra = meta.pop("extra_state")
    return {**_read_tensors(path), **extra}, meta


def load_export(path, device=None, eval_mode: bool = True, source=None):
    """Rebuild a StemJEPA from an export file alone (no training code, no pickle; `rebuild`): the config's sizes and the
    tensors' names, shapes and dtypes (from the header) are checked before any tensor is read or the model is built, and
    the rebuilt model must have the id the file records. `source`: where the file was found (`registry.resolve`; a
    built-in model keeps its name), completed with what the file records and set as `model.source`."""
    from ..config import from_dict
    from ..errors import ConfigError
    from .checkpoint import checkpoint_labels, place_model
    from .rebuild import rebuild
    from .source import ModelSource

    meta, specs = read_export_header(path)
    extra = meta.pop("extra_state")
    try:
        cfg = from_dict(meta["config"])
    except (ConfigError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: config inside the export is not usable ({exc})") from None
    songs = meta["training_songs"] if isinstance(meta["training_songs"], dict) else None
    located = replace(source or ModelSource("export", Path(path)), training_songs=songs)
    model = rebuild(cfg, lambda: {**_read_tensors(path), **extra}, located, specs=specs, labels=checkpoint_labels(extra))
    recorded = meta.get("model_id")
    if recorded and str(model.model_id) != recorded:  # the id of the weights as stored, before any move or cast
        raise CheckpointError(f"{path}: damaged export: its weights are model {model.model_id}, the file says {recorded}")
    return place_model(model, device, eval_mode)
