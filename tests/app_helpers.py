"""Builders shared by the web-app tests: a library copied from the toy corpus, its index, a mixes folder, a mix."""
from __future__ import annotations

import contextlib
import io
import shutil
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from stemjepa.audio.io import resample
from stemjepa.models.registry import load_model
from stemjepa.search import build_index

MIX_SR = 22050  # uploads keep their own rate and channels: the downloads must follow them


def copy_library(toy_corpus: Path, dest: Path, songs: int = 4) -> Path:
    """The first `songs` songs of the toy corpus (stems + stems.json) under `dest`."""
    for song in sorted(p.parent for p in toy_corpus.glob("*/stems.json"))[:songs]:
        shutil.copytree(song, dest / song.name)
    return dest


def index_library(library: Path, out: Path, checkpoint: Path) -> Path:
    model = load_model(checkpoint, device="cpu")
    summary = build_index(library, out, model, model_ref=checkpoint, batch_size=8, progress=False)
    assert summary.failed == [], summary.failed
    return out


def mix_without(song: Path, stem: str = "bass") -> tuple[np.ndarray, int]:
    """(stereo (frames, 2) float32 at MIX_SR, MIX_SR): the song minus one stem, slightly different per channel."""
    waves = [sf.read(p, dtype="float32")[0] for p in sorted(song.glob("*.wav")) if p.stem != stem]
    mono = resample(np.sum(waves, axis=0), 16000, MIX_SR)
    mono *= 0.9 / float(np.max(np.abs(mono)))  # a bounce that does not clip
    return np.stack([mono, 0.8 * mono], axis=1).astype(np.float32), MIX_SR


def wav_bytes(wave: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def upload(client, data: bytes, name: str = "mix.wav", content_type: str = "application/octet-stream", **headers):
    """POST a mix to /api/uploads as the page does (extra headers, e.g. origin=..., as keywords)."""
    return client.post("/api/uploads", params={"filename": name}, content=data,
                       headers={"content-type": content_type, **headers})


def run_query(client, body: dict) -> dict:
    """Start a query and poll its job until it is done or failed (a bounded wait, not a timing assertion)."""
    res = client.post("/api/queries", json=body)
    assert res.status_code == 202, res.text
    for _ in range(1200):
        job = client.get(res.json()["job_url"]).json()
        if job["state"] in ("done", "error"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"query did not finish: {job}")


@contextlib.contextmanager
def serve_with_upload(toy_corpus: Path, checkpoint: Path, tmp: Path, song: str, upload_name: str):
    """The app (FastAPI's test client) over an index of the toy library, with the mix of `song` without its bass
    uploaded as `upload_name`: yields {"client", "engine", "mix", "upload" (its id)}."""
    from fastapi.testclient import TestClient

    from stemjepa.app import ServeConfig, create_app

    lib = copy_library(toy_corpus, tmp / "lib")
    mix, sr = mix_without(lib / song)
    idx = index_library(lib, tmp / "idx", checkpoint)
    with TestClient(create_app(ServeConfig(indexes=[idx], uploads=tmp / "uploads", device="cpu")),
                    base_url="http://localhost") as client:
        up = upload(client, wav_bytes(mix, sr), upload_name)
        assert up.status_code == 201, up.text
        yield {"client": client, "engine": client.app.state.engine, "mix": mix, "upload": up.json()["id"]}


@contextlib.contextmanager
def app_page(url: str, **page_options):
    """The web app at `url` in headless Chromium (Debian's `chromium`, driven by Playwright), once the page marks its
    start-up finished; yields (page, errors) where errors collects the page's uncaught exceptions. Skips the test where
    Chromium is not installed (`make test` as root installs it)."""
    import pytest

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Debian's chromium is not installed (`make test` as root installs it: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox", "--mute-audio"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900}, **page_options)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url)
            # wait for the page's own "start-up finished" mark, not for one of the things start-up fills
            page.wait_for_selector("body[data-ready='true']", state="attached")
            yield page, errors
        finally:
            browser.close()
