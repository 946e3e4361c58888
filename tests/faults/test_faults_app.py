"""The web app under hostile requests and faults (issue 23, part C): DNS rebinding and cross-site requests, oversized
bodies and texts, an unbounded label cache, uploads that fill the disk, job results lost in a burst, a FIFO beside a
stem, and a FLAC that decodes to gigabytes. Through FastAPI's test client, with a tiny real checkpoint and index."""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import threading
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from app_helpers import MIX_SR, copy_library, index_library, mix_without, run_query, upload, wav_bytes
from fastapi.testclient import TestClient
from faultkit import bounded, disk_full_after

from stemjepa.app import Limits, ServeConfig, create_app
from stemjepa.app import files as app_files
from stemjepa.app.files import NotFound, UploadStore
from stemjepa.app.guard import HostList
from stemjepa.app.jobs import Jobs
from stemjepa.app.labels import stem_labels
from stemjepa.cli import serve
from stemjepa.cli.serve import allowed_hosts
from stemjepa.errors import StemJepaError

pytestmark = pytest.mark.slow

BOMB = {"seconds": 590, "channels": 8, "rate": 192000}  # the 0.94 MB FLAC that decodes to 3.6 GB


@pytest.fixture(scope="module")
def served(tiny_checkpoint, toy_corpus, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app_faults")
    lib = copy_library(toy_corpus, tmp / "lib")
    mixes = tmp / "mixes"
    mixes.mkdir()
    mix, sr = mix_without(lib / "toy_001")
    sf.write(mixes / "mix.wav", mix, sr, subtype="PCM_16")
    idx = index_library(lib, tmp / "idx", tiny_checkpoint)
    config = ServeConfig(indexes=[idx], mixes=mixes, uploads=tmp / "uploads", device="cpu")
    with TestClient(create_app(config), base_url="http://localhost:8765") as client:
        yield {"client": client, "engine": client.app.state.engine, "lib": lib, "mix": mix, "mixes": mixes, "tmp": tmp}


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    """A real FLAC of 590 s, 8 channels at 192 kHz (digital silence compresses to ~1 MB): 3.6 GB as float32."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.flac"
    block = np.zeros((BOMB["rate"] * 10, BOMB["channels"]), np.int16)
    with sf.SoundFile(path, "w", BOMB["rate"], BOMB["channels"], subtype="PCM_16", format="FLAC") as fh:
        for _ in range(BOMB["seconds"] // 10):
            fh.write(block)
    return path




def kept_uploads(engine) -> set:
    return set(engine.uploads.folder.iterdir())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


class Clock:
    """A clock the test moves by hand: expiry is tested without waiting."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- 1. DNS rebinding, cross-site requests -----------------------------------------------------------------------------
def test_dns_rebinding_host_is_refused_for_the_api_and_library_files(served):
    client, lib = served["client"], served["lib"]
    stem = "toy_000/bass.wav"
    assert client.get("/api/library/file", params={"path": stem}).status_code == 200
    for host in ("evil.example:8765", "evil.example", "127.0.0.1.evil.example:8765", "[::2]:8765", "a b"):
        for url in ("/api/info", "/", f"/api/library/file?path={stem}"):
            res = client.get(url, headers={"host": host})
            assert res.status_code == 403, (host, url, res.status_code)
            assert "refused" in res.json()["detail"] and "--allowed-host" in res.json()["detail"]
            assert res.content != (lib / stem).read_bytes()
    for host in ("localhost:8765", "127.0.0.1:8765", "[::1]:8765", "LOCALHOST"):
        assert client.get("/api/info", headers={"host": host}).status_code == 200, host


def test_allowed_host_option_names_the_hosts_answered(tmp_path):
    hosts = HostList(allowed_hosts("127.0.0.1", 8765, ["studio.lan"]))
    assert hosts.allows("127.0.0.1:8765", "http") and hosts.allows("[::1]:8765", "http")
    assert hosts.allows("localhost:8765", "http") and hosts.allows("studio.lan:9000", "http")
    assert not hosts.allows("127.0.0.1:9999", "http")  # the port the server was started on
    assert not hosts.allows("evil.example:8765", "http")
    assert HostList(allowed_hosts("::1", 0, [])).allows("[::1]:41234", "http")  # port 0: the system picks it
    parser = argparse.ArgumentParser()
    serve.add_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", "--index", str(tmp_path / "idx"), "--allowed-host", "bad host"])
    with pytest.raises(StemJepaError, match="--allowed-host 'bad host': not a host name"):
        serve.run(args)  # refused before the index is opened


def test_cross_site_text_plain_upload_is_refused_415(served):
    client, engine, mix = served["client"], served["engine"], served["mix"]
    before = kept_uploads(engine)
    data = wav_bytes(mix, MIX_SR)
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""):
        res = upload(client, data, content_type=ctype)
        assert res.status_code == 415, (ctype, res.text)
        assert "content type" in res.json()["detail"] and "application/octet-stream" in res.json()["detail"]
        res = client.post("/api/queries", content=b'{"mix": "mix.wav", "instrument": "bass"}',
                          headers={"content-type": ctype})
        assert res.status_code == 415 and "application/json" in res.json()["detail"], (ctype, res.text)
    assert kept_uploads(engine) == before
    assert upload(client, data, content_type="audio/wav").status_code == 201  # what a browser may send for a file
    assert upload(client, data).status_code == 201  # what the page (app.js) sends


def test_cross_origin_post_is_refused(served):
    client, engine, mix = served["client"], served["engine"], served["mix"]
    before = kept_uploads(engine)
    data = wav_bytes(mix, MIX_SR)
    for origin in ("http://evil.example", "http://localhost:9999", "https://localhost:8765", "null"):
        res = upload(client, data, origin=origin)
        assert res.status_code == 403 and "cross-site request refused" in res.json()["detail"], (origin, res.text)
        res = client.post("/api/queries", json={"mix": "mix.wav", "instrument": "bass"}, headers={"origin": origin})
        assert res.status_code == 403, origin
    assert kept_uploads(engine) == before
    assert upload(client, data, origin="http://localhost:8765").status_code == 201  # the server's own page
    assert client.get("/api/info", headers={"origin": "http://evil.example"}).status_code == 200  # reads: CORS blocks


# --- 2. request bodies, texts, k, the label cache ----------------------------------------------------------------------
def test_request_bodies_over_the_limit_are_refused_declared_or_chunked(served, monkeypatch):
    client, engine, mix = served["client"], served["engine"], served["mix"]
    big = b'{"mix": "mix.wav", "instrument": "bass", "pad": "' + b"x" * 100_000 + b'"}'
    res = client.post("/api/queries", content=big, headers={"content-type": "application/json"})
    assert res.status_code == 413 and "request body larger than this server's limit of 64 kB" in res.json()["detail"]

    def chunks(data: bytes, size: int = 8192):
        for i in range(0, len(data), size):
            yield data[i:i + size]

    res = client.post("/api/queries", content=chunks(big), headers={"content-type": "application/json"})
    assert res.status_code == 413 and "64 kB" in res.json()["detail"]
    assert res.request.headers.get("transfer-encoding") == "chunked" and "content-length" not in res.request.headers
    before = kept_uploads(engine)
    monkeypatch.setattr(engine.limits, "max_upload_mb", 0.05)
    for body in (wav_bytes(mix, MIX_SR), chunks(wav_bytes(mix, MIX_SR))):
        res = upload(client, body, "big.wav")
        assert res.status_code == 413, res.text
        assert "big.wav: larger than this server's upload limit of 0.05 MB" in res.json()["detail"]
    assert kept_uploads(engine) == before  # no partial file, no temporary file


def test_instrument_text_and_k_are_bounded(served):
    client = served["client"]
    limit = served["engine"].limits.max_instrument_chars
    res = client.post("/api/queries", json={"mix": "mix.wav", "instrument": "a" * (limit + 1)})
    assert res.status_code == 413 and f"instrument text of {limit + 1} characters" in res.json()["detail"]
    for k in (0, -1, 51, 10**12):
        res = client.post("/api/queries", json={"mix": "mix.wav", "instrument": "bass", "k": k})
        assert res.status_code == 400 and "k must be between 1 and 50" in res.json()["detail"], k
    assert run_query(client, {"mix": "mix.wav", "instrument": "b" * limit, "k": 2})["state"] == "done"


def test_query_label_cache_stays_bounded(monkeypatch):
    from stemjepa.config import ConditioningConfig
    from stemjepa.models import conditioning

    class FakeEncoder:  # deterministic vectors, no text model: the test is about the cache
        def encode(self, texts):
            return np.stack([np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(8) for t in texts]).astype(
                np.float32)

    monkeypatch.setattr(conditioning, "get_text_encoder", lambda *a: FakeEncoder())
    cond = conditioning.TextConditioner(ConditioningConfig(kind="text", text_dim=8))
    cond.add_labels(["bass", "drums"])
    saved = {k: v.clone() for k, v in cond.state_dict().items() if isinstance(v, torch.Tensor)}
    first = cond(["warm electric piano"])[0].clone()
    for i in range(3 * conditioning.QUERY_LABELS):
        cond([f"instrument number {i}", "bass"])
    cond(["x" * 1_000_000])  # a 1 MB text is kept under its hash, not as a 1 MB key
    assert len(cond.query_labels) == conditioning.QUERY_LABELS
    assert max(len(k) for k in cond.query_labels) <= conditioning.LONG_KEY
    assert torch.equal(cond(["warm electric piano"])[0], first)  # dropped, then embedded again: the same vector
    assert torch.equal(cond(["bass", "drums"]), cond.table)
    now = {k: v for k, v in cond.state_dict().items() if isinstance(v, torch.Tensor)}
    assert now.keys() == saved.keys() and all(torch.equal(now[k], saved[k]) for k in saved)  # queries change no state


# --- 3. uploads: expiry, quota, full disk ------------------------------------------------------------------------------
def store_with(tmp_path, clock, **limits) -> UploadStore:
    return UploadStore(tmp_path / "uploads", Limits(**limits), clock=clock)


def put(store: UploadStore, name: str, size: int = 10):
    uid, path = store.new_path(name)
    path.write_bytes(b"x" * size)
    return store.add(uid, name, path)


def test_uploads_expire_after_their_last_use(tmp_path):
    clock = Clock()
    store = store_with(tmp_path, clock, upload_ttl_s=3600)
    a, b = put(store, "a.wav"), put(store, "b.wav")
    clock.now += 3000
    assert store.get(a.id).path.is_file()  # used: its hour starts again
    clock.now += 3000
    assert store.get(a.id).path == a.path
    with pytest.raises(NotFound, match=f"upload '{b.id}' expired: uploads are deleted 60 min after their last use"):
        store.get(b.id)
    assert not b.path.exists() and a.path.is_file()


def test_upload_quota_deletes_the_least_recently_used_first(tmp_path):
    clock = Clock()
    store = store_with(tmp_path, clock, max_uploads=3, max_uploads_mb=0.001)  # 3 files, 1000 bytes
    items = [put(store, f"{i}.wav", 100) for i in range(3)]
    store.get(items[0].id)  # used again: now the most recent
    fourth = put(store, "3.wav", 100)
    with pytest.raises(NotFound, match="deleted to make room for newer uploads"):
        store.get(items[1].id)
    assert not items[1].path.exists() and len(store) == 3
    big = put(store, "big.wav", 950)  # bytes: 950 + 100 > 1000, so all others go
    assert len(store) == 1 and store.get(big.id) and not fourth.path.exists()
    assert sorted(p.name for p in store.folder.iterdir()) == [big.path.name]


def test_upload_on_a_full_disk_answers_507_and_keeps_no_partial_file(served, monkeypatch):
    client, engine, mix = served["client"], served["engine"], served["mix"]
    before = kept_uploads(engine)
    fake = disk_full_after(app_files._write_chunk, n_ok=0, partial=b"RIFF partial")
    monkeypatch.setattr(app_files, "_write_chunk", fake)
    res = upload(client, wav_bytes(mix, MIX_SR), "song.wav")
    assert fake.calls["n"] >= 1
    assert res.status_code == 507, res.text
    assert res.json()["detail"].startswith("song.wav: the server's disk is full")
    assert kept_uploads(engine) == before  # neither the partial file nor its temporary name


# --- 4. job results kept until read ------------------------------------------------------------------------------------
def test_a_burst_of_100_queries_leaves_all_100_answerable():
    jobs = Jobs()  # the server's defaults
    gate = threading.Event()
    try:
        ids = [jobs.submit(lambda job, i=i: (gate.wait(30), {"n": i})[1]).id for i in range(100)]
        gate.set()

        def all_done():
            while not all(jobs.get(i).state == "done" for i in ids):
                time.sleep(0.01)

        bounded(all_done, 60)
        answers = [jobs.read(i) for i in ids]
        assert [a["result"] for a in answers] == [{"n": i} for i in range(100)]
        assert [jobs.read(i)["state"] for i in ids] == ["done"] * 100  # read again: still there
    finally:
        gate.set()
        jobs.close()


def finished_jobs(jobs: Jobs, n: int) -> list[str]:
    ids = [jobs.submit(lambda job, i=i: {"n": i}).id for i in range(n)]

    def all_done():
        while not all(jobs.get(i).state == "done" for i in ids):
            time.sleep(0.01)

    bounded(all_done, 30)
    return ids


def test_finished_job_expires_with_a_404_saying_why():
    clock = Clock()
    jobs = Jobs(keep=3, grace_s=300, ttl_s=3600, clock=clock)
    try:
        read, unread = finished_jobs(jobs, 2)
        assert jobs.read(read)["result"] == {"n": 0}
        clock.now += 299
        assert jobs.read(read)["state"] == "done"  # within the grace period after the first read
        clock.now += 2
        with pytest.raises(NotFound, match=f"job '{read}' expired: a finished query is kept 5 min after its result"):
            jobs.read(read)
        clock.now += 3600  # never read: kept until the TTL
        with pytest.raises(NotFound, match=f"job '{unread}' expired: a finished query is kept at most 60 min"):
            jobs.read(unread)
        ids = finished_jobs(jobs, 3)
        jobs.read(ids[2])
        finished_jobs(jobs, 1)  # one over `keep`: the read one goes first
        with pytest.raises(NotFound, match="keeps the last 3 finished queries"):
            jobs.read(ids[2])
        assert jobs.read(ids[0])["state"] == "done"
        with pytest.raises(NotFound, match="not found"):
            jobs.read("0123456789abcdef")
    finally:
        jobs.close()


def test_queries_over_the_queue_limit_answer_503(served, monkeypatch):
    client, engine = served["client"], served["engine"]
    gate = threading.Event()
    monkeypatch.setattr(engine.jobs, "max_queued", 1)
    try:
        engine.jobs.submit(lambda job: (gate.wait(30), {})[1])  # holds the worker
        res = client.post("/api/queries", json={"mix": "mix.wav", "instrument": "bass"})
        assert res.status_code == 503 and "waiting for the worker" in res.json()["detail"]
    finally:
        gate.set()


def test_expired_job_answers_404_through_the_api(served, monkeypatch):
    client, engine = served["client"], served["engine"]
    clock = Clock()
    monkeypatch.setattr(engine.jobs, "clock", clock)
    job = run_query(client, {"mix": "mix.wav", "instrument": "bass", "k": 2})
    assert job["state"] == "done"
    clock.now += engine.limits.job_grace_s + 1
    res = client.get(f"/api/jobs/{job['id']}")
    assert res.status_code == 404 and "expired" in res.json()["detail"]


# --- 5. a FIFO beside an indexed stem ----------------------------------------------------------------------------------
def test_fifo_stems_json_does_not_block_the_query_worker(served):
    client, lib = served["client"], served["lib"]
    meta = lib / "toy_002" / "stems.json"
    saved = meta.read_bytes()
    meta.unlink()
    os.mkfifo(meta)
    try:
        assert bounded(lambda: stem_labels(lib / "toy_002" / "bass.wav"), 10) == ([], None)
        job, error = bounded(lambda: run_query(client, {"mix": "mix.wav", "instrument": "bass", "k": 16}), 120)
        assert error is None and job["state"] == "done", (error, job)
        by_song = {r["path"].split("/")[0]: r["labels"] for r in job["result"]["results"]}
        assert by_song["toy_002"] == [] and by_song["toy_000"]  # the FIFO costs its labels, not the answer
    finally:
        meta.unlink()
        meta.write_bytes(saved)


# --- 6. decode bombs ---------------------------------------------------------------------------------------------------
def test_upload_flac_decoding_to_gigabytes_is_refused_before_decoding(served, bomb):
    client, engine = served["client"], served["engine"]
    data = bomb.read_bytes()
    assert len(data) < 2e6 and len(data) < engine.limits.max_upload_mb * 1e6  # passes the size limit...
    assert BOMB["seconds"] < engine.limits.max_seconds  # ... and the duration limit
    before, peak = kept_uploads(engine), peak_rss_mb()
    res = upload(client, data, "bomb.flac", content_type="audio/flac")
    grew = peak_rss_mb() - peak
    assert res.status_code == 413, res.text
    detail = res.json()["detail"]
    assert detail.startswith("bomb.flac: 8 channels x 590 s at 192000 Hz decode to 3.6 GB") and "--max-decoded-mb" in detail
    assert grew < 200, f"peak memory grew by {grew:.0f} MB"  # decoding it would take 3600 MB
    assert kept_uploads(engine) == before
    shutil.copy(bomb, served["mixes"] / "bomb.flac")  # the same file picked from the mixes folder
    try:
        job = run_query(client, {"mix": "bomb.flac", "instrument": "bass"})
        assert job["state"] == "error" and job["error"].startswith("bomb.flac: 8 channels x 590 s"), job
    finally:
        (served["mixes"] / "bomb.flac").unlink()
    assert peak_rss_mb() - peak < 200
