"""The synthetic multitrack corpus: determinism, metadata, audio sanity, exclusions, layouts and resuming."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stemjepa.data.multitrack import read_folder
from stemjepa.data.synth import PALETTE, compose, synthesize_corpus
from stemjepa.data.synth.corpus import MOISES_ROOT, _slug, to_midi
from stemjepa.data.synth.render import render_instrument, resolve_soundfont
from stemjepa.errors import ConfigError, DataError

SR = 16000
SECONDS = 6.0
MOISES_CATEGORIES = {"vocals", "bass", "drums", "other", "guitar", "other_plucked", "percussion", "piano", "other_keys",
                     "bowed_strings", "wind"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "corpus"
    synthesize_corpus(out, 4, seconds=SECONDS, seed=7, jobs=1, progress=False)
    return out


def _audio(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: sf.read(p, dtype="int16")[0] for p in sorted(folder.glob("*.wav"))}


def _meta(folder: Path) -> dict:
    return json.loads((folder / "stems.json").read_text())


def test_same_seed_same_audio_whatever_jobs(corpus, tmp_path):
    again = synthesize_corpus(tmp_path / "again", 4, seconds=SECONDS, seed=7, jobs=2, progress=False)
    assert [p.name for p in again] == [f"song_{i:05d}" for i in range(4)]
    for song in again:
        ref = corpus / song.name
        assert _meta(song) == _meta(ref)
        a, b = _audio(song), _audio(ref)
        assert a.keys() == b.keys()
        for name in a:
            assert np.array_equal(a[name], b[name]), f"{song.name}/{name} differs between jobs=1 and jobs=2"


def test_other_seed_other_songs(corpus, tmp_path):
    other = synthesize_corpus(tmp_path / "other", 1, seconds=SECONDS, seed=8, progress=False)[0]
    assert (_meta(other)["tempo"], _meta(other)["key"]) != (_meta(corpus / "song_00000")["tempo"],
                                                           _meta(corpus / "song_00000")["key"])


def test_render_independent_of_history():
    """A stem renders identically whatever was rendered before it in the same process (shared synthesizer)."""
    sf2 = resolve_soundfont()
    plan, parts, rng = compose(3, 1, 4.0)
    midis = [to_midi(p, plan, rng, 4.0) for p in parts]
    first = render_instrument(midis[0], 4 * SR, SR, sf2)
    for m in midis[1:]:
        render_instrument(m, 4 * SR, SR, sf2)
    assert np.array_equal(first, render_instrument(midis[0], 4 * SR, SR, sf2))


def test_labels_and_files_consistent(corpus):
    songs, problems = read_folder(corpus, strict=True)
    assert len(songs) == 4 and not problems
    paths = {p.labels for p in PALETTE}
    for song in songs:
        listed = {s.path.name for s in song.stems}
        assert listed == {p.name for p in (corpus / song.id).glob("*.wav")}, "every wav is listed, every listed exists"
        assert len(song.stems) >= 2
        for stem in song.stems:
            assert tuple(stem.labels) in paths, stem.labels
            info = sf.info(stem.path)
            assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
        meta = song.meta
        assert {"tempo", "key", "meter", "beats", "downbeats", "seconds", "seed"} <= set(meta)
        assert 60 <= meta["tempo"] <= 180 and meta["meter"] in (3, 4)


def _spectral_flux(x: np.ndarray, n_fft: int = 512, hop: int = 160) -> np.ndarray:
    """Onset strength: the summed increase of log-magnitude spectra from frame to frame."""
    n = 1 + (len(x) - n_fft) // hop
    frames = np.lib.stride_tricks.as_strided(x, (n, n_fft), (x.strides[0] * hop, x.strides[0]))
    mag = np.log1p(100 * np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)))
    return np.concatenate([[0.0], np.maximum(np.diff(mag, axis=0), 0).sum(axis=1)])


def test_beats_match_tempo(corpus):
    on_beat, off_beat = [], []
    for folder in sorted(corpus.iterdir()):
        if not folder.is_dir():
            continue
        meta = _meta(folder)
        beats = np.array(meta["beats"])
        period = 60.0 / meta["tempo"]
        assert np.allclose(np.diff(beats), period, atol=1e-5)
        assert 0 <= beats[0] < 0.31 and beats[-1] < meta["seconds"] and beats[-1] + period >= meta["seconds"] - 1e-6
        assert meta["downbeats"] == meta["beats"][:: meta["meter"]]
        mix = sum(sf.read(folder / s["file"], dtype="float32")[0] for s in meta["stems"])
        env = _spectral_flux(mix)
        fps = SR / 160

        def strength(times):
            return np.mean([env[max(0, int(t * fps) - 2): int(t * fps) + 3].max() for t in times if t * fps < len(env) - 3])

        on_beat.append(strength(beats))
        off_beat.append(strength(beats + 0.4 * period))
    assert np.mean(on_beat) > 2 * np.mean(off_beat), (on_beat, off_beat)   # onsets fall on the annotated beats


def test_stems_equal_length_peak_safe(corpus):
    for folder in sorted(p for p in corpus.iterdir() if p.is_dir()):
        waves = [sf.read(folder / s["file"], dtype="float32")[0] for s in _meta(folder)["stems"]]
        assert {len(w) for w in waves} == {int(SECONDS * SR)}
        mix = np.sum(waves, axis=0)
        assert np.abs(mix).max() <= 0.9 and max(np.abs(w).max() for w in waves) <= 0.9


def test_stems_sound_where_their_part_plays(corpus):
    for index in range(4):
        folder = corpus / f"song_{index:05d}"
        plan, parts, rng = compose(7, index, SECONDS)
        by_name = {s["name"]: s for s in _meta(folder)["stems"]}
        for part in parts:
            midi = to_midi(part, plan, rng, SECONDS)
            if not midi.notes:
                continue
            entry = by_name.get(_slug(part.instrument.name))
            assert entry is not None, f"{folder.name}: part {part.instrument.name} has no stem"
            wave = sf.read(folder / entry["file"], dtype="float32")[0]
            def rms(a, b):
                return np.sqrt(np.mean(wave[int(a * SR): int(b * SR) + 1] ** 2))

            # over the first 50 ms of each note (drums), or its first half second (pads that fade in)
            rms = np.array([max(rms(n.start, min(n.end, n.start + 0.05)), rms(n.start, min(n.end, n.start + 0.5)))
                            for n in midi.notes])
            loud = rms > 10 ** (-60 / 20)
            assert loud.mean() > 0.95, f"{folder.name}/{entry['file']}: silent in {1 - loud.mean():.0%} of its notes"


def test_melodic_parts_in_key():
    in_key = total = 0
    for index in range(12):
        plan, parts, _ = compose(11, index, 20.0)
        for part in parts:
            if part.is_drum:
                continue
            pcs = [n.pitch % 12 for n in part.notes]
            in_key += sum(pc in plan.scale for pc in pcs)
            total += len(pcs)
    assert in_key / total > 0.93


def test_songs_differ():
    plans = [compose(0, i, 30.0)[0] for i in range(20)]
    assert len({p.tempo for p in plans}) >= 10 and len({p.key for p in plans}) >= 8
    assert len({p.groove.style for p in plans}) >= 5


def test_exclusions_respected(tmp_path):
    excluded = ["drums", "Piano", "alto saxophone", "synth pad"]
    for index in range(25):
        for part in compose(1, index, 20.0, exclude=excluded)[1]:
            assert not part.instrument.matches(excluded), part.instrument.labels
    out = synthesize_corpus(tmp_path / "ex", 2, seconds=4.0, seed=1, exclude=excluded, progress=False)
    for folder in out:
        for stem in _meta(folder)["stems"]:
            assert not {x.lower() for x in stem["labels"]} & {x.lower() for x in excluded}


def test_require_respected(tmp_path):
    for required in (["violin", "808 drum machine"], ["toms"], ["wind"]):
        for index in range(15):
            parts = compose(2, index, 12.0, exclude=["trumpet"], require=required)[1]
            assert any(p.instrument.matches(required) and p.notes for p in parts), (required, index)
            assert not any(p.instrument.matches(["trumpet"]) for p in parts)
    out = synthesize_corpus(tmp_path / "req", 2, seconds=4.0, seed=2, require=["bowed strings"], progress=False)
    for folder in out:
        assert any("bowed strings" in s["labels"] for s in _meta(folder)["stems"])


def test_bad_names_and_conflicts(tmp_path):
    with pytest.raises(ConfigError, match="kazoo"):
        synthesize_corpus(tmp_path / "a", 1, seconds=2.0, exclude=["kazoo"], progress=False)
    with pytest.raises(ConfigError, match="excluded"):
        synthesize_corpus(tmp_path / "b", 1, seconds=2.0, exclude=["wind"], require=["flute"], progress=False)


def test_moisesdb_layout(tmp_path):
    synthesize_corpus(tmp_path / "m", 2, seconds=4.0, seed=4, layout="moisesdb", progress=False)
    songs = sorted((tmp_path / "m" / MOISES_ROOT).iterdir())
    assert len(songs) == 2
    for song in songs:
        data = json.loads((song / "data.json").read_text())
        assert {"song", "artist", "genre", "stems", "tempo", "key", "beats", "downbeats"} <= set(data)
        names = [s["stemName"] for s in data["stems"]]
        assert len(names) == len(set(names)) and set(names) <= MOISES_CATEGORIES
        for stem in data["stems"]:
            for track in stem["tracks"]:
                assert track["trackType"] and track["has_bleed"] is False
                path = song / stem["stemName"] / f"{track['id']}.{track['extension']}"
                assert sf.info(path).samplerate == SR
    try:
        from stemjepa.data.datasets import load_dataset
    except ImportError:
        return
    loaded = load_dataset("moisesdb", tmp_path / "m")
    assert len(loaded) == 2 and all(s.stems for s in loaded)


def test_resume_keeps_complete_songs(tmp_path):
    out = tmp_path / "r"
    summary: dict = {}
    synthesize_corpus(out, 3, seconds=3.0, seed=5, progress=False, summary=summary)
    assert summary["written"] == 3 and summary["kept"] == 0
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*.wav")}
    (out / "song_00001" / "stems.json").unlink()           # an interrupted song: its metadata was never written
    synthesize_corpus(out, 4, seconds=3.0, seed=5, progress=False, summary=summary)
    assert summary["written"] == 2 and summary["kept"] == 2 and not summary["failed"]
    for p, (mtime, data) in before.items():
        assert p.read_bytes() == data
        if p.parent.name != "song_00001":
            assert p.stat().st_mtime_ns == mtime, f"{p} was re-rendered"
    assert (out / "song_00003" / "stems.json").is_file() and not (out / ".partial").exists()


def test_refuses_foreign_or_mismatched_folders(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("user data")
    with pytest.raises(DataError, match="not a synthetic corpus"):
        synthesize_corpus(foreign, 1, seconds=2.0, progress=False)
    synthesize_corpus(tmp_path / "c", 1, seconds=2.0, seed=1, progress=False)
    with pytest.raises(DataError, match="other settings"):
        synthesize_corpus(tmp_path / "c", 1, seconds=2.0, seed=2, progress=False)


def test_soundfont_errors(tmp_path):
    with pytest.raises(DataError, match="soundfont not found"):
        synthesize_corpus(tmp_path / "s", 1, seconds=2.0, soundfont=tmp_path / "none.sf2", progress=False)
    bad = tmp_path / "bad.sf2"
    bad.write_bytes(os.urandom(64))
    with pytest.raises(DataError, match="not a SoundFont"):
        synthesize_corpus(tmp_path / "s", 1, seconds=2.0, soundfont=bad, progress=False)


def test_fluidsynth_missing_is_a_clear_error(monkeypatch):
    import sys

    from stemjepa.data.synth import render
    from stemjepa.errors import StemJepaError

    monkeypatch.setitem(sys.modules, "fluidsynth", None)   # import fails as when the library is absent
    with pytest.raises(StemJepaError, match="FluidSynth is not available"):
        render._fluidsynth()


def test_cli(tmp_path, capsys):
    from stemjepa.cli.main import main
    from stemjepa.data.synth import default_soundfont

    assert main(["synth", "--out", str(tmp_path / "cli"), "--songs", "1", "--seconds", "2", "--seed", "3",
                 "--exclude-instruments", "drums,bass", "--soundfont", str(default_soundfont())]) == 0
    assert "1 written" in capsys.readouterr().out
    assert main(["synth", "--list-instruments"]) == 0
    assert "808 drum machine" in capsys.readouterr().out
    assert main(["synth", "--out", str(tmp_path / "cli2"), "--songs", "1", "--exclude-instruments", "kazoo"]) == 2


@pytest.mark.parametrize("text", ["{nope", "[1]"])
def test_unreadable_corpus_marker_is_a_clear_error(tmp_path, text):
    out = tmp_path / "c"
    out.mkdir()
    (out / "synth_corpus.json").write_text(text)
    with pytest.raises(DataError, match="synth_corpus.json.*unreadable corpus settings"):
        synthesize_corpus(out, 1, seconds=2.0, progress=False)
    assert (out / "synth_corpus.json").read_text() == text
