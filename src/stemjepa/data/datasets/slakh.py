"""Slakh2100: MIDI rendered with virtual instruments, one flac per instrument.

Layout, as distributed: ROOT/{train,validation,test}/TrackNNNNN/{metadata.yaml, mix.flac,
stems/SNN.flac, MIDI/SNN.mid}. metadata.yaml: `stems: {SNN: {inst_class, midi_program_name, program_num, is_drum,
audio_rendered, plugin_name}}`. Each rendered stem is one Stem labelled [inst_class, midi_program_name] in lower case
(e.g. ["piano", "acoustic grand piano"]; drums, whose program name repeats the class, get ["drums"]). Stems with
audio_rendered false have no file and are left out silently; a rendered stem whose file is missing is reported.
Splits are the train/validation/test folders; the "omitted" folder of the redux release (duplicated songs) is not
read. A folder holding TrackNNNNN folders directly (e.g. BabySlakh) is read with split None.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from ...errors import DataError
from ...fsutil import MAX_JSON_BYTES
from ..multitrack import Song, Stem
from . import dedupe_labels

SPLITS = ("train", "validation", "test")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _track_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("Track"))


def _song(folder: Path, split: str | None, problems: list) -> Song | None:
    meta_path = folder / "metadata.yaml"
    if not meta_path.is_file():
        problems.append((str(folder), "missing metadata.yaml; song skipped"))
        return None
    try:
        if meta_path.stat().st_size > MAX_JSON_BYTES:  # metadata is kilobytes; libyaml bounds the nesting itself
            problems.append((str(meta_path), f"larger than {MAX_JSON_BYTES / 1e6:g} MB, not a metadata file; song skipped"))
            return None
        meta = yaml.load(meta_path.read_text(), Loader=_Loader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        problems.append((str(meta_path), f"unreadable YAML ({str(exc).splitlines()[0]}); song skipped"))
        return None
    entries = meta.get("stems") if isinstance(meta, dict) else None
    if not isinstance(entries, dict):
        problems.append((str(meta_path), "no 'stems' mapping; song skipped"))
        return None
    audio_dir = folder / str(meta.get("audio_dir") or "stems")
    stems = []
    for name, info in sorted(entries.items(), key=lambda kv: str(kv[0])):
        name = str(name)
        if not isinstance(info, dict):
            problems.append((str(meta_path), f"stem {name}: not a mapping; left out"))
            continue
        if info.get("audio_rendered") is False:
            continue
        path = next((p for p in (audio_dir / f"{name}.flac", audio_dir / f"{name}.wav") if p.is_file()), None)
        if path is None:
            problems.append((str(audio_dir / f"{name}.flac"), "rendered stem without an audio file; stem left out"))
            continue
        labels = dedupe_labels([str(info.get("inst_class") or "").lower(), str(info.get("midi_program_name") or "").lower()])
        extra = {k: info[k] for k in ("program_num", "is_drum", "plugin_name") if k in info}
        stems.append(Stem(name=name, path=path, labels=labels, meta=extra))
    if not stems:
        problems.append((str(folder), "no rendered stem with an audio file; song skipped"))
        return None
    song_meta = {k: v for k, v in meta.items() if k != "stems" and isinstance(v, (str, int, float, bool))}
    return Song(id=folder.name, stems=stems, split=split, meta=song_meta, root=folder)


def load_slakh2100(root: Path, problems: list) -> list[Song]:
    """Songs of Slakh2100 (or BabySlakh), split from the folder each track sits in."""
    groups = [(s, root / s) for s in SPLITS if (root / s).is_dir()]
    if not groups and _track_dirs(root):
        groups = [(None, root)]
    tracks = [(split, t) for split, d in groups for t in _track_dirs(d)]
    if not tracks:
        raise DataError(f"{root}: no Slakh2100 tracks; expected {root}/{{train,validation,test}}/TrackNNNNN/metadata.yaml")
    songs = [s for s in (_song(t, split, problems) for split, t in tracks) if s is not None]
    if not songs:
        raise DataError(f"{root}: none of the {len(tracks)} Slakh2100 track folders could be read "
                        f"({problems[-1][0]}: {problems[-1][1]})")
    return songs
