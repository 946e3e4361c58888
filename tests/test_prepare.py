"""`stemjepa prepare`: the training cache from real dataset layouts, resumable, parallel, bad items skipped and reported."""
from __future__ import annotations

import json

import numpy as np
import pytest
from test_datasets import MOISES_A, MOISES_B, make_moisesdb, make_musdb18, make_slakh

from stemjepa.cli.main import main
from stemjepa.data.prepare import format_summary, prepare
from stemjepa.data.training_cache import TrainingCache, song_key
from stemjepa.errors import DataError


def test_prepare_slakh_parallel_reports_skips_and_resumes(tmp_path):
    root = make_slakh(tmp_path / "slakh")
    out = tmp_path / "cache"
    result = prepare("slakh2100", root, out, jobs=2, progress=False)
    assert (result.n_listed, result.n_already, result.n_prepared) == (2, 0, 2)
    reasons = {(s["song"], s["stem"]): s["reason"] for s in result.skipped}
    assert "S03.flac" in reasons[("Track00001", "S03")]  # corrupt flac: skipped, the rest of the song prepared
    assert any("Track00003" in (s["path"] or "") and "unreadable YAML" in s["reason"] for s in result.skipped)
    manifest = json.loads((out / "cache.json").read_text())
    assert manifest["dataset"] == "slakh2100" and manifest["n_songs"] == 2 and manifest["n_stems"] == 3
    assert len(manifest["skipped"]) == len(result.skipped)

    cache = TrainingCache(out)
    by_id = {r["id"]: i for i, r in enumerate(cache.songs)}
    i = by_id["Track00001"]
    assert cache.sample_rate == 16000 and cache.audio(i).shape == (2, 8000) and cache.audio(i).dtype == np.float16
    assert [s["labels"] for s in cache.songs[i]["stems"]] == [["piano", "acoustic grand piano"], ["drums"]]
    assert cache.songs[i]["split"] == "train" and cache.songs[by_id["Track00002"]]["split"] == "test"

    # resume: nothing to redo, and the stem skipped earlier is still reported
    again = prepare("slakh2100", root, out, jobs=2, progress=False)
    assert (again.n_already, again.n_prepared) == (2, 0)
    assert any(s["stem"] == "S03" for s in again.skipped)
    # an interrupted song (no per-song record) is redone, the others are kept
    (out / "songs" / f"{song_key('Track00002')}.json").unlink()
    mtime = (out / "songs" / f"{song_key('Track00001')}.npy").stat().st_mtime_ns
    third = prepare("slakh2100", root, out, jobs=1, progress=False)
    assert (third.n_already, third.n_prepared) == (1, 1)
    assert (out / "songs" / f"{song_key('Track00001')}.npy").stat().st_mtime_ns == mtime
    assert "Track00003" in format_summary(third) and "S03" in format_summary(third)


def test_prepare_moisesdb_split_and_missing_data_json(tmp_path):
    root = make_moisesdb(tmp_path / "moises")
    out = tmp_path / "cache"
    result = prepare("moisesdb", root, out, progress=False)
    assert result.n_prepared == 1
    assert any(MOISES_B in (s["path"] or "") and "missing data.json" in s["reason"] for s in result.skipped)
    cache = TrainingCache(out)
    assert cache.audio(0).shape == (5, 16000)  # unequal sources padded to the longest
    record = cache.songs[0]
    assert record["id"] == MOISES_A and [s["labels"][0] for s in record["stems"]].count("guitar") == 2
    # the padding is silent in the activity index
    rms = cache.rms_db(0)
    assert rms[1, -2] < -100 and rms[1, 2] > -20


def test_prepare_musdb18_stem_mp4(tmp_path):
    root = make_musdb18(tmp_path / "musdb")
    out = tmp_path / "cache"
    result = prepare("musdb18", root, out, split="test", progress=False)
    assert (result.n_listed, result.n_prepared, result.skipped) == (1, 1, [])
    cache = TrainingCache(out)
    assert cache.songs[0]["id"] == "B Artist - Second Song"
    assert [s["stream"] for s in cache.songs[0]["stems"]] == [1, 2, 3, 4]
    assert cache.audio(0).shape[0] == 4 and 11200 <= cache.audio(0).shape[1] < 11200 + 800


def test_prepare_refuses_foreign_folders_and_other_datasets(tmp_path):
    root = make_slakh(tmp_path / "slakh")
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a stemjepa cache"):
        prepare("slakh2100", root, user, progress=False)
    assert (user / "notes.txt").read_text() == "mine" and not (user / "songs").exists()
    prepare("slakh2100", root, tmp_path / "cache", progress=False)
    with pytest.raises(DataError, match="cache of dataset 'slakh2100'"):
        prepare("moisesdb", make_moisesdb(tmp_path / "m"), tmp_path / "cache", progress=False)
    (tmp_path / "cache" / "cache.json").unlink()  # as after an interrupted first run
    with pytest.raises(DataError, match="songs of dataset 'slakh2100'"):
        prepare("moisesdb", tmp_path / "m", tmp_path / "cache", progress=False)


def test_prepare_with_no_readable_song_fails_clearly(tmp_path):
    root = tmp_path / "slakh" / "train" / "Track00009"
    root.mkdir(parents=True)
    (root / "metadata.yaml").write_text("stems: {S00: {inst_class: Piano, audio_rendered: true}}")
    (root / "stems").mkdir()
    (root / "stems" / "S00.flac").write_bytes(b"garbage")
    with pytest.raises(DataError, match="no song could be prepared.*S00.flac"):
        prepare("slakh2100", tmp_path / "slakh", tmp_path / "cache", progress=False)


def test_cli_prepare(tmp_path, capsys):
    root = make_slakh(tmp_path / "slakh")
    out = tmp_path / "cache"
    assert main(["prepare", "--dataset", "slakh2100", "--root", str(root), "--out", str(out), "--split", "all", "--jobs", "1",
                 "--no-progress"]) == 0  # the default would be the train split
    printed = capsys.readouterr().out
    assert "prepared 2 songs" in printed and "Track00003" in printed and "S03" in printed
    assert main(["prepare", "--dataset", "musdb18", "--root", str(root), "--out", str(tmp_path / "c2")]) == 2
    assert "no MUSDB18 files" in capsys.readouterr().err
