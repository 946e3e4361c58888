"""The web app's tempo/key fields and fitted audio under bad input and faults (issue 25): filters that do not parse,
are too long or of the wrong type, a mix whose analysis fails, and the fitted-audio cache's bound."""
from __future__ import annotations

import pytest
from app_helpers import run_query, serve_with_upload

from stemjepa.errors import AudioError

pytestmark = [pytest.mark.slow, pytest.mark.analysis]


@pytest.fixture(scope="module")
def served(tiny_checkpoint, toy_corpus, tmp_path_factory):
    with serve_with_upload(toy_corpus, tiny_checkpoint, tmp_path_factory.mktemp("app_tempo_key_faults"), "toy_002",
                           "song.wav") as served:
        yield served


def post(served, **fields):
    return served["client"].post("/api/queries", json={"upload": served["upload"], "instrument": "bass", **fields})


@pytest.mark.parametrize("fields,quoted", [
    ({"bpm": "fast"}, "'fast'"),
    ({"bpm": "120+-300%"}, "'120+-300%'"),
    ({"bpm": "1000"}, "'1000'"),
    ({"key": "H minor"}, "'H minor'"),
    ({"key": "Am:sideways"}, "'sideways'"),
])
def test_unreadable_tempo_or_key_filter_is_refused_400_before_any_job_starts(served, fields, quoted):
    jobs_before = len(served["engine"].jobs._jobs)
    res = post(served, **fields)
    assert res.status_code == 400, res.text
    detail = res.json()["detail"]
    assert quoted in detail and "\n" not in detail
    assert len(served["engine"].jobs._jobs) == jobs_before  # refused before a job was queued


@pytest.mark.parametrize("field", ["bpm", "key"])
def test_filter_text_over_64_characters_is_refused_413(served, field):
    res = post(served, **{field: "1" * 65 if field == "bpm" else "A" * 5000})
    assert res.status_code == 413, res.text
    assert "characters" in res.json()["detail"]


@pytest.mark.parametrize("fields", [{"bpm": [120]}, {"key": {"tonic": "A"}}, {"rank": "best"}, {"key": 8}])
def test_filter_of_the_wrong_json_type_or_an_unknown_rank_is_refused_422(served, fields):
    assert post(served, **fields).status_code == 422


def test_query_answers_without_tempo_and_key_when_the_mix_analysis_fails_and_fit_says_why(served, monkeypatch):
    engine = served["engine"]
    index = next(iter(engine.indexes.values())).index

    def broken(wave, sr):
        raise AudioError("song.wav", "tempo analysis failed")

    monkeypatch.setattr(index, "analyse_mix", broken)
    job = run_query(served["client"], {"upload": served["upload"], "instrument": "bass", "k": 3, "rank": "compat"})
    assert job["state"] == "done", job
    q = job["result"]
    assert q["mix"]["analysis"] is None and q["filters"]["rank"] == "model"  # compat needs the mix's tempo and key
    assert len(q["results"]) == 3 and all(r["compatibility"] is None for r in q["results"])
    res = served["client"].get(q["results"][0]["fitted_url"])
    assert res.status_code == 400
    assert res.json()["detail"].startswith("song.wav: the tempo and key of this mix are unknown")
    assert served["client"].get(q["results"][0]["aligned_url"]).status_code == 200  # aligned still plays


def test_fitted_candidates_stay_within_the_audio_cache_budget(served, monkeypatch):
    engine = served["engine"]
    job = run_query(served["client"], {"upload": served["upload"], "instrument": "bass", "k": 3})
    q = job["result"]
    monkeypatch.setattr(engine.limits, "audio_cache_mb", 0.000001)  # smaller than one rendition: only the last is kept
    for r in q["results"]:
        assert served["client"].get(r["fitted_url"]).status_code == 200
    assert list(engine._audio_cache) == [("fit", q["id"], 3)]
