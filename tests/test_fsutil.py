"""Atomic writes: the target is the old file or the whole new one, and no temporary file survives a failure."""
import os

import pytest

from stemjepa.fsutil import WriteError, atomic_write, atomic_write_csv, atomic_write_text, clean_stale_temps, temp_name


def test_atomic_write_replaces_the_target_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    assert temp_name(target).name == f".a.json.{os.getpid()}.tmp"


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    def half(fh):
        fh.write(b"ne")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, half)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_an_os_error_names_the_target(tmp_path):
    with pytest.raises(WriteError, match="no_such_folder"):
        atomic_write_text(tmp_path / "no_such_folder" / "a.txt", "x")


def test_by_name_writers_get_the_temp_path(tmp_path):
    target = tmp_path / "x.npy"
    atomic_write(target, lambda tmp: tmp.write_bytes(b"data"), by_name=True)
    assert target.read_bytes() == b"data" and sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


def test_clean_stale_temps_removes_only_dead_writers_temps(tmp_path):
    mine, dead = temp_name(tmp_path / "a"), tmp_path / ".b.999999999.tmp"
    for p in (mine, dead, tmp_path / "keep.tmp"):
        p.write_text("x")
    assert clean_stale_temps(tmp_path) == 1
    assert mine.exists() and not dead.exists() and (tmp_path / "keep.tmp").exists()


def test_csv_tables_are_written_whole(tmp_path):
    target = tmp_path / "t.csv"
    atomic_write_csv(target, ["a", "b"], [{"a": 1, "b": "x,y"}, {"a": 2, "b": ""}])
    assert target.read_bytes() == b'a,b\r\n1,"x,y"\r\n2,\r\n'  # the csv module's line ends, as before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


def test_safe_component_names_cache_files_as_the_inline_rules_did():
    """One rule for the names of cache files (training cache, embedding cache, beat features): the outputs of the rules
    it replaced, pinned, so that existing caches keep being found."""
    from stemjepa.data.training_cache import song_key
    from stemjepa.fsutil import safe_component

    assert safe_component("a b/c:d") == "a_b_c_d"
    assert safe_component("..hidden song__", strip=True) == "hidden_song"
    assert safe_component("é" * 5, strip=True, empty="song") == "song"
    assert safe_component("x" * 100, limit=80) == "x" * 80
    assert song_key("MoisesDB/0f3a song (live)") == "MoisesDB_0f3a_song_live-76bb5cbb"
