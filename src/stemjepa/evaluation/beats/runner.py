"""The whole beat-tracking evaluation: read datasets, compute features once, cross-validate the probe, write the report."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ...errors import ConfigError, DataError, StemJepaError
from .annotations import read_beat_dataset
from .crossval import ProbeItem, run_crossval
from .decode import make_decoder
from .features import FeatureCache, track_features
from .metrics import settings as metric_settings
from .probe import FRAMES_PER_PATCH, WIDEN_RADIUS, WIDEN_VALUE, ProbeConfig, frames_per_second, patch_targets
from .report import plot_example, write_metrics

log = logging.getLogger(__name__)
PLOT_NAME = "beats_example.png"


@dataclass
class BeatEvalConfig:
    folds: int = 8
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    decoder: str = "auto"
    limit: int | None = None  # tracks per dataset (quick runs)
    chunk_batch: int = 8  # 8 s chunks per encoder call


def _labels(specs: list[tuple[str, Path]], taken: set[str]) -> list[tuple[str, Path]]:
    """Unique dataset labels: a name given twice (two roots) becomes name, name#2, ..."""
    out = []
    for name, root in specs:
        label, n = name, 1
        while label in taken:
            n += 1
            label = f"{name}#{n}"
        taken.add(label)
        out.append((label, root))
    return out


def load_items(model, specs, cache: FeatureCache, cfg: BeatEvalConfig, skipped: list,
               progress_factory) -> dict[str, list[ProbeItem]]:
    """Tracks of each dataset with their features (cached) and targets; unreadable tracks are skipped and recorded."""
    out = {}
    for label, root in specs:
        tracks, problems = read_beat_dataset(label, root, limit=cfg.limit)
        skipped.extend({"dataset": label, "path": p, "reason": r} for p, r in problems)
        items = []
        for track in progress_factory(tracks, desc=f"features {label}", unit="track"):
            try:
                feats = cache.get(track, lambda: track_features(model, track.load_audio(model.sample_rate), cfg.chunk_batch))
            except StemJepaError as exc:  # unreadable audio, a song without readable stems
                skipped.append({"dataset": label, "path": str(track.audio_path or track.id), "reason": str(exc)})
                continue
            targets = patch_targets(track.beats, len(feats), model.patch_seconds)
            items.append(ProbeItem(track, feats, targets))
        if not items:
            raise DataError(f"{root}: no track of dataset {label!r} could be used (see the skipped list)")
        out[label] = items
    return out


@dataclass(frozen=True)
class BeatRun:
    """How a beat evaluation runs, beside what it measures (BeatEvalConfig): the feature cache (`feature_id` names the
    encoder in it, default model.model_id; `cache_dir` default OUT/features; `use_cache` False: none), the progress bars
    (a tqdm-like factory) and `extra` entries for the report."""

    feature_id: str | None = None
    cache_dir: str | Path | None = None
    use_cache: bool = True
    progress_factory: Callable | None = None
    extra: dict | None = None


def evaluate_beats(model, train_specs, test_specs, out_dir, cfg: BeatEvalConfig | None = None, run: BeatRun | None = None,
                   **run_values) -> dict:
    """Run the probe and write OUT/metrics.json and OUT/beats_example.png; returns the report dict. `run` (or its fields
    as keywords: feature_id, cache_dir, use_cache, progress_factory, extra): how it runs (BeatRun)."""
    run = replace(run or BeatRun(), **run_values)
    progress_factory = run.progress_factory
    if progress_factory is None:
        from tqdm import tqdm as progress_factory
    cfg = cfg or BeatEvalConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not train_specs:
        raise ConfigError("at least one --train dataset is needed")
    taken: set[str] = set()
    train_specs, test_specs = _labels(list(train_specs), taken), _labels(list(test_specs), taken)
    overlap = {str(Path(r).resolve()) for _, r in train_specs} & {str(Path(r).resolve()) for _, r in test_specs}
    if overlap:
        log.warning("test dataset folder(s) also used for training: %s", ", ".join(sorted(overlap)))
    fps = frames_per_second(model.patch_seconds)
    decoder = make_decoder(cfg.decoder, fps)
    feature_id = run.feature_id or str(model.model_id)
    cache = FeatureCache((Path(run.cache_dir) if run.cache_dir else out_dir / "features") if run.use_cache else None,
                         feature_id)
    skipped: list[dict] = []
    train = load_items(model, train_specs, cache, cfg, skipped, progress_factory)
    test = load_items(model, test_specs, cache, cfg, skipped, progress_factory)
    train_items = [it for items in train.values() for it in items]
    results, example = run_crossval(train_items, test, decoder, cfg.folds, cfg.probe, fps, progress_factory)
    report = {
        **(run.extra or {}),
        "model_id": feature_id,
        "folds": cfg.folds,
        "decoder": {"name": decoder.name, **decoder.settings},
        "mir_eval": metric_settings(),
        "probe": {
            "frames_per_patch": FRAMES_PER_PATCH,
            "fps": fps,
            "feature_dim": int(train_items[0].features.shape[1]),
            "label_widening": {"value": WIDEN_VALUE, "radius_frames": WIDEN_RADIUS},
            **asdict(cfg.probe),
        },
        "train": {k: {"root": str(r), "n_tracks": len(train[k])} for k, r in train_specs},
        "test_sets": {k: {"root": str(r), "n_tracks": len(test[k])} for k, r in test_specs},
        **results,
        "skipped": skipped,
    }
    if example is not None:
        plot_example(out_dir / PLOT_NAME, example)
        report["plot"] = {"file": PLOT_NAME, "dataset": example.dataset, "track": example.track_id, "fold": example.fold,
                          **example.scores}
    write_metrics(out_dir / "metrics.json", report)
    return report
