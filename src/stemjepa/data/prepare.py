"""`stemjepa prepare`: decode a dataset once into the training cache, so training never decodes compressed audio.

List the songs with the dataset's loader, leave out those already in the cache and unchanged since (a run can be
interrupted and started again; a song whose files changed is prepared again, and when the whole dataset is listed, songs
that left it leave the cache), decode and write the others in parallel worker processes (one song per task, written atomically by
`stemjepa.data.training_cache.write_cache_song`), then write the manifest with everything that was skipped and why. Unequal
stem lengths are zero-padded to the longest stem (`load_song(length="pad")`); the activity index marks the padding silent.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..audio import SAMPLE_RATE
from ..errors import DataError, StemJepaError
from ..fsutil import WriteError, clean_stale_temps, read_json
from .datasets import load_dataset
from .multitrack import Song, load_song
from .training_cache import MANIFEST, drop_songs, finalize_cache, fresh_song_ids, remove_song, song_key, write_cache_song

log = logging.getLogger(__name__)


@dataclass
class PrepareResult:
    """What a run did. `skipped` entries: {"song", "stem", "path", "reason"} (unused keys are None)."""

    cache_dir: Path
    dataset: str
    n_listed: int
    n_already: int
    n_prepared: int
    skipped: list[dict] = field(default_factory=list)
    manifest: dict | None = None


def default_jobs() -> int:
    """One worker per core, at most 8 (each holds one decoded song in memory)."""
    return max(1, min(8, os.cpu_count() or 1))


def _skip(song=None, stem=None, path=None, reason="") -> dict:
    return {"song": song, "stem": stem, "path": None if path is None else str(path), "reason": reason}


def _prepare_one(task: tuple[Song, str, str, int]) -> tuple[str, str | None, list, bool]:
    """Worker: decode one song and write it to the cache.

    Returns (song id, error or None, skipped stems, fatal): a write error (disk full, read-only cache) is fatal, since
    every other song would fail the same way; a song that cannot be read is not.
    """
    song, cache_dir, dataset, sample_rate = task
    try:
        loaded = load_song(song, sample_rate=sample_rate, length="pad")
        write_cache_song(cache_dir, loaded, dataset)
        return song.id, None, list(loaded.skipped), False
    except WriteError as exc:
        return song.id, str(exc), [], True
    except StemJepaError as exc:
        return song.id, str(exc), [], False
    except Exception as exc:  # noqa: BLE001 - one bad song must not stop a long batch job
        return song.id, f"{type(exc).__name__}: {exc}", [], False


def _check_out(out: Path, dataset: str) -> None:
    """Refuse to write into a folder that is not a (compatible) cache: never mix our files with the user's."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; choose a new folder for the cache")
    manifest = out / MANIFEST
    if manifest.is_file():
        try:
            other = read_json(manifest, error=DataError).get("dataset")
        except (DataError, AttributeError):
            other = None
        if other and other != dataset:
            raise DataError(f"{out}: holds a cache of dataset {other!r}, not {dataset!r}; choose another --out")
        return
    if (out / "songs").is_dir():  # an interrupted first run: check the dataset of a song already written
        record = next((out / "songs").glob("*.json"), None)
        try:
            other = read_json(record, error=DataError).get("dataset") if record else None
        except (DataError, AttributeError):
            other = None
        if other and other != dataset:
            raise DataError(f"{out}: holds songs of dataset {other!r}, not {dataset!r}; choose another --out")
        return
    if not any(out.iterdir()):
        return
    raise DataError(f"{out}: exists, is not empty and is not a stemjepa cache; choose an empty or new folder")


def _previous_stem_skips(out: Path, song: Song) -> list[dict]:
    try:
        record = read_json(out / "songs" / f"{song_key(song.id)}.json", error=DataError)
        return [_skip(song.id, s.get("stem"), None, s.get("reason", "")) for s in record.get("skipped_stems", [])]
    except (DataError, AttributeError):
        return []


class _Recorder:
    """Takes each song's result as it arrives: counts it, records its skips, moves the bar; a fatal error (a full disk)
    stops the run, keeping the songs already written."""

    def __init__(self, out: Path, todo: list[Song], skipped: list[dict], n_already: int, bar):
        self.out, self.by_id, self.skipped, self.n_already, self.bar = out, {s.id: s for s in todo}, skipped, n_already, bar
        self.n_ok = 0

    def __call__(self, result: tuple[str, str | None, list, bool]) -> None:
        song_id, error, stem_skips, fatal = result
        if fatal:
            raise StemJepaError(f"{error} (the {self.n_ok + self.n_already} songs already in the cache are kept; run the "
                                "same command again to continue)")
        if error is None:
            self.n_ok += 1
            self.skipped.extend(_skip(song_id, name, None, reason) for name, reason in stem_skips)
        else:
            remove_song(self.out, song_id)  # a stale copy of a song that can no longer be read must go
            self.skipped.append(_skip(song_id, None, self.by_id[song_id].root, error))
            log.warning("song %s skipped: %s", song_id, error)
        self.bar.update(1)
        self.bar.set_postfix(skipped=sum(1 for s in self.skipped if s["stem"] is None and s["song"]), refresh=False)


def _run(tasks: list[tuple], jobs: int, record: _Recorder) -> None:
    if jobs <= 1 or len(tasks) <= 1:
        for task in tasks:
            record(_prepare_one(task))
        return
    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(min(jobs, len(tasks))) as pool:
        for result in pool.imap_unordered(_prepare_one, tasks, chunksize=1):
            record(result)


def prepare(
    dataset: str,
    root,
    out,
    split: str | None = None,
    jobs: int = 1,
    sample_rate: int = SAMPLE_RATE,
    progress: bool = True,
) -> PrepareResult:
    """Prepare (or resume preparing) the training cache `out` from dataset `dataset` at `root`."""
    from tqdm import tqdm

    out = Path(out).expanduser()
    _check_out(out, dataset)
    problems: list[tuple[str, str]] = []
    songs = load_dataset(dataset, root, split=split, problems=problems)
    skipped = [_skip(path=p, reason=r) for p, r in problems]
    if split in (None, "all"):  # the whole dataset was listed: songs that left it leave the cache
        drop_songs(out, {s.id for s in songs})
    done = fresh_song_ids(out, songs)  # a song whose files changed since it was cached is prepared again
    todo = [s for s in songs if s.id not in done]
    already = [s for s in songs if s.id in done]
    for song in already:
        skipped.extend(_previous_stem_skips(out, song))
    out.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out)  # what a killed or failed run left (its temp files would keep a full disk full)
    clean_stale_temps(out / "songs")

    tasks = [(s, str(out), dataset, sample_rate) for s in todo]
    bar = tqdm(total=len(tasks), unit="song", desc=f"prepare {dataset}", disable=not progress or not tasks)
    if already and progress:
        bar.write(f"{len(already)} of {len(songs)} songs already in {out}; preparing the other {len(todo)}")
    record = _Recorder(out, todo, skipped, len(already), bar)
    try:
        _run(tasks, jobs, record)
    finally:
        bar.close()

    result = PrepareResult(out, dataset, len(songs), len(already), record.n_ok, skipped)
    if record.n_ok == 0 and not already:
        reasons = "; ".join(f"{s['song'] or s['path']}: {s['reason']}" for s in skipped[:3])
        raise DataError(f"{out}: no song could be prepared ({reasons})")
    result.manifest = finalize_cache(out, dataset, skipped)
    return result


def format_summary(result: PrepareResult, max_lines: int = 20) -> str:
    """A human summary: what was prepared, then each skipped item and why (the full list is in cache.json)."""
    m = result.manifest or {}
    lines = [
        f"prepared {result.n_prepared} songs into {result.cache_dir}"
        + (f" ({result.n_already} were already there)" if result.n_already else "")
        + (f"; the cache holds {m.get('n_songs', 0)} songs, {m.get('n_stems', 0)} stems, {m.get('hours', 0.0):.2f} h"
           if m else "")
    ]
    if result.skipped:
        n_songs = sum(1 for s in result.skipped if s["stem"] is None)
        lines.append(f"skipped {len(result.skipped)} items ({n_songs} songs or files, "
                     f"{len(result.skipped) - n_songs} stems of prepared songs):")
        for s in result.skipped[:max_lines]:
            where = s["path"] if s["song"] is None else (f"{s['song']} / {s['stem']}" if s["stem"] else s["song"])
            lines.append(f"  - {where}: {s['reason']}")
        if len(result.skipped) > max_lines:
            lines.append(f"  ... and {len(result.skipped) - max_lines} more (all listed in {result.cache_dir / MANIFEST})")
    return "\n".join(lines)
