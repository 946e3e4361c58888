"""One rebuild path for every model file (`models.rebuild.rebuild`) and one provenance record, `model.source`."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from stemjepa.config import load_config, to_dict
from stemjepa.models import rebuild as rebuild_mod
from stemjepa.models.source import IN_MEMORY, ModelSource
from stemjepa.models.stemjepa import StemJEPA

SONGS = {"folder": {"n": 2, "digest": "0" * 64, "ids": ["a", "b"]}}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A hand-written .ckpt of a tiny class-conditioned model (no training) and its export."""
    from stemjepa.models.export import export_model

    torch.manual_seed(0)
    cfg = load_config("tiny", ["model.encoder.depth=1", "model.predictor.num_layers=2", "model.conditioning.kind=classes",
                               "model.conditioning.class_dim=16"])
    model = StemJEPA(cfg.model, cfg.phase)
    folder = tmp_path_factory.mktemp("source")
    ckpt = folder / "m.ckpt"
    torch.save({"stemjepa": {"format_version": 1, "config": to_dict(cfg)}, "training_songs": SONGS,
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    from stemjepa.models.checkpoint import load_model

    export = folder / "m.safetensors"
    export_model(load_model(ckpt, device="cpu"), export)
    return cfg, ckpt, export


@pytest.fixture
def calls(monkeypatch):
    """The sources every rebuild was given."""
    seen = []
    real = rebuild_mod.rebuild

    def spy(config, state_dict, source, **kw):
        seen.append(source)
        return real(config, state_dict, source, **kw)

    monkeypatch.setattr(rebuild_mod, "rebuild", spy)
    return seen


def test_both_loaders_rebuild_through_one_function_and_set_one_source(files, calls):
    from stemjepa.models import load_model

    cfg, ckpt, export = files
    a, b = load_model(str(ckpt), device="cpu"), load_model(str(export), device="cpu")
    assert [s.kind for s in calls] == ["checkpoint", "export"]
    assert a.model_id == b.model_id
    for model, kind, path in ((a, "checkpoint", ckpt), (b, "export", export)):
        src = model.source
        assert (src.kind, src.path, src.name, src.training_songs) == (kind, path, None, SONGS)
        assert to_dict(src.training_config)["model"] == to_dict(cfg)["model"]
        assert src.ref == str(path.resolve())
        # the former attributes, read-only views of the record (search/ and app/ still read some)
        assert (model.checkpoint_path, model.training_songs, model.model_name) == (str(path), SONGS, None)
        assert model.training_config is src.training_config
        with pytest.raises(AttributeError):
            model.training_songs = {}
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.source.kind = "export"
    assert not hasattr(a, "model_ref") and not hasattr(b, "export_metadata")  # the two that nothing read


def test_a_builtin_model_keeps_its_name_in_its_source(files, tmp_path, monkeypatch):
    from stemjepa.models import registry

    _, _, export = files
    (tmp_path / "toy-v2.safetensors").write_bytes(export.read_bytes())
    monkeypatch.setenv("STEMJEPA_WEIGHTS_DIR", str(tmp_path))
    model = registry.load_model("toy-v2", device="cpu")
    assert (model.source.kind, model.source.name, model.source.ref) == ("builtin", "toy-v2", "toy-v2")
    assert model.source.training_songs == SONGS and model.model_name == "toy-v2"


def test_a_model_built_in_memory_has_the_in_memory_source():
    cfg = load_config("tiny_phase1", ["model.encoder.depth=1"])
    model = StemJEPA(cfg.model, cfg.phase)
    assert model.source is IN_MEMORY and model.source == ModelSource()
    assert (model.checkpoint_path, model.training_songs, model.training_config, model.source.ref) == (None, None, None, "")


def test_rebuild_needs_the_specs_of_a_state_dict_it_reads_later(files):
    cfg, ckpt, _ = files
    with pytest.raises(TypeError, match="specs"):
        rebuild_mod.rebuild(cfg, dict, ModelSource("export", ckpt))
