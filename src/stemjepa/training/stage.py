"""One runner for "train this phase unless it is already trained", used by the demo and every benchmark.

A run folder is done when its `stage.json` records the same settings (config, overrides, data, init checkpoint and what
the caller adds to them) and its last checkpoint is there: it is reused. An interrupted run of the same settings resumes
from its last checkpoint, its training time adding up over the starts (the settings it is training are written beside the
folder, `<run>.started.json`, since `fit` refuses a folder that is not yet one of its runs). A run of other settings is
trained again from scratch.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

from ..errors import StemJepaError
from ..fsutil import atomic_write_text, read_json


@dataclass(frozen=True)
class Stage:
    checkpoint: Path  # the run's last checkpoint
    record: dict      # its stage.json: spec, seconds, steps_reached, last_logged, batch_size, lr, config_resolved, ...
    reused: bool      # True when nothing was trained by this call

    @property
    def seconds(self) -> float:
        return float(self.record["seconds"])


def settings_digest(spec: dict) -> str:
    """12 hex digits naming a stage's settings (stable across runs: sorted keys)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _read(path: Path) -> dict | None:
    try:
        data = read_json(path, error=StemJepaError)
    except StemJepaError:
        return None
    return data if isinstance(data, dict) else None


def _write(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, default=str))


def logged_steps(metrics_csv: Path) -> int | None:
    """Optimiser steps up to the last row of one training log (`metrics.csv`), None when it logged none."""
    import csv

    with open(metrics_csv, newline="") as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh) if (r.get("step") or "").isdigit()]
    return max(steps) + 1 if steps else None


def steps_reached(run: Path) -> int | None:
    """Optimiser steps a run made over all its starts (a time-boxed run stops before its max_steps), from its logs."""
    counts = [n for f in Path(run, "logs").glob("version_*/metrics.csv") if (n := logged_steps(f)) is not None]
    return max(counts) if counts else None


def init_identity(init: Path) -> str:
    """What names an init: the settings digest of the stage that wrote it, else its size and time; a built-in model
    by its versioned name (an alias such as 'default' moves to newer models)."""
    if not init.exists():
        from ..models.registry import canonical_name

        name = canonical_name(str(init))
        if name:
            return f"builtin:{name}"
    stage = _read(init.parent.parent / "stage.json") if init.parent.name == "checkpoints" else None
    if stage and stage.get("digest"):
        return f"stage:{stage['digest']}"
    try:
        st = init.stat()
    except OSError:
        return "missing"
    return f"file:{st.st_size}:{int(st.st_mtime)}"


@dataclass(frozen=True)
class StageRun:
    """How a stage is run, none of it a setting of the run: the device, a time box (`max_minutes`: training stops early,
    the run stays the same one unless `extra` names it), a progress bar, and where messages go."""

    device: str = "auto"
    max_minutes: float | None = None
    progress: bool = False
    log: Callable[[str], object] = print


_RUN_FIELDS = tuple(f.name for f in fields(StageRun))


def train_stage(run: Path, config: str, overrides: list[str], data: Path, init: Path | None = None, *,
                extra: dict | None = None, how: StageRun | None = None, **options) -> Stage:
    """Train `config` with `overrides` on `data` into `run` (initialised from `init`), or reuse / resume it (see the module
    docstring). `extra`: further settings that make a run another one (e.g. a time box, the phase-1 run it builds on);
    `how` (or its fields as keywords: device, max_minutes, progress, log): how it runs; other keywords go to FitOptions
    (e.g. devices)."""
    from ..config import load_config
    from .fit import FitOptions, fit
    from .rundir import last_logged

    how = replace(how or StageRun(), **{k: options.pop(k) for k in _RUN_FIELDS if k in options})
    device, log = how.device, how.log
    run = Path(run)
    cfg = load_config(config, list(overrides))
    spec = {"config": config, "overrides": list(overrides), "data": str(data), **(extra or {}),
            "init": str(init) if init else None}
    if init:  # the run it starts from is part of its identity: a phase 1 trained again makes this phase 2 another run
        spec["init_identity"] = init_identity(Path(init))
    last = run / "checkpoints" / "last.ckpt"
    stage = _read(run / "stage.json")
    if stage and stage.get("spec") == spec and last.is_file():
        log(f"{run.name}: trained ({stage.get('steps_reached') or 'unknown'} steps, {stage.get('seconds', 0):.0f} s) with "
            "the same settings: skipped")
        return Stage(last, stage, True)
    started = run.parent / f"{run.name}.started.json"
    mark = _read(started) or {}
    # a run with checkpoints but neither record (made by `stemjepa fit` or an older runner) is resumed, never wiped
    resume = last.is_file() and (mark.get("spec") == spec or (not stage and not mark))
    before = float(mark.get("seconds", 0.0)) if resume else 0.0
    log(f"{run.name}: {'resuming' if resume else 'training'} {config} ({cfg.max_steps} steps) on {Path(data).name} ({device})")
    run.parent.mkdir(parents=True, exist_ok=True)
    _write(started, {"spec": spec, "seconds": before})
    t0, load0 = time.time(), os.getloadavg()[0]
    left = max(1.0, how.max_minutes * 60 - before) if how.max_minutes else None
    opts = FitOptions(data=str(data), out=str(run), init=None if resume or not init else str(init), device=device,
                      progress=how.progress, overwrite=not resume, resume=resume, max_time=left, **options)
    try:
        last = fit(cfg, opts)
    finally:
        _write(started, {"spec": spec, "seconds": round(before + time.time() - t0, 1)})
    record = {"spec": spec, "digest": settings_digest(spec), "seconds": round(before + time.time() - t0, 1),
              "resumed": resume, "steps_reached": steps_reached(run),
              "last_logged": {k: round(v, 4) for k, v in last_logged(run).items()},
              "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)],
              "batch_size": cfg.data.batch_size, "lr": cfg.optim.lr,
              "config_resolved": _read(run / "config.json")}  # the trained config, as `fit` saved it
    _write(run / "stage.json", record)
    log(f"{run.name}: {record['seconds']:.0f} s, {record['steps_reached']} steps, last logged {record['last_logged']}")
    return Stage(last, record, False)
