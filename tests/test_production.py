"""Production "full" of the synthetic corpus: effect chains, feel, wider plans; and the default renders left unchanged."""
from __future__ import annotations

import ctypes
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_synth import _spectral_flux

from stemjepa.data.synth import PALETTE, compose, synthesize_corpus
from stemjepa.data.synth.corpus import MARKER, to_midi
from stemjepa.data.synth.parts import Part
from stemjepa.data.synth.render import render_instrument, resolve_soundfont
from stemjepa.errors import ConfigError, DataError, StemJepaError

SR = 16000
SECONDS = 6.0
# Digests of a 2-song default corpus (seed 11, 6 s, folder layout), computed with the code before production existed
# (git HEAD at the time, run from a `git archive` copy): the metadata with gain_db left out (numpy's generator and the
# code only: the same on every machine) and the audio bytes (also FluidSynth's and soxr's arithmetic: checked on the
# library versions it was made with).
PINNED_META = "3650fc35e274c8e9b743df442a490c76773129d2c1635a69b264836b46771e5e"
PINNED_AUDIO = "11bb5dfb36ab29154c306a244ebfa34d563527305308c169b020d9a6ca604a67"
PINNED_WITH = {"fluidsynth": "2.3.1", "soxr": "1.1.0"}


def _no_gains(x):
    if isinstance(x, dict):
        return {k: _no_gains(v) for k, v in x.items() if k != "gain_db"}
    if isinstance(x, list):
        return [_no_gains(v) for v in x]
    return x


def _digests(out: Path) -> tuple[str, str]:
    meta, audio = hashlib.sha256(), hashlib.sha256()
    for p in sorted(out.rglob("*")):
        if p.suffix == ".json":
            meta.update(p.name.encode())
            meta.update(json.dumps(_no_gains(json.loads(p.read_text())), sort_keys=True).encode())
        elif p.suffix == ".wav":
            audio.update(str(p.relative_to(out)).encode())
            audio.update(p.read_bytes())
    return meta.hexdigest(), audio.hexdigest()


def _library_versions() -> dict:
    import fluidsynth
    import soxr

    fn = fluidsynth._fl.fluid_version_str
    fn.restype = ctypes.c_char_p
    return {"fluidsynth": fn().decode(), "soxr": soxr.__version__}


def _meta(folder: Path) -> dict:
    return json.loads((folder / "stems.json").read_text())


def _wavs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.wav"))}


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> Path:
    pytest.importorskip("pedalboard")
    out = tmp_path_factory.mktemp("prod") / "full"
    synthesize_corpus(out, 3, seconds=SECONDS, seed=21, production="full", progress=False)
    return out


# ----------------------------------------------------------------------------------------------- default unchanged
@pytest.fixture(scope="module")
def default_digests(tmp_path_factory) -> tuple[str, str]:
    out = tmp_path_factory.mktemp("prod") / "default"
    synthesize_corpus(out, 2, seconds=6.0, seed=11, jobs=1, progress=False)
    return _digests(out)


def test_default_corpus_metadata_unchanged_by_production(default_digests):
    assert default_digests[0] == PINNED_META


def test_default_corpus_audio_unchanged_by_production(default_digests):
    versions = _library_versions()
    if versions != PINNED_WITH:
        pytest.skip(f"audio pinned with {PINNED_WITH}, here {versions}: rendering arithmetic may differ")
    assert default_digests[1] == PINNED_AUDIO


def test_production_none_is_the_default_and_leaves_no_trace(tmp_path):
    a = synthesize_corpus(tmp_path / "a", 1, seconds=3.0, seed=4, progress=False)[0]
    b = synthesize_corpus(tmp_path / "b", 1, seconds=3.0, seed=4, production="none", progress=False)[0]
    assert _wavs(a) == _wavs(b) and _meta(a) == _meta(b)
    assert "production" not in json.loads((tmp_path / "b" / MARKER).read_text())
    assert "production" not in _meta(b) and all("production" not in s for s in _meta(b)["stems"])


# ----------------------------------------------------------------------------------------------- determinism
def test_full_same_seed_identical_stems_whatever_jobs(full, tmp_path):
    again = synthesize_corpus(tmp_path / "again", 3, seconds=SECONDS, seed=21, production="full", jobs=2, progress=False)
    for song in again:
        assert _meta(song) == _meta(full / song.name)
        assert _wavs(song) == _wavs(full / song.name), f"{song.name} differs between two renders of one seed"


def test_full_other_seed_other_chains(full, tmp_path):
    other = synthesize_corpus(tmp_path / "other", 1, seconds=SECONDS, seed=22, production="full", progress=False)[0]
    chains = [s["production"] for s in _meta(full / "song_00000")["stems"]]
    assert chains != [s["production"] for s in _meta(other)["stems"]]
    from stemjepa.data.synth.production import draw_chain

    part = Part("comp", next(x for x in PALETTE if x.name == "clean electric guitar"))
    draws = [draw_chain("guitar", part, np.random.default_rng(s), SR, 0.5) for s in (1, 1, 2)]
    assert draws[0] == draws[1] and draws[0] != draws[2]


# ----------------------------------------------------------------------------------------------- the chains
def _song_stems(seed: int, index: int, seconds: float = 4.0):
    """The dry rendered stems of one production-"full" song, as the corpus writer renders them before producing."""
    from stemjepa.data.synth.production import draw_feel

    sf2 = resolve_soundfont()
    plan, parts, rng = compose(seed, index, seconds, production="full")
    feels = {p.group: draw_feel(p, plan, rng) for p in parts}
    stems, kept = [], []
    for part in parts:
        midi = to_midi(part, plan, rng, seconds, feels[part.group])
        audio = render_instrument(midi, int(seconds * SR), SR, sf2) if midi.notes else None
        if audio is not None and np.abs(audio).max() > 1e-5:
            stems.append(audio)
            kept.append(part)
    return plan, kept, stems, rng


def test_stems_sum_to_the_mix():
    pytest.importorskip("pedalboard")
    from stemjepa.data.synth.production import produce

    for index in range(2):
        plan, parts, dry, rng = _song_stems(5, index)
        stems, mix, gains, chains, song = produce(dry, parts, rng, SR, plan)
        assert len(stems) == len(dry) == len(gains) == len(chains) and {len(x) for x in stems} == {len(mix)}
        # the mix is the song-wide stage applied to the summed pre-master stems: equal to the sum of the stems
        # (each stem differs only by zeroing what is below half a 16-bit LSB)
        assert np.abs(np.sum(stems, axis=0) - mix).max() <= len(stems) * 2.0 ** -16
        assert 0 < np.abs(mix).max() <= 10 ** (-1 / 20) + 1e-6
        assert max(np.abs(x).max() for x in stems) <= 10 ** (-1 / 20) + 1e-6


def test_written_stems_sum_to_a_mix_within_the_ceiling(full):
    for song in sorted(p for p in full.iterdir() if p.is_dir()):
        waves = [sf.read(song / s["file"], dtype="float32")[0] for s in _meta(song)["stems"]]
        assert {len(w) for w in waves} == {int(SECONDS * SR)}
        assert all(np.isfinite(w).all() and np.abs(w).max() > 0 for w in waves)
        assert np.abs(np.sum(waves, axis=0)).max() <= 0.9


def _one_part_per_kind() -> dict[str, Part]:
    from stemjepa.data.synth.production import chain_kind

    found: dict[str, Part] = {}
    for inst in PALETTE:
        for role in inst.roles:
            part = Part("drums" if role == "kit_part" else role, inst, program=inst.program)
            found.setdefault(chain_kind(part), part)
    return found


def test_every_kind_has_a_part():
    from stemjepa.data.synth.production import KINDS

    assert set(_one_part_per_kind()) == set(KINDS)


@pytest.mark.parametrize("kind", ["drums", "bass", "guitar", "keys", "pads", "lead", "other"])
def test_every_kind_chain_runs_and_changes_the_audio(kind):
    pytest.importorskip("pedalboard")
    from stemjepa.data.synth.production import apply_chain, draw_chain

    part = _one_part_per_kind()[kind]
    t = np.arange(2 * SR) / SR
    x = (0.1 * np.sin(2 * np.pi * 220 * t) * (t % 0.5 < 0.25) + 0.02 * np.random.default_rng(0).standard_normal(len(t)))
    x = x.astype(np.float32)
    for seed in range(3):
        fx, room = draw_chain(kind, part, np.random.default_rng(seed), SR, 0.5)
        assert fx and 0 <= room < 1
        y = apply_chain(x, fx, SR)
        assert y.shape == x.shape and np.isfinite(y).all()
        assert np.abs(y - x).max() > 1e-3, f"{kind} chain {[name for name, _ in fx]} left the audio unchanged"


def test_guitars_get_an_amp_and_acoustic_guitars_do_not():
    from stemjepa.data.synth.production import draw_chain

    by_name = {x.name: x for x in PALETTE}
    for seed in range(5):
        rng = np.random.default_rng(seed)
        driven, _ = draw_chain("guitar", Part("comp", by_name["distorted electric guitar"]), rng, SR, 0.5)
        acoustic, _ = draw_chain("guitar", Part("comp", by_name["steel string guitar"]), rng, SR, 0.5)
        assert any(n == "Distortion" and p["drive_db"] >= 14 for n, p in driven)
        assert not any(n == "Distortion" for n, _ in acoustic)


# ----------------------------------------------------------------------------------------------- metadata and settings
def test_full_metadata_records_production_and_ground_truth(full):
    marker = json.loads((full / MARKER).read_text())
    assert marker["production"] == "full"
    for song in sorted(p for p in full.iterdir() if p.is_dir()):
        meta = _meta(song)
        assert meta["production"] == "full" and set(meta["feels"]) and "master_gain_db" in meta
        assert 60 <= meta["tempo"] <= 180 and meta["meter"] in (3, 4, 5, 7)
        assert np.allclose(np.diff(meta["beats"]), 60.0 / meta["tempo"], atol=1e-5)
        assert meta["downbeats"] == meta["beats"][:: meta["meter"]]
        for stem in meta["stems"]:
            assert stem["production"]["kind"] and stem["production"]["effects"]


def test_full_onsets_still_fall_on_the_annotated_beats(full):
    """Humanising moves notes by milliseconds: the recorded tempo and beats stay the ground truth."""
    on, off = [], []
    for song in sorted(p for p in full.iterdir() if p.is_dir()):
        meta = _meta(song)
        beats, period = np.array(meta["beats"]), 60.0 / meta["tempo"]
        env = _spectral_flux(sum(sf.read(song / s["file"], dtype="float32")[0] for s in meta["stems"]))
        fps = SR / 160

        def strength(times):
            return np.mean([env[max(0, int(t * fps) - 3): int(t * fps) + 4].max() for t in times
                            if t * fps < len(env) - 4])

        on.append(strength(beats))
        off.append(strength(beats + 0.4 * period))
    assert np.mean(on) > 1.5 * np.mean(off), (on, off)


def test_full_moisesdb_layout_records_production(tmp_path):
    pytest.importorskip("pedalboard")
    from stemjepa.data.synth.corpus import MOISES_ROOT

    synthesize_corpus(tmp_path / "m", 1, seconds=3.0, seed=2, layout="moisesdb", production="full", progress=False)
    (song,) = (tmp_path / "m" / MOISES_ROOT).iterdir()
    data = json.loads((song / "data.json").read_text())
    assert data["production"] == "full" and data["stems"]
    assert all(t["production"]["effects"] for s in data["stems"] for t in s["tracks"])


def test_a_folder_never_mixes_production_settings(tmp_path):
    pytest.importorskip("pedalboard")
    synthesize_corpus(tmp_path / "c", 1, seconds=2.0, seed=1, progress=False)
    with pytest.raises(DataError, match="production: 'none' there, 'full' now"):
        synthesize_corpus(tmp_path / "c", 1, seconds=2.0, seed=1, production="full", progress=False)
    synthesize_corpus(tmp_path / "f", 1, seconds=2.0, seed=1, production="full", progress=False)
    with pytest.raises(DataError, match="production: 'full' there, 'none' now"):
        synthesize_corpus(tmp_path / "f", 1, seconds=2.0, seed=1, progress=False)


def test_unknown_production_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown production 'loud'"):
        synthesize_corpus(tmp_path / "x", 1, seconds=2.0, production="loud", progress=False)
    assert not (tmp_path / "x").exists()


def test_full_without_pedalboard_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pedalboard", None)   # import fails as when the extra is not installed
    with pytest.raises(StemJepaError, match=r"pip install stemjepa\[effects\]"):
        synthesize_corpus(tmp_path / "x", 1, seconds=2.0, production="full", progress=False)
    assert not (tmp_path / "x").exists()


def test_cli_production_full(tmp_path, capsys, monkeypatch):
    pytest.importorskip("pedalboard")
    from stemjepa.cli.main import main

    assert main(["synth", "--out", str(tmp_path / "cli"), "--songs", "1", "--seconds", "2", "--production", "full"]) == 0
    assert "1 written" in capsys.readouterr().out
    assert _meta(tmp_path / "cli" / "song_00000")["production"] == "full"
    monkeypatch.setitem(sys.modules, "pedalboard", None)
    assert main(["synth", "--out", str(tmp_path / "cli2"), "--songs", "1", "--production", "full"]) == 2
    assert "stemjepa[effects]" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- plans and feel
def test_full_plans_are_wider():
    plans = [compose(0, i, 20.0, production="full")[0] for i in range(80)]
    tempos = [p.tempo for p in plans]
    assert min(tempos) < 80 and max(tempos) > 160 and all(60 <= t <= 180 for t in tempos)
    assert {p.meter for p in plans} >= {3, 4} and {p.meter for p in plans} & {5, 7}
    styles = {p.groove.style for p in plans}
    assert len(styles) >= 12 and styles & {"trap", "one_drop", "disco", "punk", "drum_and_bass", "afrobeat"}
    assert all(p.wide for p in plans) and not compose(0, 0, 20.0)[0].wide


def test_full_melodic_parts_stay_in_key():
    in_key = total = 0
    for index in range(12):
        plan, parts, _ = compose(11, index, 20.0, production="full")
        for part in parts:
            if not part.is_drum:
                in_key += sum(n.pitch % 12 in plan.scale for n in part.notes)
                total += len(part.notes)
    assert in_key / total > 0.93


def test_feel_moves_notes_by_milliseconds_and_spreads_velocities():
    from stemjepa.data.synth.production import Feel

    plan, parts, _ = compose(3, 0, 12.0, production="full")
    part = max(parts, key=lambda p: len(p.notes))
    straight = Feel(0.0, 0.0, plan.swing, 1.0, 0.0)
    laid_back = Feel(0.02, 0.008, plan.swing, 1.0, 8.0)
    a = to_midi(part, plan, np.random.default_rng(0), 12.0, straight)
    b = to_midi(part, plan, np.random.default_rng(0), 12.0, laid_back)
    n = min(len(a.notes), len(b.notes))
    shift = np.array([y.start - x.start for x, y in zip(a.notes[:n], b.notes[:n]) if x.start > 0])
    assert 0.01 < np.median(shift) < 0.03 and np.abs(shift).max() < 0.08
    assert any(x.velocity != y.velocity for x, y in zip(a.notes, b.notes))
