"""The stage runner (stemjepa.training.stage) that the demo and the benchmarks share: a finished run of the same settings
is reused, a run of other settings is trained again, an interrupted one resumes, a run without records is never wiped,
and a phase 2 is another run when the phase 1 it starts from was trained again."""
import json

import lightning as L
import pytest
from conftest import TINY_OVERRIDES

from stemjepa.models.checkpoint import read_checkpoint
from stemjepa.training.stage import train_stage

pytestmark = pytest.mark.slow


class Crash(RuntimeError):
    pass


class CrashAt(L.Callback):
    """Fails the training after `step` steps, as a killed machine would (the checkpoint of that step is written)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step >= self.step:
            raise Crash


def overrides(steps=4, *extra):
    return [*TINY_OVERRIDES, f"max_steps={steps}", "log_every=1", "checkpoint_every=2", *extra]


def quiet(msg):
    pass


def test_finished_run_of_the_same_settings_is_reused_and_other_settings_train_again(toy_corpus, tmp_path):
    run = tmp_path / "p1"
    first = train_stage(run, "tiny_phase1", overrides(), toy_corpus, device="cpu", log=quiet)
    assert not first.reused and first.record["steps_reached"] == 4 and (run / "stage.json").is_file()
    again = train_stage(run, "tiny_phase1", overrides(), toy_corpus, device="cpu", log=quiet)
    assert again.reused and again.checkpoint == first.checkpoint and again.record["digest"] == first.record["digest"]
    assert len(list((run / "logs").glob("version_*"))) == 1  # nothing trained
    other = train_stage(run, "tiny_phase1", overrides(3), toy_corpus, device="cpu", log=quiet)
    assert not other.reused and not other.record["resumed"] and other.record["steps_reached"] == 3
    assert other.record["digest"] != first.record["digest"]


def test_interrupted_run_resumes_from_its_last_checkpoint(toy_corpus, tmp_path):
    run = tmp_path / "p1"
    with pytest.raises(Crash):
        train_stage(run, "tiny_phase1", overrides(6), toy_corpus, device="cpu", log=quiet, callbacks=[CrashAt(2)])
    assert not (run / "stage.json").exists() and read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 2
    started = json.loads((tmp_path / "p1.started.json").read_text())
    resumed = train_stage(run, "tiny_phase1", overrides(6), toy_corpus, device="cpu", log=quiet)
    assert resumed.record["resumed"] and not resumed.reused
    assert read_checkpoint(resumed.checkpoint)["global_step"] == 6
    assert resumed.seconds >= started["seconds"]  # the time of both starts
    assert len(list((run / "logs").glob("version_*"))) == 2  # the interrupted start's log is kept


def test_run_without_records_is_resumed_not_wiped(toy_corpus, tmp_path):
    from stemjepa.config import load_config
    from stemjepa.training.fit import FitOptions, fit

    run = tmp_path / "mine"
    with pytest.raises(Crash):  # a run of the user's own `stemjepa fit`, interrupted
        fit(load_config("tiny_phase1", overrides(6)), FitOptions(data=str(toy_corpus), out=str(run), device="cpu",
                                                                 progress=False, callbacks=[CrashAt(2)]))
    stage = train_stage(run, "tiny_phase1", overrides(6), toy_corpus, device="cpu", log=quiet)
    assert stage.record["resumed"] and len(list((run / "logs").glob("version_*"))) == 2


def test_phase2_is_another_run_when_its_phase1_was_trained_again(toy_corpus, tmp_path):
    p1 = train_stage(tmp_path / "p1", "tiny_phase1", overrides(2), toy_corpus, device="cpu", log=quiet)
    p2 = train_stage(tmp_path / "p2", "tiny", overrides(2), toy_corpus, p1.checkpoint, device="cpu", log=quiet)
    assert p2.record["spec"]["init_identity"] == f"stage:{p1.record['digest']}"
    assert train_stage(tmp_path / "p2", "tiny", overrides(2), toy_corpus, p1.checkpoint, device="cpu", log=quiet).reused
    train_stage(tmp_path / "p1", "tiny_phase1", overrides(3), toy_corpus, device="cpu", log=quiet)  # same path, retrained
    p2b = train_stage(tmp_path / "p2", "tiny", overrides(2), toy_corpus, p1.checkpoint, device="cpu", log=quiet)
    assert not p2b.reused
