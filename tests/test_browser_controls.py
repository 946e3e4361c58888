"""The web app's tempo/key and player controls in headless Chromium (issue 25): BPM/key columns and the mix's tempo and
key, the filters sent with the query, the previous candidate cleared when new results arrive, the "fit to mix" switch,
the playhead's click-to-seek, the keyboard (space, up/down; not while typing), and the drag-out payload (DownloadURL)
naming a WAV that the server serves. Every wait is for a condition the page reports, never for a time."""
from __future__ import annotations

import json

import pytest
import soundfile as sf
from app_helpers import app_page, mix_without
from test_app_browser import server  # noqa: F401  (the module's uvicorn server fixture)

pytestmark = [pytest.mark.slow, pytest.mark.analysis]

STATUS = "window.stemjepa.player.status()"


def wait(page, condition: str, timeout: float = 30_000) -> None:
    """Wait for a condition the page reports (a hang guard, not a timing assertion); on a time-out, say what the page
    showed (its error line, the player's state) rather than only that it timed out."""
    from playwright.sync_api import TimeoutError as PageTimeout

    try:
        page.wait_for_function(condition, timeout=timeout)
    except PageTimeout:
        shown = page.evaluate("[document.getElementById('error').textContent, document.getElementById('stage').textContent,"
                              " window.stemjepa.player.status()]")
        raise AssertionError(f"page never reached {condition!r}; error line, stage, player: {shown}") from None


def drag_payload(page, selector: str) -> str:
    """What a drag from `selector` puts under DownloadURL (a DataTransfer built in the page, as Chromium's would be)."""
    return page.evaluate("""(sel) => {
        const dt = new DataTransfer();
        const drag = new DragEvent("dragstart", {dataTransfer: dt, bubbles: true, cancelable: true});
        document.querySelector(sel).dispatchEvent(drag);
        return dt.getData("DownloadURL");
    }""", selector)


def check_wav_url(page, payload: str, suffix: str) -> str:
    mime, name, url = payload.split(":", 2)
    assert mime == "audio/wav" and name.endswith(suffix), payload
    res = page.request.get(url)
    assert res.status == 200 and res.headers["content-type"] == "audio/wav", (url, res.status)
    assert res.body()[:4] == b"RIFF"
    return url


def test_tempo_key_columns_filters_fit_seek_keyboard_and_drag_out(server, tmp_path):  # noqa: F811

    mix, sr = mix_without(server["lib"] / "toy_003", "bass")
    mix_path = tmp_path / "song.wav"
    sf.write(mix_path, mix, sr, subtype="PCM_16")
    with app_page(server["url"]) as (page, errors):
        page.set_input_files("#file", str(mix_path))
        wait(page, "document.getElementById('stage').textContent.includes('ready')")
        page.fill("#instrument", "bass")
        page.fill("#k", "4")
        page.click("#search")
        wait(page, "window.stemjepa.player.buffers.size > 0", 120_000)

        # columns, names of the figures, the mix's tempo and key
        heads = page.eval_on_selector_all("#results thead th", "ths => ths.map(t => t.textContent)")
        assert {"z", "percentile", "BPM", "key"} <= set(heads) and "beats" not in heads and "score" not in heads
        assert "percentile" in page.text_content("#legend") and "beats:" not in page.text_content("#legend")
        assert page.text_content("#mix-analysis").startswith("Mix: ")
        z = page.evaluate("window.stemjepa.state.query.results[0].z")
        sign = "+" if z >= 0 else "\u2212"
        assert page.text_content("#rows tr.result:first-child .z") == f"{sign}{abs(z):.1f}\u03c3"
        first = page.evaluate("window.stemjepa.state.query.results[0].analysis")
        shown_bpm = page.text_content("#rows tr.result:first-child .bpm")
        assert shown_bpm == (f"{first['bpm']:.1f}" if first["bpm"] is not None else "\u2013")

        # filters: typed in the page, sent with the query, applied by the server
        bpm = f"{first['bpm']:.1f}" if first["bpm"] is not None else "120.0"
        key = first["key"] or "A minor"
        page.fill("#bpm", bpm)
        page.fill("#bpm-tol", "2")
        page.uncheck("#half-double")
        page.fill("#key", key)
        page.select_option("#key-mode", "relative")
        old = page.evaluate("window.stemjepa.state.query.id")
        page.evaluate("""() => { window.atResults = null; document.addEventListener("stemjepa:results", () => {
            window.atResults = {name: document.getElementById("cand-name").textContent,
                                status: window.stemjepa.player.status(),
                                buffers: window.stemjepa.player.buffers.size}; }, {once: true}); }""")
        with page.expect_request(lambda r: r.url.endswith("/api/queries") and r.method == "POST") as sent:
            page.click("#search")
        body = json.loads(sent.value.post_data)
        assert body["bpm"] == f"{bpm}+-2!" and body["key"] == f"{key}:relative" and body["rank"] == "model"
        wait(page, f"window.stemjepa.state.query.id !== '{old}' && window.atResults !== null", 120_000)
        # the moment the new rows are shown, nothing of the previous candidate is left
        at = page.evaluate("window.atResults")
        assert at["name"] == "" and at["buffers"] == 0 and at["status"]["url"] is None
        assert at["status"]["rank"] is None and not at["status"]["playing"]
        q = page.evaluate("window.stemjepa.state.query")
        assert q["filters"]["bpm"] == body["bpm"] and q["filters"]["key"] == body["key"]
        assert len(q["results"]) >= 1  # the stem the filters were taken from passes them
        wait(page, f"{STATUS}.url !== null")

        # click-to-seek, stopped: the position is where the click was
        duration = page.evaluate("window.stemjepa.player.mixBuf.duration")
        box = page.locator("#seek").bounding_box()
        page.mouse.click(box["x"] + 0.5 * box["width"], box["y"] + box["height"] / 2)
        st = page.evaluate(STATUS)
        assert st["seeks"] == 1 and abs(st["position"] - 0.5 * duration) <= duration / box["width"] * 2
        assert abs(page.evaluate("window.stemjepa.player.currentTime") - st["position"]) < 1e-9
        width = page.evaluate("parseFloat(document.getElementById('seek-fill').style.width)")
        assert abs(width - 50) < 1

        # keyboard: space plays from the seek position; a click while playing restarts both there
        page.locator("#results-title").click()
        page.keyboard.press(" ")
        wait(page, f"{STATUS}.playing")
        st = page.evaluate(STATUS)
        assert abs(st["from"] - 0.5 * duration) <= duration / box["width"] * 2
        sources = st["mixSources"]
        page.mouse.click(box["x"] + 0.25 * box["width"], box["y"] + box["height"] / 2)
        wait(page, f"{STATUS}.mixSources === {sources + 1}")
        st = page.evaluate(STATUS)
        assert st["playing"] and abs(st["from"] - 0.25 * duration) <= duration / box["width"] * 2
        page.keyboard.press(" ")
        wait(page, f"!{STATUS}.playing")

        n = len(q["results"])
        if n >= 2:
            page.keyboard.press("ArrowDown")
            assert page.evaluate("window.stemjepa.state.rank") == 2
            assert page.get_attribute("#rows tr.result:nth-child(2)", "class").split().count("selected") == 1
            page.keyboard.press("ArrowUp")
            assert page.evaluate("window.stemjepa.state.rank") == 1
        page.keyboard.press("ArrowUp")  # already the first: stays
        assert page.evaluate("window.stemjepa.state.rank") == 1
        page.focus("#instrument")  # typing in a field: the keys are the field's
        page.keyboard.press(" ")
        assert page.input_value("#instrument") == "bass " and not page.evaluate(STATUS)["playing"]
        page.focus("#bpm-tol")  # a number field without suggestions: up/down step its value
        page.keyboard.press("ArrowDown")
        assert page.evaluate("window.stemjepa.state.rank") == 1 and page.input_value("#bpm-tol") != "2"

        # drag-out, aligned: a WAV URL that answers with a WAV; the link beside it is the fallback
        payload = drag_payload(page, "#rows tr.result:first-child .drag")
        url = check_wav_url(page, payload, ".wav")
        assert url.endswith(page.get_attribute("#rows tr.result:first-child a.download", "href"))
        assert "fit=1" not in url

        # fit to mix: the switch changes what is played, downloaded and dragged
        aligned_url = page.evaluate(STATUS)["url"]
        page.check("#fit")
        wait(page, f"{STATUS}.url === '{aligned_url}?fit=1'", 120_000)
        assert page.get_attribute("#dl-aligned", "href") == f"{aligned_url}?fit=1"
        assert page.get_attribute("#dl-premix", "href").endswith("&fit=1")
        fitted = page.request.get(server["url"].rstrip("/") + page.evaluate(STATUS)["url"])
        assert fitted.status == 200 and fitted.headers["content-type"] == "audio/wav"
        assert fitted.headers["content-disposition"].endswith('.fit.wav"')
        payload = drag_payload(page, "#rows tr.result:first-child .drag")
        assert "fit=1" in check_wav_url(page, payload, ".fit.wav")
        assert "fit=1" in check_wav_url(page, drag_payload(page, "#drag-out"), ".fit.wav")
        page.uncheck("#fit")
        wait(page, f"{STATUS}.url === '{aligned_url}'")
        assert page.is_hidden("#error") and errors == []
