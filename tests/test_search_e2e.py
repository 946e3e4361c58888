"""`stemjepa index` + `stemjepa query` with a real (tiny, barely trained) checkpoint on generated stems.

The checkpoint is only trained a few steps, so this checks the whole path (model API, chunking, offsets, model-id
check, CLI output), not retrieval quality; the known-answer retrieval test is in test_search.py.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from stemjepa.cli.main import main
from stemjepa.errors import CheckpointError
from stemjepa.search import StemIndex

pytestmark = pytest.mark.slow


def test_index_and_query_with_a_real_checkpoint(tiny_checkpoint, toy_corpus, tmp_path, capsys):
    idx = tmp_path / "idx"
    assert main(["index", str(toy_corpus), "--checkpoint", str(tiny_checkpoint), "--out", str(idx), "--quiet",
                 "--batch-size", "4", "--device", "cpu"]) == 0
    summary = capsys.readouterr().out
    assert "16 added" in summary and "0 failed" in summary

    song = toy_corpus / "toy_001"
    stems = {p.stem: sf.read(p, dtype="float32")[0] for p in song.glob("*.wav")}
    mix = sum(w for name, w in stems.items() if name != "bass")  # the song minus its bass
    mix_path = tmp_path / "mix.wav"
    sf.write(mix_path, mix, 16000)
    assert main(["query", str(mix_path), str(mix_path), "--instrument", "bass", "--index", str(idx), "-k", "16",
                 "--json", "--device", "cpu"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data) == 2  # a batch of two identical mixes: same answers (up to float rounding in the batch)
    results = data[0]["results"]
    assert [r["cosine"] for r in data[1]["results"]] == pytest.approx([r["cosine"] for r in results], abs=1e-4)
    assert [r["rank"] for r in results] == list(range(1, 17))
    assert {r["path"] for r in results} == {str(p.resolve()) for p in toy_corpus.glob("*/*.wav")}
    scores = [r["cosine"] for r in results]
    assert scores == sorted(scores, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in scores)
    assert [r["z"] for r in results] == sorted((r["z"] for r in results), reverse=True)
    assert results[0]["percentile"] == 100.0 and results[-1]["percentile"] == 0.0  # all 16 files were asked for
    from stemjepa.models import load_model

    model = load_model(tiny_checkpoint, device="cpu")
    chunk_s = model.chunk_samples / model.sample_rate
    starts = {round(i * chunk_s, 3) for i in range(int(np.ceil(10.0 / chunk_s)))}  # chunk starts of a 10 s stem
    assert {round(r["offset"], 3) for r in results} <= starts
    assert all(r["duration"] == pytest.approx(10.0) for r in results)

    with StemIndex.open(idx, device="cpu") as index:  # checkpoint recorded in the index
        top = index.query(mix, "bass", k=3)
    assert [r.path for r in top] == [r["path"] for r in results[:3]]
    assert [r.cosine for r in top] == pytest.approx(scores[:3], abs=1e-4)


def test_another_checkpoint_is_refused(tiny_checkpoint, toy_corpus, tmp_path):
    import torch

    idx = tmp_path / "idx"
    bass_only = tmp_path / "lib"
    bass_only.mkdir()
    (bass_only / "bass.wav").write_bytes((toy_corpus / "toy_000" / "bass.wav").read_bytes())
    assert main(["index", str(bass_only), "--checkpoint", str(tiny_checkpoint), "--out", str(idx), "--quiet",
                 "--device", "cpu"]) == 0
    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=False)
    key = next(k for k, v in ckpt["state_dict"].items() if k.startswith("model.") and v.dtype.is_floating_point)
    ckpt["state_dict"][key] = ckpt["state_dict"][key] + 0.01
    other = tmp_path / "other.ckpt"
    torch.save(ckpt, other)
    with pytest.raises(CheckpointError, match="index was built with model"):
        StemIndex.open(idx, checkpoint=other, device="cpu")
    assert main(["query", str(toy_corpus / "toy_000" / "keys.wav"), "--instrument", "bass", "--index", str(idx),
                 "--checkpoint", str(other), "--device", "cpu"]) == 2
    assert main(["index", str(bass_only), "--checkpoint", str(other), "--out", str(idx), "--quiet",
                 "--device", "cpu"]) == 2
    with StemIndex.open(idx, device="cpu") as index:  # untouched by the refused run
        assert len(index) == 1 and index.generation == 1


def test_an_index_written_before_the_rename_still_opens_with_its_checkpoint_key(tiny_checkpoint, toy_corpus, tmp_path):
    import sqlite3

    from stemjepa.search import build_index
    from stemjepa.search.store import DB_NAME

    idx, lib = tmp_path / "idx", tmp_path / "lib"
    lib.mkdir()
    (lib / "bass.wav").write_bytes((toy_corpus / "toy_000" / "bass.wav").read_bytes())
    from stemjepa.models import load_model

    model = load_model(tiny_checkpoint, device="cpu")
    build_index(lib, idx, model, model_ref=tiny_checkpoint, progress=False)
    with sqlite3.connect(idx / DB_NAME) as con:  # the info of an index written before: "checkpoint", no "model"
        con.execute("UPDATE info SET key = 'checkpoint' WHERE key = 'model'")
    with StemIndex.open(idx, device="cpu") as index:
        assert index.store.get("model") is None and index.store.get("checkpoint") == str(tiny_checkpoint.resolve())
        assert index.model.model_id == model.model_id  # loaded from the old key
        assert index.query(toy_corpus / "toy_000" / "keys.wav", "bass", k=1)[0].path == str((lib / "bass.wav").resolve())
    (lib / "keys.wav").write_bytes((toy_corpus / "toy_000" / "keys.wav").read_bytes())
    summary = build_index(lib, idx, model, checkpoint=tiny_checkpoint, progress=False)  # the former keyword too
    assert summary.added == 1 and summary.failed == []
    with StemIndex.open(idx, device="cpu") as index:  # an update records the new key
        assert index.store.get("model") == str(tiny_checkpoint.resolve()) and len(index) == 2
