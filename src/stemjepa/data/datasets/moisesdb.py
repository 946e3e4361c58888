"""MoisesDB: 240 songs, stems grouped by category (stemName) with an instrument (trackType) per source file.

Layout, as distributed: ROOT/moisesdb_v0.1/<track_uuid>/data.json and <stemName>/<track_id>.<extension>
(ROOT may also be the moisesdb_v0.1 folder itself). Each source file is one Stem labelled
[readable stemName, readable trackType], e.g. ["guitar", "distorted electric guitar"] or ["other keys", "synth pad"];
the raw strings and the has_bleed flag are kept in Stem.meta ("stem_name", "track_type", "has_bleed"). A stemName
that appears twice in data.json is fine: every file is its own stem. Sources of one song differ in length; they are
zero-padded to the longest when decoded (`load_song(length="pad")`).

Split. MoisesDB has no official split, and the paper evaluates on all of it, so the default evaluation split is "all".
For training on part of it, `splits/moisesdb.json` defines a deterministic split that needs no list of the songs:
a song is "test" when the first 8 hex digits of sha256(track uuid, lower-case) read as an integer are < 20 modulo 100
(about 20 % of the songs, stable whatever subset a user has), unless the file lists the uuid explicitly under "test"
or "train" (explicit entries win, so a split can be frozen or adjusted without changing the rule).
"""
from __future__ import annotations

import hashlib
import logging
import re
from functools import lru_cache
from pathlib import Path

from ...errors import DataError
from ...fsutil import read_json
from ..multitrack import Song, Stem
from . import dedupe_labels, readable

log = logging.getLogger(__name__)

PROVIDER = "moisesdb_v0.1"
SPLIT_FILE = Path(__file__).resolve().parent.parent / "splits" / "moisesdb.json"

# Cleaned trackType (see `_key`) -> label. Long descriptive raw strings become the short name of the instrument.
TRACK_TYPES = {
    "lead male singer": "lead male singer",
    "lead female singer": "lead female singer",
    "human choir": "human choir",
    "background vocals": "background vocals",
    "bass guitar": "bass guitar",
    "bass synthesizer": "bass synthesizer",
    "contrabass double bass": "double bass",
    "contrabass": "double bass",
    "double bass": "double bass",
    "tuba": "tuba",
    "bassoon": "bassoon",
    "kick drum": "kick drum",
    "snare drum": "snare drum",
    "toms": "toms",
    "hi-hat": "hi-hat",
    "hi hat": "hi-hat",
    "overheads": "overheads",
    "cymbals": "cymbals",
    "drum machine": "drum machine",
    "full acoustic drumkit": "full acoustic drumkit",
    "a-tonal percussion": "atonal percussion",
    "atonal percussion": "atonal percussion",
    "pitched percussion": "pitched percussion",
    "grand piano": "grand piano",
    "electric piano": "electric piano",
    "organ electric organ": "organ",
    "organ": "organ",
    "synth pad": "synth pad",
    "synth lead": "synth lead",
    "other sounds": "other keys",
    "clean electric guitar": "clean electric guitar",
    "distorted electric guitar": "distorted electric guitar",
    "acoustic guitar": "acoustic guitar",
    "lap steel guitar or slide guitar": "slide guitar",
    "slide guitar": "slide guitar",
    "banjo, mandolin, ukulele, harp": "banjo, mandolin, ukulele, harp",
    "other plucked": "other plucked",
    "violin": "violin",
    "viola": "viola",
    "cello": "cello",
    "violin section": "violin section",
    "viola section": "viola section",
    "cello section": "cello section",
    "string section": "string section",
    "other strings": "other strings",
    "brass": "brass",
    "flutes": "flutes",
    "flute": "flute",
    "reeds": "reeds",
    "other wind": "other wind",
    "fx": "sound effects",
    "click track": "click track",
}


def _key(raw: str) -> str:
    """Cleaned trackType: readable, without parenthesised details, a trailing "etc" or a "/..." elaboration."""
    text = readable(raw)
    text = re.sub(r"\(.*?\)", " ", text)
    text = text.split("/")[0]
    text = re.sub(r"[\s,]*\betc\.?$", "", text.strip())
    return " ".join(text.split()).strip(" ,")


def track_type_label(raw: str, stem_name: str) -> tuple[str, bool]:
    """(label, known) for a raw trackType; "other" becomes "other <category>" (e.g. "other vocals")."""
    key = _key(raw)
    category = readable(stem_name)
    if key == "other":
        return ("other" if category == "other" else f"other {category}"), True
    if key in TRACK_TYPES:
        return TRACK_TYPES[key], True
    return (key or readable(raw)), False


@lru_cache(maxsize=4)
def _split_table(path: str) -> tuple[frozenset, frozenset, int]:
    spec = read_json(path, error=DataError)
    try:
        return frozenset(spec.get("test", [])), frozenset(spec.get("train", [])), int(spec.get("test_percent", 20))
    except (AttributeError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: not a MoisesDB split file ({exc})") from None


def moisesdb_split(track_id: str, split_file: Path = SPLIT_FILE) -> str:
    """"train" or "test" for a MoisesDB track uuid (see the module docstring for the rule)."""
    test, train, percent = _split_table(str(split_file))
    tid = track_id.lower()
    if tid in test:
        return "test"
    if tid in train:
        return "train"
    return "test" if int(hashlib.sha256(tid.encode()).hexdigest()[:8], 16) % 100 < percent else "train"


def _base_folder(root: Path) -> Path:
    for cand in (root / PROVIDER, root / "moisesdb" / PROVIDER, root):
        if cand.is_dir() and any((d / "data.json").is_file() for d in cand.iterdir() if d.is_dir()):
            return cand
    raise DataError(f"{root}: no MoisesDB songs; expected {root}/{PROVIDER}/<track uuid>/data.json")


def _song(folder: Path, problems: list, unknown: dict) -> Song | None:
    meta_path = folder / "data.json"
    if not meta_path.exists():
        problems.append((str(folder), "missing data.json; song skipped"))
        return None
    try:
        data = read_json(meta_path, error=DataError)  # bounded: a FIFO, a huge or a deeply nested file is refused
    except DataError as exc:
        problems.append((str(meta_path), f"{str(exc).removeprefix(f'{meta_path}: ')}; song skipped"))
        return None
    entries = data.get("stems") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        problems.append((str(meta_path), "no 'stems' list; song skipped"))
        return None
    stems = []
    for group in entries:
        stem_name = str(group.get("stemName", "")) if isinstance(group, dict) else ""
        tracks = group.get("tracks") if isinstance(group, dict) else None
        if not stem_name or not isinstance(tracks, list):
            problems.append((str(meta_path), f"a stem entry without stemName/tracks ({str(group)[:80]}); left out"))
            continue
        for track in tracks:
            if not isinstance(track, dict) or not track.get("id"):
                problems.append((str(meta_path), f"a track of stem {stem_name!r} has no id; left out"))
                continue
            tid, raw_type = str(track["id"]), str(track.get("trackType", ""))
            path = folder / stem_name / f"{tid}.{track.get('extension') or 'wav'}"
            if not path.is_file():
                found = sorted(folder.glob(f"*/{tid}.*"))
                if not found:
                    problems.append((str(path), "missing audio file; stem left out"))
                    continue
                path = found[0]
            label, known = track_type_label(raw_type, stem_name) if raw_type else ("", True)
            if not known:
                unknown.setdefault(raw_type, [label, 0])[1] += 1
            stems.append(
                Stem(
                    name=f"{stem_name}/{tid}",
                    path=path,
                    labels=dedupe_labels([readable(stem_name), label]),
                    meta={"has_bleed": track.get("has_bleed"), "stem_name": stem_name, "track_type": raw_type},
                )
            )
    if not stems:
        problems.append((str(folder), "no stem audio found; song skipped"))
        return None
    meta = {k: data[k] for k in ("song", "artist", "genre") if k in data}
    return Song(id=folder.name, stems=stems, split=moisesdb_split(folder.name), meta=meta, root=folder)


def load_moisesdb(root: Path, problems: list) -> list[Song]:
    """Songs of MoisesDB; unknown trackType strings are warned about once each and used in readable form."""
    base = _base_folder(root)
    unknown: dict[str, list] = {}
    songs = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        song = _song(folder, problems, unknown)
        if song is not None:
            songs.append(song)
    for raw, (label, count) in sorted(unknown.items()):
        log.warning("MoisesDB: unknown trackType %r (%d stems), used as the label %r", raw, count, label)
    return songs
