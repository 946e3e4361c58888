"""The probe's outputs: metrics.json and a plot of one track's activation with predicted and true beats."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ...fsutil import atomic_write_text

PLOT_SECONDS = 20.0


def _clean(value):
    """JSON-safe copy: NaN -> null, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_metrics(path, report: dict) -> Path:
    path = Path(path)
    atomic_write_text(path, json.dumps(_clean(report), indent=2) + "\n")
    return path


def plot_example(path, example, seconds: float = PLOT_SECONDS) -> Path:
    """PNG of the activation over the first `seconds` (from 5 s, where scoring starts, when the track is long enough)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    act = np.asarray(example.activation)
    t = np.arange(len(act)) / example.fps
    duration = len(act) / example.fps
    start = 5.0 if duration >= 5.0 + seconds else max(0.0, duration - seconds)
    end = start + seconds
    fig, ax = plt.subplots(figsize=(12, 3.2), dpi=110)
    window = (t >= start) & (t < end)
    if start < 5.0:
        ax.axvspan(start, 5.0, color="0.92", lw=0, label="not scored (< 5 s)")
    ax.plot(t[window], act[window], color="tab:blue", lw=1.0, label="activation (8 heads, 50 fps)")
    ref = example.reference[(example.reference >= start) & (example.reference < end)]
    pred = example.predicted[(example.predicted >= start) & (example.predicted < end)]
    ax.vlines(ref, 0.0, 0.5, color="tab:green", lw=2.0, label="true beats")
    ax.vlines(pred, 0.5, 1.0, color="tab:red", lw=1.5, linestyles="--", label="predicted beats")
    ax.set_xlim(start, end)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("beat activation")
    s = example.scores
    ax.set_title(
        f"{example.dataset}: {example.track_id} (fold {example.fold + 1 if example.fold >= 0 else 'all'})  "
        f"F1 {s.get('F1', float('nan')):.3f}  CMLt {s.get('CMLt', float('nan')):.3f}  AMLt {s.get('AMLt', float('nan')):.3f}",
        fontsize=9,
    )
    ax.legend(loc="upper right", fontsize=8, ncol=4, framealpha=0.9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
