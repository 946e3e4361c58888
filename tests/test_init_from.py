"""Where a run starts (`fit --init`): a phase-1 or phase-2 checkpoint, or a built-in model by name."""
from pathlib import Path

import pytest
import torch
from conftest import TINY_OVERRIDES, train_tiny

from stemjepa.config import load_config
from stemjepa.errors import CheckpointError
from stemjepa.models import load_model
from stemjepa.models.stemjepa import StemJEPA
from stemjepa.training import fit as fit_module
from stemjepa.training.init_from import apply_init, architecture_overrides, read_init
from stemjepa.training.stage import init_identity

BUILTIN = "stemjepa-tiny-synth-v1"  # the smallest built-in model (128 d x 3 layers)


def _same(a: dict, b: dict, prefix: str) -> bool:
    keys = [k for k in a if k.startswith(prefix)]
    return bool(keys) and all(torch.equal(a[k], b[k]) for k in keys)


def test_phase2_from_a_phase2_checkpoint_continues_predictor_and_target(tiny_checkpoint):
    init = read_init(str(tiny_checkpoint))
    model = StemJEPA(load_config("tiny", TINY_OVERRIDES).model, phase=2)
    assert apply_init(model, init) == "encoder, EMA target, predictor and centres"
    state = model.state_dict()
    for part in ("encoder.", "target_encoder.", "predictor."):
        assert _same(init.state, state, part), part


def test_phase2_from_phase1_starts_the_predictor_from_nothing(tiny_phase1_checkpoint):
    init = read_init(str(tiny_phase1_checkpoint))
    model = StemJEPA(load_config("tiny", TINY_OVERRIDES).model, phase=2)
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("predictor.")}
    assert apply_init(model, init) == "encoder"
    state = model.state_dict()
    assert _same(init.state, state, "encoder.")
    # the EMA target starts as the context encoder (Eq. 4's initial state), the predictor keeps its random weights
    assert all(torch.equal(state["target_" + k], v) for k, v in init.state.items() if k.startswith("encoder."))
    assert all(torch.equal(state[k], v) for k, v in before.items())


def test_a_builtin_model_by_name_with_its_architecture():
    init = read_init(BUILTIN)
    assert init.model_config is not None and init.songs  # the songs its encoder saw go into the new run's record
    overrides = architecture_overrides(init.model_config)
    assert "model.encoder.embed_dim=128" in overrides and "model.encoder.depth=3" in overrides
    model = StemJEPA(load_config("tiny", overrides).model, phase=2)
    assert apply_init(model, init) == "encoder, EMA target, predictor and centres"
    assert _same(init.state, model.state_dict(), "predictor.")


def test_another_architecture_is_refused_naming_the_one_that_fits():
    model = StemJEPA(load_config("tiny", ["model.encoder.embed_dim=64"]).model, phase=2)
    with pytest.raises(CheckpointError, match=rf"{BUILTIN}: cannot initialise.*model.encoder.embed_dim=128"):
        apply_init(model, read_init(BUILTIN))


def test_fit_fine_tunes_a_builtin_model(toy_corpus, tmp_path):
    overrides = architecture_overrides(load_model(BUILTIN, device="cpu").config)
    last = train_tiny("tiny", toy_corpus, tmp_path / "ft", steps=1, extra=overrides + ["model.encoder.depth=3"],
                      init=BUILTIN)
    tuned, shipped = load_model(last, device="cpu").state_dict(), load_model(BUILTIN, device="cpu").state_dict()
    # one small step: still close to the built-in weights everywhere, the predictor included
    for key in ("encoder.blocks.0.attn.qkv.weight", "predictor.layers.0.weight"):
        if key in shipped:
            assert torch.allclose(tuned[key], shipped[key], atol=1e-2), key


def test_a_missing_init_is_one_clear_error(toy_corpus, tmp_path):
    with pytest.raises(CheckpointError, match="not-a-model"):
        train_tiny("tiny", toy_corpus, tmp_path / "x", steps=1, init=Path("not-a-model"))


def test_a_builtin_init_is_named_by_its_versioned_name():
    assert init_identity(Path("stemjepa-tiny-synth-v1")) == "builtin:stemjepa-tiny-synth-v1"
    assert init_identity(Path("default")).startswith("builtin:stemjepa-")


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_trains_in_bf16_only_where_the_cpu_has_it(monkeypatch, native):
    monkeypatch.setattr("stemjepa.models.precision.cpu_has_native_bf16", lambda: native)
    cfg = load_config("tiny", [])
    assert fit_module._lightning_precision(cfg, on_gpu=False) == ("bf16-mixed" if native else "32-true")
    assert fit_module._lightning_precision(load_config("tiny", ["precision=32"]), on_gpu=False) == "32-true"
