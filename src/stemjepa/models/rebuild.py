"""The one way a model is rebuilt from a file: `rebuild(config, state_dict, source)`, used by the checkpoint loader
(`checkpoint.load_model`) and the export loader (`export.load_export`), and through them by the built-in models
(`registry.load_model`).

Everything is checked before the model is allocated: the config's sizes and the file's tensor names, shapes and dtypes
(`architecture.check_architecture`, against the config's model built on the meta device), then the weights' dtypes and
values (`checkpoint.check_finite_weights`). Only then is the model built (on the meta device: no random init, nothing
computed that the file holds) and given the file's tensors, and its `source` set, once.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from ..errors import CheckpointError
from .source import ModelSource

if TYPE_CHECKING:
    from ..config import TrainConfig
    from .stemjepa import StemJEPA


def rebuild(config: TrainConfig, state_dict: dict | Callable[[], dict], source: ModelSource, *,
            specs: dict | None = None, labels: list[str] | None = None) -> StemJEPA:
    """The StemJEPA of `config` holding `state_dict`, on the CPU, with `model.source` = `source` and its training config.

    `state_dict`: the model's state dict (tensors and extra state; memory-mapped tensors are read only when loaded), or a
    function reading it, called once `specs` ({name: (shape, dtype)}, from a file's header) and `labels` (the text
    conditioner's label list) have passed the check: an export's tensors are read only then. Without `specs`, those of
    `state_dict` itself (nothing is read). The model id (the id of the weights as stored) is computed here, before any
    move or cast. Every refusal is a one-line CheckpointError naming `source.path`.
    """
    from .architecture import check_architecture, tensor_specs
    from .checkpoint import check_finite_weights, checkpoint_labels
    from .stemjepa import StemJEPA

    path = source.path
    if specs is None:
        if callable(state_dict):
            raise TypeError("rebuild: a state-dict reader needs the `specs` of its tensors")
        specs = tensor_specs(state_dict)
        labels = checkpoint_labels(state_dict) if labels is None else labels
    check_architecture(config, specs, path, labels=labels)  # before the model is built
    state = state_dict() if callable(state_dict) else state_dict
    check_finite_weights(state, path)
    with torch.device("meta"):  # no random init and no filterbank computed: the file holds every saved tensor
        model = StemJEPA(config.model, config.phase)
    dtypes = {k: v.dtype for k, v in model.state_dict().items() if torch.is_tensor(v)}
    state = {k: v.to(dtypes.get(k, v.dtype), copy=True) if torch.is_tensor(v) else v for k, v in state.items()}
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the config inside it ({str(exc)[:300]})") from None
    for module in model.modules():  # the buffers no file holds (window, positions), computed now on the CPU
        if hasattr(module, "reset_fixed_buffers"):
            module.reset_fixed_buffers()
    unset = [n for n, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if unset:  # a tensor neither saved nor built on the CPU (a bug here, not in the file)
        raise RuntimeError(f"rebuild: {path}: {', '.join(unset[:5])} not loaded")
    model.source = replace(source, training_config=config)
    _ = model.model_id
    return model


__all__ = ["rebuild"]
