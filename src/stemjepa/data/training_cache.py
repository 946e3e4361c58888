"""The training cache: songs decoded once to memory-mappable float16 arrays plus a frame-level activity index.
(The retrieval benchmark's cache of embeddings is another thing: `stemjepa.evaluation.embedding_cache`.)

Layout of a cache folder:
    cache.json                  manifest (written by `finalize_cache`; rebuilt from the per-song files when missing)
    songs/<key>.npy             float16 (S, N) stems at the cache's sample rate, equal lengths
    songs/<key>.rms.npy         float16 (S, F) frame RMS in dBFS over `frame_samples`-long frames (the activity index)
    songs/<key>.json            per-song record, written last: a song is complete iff this file exists

Activity is stored as RMS level rather than a yes/no flag, so the silence threshold is a training setting, not a preparation one.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..fsutil import atomic_write, read_json, safe_component
from .multitrack import LoadedSong

CACHE_VERSION = 1
FRAME_SECONDS = 0.1
MANIFEST = "cache.json"


def song_key(song_id: str) -> str:
    """A file-system-safe, collision-free name for a song id."""
    safe = safe_component(song_id, limit=80, strip=True, empty="song")
    return f"{safe}-{hashlib.sha1(song_id.encode()).hexdigest()[:8]}"


def frame_rms_db(audio: np.ndarray, frame_samples: int) -> np.ndarray:
    """RMS level in dBFS of consecutive non-overlapping frames along the last axis (a last partial frame is kept)."""
    audio = np.asarray(audio, dtype=np.float32)
    n = audio.shape[-1]
    n_frames = max(1, -(-n // frame_samples))
    padded = np.zeros(audio.shape[:-1] + (n_frames * frame_samples,), dtype=np.float32)
    padded[..., :n] = audio
    frames = padded.reshape(audio.shape[:-1] + (n_frames, frame_samples))
    power = np.mean(frames.astype(np.float64) ** 2, axis=-1)
    return (10.0 * np.log10(power + 1e-12)).astype(np.float32)


def write_cache_song(cache_dir, loaded: LoadedSong, dataset: str = "folder") -> dict:
    """Write one decoded song into the cache (atomic per song, safe from several processes at once)."""
    cache_dir = Path(cache_dir)
    songs_dir = cache_dir / "songs"
    songs_dir.mkdir(parents=True, exist_ok=True)
    song = loaded.song
    key = song_key(song.id)
    frame_samples = int(round(FRAME_SECONDS * loaded.sample_rate))
    audio16 = np.clip(loaded.audio, -65000, 65000).astype(np.float16)
    rms = frame_rms_db(loaded.audio, frame_samples).astype(np.float16)
    atomic_write(songs_dir / f"{key}.npy", lambda f: np.save(f, audio16))
    atomic_write(songs_dir / f"{key}.rms.npy", lambda f: np.save(f, rms))
    record = {
        "id": song.id,
        "key": key,
        "dataset": dataset,
        "split": song.split,
        "sample_rate": loaded.sample_rate,
        "n_samples": int(loaded.audio.shape[1]),
        "frame_samples": frame_samples,
        "stems": [
            {"name": s.name, "labels": list(s.labels), "source": str(s.path), "stream": s.stream}
            for s in loaded.stems
        ],
        "skipped_stems": [{"stem": n, "reason": r} for n, r in loaded.skipped],
        "sources": source_signature(song),
        "meta": _jsonable(song.meta),
    }
    atomic_write(songs_dir / f"{key}.json", lambda f: f.write(json.dumps(record).encode()))
    return record


def source_signature(song) -> list:
    """(path, size, mtime) of every source file of a song, to notice later that a cached song went stale."""
    sig = []
    for stem in song.stems:
        try:
            st = os.stat(stem.path)
            sig.append([str(stem.path), st.st_size, st.st_mtime_ns])
        except OSError:
            sig.append([str(stem.path), None, None])
    return sig


def fresh_song_ids(cache_dir, songs) -> set[str]:
    """Ids of `songs` whose cached copy exists and was made from the same source files as they are now."""
    cache_dir = Path(cache_dir)
    if not (cache_dir / "songs").is_dir():
        return set()
    by_id = {r["id"]: r for r in _song_records(cache_dir)}
    return {s.id for s in songs if s.id in by_id and by_id[s.id].get("sources") == source_signature(s)}


def remove_song(cache_dir, song_id: str) -> None:
    """Remove one song from the cache (its record first, so a half-removed song never counts as complete)."""
    key = song_key(song_id)
    for suffix in (".json", ".npy", ".rms.npy"):
        (Path(cache_dir) / "songs" / f"{key}{suffix}").unlink(missing_ok=True)


def drop_songs(cache_dir, keep_ids: set[str]) -> int:
    """Remove cached songs whose id is not in `keep_ids` (songs deleted from the source). Returns how many."""
    gone = [r["id"] for r in _song_records(Path(cache_dir))] if (Path(cache_dir) / "songs").is_dir() else []
    gone = [song_id for song_id in gone if song_id not in keep_ids]
    for song_id in gone:
        remove_song(cache_dir, song_id)
    return len(gone)


def _jsonable(obj):
    try:
        json.dumps(obj)
        return obj
    except TypeError:
        return json.loads(json.dumps(obj, default=str))


_RECORD_KEYS = {"id", "key", "sample_rate", "n_samples", "stems"}  # what readers of a record index


def _song_records(cache_dir: Path) -> list[dict]:
    records = []
    for path in sorted((cache_dir / "songs").glob("*.json")):
        try:
            record = read_json(path, error=DataError)
        except DataError:
            continue  # a record is written atomically; an unreadable one is treated as not cached
        if isinstance(record, dict) and _RECORD_KEYS <= record.keys():
            records.append(record)
    return records


def finalize_cache(cache_dir, dataset: str = "folder", skipped: list[dict] | None = None) -> dict:
    """Write the manifest `cache.json` from the per-song records."""
    cache_dir = Path(cache_dir)
    records = _song_records(cache_dir)
    if not records:
        raise DataError(f"{cache_dir}: no song could be prepared")
    rates = {r["sample_rate"] for r in records}
    if len(rates) != 1:
        raise DataError(f"{cache_dir}: songs at several sample rates {sorted(rates)}; prepare into separate caches")
    manifest = {
        "version": CACHE_VERSION,
        "dataset": dataset,
        "sample_rate": rates.pop(),
        "frame_seconds": FRAME_SECONDS,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "n_songs": len(records),
        "n_stems": sum(len(r["stems"]) for r in records),
        "hours": sum(r["n_samples"] / r["sample_rate"] for r in records) / 3600.0,
        "skipped": skipped or [],
        "songs": [{k: r[k] for k in ("id", "key", "split")} for r in records],
    }
    atomic_write(cache_dir / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
    return manifest


def is_cache(path) -> bool:
    return (Path(path) / MANIFEST).is_file()


class TrainingCache:
    """Read access to a prepared cache. Arrays are memory-mapped lazily, once per process (data-loader workers included)."""

    def __init__(self, cache_dir, split: str | None = None):
        self.root = Path(cache_dir)
        manifest_path = self.root / MANIFEST
        if not manifest_path.is_file():
            raise DataError(f"{self.root}: not a stemjepa training cache (no {MANIFEST}); create one with `stemjepa prepare`")
        try:
            self.manifest = read_json(manifest_path, error=DataError)
        except DataError as exc:
            raise DataError(f"{exc} (a corrupt manifest: run `stemjepa prepare` again)") from None
        if not isinstance(self.manifest, dict):
            raise DataError(f"{manifest_path}: corrupt manifest (not a JSON object); run `stemjepa prepare` again")
        if self.manifest.get("version", 0) > CACHE_VERSION:
            raise DataError(f"{manifest_path}: written by a newer stemjepa (cache version {self.manifest['version']})")
        self.sample_rate = int(self.manifest["sample_rate"])
        records = _song_records(self.root)
        if split not in (None, "all"):
            records = [r for r in records if r.get("split") in (split, None)]
        if not records:
            raise DataError(f"{self.root}: no songs in the cache" + (f" for split {split!r}" if split else ""))
        self.songs = records
        self._audio: dict[int, np.ndarray] = {}
        self._rms: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.songs)

    def audio(self, i: int) -> np.ndarray:
        """(S, N) float16 memory map of song i."""
        if i not in self._audio:
            self._audio[i] = np.load(self.root / "songs" / f"{self.songs[i]['key']}.npy", mmap_mode="r")
        return self._audio[i]

    def rms_db(self, i: int) -> np.ndarray:
        """(S, F) frame RMS levels of song i, in dBFS."""
        if i not in self._rms:
            self._rms[i] = np.load(self.root / "songs" / f"{self.songs[i]['key']}.rms.npy").astype(np.float32)
        return self._rms[i]

    def frame_samples(self, i: int) -> int:
        return int(self.songs[i]["frame_samples"])

    def __getstate__(self):  # memory maps are reopened in each worker process
        state = dict(self.__dict__)
        state["_audio"], state["_rms"] = {}, {}
        return state
