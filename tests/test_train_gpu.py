"""benchmarks/train_gpu.py, the prepared device run of the built-in model: the parts that must be right before a lease is
spent (weights cut into parts that come back and join to the card's bytes, the learning rate decaying over a time box,
labels served from the precomputed table, the steps a time-boxed run reached)."""
import json
import time

import numpy as np
import pytest
from conftest import load_benchmark


def test_weights_cut_into_parts_that_come_back_and_join_to_the_same_bytes(tmp_path, monkeypatch):
    g = load_benchmark("train_gpu")
    monkeypatch.setattr(g, "PART_MB", 1)
    data = np.random.default_rng(0).integers(0, 256, 2_500_000, dtype=np.uint8).tobytes()
    (tmp_path / "m.safetensors").write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    names = g.split_into(tmp_path / "m.safetensors", out)
    assert names == ["m.safetensors.part0", "m.safetensors.part1", "m.safetensors.part2"]
    assert all((out / n).stat().st_size <= 1_000_000 for n in names)
    assert b"".join((out / n).read_bytes() for n in names) == data


def test_adopt_refuses_parts_that_do_not_match_the_card(tmp_path):
    g = load_benchmark("train_gpu")
    (tmp_path / "card.json").write_text(json.dumps({"name": "m", "sha256": "0" * 64}))
    (tmp_path / "m.safetensors.part0").write_bytes(b"not the weights")
    with pytest.raises(SystemExit, match="sha256"):
        g.adopt(tmp_path, "cmd", tmp_path / "gen", tmp_path / "weights", tmp_path / "card.md", None)
    assert not (tmp_path / "weights").exists()  # nothing installed


def test_learning_rate_decays_over_the_time_box_when_the_steps_cannot_end_it(monkeypatch):
    g = load_benchmark("train_gpu")
    from stemjepa.training import module

    calls = {}
    monkeypatch.setattr(g.td, "train_stage", lambda *a, **k: calls.setdefault("args", a))
    monkeypatch.setattr(module, "lr_factor", module.lr_factor)  # restored after the test
    g.decay_by_time()
    g.td.train_stage(*range(9), 2.0)  # a 2-minute time box (the 10th positional argument)
    warm = module.lr_factor(5, 10, 1_000_000, 0.1)
    assert warm == pytest.approx(0.6)  # warm-up by steps, unchanged
    assert module.lr_factor(20, 10, 1_000_000, 0.1) == pytest.approx(1.0, abs=1e-3)  # the box has just begun
    now = time.time()
    monkeypatch.setattr(g.time, "time", lambda: now + 60)  # half of the box
    assert module.lr_factor(20, 10, 1_000_000, 0.1) == pytest.approx(0.55, abs=0.01)
    monkeypatch.setattr(g.time, "time", lambda: now + 600)  # past the box: the floor
    assert module.lr_factor(20, 10, 1_000_000, 0.1) == pytest.approx(0.1)


def test_labels_come_from_the_table_and_an_unknown_path_falls_back_to_its_finest_known_level(tmp_path, monkeypatch):
    g = load_benchmark("train_gpu")
    from stemjepa.models import conditioning, text_encoders

    monkeypatch.setattr(conditioning, "get_text_encoder", conditioning.get_text_encoder)
    monkeypatch.setattr(text_encoders, "get_text_encoder", text_encoders.get_text_encoder)
    vectors = np.eye(3, 4, dtype=np.float32)
    np.savez(tmp_path / "labels.npz", labels=np.array(["bass", "bass > fretless bass", "drums"]), vectors=vectors)
    g.use_label_table(tmp_path / "labels.npz")
    enc = conditioning.get_text_encoder("minilm")
    out = enc.encode(["Bass", "drums", "bass > a bass nobody named"])
    assert out.shape == (3, 4) and np.array_equal(out[0], vectors[0]) and np.array_equal(out[1], vectors[2])
    assert np.array_equal(out[2], vectors[0])  # the finest level the table knows


