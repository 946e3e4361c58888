"""The generic multitrack folder (see `stemjepa.data.multitrack`); the synthetic corpus of `stemjepa synth` is one.

ROOT/<song>/stems.json + audio files. A "split" key in stems.json sets Song.split; songs without one are in no split
(they are listed by split "all" only).
"""
from __future__ import annotations

from pathlib import Path

from ..multitrack import Song, read_folder


def load_folder(root: Path, problems: list) -> list[Song]:
    """Songs of a generic multitrack folder; song folders with a bad stems.json are reported, not fatal."""
    songs, found = read_folder(root)
    problems.extend(found)
    return songs
