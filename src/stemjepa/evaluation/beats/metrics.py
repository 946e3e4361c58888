"""Beat-tracking scores with mir_eval: F-measure, CMLt and AMLt, with mir_eval's default settings.

Both beat lists are trimmed to beats at or after 5 s (mir_eval's `trim_beats` default, the MIREX convention), then
F-measure uses a +-70 ms window and the continuity scores a 17.5 % phase and period tolerance.
"""
from __future__ import annotations

import warnings

import numpy as np

MIN_BEAT_TIME = 5.0
F_MEASURE_THRESHOLD = 0.07
CONTINUITY_PHASE_THRESHOLD = 0.175
CONTINUITY_PERIOD_THRESHOLD = 0.175
METRICS = ("F1", "CMLt", "AMLt")


def settings() -> dict:
    """The mir_eval settings, written into every report."""
    import mir_eval

    return {
        "library": f"mir_eval {mir_eval.__version__}",
        "min_beat_time": MIN_BEAT_TIME,
        "f_measure_threshold": F_MEASURE_THRESHOLD,
        "continuity_phase_threshold": CONTINUITY_PHASE_THRESHOLD,
        "continuity_period_threshold": CONTINUITY_PERIOD_THRESHOLD,
    }


def beat_scores(reference, estimated) -> dict[str, float]:
    """{"F1", "CMLt", "AMLt"} of one track; an empty estimate scores 0 (mir_eval's warning is silenced)."""
    import mir_eval.beat as mb

    ref = mb.trim_beats(np.sort(np.asarray(reference, dtype=np.float64)), min_beat_time=MIN_BEAT_TIME)
    est = mb.trim_beats(np.sort(np.asarray(estimated, dtype=np.float64)), min_beat_time=MIN_BEAT_TIME)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f1 = mb.f_measure(ref, est, f_measure_threshold=F_MEASURE_THRESHOLD)
        _, cmlt, _, amlt = mb.continuity(
            ref, est, continuity_phase_threshold=CONTINUITY_PHASE_THRESHOLD,
            continuity_period_threshold=CONTINUITY_PERIOD_THRESHOLD,
        )
    return {"F1": float(f1), "CMLt": float(cmlt), "AMLt": float(amlt)}


def mean_scores(scores: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over tracks (NaN for an empty list)."""
    return {m: float(np.mean([s[m] for s in scores])) if scores else float("nan") for m in METRICS}
