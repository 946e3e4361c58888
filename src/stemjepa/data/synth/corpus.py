"""The corpus writer: plan, arrange, render, mix and write songs, in parallel and resumably.

Song `i` of a corpus draws everything from a random generator seeded by (seed, i), so a corpus is the same whatever
the number of worker processes, and an interrupted run picks up where it stopped: each song is written in a staging
folder and moved into place only once complete (its metadata file written last).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ...audio import SAMPLE_RATE
from ...errors import ConfigError, DataError
from ...fsutil import atomic_write_text, read_json
from .palette import KIT_PARTS, check_names
from .parts import Part, arrange
from .render import render_instrument, resolve_soundfont
from .theory import SongPlan, plan_song

log = logging.getLogger(__name__)

MARKER = "synth_corpus.json"
STAGING = ".partial"
MOISES_ROOT = "moisesdb_v0.1"
LAYOUTS = ("folder", "moisesdb")
GENERATOR_VERSION = 1
KIT_TRIM_DB = {"kick drum": 0.0, "snare drum": -1.0, "toms": -4.0, "hi-hat": -9.0, "cymbals": -10.0}
_NAMESPACE = uuid.UUID("6f1c53e2-5b0e-4d36-9a53-0d7e1f3c2a11")


@dataclass(frozen=True)
class Settings:
    out_dir: str
    seconds: float
    seed: int
    exclude: tuple[str, ...]
    require: tuple[str, ...]
    layout: str
    soundfont: str
    sample_rate: int
    production: str = "none"


# ----------------------------------------------------------------------------------------------- one song
def song_rng(seed: int, index: int) -> tuple[np.random.Generator, int]:
    """The generator of song `index`, and the song's own seed (stored in its metadata)."""
    ss = np.random.SeedSequence([seed, index])
    return np.random.default_rng(ss), int(ss.generate_state(1)[0])


def compose(seed: int, index: int, seconds: float, exclude=(), require=(),
            production: str = "none") -> tuple[SongPlan, list[Part], np.random.Generator]:
    """The plan and parts (notes) of song `index`; the returned generator continues for humanising and mixing.

    Production "full" draws from wider genres, meters and tempos (see theory.WIDE_GROOVES)."""
    rng, _ = song_rng(seed, index)
    plan = plan_song(rng, seconds, wide=production == "full")
    parts = arrange(plan, rng, exclude, require)
    return plan, parts, rng


def to_midi(part: Part, plan: SongPlan, rng: np.random.Generator, seconds: float, feel=None):
    """The part as a pretty_midi Instrument in seconds, with a little timing humanisation, or played with a
    `production.Feel` (production "full": lead or lag, the part's own swing, timing and velocity spread)."""
    import pretty_midi

    if feel is not None:
        from .production import humanised_midi

        return humanised_midi(part, plan, rng, seconds, feel)

    inst = pretty_midi.Instrument(program=part.program, is_drum=part.is_drum, name=part.instrument.name)
    sigma = 0.004 if part.is_drum else 0.008
    jitter = rng.normal(0, sigma, size=len(part.notes))
    for note, dt in zip(part.notes, jitter):
        start = max(0.0, plan.time(note.start) + note.delay + float(dt))
        if start >= seconds - 0.03:
            continue
        end = min(seconds, max(plan.time(note.end) + note.delay, start + 0.03))
        inst.notes.append(pretty_midi.Note(velocity=int(note.velocity), pitch=int(note.pitch), start=start, end=end))
    return inst


def _active_rms(x: np.ndarray, sr: int) -> float:
    """RMS over the frames where the signal plays (within 40 dB of its loudest frame)."""
    hop = max(1, sr // 20)
    n = len(x) // hop
    if n == 0:
        return float(np.sqrt(np.mean(x ** 2)) + 1e-12)
    frames = np.sqrt(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1))
    keep = frames > frames.max() * 0.01
    return float(np.sqrt(np.mean(frames[keep] ** 2)) + 1e-12)


def _room(rng: np.random.Generator, sr: int) -> np.ndarray:
    """The song's room: an exponentially decaying noise impulse response (unit energy)."""
    rt60 = float(rng.uniform(0.25, 1.4))
    n = int(min(rt60, 1.5) * sr)
    t = np.arange(n) / sr
    ir = rng.standard_normal(n) * np.exp(-6.91 * t / rt60)
    ir[: int(0.01 * sr)] *= np.linspace(0, 1, int(0.01 * sr))  # pre-delay-ish onset
    return (ir / np.sqrt(np.sum(ir ** 2))).astype(np.float32)


def mix_stems(stems: list[np.ndarray], parts: list[Part], rng: np.random.Generator,
              sr: int) -> tuple[list[np.ndarray], list[float]]:
    """Room reverb, level balance per mixing group, then one scale so stems and mix peak below -1 dBFS."""
    ir = _room(rng, sr)
    n = len(stems[0])
    size = 1 << int(math.ceil(math.log2(n + len(ir))))
    ir_spectrum = np.fft.rfft(ir, size)
    wet_by_group: dict[str, float] = {}
    out = []
    for x, part in zip(stems, parts):
        if part.group not in wet_by_group:
            lo, hi = (0.0, 0.06) if part.role == "bass" else ((0.03, 0.15) if part.role == "drums" else (0.08, 0.35))
            wet_by_group[part.group] = float(rng.uniform(lo, hi))
        wet = wet_by_group[part.group]
        if wet > 0:
            x = x + wet * np.fft.irfft(np.fft.rfft(x, size) * ir_spectrum, size)[:n]
        out.append(x.astype(np.float32))
    gains = [1.0] * len(out)
    for group in dict.fromkeys(p.group for p in parts):
        idx = [i for i, p in enumerate(parts) if p.group == group]
        ref = _level(np.sum([out[i] for i in idx], axis=0), sr)
        g = 10 ** (parts[idx[0]].level_db / 20) / ref
        for i in idx:
            gains[i] = g
    out = [x * g for x, g in zip(out, gains)]
    mix = np.sum(out, axis=0)
    scale = 10 ** (rng.uniform(-20.0, -14.0) / 20) / _active_rms(mix, sr)       # mix loudness varies per song
    peak = max(float(np.abs(mix).max()), max(float(np.abs(x).max()) for x in out)) * scale
    ceiling = 10 ** (-1.0 / 20)
    if peak > ceiling:
        scale *= ceiling / peak
    fade = np.ones(n, dtype=np.float32)
    k = min(n, int(0.03 * sr))
    fade[n - k:] = np.linspace(1, 0, k)
    out = [(x * scale * fade).astype(np.float32) for x in out]
    for x in out:
        x[np.abs(x) < 2.0 ** -16] = 0.0   # below half an LSB of 16-bit: true silence, not -1 LSB after writing
    return out, [20 * math.log10(max(g * scale, 1e-12)) for g in gains]


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def song_name(settings: Settings, index: int) -> str:
    if settings.layout == "moisesdb":
        return str(uuid.uuid5(_NAMESPACE, f"{settings.seed}/{index}"))
    return f"song_{index:05d}"


def song_folder(settings: Settings, index: int) -> Path:
    root = Path(settings.out_dir)
    if settings.layout == "moisesdb":
        root = root / MOISES_ROOT
    return root / song_name(settings, index)


def is_complete(folder: Path, layout: str) -> bool:
    """A song is complete when its metadata file (written last) parses and every audio file it lists exists."""
    meta = folder / ("data.json" if layout == "moisesdb" else "stems.json")
    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError):
        return False
    if layout == "moisesdb":
        files = [folder / s["stemName"] / f"{t['id']}.{t['extension']}" for s in data.get("stems", []) for t in s["tracks"]]
    else:
        files = [folder / s["file"] for s in data.get("stems", [])]
    return bool(files) and all(f.is_file() for f in files)


def render_song(index: int, settings: Settings) -> tuple[int, str, str]:
    """Render and write song `index`; returns (index, "done" | "kept" | "failed", message). Never raises."""
    folder = song_folder(settings, index)
    if is_complete(folder, settings.layout):
        return index, "kept", ""
    try:
        _write_song(index, settings, folder)
        return index, "done", ""
    except Exception as exc:  # noqa: BLE001 - one bad song must not stop the corpus
        log.debug("song %d failed", index, exc_info=True)
        return index, "failed", f"{type(exc).__name__}: {exc}"


def _level(x: np.ndarray, sr: int) -> float:
    """Loudness for balancing: RMS where it plays, but sparse hits (crest factor above 18 dB) judged by their peaks."""
    return max(_active_rms(x, sr), float(np.abs(x).max()) * 10 ** (-18 / 20))


def _render_kit(part: Part, midi, trims: dict[str, float], n: int, sr: int, sf2: Path) -> np.ndarray:
    """A kit (or one stem of a split kit) rendered piece by piece, each piece set to its level in the kit.

    Soundfonts balance kick, snare, hats and cymbals very differently; this gives every kit the same mix, whether
    it is written as one stem or split.
    """
    import pretty_midi

    pieces = [part.instrument] if "kit_part" in part.instrument.roles else list(KIT_PARTS)
    out = np.zeros(n, dtype=np.float32)
    for piece in pieces:
        sub = pretty_midi.Instrument(program=midi.program, is_drum=True, name=piece.name)
        sub.notes = [x for x in midi.notes if x.pitch in piece.keys]
        if not sub.notes:
            continue
        audio = render_instrument(sub, n, sr, sf2)
        if float(np.abs(audio).max()) > 1e-6:
            out += audio * (10 ** (trims[piece.name] / 20) / _level(audio, sr))
    return out


@dataclass
class _Song:
    """A rendered song before it is written: its plan, the parts that sounded, their audio, gains and effect chains."""

    plan: SongPlan
    parts: list[Part]
    stems: list[np.ndarray]
    gains_db: list[float]
    chains: list
    feels: dict | None = None  # production "full": the player of each mixing group
    production: dict | None = None  # production "full": the song's production record


def _play(index: int, settings: Settings) -> tuple[SongPlan, list[Part], list, dict | None, np.random.Generator]:
    """Compose song `index` and play every part as MIDI (with a feel per mixing group in production "full"); the
    generator continues for rendering and mixing. The draws' order is the corpus's: changing it changes every song."""
    seconds = settings.seconds
    plan, parts, rng = compose(settings.seed, index, seconds, settings.exclude, settings.require, settings.production)
    if settings.production != "full":
        return plan, parts, [to_midi(part, plan, rng, seconds) for part in parts], None, rng
    from .production import draw_feel

    feels: dict = {}                       # one player per mixing group: a split kit is one drummer
    for part in parts:
        if part.group not in feels:
            feels[part.group] = draw_feel(part, plan, rng)
    return plan, parts, [to_midi(part, plan, rng, seconds, feels[part.group]) for part in parts], feels, rng


def _render(index: int, settings: Settings) -> _Song:
    """Song `index` rendered (FluidSynth), silent parts dropped, then mixed (or produced)."""
    sr = settings.sample_rate
    n = int(round(settings.seconds * sr))
    plan, parts, midis, feels, rng = _play(index, settings)
    sf2 = Path(settings.soundfont)
    trims = {c.name: KIT_TRIM_DB[c.name] + float(rng.normal(0, 1.5)) for c in KIT_PARTS}
    stems, kept = [], []
    for part, midi in zip(parts, midis):
        if not midi.notes:
            continue
        if part.role == "drums":
            audio = _render_kit(part, midi, trims, n, sr, sf2)
        else:
            audio = render_instrument(midi, n, sr, sf2)
        if float(np.abs(audio).max()) < 1e-5:
            log.warning("song %d: %s rendered silent with %s; dropped", index, part.instrument.name, sf2.name)
            continue
        stems.append(audio)
        kept.append(part)
    if not stems:
        raise DataError(f"song {index}: no part produced sound")
    if feels is None:
        stems, gains_db = mix_stems(stems, kept, rng, sr)
        return _Song(plan, kept, stems, gains_db, [None] * len(stems))
    from .production import produce

    stems, _, gains_db, chains, song_production = produce(stems, kept, rng, sr, plan)
    return _Song(plan, kept, stems, gains_db, chains, feels, song_production)


def _song_meta(song: _Song, index: int, settings: Settings) -> dict:
    """The song's metadata (tempo, key, meter, beats, sections, chords...: the ground truth of what was rendered)."""
    plan, seconds = song.plan, settings.seconds
    meta = {
        "tempo": plan.tempo, "key": plan.key, "meter": plan.meter, "beats": plan.beats(), "downbeats": plan.downbeats(),
        "seconds": seconds, "seed": song_rng(settings.seed, index)[1], "corpus_seed": settings.seed, "index": index,
        "style": plan.groove.style, "swing": plan.swing,
        "sections": [[round(plan.time(b.index * plan.meter), 4), b.section] for b in plan.bars
                     if b.first_in_section and plan.time(b.index * plan.meter) < seconds],
        "chords": [[round(plan.time(b.index * plan.meter + s), 4), c.name] for b in plan.bars for s, _, c in b.chords
                   if plan.time(b.index * plan.meter + s) < seconds],
        "sample_rate": settings.sample_rate, "generator": f"stemjepa synth v{GENERATOR_VERSION}",
    }
    if song.feels is not None:   # default metadata is unchanged
        meta.update(production="full", feels={p.group: vars(song.feels[p.group]) for p in song.parts},
                    **song.production)
    return meta


def _write_song(index: int, settings: Settings, folder: Path) -> None:
    """Render song `index` and write it into `folder`, through a staging folder moved into place once complete."""
    from ...audio.io import save_audio

    song = _render(index, settings)
    staging = Path(settings.out_dir) / STAGING / folder.name
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    song_meta = _song_meta(song, index, settings)
    entries = []
    for audio, part, gain, chain in zip(song.stems, song.parts, song.gains_db, song.chains):
        inst = part.instrument
        entries.append({"name": _slug(inst.name), "labels": list(inst.labels), "program": part.program,
                        "is_drum": part.is_drum, "role": part.role, "gain_db": round(gain, 2),
                        "moises": list(inst.moises), "audio": audio, **({"production": chain} if chain else {})})
    if settings.layout == "moisesdb":
        _write_moises(staging, folder.name, index, settings, entries, song_meta, save_audio)
    else:
        for e in entries:
            save_audio(staging / f"{e['name']}.wav", e.pop("audio"), settings.sample_rate)
            e["file"] = f"{e['name']}.wav"
            e.pop("moises")
        keys = ("file", "name", "labels", "program", "is_drum", "role", "gain_db", "production")
        meta = {"stems": [{k: e[k] for k in keys if k in e} for e in entries], **song_meta}
        (staging / "stems.json").write_text(json.dumps(meta, indent=1))
    if folder.exists():
        shutil.rmtree(folder)               # an incomplete song from an interrupted run
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, folder)


def _write_moises(staging: Path, song_id: str, index: int, settings: Settings, entries, song_meta, save_audio) -> None:
    """MoisesDB layout: data.json + <stemName>/<track id>.wav, tracks grouped by stemName."""
    stems: dict[str, dict] = {}
    for e in entries:
        stem_name, track_type = e["moises"]
        stem = stems.setdefault(stem_name, {"id": str(uuid.uuid5(_NAMESPACE, f"{song_id}/{stem_name}")),
                                            "stemName": stem_name, "tracks": []})
        track_id = str(uuid.uuid5(_NAMESPACE, f"{song_id}/{stem_name}/{e['name']}"))
        save_audio(staging / stem_name / f"{track_id}.wav", e["audio"], settings.sample_rate)
        stem["tracks"].append({"id": track_id, "trackType": track_type, "extension": "wav", "has_bleed": False,
                               "labels": e["labels"], "program": e["program"], "gain_db": e["gain_db"],
                               **({"production": e["production"]} if "production" in e else {})})
    data = {"song": f"synth song {index:05d}", "artist": "stemjepa synth", "genre": song_meta["style"],
            "stems": list(stems.values()), **song_meta}
    (staging / "data.json").write_text(json.dumps(data, indent=1))


# ----------------------------------------------------------------------------------------------- the corpus
def _check_out_dir(out: Path, marker: dict) -> None:
    """Refuse to write into a folder that is not ours, or one generated with other settings (resuming would mix them)."""
    path = out / MARKER
    if path.is_file():
        try:
            old = read_json(path, error=DataError)
        except DataError as exc:
            raise DataError(f"{exc}; unreadable corpus settings: delete it or choose another --out") from None
        if not isinstance(old, dict):
            raise DataError(f"{path}: unreadable corpus settings; delete it or choose another --out")
        # a key absent from a marker is its default ("production" is written only when not "none")
        defaults = {"production": "none"}
        diff = [k for k in dict.fromkeys([*marker, *old])
                if old.get(k, defaults.get(k)) != marker.get(k, defaults.get(k))]
        if diff:
            detail = ", ".join(f"{k}: {old.get(k, defaults.get(k))!r} there, {marker.get(k, defaults.get(k))!r} now"
                               for k in diff)
            raise DataError(f"{out}: holds a synthetic corpus made with other settings ({detail}); "
                            "use the same settings to resume, or another --out")
        return
    if out.exists() and any(p.name != STAGING for p in out.iterdir()):
        raise DataError(f"{out}: folder exists and is not a synthetic corpus; choose a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(marker, indent=1))


@dataclass(frozen=True)
class SynthOptions:
    """What a corpus is (recorded in its marker: one folder never mixes two settings). `exclude`: instruments or
    categories (any level of a label path, case-insensitive) kept out of every song; `require`: every song contains at
    least one instrument matching one of these; `production`: "none" (dry parts on the grid in one room) or "full" (see
    `production.py`: a feel per part, an effect chain per stem, wider genres, meters and tempos; needs
    `pip install stemjepa[effects]`)."""

    seconds: float = 30.0
    seed: int = 0
    exclude: tuple[str, ...] = ()
    require: tuple[str, ...] = ()
    layout: str = "folder"
    soundfont: str | Path | None = None  # None: TimGM6mb shipped with pretty_midi
    sample_rate: int = SAMPLE_RATE
    production: str = "none"


def _check_options(n_songs: int, opts: SynthOptions) -> tuple[tuple[str, ...], tuple[str, ...], Path]:
    """One-line errors for bad settings, before any folder is made; returns (exclude, require, soundfont file)."""
    if n_songs < 1:
        raise ConfigError(f"--songs must be at least 1 (got {n_songs})")
    if not (1.0 <= opts.seconds <= 3600):
        raise ConfigError(f"--seconds must be between 1 and 3600 (got {opts.seconds})")
    if opts.seed < 0:
        raise ConfigError(f"--seed must be a non-negative integer (got {opts.seed})")
    if opts.layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {opts.layout!r}; choose one of {', '.join(LAYOUTS)}")
    if not (8000 <= opts.sample_rate <= 96000):
        raise ConfigError(f"--sample-rate must be between 8000 and 96000 Hz (got {opts.sample_rate})")
    from .production import PRODUCTIONS, require_pedalboard

    if opts.production not in PRODUCTIONS:
        raise ConfigError(f"unknown production {opts.production!r}; choose one of {', '.join(PRODUCTIONS)}")
    if opts.production == "full":
        require_pedalboard()   # fail early, with the install hint, before any folder is made
    exclude = tuple(check_names(opts.exclude, "--exclude-instruments"))
    require = tuple(check_names(opts.require, "--require-instruments"))
    from .palette import instruments

    if require and not instruments(exclude, require):
        raise ConfigError(f"every instrument matching {list(require)} is excluded by {list(exclude)}")
    if not instruments(exclude):
        raise ConfigError("every instrument of the palette is excluded")
    sf2 = resolve_soundfont(opts.soundfont)
    from .render import _fluidsynth

    _fluidsynth()  # fail early, with a clear message, when FluidSynth is missing
    return exclude, require, sf2


def _render_songs(todo: list[int], settings: Settings, jobs: int, bar) -> list[tuple[int, str]]:
    """Render the songs `todo` (in `jobs` processes); returns the (index, reason) of those that failed."""
    failed: list[tuple[int, str]] = []
    if jobs <= 1 or len(todo) <= 1:
        results = (render_song(i, settings) for i in todo)
        for index, status, msg in results:
            if status == "failed":
                failed.append((index, msg))
            bar.update(1)
        return failed
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(render_song, i, settings) for i in todo]
        for fut in as_completed(futures):
            index, status, msg = fut.result()
            if status == "failed":
                failed.append((index, msg))
            bar.update(1)
    return failed


def synthesize_corpus(out_dir, n_songs: int, seconds: float | None = None, *, options: SynthOptions | None = None,
                      jobs: int = 1, progress: bool = True, summary: dict | None = None, **option_values) -> list[Path]:
    """Write `n_songs` synthetic multitrack songs to `out_dir` and return their folders (in song order).

    What the corpus is: `options` (SynthOptions), or its fields as keywords (seconds, seed, exclude, require, layout,
    soundfont, sample_rate, production). Songs already complete in `out_dir` are kept, not re-rendered; songs that fail
    are reported (in `summary["failed"]`) and skipped.
    """
    from tqdm import tqdm

    opts = replace(options or SynthOptions(), **option_values, **({} if seconds is None else {"seconds": seconds}))
    exclude, require, sf2 = _check_options(n_songs, opts)
    out = Path(out_dir)
    marker = {"generator": "stemjepa synth", "version": GENERATOR_VERSION, "seed": int(opts.seed),
              "seconds": float(opts.seconds), "sample_rate": int(opts.sample_rate), "layout": opts.layout,
              "exclude": sorted(x.lower() for x in exclude), "require": sorted(x.lower() for x in require),
              "soundfont": f"{sf2.name} ({sf2.stat().st_size} bytes)"}
    if opts.production != "none":
        marker["production"] = opts.production    # absent for "none": default corpora keep their marker byte for byte
    _check_out_dir(out, marker)
    run = Settings(str(out), float(opts.seconds), int(opts.seed), exclude, require, opts.layout, str(sf2),
                   int(opts.sample_rate), opts.production)
    folders = [song_folder(run, i) for i in range(n_songs)]
    todo = [i for i in range(n_songs) if not is_complete(folders[i], opts.layout)]
    kept = n_songs - len(todo)
    t0 = time.time()
    bar = tqdm(total=n_songs, initial=kept, unit="song", desc="synth", disable=not progress)
    try:
        failed = sorted(_render_songs(todo, run, jobs, bar))
    finally:
        bar.close()
        staging = out / STAGING
        if staging.is_dir() and not any(staging.iterdir()):
            staging.rmdir()
    for index, msg in failed:
        log.warning("song %d failed: %s", index, msg)
    done = [f for f in folders if is_complete(f, opts.layout)]
    if summary is not None:
        summary.update(written=len(todo) - len(failed), kept=kept, failed=failed, seconds=time.time() - t0,
                       folder=str(out))
    if not done:
        raise DataError(f"{out}: no song could be synthesised ({failed[0][1] if failed else 'unknown reason'})")
    return done
