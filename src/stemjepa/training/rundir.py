"""The run folder of `stemjepa fit`: what counts as one of our runs, what `--overwrite` may remove, and the checks that
must pass before anything in it is touched (device, data path, --init checkpoint).

Rule: nothing the user made is overwritten or deleted. `fit` refuses a non-empty folder that is not one of its runs, and
`--overwrite` removes only the files a previous run wrote (checkpoints, Lightning's log versions), and only once the
new run's inputs are known good; other files, in the run folder or inside logs/, stay.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from ..errors import DataError, StemJepaError
from ..fsutil import clean_stale_temps

_LOG_FILES = ("metrics.csv", "hparams.yaml")


def _our_config(path: Path) -> bool:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"phase", "model", "optim", "data"} <= set(data)


def has_checkpoints(run_dir: Path) -> bool:
    return any((run_dir / "checkpoints").glob("*.ckpt"))


def check_run_dir(run_dir: Path) -> None:
    """Refuse a path that is a file, or a non-empty folder that is not a run of ours (its files would be replaced)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise StemJepaError(f"{run_dir}: exists and is not a folder; choose a new --out folder for the run")
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return
    config = run_dir / "config.json"
    if has_checkpoints(run_dir) or (config.is_file() and _our_config(config)):
        return
    found = ", ".join(sorted(p.name for p in run_dir.iterdir())[:5])
    raise StemJepaError(f"{run_dir}: folder is not empty and is not a stemjepa run (holds {found}); "
                        "choose an empty or new --out folder, nothing was changed")


def clear_run(run_dir: Path) -> list[Path]:
    """Remove what a previous run of ours wrote (checkpoints/*.ckpt, logs/ and tensorboard/ version_N files), nothing
    else; folders left empty go too. Returns the removed files."""
    removed = []
    files = list((run_dir / "checkpoints").glob("*.ckpt"))
    for name in ("logs", "tensorboard"):
        for version in (run_dir / name).glob("version_*"):
            files += [p for p in version.iterdir() if p.name in _LOG_FILES or p.name.startswith("events.out.tfevents.")]
    for p in files:
        if p.is_file():
            p.unlink()
            removed.append(p)
    clean_stale_temps(run_dir / "checkpoints")
    for name in ("logs", "tensorboard"):
        for version in (run_dir / name).glob("version_*"):
            _rmdir_if_empty(version)
    for name in ("checkpoints", "logs", "tensorboard"):
        _rmdir_if_empty(run_dir / name)
    return removed


def _rmdir_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def check_device(device: str, devices: int, num_nodes: int) -> None:
    """Refuse a device that is not there before any data is decoded."""
    if devices < 1 or num_nodes < 1:
        raise StemJepaError(f"--devices and --num-nodes must be at least 1 (got {devices} and {num_nodes})")
    if device in ("cuda", "gpu"):
        if not torch.cuda.is_available():
            raise StemJepaError(f"--device {device} asked for, but no CUDA GPU is available (use --device cpu or auto)")
        if devices > torch.cuda.device_count():
            raise StemJepaError(f"--devices {devices} asked for, but this machine has {torch.cuda.device_count()} GPU(s)")


def check_data_path(data) -> Path:
    """The --data path, refused with a message that says what it is when it cannot be training data."""
    from ..data.training_cache import MANIFEST

    path = Path(data)
    if not path.exists():
        raise DataError(f"{path}: training data not found")
    if not path.is_dir():
        raise DataError(f"{path}: is a file; --data takes a training cache (made by `stemjepa prepare`) or a "
                        "multitrack folder (song sub-folders with a stems.json)")
    if not (path / MANIFEST).is_file() and (path / "songs").is_dir() and any((path / "songs").glob("*.json")):
        raise DataError(f"{path}: unfinished training cache (songs/ but no {MANIFEST}: `stemjepa prepare` was "
                        "interrupted or failed); run the same `stemjepa prepare` command again to finish it")
    return path


def last_logged(run_dir: Path, keys=("loss", "top1", "spread", "rankme")) -> dict[str, float]:
    """The last logged value of each training diagnostic (`train/<key>`) of a run, over its log versions in order."""
    out: dict[str, float] = {}
    versions = sorted(Path(run_dir, "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    for f in versions:
        with open(f) as fh:
            for row in csv.DictReader(fh):
                for k, v in row.items():
                    if k.startswith("train/") and v not in ("", None):
                        out[k[len("train/"):]] = float(v)
    return {k: out[k] for k in keys if k in out}
