"""An `index` run killed (SIGKILL, a real process) mid-way: the previous index keeps answering, also while the run is
still going, and the next run resumes without redoing the committed work."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from test_search_fakes import FakeModel, tone, write, write_songs

from stemjepa.search import StemIndex, StemIndexError, build_index
from stemjepa.search.store import DB_NAME

TESTS = Path(__file__).parent
NEW_TONES = np.geomspace(300.0, 7000.0, 12)  # one fake-model band apart at least
SRC = TESTS.parent / "src"

WRITER = textwrap.dedent("""
    import sys, time
    sys.path[:0] = [{tests!r}, {src!r}]
    from test_search_fakes import FakeModel
    from stemjepa.search import build_index

    root, out, mode = sys.argv[1:4]
    def on_phase(phase):
        print(phase, flush=True)
        if mode == "snapshot" and phase == "snapshot":
            time.sleep(120)  # killed here: snapshot files written, generation not committed
    build_index(root, out, FakeModel(delay=0.2 if mode == "embed" else 0.0), batch_size=1, progress=False,
                on_phase=on_phase)
""").format(tests=str(TESTS), src=str(SRC))


def start_writer(tmp_path, root, out, mode) -> subprocess.Popen:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    return subprocess.Popen([sys.executable, str(script), str(root), str(out), mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(predicate, proc, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"writer exited early ({proc.returncode}): {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the writer")


def pending_rows(out: Path, generation: int) -> int:
    try:
        con = sqlite3.connect(out / DB_NAME, timeout=10)
        try:
            return con.execute("SELECT COUNT(*) FROM files WHERE gen_added = ?", (generation,)).fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:  # tables not created yet
        return 0


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    proc.stdout.close()
    proc.stderr.close()


@pytest.fixture()
def indexed(tmp_path):
    root = tmp_path / "stems"
    write_songs(root)
    build_index(root, tmp_path / "idx", FakeModel(), progress=False)
    for i, f in enumerate(NEW_TONES):  # the update to interrupt: 12 new files, one deletion
        write(root / "new" / f"n{i:02d}.wav", tone(f, 2.0))
    (root / "song4" / "drums.wav").unlink()
    return root, tmp_path / "idx"


def check_previous_generation(out: Path, root: Path) -> None:
    with StemIndex.open(out, model=FakeModel()) as index:
        assert index.generation == 1 and len(index) == 15
        paths = {r.path for r in index.query(tone(4 * 300.0, 2.0), "bass", k=15)}
        assert str(root / "song4/drums.wav") in paths and not any("/new/" in p for p in paths)


def test_kill_while_embedding_then_resume(tmp_path, indexed):
    root, out = indexed
    proc = start_writer(tmp_path, root, out, "embed")
    try:
        wait_for(lambda: pending_rows(out, 2) >= 3, proc)
        check_previous_generation(out, root)  # queries run while the update is in progress
    finally:
        kill(proc)
    done = pending_rows(out, 2)
    assert 3 <= done < 12
    check_previous_generation(out, root)  # still usable after the kill

    model = FakeModel()
    s = build_index(root, out, model, progress=False)
    assert s.resumed == done and model.embedded == 12 - done
    assert (s.added, s.removed, s.total, s.generation, s.failed) == (12, 1, 26, 2, [])
    with StemIndex.open(out, model=FakeModel()) as index:
        assert index.query(tone(4 * NEW_TONES[5], 2.0), "bass", k=1)[0].path == str(root / "new/n05.wav")


def test_kill_after_snapshot_before_commit(tmp_path, indexed):
    root, out = indexed
    proc = start_writer(tmp_path, root, out, "snapshot")
    try:
        wait_for(lambda: (out / "snapshot-2.vectors.npy").exists() and pending_rows(out, 2) == 12, proc)
        time.sleep(0.2)
    finally:
        kill(proc)
    check_previous_generation(out, root)
    model = FakeModel()
    s = build_index(root, out, model, progress=False)
    assert (s.resumed, model.embedded, s.generation, s.total) == (12, 0, 2, 26)
    assert sorted(p.name for p in out.glob("snapshot-*.ids.npy")) == ["snapshot-1.ids.npy", "snapshot-2.ids.npy"]
    assert not list(out.glob(".*tmp*"))


def test_kill_during_the_first_build(tmp_path):
    root = tmp_path / "stems"
    write_songs(root)
    out = tmp_path / "idx"
    proc = start_writer(tmp_path, root, out, "embed")
    try:
        wait_for(lambda: pending_rows(out, 1) >= 2, proc)
    finally:
        kill(proc)
    with pytest.raises(StemIndexError, match="no finished build yet"):
        StemIndex.open(out, model=FakeModel())
    model = FakeModel()
    s = build_index(root, out, model, progress=False)
    assert s.total == 15 and s.generation == 1 and model.embedded == 15 - s.resumed and s.resumed >= 2
