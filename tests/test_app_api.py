"""The web app's JSON API through FastAPI's test client, with a tiny real checkpoint and indexes built here.

Covers: query by upload and by a path in the mixes folder, downloads aligned to the mix, bad audio, oversize and
overlong uploads, unknown index / upload / job, and path traversal (`..`, absolute paths, symlinks out of a folder).
"""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
import soundfile as sf
from app_helpers import MIX_SR, copy_library, index_library, mix_without, run_query, upload, wav_bytes
from fastapi.testclient import TestClient

from stemjepa.app import ServeConfig, create_app
from stemjepa.audio.io import resample
from stemjepa.cli.main import main
from stemjepa.search import StemIndexError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tiny_checkpoint, toy_corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app_api")
    lib = copy_library(toy_corpus, tmp / "lib")
    outside = tmp / "outside"
    outside.mkdir()
    secret = outside / "secret.wav"
    sf.write(secret, 0.3 * np.sin(np.arange(32000) / 9.0), 16000)
    evil = copy_library(toy_corpus, tmp / "evil", songs=1)
    os.symlink(secret, next(evil.iterdir()) / "escape.wav")  # indexed, but leads out of the library
    mixes = tmp / "mixes"
    mixes.mkdir()
    mix, sr = mix_without(lib / "toy_001")
    sf.write(mixes / "mix.wav", mix, sr, subtype="PCM_16")
    os.symlink(secret, mixes / "link.wav")
    (mixes / "broken.wav").write_bytes(b"RIFF but not really a wave file")
    idx = index_library(lib, tmp / "lib_idx", tiny_checkpoint)
    evil_idx = index_library(evil, tmp / "evil_idx", tiny_checkpoint)
    config = ServeConfig(indexes=[idx, evil_idx], mixes=mixes, uploads=tmp / "uploads", device="cpu")
    with TestClient(create_app(config), base_url="http://localhost") as client:  # a Host the server answers to
        yield {"client": client, "lib": lib, "mix": mix, "mixes": mixes, "secret": secret, "tmp": tmp,
               "engine": client.app.state.engine}




def read_wav(res) -> tuple[np.ndarray, int]:
    assert res.status_code == 200, res.text
    data, sr = sf.read(io.BytesIO(res.content), dtype="float32", always_2d=True)
    return data, sr


def test_query_by_upload_gives_k_candidates_and_aligned_downloads(served):
    client, lib, mix = served["client"], served["lib"], served["mix"]
    res = upload(client, wav_bytes(mix, MIX_SR), "my song.wav")
    assert res.status_code == 201, res.text
    up = res.json()
    assert (up["name"], up["sample_rate"], up["channels"], up["frames"]) == ("my song.wav", MIX_SR, 2, len(mix))
    job = run_query(client, {"upload": up["id"], "instrument": "bass", "k": 5})
    assert job["state"] == "done" and job["progress"] == 1.0, job
    q = job["result"]
    assert q["library_size"] == 16 and q["mix"]["frames"] == len(mix) and q["mix"]["sample_rate"] == MIX_SR
    results = q["results"]
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    assert [r["z"] for r in results] == sorted((r["z"] for r in results), reverse=True)
    assert results[0]["percentile"] == 100.0 and all(0 <= r["percentile"] <= 100 for r in results)
    assert all(-1.0001 <= r["cosine"] <= 1.0001 for r in results)
    from toy import STEM_LABELS

    for r in results:
        assert not r["path"].startswith("/") and (lib / r["path"]).is_file()
        assert r["labels"] == STEM_LABELS[os.path.splitext(r["name"])[0]]  # from the stems.json beside the stem
        assert r["offset"] in (0.0, 4.0, 8.0)  # chunk starts of a 10 s stem in 4 s chunks

    best = results[0]
    res = client.get(best["aligned_url"])
    assert "attachment" in res.headers["content-disposition"]
    aligned, sr = read_wav(res)
    assert sr == MIX_SR and aligned.shape == (len(mix), 1)  # the mix's length and rate, the stem's channels
    stem = resample(sf.read(lib / best["path"], dtype="float32")[0], 16000, MIX_SR)
    start = int(round(best["offset"] * MIX_SR))
    n = min(len(mix), len(stem) - start)
    assert np.allclose(aligned[:n, 0], stem[start:start + n], atol=1e-4)  # the candidate from its matched offset

    premix, sr = read_wav(client.get(best["premix_url"], params={"balance": 0.0}))
    assert sr == MIX_SR and premix.shape == mix.shape
    peak = float(np.max(np.abs(mix)))
    assert np.allclose(premix, mix * (0.99 / peak if peak > 0.99 else 1.0), atol=1e-3)  # balance 0: the mix alone
    both, _ = read_wav(client.get(best["premix_url"]))
    assert both.shape == mix.shape and not np.allclose(both, premix, atol=1e-3)

    played, sr = read_wav(client.get(q["mix"]["audio_url"]))
    assert sr == MIX_SR and played.shape == mix.shape
    for url in (q["mix"]["picture_url"], best["picture_url"]):
        pic = client.get(url)
        assert pic.status_code == 200 and pic.content.startswith(b"\x89PNG")
    raw = client.get(best["audio_url"])
    assert raw.status_code == 200 and raw.content == (lib / best["path"]).read_bytes()
    again = client.get(f"/api/queries/{q['id']}").json()
    assert [r["path"] for r in again["results"]] == [r["path"] for r in results]


def test_query_by_a_path_in_the_mixes_folder(served):
    client = served["client"]
    assert client.get("/api/mixes").json()["mixes"] == ["broken.wav", "mix.wav"]  # the symlink out is not listed
    job = run_query(client, {"mix": "mix.wav", "instrument": "drums", "k": 3})
    assert job["state"] == "done", job
    assert job["result"]["mix"]["name"] == "mix.wav" and len(job["result"]["results"]) == 3
    job = run_query(client, {"mix": "broken.wav", "instrument": "drums"})
    assert job["state"] == "error" and job["error"].startswith("broken.wav:"), job


def test_bad_audio_is_refused_naming_the_file(served):
    client = served["client"]
    before = set(served["engine"].uploads.folder.iterdir())
    cases = [
        (b"this is not audio at all", "notes.wav", "notes.wav:"),
        (b"", "empty.wav", "empty.wav: empty upload"),
        (wav_bytes(np.zeros((MIX_SR * 3, 2), np.float32), MIX_SR), "quiet.wav", "silent"),
        (wav_bytes(0.3 * np.ones((MIX_SR // 4, 1), np.float32), MIX_SR), "short.wav", "too short"),
        (b"hello", "../../etc/notes.txt", "notes.txt:"),
    ]
    for data, name, expected in cases:
        res = upload(client, data, name)
        assert res.status_code == 400, (name, res.text)
        assert expected in res.json()["detail"], (name, res.json())
    assert set(served["engine"].uploads.folder.iterdir()) == before  # refused uploads are not kept
    res = client.post("/api/queries", json={"upload": "nope", "mix": "mix.wav", "instrument": "bass"})
    assert res.status_code == 400 and "either" in res.json()["detail"]
    res = client.post("/api/queries", json={"mix": "mix.wav", "instrument": "   "})
    assert res.status_code == 400 and "empty instrument text" in res.json()["detail"]
    res = client.post("/api/queries", json={"mix": "mix.wav", "instrument": "bass", "k": 0})
    assert res.status_code == 400 and "k must be" in res.json()["detail"]


def test_oversize_and_overlong_uploads_are_refused(served, monkeypatch):
    client, engine, mix = served["client"], served["engine"], served["mix"]
    before = set(engine.uploads.folder.iterdir())
    monkeypatch.setattr(engine.limits, "max_upload_mb", 0.05)
    res = upload(client, wav_bytes(mix, MIX_SR), "big.wav")
    assert res.status_code == 413
    assert "big.wav: larger than this server's upload limit of 0.05 MB" in res.json()["detail"]
    monkeypatch.setattr(engine.limits, "max_upload_mb", 200.0)
    monkeypatch.setattr(engine.limits, "max_seconds", 5.0)
    res = upload(client, wav_bytes(mix, MIX_SR), "long.wav")
    assert res.status_code == 413 and "long.wav: 10 s long" in res.json()["detail"]
    assert set(engine.uploads.folder.iterdir()) == before  # nothing kept from refused uploads


def test_unknown_index_upload_and_job(served, tmp_path, capsys):
    client = served["client"]
    assert [i["name"] for i in client.get("/api/info").json()["indexes"]] == ["lib_idx", "evil_idx"]
    res = client.post("/api/queries", json={"mix": "mix.wav", "instrument": "bass", "index": "nope"})
    assert res.status_code == 404 and "unknown index 'nope'" in res.json()["detail"]
    res = client.post("/api/queries", json={"upload": "0123abcd", "instrument": "bass"})
    assert res.status_code == 404 and "upload '0123abcd' not found" in res.json()["detail"]
    assert client.get("/api/jobs/nope").status_code == 404
    assert client.get("/api/queries/nope/candidates/1/aligned.wav").status_code == 404
    missing = tmp_path / "no_index"
    with pytest.raises(StemIndexError, match="index folder not found"):
        create_app(ServeConfig(indexes=[missing]))
    assert main(["serve", "--index", str(missing)]) == 2
    assert f"{missing}: index folder not found" in capsys.readouterr().err


def test_path_traversal_and_symlink_escapes_are_refused(served):
    client, lib, secret = served["client"], served["lib"], served["secret"]
    refused = [
        {"path": "../outside/secret.wav"},
        {"path": "toy_000/../../outside/secret.wav"},
        {"path": str(secret)},
        {"path": str(lib / "toy_000" / "bass.wav")},  # absolute, even inside the library
        {"path": "/etc/passwd"},
        {"path": "escape.wav", "index": "evil_idx"},  # an indexed symlink that leads out (one-song library)
    ]
    assert any(p.endswith("escape.wav") for p in served["engine"].handle("evil_idx").library.paths)
    for params in refused:
        res = client.get("/api/library/file", params=params)
        assert res.status_code == 403, (params, res.status_code)
        assert res.content != secret.read_bytes()
    assert client.get("/api/library/file", params={"path": "toy_000/stems.json"}).status_code == 404  # not indexed
    assert client.get("/api/library/file", params={"path": "toy_000/bass.wav"}).status_code == 200
    for mix in ("../outside/secret.wav", "/etc/passwd", str(served["mixes"] / "mix.wav"), "link.wav"):
        res = client.post("/api/queries", json={"mix": mix, "instrument": "bass"})
        assert res.status_code == 403, (mix, res.text)
    res = client.post("/api/queries", json={"upload": "../../etc/passwd", "instrument": "bass"})
    assert res.status_code == 404


def test_openapi_page_and_labels(served):
    client = served["client"]
    spec = client.get("/openapi.json").json()
    assert {"/api/uploads", "/api/queries", "/api/jobs/{job_id}", "/api/library/file",
            "/api/queries/{qid}/candidates/{rank}/aligned.wav"} <= set(spec["paths"])
    page = client.get("/")
    assert page.status_code == 200 and "Play together" in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    labels = client.get("/api/labels").json()["labels"]
    assert "bass" in labels and labels == sorted(labels)


def test_embedding_in_pieces_matches_one_pass_and_reports_progress(tiny_checkpoint, monkeypatch):
    from stemjepa.app import service
    from stemjepa.audio.mix import Mix
    from stemjepa.models import load_model

    model = load_model(tiny_checkpoint, device="cpu")
    wave = (0.2 * np.sin(np.arange(160000) / 7.0) * np.sin(np.arange(160000) / 3000.0)).astype(np.float32)
    monkeypatch.setattr(service, "CHUNKS_PER_STEP", 1)
    steps = []
    mix = Mix(wave, 16000, "mix.wav")
    vector = service.embed_mix(model, mix, "bass", lambda done, total, seconds: steps.append((done, total, seconds)))
    assert steps == [(0, 1, 4.0), (0, 1, 8.0), (1, 1, 10.0)]  # 10 s in 4 s chunks: seconds embedded after each piece
    assert np.allclose(vector, model.query(wave, "bass").vector, rtol=1e-4, atol=1e-5)
