"""The web app's tempo and key (issue 25): BPM/key of the mix and of each candidate in the query's JSON, the `bpm`,
`key` and `rank` fields of a query, and candidates fitted to the mix (`?fit=1`). Through FastAPI's test client, with a
tiny real checkpoint and an index built here (its rows analysed by stemjepa.analysis at index time)."""
from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
from app_helpers import MIX_SR, run_query, serve_with_upload

from stemjepa.analysis.compat import parse_bpm_filter, parse_key_filter

pytestmark = [pytest.mark.slow, pytest.mark.analysis]


@pytest.fixture(scope="module")
def served(tiny_checkpoint, toy_corpus, tmp_path_factory):
    with serve_with_upload(toy_corpus, tiny_checkpoint, tmp_path_factory.mktemp("app_tempo_key"), "toy_001",
                           "my song.wav") as served:
        yield served


def query(served, **fields) -> dict:
    job = run_query(served["client"], {"upload": served["upload"], "instrument": "bass", "k": 8, **fields})
    assert job["state"] == "done", job
    return job["result"]


def read_wav(res) -> tuple[np.ndarray, int]:
    assert res.status_code == 200, res.text
    assert res.headers["content-type"] == "audio/wav"
    data, sr = sf.read(io.BytesIO(res.content), dtype="float32", always_2d=True)
    return data, sr


def test_results_carry_the_mix_and_candidate_tempo_and_key_under_one_name_per_figure(served):
    q = query(served)
    mix = q["mix"]["analysis"]
    assert mix is not None and (mix["bpm"] is None or mix["bpm"] > 0)
    assert {"bpm", "key", "beats", "downbeats", "camelot"} <= set(mix)
    assert q["filters"] == {"bpm": None, "key": None, "rank": "model"}
    assert len(q["results"]) == 8
    for r in q["results"]:
        assert "score" not in r and "pct" not in r  # the figures are "z" and "percentile" everywhere
        assert isinstance(r["z"], float) and 0 <= r["percentile"] <= 100
        assert r["analysis"] is not None and {"bpm", "key", "camelot"} <= set(r["analysis"])
        assert 0.0 <= r["compatibility"] <= 1.0  # the mix was analysed: each candidate's fit to it
        assert r["fitted_url"] == r["aligned_url"] + "?fit=1"
        assert r["file_name"].endswith(".wav") and r["fitted_file_name"].endswith(".fit.wav")
    assert [r["z"] for r in q["results"]] == sorted((r["z"] for r in q["results"]), reverse=True)


def test_bpm_and_key_filters_keep_only_matching_stems(served):
    first = query(served)["results"][0]["analysis"]
    bpm = f"{first['bpm']:.1f}+-2" if first["bpm"] is not None else "120+-2"
    key = f"{first['key']}:relative" if first["key"] else "A minor:relative"
    q = query(served, bpm=bpm, key=key)
    assert q["filters"]["bpm"] == bpm and q["filters"]["key"] == key
    assert q["results"], "the stem the filters were taken from passes them"
    bf, kf = parse_bpm_filter(bpm), parse_key_filter(key)
    for r in q["results"]:
        assert bf.accepts(r["analysis"]["bpm"]) and kf.accepts(r["analysis"]["key"]), r


def test_bpm_filter_sent_as_a_number_is_read_as_that_tempo(served):
    first = query(served)["results"][0]["analysis"]
    q = query(served, bpm=first["bpm"] or 120)
    assert q["filters"]["bpm"] is not None


def test_compat_rank_orders_by_the_model_z_and_the_fit_to_the_mix(served):
    q = query(served, rank="compat")
    assert q["filters"]["rank"] == "compat"
    assert all(r["compatibility"] is not None for r in q["results"])


def test_fit_switch_serves_the_candidate_fitted_to_the_mix_and_caches_it(served):
    client, engine, mix = served["client"], served["engine"], served["mix"]
    q = query(served)
    r = q["results"][0]
    res = client.get(r["fitted_url"])
    fitted, sr = read_wav(res)
    assert sr == MIX_SR and len(fitted) == len(mix)  # the mix's length and rate (the candidate's channels)
    assert res.headers["content-disposition"].endswith('.fit.wav"')
    assert np.max(np.abs(fitted)) > 1e-3
    assert ("fit", q["id"], r["rank"]) in engine._audio_cache
    assert client.get(r["fitted_url"]).content == res.content  # the cached rendition, the same bytes
    premix, sr = read_wav(client.get(f"{r['premix_url']}?balance=1&fit=1"))
    assert sr == MIX_SR and premix.shape == mix.shape
    assert np.corrcoef(premix[:, 0], fitted[:, 0])[0, 1] > 0.99  # balance 1: the fitted candidate alone
    aligned = client.get(r["aligned_url"])
    assert 'fit' not in aligned.headers["content-disposition"]
