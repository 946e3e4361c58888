"""Candidates cut and aligned to a mix, ready to drag into a DAW (`stemjepa query --export`, the web app's downloads).

Alignment: the candidate plays from its best-matching offset at the mix's time 0, at the mix's sample rate, looped
(wrapping round to its start) when it runs out before the mix ends and trimmed at the mix's end, so every file has
exactly the mix's length. The candidate keeps its own channel count.

Fitted (`fit=True`, `query --export --fit`): each candidate time-stretched to the mix's tempo, transposed to its key and
started on the mix's first downbeat (`stemjepa.audio.fit.fit_to_mix`), written as `NN_name.fit.wav` with its premix
with the mix, `NN_name.fit-premix.wav`; the analyses used (tempo, key, beats) come from the index or are computed here.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np

from ..audio.fit import fit_to_mix, semitone_shift, tempo_ratio
from ..audio.io import load_playback, probe, resample, save_audio
from ..errors import AudioError, DataError, StemJepaError, printable
from ..fsutil import WriteError, atomic_write_text

log = logging.getLogger(__name__)

ALIGNMENT = "candidate from its offset at mix time 0, looped or trimmed to the mix"
FIT_ALIGNMENT = ("candidate time-stretched to the mix's tempo (half/double aware), transposed to its key (the relative "
                 "major/minor counts), its first downbeat from its offset on placed on the mix's first downbeat, looped "
                 "in whole bars with a 30 ms crossfade, trimmed to the mix")
SUBTYPE = "PCM_24"  # what DAWs read everywhere; more headroom than 16 bits for stems mixed later


def native_rate(path) -> int:
    """The sample rate an audio file is stored at (from its header, nothing decoded)."""
    return probe(path).sample_rate


def load_native(path) -> tuple[np.ndarray, int]:
    """(float32 (channels, frames), sample rate) of an audio file for playback and export: as stored (no downmix, no
    resampling) when it fits the playback budget, else down-mixed to 2 channels (then mono) at 48 kHz at most
    (`stemjepa.audio.io.load_playback`): the rate returned is the one of the array."""
    return load_playback(path)


def align(candidate: np.ndarray, candidate_sr: int, offset: float, frames: int, sample_rate: int) -> np.ndarray:
    """`candidate` (channels, n) from `offset` seconds on, at `sample_rate`, looped or trimmed to `frames`."""
    cand = np.atleast_2d(np.asarray(candidate, np.float32))
    cand = resample(cand, candidate_sr, sample_rate) if candidate_sr != sample_rate else cand
    n = cand.shape[1]
    if n == 0 or frames <= 0:
        return np.zeros((cand.shape[0], max(frames, 0)), np.float32)
    start = min(max(int(round(offset * sample_rate)), 0), n - 1)
    rolled = np.concatenate([cand[:, start:], cand[:, :start]], axis=1)
    reps = -(-frames // n)
    return np.ascontiguousarray(np.tile(rolled, (1, reps))[:, :frames])


def _same_channels(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if a.shape[0] == b.shape[0]:
        return a, b
    if a.shape[0] == 1:
        return np.repeat(a, b.shape[0], axis=0), b
    if b.shape[0] == 1:
        return a, np.repeat(b, a.shape[0], axis=0)
    return a.mean(0, keepdims=True), b.mean(0, keepdims=True)


def balance_gains(balance: float) -> tuple[float, float]:
    """(mix gain, candidate gain) for a balance in [0, 1]: 0 = mix only, 0.5 = both at full level, 1 = candidate."""
    b = min(max(float(balance), 0.0), 1.0)
    return min(1.0, 2.0 * (1.0 - b)), min(1.0, 2.0 * b)


def premix(mix: np.ndarray, aligned: np.ndarray, balance: float = 0.5) -> np.ndarray:
    """Mix + aligned candidate (same length) at `balance`, scaled down only if the sum would clip."""
    a, b = _same_channels(np.atleast_2d(mix), np.atleast_2d(aligned))
    g_mix, g_cand = balance_gains(balance)
    out = g_mix * a + g_cand * b
    peak = float(np.max(np.abs(out))) if out.size else 0.0
    return (out * (0.99 / peak) if peak > 0.99 else out).astype(np.float32)


def safe_name(text: str, limit: int = 60) -> str:
    """A file-name-safe version of `text` (letters, digits, - _ .)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "stem"
    return name[:limit]


def candidate_file_name(rank: int, path: str, suffix: str = "") -> str:
    """`01_folder-stem.wav` (`suffix` ".fit" -> `01_folder-stem.fit.wav`)."""
    p = Path(path)
    return f"{rank:02d}_{safe_name(p.parent.name + '-' + p.stem if p.parent.name else p.stem)}{suffix}.wav"


def _analysis_of(wave: np.ndarray, sample_rate: int):
    from ..analysis import analyse

    return analyse(np.ascontiguousarray(wave.mean(axis=0), np.float32), sample_rate)


def fit_candidate(cand: np.ndarray, cand_sr: int, result, mix_analysis, frames: int, sample_rate: int,
                  cand_analysis=None) -> tuple[np.ndarray, object]:
    """(the candidate fitted to the mix at `sample_rate`, the candidate's analysis): its analysis is `cand_analysis`,
    else the result's from the index, else computed here. DataError (naming the candidate) when it cannot be fitted."""
    analysis = cand_analysis or getattr(result, "analysis", None) or _analysis_of(cand, cand_sr)
    wave = resample(cand, cand_sr, sample_rate) if cand_sr != sample_rate else cand
    try:
        return fit_to_mix(wave, sample_rate, analysis, mix_analysis, frames, offset=result.offset), analysis
    except DataError as exc:
        raise DataError(f"{printable(str(result.path))}: {exc}") from None


def export_candidates(mix_path, instrument: str, results: list, out_dir, overwrite: bool = False,
                      created: list | None = None, fit: bool = False, mix_analysis=None,
                      analyses: dict | None = None) -> Path:
    """Write each result as a WAV aligned to the mix (its length and rate) plus `results.json` into `out_dir`; with
    `fit`, each fitted to the mix (tempo, key, downbeat) with its premix, from `mix_analysis` and `analyses` (rank ->
    Analysis) when given, else from the index's analyses or `stemjepa.analysis.analyse`.

    Existing files of the same names are refused unless `overwrite`; other files in the folder are left alone. A candidate
    that cannot be read (or fitted) is skipped (a warning, and its error in results.json). Every file and folder this
    call creates is appended to `created`; when a write fails (a full disk: WriteError naming the path) they are removed
    again, so nothing half-done blocks the re-run.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise StemJepaError(f"{out_dir}: exists and is not a folder; choose another --export folder")
    suffix = ".fit" if fit else ""
    names = [candidate_file_name(r.rank, r.path, suffix) for r in results]
    premixes = [candidate_file_name(r.rank, r.path, ".fit-premix") for r in results] if fit else []
    existing = [n for n in (*names, *premixes, "results.json") if (out_dir / n).exists()]
    if existing and not overwrite:
        raise StemJepaError(f"{out_dir / existing[0]}: already exists; choose another --export folder or pass "
                            "--overwrite")
    mix, sr = load_native(mix_path)
    frames = mix.shape[1]
    if fit and mix_analysis is None:
        mix_analysis = _analysis_of(mix, sr)
    if not fit:
        del mix
    mine: list[Path] = []
    try:
        new = [d for d in (out_dir, *out_dir.parents) if not d.exists()]
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WriteError(out_dir, exc) from None
        mine.extend(reversed(new))
        entries = []
        for i, (r, name) in enumerate(zip(results, names)):
            try:
                cand, cand_sr = load_native(r.path)
                if fit:
                    aligned, analysis = fit_candidate(cand, cand_sr, r, mix_analysis, frames, sr,
                                                      (analyses or {}).get(r.rank))
                else:
                    aligned = align(cand, cand_sr, r.offset, frames, sr)
            except (AudioError, DataError) as exc:
                log.warning("export: candidate %d skipped: %s", r.rank, exc)
                entries.append({**r.to_dict(), "file": None, "error": str(exc)})
                continue
            del cand
            _write_new(out_dir / name, mine, lambda p, a=aligned: save_audio(p, a, sr, subtype=SUBTYPE))
            entry = {**r.to_dict(), "file": name}
            if fit:
                both = premix(mix, aligned)
                _write_new(out_dir / premixes[i], mine, lambda p, a=both: save_audio(p, a, sr, subtype=SUBTYPE))
                del both
                entry.update(premix=premixes[i], fit={"analysis": _as_dict(analysis),
                                                      "tempo_ratio": tempo_ratio(analysis.bpm, mix_analysis.bpm),
                                                      "semitones": semitone_shift(analysis.key, mix_analysis.key)})
            del aligned
            entries.append(entry)
        doc = {"mix": str(mix_path), "instrument": instrument, "sample_rate": sr, "frames": frames,
               "seconds": frames / sr, "alignment": FIT_ALIGNMENT if fit else ALIGNMENT, "results": entries}
        if fit:
            doc["mix_analysis"] = _as_dict(mix_analysis)
        _write_new(out_dir / "results.json", mine, lambda p: atomic_write_text(p, json.dumps(doc, indent=1)))
    except StemJepaError:
        remove_created(mine)
        raise
    if created is not None:
        created.extend(mine)
    return out_dir


def _as_dict(analysis) -> dict | None:
    return analysis.to_dict() if hasattr(analysis, "to_dict") else None


def _write_new(path: Path, created: list, write) -> None:
    existed = path.exists()
    write(path)
    if not existed:
        created.append(path)


def remove_created(paths: list) -> None:
    """Remove files and (empty) folders an export created, newest first; what cannot be removed is left alone."""
    for p in reversed(paths):
        try:
            p.rmdir() if p.is_dir() else p.unlink()
        except OSError:
            pass
    paths.clear()
