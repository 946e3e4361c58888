"""K-fold cross-validation of the probe over the training datasets, with held-out test datasets.

Every training track belongs to one fold (tracks of each dataset are shuffled and dealt round-robin, so each fold holds
a share of every dataset). For fold f a probe is trained on the other folds and scored on fold f (the "cross_validation"
scores, per training dataset) and on every track of each test dataset (the "test" scores). Scores are averaged over
tracks within a fold, then over folds (mean and standard deviation).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .metrics import METRICS, MIN_BEAT_TIME, beat_scores, mean_scores
from .probe import ProbeConfig, activation, fit_probe


@dataclass
class ProbeItem:
    """A track ready for the probe: its (n_patch, D) features (maybe memory-mapped) and (n_patch, 8) targets."""

    track: object  # annotations.BeatTrack
    features: np.ndarray
    targets: np.ndarray


@dataclass
class Example:
    """One decoded track kept for the report's plot."""

    dataset: str
    track_id: str
    fold: int
    activation: np.ndarray
    fps: float
    predicted: np.ndarray
    reference: np.ndarray
    scores: dict = field(default_factory=dict)


def assign_folds(items: list[ProbeItem], n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold index of each item: per dataset a seeded shuffle, then dealt round-robin continuing across datasets."""
    rng = np.random.default_rng(seed)
    folds = np.zeros(len(items), dtype=np.int64)
    datasets = sorted({it.track.dataset for it in items})
    position = 0
    for name in datasets:
        idx = np.array([i for i, it in enumerate(items) if it.track.dataset == name])
        for i in rng.permutation(idx):
            folds[i] = position % n_folds
            position += 1
    return folds


def scorable(item: ProbeItem) -> bool:
    """mir_eval ignores the first 5 s: a track without a reference beat after that cannot be scored."""
    return bool(np.any(np.asarray(item.track.beats) >= MIN_BEAT_TIME))


def _summary(per_fold: list[dict]) -> dict:
    used = [f for f in per_fold if f["n_tracks"]]
    out = {m: float(np.mean([f[m] for f in used])) if used else float("nan") for m in METRICS}
    out["std"] = {m: float(np.std([f[m] for f in used])) if used else float("nan") for m in METRICS}
    out["n_tracks"] = int(sum(f["n_tracks"] for f in per_fold))
    out["per_fold"] = per_fold
    return out


def _score_items(probe, items, decoder, fps, fold, keep_example, progress_factory, desc):
    scores, example = [], None
    bar = progress_factory(total=len(items), desc=desc, leave=False)
    for it in items:
        act = activation(probe, it.features)
        pred = decoder(act)
        s = beat_scores(it.track.beats, pred)
        scores.append(s)
        if keep_example and example is None:
            example = Example(it.track.dataset, it.track.id, fold, act, fps, pred, np.asarray(it.track.beats), s)
        bar.update(1)
    bar.close()
    return scores, example


def run_crossval(
    train: list[ProbeItem],
    test: dict[str, list[ProbeItem]],
    decoder,
    n_folds: int = 8,
    cfg: ProbeConfig | None = None,
    fps: float = 50.0,
    progress_factory=None,
) -> tuple[dict, Example | None]:
    """Train one probe per fold; returns ({"cross_validation": {dataset: summary}, "test": {dataset: summary}}, example).

    With n_folds == 1 a single probe is trained on all training tracks and only test scores are produced.
    """
    from ...errors import ConfigError

    cfg = cfg or ProbeConfig()
    if progress_factory is None:
        from tqdm import tqdm as progress_factory
    if n_folds < 1:
        raise ConfigError(f"--folds must be >= 1, got {n_folds}")
    if len(train) < max(n_folds, 1) or (n_folds == 1 and not train):
        raise ConfigError(f"{n_folds} folds need at least {max(n_folds, 1)} training tracks, got {len(train)}")
    folds = assign_folds(train, n_folds, cfg.seed) if n_folds > 1 else np.full(len(train), -1)
    cv_sets = sorted({it.track.dataset for it in train}) if n_folds > 1 else []
    cv_fold = {name: [] for name in cv_sets}
    test_fold = {name: [] for name in test}
    example = None
    for f in range(n_folds):
        fit_items = [it for it, k in zip(train, folds) if k != f]
        bar = progress_factory(total=cfg.epochs, desc=f"fold {f + 1}/{n_folds} probe", leave=False)
        probe = fit_probe([it.features for it in fit_items], [it.targets for it in fit_items],
                          ProbeConfig(**{**cfg.__dict__, "seed": cfg.seed + f}), progress=bar)
        bar.close()
        for name in test:
            items = [it for it in test[name] if scorable(it)]
            s, ex = _score_items(probe, items, decoder, fps, f, example is None, progress_factory, f"fold {f + 1} test {name}")
            example = example or ex
            test_fold[name].append({**mean_scores(s), "fold": f, "n_tracks": len(s)})
        for name in cv_sets:
            items = [it for it, k in zip(train, folds) if k == f and it.track.dataset == name and scorable(it)]
            s, ex = _score_items(probe, items, decoder, fps, f, example is None, progress_factory,
                                 f"fold {f + 1} held-out {name}")
            example = example or ex
            cv_fold[name].append({**mean_scores(s), "fold": f, "n_tracks": len(s)})
    results = {
        "cross_validation": {name: _summary(v) for name, v in cv_fold.items()},
        "test": {name: _summary(v) for name, v in test_fold.items()},
    }
    return results, example
