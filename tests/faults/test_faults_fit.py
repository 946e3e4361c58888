"""Defects 1, 2, 7 (fit, embed --out), 8 (model outputs, degenerate audio), 9 and 10 of the fault matrix: `fit` with bad
inputs, options and checkpoints; a full disk while training or saving embeddings."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
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


# --- issue 23: the Lightning `weights_only` line; a full disk anywhere in the run folder -------------------------------
# `stemjepa ARGS` in a child process whose disk fills under RUN/SUB after BUDGET bytes: every write there (ours,
# Lightning's CSV logger, TensorBoard's writer thread, torch's checkpoint writer) fails as a full disk does (ENOSPC).
_FULL_DISK = r"""
import builtins, errno, io, os, sys
folder, budget = os.path.abspath(sys.argv[1]), int(sys.argv[2])
left = [budget]
real_open = builtins.open

class Full:
    def __init__(self, fh):
        self._fh = fh
    def write(self, b):
        if len(b) > left[0]:
            left[0] = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        left[0] -= len(b)
        return self._fh.write(b)
    def __getattr__(self, k):
        return getattr(self._fh, k)
    def __enter__(self):
        return self
    def __exit__(self, *a):
        return self._fh.__exit__(*a)

def fake_open(file, mode="r", *a, **k):
    fh = real_open(file, mode, *a, **k)
    if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+") \
            and os.path.abspath(os.fsdecode(file)).startswith(folder):
        return Full(fh)
    return fh

builtins.open = io.open = fake_open
from stemjepa.cli.main import main
sys.exit(main(sys.argv[3:]))
"""


def fit_argv(data, run, steps: int = 2, progress: bool = False) -> list[str]:
    return ["fit", "--config", "tiny_phase1", "--data", str(data), "--out", str(run), "--max-steps", str(steps),
            "--batch-size", "4", "--workers", "0", "--device", "cpu", "model.encoder.depth=2", "log_every=1",
            *([] if progress else ["--no-progress"])]


def run_cli(argv, full_under=None, budget: int = 0) -> subprocess.CompletedProcess:
    code = _FULL_DISK if full_under else "import sys; from stemjepa.cli.main import main; sys.exit(main(sys.argv[1:]))"
    extra = [str(full_under), str(budget)] if full_under else []
    return subprocess.run([sys.executable, "-c", code, *extra, *argv], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    data = write_toy_corpus(tmp_path_factory.mktemp("fit_data") / "data", n_songs=2, seconds=3.0)
    cache = data.parent / "cache"
    assert main(["prepare", "--dataset", "folder", "--root", str(data), "--out", str(cache), "--no-progress"]) == 0
    return cache


def test_fit_output_has_no_lightning_weights_only_line(prepared, tmp_path):
    """Every fit ended with Lightning's INFO "`weights_only` was not set, defaulting to `False`" (about *saving* the
    optimizer state), which read as if checkpoints were loaded unsafely."""
    done = run_cli(fit_argv(prepared, tmp_path / "run", progress=True))
    assert done.returncode == 0, done.stderr[-2000:]
    output = done.stdout + done.stderr
    assert "checkpoint:" in done.stdout and "training verdict" in done.stdout
    assert "weights_only" not in output and "Traceback" not in output
    # the other misleading lines of a short run: epochs (training is counted in steps), the logger's version in the
    # bar, "NOT LEARNING" after 2 steps
    assert "training steps" in output and "Epoch 0" not in output and "v_num" not in output
    assert "too early to judge after 2 steps" in done.stdout and "NOT LEARNING" not in output
    resumed = run_cli(fit_argv(prepared, tmp_path / "run", steps=3) + ["--resume"])
    assert resumed.returncode == 0 and "weights_only" not in resumed.stdout + resumed.stderr


@pytest.mark.parametrize("sub,budget", [("checkpoints", 0), ("checkpoints", 6_000_000), ("tensorboard", 100), ("logs", 0)],
                         ids=["first-checkpoint", "second-checkpoint", "tensorboard-writer-thread", "csv-log"])
def test_disk_full_during_fit_is_one_line_and_leaves_the_run_resumable(sub, budget, prepared, tmp_path):
    """A full disk while fit writes a checkpoint (torch's zip writer raised a RuntimeError over the OSError) or a log
    (TensorBoard's writer thread printed its traceback): exit 2, one line naming the path, no partial checkpoint or
    temp file, and the same command (or --resume) goes on once there is space."""
    run = tmp_path / "run"
    done = run_cli(fit_argv(prepared, run), full_under=run / sub, budget=budget)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Exception" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "disk full" in errors[0] and str(run) in errors[0], done.stderr[-2000:]
    ckpts = sorted((run / "checkpoints").glob("*")) if (run / "checkpoints").is_dir() else []
    assert not [p for p in ckpts if p.name.endswith(".tmp")]
    for p in ckpts:  # whatever checkpoint is there is whole
        assert read_checkpoint(p)["global_step"] == 2
    again = run_cli(fit_argv(prepared, run, steps=3) + (["--resume"] if ckpts else []))
    assert again.returncode == 0, again.stderr[-2000:]
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 3


def test_resume_from_a_checkpoint_describing_a_huge_model_is_refused_before_building(finished_run, toy_corpus, tmp_path):
    run = copy_run(finished_run, tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    ckpt["stemjepa"]["config"]["model"]["encoder"].update(embed_dim=4096, depth=128, num_heads=16)
    torch.save(ckpt, last)
    with pytest.raises(CheckpointError, match=f"^{last}: config inside the file is refused: the model config describes"):
        fit(cfg(3), options(toy_corpus, run, resume=True, max_steps=3))


def test_integer_weights_in_an_init_checkpoint_are_refused(tiny_phase1_checkpoint, tmp_path):
    ckpt = torch.load(tiny_phase1_checkpoint, map_location="cpu", weights_only=True)
    key = "model.encoder.patch_embed.weight"
    ckpt["state_dict"][key] = ckpt["state_dict"][key].to(torch.int16)
    bad = tmp_path / "int.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match="tensor encoder.patch_embed.weight is int16: only floating-point"):
        fit(load_config("tiny", TINY_OVERRIDES + ["max_steps=1"]),
            options(small_corpus(tmp_path), tmp_path / "run", init=str(bad)))
