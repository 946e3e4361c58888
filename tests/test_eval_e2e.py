"""End to end with real tiny checkpoints on the synthetic toy corpus: `stemjepa eval retrieval` writes every output with
values in range, the cache makes a re-run skip encoding, and a contrastive-only checkpoint is evaluated too."""
import json

import pytest

from stemjepa.cli.main import main

pytestmark = pytest.mark.slow

OUTPUTS = ("metrics.json", "rankings.csv", "analysis.csv", "fig2.png", "report.md")


def _check_metrics(m: dict, n_pool: int) -> None:
    assert m["n_pool"] == n_pool and m["n_queries"] == n_pool - m["n_silent_mix_excluded"]
    for k in ("R@1", "R@5", "R@10", "top1_k64"):
        assert 0.0 <= m[k] <= 100.0, k
    assert m["R@1"] <= m["R@5"] <= m["R@10"]
    assert 100.0 / n_pool <= m["norm_rank_median"] <= 100.0
    assert 100.0 / n_pool <= m["norm_rank_mean"] <= 100.0


def test_eval_retrieval_with_tiny_checkpoint(tiny_checkpoint, toy_corpus, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["eval", "retrieval", "--checkpoint", str(tiny_checkpoint), "--dataset", "folder", "--root", str(toy_corpus),
            "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    for f in OUTPUTS:
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    m = json.loads((out / "metrics.json").read_text())
    _check_metrics(m, n_pool=16)
    assert m["n_silent_excluded"] == 0
    assert m["has_predictor"] is True and m["n_songs_from_cache"] == 0
    # the checkpoint records its 4 training songs, which are the evaluated ones: reported, and refused with --strict
    assert m["training_overlap"]["n_songs"] == 4 and m["chance"]["R@1"] == pytest.approx(100 / 16)
    # ranked by the distance the (centred) tiny model was trained for, and the report says so
    assert m["distance"] == "cosine" and "the ranking this model was trained for" in m["distance_reason"]
    assert main(argv + ["--strict", "--overwrite"]) == 2
    assert (out / "fig2.png").read_bytes()[:4] == b"\x89PNG"
    assert len((out / "rankings.csv").read_text().splitlines()) == 17
    # a re-run (e.g. after changing the report) reads every embedding from the cache
    assert main(argv) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["n_songs_from_cache"] == 4 and again["R@1"] == m["R@1"] and again["norm_rank_mean"] == m["norm_rank_mean"]
    capsys.readouterr()
    assert main(["eval", "compare", str(out), "--time"]) == 0
    assert "time (s)" in capsys.readouterr().out


def test_eval_retrieval_contrastive_checkpoint_uses_the_mix(tiny_phase1_checkpoint, toy_corpus, tmp_path):
    from stemjepa.data.multitrack import read_folder
    from stemjepa.evaluation import RetrievalProtocol, evaluate_retrieval

    songs, _ = read_folder(toy_corpus)
    m = evaluate_retrieval(str(tiny_phase1_checkpoint), songs, RetrievalProtocol(label_level="coarse"), tmp_path / "p1",
                           device="cpu", progress=False)
    _check_metrics(m, n_pool=16)
    assert m["has_predictor"] is False


def test_eval_on_held_out_synthetic_moisesdb_fine_and_coarse(tiny_checkpoint, tmp_path, capsys):
    """Held-out songs from the synthetic generator in the MoisesDB layout: fine (trackType) vs coarse (stemName) runs,
    sharing one embedding cache, then compared side by side."""
    from stemjepa.data.synth import synthesize_corpus

    root = tmp_path / "synth"
    synthesize_corpus(root, n_songs=2, seconds=4, seed=123, layout="moisesdb", progress=False)
    common = ["--checkpoint", str(tiny_checkpoint), "--dataset", "moisesdb", "--root", str(root), "--device", "cpu",
              "--cache-dir", str(tmp_path / "cache")]
    runs = {}
    for level in ("fine", "coarse"):
        runs[level] = tmp_path / level
        assert main(["eval", "retrieval", *common, "--conditioning", level, "--out", str(runs[level])]) == 0
    fine = json.loads((runs["fine"] / "metrics.json").read_text())
    coarse = json.loads((runs["coarse"] / "metrics.json").read_text())
    assert fine["n_pool"] == coarse["n_pool"] >= 8 and fine["split"] == "all"
    _check_metrics(fine, fine["n_pool"])
    _check_metrics(coarse, coarse["n_pool"])
    labels_fine = {r.split(",")[0] for r in (runs["fine"] / "analysis.csv").read_text().splitlines()[1:]}
    labels_coarse = {r.split(",")[0] for r in (runs["coarse"] / "analysis.csv").read_text().splitlines()[1:]}
    assert len(labels_coarse) < len(labels_fine)  # categories group instruments
    assert (runs["fine"] / "fig2.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["eval", "compare", str(runs["fine"]), str(runs["coarse"])]) == 0
    table = capsys.readouterr().out
    # the tiny model is centred: ranked by cosine, its own distance, which the column names say
    assert "moisesdb fine [cosine]: R@1" in table and "moisesdb coarse [cosine]: R@1" in table
