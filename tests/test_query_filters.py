"""Queries with tempo and key filters and compatibility ranking, and what `query` / `embed` print (CLI and JSON).

The index is built with the fake model of test_search_fakes; each stem's tempo and key are then set to known values in
the store, so that what a filter must keep is known exactly."""
from __future__ import annotations

import json

import numpy as np
import pytest
from test_search_fakes import FakeModel, write, write_songs

import stemjepa.analysis as analysis_module
import stemjepa.search.filtering as filtering
from stemjepa.analysis import Analysis
from stemjepa.analysis.compat import FilterError, compatibility, parse_bpm_filter, parse_key_filter
from stemjepa.search import StemIndex, build_index
from stemjepa.search.inputs import QueryError
from stemjepa.search.scores import compat_score
from stemjepa.search.store import MetaStore

pytestmark = pytest.mark.analysis  # its indexes analyse tempo and key (tests/conftest.py)

# song i: (tempo, key of its pitched stems); drums have the song's tempo and no key
SONGS = {0: (90.0, "A minor"), 1: (120.0, "C major"), 2: (60.0, "E minor"), 3: (125.0, "F# major"), 4: (None, "A minor")}


def tagged(i: int, stem: str) -> Analysis:
    bpm, key = SONGS[i]
    return Analysis(bpm, 0.9 if bpm else 0.0, (), (), None if stem == "drums" else key, 0.8, -20.0, 3.0)


@pytest.fixture
def library(tmp_path, monkeypatch):
    root, out = tmp_path / "stems", tmp_path / "idx"
    songs = write_songs(root)
    with monkeypatch.context() as m:  # the analyses are replaced below: no need to run the real analyser (~0.3 s a file)
        m.setattr(analysis_module, "analyse", lambda wave, sr: Analysis(None, 0.0, (), (), None, 0.0, None, 3.0))
        build_index(root, out, FakeModel(), progress=False)
    store = MetaStore(out, create=True)
    try:
        with store.transaction():
            for r in store.conn.execute("SELECT id, path FROM files").fetchall():
                song, stem = r["path"].split("/")[-2:]
                store.set_analysis(r["id"], tagged(int(song[4:]), stem[:-4]).to_dict(), 1)
            store.analyses_changed()
    finally:
        store.close()
    return root, out, songs


def song_stem(path: str) -> tuple[int, str]:
    song, stem = path.split("/")[-2:]
    return int(song[4:]), stem[:-4]


def mix_of(songs, i):
    return songs[i]["keys"] + songs[i]["drums"]


def test_bpm_filter_returns_only_matching_rows_in_the_models_order(library):
    root, out, songs = library
    with StemIndex.open(out, model=FakeModel()) as index:
        everything = index.query(mix_of(songs, 1), "bass", k=15)
        res = index.query(mix_of(songs, 1), "bass", k=15, bpm="120")
    # 120 +-4 %: song 1 (120), song 2 (60: half time), song 4 (no beat: tempo-neutral); not 90 or 125
    assert {song_stem(r.path)[0] for r in res} == {1, 2, 4} and len(res) == 9
    assert [r.path for r in res] == [r.path for r in everything if song_stem(r.path)[0] in (1, 2, 4)]
    assert [r.rank for r in res] == list(range(1, 10)) and res[0].path == str(root / "song1" / "bass.wav")
    assert all(0 <= r.percentile <= 100 for r in res) and res[0].percentile == 100.0
    with StemIndex.open(out, model=FakeModel()) as index:
        strict = index.query(mix_of(songs, 1), "bass", k=15, bpm="120!")
    assert {song_stem(r.path)[0] for r in strict} == {1, 4}


@pytest.mark.parametrize("key, kept_songs", [
    ("Am", {0, 4}),
    ("A minor:relative", {0, 1, 4}),
    ("8A:camelot", {0, 1, 2, 4}),
    ("G#m+-1", {0, 4}),
    ("F#", {3}),
])
def test_key_filter_returns_only_matching_rows(library, key, kept_songs):
    _, out, songs = library
    with StemIndex.open(out, model=FakeModel()) as index:
        res = index.query(mix_of(songs, 0), "bass", k=15, key=key)
    pitched = {song_stem(r.path)[0] for r in res if song_stem(r.path)[1] != "drums"}
    assert pitched == kept_songs
    assert sum(song_stem(r.path)[1] == "drums" for r in res) == 5  # no key: key-neutral, kept
    assert all(parse_key_filter(key).accepts(r.analysis.key) for r in res)


def test_filters_combine_and_over_fetching_gives_the_same_rows(library, monkeypatch):
    _, out, songs = library
    with StemIndex.open(out, model=FakeModel()) as index:
        exact = index.query(mix_of(songs, 2), "bass", k=4, bpm=parse_bpm_filter("120"), key="Em:relative")
        monkeypatch.setattr(filtering, "EXACT_SUBSET_ROWS", 0)  # the searcher's top k, fetched until k rows pass
        fetched = index.query(mix_of(songs, 2), "bass", k=4, bpm="120", key="Em:relative")
    assert [r.path for r in exact] == [r.path for r in fetched]
    assert [r.cosine for r in exact] == pytest.approx([r.cosine for r in fetched])
    # 120 BPM (song 1, 2 at half time, 4 neutral) and E minor or G major (songs 2; drums of 1, 2, 4)
    assert {song_stem(r.path) for r in exact} <= {(2, "bass"), (2, "keys"), (2, "drums"), (1, "drums"), (4, "drums")}
    assert exact[0].path.endswith("song2/bass.wav")


def test_filters_that_no_tempo_or_key_matches_keep_only_stems_without_beat_and_key(library):
    _, out, songs = library
    with StemIndex.open(out, model=FakeModel()) as index:
        res = index.query(mix_of(songs, 0), "bass", k=5, bpm="300!", key="D# minor")
        assert [song_stem(r.path) for r in res] == [(4, "drums")]  # no beat and no key: neutral to both
        assert index.query(mix_of(songs, 0), "bass", k=5, bpm="300!", key="D# minor:relative") == res


def test_compat_rank_orders_by_model_z_lowered_by_the_fit_to_the_mix(library):
    _, out, songs = library
    mix = Analysis(120.0, 0.9, (), (), "C major", 0.8, -14.0, 3.0)
    with StemIndex.open(out, model=FakeModel()) as index:
        model_order = index.query(mix_of(songs, 0), "bass", k=15, mix_analysis=mix)
        compat = index.query(mix_of(songs, 0), "bass", k=5, rank="compat", mix_analysis=mix)
    assert all(r.compatibility == pytest.approx(compatibility(mix, r.analysis)) for r in model_order)
    brute = sorted(model_order, key=lambda r: -compat_score(r.z, r.compatibility))[:5]  # every row of the index
    assert [r.path for r in compat] == [r.path for r in brute] and [r.rank for r in compat] == [1, 2, 3, 4, 5]
    assert [r.path for r in compat] != [r.path for r in model_order[:5]]  # song 0 (90 BPM, A minor) gives way
    assert compat[0].z == pytest.approx(next(r.z for r in model_order if r.path == compat[0].path))  # figures: model's


def test_compat_rank_analyses_the_mix_when_not_given(library):
    _, out, songs = library
    with StemIndex.open(out, model=FakeModel()) as index:
        mix = index.analyse_mix(mix_of(songs, 1), 16000)
        res = index.query(mix_of(songs, 1), "bass", k=3, rank="compat")
    assert isinstance(mix, Analysis) and mix.duration == pytest.approx(3.0, abs=0.01)
    assert len(res) == 3 and all(r.compatibility is not None for r in res)


def test_bad_filters_and_rank_are_refused_before_the_model_runs(library):
    _, out, songs = library
    model = FakeModel()
    with StemIndex.open(out, model=model) as index:
        with pytest.raises(FilterError, match="'fast'"):
            index.query(mix_of(songs, 0), "bass", bpm="fast")
        with pytest.raises(FilterError, match="'Hm'"):
            index.query(mix_of(songs, 0), "bass", key="Hm")
        with pytest.raises(QueryError, match="unknown rank 'best'"):
            index.query(mix_of(songs, 0), "bass", rank="best")
        with pytest.raises(QueryError, match="needs the analysis of every mix"):
            index.search_vectors(np.ones((1, 32), np.float32), rank="compat")
    assert model.query_calls == 0


# --- the CLI ----------------------------------------------------------------------------------------------------------
@pytest.fixture
def cli(library, tmp_path, monkeypatch):
    from stemjepa.cli.main import main

    root, out, songs = library
    monkeypatch.setattr("stemjepa.models.registry.load_model", lambda path, device=None: FakeModel())
    mix = write(tmp_path / "mix1.wav", mix_of(songs, 1))
    store = MetaStore(out, create=True)
    store.set("checkpoint", str(tmp_path / "fake.ckpt"))
    store.close()
    (tmp_path / "fake.ckpt").write_bytes(b"x")
    return main, out, str(mix)


def test_query_json_carries_the_analysis_of_the_mix_and_of_each_candidate(cli, capsys):
    main, out, mix = cli
    assert main(["query", mix, "--instrument", "bass", "--index", str(out), "-k", "3", "--json", "--bpm", "120",
                 "--key", "C:relative"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["analysis"]) >= {"bpm", "key", "bpm_confidence", "beats", "downbeats", "key_strength", "duration"}
    assert data["filters"] == {"bpm": "120", "key": "C:relative"} and data["rank"] == "model"
    first = data["results"][0]
    assert first["path"].endswith("song1/bass.wav")
    assert first["analysis"]["bpm"] == 120.0 and first["analysis"]["key"] == "C major"
    assert set(first) >= {"rank", "z", "percentile", "cosine", "offset", "analysis", "compatibility"}
    assert not {"score", "pct"} & set(first)


def test_query_table_shows_bpm_and_key_columns_and_a_legend(cli, capsys):
    main, out, mix = cli
    assert main(["query", mix, "--instrument", "bass", "--index", str(out), "-k", "15", "--rank", "compat"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "BPM" in lines[0] and "ranked by compat" in lines[0]
    assert lines[1].split() == ["rank", "z", "percentile", "BPM", "key", "fit", "offset", "path"]
    row = next(line for line in lines[2:] if line.endswith("song1/bass.wav"))
    assert "120.0" in row and "C major" in row
    drums = next(line for line in lines[2:] if line.endswith("song4/drums.wav"))
    assert drums.split()[3:5] == ["-", "-"]  # no beat, no key
    assert lines[-1].startswith("z: how far a stem stands out") and "percentile:" in lines[-1] and "pct" not in lines[-1]


@pytest.mark.parametrize("option, text", [("--bpm", "fast"), ("--key", "H minor"), ("--bpm", "60-130")])
def test_query_refuses_a_bad_filter_naming_the_text(cli, capsys, option, text):
    main, out, mix = cli
    with pytest.raises(SystemExit) as info:
        main(["query", mix, "--instrument", "bass", "--index", str(out), option, text])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and repr(text) in err and "Traceback" not in err


def test_query_fit_needs_export_and_is_passed_to_the_export(cli, capsys, monkeypatch, tmp_path):
    main, out, mix = cli
    assert main(["query", mix, "--instrument", "bass", "--index", str(out), "--fit"]) == 2
    assert "--fit changes what --export writes" in capsys.readouterr().err
    calls = []
    monkeypatch.setattr("stemjepa.search.export.export_candidates", lambda *a, **kw: calls.append(kw))
    assert main(["query", mix, "--instrument", "bass", "--index", str(out), "--export", str(tmp_path / "x"),
                 "--fit", "-k", "2"]) == 0
    assert calls[0]["fit"] is True and isinstance(calls[0]["mix_analysis"], Analysis)  # analysed once, for both
    assert main(["query", mix, "--instrument", "bass", "--index", str(out), "--export", str(tmp_path / "y")]) == 0
    assert "fit" not in calls[1]


class StreamingFake(FakeModel):
    """The fake model with the streaming entry point `embed` uses."""

    def iter_tracks(self, waves, batch_size: int = 16):
        for w in waves:
            yield self._track(np.asarray(w, np.float32))


def test_embed_prints_and_saves_tempo_and_key(tmp_path, monkeypatch, capsys):
    from stemjepa.cli.main import main

    songs = write_songs(tmp_path / "stems")
    monkeypatch.setattr("stemjepa.models.load_model", lambda *a, **kw: StreamingFake())
    files = [str(tmp_path / "stems" / "song0" / f"{s}.wav") for s in ("bass", "drums")]
    assert main(["embed", *files]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(" BPM\t" in line for line in lines)
    assert main(["embed", *files, "--out", str(tmp_path / "e.npy")]) == 0
    doc = json.loads((tmp_path / "e.files.json").read_text())
    assert doc["files"] == files and len(doc["analysis"]) == 2
    assert Analysis.from_dict(doc["analysis"][0]).duration == pytest.approx(len(songs[0]["bass"]) / 16000, abs=0.01)
