"""Where a run starts (`fit --init`): a `.ckpt` of `stemjepa fit`, a slim export or a built-in model by name.

A phase-1 run takes the init's context encoder (and front-end statistics and reference centre). A phase-2 run whose init
has a predictor of the same shape continues the whole init (encoder, EMA target, predictor, centres): fine-tuning the
built-in model on one's own stems, as the demo does. Without one, the predictor starts from nothing (the paper's phase 2
from phase 1). Every file is read by the model loaders' checked paths: no code runs from it, sizes are bounded first.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError

# what a phase-2 init with a matching predictor gives besides the encoder (load_encoder_from)
_CONTINUED = ("predictor.", "target_encoder.", "query_center", "center_updates")


@dataclass(frozen=True)
class InitWeights:
    ref: str
    state: dict  # the StemJEPA state dict
    songs: dict | None  # the songs its encoder was trained on (recorded into the new run)
    model_config: object | None  # its ModelConfig, for the architecture hint of a mismatch


def read_init(ref: str) -> InitWeights:
    """Read an init reference: a `.ckpt` path, a `.safetensors` export or a built-in model name / alias."""
    from ..models.checkpoint import check_finite_weights, checkpoint_config, model_state, read_checkpoint
    from ..models.checkpoint import training_songs as recorded_songs

    if Path(ref).suffix == ".ckpt":
        ckpt = read_checkpoint(ref)
        state = model_state(ckpt)
        check_finite_weights(state, ref)
        return InitWeights(ref, state, recorded_songs(ckpt), checkpoint_config(ckpt, ref).model)
    from ..models import load_model

    model = load_model(ref, device="cpu")  # a name or an export: checked against its config before allocation
    return InitWeights(ref, model.state_dict(), model.source.training_songs, model.config)  # tensors come detached


def architecture_overrides(model_config) -> list[str]:
    """Config overrides that build the architecture of `model_config` (encoder, predictor, front-end), so that a run
    can start from a model of another size than its config's."""
    enc, pred, fe = model_config.encoder, model_config.predictor, model_config.frontend
    keys = {"encoder": (enc, ("embed_dim", "depth", "num_heads", "patch_size", "mlp_ratio", "chunk_seconds")),
            "predictor": (pred, ("num_layers", "hidden_dim", "fusion", "final_norm")),
            "frontend": (fe, ("n_fft", "win_length", "hop_length", "n_mels", "f_min", "f_max"))}
    out = [f"model.{part}.{k}={getattr(obj, k)}" for part, (obj, names) in keys.items() for k in names]
    return out + [f"model.center_embeddings={model_config.center_embeddings}"]


def apply_init(model, init: InitWeights) -> str:
    """Load `init` into a freshly built StemJEPA; returns what was taken, for the log. A shape mismatch is an error
    naming the init and the overrides that would match it."""
    try:
        model.load_encoder_from(init.state)
    except (KeyError, RuntimeError) as exc:
        hint = ""
        if init.model_config is not None:
            hint = "; its architecture: " + " ".join(architecture_overrides(init.model_config)[:6])
        detail = " ".join(str(exc).split())[:160]
        raise CheckpointError(f"{init.ref}: cannot initialise the encoder from it ({detail}){hint}") from None
    if not (model.has_predictor and any(k.startswith("predictor.") for k in init.state)):
        return "encoder"
    own = model.state_dict()
    take = {k: v for k, v in init.state.items() if k.startswith(_CONTINUED) and k in own}
    wrong = [k for k, v in take.items() if not torch.is_tensor(v) or own[k].shape != v.shape]
    if wrong or not any(k.startswith("predictor.") for k in take):
        return f"encoder (its predictor differs: {wrong[0] if wrong else 'none'}; the predictor starts from nothing)"
    model.load_state_dict(take, strict=False)
    return "encoder, EMA target, predictor and centres"
