"""Defects 3, 4 and 8 (stems.json side) of the fault matrix: FIFOs, undecodable or unreadable metadata and folders,
duplicate and outside entries. Each test builds its own tiny inputs."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from faultkit import bounded, run_unprivileged, shared_tmp

from stemjepa.audio.io import load_audio
from stemjepa.data.multitrack import read_folder, read_song_folder
from stemjepa.data.prepare import prepare
from stemjepa.errors import AudioError, DataError
from stemjepa.evaluation.retrieval import load_songs

SR = 16000


def song(folder: Path, names=("bass", "keys"), seconds: float = 1.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    for i, name in enumerate(names):
        sf.write(folder / f"{name}.wav", (0.3 * np.sin(2 * np.pi * (110 * (i + 1)) * t)).astype(np.float32), SR)
    (folder / "stems.json").write_text(json.dumps({"stems": [{"file": f"{n}.wav", "labels": [n]} for n in names]}))
    return folder


# --- defect 3: a FIFO named x.wav hangs every reader -----------------------------------------------------------------
def test_fifo_is_refused_not_read(tmp_path):
    fifo = tmp_path / "x.wav"
    os.mkfifo(fifo)
    _, error = bounded(lambda: load_audio(fifo), seconds=20)
    assert isinstance(error, AudioError) and "FIFO" in str(error) and str(fifo) in str(error)

    from stemjepa.audio.mix import load_query  # what `query` reads a mix with

    _, error = bounded(lambda: load_query(fifo, SR), seconds=20)
    assert isinstance(error, AudioError) and "FIFO" in str(error)

    root = tmp_path / "data"
    s = song(root / "s1")
    os.mkfifo(s / "pipe.wav")
    meta = json.loads((s / "stems.json").read_text())
    meta["stems"].append({"file": "pipe.wav", "labels": ["drums"]})
    (s / "stems.json").write_text(json.dumps(meta))
    result, error = bounded(lambda: prepare("folder", root, tmp_path / "cache", progress=False), seconds=60)
    assert error is None and result.n_prepared == 1
    assert any(x["stem"] == "pipe" and "FIFO" in x["reason"] for x in result.skipped)


# --- defect 4: stems.json not UTF-8; an unreadable song folder ------------------------------------------------------
def _corpus_with_bad_metadata(root: Path) -> None:
    song(root / "good")
    utf16 = song(root / "utf16")
    (utf16 / "stems.json").write_bytes(json.dumps({"stems": [{"file": "bass.wav"}]}).encode("utf-16"))  # with a BOM
    garbage = song(root / "garbage")
    (garbage / "stems.json").write_bytes(b"\xff\xfe\x00\xd8garbage\x80\x81")


def test_stems_json_that_is_not_utf8_is_skipped_and_named(tmp_path):
    root = tmp_path / "data"
    _corpus_with_bad_metadata(root)
    songs, problems = read_folder(root)
    assert sorted(s.id for s in songs) == ["good", "utf16"]  # UTF-16 with a BOM is valid JSON text: read
    assert len(problems) == 1 and problems[0][0].endswith("garbage") and "stems.json" in problems[0][1]

    result = prepare("folder", root, tmp_path / "cache", progress=False)  # prepare (and fit, which calls it)
    assert result.n_prepared == 2 and any("garbage" in (x["path"] or "") for x in result.skipped)
    songs, _, problems = load_songs("folder", root)  # eval retrieval
    assert len(songs) == 2 and len(problems) == 1


def test_unreadable_song_folder_is_skipped_simulated(tmp_path, monkeypatch):
    """The permission error is simulated (the suite may run as root, which reads everything)."""
    root = tmp_path / "data"
    song(root / "good")
    locked = song(root / "locked")
    real = os.open

    def os_open(path, *args, **kwargs):
        if Path(path).parent == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    songs, problems = read_folder(root)
    assert [s.id for s in songs] == ["good"] and "cannot be read" in problems[0][1] and "locked" in problems[0][0]
    result = prepare("folder", root, tmp_path / "cache", progress=False)
    assert result.n_prepared == 1 and any("locked" in (x["path"] or "") for x in result.skipped)
    assert len(load_songs("folder", root)[0]) == 1


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX permissions")
def test_unreadable_song_folder_is_skipped_for_real():
    base = shared_tmp()
    try:
        root = base / "data"
        song(root / "good")
        locked = song(root / "locked")
        for p in [base, root, root / "good", *(root / "good").iterdir()]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        locked.chmod(0)
        code = ("from stemjepa.data.multitrack import read_folder\n"
                "from stemjepa.evaluation.retrieval import load_songs\n"
                f"songs, problems = read_folder({str(root)!r})\n"
                "print([s.id for s in songs], problems)\n"
                f"print(len(load_songs('folder', {str(root)!r})[0]))\n")
        r = run_unprivileged(code)
        assert r.returncode == 0, r.stderr
        assert "['good']" in r.stdout and "cannot be read" in r.stdout and r.stdout.strip().endswith("1")
    finally:
        (base / "data" / "locked").chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


# --- defect 8 (metadata): duplicate entries, files outside the song folder --------------------------------------------
def test_duplicate_stem_entry_counts_once(tmp_path, caplog):
    s = song(tmp_path / "s1", names=("bass", "keys"))
    meta = json.loads((s / "stems.json").read_text())
    meta["stems"].append({"file": "./bass.wav", "labels": ["bass"]})
    (s / "stems.json").write_text(json.dumps(meta))
    parsed = read_song_folder(s)
    assert [st.name for st in parsed.stems] == ["bass", "keys"]
    assert "listed more than once" in caplog.text


def test_stem_file_outside_the_song_folder_is_refused(tmp_path):
    outside = song(tmp_path / "elsewhere")
    for bad in (str(outside / "bass.wav"), "../elsewhere/bass.wav"):
        s = song(tmp_path / "data" / "s1")
        (s / "stems.json").write_text(json.dumps({"stems": [{"file": bad}]}))
        with pytest.raises(DataError, match="outside the song folder"):
            read_song_folder(s)


# --- defect 7 (prepare): a full disk stops the run with one line and leaves no temp files --------------------------------
def test_disk_full_during_prepare_stops_cleanly_and_the_rerun_finishes(tmp_path, monkeypatch):
    from faultkit import disk_full_after

    from stemjepa.errors import StemJepaError

    root = tmp_path / "data"
    for i in range(3):
        song(root / f"s{i}")
    out = tmp_path / "cache"
    (out / "songs").mkdir(parents=True)
    stale = out / "songs" / ".old.npy.999999999.tmp"  # left by a killed run (that pid does not exist)
    stale.write_bytes(b"x" * 100)
    monkeypatch.setattr(np, "save", disk_full_after(np.save, n_ok=2))  # the second song's audio cannot be written
    with pytest.raises(StemJepaError, match="disk full.*1 songs already in the cache are kept"):
        prepare("folder", root, out, progress=False)
    monkeypatch.undo()
    assert not [p.name for p in (out / "songs").iterdir() if p.name.endswith(".tmp")]
    result = prepare("folder", root, out, progress=False)
    assert (result.n_already, result.n_prepared, result.manifest["n_songs"]) == (1, 2, 3)


def test_permission_error_anywhere_in_a_command_is_one_line(tmp_path, monkeypatch, capsys):
    """Simulated: the suite may run as root, for whom every folder is writable."""
    import errno

    from stemjepa.cli.main import main

    root = tmp_path / "data"
    song(root / "s1")
    real = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if "locked" in self.parts:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    out = tmp_path / "locked" / "cache"
    assert main(["prepare", "--dataset", "folder", "--root", str(root), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{out}: Permission denied" in err and len(err.strip().splitlines()) == 1


# --- hostile metadata JSON: deeply nested, a FIFO; every reader goes through fsutil.read_json -------------------------
DEEP = "[" * 100_000 + "]" * 100_000  # json.loads would raise RecursionError


def test_deeply_nested_stems_json_is_skipped_by_prepare_fit_and_eval(tmp_path):
    from stemjepa.evaluation.beats.annotations import read_beat_dataset

    root = tmp_path / "data"
    good = song(root / "good")
    meta = json.loads((good / "stems.json").read_text())
    (good / "stems.json").write_text(json.dumps({**meta, "beats": [0.5, 1.0, 1.5]}))
    (song(root / "deep") / "stems.json").write_text(DEEP)
    songs, problems = read_folder(root)
    assert [s.id for s in songs] == ["good"]
    assert problems[0][0].endswith("deep") and "nested deeper" in problems[0][1] and "stems.json" in problems[0][1]
    result = prepare("folder", root, tmp_path / "cache", progress=False)  # prepare, and fit, which calls it
    assert result.n_prepared == 1 and any("deep" in (x["path"] or "") for x in result.skipped)
    songs, _, problems = load_songs("folder", root)  # eval retrieval
    assert len(songs) == 1 and "nested deeper" in problems[0][1]
    tracks, problems = read_beat_dataset("folder", root)  # eval beats
    assert [t.id for t in tracks] == ["good"] and any("nested deeper" in r for _, r in problems)


def test_fifo_named_stems_json_is_refused_not_waited_on(tmp_path):
    root = tmp_path / "data"
    song(root / "good")
    fifo_song = song(root / "piped")
    (fifo_song / "stems.json").unlink()
    os.mkfifo(fifo_song / "stems.json")
    (songs, problems), error = bounded(lambda: read_folder(root), seconds=20)
    assert error is None and [s.id for s in songs] == ["good"]
    assert "piped" in problems[0][0] and "not a regular file" in problems[0][1]


def test_deeply_nested_moisesdb_data_json_and_split_file_are_one_line_errors(tmp_path):
    from stemjepa.data.datasets import load_dataset
    from stemjepa.data.datasets.moisesdb import moisesdb_split

    base = tmp_path / "moises" / "moisesdb_v0.1"
    good = base / "0a1b2c3d-0000-4000-8000-000000000001"
    (good / "bass").mkdir(parents=True)
    sf.write(good / "bass" / "b1.wav", np.zeros(SR, np.float32) + 0.1, SR)
    (good / "data.json").write_text(json.dumps({"stems": [{"stemName": "bass", "tracks": [{"id": "b1"}]}]}))
    deep = base / "0a1b2c3d-0000-4000-8000-000000000002"
    deep.mkdir()
    (deep / "data.json").write_text(DEEP)
    problems: list = []
    songs = load_dataset("moisesdb", tmp_path / "moises", problems=problems)
    assert [s.id for s in songs] == [good.name]
    assert problems == [(str(deep / "data.json"), "JSON nested deeper than 64 levels; not a metadata file; song skipped")]
    split_file = tmp_path / "split.json"
    split_file.write_text(DEEP)
    with pytest.raises(DataError, match="split.json: JSON nested deeper"):
        moisesdb_split(good.name, split_file)


def test_deeply_nested_label_map_and_beat_fifo_are_one_line_errors(tmp_path, capsys):
    from stemjepa.cli.main import main
    from stemjepa.evaluation.beats.annotations import read_beat_file

    label_map = tmp_path / "labels.json"
    label_map.write_text(DEEP)
    code = main(["eval", "retrieval", "--model", str(tmp_path / "none.ckpt"), "--dataset", "folder", "--root",
                 str(tmp_path), "--label-map", str(label_map), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "labels.json: JSON nested deeper" in err and "Traceback" not in err
    os.mkfifo(tmp_path / "x.beats")
    _, error = bounded(lambda: read_beat_file(tmp_path / "x.beats"), seconds=20)
    assert isinstance(error, DataError) and "not a regular file" in str(error)
