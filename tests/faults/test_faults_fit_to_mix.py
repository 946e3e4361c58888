"""Faults of fitting candidates to the mix (issue 25, `query --export --fit`): absurd tempos, sizes over the playback
budget, a candidate that is not audio, a full disk; and the work bounded by the mix, not by the candidate."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from faultkit import disk_full_after
from test_fit import MIX_120, SR, _Result, analysis, click_loop

from stemjepa.audio import fit as fit_module
from stemjepa.audio.fit import EDGE, fit_to_mix
from stemjepa.errors import DataError, StemJepaError
from stemjepa.search.export import export_candidates

pytestmark = pytest.mark.analysis  # its indexes analyse tempo and key (tests/conftest.py)


def candidates(tmp_path: Path, n: int = 2) -> tuple[Path, list]:
    """A 6 s stereo mix and `n` click-loop candidates at 100 BPM in song folders, with their analyses."""
    mix = tmp_path / "mix.wav"
    sf.write(mix, np.zeros((6 * SR, 2), np.float32), SR)
    stem, stem_analysis = click_loop(100.0, 8.0)
    results = []
    for i in range(1, n + 1):
        (tmp_path / f"song{i}").mkdir()
        sf.write(tmp_path / f"song{i}" / "drums.wav", stem, SR)
        results.append(_Result(i, str(tmp_path / f"song{i}" / "drums.wav"), 0.0, stem_analysis))
    return mix, results


@pytest.mark.parametrize("bpm", [0.0, -120.0, float("nan"), float("inf")])
def test_a_tempo_that_is_not_a_tempo_is_refused_with_a_clear_message(bpm):
    with pytest.raises(DataError, match="is not a tempo; cannot fit"):
        fit_to_mix(np.zeros(SR, np.float32), SR, analysis(bpm), MIX_120, SR)


def test_a_fit_longer_than_the_playback_budget_is_refused_before_anything_is_allocated():
    with pytest.raises(DataError, match="playback budget"):
        fit_to_mix(np.zeros(SR, np.float32), SR, analysis(), MIX_120, 1 << 40)  # 4 TB of float32 if allocated


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_candidate_with_non_finite_samples_is_refused(bad):
    stem = np.zeros(SR, np.float32)
    stem[100] = bad
    with pytest.raises(DataError, match="not all finite"):
        fit_to_mix(stem, SR, analysis(), MIX_120, SR)


def test_a_long_candidate_fitted_to_a_short_mix_stretches_only_what_is_heard(monkeypatch):
    stem, stem_analysis = click_loop(100.0, 600.0)  # 10 minutes
    seen = []
    real = fit_module.stretch
    monkeypatch.setattr(fit_module, "stretch", lambda wave, *a: seen.append(wave.shape[-1]) or real(wave, *a))
    out = fit_to_mix(stem, SR, stem_analysis, MIX_120, 5 * SR)
    bar = 4 * 0.6  # seconds of the stem's bar
    assert out.shape == (5 * SR,) and len(seen) == 1
    assert seen[0] <= (5.0 * 120 / 100 + bar + 2 * EDGE + 0.1) * SR  # 7.5 s of the 600 (5 s heard at 1.2x, whole bars)


def test_fitted_export_skips_a_candidate_that_is_not_audio_and_fits_the_others(tmp_path):
    mix, results = candidates(tmp_path)
    Path(results[0].path).write_text("not audio")
    export_candidates(mix, "drums", results, tmp_path / "out", fit=True, mix_analysis=MIX_120)
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["results"][0]["file"] is None and results[0].path in doc["results"][0]["error"]
    assert doc["results"][1]["file"] == "02_song2-drums.fit.wav"
    assert sf.info(tmp_path / "out" / "02_song2-drums.fit.wav").frames == 6 * SR


def test_fitted_export_skips_a_candidate_whose_tempo_is_absurd_naming_it(tmp_path):
    mix, results = candidates(tmp_path)
    results[0].analysis = analysis(float("nan"))  # the index's analysis of candidate 1
    export_candidates(mix, "drums", results, tmp_path / "out", fit=True, mix_analysis=MIX_120)
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    error = doc["results"][0]["error"]
    assert doc["results"][0]["file"] is None and error.startswith(results[0].path) and "not a tempo" in error
    assert sorted(p.name for p in (tmp_path / "out").glob("*.wav")) == ["02_song2-drums.fit-premix.wav",
                                                                         "02_song2-drums.fit.wav"]


def test_fitted_export_on_a_full_disk_leaves_no_partial_wav_and_the_rerun_works(tmp_path, monkeypatch):
    mix, results = candidates(tmp_path)
    out = tmp_path / "out"
    full = disk_full_after(sf.write, n_ok=2)  # the first candidate and its premix; then the disk is full
    with monkeypatch.context() as patch:
        patch.setattr(sf, "write", full)
        with pytest.raises(StemJepaError, match="disk full") as err:
            export_candidates(mix, "drums", results, out, fit=True, mix_analysis=MIX_120)
    assert "02_song2-drums.fit.wav" in str(err.value) and full.calls["n"] == 3
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]  # nothing partial, nothing half-exported
    export_candidates(mix, "drums", results, out, fit=True, mix_analysis=MIX_120)  # the re-run is not blocked
    assert len(list(out.glob("*.fit*.wav"))) == 4 and not list(out.rglob(".*.tmp"))
