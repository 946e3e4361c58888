"""The demo's faults: a report stage that crashed on short training logs, and an --out folder whose files (the user's
report.md, summary.json) the demo overwrote. Each test builds its own tiny inputs; no demo is run in full here."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from stemjepa.errors import StemJepaError


def _log(run: Path, n: int) -> None:
    folder = run / "logs" / "version_0"
    folder.mkdir(parents=True)
    with open(folder / "metrics.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["step", "train/loss", "train/top1"])
        w.writeheader()
        w.writerows({"step": 5 * i, "train/loss": 3.0 - 0.1 * i, "train/top1": 0.2 + 0.05 * i} for i in range(n))


@pytest.mark.parametrize("n_points", [0, 1, 2, 4, 5, 9])
def test_demo_report_plots_training_curves_with_any_number_of_logged_points(tmp_path, n_points):
    from stemjepa.demo.report import plot_curves, running_mean

    runs = {"phase 1": tmp_path / "p1", "phase 2": tmp_path / "p2"}
    _log(runs["phase 1"], n_points)
    _log(runs["phase 2"], 1)
    plot_curves(runs, tmp_path / "curves.png", batch_size=4)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    values = 0.2 + 0.05 * np.arange(n_points)
    smooth = running_mean(values, 5)
    assert smooth.shape == values.shape
    assert np.allclose(running_mean(np.full(n_points, 0.7), 5), 0.7)  # the ends are not pulled towards 0
    if n_points:
        assert values.min() - 1e-9 <= smooth.min() and smooth.max() <= values.max() + 1e-9


def _user_folder(tmp_path: Path) -> tuple[Path, dict]:
    out = tmp_path / "mine"
    out.mkdir()
    files = {"report.md": b"# my own report\n", "summary.json": b'{"mine": true}\n'}
    for name, data in files.items():
        (out / name).write_bytes(data)
    return out, files


def test_demo_out_holding_a_users_report_is_refused_and_left_byte_identical(tmp_path, capsys):
    from stemjepa.cli.main import main
    from stemjepa.demo import DemoConfig, run_demo

    out, files = _user_folder(tmp_path)
    with pytest.raises(StemJepaError, match="not a stemjepa demo output.*nothing was changed"):
        run_demo(DemoConfig(out=out, minutes=1.0, progress=False))
    assert main(["demo", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{out}: folder is not empty" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == sorted(files)  # no marker, no corpus: refused before any work
    assert all((out / name).read_bytes() == data for name, data in files.items())
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StemJepaError, match="is not a folder"):
        run_demo(DemoConfig(out=tmp_path / "afile", progress=False))


class _Started(Exception):
    """Raised by the stand-in corpus stage: the demo got past its --out check and started working."""


def test_demo_reruns_into_its_own_output_folder(tmp_path, monkeypatch):
    import stemjepa.data.synth as synth
    from stemjepa.demo import DemoConfig, run_demo
    from stemjepa.demo.pipeline import MARKER

    def synthesize_corpus(folder, *args, **kwargs):
        Path(folder).mkdir(parents=True, exist_ok=True)
        raise _Started

    monkeypatch.setattr(synth, "synthesize_corpus", synthesize_corpus)
    out = tmp_path / "demo"
    for _ in range(2):  # a new folder is claimed (marker first), then the demo's own folder is accepted again
        with pytest.raises(_Started):
            run_demo(DemoConfig(out=out, progress=False))
        assert (out / MARKER).is_file()
    (out / "report.md").write_text("written by the demo")  # the demo's own report may be replaced by a re-run
    with pytest.raises(_Started):
        run_demo(DemoConfig(out=out, progress=False))

    older = tmp_path / "older_demo"  # written by a demo from before the marker: only the demo's entries, with its corpus
    (older / "data" / "train").mkdir(parents=True)
    (older / "report.md").write_text("old demo report")
    with pytest.raises(_Started):
        run_demo(DemoConfig(out=older, progress=False))
    assert (older / MARKER).is_file()


# --- misleading messages: help texts, notes and summaries that said something the code does not do -------------------
def _help(capsys, *argv) -> str:
    from stemjepa.cli.main import main

    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_help_texts_state_what_the_code_does(capsys):
    prepare = _help(capsys, "prepare")
    assert "default: None" not in prepare and prepare.count("(default:") == 2  # --split and --jobs, each once
    assert "songs whose files changed are prepared again" in prepare
    index = _help(capsys, "index")
    assert "--out INDEX_DIR" in index and "exit status is then 1" in index and "ivfpq needs 256 files" in index
    retrieval = _help(capsys, "eval", "retrieval")
    assert "validation" in retrieval and "(default 10)" in retrieval and "(default -60)" in retrieval
    demo = _help(capsys, "demo")
    assert "is refused" in demo and "a small budget is exceeded" in demo and "(default: 2)" in demo


@pytest.mark.parametrize("argv", [
    ["demo", "--minutes", "0"], ["demo", "--seconds", "nan"], ["demo", "--jobs", "0"],
    ["prepare", "--dataset", "folder", "--root", "r", "--out", "o", "--jobs", "0"],
    ["eval", "retrieval", "--dataset", "folder", "--root", "r", "--out", "o", "--limit", "0"],
    ["eval", "retrieval", "--dataset", "folder", "--root", "r", "--out", "o", "--k64-draws", "-1"],
])
def test_out_of_range_options_are_refused_when_parsed_not_silently_corrected(argv, capsys):
    from stemjepa.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and "Traceback" not in capsys.readouterr().err


def _metrics(name: str, ref: str) -> dict:
    chance = {"R@1": 5.0, "R@5": 25.0, "R@10": 50.0, "norm_rank_mean": 50.0, "norm_rank_median": 50.0}
    return {"name": name, "R@1": 10.0, "R@5": 50.0, "R@10": 90.0, "norm_rank_mean": 10.0, "norm_rank_median": 5.0,
            "n_pool": 20, "n_songs": 4, "n_queries": 20, "chance": chance, "distance": "cosine", "reference_encoder": ref,
            "dataset": "folder", "split": "held-out", "label_level": "fine", "top1_k64": None,
            "pool_diagnostics": {"n": 20, "median_cosine": 0.1, "spread": 0.9, "rankme": 9.0, "collapsed": False}}


def test_demo_and_compare_notes_name_each_models_reference_encoder(tmp_path):
    import json

    from stemjepa.demo.report import shared_note
    from stemjepa.evaluation.report import compare_table

    metrics = {("contrastive baseline", "fine"): _metrics("contrastive baseline", "encoder"),
               ("full model", "fine"): _metrics("full model", "target")}
    note = shared_note(metrics)
    assert "contrastive baseline from the model's only encoder (phase 1)" in note and "full model from the target" in note
    assert "RankMe" not in note  # one model's diagnostics are not printed as if they were everyone's
    runs = []
    for (name, _), m in metrics.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(m))
        runs.append(tmp_path / name)
    table = compare_table(runs)
    assert "encoder encoder" not in table
    assert "reference encoders contrastive baseline: the only one (phase 1), full model: target" in table


def test_index_summary_lists_every_extension_it_looked_for(tmp_path):
    from stemjepa.audio.io import AUDIO_EXTENSIONS
    from stemjepa.search.build import IndexSummary

    text = IndexSummary(index=str(tmp_path)).text()
    assert all(ext.lstrip(".") in text for ext in AUDIO_EXTENSIONS)
