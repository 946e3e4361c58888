"""Defects 1, 2, 7 (fit, embed --out), 8 (model outputs, degenerate audio), 9 and 10 of the fault matrix: `fit` with bad
inputs, options and checkpoints; a full disk while training or saving embeddings."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TINY_OVERRIDES, train_tiny
from faultkit import disk_full_after
from toy import write_toy_corpus

from stemjepa.cli.main import main
from stemjepa.config import load_config
from stemjepa.errors import CheckpointError, ConfigError, DataError, StemJepaError
from stemjepa.models.checkpoint import load_model, read_checkpoint
from stemjepa.training.fit import FitOptions, fit

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")


@pytest.fixture(scope="module")
def finished_run(toy_corpus, tmp_path_factory) -> Path:
    """A finished 2-step run; tests work on copies of it."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train_tiny("tiny_phase1", toy_corpus, run, steps=2)
    return run


def copy_run(finished_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    return run


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def small_corpus(tmp_path: Path) -> Path:
    return write_toy_corpus(tmp_path / "data", n_songs=2, seconds=3.0)


def options(data, out, **kw) -> FitOptions:
    return FitOptions(data=str(data), out=str(out), device=kw.pop("device", "cpu"), progress=False, **kw)


def cfg(steps: int = 1):
    return load_config("tiny_phase1", TINY_OVERRIDES + [f"max_steps={steps}"])


# --- defect 1: --overwrite deleted the old run before checking the new inputs ------------------------------------------
def test_overwrite_checks_inputs_before_removing_the_old_run(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    before = tree(run)
    data = small_corpus(tmp_path)
    with pytest.raises(DataError, match="training data not found"):
        fit(cfg(), options(tmp_path / "nonexistent", run, overwrite=True))
    with pytest.raises(CheckpointError, match="not found"):
        fit(cfg(), options(data, run, overwrite=True, init=str(tmp_path / "missing.ckpt")))
    if not torch.cuda.is_available():
        with pytest.raises(StemJepaError, match="no CUDA GPU"):
            fit(cfg(), options(data, run, overwrite=True, device="cuda"))
    assert tree(run) == before  # the finished run is untouched
    assert not (data / ".stemjepa_cache").exists()  # and the refusals came before any data work


# --- defect 2: fit wrote into any non-empty folder; --overwrite removed files that were not ours --------------------------
def test_fit_refuses_a_folder_that_is_not_a_run(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "config.json").write_text('{"my": "settings"}')
    with pytest.raises(StemJepaError, match="not a stemjepa run"):
        fit(cfg(), options(small_corpus(tmp_path), user))
    assert tree(user) == {"config.json": b'{"my": "settings"}'}


def test_overwrite_removes_only_what_a_run_wrote(finished_run, toy_corpus, tmp_path):
    run = copy_run(finished_run, tmp_path)
    (run / "logs" / "mylog.txt").write_text("mine")
    (run / "notes.txt").write_text("mine too")
    old = (run / "checkpoints" / "last.ckpt").read_bytes()
    fit(cfg(1), options(toy_corpus, run, overwrite=True))
    assert (run / "logs" / "mylog.txt").read_text() == "mine" and (run / "notes.txt").read_text() == "mine too"
    assert (run / "checkpoints" / "last.ckpt").read_bytes() != old
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 1


# --- defect 7: a full disk during fit and embed --out ------------------------------------------------------------------
def test_disk_full_while_saving_a_checkpoint_keeps_the_last_one_whole(finished_run, toy_corpus, tmp_path, monkeypatch):
    run = copy_run(finished_run, tmp_path)
    monkeypatch.setattr(torch, "save", disk_full_after(torch.save))
    with pytest.raises(StemJepaError, match="disk full"):
        fit(cfg(3), options(toy_corpus, run, resume=True, max_steps=3))
    monkeypatch.undo()
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 2  # still the whole old checkpoint
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_disk_full_during_embed_out_leaves_no_file(tiny_checkpoint, toy_corpus, tmp_path, monkeypatch, capsys):
    wav = next(toy_corpus.glob("*/bass.wav"))
    out = tmp_path / "emb.npy"
    argv = ["embed", str(wav), "--checkpoint", str(tiny_checkpoint), "--out", str(out)]
    monkeypatch.setattr(np, "save", disk_full_after(np.save))
    assert main(argv) == 2
    assert "disk full" in capsys.readouterr().err
    monkeypatch.undo()
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))
    assert main(argv) == 0 and np.load(out).shape[0] == 1  # the re-run is not refused


# --- defect 8: NaN weights, silent and too short files in `embed`, a truncated WAV --------------------------------------
def test_nan_weights_are_refused(tiny_checkpoint, toy_corpus, tmp_path, capsys):
    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    key = next(k for k, v in ckpt["state_dict"].items() if k.startswith("model.") and v.is_floating_point())
    ckpt["state_dict"][key] = torch.full_like(ckpt["state_dict"][key], float("nan"))
    bad = tmp_path / "nan.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match="NaN"):
        load_model(bad, device="cpu")
    assert main(["embed", str(next(toy_corpus.glob("*/bass.wav"))), "--checkpoint", str(bad)]) == 2
    assert "NaN" in capsys.readouterr().err


def test_embed_refuses_silent_and_too_short_files(tiny_checkpoint, toy_corpus, tmp_path, capsys):
    zeros, blip = tmp_path / "zeros.wav", tmp_path / "blip.wav"
    sf.write(zeros, np.zeros(16000, np.float32), 16000)
    sf.write(blip, 0.3 * np.ones(160, np.float32), 16000)  # 0.01 s
    good = next(toy_corpus.glob("*/bass.wav"))
    assert main(["embed", str(good), str(zeros), str(blip), "--checkpoint", str(tiny_checkpoint)]) == 1
    out = capsys.readouterr().out
    assert "zeros.wav: silent" in out and "blip.wav: too short" in out and out.count("\t[") == 1


def test_truncated_wav_is_read_with_a_warning(tmp_path, caplog):
    from stemjepa.audio.io import load_audio

    full = tmp_path / "full.wav"
    sf.write(full, 0.3 * np.ones(16000 * 4, np.float32), 16000, subtype="PCM_16")
    cut = tmp_path / "cut.wav"
    cut.write_bytes(full.read_bytes()[: 44 + 2 * 16000 * 2])  # header says 4 s, 2 s remain
    assert len(load_audio(cut)) == 2 * 16000
    assert "truncated" in caplog.text and "4.00 s" in caplog.text and "cut.wav" in caplog.text


# --- defect 9: bad option values are refused at parse time, the device before the data ---------------------------------
def test_bad_option_values_are_refused_before_any_work(tmp_path, capsys):
    data = small_corpus(tmp_path)
    base = ["fit", "--config", "tiny_phase1", "--data", str(data), "--out", str(tmp_path / "run")]
    for override, key in (("optim.lr=-1", "optim.lr"), ("data.num_workers=-1", "data.num_workers")):
        assert main(base + [override]) == 2
        err = capsys.readouterr().err
        assert key in err and "Traceback" not in err
    for flag in (["--max-steps", "-3"], ["--batch-size", "0"], ["--devices", "0"]):
        with pytest.raises(SystemExit) as exc:
            main(base + flag)
        assert exc.value.code == 2 and "positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["embed", "x.wav", "--checkpoint", "c.ckpt", "--batch-size", "0"])
    with pytest.raises(ConfigError):
        load_config("tiny", ["optim.betas=[0.9, 1.5]"])
    if not torch.cuda.is_available():
        assert main(base + ["--device", "cuda"]) == 2 and "no CUDA GPU" in capsys.readouterr().err
    assert not (data / ".stemjepa_cache").exists() and not (tmp_path / "run").exists()


def test_crafted_checkpoints_are_refused_with_a_message(tiny_checkpoint, tmp_path):
    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    for name, entry, match in (("version", {**ckpt["stemjepa"], "format_version": "1"}, "not an integer"),
                               ("entry", ["not", "a", "dict"], "not a mapping")):
        path = tmp_path / f"{name}.ckpt"
        torch.save({**ckpt, "stemjepa": entry}, path)
        with pytest.raises(CheckpointError, match=match):
            read_checkpoint(path)


# --- defect 10: misleading messages --------------------------------------------------------------------------------
def test_missing_init_is_reported_before_the_data_is_decoded(tmp_path):
    data = small_corpus(tmp_path)
    with pytest.raises(CheckpointError, match="missing.ckpt: checkpoint not found"):
        fit(load_config("tiny", TINY_OVERRIDES + ["max_steps=1"]),
            options(data, tmp_path / "run", init=str(tmp_path / "missing.ckpt")))
    assert not (data / ".stemjepa_cache").exists()


def test_data_that_is_a_file_or_an_unfinished_cache_is_named_as_such(tmp_path):
    afile = tmp_path / "data.txt"
    afile.write_text("x")
    with pytest.raises(DataError, match="is a file"):
        fit(cfg(), options(afile, tmp_path / "run"))
    unfinished = tmp_path / "cache"
    (unfinished / "songs").mkdir(parents=True)
    (unfinished / "songs" / "song-1234.json").write_text("{}")
    with pytest.raises(DataError, match="unfinished training cache.*stemjepa prepare"):
        fit(cfg(), options(unfinished, tmp_path / "run"))


class _Evil:
    def __init__(self, sentinel: str):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def test_unsafe_checkpoint_refusal_is_in_our_words(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"stemjepa": {}, "state_dict": {}, "x": _Evil(str(sentinel))}, path)
    with pytest.raises(CheckpointError) as exc:
        read_checkpoint(path)
    message = str(exc.value)
    assert "can run arbitrary code" in message and "trust" in message and "weights_only=False" not in message
    assert "posix.system" in message and not sentinel.exists()
