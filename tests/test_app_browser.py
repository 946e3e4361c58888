"""The web app in headless Chromium (Debian's `chromium`, driven by Playwright): upload a mix, query, play the mix with
a candidate, switch candidates while playing, download an aligned candidate. Also writes the README's screenshot.

The server is uvicorn on a free loopback port, started by this test in a thread.
"""
from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from app_helpers import MIX_SR, app_page, copy_library, index_library, mix_without

pytestmark = [pytest.mark.slow, pytest.mark.analysis]  # analysis: the screenshot shows tempo and key

SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "img" / "app.png"


@pytest.fixture(scope="module")
def server(tiny_checkpoint, toy_corpus, tmp_path_factory):
    import uvicorn

    from stemjepa.app import ServeConfig, create_app

    tmp = tmp_path_factory.mktemp("app_browser")
    lib = copy_library(toy_corpus, tmp / "lib")
    idx = index_library(lib, tmp / "idx", tiny_checkpoint)
    app = create_app(ServeConfig(indexes=[idx], uploads=tmp / "uploads", device="cpu"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120  # a hang guard, not a timing assertion: a loaded machine starts slowly
    while not srv.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield {"url": f"http://127.0.0.1:{port}/", "lib": lib, "tmp": tmp}
    srv.should_exit = True
    thread.join(timeout=10)
    sock.close()


def test_upload_query_play_together_and_download(server, tmp_path):
    mix, sr = mix_without(server["lib"] / "toy_002", "bass")
    mix_path = tmp_path / "song without bass.wav"
    sf.write(mix_path, mix, sr, subtype="PCM_16")
    k = 5
    with app_page(server["url"], accept_downloads=True) as (page, errors):
        assert "16 stems" in page.text_content("#library")
        assert page.eval_on_selector_all("#labels option", "os => os.map(o => o.value)").count("bass") == 1

        # a bad upload gets a clear message in the page
        bad = tmp_path / "broken.wav"
        bad.write_bytes(b"not audio")
        page.set_input_files("#file", str(bad))
        page.wait_for_selector("#error:not([hidden])")
        assert page.text_content("#error").startswith("broken.wav:")

        page.set_input_files("#file", str(mix_path))
        page.wait_for_function("document.getElementById('stage').textContent.includes('ready')")
        assert page.is_hidden("#error")
        page.fill("#instrument", "bass")
        page.fill("#k", str(k))
        page.click("#search")
        page.wait_for_selector("#rows tr.result", timeout=120_000)
        page.wait_for_function("window.stemjepa.player.buffers.size > 0")  # candidate 1 decoded
        assert page.locator("#rows tr.result").count() == k
        assert page.text_content("#rows tr.result:first-child .z").endswith("\u03c3")

        page.click("#play")
        page.wait_for_function("window.stemjepa.player.status().playing")
        first = page.evaluate("window.stemjepa.player.status()")
        page.wait_for_function(f"window.stemjepa.player.status().time > {first['time']} + 0.3")
        status = page.evaluate("window.stemjepa.player.status()")
        assert status["context"] == "running" and status["rank"] == 1 and status["mixSources"] == 1

        page.click("#rows tr.result:nth-child(2)")  # switch candidate without stopping
        page.wait_for_function("window.stemjepa.player.status().rank === 2")
        status = page.evaluate("window.stemjepa.player.status()")
        assert status["playing"] and status["context"] == "running"
        assert status["mixSources"] == 1 and status["switches"] == 1  # the mix kept playing
        page.fill("#balance", "0.7")
        page.dispatch_event("#balance", "input")
        assert page.get_attribute("#dl-premix", "href").endswith("balance=0.7")

        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.wait_for_function("[...document.images].every(i => i.complete)")
        page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
        shutil.copyfile(tmp_path / "app.png", SCREENSHOT)

        with page.expect_download() as info:
            page.click("#rows tr.result:nth-child(2) a.download")
        saved = tmp_path / "candidate.wav"
        info.value.save_as(saved)
        with page.expect_download() as info:
            page.click("#dl-premix")
        premix = tmp_path / "premix.wav"
        info.value.save_as(premix)
        assert errors == []
    data, rate = sf.read(saved, dtype="float32", always_2d=True)
    assert rate == MIX_SR and len(data) == len(mix)  # the mix's length and sample rate
    assert np.max(np.abs(data)) > 0.01
    data, rate = sf.read(premix, dtype="float32", always_2d=True)
    assert rate == MIX_SR and data.shape == mix.shape
