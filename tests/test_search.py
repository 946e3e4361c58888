"""Stem library search with a fake model whose answers are known: retrieval, offsets, incremental updates, refusals."""
from __future__ import annotations

import json
import os
import sqlite3
import time

import numpy as np
import pytest
from test_search_fakes import SR, FakeModel, noise, tone, write, write_songs

from stemjepa.errors import AudioError, CheckpointError, StemJepaError
from stemjepa.search import StemIndex, StemIndexError, build_index
from stemjepa.search.store import DB_NAME


@pytest.fixture()
def library(tmp_path):
    root = tmp_path / "stems"
    songs = write_songs(root)
    return root, songs


def build(root, out, model=None, **kw):
    return build_index(root, out, model or FakeModel(), progress=False, **kw)


def test_held_out_bass_is_found_from_the_mix_without_it(library, tmp_path):
    root, songs = library
    summary = build(root, tmp_path / "idx")
    assert (summary.added, summary.failed, summary.total, summary.index_type) == (15, [], 15, "exact")
    with StemIndex.open(tmp_path / "idx", model=FakeModel()) as index:
        assert len(index) == 15
        for i, stems in songs.items():
            mix = stems["keys"] + stems["drums"]  # the song minus its bass
            write(tmp_path / f"mix{i}.wav", mix)
            for query in (tmp_path / f"mix{i}.wav", mix):  # a path or an array
                results = index.query(query, "bass", k=3)
                assert [r.rank for r in results] == [1, 2, 3]
                assert results[0].path == str(root / f"song{i}" / "bass.wav")
                assert results[0].cosine > 0.99 and results[1].cosine < 0.5
                assert results[0].offset in (0.0, 2.0) and results[0].duration == pytest.approx(3.0)
        batch = index.query_many([songs[0]["keys"], songs[3]["keys"]], "bass", k=1)
        assert [b[0].path for b in batch] == [str(root / "song0/bass.wav"), str(root / "song3/bass.wav")]


def test_array_query_at_another_rate_is_resampled_before_it_is_checked(library, tmp_path):
    from stemjepa.audio.io import resample

    root, songs = library
    build(root, tmp_path / "idx")
    mix = songs[2]["keys"] + songs[2]["drums"]
    stereo_48k = np.stack([resample(mix, SR, 48000)] * 2)  # (channels, N) at 48 kHz: 3x the samples of the 16 kHz mix
    with StemIndex.open(tmp_path / "idx", model=FakeModel()) as index:
        best = index.query(stereo_48k, "bass", k=1, sample_rate=48000)[0]
        assert best.path == str(root / "song2" / "bass.wav") and best.cosine > 0.99
        short = resample(mix[: int(0.5 * SR)], SR, 48000)  # 1.5x MIN_QUERY_SECONDS in samples at 16 kHz, 0.5 s at 48 kHz
        with pytest.raises(AudioError, match="too short"):
            index.query(short, "bass", k=1, sample_rate=48000)


def test_best_offset_points_at_the_matching_chunk(tmp_path):
    root = tmp_path / "stems"
    # 7 s stem in 2 s chunks: noise, noise, 98 Hz tone (4-6 s), noise -> the bass part starts at 4 s
    wave = np.concatenate([noise(4.0, 0.3, seed=1), tone(98.0, 2.0), noise(1.0, 0.3, seed=2)])
    write(root / "long.wav", wave)
    write(root / "other.wav", tone(220.0, 3.0))
    build(root, tmp_path / "idx")
    with StemIndex.open(tmp_path / "idx", model=FakeModel()) as index:
        best = index.query(tone(4 * 98.0, 2.0), "bass", k=2)[0]
    assert best.path.endswith("long.wav") and best.offset == 4.0
    assert best.chunk_cosine > 0.99 and best.chunk_cosine > best.cosine


def test_incremental_update_adds_skips_updates_and_drops(library, tmp_path):
    root, songs = library
    out = tmp_path / "idx"
    build(root, out)
    model = FakeModel()
    s = build(root, out, model)  # nothing changed: nothing embedded, no new generation
    assert (s.added, s.updated, s.unchanged, s.removed, s.generation, model.embedded) == (0, 0, 15, 0, 1, 0)

    write(root / "new" / "bass.wav", tone(233.0, 3.0))  # new file
    write(root / "song1" / "keys.wav", tone(1000.0, 3.0))  # changed content
    bass2 = root / "song2" / "bass.wav"
    st = bass2.stat()
    os.utime(bass2, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touched, same bytes
    (root / "song4" / "drums.wav").unlink()  # deleted
    (root / "song3" / "drums.wav").rename(root / "song3" / "drums_renamed.wav")  # moved: same bytes elsewhere
    model = FakeModel()
    s = build(root, out, model)
    assert (s.added, s.updated, s.unchanged, s.removed, s.reused) == (2, 1, 12, 2, 1)
    assert model.embedded == 2  # the renamed file's vectors were copied, the touched file was not re-embedded
    assert s.total == 15 and s.generation == 2
    with StemIndex.open(out, model=FakeModel()) as index:
        paths = {r.path for r in index.query(tone(4 * 233.0, 2.0), "bass", k=20)}
        assert str(root / "new/bass.wav") in paths
        assert str(root / "song4/drums.wav") not in paths and str(root / "song3/drums_renamed.wav") in paths
        top = index.query(tone(4 * 1000.0, 2.0), "bass", k=1)[0]  # predicts 1000 Hz
        assert top.path == str(root / "song1/keys.wav")
    rows = sqlite3.connect(out / DB_NAME).execute("SELECT COUNT(*) FROM files").fetchone()[0]
    assert rows == 15 + 3  # replaced/deleted rows of generation 1 are kept one generation for open readers
    build(root, out, FakeModel())
    write(root / "x.wav", tone(300.0, 2.0))
    build(root, out, FakeModel())
    rows = sqlite3.connect(out / DB_NAME).execute("SELECT COUNT(*) FROM files").fetchone()[0]
    assert rows == 16
    snapshots = sorted(p.name.split(".")[0] for p in out.glob("snapshot-*.vectors.npy"))
    assert snapshots == ["snapshot-2", "snapshot-3"]


def test_bad_files_are_reported_and_skipped(library, tmp_path):
    root, _ = library
    (root / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")
    write(root / "silence.wav", np.zeros(SR * 2, np.float32))
    (root / "notes.txt").write_text("not audio, not indexed, not an error")
    s = build(root, tmp_path / "idx")
    failed = dict(s.failed)
    assert s.added == 15 and set(failed) == {str(root / "broken.wav"), str(root / "silence.wav")}
    assert "silent" in failed[str(root / "silence.wav")]
    text = s.text()
    assert "2 failed" in text and "broken.wav" in text
    (root / "song0" / "bass.wav").write_bytes(b"RIFF garbage now")  # an indexed file that became unreadable
    s = build(root, tmp_path / "idx")
    assert s.removed == 1 and str(root / "song0/bass.wav") in dict(s.failed) and s.total == 14


def test_index_types_give_the_same_answers_and_are_saved(library, tmp_path):
    root, songs = library
    out = tmp_path / "idx"
    build(root, out)
    with StemIndex.open(out, model=FakeModel()) as index:
        exact = [r.path for r in index.query(songs[2]["keys"], "bass", k=5)]
    s = build(root, out, index_type="hnsw")
    assert s.index_type == "hnsw" and s.generation == 2
    with StemIndex.open(out, model=FakeModel()) as index:
        assert index.info["index_type"] == "hnsw" and index.info["index_params"]["M"] == 32
        assert [r.path for r in index.query(songs[2]["keys"], "bass", k=5)] == exact
    s = build(root, out)  # the policy is remembered: nothing to redo
    assert (s.index_type, s.generation) == ("hnsw", 2)
    s = build(root, out, index_type="ivfpq")  # too few files to train product quantisers: searched exactly
    assert s.index_type == "exact"


def test_ivfpq_index_on_a_few_hundred_files(tmp_path):
    root = tmp_path / "stems"
    rng = np.random.default_rng(0)
    freqs = np.geomspace(45.0, 7000.0, 300)
    for i, f in enumerate(freqs):  # short random two-tone files
        write(root / f"s{i:03d}.wav", tone(f, 0.3) + tone(freqs[rng.integers(300)], 0.3, 0.1))
    s = build(root, tmp_path / "idx", index_type="ivfpq")
    assert s.index_type == "ivfpq" and s.total == 300
    with StemIndex.open(tmp_path / "idx", model=FakeModel()) as index:
        params = index.info["index_params"]
        assert {"nlist", "m", "nbits", "nprobe", "candidates"} <= set(params) and params["trained_n"] == 300
        q = np.stack([FakeModel().embed(tone(f, 1.0)).vector for f in freqs[::37]])
        approx = index.search_vectors(q, k=5)
        index.searcher.kind = "exact"  # same snapshot, flat scan
        exact = index.search_vectors(q, k=5)
    for a, e in zip(approx, exact):
        assert [r.path for r in a] == [r.path for r in e]
        assert [r.score for r in a] == pytest.approx([r.score for r in e], abs=1e-5)
    write(root / "extra.wav", tone(321.0, 0.3))
    s = build(root, tmp_path / "idx")  # update: trained quantisers reused
    assert s.index_type == "ivfpq" and s.total == 301
    with StemIndex.open(tmp_path / "idx", model=FakeModel()) as index:
        assert index.info["index_params"]["trained_n"] == 300


def test_refusals(library, tmp_path):
    root, songs = library
    out = tmp_path / "idx"
    with pytest.raises(StemIndexError, match="index folder not found"):
        StemIndex.open(out, model=FakeModel())
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "mine.txt").write_text("user file")
    with pytest.raises(StemIndexError, match="not a stem index"):
        StemIndex.open(tmp_path / "plain", model=FakeModel())
    with pytest.raises(StemIndexError, match="not empty"):
        build(root, tmp_path / "plain")
    assert (tmp_path / "plain" / "mine.txt").read_text() == "user file"
    build(root, out)

    with pytest.raises(CheckpointError, match="built with model fake-0001.*is model other"):
        StemIndex.open(out, model=FakeModel("other"))
    with pytest.raises(CheckpointError, match="built with model fake-0001"):
        build(root, out, FakeModel("other"))

    index = StemIndex.open(out, model=FakeModel())
    mix = songs[0]["keys"]
    for text in ("", "   "):
        with pytest.raises(StemJepaError, match="empty instrument text"):
            index.query(mix, text)
    with pytest.raises(AudioError, match="silent"):
        index.query(np.zeros(SR * 3, np.float32), "bass")
    with pytest.raises(AudioError, match="too short"):
        index.query(mix[: SR // 2], "bass")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF$\x00\x00\x00WAVEfmt garbage" * 10)
    with pytest.raises(AudioError, match="corrupt.wav: corrupt or unreadable"):
        index.query(corrupt, "bass")
    unknown = tmp_path / "mix.xyz"
    unknown.write_text("hello")
    with pytest.raises(AudioError, match="unknown audio format '.xyz'"):
        index.query(unknown, "bass")
    with pytest.raises(AudioError, match="file not found"):
        index.query(tmp_path / "nope.wav", "bass")
    index.close()

    import fcntl

    with open(out / "index.lock", "a+") as held:  # another `index` run holds the index
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(StemIndexError, match="another `stemjepa index` run"):
            build(root, out)
        assert len(StemIndex.open(out, model=FakeModel()).search_vectors(np.ones((1, 32)), k=3)[0]) == 3  # reads work

    con = sqlite3.connect(out / DB_NAME)
    con.execute("UPDATE info SET value = '99' WHERE key = 'format_version'")
    con.commit()
    con.close()
    with pytest.raises(StemIndexError, match="newer stemjepa"):
        StemIndex.open(out, model=FakeModel())
    with pytest.raises(StemIndexError, match="newer stemjepa"):
        build(root, out)


def test_cli_index_and_query(library, tmp_path, monkeypatch, capsys):
    from stemjepa.cli.main import main

    root, songs = library
    ckpt = tmp_path / "fake.ckpt"
    ckpt.write_bytes(b"x")
    monkeypatch.setattr("stemjepa.models.registry.load_model", lambda path, device=None: FakeModel())
    (root / "bad.wav").write_bytes(b"nope")
    assert main(["index", str(root), "--checkpoint", str(ckpt), "--out", str(tmp_path / "idx"), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "15 added" in out and "1 failed" in out and "bad.wav" in out
    mixes = []
    for i in (1, 4):
        mixes.append(str(write(tmp_path / f"mix{i}.wav", songs[i]["keys"] + songs[i]["drums"])))
    assert main(["query", *mixes, "--instrument", "bass", "--index", str(tmp_path / "idx"), "-k", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["results"][0]["path"] for d in data] == [str(root / "song1/bass.wav"), str(root / "song4/bass.wav")]
    assert set(data[0]["results"][0]) >= {"rank", "z", "percentile", "path", "offset", "analysis"}
    assert main(["query", mixes[0], "--instrument", "bass", "--index", str(tmp_path / "idx")]) == 0
    table = capsys.readouterr().out
    assert "rank" in table and str(root / "song1/bass.wav") in table.splitlines()[2]
    # one bad mix among good ones: reported, the others answered, non-zero exit
    assert main(["query", mixes[0], str(tmp_path / "missing.wav"), "--instrument", "bass", "--index",
                 str(tmp_path / "idx"), "--json"]) == 2
    captured = capsys.readouterr()
    assert "missing.wav: file not found" in captured.err and json.loads(captured.out)[0]["mix"] == mixes[0]
    assert main(["query", mixes[0], "--instrument", " ", "--index", str(tmp_path / "idx")]) == 2
    assert "empty instrument text" in capsys.readouterr().err
    assert main(["query", mixes[0], "--instrument", "bass", "--index", str(tmp_path / "nothing")]) == 2
    assert "index folder not found" in capsys.readouterr().err


def test_queries_follow_a_committed_update(library, tmp_path):
    root, _ = library
    out = tmp_path / "idx"
    build(root, out)
    index = StemIndex.open(out, model=FakeModel())
    assert len(index) == 15
    write(root / "late.wav", tone(311.0, 2.0))
    build(root, out)
    top = index.query(tone(4 * 311.0, 2.0), "bass", k=1)[0]  # the open index switched to generation 2
    assert top.path == str(root / "late.wav") and index.generation == 2
    index.close()


def test_empty_library(tmp_path):
    (tmp_path / "empty").mkdir()
    s = build(tmp_path / "empty", tmp_path / "idx")
    assert s.total == 0 and s.generation == 1
    with StemIndex.open(tmp_path / "idx", model=FakeModel()) as index:
        assert index.query(tone(200.0, 2.0), "bass") == []
    write(tmp_path / "empty" / "a.wav", tone(200.0, 2.0))
    time.sleep(0.01)
    assert build(tmp_path / "empty", tmp_path / "idx").total == 1
