"""The demo's report without running the demo: the HTML template ships with the package and every field is filled."""
import json
from importlib.resources import files

from stemjepa.demo import DemoConfig
from stemjepa.demo.report import html_page, print_summary, summary_metrics, write_reports
from stemjepa.evaluation.metrics import METRIC_COLUMNS, METRIC_KEYS

CHANCE = {"R@1": 8.3, "R@5": 41.7, "R@10": 83.3, "norm_rank_mean": 54.2, "norm_rank_median": 54.2}


def fake_metrics(r1: float, collapsed: bool) -> dict:
    return {"R@1": r1, "R@5": 50.0, "R@10": 90.0, "norm_rank_mean": 10.0, "norm_rank_median": 0.5, "top1_k64": None,
            "n_queries": 12, "n_pool": 12, "n_songs": 3, "chance": CHANCE, "distance": "cosine", "reference_encoder": "target",
            "pool_diagnostics": {"n": 12, "median_cosine": 0.5, "spread": 0.2, "rankme": 5.0, "collapsed": collapsed}}


METRICS = {("contrastive baseline", "fine"): fake_metrics(10.0, False), ("full model", "coarse"): fake_metrics(100.0, True)}


def example(out):
    return {"song": "s", "mix": str(out / "q.wav"), "instrument": "violin & <b>", "truth": str(out / "s" / "violin.wav"),
            "zero_shot": True, "results": [{"rank": 1, "score": 2.5, "cosine": 0.9, "path": str(out / "s" / "violin.wav"),
                                            "offset": 0, "right_stem": True, "same_song": True}]}


def test_the_template_is_package_data():
    assert "$rows" in files("stemjepa.demo").joinpath("report.html").read_text()


def test_html_page_fills_every_field_and_escapes_names(tmp_path):
    cfg = DemoConfig(out=tmp_path, train_songs=7, test_songs=3)
    cfg.timings = {"1/5 corpus": 1.5}
    page = html_page(tmp_path, cfg, METRICS, [example(tmp_path)])
    assert "$" not in page and "violin &amp; &lt;b&gt;" in page and "<audio controls src='q.wav'>" in page
    assert "".join(f"<th>{h}</th>" for _, h in METRIC_COLUMNS) in page
    assert "<td>full model</td><td>coarse</td><td>100.0</td>" in page and " COLLAPSED" in page
    assert "<td><i>chance</i></td><td></td><td>8.3</td>" in page and "<td>1/5 corpus</td><td>1.5</td>" in page
    assert "7 synthetic training songs" in page


def test_reports_and_summary_use_the_metric_columns(tmp_path, capsys):
    (tmp_path / "eval" / "full_model-fine").mkdir(parents=True)
    (tmp_path / "eval" / "full_model-fine" / "fig2.png").write_bytes(b"png")
    write_reports(tmp_path, DemoConfig(out=tmp_path), "TABLE", METRICS, [example(tmp_path)])
    assert (tmp_path / "fig2_full_model_fine.png").is_file() and "TABLE" in (tmp_path / "report.md").read_text()
    print_summary(METRICS, tmp_path, 60.0)
    printed = capsys.readouterr().out
    assert "     R@1    R@5   R@10  mean rank  median rank  pool median cos" in printed and "COLLAPSED" in printed
    summary = json.loads(json.dumps(summary_metrics(METRICS)))
    assert set(METRIC_KEYS) <= set(summary["full model / coarse"])
