"""What the demo measured, written three ways: the console summary, report.md and report.html (from `report.html`).

Every table shows the metric columns of `evaluation.metrics.METRIC_COLUMNS`, a chance row and the protocol note.
"""
from __future__ import annotations

import csv
import html
import os
import shutil
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING

import numpy as np

from ..evaluation.metrics import METRIC_COLUMNS, METRIC_KEYS
from ..evaluation.report import protocol_note, reference_words
from ..fsutil import atomic_write_text

if TYPE_CHECKING:
    from .pipeline import DemoConfig


def summary_metrics(metrics: dict) -> dict:
    """summary.json's "metrics": per (model, label level), the Table I columns and what to read them against."""
    keep = METRIC_KEYS + ("top1_k64", "n_queries", "n_pool", "chance", "distance")
    return {f"{n} / {level}": {**{k: m[k] for k in keep}, "pool_diagnostics": m.get("pool_diagnostics")}
            for (n, level), m in metrics.items()}


def running_mean(values, window: int) -> np.ndarray:
    """Centred running mean of the same length as `values`, for any length (0 included): the window shrinks to the
    number of points and the ends average only the points they have (no zero padding pulling them down)."""
    values = np.asarray(values, dtype=np.float64)
    w = max(1, min(window, len(values)))
    if len(values) == 0:
        return values
    kernel = np.ones(w)
    return np.convolve(values, kernel, mode="same") / np.convolve(np.ones(len(values)), kernel, mode="same")


def plot_curves(runs: dict[str, Path], path: Path, batch_size: int) -> None:
    """Training loss of each run, with the in-batch top-1 against chance where it was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.2))
    for ax, (title, run) in zip(np.atleast_1d(axes), runs.items()):
        steps, losses, top_steps, top1 = [], [], [], []
        for f in sorted((run / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])):
            with open(f) as fh:
                for row in csv.DictReader(fh):
                    if row.get("train/loss"):
                        steps.append(int(row["step"]))
                        losses.append(float(row["train/loss"]))
                    if row.get("train/top1"):
                        top_steps.append(int(row["step"]))
                        top1.append(float(row["train/top1"]))
        ax.plot(steps, losses, lw=1.2)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
        if top1:  # learning, not only a falling loss: in-batch matching against chance
            ax2 = ax.twinx()
            ax2.plot(top_steps, running_mean(top1, 5), color="tab:orange", lw=1.2)
            ax2.axhline(1.0 / batch_size, color="tab:orange", ls=":", lw=1)
            ax2.set_ylabel("in-batch top-1 (dotted: chance)", color="tab:orange")
            ax2.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def shared_note(metrics: dict) -> str:
    """The protocol of the demo's tables: the pool and distance every row shares, then each model's reference encoder
    (each row's collapse verdict is in its own row)."""
    refs = {name: reference_words(m.get("reference_encoder")) for (name, _), m in metrics.items()}
    return (protocol_note(next(iter(metrics.values())), diagnostics=False, references=False) + "; references: "
            + "; ".join(f"{name} from {ref}" for name, ref in refs.items()))


def print_summary(metrics: dict, out: Path, total: float) -> None:
    widths = [max(7, len(h) + 2) for _, h in METRIC_COLUMNS]
    print("\n" + "=" * 78)
    print(f"stemjepa demo: retrieval on held-out songs (percent; this run, {total / 60:.1f} min)")
    print(f"{'model':<24}{'labels':<8}" + "".join(f"{h:>{w}}" for (_, h), w in zip(METRIC_COLUMNS, widths))
          + "  pool median cos")
    for (name, level), m in metrics.items():
        pool = m.get("pool_diagnostics") or {}
        flag = "  COLLAPSED" if pool.get("collapsed") else ""
        print(f"{name:<24}{level:<8}" + "".join(f"{m[k]:>{w}.1f}" for k, w in zip(METRIC_KEYS, widths))
              + f"  {pool.get('median_cosine', float('nan')):.3f}{flag}")
    c = next(iter(metrics.values()))["chance"]
    print(f"{'chance':<32}" + "".join(f"{c[k]:>{w}.1f}" for k, w in zip(METRIC_KEYS, widths)))
    print(shared_note(metrics))
    print(f"report: {out / 'report.html'} (and report.md)")


def _rel(path, root: Path) -> str:
    return os.path.relpath(Path(path).resolve(), root.resolve())


def write_reports(out: Path, cfg: DemoConfig, table: str, metrics: dict, examples: list) -> None:
    fig2 = out / "eval" / "full_model-fine" / "fig2.png"
    shutil.copyfile(fig2, out / "fig2_full_model_fine.png")
    atomic_write_text(out / "report.md", markdown(cfg, table, examples))
    atomic_write_text(out / "report.html", html_page(out, cfg, metrics, examples))


def markdown(cfg: DemoConfig, table: str, examples: list) -> str:
    md = ["# stemjepa demo report", "",
          f"Held-out songs: {cfg.test_songs} (instruments never heard in training: {', '.join(cfg.held_out)}); "
          f"training songs: {cfg.train_songs}, {cfg.seconds:.0f} s each; training "
          + ("from random weights (the tiny configs)." if cfg.init == "scratch" else
             f"fine-tunes `{cfg.init}` (the row 'built-in model as is' is that model before fine-tuning)."), "",
          "## Retrieval (Table I protocol, ranked by cosine, percent)", "", table, "",
          "## Instrument analysis of the full model (fine labels, Fig. 2)", "", "![fig2](fig2_full_model_fine.png)", "",
          "## Training curves", "", "![curves](training_curves.png)", "", "## Example queries", ""]
    for ex in examples:
        md.append(f"- `{Path(ex['mix']).name}` as **{ex['instrument']}**" + (" (zero-shot)" if ex["zero_shot"] else "") + ": "
                  + ", ".join(f"{r['rank']}. {Path(r['path']).parent.name}/{Path(r['path']).name}"
                              + (" (right stem)" if r["right_stem"] else "") for r in ex["results"]))
    md += ["", "## Timings (s)", "", "| stage | seconds |", "|---|---|"] + [f"| {k} | {v} |" for k, v in cfg.timings.items()]
    return "\n".join(md) + "\n"


def _cell(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _players(out: Path, ex: dict) -> str:
    """One example query: the mix, the true stem and the top three answers, each with an audio player."""
    items = [f"<p><b>Query mix</b> {html.escape(Path(ex['mix']).name)}, instrument <i>{html.escape(ex['instrument'])}</i>"
             + (" <span class='z'>zero-shot</span>" if ex["zero_shot"] else "")
             + f"<br><audio controls src='{_rel(ex['mix'], out)}'></audio></p>",
             f"<p>True stem: {html.escape(Path(ex['truth']).parent.name + '/' + Path(ex['truth']).name)}<br>"
             f"<audio controls src='{_rel(ex['truth'], out)}'></audio></p><ol>"]
    for r in ex["results"][:3]:
        tag = " <b>(right stem)</b>" if r["right_stem"] else (" (same song)" if r["same_song"] else "")
        items.append(f"<li>{html.escape(Path(r['path']).parent.name + '/' + Path(r['path']).name)} score {r['score']:+.1f} sd "
                     f"(cosine {r['cosine']:.3f}){tag}"
                     f"<br><audio controls src='{_rel(r['path'], out)}'></audio></li>")
    return "<div class='ex'>" + "".join(items) + "</ol></div>"


def html_page(out: Path, cfg: DemoConfig, metrics: dict, examples: list) -> str:
    """report.html: the template `report.html` filled with the metrics table, the example players and the timings."""
    headings = ["model", "labels"] + [h for _, h in METRIC_COLUMNS] + ["top-1 of 64", "queries", "pool median cosine"]
    rows = "".join(f"<tr><td>{html.escape(n)}</td><td>{level}</td>"
                   + "".join(f"<td>{_cell(m.get(k))}</td>" for k in METRIC_KEYS + ("top1_k64",))
                   + f"<td>{m['n_queries']}</td><td>{(m.get('pool_diagnostics') or {}).get('median_cosine', float('nan')):.3f}"
                   + (" COLLAPSED" if (m.get("pool_diagnostics") or {}).get("collapsed") else "") + "</td></tr>"
                   for (n, level), m in metrics.items())
    chance = next(iter(metrics.values()))["chance"]
    rows += ("<tr><td><i>chance</i></td><td></td>" + "".join(f"<td>{_cell(chance.get(k))}</td>" for k in METRIC_KEYS)
             + "<td></td><td></td><td></td></tr>")
    template = Template(files(__package__).joinpath("report.html").read_text(encoding="utf-8"))
    return template.substitute(
        train_songs=cfg.train_songs, test_songs=cfg.test_songs, held_out=html.escape(", ".join(cfg.held_out)),
        header="".join(f"<th>{h}</th>" for h in headings), rows=rows,
        protocol=html.escape(shared_note(metrics)),
        players="".join(_players(out, ex) for ex in examples),
        timings="".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in cfg.timings.items()),
    )
