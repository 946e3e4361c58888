"""Embedding a library in shards (search/parts.py): `--shard I/N` parts merged with `--merge`, and `--engine lightning`
with 2 local worker processes, give the index one process gives (same rows, vectors and results); a killed shard
resumes without redoing its committed files; an update embeds only what changed. Also: the every-run reads of the
index (live_stats, stale_analysis) come from SQLite indexes, not the table of vectors."""
from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_search_fakes import FakeModel, noise, tone, write, write_songs

from stemjepa.errors import CheckpointError
from stemjepa.search import StemIndex, StemIndexError, build_index
from stemjepa.search.parts import PART_DB, embed_part, parse_shard, parts_folder, shard_of
from stemjepa.search.store import DB_NAME, MetaStore

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"
COLUMNS = ("id, path, size, mtime_ns, checksum, duration, n_chunks, offsets, weights, chunks, vector, gen_added, "
           "gen_removed, analysis, analysis_version, bpm, key_name")


def rows(index: Path) -> list[tuple]:
    con = sqlite3.connect(index / DB_NAME)
    try:
        return con.execute(f"SELECT {COLUMNS} FROM files ORDER BY id").fetchall()
    finally:
        con.close()


def answers(index: Path) -> list[list[tuple[str, float]]]:
    with StemIndex.open(index, model=FakeModel()) as idx:
        return [[(r.path, round(r.score, 6)) for r in idx.query(tone(4 * f, 3.0, 0.2), "bass", k=6)]
                for f in (55.0, 98.0, 174.6)]


def snapshot_vectors(index: Path) -> np.ndarray:
    return np.concatenate([np.load(p) for p in sorted(index.glob("snapshot-*.vectors.npy"))])


def assert_same_index(a: Path, b: Path) -> None:
    assert rows(a) == rows(b)  # every column, bit for bit: ids, checksums, vectors, chunks, offsets, tempo/key
    assert np.array_equal(snapshot_vectors(a), snapshot_vectors(b))
    assert answers(a) == answers(b)


@pytest.fixture()
def library(tmp_path) -> Path:
    root = tmp_path / "stems"
    write_songs(root)
    write(root / "copy" / "bass.wav", tone(55.0, 3.0))  # the same bytes as song0/bass.wav
    write(root / "silent.wav", np.zeros(16000, np.float32))  # not embeddable: reported by its shard and the merge
    return root


def shard_and_merge(root: Path, out: Path, n: int, **kw) -> tuple[list, object]:
    parts = [embed_part(root, out, FakeModel(), (i, n), progress=False) for i in range(n)]
    return parts, build_index(root, out, FakeModel(), progress=False, merge_from=str(parts_folder(out)), **kw)


def test_shards_split_by_a_stable_hash_of_the_relative_path():
    names = [f"song{i}/stem{j}.wav" for i in range(200) for j in range(4)]
    shards = [shard_of(name, 4) for name in names]
    assert shards == [shard_of(name, 4) for name in names]  # deterministic (no per-process hash seed)
    assert all(120 < shards.count(i) < 280 for i in range(4))
    assert shard_of("a/b.wav", 1) == 0
    assert parse_shard("1/4") == (1, 4) and parse_shard(" 0 / 2 ") == (0, 2)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="not a shard"):
            parse_shard(bad)


def test_parts_merged_equal_a_one_process_index(library, tmp_path):
    one = build_index(library, tmp_path / "one", FakeModel(), progress=False)
    parts, merged = shard_and_merge(library, tmp_path / "two", 2)
    assert sum(p.files for p in parts) == 17 and all(p.files for p in parts)  # every file in exactly one shard
    assert sum(p.embedded for p in parts) == 16 and sum(len(p.failed) for p in parts) == 1
    assert (merged.total, merged.added, merged.merged, merged.generation) == (one.total, 16, 16, 1)
    assert [p for p, _ in merged.failed] == [p for p, _ in one.failed] == [str(library / "silent.wav")]
    assert_same_index(tmp_path / "one", tmp_path / "two")
    assert not parts_folder(tmp_path / "two").exists()  # merged, then deleted

    # an update: one file changed, one added, one deleted: the shards embed only those, the merge folds them in
    write(library / "song1" / "keys.wav", tone(440.0, 3.0, 0.2))
    write(library / "new" / "pad.wav", noise(3.0, seed=9))
    (library / "song4" / "drums.wav").unlink()
    one = build_index(library, tmp_path / "one", FakeModel(), progress=False)
    models = [FakeModel(), FakeModel()]
    parts = [embed_part(library, tmp_path / "two", models[i], (i, 2), progress=False) for i in range(2)]
    assert sum(p.embedded for p in parts) == 2 and sum(m.embedded for m in models) == 2
    assert sum(p.in_index for p in parts) == 14  # and the silent file, tried again: not in the index
    merge_model = FakeModel()
    merged = build_index(library, tmp_path / "two", merge_model, progress=False, merge_from=str(tmp_path / "two/parts"))
    assert merge_model.embedded == 0 and (merged.added, merged.updated, merged.removed) == (1, 1, 1) == (
        one.added, one.updated, one.removed)
    assert_same_index(tmp_path / "one", tmp_path / "two")


def test_two_lightning_workers_give_the_same_index(library, tmp_path):
    build_index(library, tmp_path / "one", FakeModel(), progress=False)
    env = dict(os.environ, OMP_NUM_THREADS="1", STEMJEPA_ANALYSIS="0")
    r = subprocess.run([sys.executable, str(TESTS / "index_dist.py"), str(library), str(tmp_path / "two"), "2"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert '"merged": 16' in r.stdout.splitlines()[-1] and "silent.wav" in r.stdout
    assert "MEMBER: 2/2" in r.stderr  # two processes
    assert_same_index(tmp_path / "one", tmp_path / "two")
    assert not (tmp_path / "two" / "parts").exists()


SHARD = textwrap.dedent("""
    import sys, time
    sys.path[:0] = [{tests!r}, {src!r}]
    from test_search_fakes import FakeModel
    from stemjepa.search.parts import embed_part

    class Stalls(FakeModel):  # embeds 3 files, then hangs in the 4th until killed
        def embed_many(self, waves, **kw):
            if self.embedded == 3:
                print("stalled", flush=True)
                time.sleep(120)
            return super().embed_many(waves, **kw)

    embed_part(sys.argv[1], sys.argv[2], Stalls(), (0, 1), batch_size=1, progress=False)
""").format(tests=str(TESTS), src=str(SRC))


def test_a_killed_shard_resumes_and_the_merge_waits_for_it(library, tmp_path):
    # without the copied file: whether a copy is embedded or reuses its twin's row depends on whether the twin was
    # committed before the copy's loader thread looked it up, so the counts below would depend on timing
    shutil.rmtree(library / "copy")
    out = tmp_path / "idx"
    script = tmp_path / "shard.py"
    script.write_text(SHARD)
    proc = subprocess.Popen([sys.executable, str(script), str(library), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "stalled", proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        proc.stdout.close()
        proc.stderr.close()
    part = out / "parts" / "0-of-1"
    con = sqlite3.connect(part / PART_DB)
    assert con.execute("SELECT COUNT(*) FROM files").fetchone()[0] == 3  # one commit per batch of one file
    con.close()
    with pytest.raises(StemIndexError, match=r"shard 0/1 is not finished"):
        build_index(library, out, FakeModel(), progress=False, merge_from=str(part.parent))
    assert not (out / DB_NAME).exists()  # refused before the index was created

    model = FakeModel()
    summary = embed_part(library, out, model, (0, 1), progress=False)
    assert (summary.kept, summary.embedded, model.embedded) == (3, 12, 12)  # the 3 committed files are not redone
    assert [p for p, _ in summary.failed] == [str(library / "silent.wav")]
    again = FakeModel()
    summary = embed_part(library, out, again, (0, 1), progress=False)
    assert (summary.kept, again.embedded, len(summary.failed)) == (15, 0, 1)  # a failed file is not retried either
    merged = build_index(library, out, FakeModel(), progress=False, merge_from=str(part.parent))
    assert merged.merged == 15 and len(merged.failed) == 1
    build_index(library, tmp_path / "one", FakeModel(), progress=False)
    assert_same_index(tmp_path / "one", out)


def test_merge_refuses_parts_that_do_not_make_a_set(library, tmp_path):
    out = tmp_path / "idx"
    embed_part(library, out, FakeModel(), (0, 2), progress=False)
    with pytest.raises(StemIndexError, match=r"shard parts 1/2 missing"):
        build_index(library, out, FakeModel(), progress=False, merge_from=str(out / "parts"))
    embed_part(library, out, FakeModel(), (1, 3), progress=False)
    with pytest.raises(StemIndexError, match="different shard counts"):
        build_index(library, out, FakeModel(), progress=False, merge_from=str(out / "parts"))
    embed_part(library, tmp_path / "other", FakeModel(), (0, 1), progress=False)
    with pytest.raises(CheckpointError, match="model fake-0001"):
        build_index(library, tmp_path / "other", FakeModel("fake-0002"), progress=False,
                    merge_from=str(tmp_path / "other/parts"))
    with pytest.raises(StemIndexError, match="no shard parts to merge"):
        build_index(library, tmp_path / "new", FakeModel(), progress=False, merge_from=str(tmp_path / "new/parts"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(StemIndexError, match="not empty and holds no stem index"):
        embed_part(library, tmp_path / "mine", FakeModel(), (0, 2), progress=False)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_cli_shard_then_merge(library, tmp_path, monkeypatch, capsys):
    from stemjepa.cli.main import main

    ckpt = tmp_path / "fake.ckpt"
    ckpt.write_bytes(b"x")
    monkeypatch.setattr("stemjepa.models.registry.load_model", lambda path, device=None: FakeModel())
    out = str(tmp_path / "idx")
    codes = [main(["index", str(library), "--checkpoint", str(ckpt), "--out", out, "--shard", f"{i}/2", "--quiet",
                   "--parts", str(tmp_path / "p")]) for i in range(2)]
    assert sorted(codes) == [0, 1]  # the shard holding the silent file says so
    text = capsys.readouterr().out
    assert "shard 0/2" in text and "shard 1/2" in text and "silent.wav" in text
    assert main(["index", str(library), "--checkpoint", str(ckpt), "--out", out, "--merge", "--quiet",
                 "--parts", str(tmp_path / "p")]) == 1
    text = capsys.readouterr().out
    assert "16 added" in text and "16 embedded by sharded runs" in text and "1 failed" in text
    with pytest.raises(SystemExit):
        main(["index", str(library), "--out", out, "--shard", "2/2"])
    assert "not a shard" in capsys.readouterr().err


def fast_analyse(wave, sample_rate):
    """A stand-in analyser (the real one costs ~0.3 s a file): a tempo from the loudness, no key."""
    from stemjepa.analysis import Analysis

    return Analysis(round(60 + 200 * float(np.max(np.abs(wave))), 3), 0.9, (0.0,), (0.0,), None, 0.0, -20.0,
                    round(len(wave) / sample_rate, 3))


def test_parts_carry_tempo_and_key_and_the_merge_analyses_nothing(library, tmp_path, monkeypatch):
    import stemjepa.analysis as analysis_module

    calls = []
    monkeypatch.setenv("STEMJEPA_ANALYSIS", "1")
    monkeypatch.setattr(analysis_module, "analyse", lambda w, sr: calls.append(1) or fast_analyse(w, sr))
    build_index(library, tmp_path / "one", FakeModel(), progress=False)
    parts = [embed_part(library, tmp_path / "two", FakeModel(), (i, 2), progress=False) for i in range(2)]
    calls.clear()
    build_index(library, tmp_path / "two", FakeModel(), progress=False, merge_from=str(tmp_path / "two/parts"))
    assert calls == [] and sum(p.embedded for p in parts) == 16
    assert_same_index(tmp_path / "one", tmp_path / "two")
    assert all(r[-4] is not None for r in rows(tmp_path / "two"))  # every row analysed (the analysis JSON)


def test_every_run_reads_of_the_index_come_from_sqlite_indexes(library, tmp_path, monkeypatch):
    """live_stats / pending_stats read a covering index (not the rows, which hold the vectors); the rows to analyse
    are looked for only among those added since the last complete check (a range of row ids)."""
    import stemjepa.analysis as analysis_module

    monkeypatch.setenv("STEMJEPA_ANALYSIS", "1")
    monkeypatch.setattr(analysis_module, "analyse", fast_analyse)
    out = tmp_path / "idx"
    build_index(library, out, FakeModel(), progress=False)
    after_ids = []
    real = MetaStore.stale_analysis
    monkeypatch.setattr(MetaStore, "stale_analysis", lambda self, g, v, after_id=0: after_ids.append(after_id) or real(
        self, g, v, after_id))
    build_index(library, out, FakeModel(), progress=False)  # unchanged: no row is looked at
    write(library / "new.wav", tone(300.0, 3.0))
    assert build_index(library, out, FakeModel(), progress=False).added == 1
    assert after_ids == [16, 16]  # the 16 rows of the first run, checked then

    store = MetaStore(out, create=True)
    try:
        plans = []
        store.conn.set_trace_callback(lambda q: plans.append(q) if q.lstrip().startswith("SELECT") else None)
        store.live_stats(2)
        store.pending_stats(3)
        real(store, 2, 1, 16)
        store.conn.set_trace_callback(None)
        found = [" ".join(r[3] for r in store.conn.execute("EXPLAIN QUERY PLAN " + q)) for q in plans]
        assert "USING COVERING INDEX files_stat" in found[0] and "USING COVERING INDEX files_stat" in found[1], found
        assert "INTEGER PRIMARY KEY (rowid>" in found[2], found
    finally:
        store.close()
