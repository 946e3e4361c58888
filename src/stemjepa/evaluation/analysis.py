"""Instrument analysis of Fig. 2: what kind of stem is each query's nearest neighbour, tallied per conditioning label.

A query's nearest neighbour falls in one of six classes, from best to worst. "Instrument" is a stem's fine label and
"category" its coarse label (for MoisesDB: trackType and stemName).
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from ..data.labels import label_words
from ..fsutil import atomic_write_csv

# (key, legend text, colour): greens for the right track, oranges/greys for another track
CLASSES: list[tuple[str, str, str]] = [
    ("right_stem", "right track, right stem", "#1b7837"),
    ("track_same_category", "right track, other stem of the same category", "#7fbf7b"),
    ("track_other_category", "right track, other category", "#d9f0d3"),
    ("same_instrument", "wrong track, same instrument", "#e66101"),
    ("same_category", "wrong track, same category", "#fdb863"),
    ("wrong", "wrong track, other category", "#bababa"),
]
CLASS_KEYS = [c[0] for c in CLASSES]


def classify_neighbour(
    target: int, neighbour: int, tracks, instruments, categories
) -> str:
    """Class of pool item `neighbour` retrieved for the query whose true stem is pool item `target`."""
    if neighbour == target:
        return "right_stem"
    same_category = categories[neighbour] == categories[target]
    if tracks[neighbour] == tracks[target]:
        return "track_same_category" if same_category else "track_other_category"
    if instruments[neighbour] == instruments[target]:
        return "same_instrument"
    return "same_category" if same_category else "wrong"


def tally(labels, classes) -> list[dict]:
    """One row per conditioning label: n, the count and the percentage of each class. Sorted by share of right stems."""
    counts: OrderedDict[str, dict[str, int]] = OrderedDict()
    for label, cls in zip(labels, classes):
        row = counts.setdefault(label, {k: 0 for k in CLASS_KEYS})
        row[cls] += 1
    rows = []
    for label, row in counts.items():
        n = sum(row.values())
        out = {"label": label, "n": n}
        out.update({k: row[k] for k in CLASS_KEYS})
        out.update({f"{k}_pct": 100.0 * row[k] / n for k in CLASS_KEYS})
        rows.append(out)
    rows.sort(key=lambda r: (-r["right_stem_pct"], -r["track_same_category_pct"], r["label"]))
    return rows


def overall_row(rows: list[dict]) -> dict:
    """The tally over every query (the "all" line of the figure)."""
    n = sum(r["n"] for r in rows)
    out = {"label": "all", "n": n}
    out.update({k: sum(r[k] for r in rows) for k in CLASS_KEYS})
    out.update({f"{k}_pct": (100.0 * out[k] / n if n else 0.0) for k in CLASS_KEYS})
    return out


def write_analysis_csv(rows: list[dict], path) -> None:
    fields = ["label", "n"] + (["in_training"] if any("in_training" in r for r in rows) else []) + CLASS_KEYS \
        + [f"{k}_pct" for k in CLASS_KEYS]
    atomic_write_csv(path, fields, ({k: (f"{v:.2f}" if isinstance(v, float) else v) for k, v in row.items()}
                                    for row in rows + [overall_row(rows)]))


# label colours of Fig. 2: the conditioning label was in the training set, was there written differently, or is new
PRESENCE_COLOURS = {"seen": "#1a7f37", "reworded": "#d97706", "unseen": "#c62828"}


def training_labels(model) -> set[str] | None:
    """The labels a checkpoint was trained with: its text conditioner's table (filled with every training label before
    training) or its class list; None for a model without conditioning (contrastive only)."""
    labels = model.known_labels if model.has_predictor else []
    return {label_words(l) for l in labels} if labels else None


def label_presence(label: str, seen: set[str], dataset: str | None = None) -> str:
    """'seen' when the label was a training label; 'reworded' when the training set had the same instrument under another
    name; else 'unseen' (the zero-shot case). Other names come from the curated table of `aliases` (per dataset). Only for a
    label the table lacks, a word-overlap heuristic decides: a training label sharing all its words but one, and at least two
    ("lead female singer" / "female lead vocals"), and neither name's words containing the other's (a more specific
    instrument, "rhodes electric piano" vs "electric piano", is not a rewording)."""
    from .aliases import alias_group

    norm = label_words(label)
    if norm in seen:
        return "seen"
    group = alias_group(label, dataset)
    if group is not None:
        return "reworded" if group & seen else "unseen"
    words = set(norm.split())
    for other in seen:
        other_words = set(other.split())
        shared = len(words & other_words)
        nested = words < other_words or other_words < words
        if shared >= 2 and shared >= max(len(words), len(other_words)) - 1 and not nested:
            return "reworded"
    return "unseen"


def plot_fig2(rows: list[dict], path, title: str = "", seen: set[str] | None = None, dataset: str | None = None) -> None:
    """Stacked horizontal bars, one per conditioning label (best at the top), plus the overall bar, like Fig. 2.

    With `seen` (the training labels), label names are coloured as in the paper: green when the label was in the training
    set, orange when it was there written differently, red when it is new (zero-shot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = rows + [overall_row(rows)]
    names = [f"{r['label']} ({r['n']})" for r in bars]
    # fixed sizes in inches: 0.3 per bar, 0.45 above for the title, 1.35 below for the axis label and the legend
    height = 0.3 * len(bars) + 1.8
    fig, ax = plt.subplots(figsize=(9, height))
    fig.subplots_adjust(left=0.3, right=0.97, bottom=1.35 / height, top=1 - 0.45 / height)
    y = list(range(len(bars)))[::-1]  # first row at the top
    left = [0.0] * len(bars)
    for key, legend, colour in CLASSES:
        widths = [r[f"{key}_pct"] for r in bars]
        ax.barh(y, widths, left=left, color=colour, edgecolor="white", linewidth=0.5, label=legend)
        left = [a + b for a, b in zip(left, widths)]
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=8)
    ax.get_yticklabels()[-1].set_fontweight("bold")  # the overall bar (lowest y)
    if seen is not None:
        for tick, row in zip(ax.get_yticklabels(), bars[:-1]):
            tick.set_color(PRESENCE_COLOURS[row.get("in_training") or label_presence(row["label"], seen, dataset)])
    ax.axhline(0.5, color="black", linewidth=0.8)  # separates the overall bar from the per-label ones
    ax.set_xlim(0, 100)
    ax.set_ylim(-0.6, len(bars) - 0.4)
    ax.set_xlabel("nearest neighbour of the query (% of queries)", fontsize=9)
    if title:
        ax.set_title(title, fontsize=10)
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=8,
               frameon=False)
    if seen is not None:
        fig.text(0.01, 0.0, "labels: green = in training set, orange = written differently, red = unseen (zero-shot)",
                 fontsize=7, color="#444444")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write_analysis(rows: list[dict], out_dir, title: str = "", seen: set[str] | None = None,
                   dataset: str | None = None) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    csv_path, png_path = out_dir / "analysis.csv", out_dir / "fig2.png"
    if seen is not None:
        rows = [{**r, "in_training": label_presence(r["label"], seen, dataset)} for r in rows]
    write_analysis_csv(rows, csv_path)
    plot_fig2(rows, png_path, title, seen, dataset)
    return csv_path, png_path
