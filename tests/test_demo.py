"""The main job with a tiny budget: every artefact is produced, and a second run reuses them."""
import json

from stemjepa.demo import DemoConfig, run_demo


def test_demo_produces_every_artefact_and_reruns_without_regenerating(tmp_path, capsys):
    cfg = DemoConfig(out=tmp_path / "demo", minutes=1.0, train_songs=6, test_songs=3, seconds=8.0, jobs=1,
                     phase1_steps=3, phase2_steps=3, batch_size=4, progress=False)
    result = run_demo(cfg)
    out = tmp_path / "demo"
    for name in ["report.html", "report.md", "summary.json", "training_curves.png", "fig2_full_model_fine.png"]:
        assert (out / name).is_file(), name
    for run in ["phase1", "phase2"]:
        assert (out / "runs" / run / "checkpoints" / "last.ckpt").is_file()
    for name in ["contrastive_baseline-fine", "contrastive_baseline-coarse", "full_model-fine", "full_model-coarse",
                 "built-in_model_as_is-fine"]:  # fine-tuned from the built-in model, which is measured as it is too
        metrics = json.loads((out / "eval" / name / "metrics.json").read_text())
        assert 0 <= metrics["R@1"] <= metrics["R@5"] <= metrics["R@10"] <= 100
    assert (out / "index").is_dir() and (out / ".stemjepa-demo.json").is_file()  # marks the folder as the demo's
    assert result["examples"] and all(len(ex["results"]) >= 1 for ex in result["examples"])
    assert all((out / "queries" / ex["mix"].split("/")[-1]).is_file() for ex in result["examples"])
    page = (out / "report.html").read_text()
    assert "<audio controls" in page and "R@1" in page and "fig2_full_model_fine.png" in page
    printed = capsys.readouterr().out
    assert "full model" in printed and "contrastive baseline" in printed and "report:" in printed

    # a second run regenerates nothing: corpus and checkpoints are reused
    mtime = (out / "runs" / "phase2" / "checkpoints" / "last.ckpt").stat().st_mtime
    run_demo(DemoConfig(out=out, minutes=1.0, train_songs=6, test_songs=3, seconds=8.0, jobs=1, phase1_steps=3,
                        phase2_steps=3, batch_size=4, progress=False))
    assert (out / "runs" / "phase2" / "checkpoints" / "last.ckpt").stat().st_mtime == mtime
    assert "reusing" in capsys.readouterr().out


def test_demo_from_scratch_trains_phase2_from_phase1(tmp_path):
    """--init scratch: the tiny configs from random weights, phase 2 initialised from phase 1 (the paper's order)."""
    from stemjepa.config import load_config
    from stemjepa.demo.pipeline import phase_plan

    shared, s1, s2 = phase_plan(DemoConfig(init="scratch"))
    assert shared == [] and s1 == s2 == 300
    shared, s1, s2 = phase_plan(DemoConfig())  # the built-in model's architecture and the fine-tuning schedule
    assert s1 == s2 == 150 and load_config("tiny", shared).model.encoder.embed_dim == 256
    cfg = DemoConfig(out=tmp_path / "demo", minutes=1.0, train_songs=4, test_songs=2, seconds=8.0, jobs=1, init="scratch",
                     phase1_steps=2, phase2_steps=2, batch_size=4, progress=False)
    run_demo(cfg)
    stage = json.loads((tmp_path / "demo" / "runs" / "phase2" / "stage.json").read_text())
    assert stage["spec"]["init"].endswith("phase1/checkpoints/last.ckpt")
    assert not (tmp_path / "demo" / "eval" / "built-in_model_as_is-fine").exists()
