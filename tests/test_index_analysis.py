"""Tempo and key in the index: analysed from the wave decoded for embedding, kept while a file is unchanged, analysed
again when it changes or the analyser's version moves, and added to an index written before analysis existed."""
from __future__ import annotations

import shutil
import sqlite3

import numpy as np
import pytest
from test_index_compat import OLD_ROOT, old_index, old_root_files  # noqa: F401 - old_root_files is a fixture
from test_search_fakes import FakeModel, noise, write, write_songs

import stemjepa.analysis as analysis_module
from stemjepa.analysis import Analysis
from stemjepa.search import StemIndex, build_index
from stemjepa.search.inputs import QueryError
from stemjepa.search.store import ADDED_COLUMNS, DB_NAME, MetaStore

pytestmark = pytest.mark.analysis  # its indexes analyse tempo and key (tests/conftest.py)


def kind(wave: np.ndarray) -> str:
    """Which stem of write_songs a wave is: noise drums cross zero about every other sample, the tones rarely; the bass
    tones are under 200 Hz."""
    crossings = np.mean(np.abs(np.diff(np.sign(wave)))) / 2
    if crossings > 0.3:
        return "drums"
    return "bass" if crossings * 16000 / 2 < 200 else "keys"


def build(root, out, model=None):
    return build_index(root, out, model or FakeModel(), progress=False)


def fast_analyse(wave, sample_rate):
    """A stand-in analyser (the real one is used where its results matter, and costs ~0.3 s per file)."""
    names = {"bass": "C major", "keys": "A minor", "drums": None}
    return Analysis(120.0, 0.9, (0.0,), (0.0,), names[kind(wave)], 0.8, -20.0, round(len(wave) / sample_rate, 3))


def count_calls(monkeypatch, analyser) -> dict:
    """Counts the analyser's and the decoder's calls during index runs."""
    import stemjepa.search.build as build_module

    calls = {"analyse": 0, "decode": 0}
    real_load = build_module.load_audio

    def analyse(wave, sample_rate):
        calls["analyse"] += 1
        return analyser(wave, sample_rate)

    def load_audio(*args, **kwargs):
        calls["decode"] += 1
        return real_load(*args, **kwargs)

    monkeypatch.setattr(analysis_module, "analyse", analyse)
    monkeypatch.setattr(build_module, "load_audio", load_audio)
    return calls


@pytest.fixture
def counted(monkeypatch):
    return count_calls(monkeypatch, fast_analyse)


def stored(out) -> dict[str, tuple[dict | None, int | None]]:
    """path -> (analysis dict, analysis_version) of the live rows."""
    store = MetaStore(out)
    try:
        rows = store.conn.execute("SELECT path, analysis_version, id FROM files WHERE gen_removed IS NULL").fetchall()
        full = store.rows_by_id([r["id"] for r in rows], int(store.get("embed_dim")))
        return {r["path"]: (full[r["id"]].analysis, r["analysis_version"]) for r in rows}
    finally:
        store.close()


def test_index_analyses_each_stem_from_the_wave_decoded_for_embedding(tmp_path, monkeypatch):
    counted = count_calls(monkeypatch, analysis_module.analyse)  # the real analyser
    root = tmp_path / "stems"
    write_songs(root)
    summary = build(root, tmp_path / "idx")
    assert (summary.added, summary.failed, summary.unanalysed) == (15, [], [])
    assert counted == {"analyse": 15, "decode": 15}  # one decode per file serves the model and the analyser
    rows = stored(tmp_path / "idx")
    assert len(rows) == 15 and {v for _, v in rows.values()} == {analysis_module.ANALYSIS_VERSION}
    for analysis, _ in rows.values():
        a = Analysis.from_dict(analysis)
        assert a.duration == pytest.approx(3.0, abs=0.01)
    with StemIndex.open(tmp_path / "idx", model=FakeModel()) as index:
        res = index.query(np.concatenate([noise(3.0)]), "drums", k=15)
    assert all(isinstance(r.analysis, Analysis) for r in res)
    assert all(r.to_dict()["analysis"]["duration"] == pytest.approx(3.0, abs=0.01) for r in res)


def test_unchanged_files_keep_their_analysis_and_changed_files_are_analysed_again(tmp_path, counted):
    root, out = tmp_path / "stems", tmp_path / "idx"
    write_songs(root)
    build(root, out)
    before = stored(out)
    counted.update(analyse=0, decode=0)
    assert build(root, out).unchanged == 15 and counted == {"analyse": 0, "decode": 0}
    shutil.copy(root / "song1" / "bass.wav", root / "song1" / "bass copy.wav")  # same bytes: vectors and analysis copied
    write(root / "song2" / "keys.wav", noise(4.0, seed=7))  # changed: embedded and analysed again
    summary = build(root, out)
    assert (summary.added, summary.updated, summary.reused) == (1, 1, 1)
    assert counted == {"analyse": 1, "decode": 1}
    after = stored(out)
    assert after[str(root / "song1" / "bass copy.wav")] == before[str(root / "song1" / "bass.wav")]
    assert Analysis.from_dict(after[str(root / "song2" / "keys.wav")][0]).duration == pytest.approx(4.0, abs=0.01)


def test_a_new_analysis_version_analyses_every_row_again_without_embedding(tmp_path, counted, monkeypatch):
    root, out = tmp_path / "stems", tmp_path / "idx"
    songs = write_songs(root)
    build(root, out)
    monkeypatch.setattr(analysis_module, "ANALYSIS_VERSION", analysis_module.ANALYSIS_VERSION + 1)
    monkeypatch.setattr(analysis_module, "analyse", fast_analyse)
    with StemIndex.open(out, model=FakeModel()) as reader:  # opened before the run: sees the new analyses after it
        model = FakeModel()
        summary = build(root, out, model)
        assert (summary.analysed, summary.unchanged, model.embedded) == (15, 15, 0)
        assert "15 indexed before, now analysed for tempo and key" in summary.text()
        assert {v for _, v in stored(out).values()} == {analysis_module.ANALYSIS_VERSION}
        res = reader.query(songs[0]["keys"] + songs[0]["drums"], "bass", k=15, key="C major")
        assert len(res) == 10 and {r.analysis.key for r in res} == {"C major", None}


def test_failed_analysis_still_indexes_the_file_and_is_reported_once(tmp_path, monkeypatch):
    root, out = tmp_path / "stems", tmp_path / "idx"
    write_songs(root)
    def flaky(wave, sr):
        if kind(wave) == "drums":
            raise RuntimeError("no luck")
        return fast_analyse(wave, sr)

    monkeypatch.setattr(analysis_module, "analyse", flaky)
    summary = build(root, out)
    assert (summary.added, summary.failed) == (15, [])
    assert sorted(p for p, _ in summary.unanalysed) == sorted(str(root / f"song{i}" / "drums.wav") for i in range(5))
    assert "no tempo/key (indexed without them)" in summary.text() and "RuntimeError: no luck" in summary.text()
    drums = stored(out)[str(root / "song0" / "drums.wav")]
    assert drums == (None, analysis_module.ANALYSIS_VERSION)  # not tried again until the file or the analyser changes
    assert build(root, out).unanalysed == []
    with StemIndex.open(out, model=FakeModel()) as index:
        res = index.query(noise(3.0), "drums", k=15)
    assert sum(r.analysis is None for r in res) == 5 and len(res) == 15


def test_an_index_written_before_analysis_answers_and_asks_for_an_index_run_before_filtering(tmp_path, monkeypatch,
                                                                                            old_root_files):  # noqa: F811
    monkeypatch.setattr(analysis_module, "analyse", fast_analyse)
    out = old_index(tmp_path)
    songs = write_songs(tmp_path / "stems")
    mix = songs[2]["keys"] + songs[2]["drums"]
    with StemIndex.open(out, model=FakeModel()) as index:  # read-only, as it was written: no tempo or key yet
        res = index.query(mix, "bass", k=3)
        assert res[0].path == f"{OLD_ROOT}/song2/bass.wav" and all(r.analysis is None for r in res)
        assert res[0].to_dict()["analysis"] is None
        with pytest.raises(QueryError, match="run `stemjepa index` on its folder once"):
            index.query(mix, "bass", k=3, bpm="120")
    summary = build(old_root_files, out)
    assert summary.total == 15 and summary.unanalysed == []
    assert all(a is not None and v == analysis_module.ANALYSIS_VERSION for a, v in stored(out).values())
    with StemIndex.open(out, model=FakeModel()) as index:
        res = index.query(mix, "bass", k=15, bpm="20-39!")  # filters work now: only beatless stems are that slow
        assert all(r.analysis is not None and r.analysis.bpm is None for r in res)


def test_an_index_without_analysis_is_analysed_on_the_next_index_run(tmp_path, counted):
    root, out = tmp_path / "stems", tmp_path / "idx"
    songs = write_songs(root)
    build(root, out)
    with sqlite3.connect(out / DB_NAME) as conn:  # the files table of format 1, as indexes written before analysis
        for column in ADDED_COLUMNS:
            conn.execute(f"ALTER TABLE files DROP COLUMN {column}")
    counted.update(analyse=0, decode=0)
    model = FakeModel()
    summary = build(root, out, model)
    assert (summary.unchanged, summary.analysed, summary.added, model.embedded) == (15, 15, 0, 0)
    assert counted == {"analyse": 15, "decode": 15}
    assert all(a is not None and v == analysis_module.ANALYSIS_VERSION for a, v in stored(out).values())
    with StemIndex.open(out, model=FakeModel()) as index:
        res = index.query(songs[2]["keys"] + songs[2]["drums"], "bass", k=15)
    assert len(res) == 15 and all(isinstance(r.analysis, Analysis) for r in res)
    assert build(root, out).analysed == 0


def test_stemjepa_analysis_0_indexes_without_tempo_and_key_and_a_later_run_adds_them(tmp_path, monkeypatch, counted):
    """STEMJEPA_ANALYSIS=0 (a library searched without tempo and key): nothing is analysed, the rows say so, and an
    `index` run without it analyses them in place (vectors kept)."""
    root, out = tmp_path / "stems", tmp_path / "idx"
    write_songs(root)
    monkeypatch.setenv("STEMJEPA_ANALYSIS", "0")
    build(root, out)
    assert counted["analyse"] == 0 and all(v == (None, None) for v in stored(out).values())
    monkeypatch.setenv("STEMJEPA_ANALYSIS", "1")
    summary = build(root, out)
    rows = stored(out)
    assert summary.analysed == len(rows) and counted["analyse"] == len(rows)
    assert all(version == analysis_module.ANALYSIS_VERSION and a is not None for a, version in rows.values())
