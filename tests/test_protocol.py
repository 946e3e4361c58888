"""The retrieval protocol object (evaluation/protocol.py): one frozen value names a measurement."""
import pytest

from stemjepa.errors import StemJepaError
from stemjepa.evaluation.protocol import RetrievalProtocol, default_label_map


class Model:
    distance = "cosine"


def test_protocol_is_frozen_and_hashable_and_its_identity_names_every_setting():
    p = RetrievalProtocol(dataset="musdb18", split="test", label_map={"other": "music", "bass": "bass guitar"})
    assert p.label_map == (("bass", "bass guitar"), ("other", "music"))  # a dict is kept as sorted pairs
    assert hash(p) == hash(RetrievalProtocol(dataset="musdb18", split="test", label_map={"bass": "bass guitar",
                                                                                       "other": "music"}))
    with pytest.raises(AttributeError):
        p.split = "train"
    ident = p.for_model(Model()).identity("abc")
    assert ident == {"model_id": "abc", "dataset": "musdb18", "split": "test", "label_level": "fine", "distance": "cosine",
                     "reference_encoder": "target", "k64_draws": 10, "seed": 0, "silence_db": -60.0,
                     "label_map": {"bass": "bass guitar", "other": "music"}}


def test_distance_is_the_models_own_unless_given_and_label_map_the_datasets_unless_given():
    assert RetrievalProtocol().for_model(Model()).distance == "cosine"
    assert RetrievalProtocol(distance="l2").for_model(Model()).distance == "l2"
    assert RetrievalProtocol(dataset="musdb18").labels == default_label_map("musdb18") == {"other": "music"}
    assert RetrievalProtocol(dataset="musdb18", label_map={}).labels == {}


@pytest.mark.parametrize("bad, match", [({"label_level": "finest"}, "label level"), ({"distance": "manhattan"}, "distance"),
                                        ({"reference_encoder": "predictor"}, "reference encoder"),
                                        ({"k64_draws": 0}, "k64_draws")])
def test_a_bad_setting_is_refused_when_the_protocol_is_made(bad, match):
    with pytest.raises(StemJepaError, match=match):
        RetrievalProtocol(**bad)
