"""Dataset loaders on fixtures written in each dataset's real on-disk layout (tiny, built in tmp_path)."""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stemjepa.data.datasets import DATASETS, default_eval_split, get_dataset, load_dataset
from stemjepa.data.datasets.moisesdb import moisesdb_split, track_type_label
from stemjepa.data.multitrack import load_song
from stemjepa.errors import DataError

SR = 44100
MUSDB_FREQS = (220.0, 330.0, 440.0, 550.0, 660.0)  # stream 0 (mixture) .. 4 (vocals)


def tone(freq: float, seconds: float, sr: int = SR, stereo: bool = True) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    wave = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([wave, wave], axis=1) if stereo else wave


def peak_hz(wave: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave))
    return float(np.argmax(spectrum) * sr / len(wave))


# ----------------------------------------------------------------------------------------------- fixture writers

def write_stem_mp4(path: Path, seconds: float = 1.0, freqs=MUSDB_FREQS) -> None:
    """A real MUSDB18-style file: 5 stereo AAC streams at 44.1 kHz, stream i a sine at freqs[i]."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed")
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y"]
    for f in freqs:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency={f}:sample_rate={SR}:duration={seconds}"]
    for i in range(len(freqs)):
        cmd += ["-map", str(i)]
    cmd += ["-ac", "2", "-c:a", "aac", "-b:a", "64k", str(path)]
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(cmd, check=True)


def make_musdb18(root: Path) -> Path:
    write_stem_mp4(root / "train" / "A Artist - First Song.stem.mp4", 1.0)
    write_stem_mp4(root / "test" / "B Artist - Second Song.stem.mp4", 0.7)
    return root


def make_musdb18hq(root: Path) -> Path:
    for split, name, seconds in (("train", "A - One", 0.5), ("test", "B - Two", 0.4)):
        folder = root / split / name
        folder.mkdir(parents=True)
        for i, src in enumerate(("mixture", "drums", "bass", "other", "vocals")):
            sf.write(folder / f"{src}.wav", tone(MUSDB_FREQS[i], seconds), SR)
    (root / "test" / "B - Two" / "vocals.wav").unlink()  # a missing source
    return root


MOISES_A = "0a1b2c3d-0000-4000-8000-000000000001"
MOISES_B = "0a1b2c3d-0000-4000-8000-000000000002"  # no data.json


def make_moisesdb(root: Path) -> Path:
    """Song A: guitar twice as a stemName, bleed flags, unequal lengths, a long raw trackType, an unknown one."""
    base = root / "moisesdb_v0.1"
    song = base / MOISES_A
    stems = [
        ("guitar", "g1", "distorted_electric_guitar", True, 1.0, 300.0),
        ("guitar", "g2", "clean_electric_guitar", False, 0.6, 400.0),
        ("other_keys", "k1", "synth_pad", False, 0.8, 500.0),
        ("percussion", "p1", "a-tonal_percussion_(claps,_shakers,_congas,_cowbell_etc)", None, 0.9, 600.0),
        ("wind", "w1", "theremin_(electronic)", False, 0.5, 700.0),
    ]
    data = {"song": "Song A", "artist": "Artist A", "genre": "rock", "stems": []}
    for stem_name, tid, track_type, bleed, seconds, freq in stems:
        track_id = f"{tid}-uuid"
        (song / stem_name).mkdir(parents=True, exist_ok=True)
        sf.write(song / stem_name / f"{track_id}.wav", tone(freq, seconds), SR)
        # each entry its own stemName group: "guitar" appears twice, as it can in MoisesDB
        data["stems"].append({"id": f"s-{tid}", "stemName": stem_name,
                              "tracks": [{"id": track_id, "trackType": track_type, "extension": "wav", "has_bleed": bleed}]})
    (song / "data.json").write_text(json.dumps(data))
    (base / MOISES_B / "bass").mkdir(parents=True)
    sf.write(base / MOISES_B / "bass" / "x.wav", tone(100.0, 0.3), SR)
    return root


def write_slakh_track(folder: Path, stems: dict, files: dict) -> None:
    (folder / "stems").mkdir(parents=True)
    meta = {"UUID": folder.name.lower(), "audio_dir": "stems", "stems": stems}
    import yaml

    (folder / "metadata.yaml").write_text(yaml.safe_dump(meta))
    for name, content in files.items():
        path = folder / "stems" / f"{name}.flac"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            sf.write(path, content, SR)


def make_slakh(root: Path) -> Path:
    stems = {
        "S00": {"inst_class": "Piano", "midi_program_name": "Acoustic Grand Piano", "program_num": 0, "is_drum": False,
                "audio_rendered": True, "plugin_name": "piano.nkm"},
        "S01": {"inst_class": "Bass", "midi_program_name": "Electric Bass (finger)", "program_num": 33, "is_drum": False,
                "audio_rendered": False, "plugin_name": "bass.nkm"},
        "S02": {"inst_class": "Drums", "midi_program_name": "Drums", "program_num": 128, "is_drum": True,
                "audio_rendered": True, "plugin_name": "drums.nkm"},
        "S03": {"inst_class": "Guitar", "midi_program_name": "Distortion Guitar", "program_num": 30, "is_drum": False,
                "audio_rendered": True, "plugin_name": "gtr.nkm"},
    }
    write_slakh_track(root / "train" / "Track00001", stems,
                      {"S00": tone(440.0, 0.5, stereo=False), "S02": tone(200.0, 0.5, stereo=False), "S03": b"not a flac file"})
    write_slakh_track(root / "test" / "Track00002", {"S00": stems["S00"]}, {"S00": tone(330.0, 0.4, stereo=False)})
    bad = root / "validation" / "Track00003"
    bad.mkdir(parents=True)
    (bad / "metadata.yaml").write_text("stems: [unclosed\n  - : :")
    return root


# ----------------------------------------------------------------------------------------------------- registry

def test_registry_names_and_eval_splits(tmp_path):
    assert DATASETS == ("musdb18", "musdb18hq", "moisesdb", "slakh2100", "folder")
    assert [default_eval_split(n) for n in DATASETS] == ["test", "test", "all", "test", "all"]
    for name in DATASETS:
        assert callable(get_dataset(name))
    with pytest.raises(DataError, match="unknown dataset 'medleydb'.*musdb18"):
        load_dataset("medleydb", tmp_path)
    with pytest.raises(DataError, match="unknown dataset"):
        default_eval_split("nope")


@pytest.mark.parametrize("name, expected", [
    ("musdb18", "train/\\*.stem.mp4"), ("musdb18hq", "train/<track>/vocals.wav"),
    ("moisesdb", "moisesdb_v0.1/<track uuid>/data.json"), ("slakh2100", "TrackNNNNN/metadata.yaml"),
    ("folder", "stems.json"),
])
def test_wrong_layout_names_what_was_expected(tmp_path, name, expected):
    (tmp_path / "something").mkdir()
    with pytest.raises(DataError, match=expected):
        load_dataset(name, tmp_path)
    with pytest.raises(DataError, match="not a folder"):
        load_dataset(name, tmp_path / "missing")


# ------------------------------------------------------------------------------------------------------ MUSDB18

def test_musdb18_stem_mp4_streams_labels_and_decoding(tmp_path):
    root = make_musdb18(tmp_path / "musdb18")
    songs = load_dataset("musdb18", root)
    assert [(s.id, s.split) for s in songs] == [("A Artist - First Song", "train"), ("B Artist - Second Song", "test")]
    song = songs[0]
    assert [st.name for st in song.stems] == ["drums", "bass", "other", "vocals"]
    assert [st.labels for st in song.stems] == [["drums"], ["bass"], ["other"], ["vocals"]]
    assert [st.stream for st in song.stems] == [1, 2, 3, 4]  # stream 0, the mixture, is never a stem
    assert song.meta["mixture"]["stream"] == 0
    assert [s.id for s in load_dataset("musdb18", root, split="test")] == ["B Artist - Second Song"]

    loaded = load_song(song, sample_rate=16000)
    assert loaded.sample_rate == 16000 and loaded.audio.shape[0] == 4 and not loaded.skipped
    # 1 s of AAC: the decoder may add up to one 2048-sample AAC frame of priming/padding
    assert 16000 <= loaded.audio.shape[1] <= 16000 + 2048 * 16000 // SR + 1
    for i, wave in enumerate(loaded.audio):
        assert peak_hz(wave, 16000) == pytest.approx(MUSDB_FREQS[i + 1], abs=3.0)


def test_musdb18_unreadable_file_is_reported_and_rest_loads(tmp_path):
    root = make_musdb18(tmp_path / "musdb18")
    (root / "train" / "Broken - Song.stem.mp4").write_bytes(b"\x00" * 1000)
    problems: list = []
    songs = load_dataset("musdb18", root, problems=problems)
    assert len(songs) == 2
    assert len(problems) == 1 and "Broken - Song.stem.mp4" in problems[0][0] and "cannot open" in problems[0][1]


def test_musdb18_name_confusion_gets_a_hint(tmp_path):
    hq = make_musdb18hq(tmp_path / "hq")
    with pytest.raises(DataError, match="use the dataset name musdb18hq"):
        load_dataset("musdb18", hq)


def test_musdb18hq_wavs(tmp_path):
    root = make_musdb18hq(tmp_path / "hq")
    problems: list = []
    songs = load_dataset("musdb18hq", root, problems=problems)
    assert [(s.id, s.split) for s in songs] == [("A - One", "train"), ("B - Two", "test")]
    assert [st.labels for st in songs[0].stems] == [["drums"], ["bass"], ["other"], ["vocals"]]
    assert [st.name for st in songs[1].stems] == ["drums", "bass", "other"]  # vocals.wav is missing
    assert any(p.endswith("vocals.wav") and "missing" in r for p, r in problems)
    loaded = load_song(songs[0], sample_rate=16000)
    assert loaded.audio.shape == (4, 8000)
    assert peak_hz(loaded.audio[3], 16000) == pytest.approx(MUSDB_FREQS[4], abs=3.0)
    with pytest.raises(DataError, match="no split 'validation'"):
        load_dataset("musdb18hq", root, split="validation")


# ----------------------------------------------------------------------------------------------------- MoisesDB

def test_moisesdb_repeated_stem_name_bleed_and_unequal_lengths(tmp_path, caplog):
    root = make_moisesdb(tmp_path / "moises")
    problems: list = []
    with caplog.at_level(logging.WARNING):
        songs = load_dataset("moisesdb", root, problems=problems)
    assert [s.id for s in songs] == [MOISES_A]
    assert len(problems) == 1 and MOISES_B in problems[0][0] and "missing data.json" in problems[0][1]
    song = songs[0]
    assert song.meta == {"song": "Song A", "artist": "Artist A", "genre": "rock"}
    assert song.split in ("train", "test") and song.split == moisesdb_split(MOISES_A)
    assert [st.labels for st in song.stems] == [
        ["guitar", "distorted electric guitar"],
        ["guitar", "clean electric guitar"],
        ["other keys", "synth pad"],
        ["percussion", "atonal percussion"],
        ["wind", "theremin"],
    ]
    guitars = [st for st in song.stems if st.meta["stem_name"] == "guitar"]
    assert len(guitars) == 2 and guitars[0].path != guitars[1].path and guitars[0].name != guitars[1].name
    assert [st.meta["has_bleed"] for st in song.stems] == [True, False, False, None, False]
    assert song.stems[3].meta["track_type"] == "a-tonal_percussion_(claps,_shakers,_congas,_cowbell_etc)"
    # the unknown trackType is named in a clear warning, and still used
    assert any("unknown trackType 'theremin_(electronic)'" in r.getMessage() and "'theremin'" in r.getMessage()
               for r in caplog.records)

    loaded = load_song(song, sample_rate=16000)
    assert loaded.audio.shape == (5, 16000)  # padded to the longest source (1.0 s)
    lengths = [int(np.flatnonzero(np.abs(w) > 1e-3)[-1]) + 1 for w in loaded.audio]
    assert lengths == pytest.approx([16000, 9600, 12800, 14400, 8000], abs=40)
    assert peak_hz(loaded.audio[1][:9600], 16000) == pytest.approx(400.0, abs=3.0)


def test_moisesdb_root_may_be_the_provider_folder(tmp_path):
    root = make_moisesdb(tmp_path / "moises")
    assert [s.id for s in load_dataset("moisesdb", root / "moisesdb_v0.1")] == [MOISES_A]


def test_moisesdb_readable_track_types():
    assert track_type_label("lead_female_singer", "vocals") == ("lead female singer", True)
    assert track_type_label("other_(vocoder,_beatboxing_etc)", "vocals") == ("other vocals", True)
    assert track_type_label("fx/processed_sound,_scratches,_gun_shots,_explosions_etc", "other") == ("sound effects", True)
    assert track_type_label("contrabass_double_bass_(bass_of_instrument_family)", "bass") == ("double bass", True)
    assert track_type_label("organ_electric_organ", "other_keys") == ("organ", True)
    assert track_type_label("Kazoo_Orchestra", "wind") == ("kazoo orchestra", False)


def test_moisesdb_split_is_deterministic_and_about_a_fifth(tmp_path):
    ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"song{i}")) for i in range(1000)]
    splits = [moisesdb_split(i) for i in ids]
    assert splits == [moisesdb_split(i) for i in ids]
    assert 0.16 < splits.count("test") / len(ids) < 0.24
    assert moisesdb_split(ids[0].upper()) == splits[0]
    # explicit entries of a split file win over the hash rule
    custom = tmp_path / "split.json"
    first_test = ids[splits.index("test")]
    custom.write_text(json.dumps({"test_percent": 20, "test": [ids[splits.index("train")]], "train": [first_test]}))
    assert moisesdb_split(first_test, custom) == "train"
    assert moisesdb_split(ids[splits.index("train")], custom) == "test"


def test_shipped_moisesdb_split_file_is_valid():
    from stemjepa.data.datasets.moisesdb import SPLIT_FILE

    spec = json.loads(SPLIT_FILE.read_text())
    assert spec["test_percent"] == 20 and isinstance(spec["test"], list) and "sha256" in spec["description"]


# ---------------------------------------------------------------------------------------------------- Slakh2100

def test_slakh_unrendered_and_corrupt_stems(tmp_path):
    root = make_slakh(tmp_path / "slakh")
    problems: list = []
    songs = load_dataset("slakh2100", root, problems=problems)
    assert [(s.id, s.split) for s in songs] == [("Track00001", "train"), ("Track00002", "test")]
    assert len(problems) == 1 and "Track00003" in problems[0][0] and "unreadable YAML" in problems[0][1]
    song = songs[0]
    assert [st.name for st in song.stems] == ["S00", "S02", "S03"]  # S01 was not rendered
    assert [st.labels for st in song.stems] == [["piano", "acoustic grand piano"], ["drums"], ["guitar", "distortion guitar"]]
    assert song.stems[1].meta == {"program_num": 128, "is_drum": True, "plugin_name": "drums.nkm"}
    loaded = load_song(song, sample_rate=16000)
    assert [st.name for st in loaded.stems] == ["S00", "S02"]
    assert loaded.audio.shape == (2, 8000)
    assert loaded.skipped[0][0] == "S03" and "S03.flac" in loaded.skipped[0][1]
    assert [s.id for s in load_dataset("slakh2100", root, split="test")] == ["Track00002"]


def test_slakh_rendered_stem_without_file_is_reported(tmp_path):
    root = make_slakh(tmp_path / "slakh")
    (root / "train" / "Track00001" / "stems" / "S02.flac").unlink()
    problems: list = []
    songs = load_dataset("slakh2100", root, problems=problems)
    assert [st.name for st in songs[0].stems] == ["S00", "S03"]
    assert any(p.endswith("S02.flac") and "without an audio file" in r for p, r in problems)


# ------------------------------------------------------------------------------------------------------ folder

def test_generic_folder_with_split_key(tmp_path):
    for name, split in (("song1", "train"), ("song2", "test"), ("song3", None)):
        folder = tmp_path / "corpus" / name
        folder.mkdir(parents=True)
        sf.write(folder / "a.wav", tone(440.0, 0.2, 16000, stereo=False), 16000)
        meta = {"stems": [{"file": "a.wav", "labels": ["keys", "electric piano"]}]}
        if split:
            meta["split"] = split
        (folder / "stems.json").write_text(json.dumps(meta))
    (tmp_path / "corpus" / "broken").mkdir()
    problems: list = []
    songs = load_dataset("folder", tmp_path / "corpus", problems=problems)
    assert [(s.id, s.split) for s in songs] == [("song1", "train"), ("song2", "test"), ("song3", None)]
    assert songs[0].stems[0].labels == ["keys", "electric piano"]
    assert len(problems) == 1 and "broken" in problems[0][0]
    assert [s.id for s in load_dataset("folder", tmp_path / "corpus", split="train")] == ["song1"]
