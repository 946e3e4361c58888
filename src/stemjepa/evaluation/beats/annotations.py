"""Beat annotations: file readers and the dataset layouts the probe reads.

Beat files hold one beat per line: a time in seconds, optionally followed by the beat's position in the bar (1 =
downbeat) and further columns, separated by spaces, tabs or commas (Ballroom `.beats`, Hainsworth, SMC, Harmonix
`beats_and_downbeats`, GTZAN `.beats` styles). Blank lines and lines starting with `#` or `%` are ignored.

Dataset layouts (`read_beat_dataset(name, root)`):
- audio + annotations: `ROOT/audio/` (or `wav/`, `wavs/`, else ROOT itself) holds the audio files and
  `ROOT/annotations/` (or `beats/`, `beats_and_downbeats/`, else ROOT itself) the `.beats`/`.txt` files, both searched
  recursively. An annotation belongs to the audio file with the same name stem; failing that, to the one whose stem
  it starts or ends with at a `_` boundary after lower-casing and mapping other punctuation to `_`
  (SMC `SMC_001.wav` <- `SMC_001_2_1_1_a.txt`, GTZAN `blues.00000.wav` <- `gtzan_blues_00000.beats`).
- generic multitrack folder (e.g. the synthetic corpus): `ROOT/<song>/stems.json` with song-level "beats" (and optional
  "downbeats") in seconds; the audio of a song is the sum of its stems.
The layout is detected from the folder, so DATASET is only a label.
"""
from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...audio.io import is_audio_file, load_audio
from ...errors import DataError

ANNOTATION_EXTENSIONS = (".beats", ".txt")
MAX_BEAT_FILE_BYTES = 16 * 1024 * 1024  # a beat per line is kilobytes; a larger file is not an annotation
AUDIO_DIRS = ("audio", "wav", "wavs")
ANNOTATION_DIRS = ("annotations", "beats", "beats_and_downbeats")


@dataclass
class BeatTrack:
    """One annotated track: its audio source (a file, or a multitrack song summed) and its beats in seconds."""

    id: str
    dataset: str
    beats: np.ndarray
    downbeats: np.ndarray | None = None
    audio_path: Path | None = None
    song: object | None = None  # stemjepa.data.multitrack.Song for generic folders

    def load_audio(self, sample_rate: int) -> np.ndarray:
        """Mono float32 audio at `sample_rate`; a multitrack song is the sum of its stems."""
        if self.audio_path is not None:
            return load_audio(self.audio_path, sample_rate=sample_rate)
        from ...data.multitrack import load_song

        loaded = load_song(self.song, sample_rate=sample_rate)
        return loaded.audio.sum(axis=0).astype(np.float32)

    def source_signature(self) -> str:
        """Paths, sizes and mtimes of the audio, so cached features are recomputed when the audio changes."""
        paths = [self.audio_path] if self.audio_path is not None else [s.path for s in self.song.stems]
        parts = []
        for p in paths:
            try:
                st = Path(p).stat()
                parts.append(f"{p}:{st.st_size}:{int(st.st_mtime)}")
            except OSError:
                parts.append(f"{p}:missing")
        return "|".join(parts)


def _parse_position(token: str) -> int | None:
    try:
        value = float(token)
    except ValueError:
        return None
    return int(value) if value.is_integer() and value >= 1 else None


def parse_beats(text: str, source: str = "<text>") -> tuple[np.ndarray, np.ndarray | None]:
    """Parse beat-file text -> (beat times, beat positions or None when not every line gives an integer position)."""
    times, positions = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line[0] in "#%":
            continue
        tokens = [t for t in re.split(r"[\s,;]+", line) if t]
        try:
            t = float(tokens[0])
        except ValueError:
            raise DataError(f"{source}: line {lineno}: {tokens[0]!r} is not a time in seconds") from None
        if not math.isfinite(t) or t < 0:
            raise DataError(f"{source}: line {lineno}: beat time {tokens[0]!r} must be a finite number >= 0")
        times.append(t)
        positions.append(_parse_position(tokens[1]) if len(tokens) > 1 else None)
    if not times:
        raise DataError(f"{source}: no beats in the file")
    beats = np.asarray(times, dtype=np.float64)
    pos = None if any(p is None for p in positions) else np.asarray(positions, dtype=np.int64)
    order = np.argsort(beats, kind="stable")
    beats = beats[order]
    if pos is not None:
        pos = pos[order]
    keep = np.concatenate([[True], np.diff(beats) > 1e-6])  # drop duplicated beats
    return beats[keep], (pos[keep] if pos is not None else None)


def read_beat_file(path) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a beat file -> (beats in seconds, downbeats in seconds or None); raises DataError naming the file."""
    path = Path(path)
    try:
        # opened without blocking and checked on the descriptor: a FIFO named x.beats must not block the probe
        with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise DataError(f"{path}: not a regular file; only regular files are read as beat annotations")
            raw = fh.read(MAX_BEAT_FILE_BYTES + 1)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(raw) > MAX_BEAT_FILE_BYTES:
        raise DataError(f"{path}: larger than {MAX_BEAT_FILE_BYTES / 1e6:g} MB, not a beat annotation file")
    text = raw.decode("utf-8", errors="replace")
    beats, positions = parse_beats(text, source=str(path))
    downbeats = beats[positions == 1] if positions is not None else None
    return beats, downbeats


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _first_dir(root: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return root


def _match(audio_key: str, by_key: dict[str, list[Path]]) -> tuple[Path | None, str | None]:
    """The annotation of one audio file: exact key first, else a unique prefix/suffix match at a `_` boundary."""
    exact = by_key.get(audio_key, [])
    if len(exact) == 1:
        return exact[0], None
    if len(exact) > 1:
        return None, f"several annotation files match: {', '.join(str(p) for p in exact[:3])}"
    found = [p for k, ps in by_key.items() if k.startswith(audio_key + "_") or k.endswith("_" + audio_key) for p in ps]
    if len(found) == 1:
        return found[0], None
    if found:
        return None, f"several annotation files match: {', '.join(str(p) for p in found[:3])}"
    return None, "no annotation file with a matching name"


def read_paired_dataset(name: str, root) -> tuple[list[BeatTrack], list[tuple[str, str]]]:
    """Audio files paired with beat files by name (layout in the module docstring). Returns (tracks, problems)."""
    root = Path(root)
    audio_dir, ann_dir = _first_dir(root, AUDIO_DIRS), _first_dir(root, ANNOTATION_DIRS)
    audio_files = sorted(p for p in audio_dir.rglob("*") if p.is_file() and is_audio_file(p))
    ann_files = sorted(
        p for p in ann_dir.rglob("*") if p.is_file() and p.suffix.lower() in ANNOTATION_EXTENSIONS and not p.name.startswith(".")
    )
    if not audio_files:
        raise DataError(f"{root}: no audio files found (expected them under {root}/audio/ or in {root})")
    if not ann_files:
        raise DataError(f"{root}: no .beats/.txt annotation files found (expected them under {root}/annotations/ or in {root})")
    by_key: dict[str, list[Path]] = {}
    for p in ann_files:
        by_key.setdefault(_key(p.stem), []).append(p)
    tracks, problems = [], []
    for audio in audio_files:
        ann, why = _match(_key(audio.stem), by_key)
        if ann is None:
            problems.append((str(audio), why))
            continue
        try:
            beats, downbeats = read_beat_file(ann)
        except DataError as exc:
            problems.append((str(ann), str(exc)))
            continue
        track_id = str(audio.relative_to(audio_dir).with_suffix(""))
        tracks.append(BeatTrack(track_id, name, beats, downbeats, audio_path=audio))
    return tracks, problems


def _times(value, what: str, where: str) -> np.ndarray:
    if not isinstance(value, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        raise DataError(f"{where}: '{what}' must be a list of times in seconds")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except OverflowError:
        raise DataError(f"{where}: '{what}' holds a number too large to be a time") from None
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise DataError(f"{where}: '{what}' holds negative or non-finite times")
    return np.unique(arr)


def read_multitrack_dataset(name: str, root) -> tuple[list[BeatTrack], list[tuple[str, str]]]:
    """Songs of a generic multitrack folder with song-level "beats" in stems.json. Returns (tracks, problems)."""
    from ...data.multitrack import read_folder

    songs, problems = read_folder(root)
    tracks = []
    for song in songs:
        where = str(Path(song.root) / "stems.json") if song.root else song.id
        if "beats" not in song.meta:
            problems.append((where, "no song-level 'beats' list"))
            continue
        try:
            beats = _times(song.meta["beats"], "beats", where)
            if not len(beats):
                raise DataError(f"{where}: 'beats' is empty")
            downbeats = _times(song.meta["downbeats"], "downbeats", where) if "downbeats" in song.meta else None
        except DataError as exc:
            problems.append((where, str(exc)))
            continue
        tracks.append(BeatTrack(song.id, name, beats, downbeats, song=song))
    return tracks, problems


def is_multitrack_folder(root) -> bool:
    root = Path(root)
    return any((p / "stems.json").is_file() for p in root.iterdir() if p.is_dir())


def read_beat_dataset(name: str, root, limit: int | None = None) -> tuple[list[BeatTrack], list[tuple[str, str]]]:
    """Read a beat-annotated dataset from `root`, detecting its layout. Returns (tracks sorted by id, problems).

    Raises DataError when the folder is missing or yields no usable track; unusable items are returned as problems.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder {name!r} not found")
    if is_multitrack_folder(root):
        tracks, problems = read_multitrack_dataset(name, root)
    else:
        tracks, problems = read_paired_dataset(name, root)
    if not tracks:
        detail = f"; first problem: {problems[0][0]}: {problems[0][1]}" if problems else ""
        raise DataError(f"{root}: no usable annotated track in dataset {name!r}{detail}")
    tracks.sort(key=lambda t: t.id)
    return (tracks[:limit] if limit else tracks), problems


def parse_dataset_spec(spec: str, default_root: str = "data") -> tuple[str, Path]:
    """'DATASET[:ROOT]' -> (name, root); without ROOT the dataset is looked for in `default_root/DATASET`."""
    name, sep, root = spec.partition(":")
    name = name.strip()
    if not name:
        raise DataError(f"dataset spec {spec!r}: expected DATASET[:ROOT]")
    return name, Path(root) if sep and root else Path(default_root) / name
