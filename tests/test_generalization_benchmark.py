"""benchmarks/generalization.py at the tiny size: its soundfont families, the pooled figures, and the `models` mode end to
end on a held-out pool rendered with the soundfont every machine has (TimGM6mb, from pretty_midi) and production chains."""
import json
from pathlib import Path

import pytest
from conftest import load_benchmark

pytestmark = pytest.mark.slow


def test_soundfont_families_hold_out_lossy_and_mono_copies_together():
    g = load_benchmark("generalization")
    assert g.family(Path("/x/FluidR3_GM.sf2")) == g.family(Path("/x/FluidR3Mono_GM.sf3")) == "fluidr3"
    assert g.family(Path("/x/MuseScore_General_Lite.sf3")) == g.family(Path("/x/MuseScore_General_Full.sf3")) == "musescore"
    assert g.family(Path("/x/OPL-3_FM_128M.sf2")) == "opl3-fm" and g.family(Path("/x/sf_GMbank.sf2")) == "csound-gmbank"
    assert g.family(Path("/x/Black_Pearl_4_LV2.sf2")) is None  # a drum kit, not a General-MIDI bank
    assert set(g.DEFAULT_TEST_FAMILIES) <= {name for name, _ in g.FAMILIES}


def test_pooled_figures_weight_each_pool_by_its_queries():
    g = load_benchmark("generalization")
    a = {"n_pool": 10, "n_queries": 10, **{p: {k: 10.0 for k in g.METRICS} for p in ("cosine", "l2", "chance")}}
    b = {"n_pool": 30, "n_queries": 30, **{p: {k: 50.0 for k in g.METRICS} for p in ("cosine", "l2", "chance")}}
    m = g.mean_row([a, b])
    assert m["n_queries"] == 40 and m["cosine"]["R@10"] == pytest.approx(40.0) and m["n_pool"] == 20


def test_models_mode_renders_a_held_out_pool_and_reports_figures_next_to_chance(tiny_checkpoint, tmp_path, capsys):
    pytest.importorskip("pedalboard")
    g = load_benchmark("generalization")
    out = tmp_path / "gen"
    argv = ["--out", str(out), "--test-families", "timgm6mb", "--test-songs", "2", "--test-seconds", "6", "--jobs", "1",
            "models", str(tiny_checkpoint)]
    assert g.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| model | test pool | stems |" in printed and "timgm6mb" in printed
    rows = json.loads(next((out / "tables").glob("models-*.json")).read_text())
    (row,) = rows
    assert row["pool"] == "timgm6mb" and row["n_pool"] >= 4
    assert row["chance"]["R@1"] == pytest.approx(100 / row["n_pool"], abs=0.01)
    for distance in ("cosine", "l2"):
        assert 0 <= row[distance]["R@1"] <= row[distance]["R@10"] <= 100
    songs = [json.loads(p.read_text()) for p in out.glob("data/parts/*/song_*/stems.json")]
    assert len(songs) == 2 and all(s.get("production") == "full" for s in songs)
    held_out = {n.lower() for n in g.HELD_OUT_INSTRUMENTS}
    assert all(any(held_out & {x.lower() for x in st["labels"]} for st in s["stems"]) for s in songs)
    assert g.main(argv) == 0  # a second run reuses the renders and the evaluation


def test_curve_of_a_fine_tuning_run_starts_with_its_init_at_minute_zero(tmp_path):
    g = load_benchmark("generalization")
    ckpts = tmp_path / "phase2" / "checkpoints"
    ckpts.mkdir(parents=True)
    for step in (100, 200, 400):
        (ckpts / f"step{step:07d}.ckpt").write_bytes(b"")
    p2 = {"seconds": 240.0, "steps_reached": 400, "spec": {"init": "stemjepa-small-synth-v3"}}
    points = g.curve_points(tmp_path, None, p2)
    assert points[0] == ("init", 0.0, Path("stemjepa-small-synth-v3"))
    assert [(ph, m) for ph, m, _ in points[1:]] == [("phase2", 1.0), ("phase2", 2.0), ("phase2", 4.0)]


def test_plot_reference_lines_come_from_the_built_in_cards():
    g = load_benchmark("generalization")
    refs = dict(g.card_references(set()))
    card = json.loads((Path(g.REPO) / "src/stemjepa/weights/stemjepa-small-synth-v4.json").read_text())
    assert refs["stemjepa-small-synth-v4"] == card["evaluation"]["generalization"]["all"]["cosine"]["R@10"]
    assert "stemjepa-small-synth-v4" not in dict(g.card_references({"stemjepa-small-synth-v4"}))
