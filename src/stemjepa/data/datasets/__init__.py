"""Dataset loaders: read each multitrack dataset exactly as it is laid out on disk and list its songs.

Every loader returns `stemjepa.data.multitrack.Song` objects with one `Stem` per source file (or per stream of a
MUSDB18 `.stem.mp4`), labels coarse to fine and lower-case, and `Song.split` as the dataset defines it. Loaders only
read metadata, never audio: decoding (and the handling of unequal stem lengths, zero-padded to the longest by
`load_song(length="pad")`) happens in `stemjepa prepare` and the evaluation.

Problems with single songs (a missing data.json, an unreadable metadata.yaml, a missing stem file) do not stop the
listing: they are logged as warnings and appended to `problems` as (path, reason) pairs; the rest loads.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from ...errors import DataError
from ..multitrack import Song

log = logging.getLogger(__name__)

DATASETS = ("musdb18", "musdb18hq", "moisesdb", "slakh2100", "folder")

# The split each dataset is evaluated on. MoisesDB has no official split and the paper evaluates on all 240 songs;
# the repository's own MoisesDB split (splits/moisesdb.json) is there for training on part of it.
_EVAL_SPLIT = {"musdb18": "test", "musdb18hq": "test", "moisesdb": "all", "slakh2100": "test", "folder": "all"}

Problems = list[tuple[str, str]]
Loader = Callable[[Path, Problems], list[Song]]


def get_dataset(name: str) -> Loader:
    """The loader function of dataset `name`: loader(root, problems) -> every song, split set on each."""
    if name == "musdb18":
        from .musdb import load_musdb18 as loader
    elif name == "musdb18hq":
        from .musdb import load_musdb18hq as loader
    elif name == "moisesdb":
        from .moisesdb import load_moisesdb as loader
    elif name == "slakh2100":
        from .slakh import load_slakh2100 as loader
    elif name == "folder":
        from .folder import load_folder as loader
    else:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return loader


def default_eval_split(name: str) -> str:
    """"test" where the dataset defines a test split, else "all"."""
    if name not in _EVAL_SPLIT:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return _EVAL_SPLIT[name]


def load_dataset(name: str, root, split: str | None = None, problems: Problems | None = None) -> list[Song]:
    """List the songs of dataset `name` stored at `root`, restricted to `split` ("train", "test", ...; None/"all": every song).

    Raises DataError for an unknown dataset, a root that does not match the dataset's layout, or an unknown split.
    Per-song problems are appended to `problems` (when given) and logged; they are not fatal.
    """
    loader = get_dataset(name)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (the {name} dataset root)")
    found: Problems = []
    songs = loader(root, found)
    for path, reason in found:
        log.warning("%s: %s", path, reason)
    if problems is not None:
        problems.extend(found)
    if split not in (None, "all"):
        known = sorted({s.split for s in songs if s.split})
        if split not in known:
            raise DataError(f"{root}: {name} has no split {split!r} (splits found: {', '.join(known) or 'none'})")
        songs = [s for s in songs if s.split == split]
    dup = sorted(i for i, n in Counter(s.id for s in songs).items() if n > 1)
    if dup:
        raise DataError(f"{root}: several songs share the id(s) {', '.join(map(repr, dup[:5]))}; song ids must be unique")
    return songs


def readable(raw: str) -> str:
    """A raw metadata string as words: underscores to spaces, single spaces, lower-case."""
    return " ".join(raw.replace("_", " ").split()).lower()


def dedupe_labels(labels: list[str]) -> list[str]:
    """Drop empty labels and a label equal to the one before it (e.g. Slakh's ["drums", "drums"] -> ["drums"])."""
    out: list[str] = []
    for label in labels:
        label = label.strip()
        if label and (not out or out[-1] != label):
            out.append(label)
    return out
