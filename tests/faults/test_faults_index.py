"""Defects 5, 6, 7 (index) and 8 (degenerate audio, unmounted library) of the fault matrix, with the fake model of
test_search_fakes (known answers, no training)."""
from __future__ import annotations

import errno
import shutil
import sqlite3

import numpy as np
import pytest
from faultkit import disk_full_after, run_unprivileged, shared_tmp
from test_search_fakes import SR, FakeModel, tone, write, write_songs

from stemjepa.search import StemIndex, StemIndexError, build_index
from stemjepa.search.snapshot import snapshot_paths
from stemjepa.search.store import MetaStore
from stemjepa.search.vectors import StreamedRows


def build(root, out, **kw):
    return build_index(root, out, FakeModel(), progress=False, **kw)


def query_ok(out) -> list:
    mix = tone(4 * 98.0, 3.0, 0.2)
    with StemIndex.open(out, model=FakeModel()) as index:
        return index.query(mix, "bass", k=3)


@pytest.fixture()
def indexed(tmp_path):
    root = tmp_path / "stems"
    write_songs(root)
    out = tmp_path / "idx"
    build(root, out)
    return root, out


# --- defect 5: a read-only index -------------------------------------------------------------------------------------
def test_queries_open_the_index_read_only(indexed):
    _, out = indexed
    with StemIndex.open(out, model=FakeModel()) as index:
        assert len(index.query(tone(392.0, 3.0), "bass", k=3)) == 3
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            index.store.conn.execute("INSERT INTO info(key, value) VALUES ('x', '1')")


def test_read_only_index_folder_can_be_queried():
    base = shared_tmp()
    try:
        root, out = base / "stems", base / "idx"
        write_songs(root)
        build(root, out)
        for p in out.iterdir():
            p.chmod(0o444)
        out.chmod(0o555)
        code = ("from test_search_fakes import FakeModel, tone\nfrom stemjepa.search import StemIndex\n"
                f"with StemIndex.open({str(out)!r}, model=FakeModel()) as index:\n"
                "    print(len(index.query(tone(392.0, 3.0), 'bass', k=3)))\n")
        r = run_unprivileged(code)
        assert r.returncode == 0 and r.stdout.strip() == "3", r.stderr
    finally:
        (base / "idx").chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


# --- defect 6: damaged snapshots are detected by queries and repaired by `index` --------------------------------------
def test_truncated_or_zeroed_snapshot_is_detected_then_repaired(indexed):
    root, out = indexed
    for damage in ("truncate", "zero"):
        with _Store(out) as store:
            gen = store.generation
        vectors = snapshot_paths(out, gen)["vectors"]
        data = bytearray(vectors.read_bytes())
        if damage == "truncate":
            vectors.write_bytes(bytes(data[: len(data) // 2]))
        else:
            data[128:] = bytes(len(data) - 128)  # the .npy header stays, the rows become zeros
            vectors.write_bytes(bytes(data))
        with pytest.raises(StemIndexError, match="stemjepa index"):
            query_ok(out)
        summary = build(root, out)
        assert summary.repaired and "vectors" in summary.repaired and summary.generation == gen + 1
        assert "repaired" in summary.text()
        results = query_ok(out)
        assert results[0].score > 0.9


class _Store:
    def __init__(self, out):
        self.store = MetaStore(out)

    def __enter__(self):
        return self.store

    def __exit__(self, *exc):
        self.store.close()


# --- defect 7: a full disk during `index` --------------------------------------------------------------------------
def test_disk_full_during_index_is_one_line_and_keeps_the_old_index(indexed, monkeypatch):
    root, out = indexed
    write(root / "new" / "a.wav", tone(300.0, 3.0))

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(MetaStore, "insert_row", full)
    with pytest.raises(StemIndexError, match="disk full.*still usable"):
        build(root, out)
    monkeypatch.undo()
    assert len(query_ok(out)) == 3

    # the snapshot's vectors cannot be written (they are streamed from index.sqlite into the file block by block)
    full = disk_full_after(None)
    monkeypatch.setattr(StreamedRows, "write", lambda self, fh: full(fh))
    with pytest.raises(StemIndexError, match="disk full"):
        build(root, out)
    monkeypatch.undo()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no temp file keeps the disk full
    assert len(query_ok(out)) == 3
    assert build(root, out).added == 1


def _cap_database_growth(monkeypatch, extra_pages: int = 0):
    """Writers' connections may grow index.sqlite by `extra_pages` pages only: SQLite itself then answers "database or
    disk is full" (SQLITE_FULL) wherever the run writes next, as on a full disk."""
    real = MetaStore._connect

    def connect(self):
        conn = real(self)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + extra_pages}")
        return conn

    monkeypatch.setattr(MetaStore, "_connect", connect)


def test_disk_full_during_index_names_the_database_and_a_rerun_finishes(indexed, monkeypatch):
    from stemjepa.fsutil import WriteError

    root, out = indexed
    for i in range(6):
        write(root / "new" / f"n{i}.wav", tone(300.0 + 40 * i, 3.0))
    _cap_database_growth(monkeypatch)
    with pytest.raises(StemIndexError) as info:
        build(root, out)
    monkeypatch.undo()
    message = str(info.value)
    assert isinstance(info.value, WriteError) and info.value.disk_full
    assert message.startswith(f"{out / 'index.sqlite'}: disk full") and "still usable" in message
    assert "\n" not in message and "not readable" not in message
    assert len(query_ok(out)) == 3  # the committed generation still answers
    summary = build(root, out)
    assert summary.total == 21 and summary.added + summary.resumed >= 6 and not summary.failed


def test_disk_full_when_index_opens_its_database_is_not_called_unreadable(indexed, monkeypatch):
    """SQLite says "disk I/O error" when its shared-memory file cannot grow on a full disk: the free space decides."""
    import stemjepa.search.store as store_module

    root, out = indexed

    def no_shm(self):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(MetaStore, "_connect", no_shm)
    monkeypatch.setattr(store_module.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(StemIndexError, match=r"index.sqlite: disk full .*still usable") as info:
        build(root, out)
    assert "not readable" not in str(info.value)
    monkeypatch.undo()
    assert len(query_ok(out)) == 3 and build(root, out).unchanged == 15


def test_disk_full_while_writing_the_faiss_index_is_one_line(indexed, monkeypatch):
    import faiss

    root, out = indexed
    write(root / "new" / "a.wav", tone(300.0, 3.0))
    real = faiss.PyCallbackIOWriter

    def full_after_first_block(write_fn, *args):
        calls = {"n": 0}

        def write_block(data):
            calls["n"] += 1
            if calls["n"] > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return write_fn(data)

        return real(write_block, *args)

    monkeypatch.setattr(faiss, "PyCallbackIOWriter", full_after_first_block)
    with pytest.raises(StemIndexError, match=r"snapshot-\d+\.ann\S*: disk full .*still usable"):
        build(root, out, index_type="hnsw")
    monkeypatch.undo()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert len(query_ok(out)) == 3
    summary = build(root, out, index_type="hnsw")
    assert summary.index_type == "hnsw" and summary.total == 16


# --- a read-only copy of an index: its current generation, or a clear refusal ----------------------------------------
def _copy_without_shm(out, copy):
    """Copy an index folder as a user would without its -shm file, into a folder where SQLite cannot create one
    (simulated with a dangling link, since the suite may run as root, who can create files in a read-only folder)."""
    copy.mkdir()
    for p in out.iterdir():
        if not p.name.endswith("-shm"):
            shutil.copy2(p, copy / p.name)
    (copy / "index.sqlite-shm").symlink_to(copy / "missing" / "index.sqlite-shm")


def test_read_only_copy_of_an_index_without_its_shm_file_opens_its_current_generation(indexed, tmp_path):
    root, out = indexed
    with StemIndex.open(out, model=FakeModel()):  # a server reading the index keeps its WAL alive during the update
        shutil.rmtree(root / "song0")
        assert build(root, out).generation == 2
        _copy_without_shm(out, tmp_path / "copy")
    with StemIndex.open(tmp_path / "copy", model=FakeModel()) as index:
        assert index.store.generation == 2
        results = index.query(tone(4 * 55.0, 3.0, 0.2), "bass", k=15)
    assert len(results) == 12 and not [r for r in results if "song0" in r.path]  # no deleted file answers


def test_read_only_copy_with_a_wal_that_cannot_be_applied_is_refused(indexed, tmp_path):
    _, out = indexed
    writer = sqlite3.connect(out / "index.sqlite", isolation_level=None)  # a writer that has not checkpointed yet
    try:
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        writer.execute("UPDATE info SET value = '\"later\"' WHERE key = 'updated'")
        assert (out / "index.sqlite-wal").stat().st_size > 0
        _copy_without_shm(out, tmp_path / "copy")
    finally:
        writer.close()
    with pytest.raises(StemIndexError, match=r"index.sqlite-wal: holds committed changes .*older generation"):
        StemIndex.open(tmp_path / "copy", model=FakeModel())


def test_read_only_copy_of_an_index_without_its_shm_file_for_real():
    base = shared_tmp()
    root, out, copy = base / "stems", base / "idx", base / "copy"
    try:
        write_songs(root)
        build(root, out)
        with StemIndex.open(out, model=FakeModel()):
            shutil.rmtree(root / "song0")
            build(root, out)
            copy.mkdir()
            for p in out.iterdir():
                if not p.name.endswith("-shm"):
                    shutil.copy2(p, copy / p.name)
                    (copy / p.name).chmod(0o444)
        copy.chmod(0o555)
        code = ("from test_search_fakes import FakeModel, tone\nfrom stemjepa.search import StemIndex\n"
                f"with StemIndex.open({str(copy)!r}, model=FakeModel()) as index:\n"
                "    print(index.store.generation, len(index.query(tone(220.0, 3.0), 'bass', k=15)))\n")
        r = run_unprivileged(code)
        assert r.returncode == 0 and r.stdout.split() == ["2", "12"], r.stderr
    finally:
        if copy.is_dir():
            copy.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


# --- defect 8: degenerate audio gets the same answer everywhere; an unmounted library does not wipe the index ----------
def test_silent_and_too_short_files_are_refused_by_index(tmp_path):
    root = tmp_path / "stems"
    write(root / "ok.wav", tone(200.0, 2.0))
    write(root / "zeros.wav", np.zeros(SR, np.float32))
    write(root / "blip.wav", tone(200.0, 0.01))
    summary = build(root, tmp_path / "idx")
    failed = dict(summary.failed)
    assert summary.total == 1 and "silent" in failed[str(root / "zeros.wav")]
    assert "too short" in failed[str(root / "blip.wav")]


def test_reindexing_an_empty_folder_needs_allow_empty(indexed, tmp_path):
    root, out = indexed
    moved = tmp_path / "unmounted"
    root.rename(moved)
    root.mkdir()  # the mount point of a drive that is not mounted
    with pytest.raises(StemIndexError, match="--allow-empty"):
        build(root, out)
    assert len(query_ok(out)) == 3  # nothing was removed
    summary = build(root, out, allow_empty=True)
    assert summary.total == 0 and summary.removed == 15


def test_disk_full_error_names_the_path():
    from stemjepa.fsutil import WriteError

    exc = WriteError("/x/y.npy", OSError(errno.ENOSPC, "No space left on device"))
    assert str(exc).startswith("/x/y.npy: disk full") and exc.disk_full
