"""Candidates cut and aligned to a mix, ready to drag into a DAW (`stemjepa query --export`, the web app's downloads).

Alignment (`stemjepa.audio.mix.align`): the candidate plays from its best-matching offset at the mix's time 0, at the
mix's sample rate, looped or trimmed to the mix's length, keeping its own channel count.

Fitted (`fit=True`, `query --export --fit`): each candidate time-stretched to the mix's tempo, transposed to its key and
started on the mix's first downbeat (`stemjepa.audio.fit.fit_to_mix`), written as `NN_name.fit.wav` with its premix
with the mix, `NN_name.fit-premix.wav`; the analyses used (tempo, key, beats) come from the index or are computed here.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..audio.fit import fit_to_mix, semitone_shift, tempo_ratio
from ..audio.io import probe, resample, save_audio
from ..audio.mix import align, load_native, premix
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


@dataclass(frozen=True)
class _Target:
    """What every candidate of one export is fitted to: the mix's rate and length, and for a fitted export the mix
    (for the premixes) and its analysis."""

    sample_rate: int
    frames: int
    mix: np.ndarray | None = None
    mix_analysis: object = None


def export_candidates(mix_path, instrument: str, results: list, out_dir, overwrite: bool = False,
                      created: list | None = None, fit: bool = False, mix_analysis=None) -> Path:
    """Write each result as a WAV aligned to the mix (its length and rate) plus `results.json` into `out_dir`; with
    `fit`, each fitted to the mix (tempo, key, downbeat) with its premix, from `mix_analysis` and each result's
    `analysis` (the index's) when given, else from `stemjepa.analysis.analyse`.

    Existing files of the same names are refused unless `overwrite`; other files in the folder are left alone. A candidate
    that cannot be read (or fitted) is skipped (a warning, and its error in results.json). Every file and folder this
    call creates is appended to `created`; when a write fails (a full disk: WriteError naming the path) they are removed
    again, so nothing half-done blocks the re-run.
    """
    out_dir = Path(out_dir)
    names = _check_names(out_dir, results, fit, overwrite)
    mix, sr = load_native(mix_path)
    if fit and mix_analysis is None:
        mix_analysis = _analysis_of(mix, sr)
    target = _Target(sr, mix.shape[1], mix, mix_analysis) if fit else _Target(sr, mix.shape[1])
    del mix
    mine: list[Path] = []
    try:
        new = [d for d in (out_dir, *out_dir.parents) if not d.exists()]
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WriteError(out_dir, exc) from None
        mine.extend(reversed(new))
        entries = [_export_one(r, file_names, target, out_dir, mine) for r, file_names in zip(results, names)]
        doc = {"mix": str(mix_path), "instrument": instrument, "sample_rate": sr, "frames": target.frames,
               "seconds": target.frames / sr, "alignment": FIT_ALIGNMENT if fit else ALIGNMENT, "results": entries}
        if fit:
            doc["mix_analysis"] = _as_dict(mix_analysis)
        _write_new(out_dir / "results.json", mine, lambda p: atomic_write_text(p, json.dumps(doc, indent=1)))
    except StemJepaError:
        remove_created(mine)
        raise
    if created is not None:
        created.extend(mine)
    return out_dir


def _check_names(out_dir: Path, results: list, fit: bool, overwrite: bool) -> list[tuple[str, str | None]]:
    """(file name, premix file name or None) of each result; StemJepaError when one exists and not `overwrite`."""
    if out_dir.exists() and not out_dir.is_dir():
        raise StemJepaError(f"{out_dir}: exists and is not a folder; choose another --export folder")
    names = [(candidate_file_name(r.rank, r.path, ".fit" if fit else ""),
              candidate_file_name(r.rank, r.path, ".fit-premix") if fit else None) for r in results]
    files = [name for name, _ in names] + [premix for _, premix in names if premix] + ["results.json"]
    existing = [n for n in files if (out_dir / n).exists()]
    if existing and not overwrite:
        raise StemJepaError(f"{out_dir / existing[0]}: already exists; choose another --export folder or pass "
                            "--overwrite")
    return names


def _export_one(r, names: tuple[str, str | None], target: _Target, out_dir: Path, mine: list) -> dict:
    """Write one candidate (and its premix when fitted); its results.json entry. A candidate that cannot be read or
    fitted is skipped with a warning (its error in the entry); a failed write raises."""
    name, premix_name = names
    sr, fitting = target.sample_rate, target.mix is not None
    try:
        cand, cand_sr = load_native(r.path)
        if fitting:
            aligned, analysis = fit_candidate(cand, cand_sr, r, target.mix_analysis, target.frames, sr)
        else:
            aligned = align(cand, cand_sr, r.offset, target.frames, sr)
    except (AudioError, DataError) as exc:
        log.warning("export: candidate %d skipped: %s", r.rank, exc)
        return {**r.to_dict(), "file": None, "error": str(exc)}
    del cand
    _write_new(out_dir / name, mine, lambda p: save_audio(p, aligned, sr, subtype=SUBTYPE))
    entry = {**r.to_dict(), "file": name}
    if fitting:
        both = premix(target.mix, aligned)
        _write_new(out_dir / premix_name, mine, lambda p: save_audio(p, both, sr, subtype=SUBTYPE))
        mix_analysis = target.mix_analysis
        entry.update(premix=premix_name, fit={"analysis": _as_dict(analysis),
                                              "tempo_ratio": tempo_ratio(analysis.bpm, mix_analysis.bpm),
                                              "semitones": semitone_shift(analysis.key, mix_analysis.key)})
    return entry


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
