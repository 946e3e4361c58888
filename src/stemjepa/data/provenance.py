"""Which songs a checkpoint was trained on, so that an evaluation can tell when it tests on training songs.

A checkpoint stores, per dataset family, the sorted identities of its training songs, their number and a sha256 digest
(`checkpoint["stemjepa"]["training_songs"]`). A phase-2 run started from a phase-1 checkpoint (`--init`) or resumed
inherits the songs recorded there too: its encoder has seen them.

Identities: MUSDB18 and MUSDB18-HQ share one family (the same 150 tracks, the same "Artist - Title" ids), MoisesDB tracks are
their uuid, Slakh2100 tracks their TrackNNNNN name. A generic folder names its songs freely (two synthetic corpora both hold a
`song_00000`), so a folder song is its folder name plus a digest of its stems.json metadata and stem file names.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

FAMILY = {"musdb18": "musdb18", "musdb18hq": "musdb18", "moisesdb": "moisesdb", "slakh2100": "slakh2100", "folder": "folder"}


def family(dataset: str | None) -> str:
    return FAMILY.get(str(dataset or "folder"), str(dataset))


def song_identity(dataset: str | None, song_id: str, meta: dict | None = None, stem_files=()) -> str:
    """The identity of a song across datasets, copies and file moves (see the module docstring)."""
    if family(dataset) != "folder":
        return str(song_id)
    blob = json.dumps(meta or {}, sort_keys=True, default=str) + "|" + "|".join(sorted(Path(str(f)).name for f in stem_files))
    return f"{song_id}#{hashlib.sha256(blob.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"


def record_identity(record: dict) -> tuple[str, str]:
    """(family, identity) of a training-cache song record (`songs/<key>.json`)."""
    files = [s[0] for s in record.get("sources") or []] or [s.get("source", "") for s in record.get("stems", [])]
    return family(record.get("dataset")), song_identity(record.get("dataset"), record["id"], record.get("meta"), files)


def song_key(dataset: str, song) -> str:
    """Identity of a `stemjepa.data.multitrack.Song` listed by a dataset loader (the evaluation side)."""
    return song_identity(dataset, song.id, song.meta, [s.path for s in song.stems])


def _entry(ids) -> dict:
    ids = sorted(set(ids))
    return {"n": len(ids), "digest": hashlib.sha256("\n".join(ids).encode()).hexdigest(), "ids": ids}


def training_songs(cache_records, inherited: dict | None = None) -> dict:
    """The record of a run: {family: {"n", "digest", "ids"}} over the cache's song records, merged with `inherited`."""
    by_family: dict[str, set[str]] = {}
    for fam, entry in (inherited or {}).items():
        by_family.setdefault(fam, set()).update(entry.get("ids") or [])
    for rec in cache_records:
        fam, ident = record_identity(rec)
        by_family.setdefault(fam, set()).add(ident)
    return {fam: _entry(ids) for fam, ids in sorted(by_family.items())}


def overlap(songs, dataset: str, record: dict | None) -> list[str] | None:
    """Ids of `songs` (of `dataset`) that the checkpoint was trained on; None when the checkpoint records no songs."""
    if record is None:
        return None
    trained = set((record.get(family(dataset)) or {}).get("ids") or [])
    return [s.id for s in songs if song_key(dataset, s) in trained]


__all__ = ["family", "song_identity", "record_identity", "song_key", "training_songs", "overlap"]
