"""Songs made of stems, the unit every loader yields, and the generic multitrack folder format.

Generic folder: one sub-folder per song holding its stem audio files and a `stems.json`:
    {"stems": [{"file": "gtr.wav", "labels": ["guitar", "electric guitar"]}, ...], "tempo": 120, ...}
Labels go from coarse to fine and may be empty (the stem is then conditioned on "music"). Extra keys are kept in
`Song.meta` (e.g. "tempo", "key", "beats", "downbeats", "split").
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..audio import SAMPLE_RATE
from ..audio.io import load_audio
from ..errors import AudioError, DataError
from ..fsutil import read_json
from .labels import UNLABELLED, label_at  # noqa: F401 - UNLABELLED also imported from here

log = logging.getLogger(__name__)



@dataclass
class Stem:
    """One source of a song: an audio file (or one stream of a multi-stream file) and its label path, coarse to fine."""

    name: str
    path: Path
    labels: list[str] = field(default_factory=list)
    stream: int | None = None
    meta: dict = field(default_factory=dict)

    @property
    def fine(self) -> str:
        return label_at(self.labels, "fine")

    @property
    def coarse(self) -> str:
        return label_at(self.labels, "coarse")


@dataclass
class Song:
    """A multitrack song. `split` is "train"/"test"/None; `meta` holds song-level annotations (tempo, beats...)."""

    id: str
    stems: list[Stem]
    split: str | None = None
    meta: dict = field(default_factory=dict)
    root: Path | None = None


@dataclass
class LoadedSong:
    """A song decoded to a (S, N) float32 array at one sample rate; `skipped` lists (stem name, reason)."""

    song: Song
    stems: list[Stem]
    audio: np.ndarray
    sample_rate: int
    skipped: list[tuple[str, str]] = field(default_factory=list)


def load_song(song: Song, sample_rate: int = SAMPLE_RATE, length: str = "pad") -> LoadedSong:
    """Decode every stem of `song`; stems that cannot be read are skipped and reported, not fatal.

    Stems of unequal length are zero-padded to the longest (`length="pad"`) or trimmed to the shortest ("trim").
    Raises DataError when no stem of the song is readable.
    """
    waves, kept, skipped = [], [], []
    for stem in song.stems:
        try:
            waves.append(load_audio(stem.path, sample_rate=sample_rate, stream=stem.stream))
            kept.append(stem)
        except AudioError as exc:
            skipped.append((stem.name, str(exc)))
    if not waves:
        reasons = "; ".join(r for _, r in skipped) or "no stems listed"
        raise DataError(f"song {song.id!r}: no readable stem ({reasons})")
    n = max(len(w) for w in waves) if length == "pad" else min(len(w) for w in waves)
    audio = np.zeros((len(waves), n), dtype=np.float32)
    for i, w in enumerate(waves):
        m = min(n, len(w))
        audio[i, :m] = w[:m]
    return LoadedSong(song, kept, audio, sample_rate, skipped)


def read_song_folder(folder) -> Song:
    """Read one song folder of the generic layout; raises DataError naming the file on any problem."""
    folder = Path(folder)
    meta_path = folder / "stems.json"
    try:
        if not os.access(folder, os.R_OK | os.X_OK):
            raise PermissionError(13, "Permission denied", str(folder))
        if not meta_path.exists():
            raise DataError(f"{meta_path}: missing (every song folder needs a stems.json)")
    except OSError as exc:
        raise DataError(f"{folder}: song folder cannot be read ({exc.strerror or exc})") from None
    meta = read_json(meta_path, error=DataError)  # bounded: a FIFO, a huge or a deeply nested file is refused
    entries = meta.get("stems") if isinstance(meta, dict) else None
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{meta_path}: needs a non-empty list under 'stems'")
    stems, seen = [], set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not entry["file"].strip():
            raise DataError(f"{meta_path}: stem #{i} needs a 'file' string")
        rel = Path(os.path.normpath(entry["file"]))
        if rel.is_absolute() or rel.parts[:1] == ("..",):
            raise DataError(f"{meta_path}: stem file {entry['file']!r} is outside the song folder; list files by their "
                            "name inside it")
        if rel in seen:
            log.warning("%s: %r is listed more than once; the repeated entry is ignored", meta_path, entry["file"])
            continue
        seen.add(rel)
        labels = entry.get("labels") or []
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise DataError(f"{meta_path}: stem {entry['file']!r} has 'labels' that is not a list of strings")
        name = entry.get("name") or Path(entry["file"]).stem
        extra = {k: v for k, v in entry.items() if k not in ("file", "labels", "name")}
        stems.append(Stem(name=name, path=folder / rel, labels=[x.strip() for x in labels if x.strip()], meta=extra))
    song_meta = {k: v for k, v in meta.items() if k != "stems"}
    return Song(id=folder.name, stems=stems, split=song_meta.get("split"), meta=song_meta, root=folder)


def read_folder(root, strict: bool = False) -> tuple[list[Song], list[tuple[str, str]]]:
    """Read every song folder under `root` (sorted). Returns (songs, problems); problems are (path, reason).

    With strict=True the first problem raises DataError instead.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    try:
        subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise DataError(f"{root}: folder cannot be read ({exc.strerror or exc})") from None
    songs, problems = [], []
    for sub in subs:
        try:
            songs.append(read_song_folder(sub))
        except DataError as exc:
            if strict:
                raise
            problems.append((str(sub), str(exc)))
    if not songs:
        detail = f" ({len(problems)} folders with problems: {problems[0][1]})" if problems else ""
        raise DataError(f"{root}: no song folders with a stems.json found{detail}")
    return songs, problems
