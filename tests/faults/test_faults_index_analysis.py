"""Hostile input around tempo and key: a damaged analysis stored in an index, absurd values in its columns, filter
text that is huge or holds control characters. Each case answers with clear values or one line, never a traceback."""
from __future__ import annotations

import sqlite3

import pytest
from test_search_fakes import FakeModel, write_songs

import stemjepa.analysis as analysis_module
from stemjepa.analysis import Analysis
from stemjepa.analysis.compat import FilterError, parse_bpm_filter, parse_key, parse_key_filter
from stemjepa.search import StemIndex, build_index
from stemjepa.search.store import DB_NAME

pytestmark = pytest.mark.analysis  # its indexes analyse tempo and key (tests/conftest.py)


@pytest.fixture
def index(tmp_path, monkeypatch):
    root, out = tmp_path / "stems", tmp_path / "idx"
    songs = write_songs(root)
    with monkeypatch.context() as m:  # what is stored is overwritten by each test: a stand-in analyser will do
        m.setattr(analysis_module, "analyse", lambda wave, sr: Analysis(120.0, 0.9, (), (), "A minor", 0.8, -20.0, 3.0))
        build_index(root, out, FakeModel(), progress=False)
    return out, songs[1]["keys"] + songs[1]["drums"]


@pytest.mark.parametrize("stored", [
    "{not json", "[" * 100_000 + "]" * 100_000, '{"bpm": "fast", "key": 7}', '"a string"', '{"bpm": 1e999}',
])
def test_damaged_stored_analysis_shows_the_stem_without_tempo_and_key(index, stored):
    out, mix = index
    with sqlite3.connect(out / DB_NAME) as conn:
        conn.execute("UPDATE files SET analysis = ?", (stored,))
    with StemIndex.open(out, model=FakeModel()) as idx:
        res = idx.query(mix, "bass", k=15)
    assert len(res) == 15 and all(r.analysis is None for r in res)
    assert all(r.to_dict()["analysis"] is None for r in res)


def test_absurd_tempo_and_key_columns_are_not_matched_by_filters(index):
    out, mix = index
    with sqlite3.connect(out / DB_NAME) as conn:
        conn.execute("UPDATE files SET bpm = ?, key_name = ?", (float("inf"), "Z flat lydian\x00"))
        conn.execute("UPDATE files SET bpm = -120 WHERE path LIKE '%song2%'")
    with StemIndex.open(out, model=FakeModel()) as idx:
        assert idx.query(mix, "bass", k=15, bpm="120") == []
        assert idx.query(mix, "bass", k=15, key="Am:camelot") == []


@pytest.mark.parametrize("parse", [parse_bpm_filter, parse_key_filter])
def test_a_megabyte_of_filter_text_is_refused_in_one_short_line(parse):
    with pytest.raises(FilterError, match="too long") as info:
        parse("1" * 1_000_000)
    assert len(str(info.value)) < 200
    assert parse_key("A" * 1_000_000) is None


@pytest.mark.parametrize("parse, text", [(parse_bpm_filter, "120\x00\n"), (parse_key_filter, "A minor\n\x1b[2J")])
def test_filter_text_with_control_characters_is_refused_on_one_line(parse, text):
    with pytest.raises(FilterError) as info:
        parse(text)
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value) and "\x00" not in str(info.value)
