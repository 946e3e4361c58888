"""An `index` run killed (SIGKILL, a real process) mid-way: the previous index keeps answering, also while the run is
still going, and the next run resumes without redoing the committed work. Also for updates written as a new shard and
tombstones (snapshot.py): killed after the shard's files, after the manifest, after the commit."""
from __future__ import annotations

import json
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
from stemjepa.search import snapshot as snapshot_module
from stemjepa.search.store import DB_NAME

TESTS = Path(__file__).parent
NEW_TONES = np.geomspace(300.0, 7000.0, 12)  # one fake-model band apart at least
SRC = TESTS.parent / "src"

WRITER = textwrap.dedent("""
    import sys, time
    sys.path[:0] = [{tests!r}, {src!r}]
    from test_search_fakes import FakeModel
    from stemjepa.search import build_index
    import stemjepa.search.snapshot as snap

    root, out, mode = sys.argv[1:4]
    if mode.endswith("+incremental"):  # the update is written as a new shard + tombstones, not a rewrite
        snap.COMPACT_BELOW_ROWS = 0
    def stop_here():
        print("killpoint", flush=True)
        time.sleep(120)
    def on_phase(phase):
        print(phase, flush=True)
        if mode.startswith("snapshot") and phase == "snapshot":
            stop_here()  # killed here: snapshot files and manifest written, generation not committed
    if mode.startswith("shard"):  # killed after the new shard's vectors, before its other files and the manifest
        save = snap.save_vectors
        def save_then_stop(path, array):
            save(path, array)
            if str(path).endswith("snapshot-2.vectors.npy"):
                stop_here()
        snap.save_vectors = save_then_stop
    if mode.startswith("cleanup"):  # killed after the commit, before the unused files are removed
        snap.remove_old_snapshots = lambda folder, generation: stop_here()
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


def wait_for_line(proc: subprocess.Popen, word: str) -> None:
    """Read the writer's output until it prints `word` (it then sleeps until killed)."""
    for line in proc.stdout:
        if line.strip() == word:
            return
    raise AssertionError(f"writer exited early ({proc.wait()}): {proc.stderr.read()}")


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


def check_new_generation(out: Path, root: Path) -> None:
    with StemIndex.open(out, model=FakeModel()) as index:
        assert index.generation == 2 and len(index) == 26
        assert index.query(tone(4 * NEW_TONES[5], 2.0), "bass", k=1)[0].path == str(root / "new/n05.wav")
        paths = {r.path for r in index.query(tone(4 * 300.0, 2.0), "bass", k=30)}
        assert len(paths) == 26 and str(root / "song4/drums.wav") not in paths


@pytest.mark.parametrize("step", ["shard", "snapshot", "cleanup"])
def test_incremental_update_killed_at_each_step(tmp_path, indexed, monkeypatch, step):
    root, out = indexed
    monkeypatch.setattr(snapshot_module, "COMPACT_BELOW_ROWS", 0)
    proc = start_writer(tmp_path, root, out, f"{step}+incremental")
    try:
        wait_for_line(proc, "killpoint")
        (check_new_generation if step == "cleanup" else check_previous_generation)(out, root)  # while it writes
    finally:
        kill(proc)
    (check_new_generation if step == "cleanup" else check_previous_generation)(out, root)

    model = FakeModel()
    s = build_index(root, out, model, progress=False)
    assert (s.generation, s.total, model.embedded, s.failed) == (2, 26, 0, [])
    check_new_generation(out, root)
    manifest = json.loads((out / "snapshot-2.manifest.json").read_text())
    assert [sh["gen"] for sh in manifest["shards"]] == [1, 2] and manifest["deleted"]["rows"] == 1  # shard 1 kept
    used = {"snapshot-1.manifest.json", "snapshot-2.manifest.json", "snapshot-2.deleted.npy"}
    used |= {f"snapshot-{sh['gen']}.{name}.{'faiss' if name == 'ann' else 'npy'}"
             for sh in manifest["shards"] for name in sh["files"]}
    assert {p.name for p in out.iterdir() if "snapshot-" in p.name} == used  # no temp file, nothing unused
