"""Every model that search, evaluation and the app are given implements `EmbeddingModel`: StemJEPA and each test fake,
with the protocol's own signatures (callers pass batch_size, target and precision without probing)."""
from __future__ import annotations

import inspect

import pytest
import torch
from test_eval_retrieval import FakeModel as EvalFake
from test_search_fakes import FakeModel as SearchFake
from test_table1_protocol import CollapsedModel

from stemjepa.config import load_config
from stemjepa.models.protocol import IN_MEMORY, EmbeddingModel
from stemjepa.models.stemjepa import StemJEPA


def tiny(config: str, *overrides: str, classes=None) -> StemJEPA:
    torch.manual_seed(0)
    cfg = load_config(config, ["model.encoder.depth=1", *overrides])
    if classes:
        cfg.model.conditioning.classes = classes
    return StemJEPA(cfg.model, cfg.phase).eval()


def same_signature(model, name: str) -> bool:
    """The protocol's parameters, in order, with its defaults; a model may add keyword-only options (StemJEPA's
    `sample_rate`) that callers of the protocol never pass."""
    want = inspect.signature(getattr(EmbeddingModel, name)).parameters
    got = inspect.signature(getattr(type(model), name)).parameters
    got = {k: p for k, p in got.items() if k in want or p.kind is not p.KEYWORD_ONLY or p.default is p.empty}
    return [(p.name, p.default) for p in got.values()] == [(p.name, p.default) for p in want.values()]


FAKES = [SearchFake(), EvalFake(), EvalFake(has_predictor=False), CollapsedModel()]


@pytest.mark.parametrize("model", FAKES, ids=lambda m: type(m).__module__ + "." + type(m).__name__)
def test_fakes_implement_the_protocol(model):
    assert isinstance(model, EmbeddingModel)
    assert same_signature(model, "embed_many") and same_signature(model, "query_many")
    assert model.conditioning_kind in ("text", "classes", "none")


def test_stemjepa_implements_the_protocol():
    phase2 = tiny("tiny", "model.conditioning.kind=classes", classes=["drums", "bass", "music"])
    phase1 = tiny("tiny_phase1")
    for model in (phase2, phase1):
        assert isinstance(model, EmbeddingModel)
        assert same_signature(model, "embed_many") and same_signature(model, "query_many")
        assert model.source == IN_MEMORY and model.checkpoint_path is None and model.training_songs is None  # not loaded
        assert isinstance(model.model_id, str) and model.precision == "auto"
    assert (phase2.conditioning_kind, phase2.known_labels) == ("classes", ["bass", "drums", "music"])
    assert (phase1.conditioning_kind, phase1.known_labels) == ("none", [])
