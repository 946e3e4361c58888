"""Audio input of the fault matrix (issue 23, part A): decoding bombs, absurd headers and sample values, odd file names in
evaluation, the Python API's array input, `embed --out`'s file list, `query --export` on a full disk, help texts.
Each test builds its own inputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from faultkit import TESTS, bounded, disk_full_after
from test_search_fakes import SR, FakeModel, tone, write, write_songs

from stemjepa.audio import io as audio_io
from stemjepa.audio.io import AudioInfo, check_decoded_size, load_audio, load_playback, playback_format, probe, resample
from stemjepa.cli.main import main
from stemjepa.errors import AudioError, StemJepaError

BOMB = (590, 8, 192000)  # seconds, channels, rate: 0.94 MB of FLAC that decodes to 906 M samples (3.6 GB of float32)


@pytest.fixture(scope="module")
def flac_bomb(tmp_path_factory) -> Path:
    seconds, channels, rate = BOMB
    path = tmp_path_factory.mktemp("bomb") / "bomb.flac"
    block = np.zeros((rate * 10, channels), np.int16)  # digital silence compresses to a few bytes per FLAC frame
    with sf.SoundFile(path, "w", rate, channels, subtype="PCM_16", format="FLAC") as f:
        for _ in range(seconds // 10):
            f.write(block)
    assert path.stat().st_size < 2_000_000
    return path


def rss_growth_mb(code: str) -> tuple[float, str]:
    """Run `code` (which prints one line) in a fresh interpreter; the growth of its peak RSS over the imports, in MB.
    Read from /proc (VmHWM: the peak of this process's own memory; getrusage's maxrss is inherited from the parent)."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("peak RSS is read from /proc/self/status (Linux)")
    peak = "int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])"
    script = (f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nfrom stemjepa.audio.io import load_audio\n"
              f"before = {peak}\n{code}\nprint(({peak} - before) / 1024)\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    *out, growth = r.stdout.strip().splitlines()
    return float(growth), "\n".join(out)


# --- decoded size ------------------------------------------------------------------------------------------------------
def test_flac_bomb_590s_8ch_192khz_is_read_with_memory_bounded_by_its_mono_16khz_output(flac_bomb):
    seconds, channels, rate = BOMB
    info = probe(flac_bomb)  # the header only: nothing decoded
    assert (info.channels, info.sample_rate, info.seconds) == (channels, rate, seconds)
    assert info.samples == seconds * channels * rate
    assert check_decoded_size(flac_bomb).frames == seconds * rate  # mono 16 kHz: 9.4 M samples, within the budget
    with pytest.raises(AudioError, match="over the budget") as err:  # as stored it would be 906 M samples
        check_decoded_size(flac_bomb, sample_rate=None, mono=False)
    assert str(flac_bomb) in str(err.value)
    assert playback_format(info) == (2, 48000)  # playback and export: down-mixed and capped, 56.6 M samples
    growth, shape = rss_growth_mb(f"w = load_audio({str(flac_bomb)!r}); print(w.shape, w.dtype)")
    assert shape == f"({seconds * 16000},) float32"
    assert growth < 400, f"peak RSS grew by {growth:.0f} MB for a {seconds * 16000 * 4 / 1e6:.0f} MB result"


def test_headers_with_absurd_channel_counts_or_rates_are_refused_before_decoding(tmp_path, monkeypatch):
    many = tmp_path / "many.wav"
    sf.write(many, np.zeros((10, audio_io.MAX_CHANNELS + 1), np.float32), SR)
    fast = tmp_path / "fast.wav"
    sf.write(fast, np.zeros(100, np.int16), SR)
    raw = bytearray(fast.read_bytes())
    raw[24:28] = (5_000_000).to_bytes(4, "little")  # the fmt chunk's sample rate
    fast.write_bytes(bytes(raw))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoding started")

    monkeypatch.setattr(audio_io, "Reducer", no_decoding)
    for path, problem in ((many, "65 audio channels"), (fast, "sample rate 5000000 Hz")):
        for read in (probe, load_audio, load_playback):
            with pytest.raises(AudioError, match=problem) as err:
                read(path)
            assert str(err.value).startswith(str(path))
    long = tmp_path / "long.wav"
    sf.write(long, np.zeros(SR * 3, np.float32), SR)
    monkeypatch.setattr(audio_io, "MAX_OUTPUT_SAMPLES", SR * 2)  # a budget of 2 s of mono 16 kHz
    with pytest.raises(AudioError, match="over the budget"):
        load_audio(long)


def test_stream_whose_header_states_no_length_is_cut_at_the_budget(tmp_path, monkeypatch):
    path = tmp_path / "endless.wav"
    sf.write(path, np.zeros(SR, np.float32), SR)
    decoded = []

    def endless(p):  # a reader whose header says no length, then never ends (a hostile or live stream)
        yield AudioInfo(2, 48000, None), ""
        while True:
            decoded.append(1)
            yield np.full((48000, 2), 0.1, np.float32)

    monkeypatch.setattr(audio_io, "soundfile_blocks", endless)
    monkeypatch.setattr(audio_io, "MAX_OUTPUT_SAMPLES", 10 * SR)
    _, error = bounded(lambda: load_audio(path), seconds=60)
    assert isinstance(error, AudioError) and "decodes to more than 160,000 output samples" in str(error)
    assert len(decoded) <= 12  # stopped at the budget (10 s), not at the end of the stream


def test_native_playback_of_a_file_over_the_budget_is_downmixed_to_stereo_48khz(tmp_path):
    rate, channels = 192000, 8
    t = np.arange(rate) / rate
    data = np.stack([0.1 * (c + 1) / channels * np.sin(2 * np.pi * 440 * t) for c in range(channels)], axis=1)
    path = tmp_path / "surround.flac"
    sf.write(path, data.astype(np.float32), rate, subtype="PCM_24")
    wave, sr = load_playback(path, max_samples=channels * rate - 1)
    assert sr == 48000 and wave.shape == (2, 48000) and wave.flags.c_contiguous
    stored = sf.read(path, dtype="float32")[0]
    left = resample(stored[:, 0::2].mean(axis=1), rate, 48000)
    assert np.allclose(wave[0], left, atol=1e-4)
    wave, sr = load_playback(path)  # within the default budget: as stored
    assert sr == rate and wave.shape == (channels, rate)
    with pytest.raises(AudioError, match="too long to play back"):
        load_playback(path, max_samples=1000)


# --- sample values -----------------------------------------------------------------------------------------------------
def huge_wav(path: Path, seconds: float = 3.0) -> Path:
    return write(path, tone(220.0, seconds) * np.float32(1e30))


def test_float_wav_with_huge_finite_samples_is_refused_naming_the_file(tmp_path):
    bad = huge_wav(tmp_path / "huge.wav")
    with pytest.raises(AudioError, match=r"sample values reach 3e\+29") as err:
        load_audio(bad)
    assert str(err.value).startswith(str(bad)) and "\n" not in str(err.value)
    hot = write(tmp_path / "hot.wav", tone(220.0, 1.0) * np.float32(8.0))  # +18 dBFS float audio is still audio
    assert np.max(np.abs(load_audio(hot))) > 2.0


@pytest.fixture()
def fake_index(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "stems"
    write_songs(root)
    ckpt = tmp_path / "fake.ckpt"
    ckpt.write_bytes(b"x")
    monkeypatch.setattr("stemjepa.models.registry.load_model", lambda path, device=None: FakeModel())
    assert main(["index", str(root), "--checkpoint", str(ckpt), "--out", str(tmp_path / "idx"), "--quiet"]) == 0
    return tmp_path / "idx"


def test_query_with_a_huge_sample_mix_answers_the_good_mixes_and_reports_the_bad_one(fake_index, tmp_path, capsys):
    good = [write(tmp_path / f"mix{i}.wav", tone(4 * f, 3.0, 0.2)) for i, f in enumerate((98.0, 55.0))]
    bad = huge_wav(tmp_path / "huge.wav")
    capsys.readouterr()
    code = main(["query", str(good[0]), str(bad), str(good[1]), "--instrument", "bass", "--index", str(fake_index),
                 "-k", "1", "--json"])
    out, err = capsys.readouterr()
    assert code == 2  # non-zero at the end, after answering the others
    answers = json.loads(out)
    assert [a["mix"] for a in answers] == [str(good[0]), str(good[1])]
    assert [Path(a["results"][0]["path"]).parts[-2:] for a in answers] == [("song2", "bass.wav"), ("song0", "bass.wav")]
    assert f"{bad}: sample values reach" in err and "weights" not in err


# --- evaluation: odd stems are skipped and reported, the run goes on -----------------------------------------------------
def eval_corpus(root: Path, odd_file: str, odd_wave: np.ndarray | None) -> Path:
    t = np.arange(SR // 2) / SR
    for s in range(3):
        d = root / f"song{s}"
        d.mkdir(parents=True)
        entries = []
        for j, (name, f0) in enumerate((("bass", 55.0), ("keys", 440.0), ("gtr", 330.0))):
            sf.write(d / f"{name}.wav", (0.3 * np.sin(2 * np.pi * f0 * (1 + 0.13 * s + 0.01 * j) * t)).astype(np.float32),
                     SR)
            entries.append({"file": f"{name}.wav", "labels": [name]})
        if s == 1:
            if odd_wave is not None:
                sf.write(os.fsencode(d / odd_file), odd_wave, SR, subtype="FLOAT")
            entries.append({"file": odd_file, "labels": ["fx"]})
        (d / "stems.json").write_text(json.dumps({"stems": entries}))
    return root


def run_eval(root: Path, out: Path) -> dict:
    from test_eval_retrieval import FakeModel as BandModel

    from stemjepa.data.multitrack import read_folder
    from stemjepa.evaluation import RetrievalProtocol, evaluate_retrieval

    songs, problems = read_folder(root)
    assert not problems
    result, error = bounded(lambda: evaluate_retrieval(BandModel(), songs, RetrievalProtocol(), out, progress=False),
                            seconds=120)
    assert error is None, repr(error)
    return result


def test_eval_retrieval_skips_and_reports_a_stem_with_huge_samples(tmp_path, caplog):
    t = np.arange(SR // 2) / SR
    m = run_eval(eval_corpus(tmp_path / "c", "huge.wav", (1e30 * np.sin(2 * np.pi * 700 * t)).astype(np.float32)),
                 tmp_path / "out")
    assert m["n_pool"] == 9 and m["n_stems_unreadable"] == 1
    [skipped] = m["skipped_stems"]
    assert skipped["song"] == "song1" and skipped["stem"] == "huge" and "sample values reach" in skipped["reason"]
    assert "stem huge skipped" in caplog.text
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["skipped_stems"] == [skipped]


@pytest.mark.parametrize("case, name, readable", [
    ("nul byte", "bad\x00name.wav", False),
    ("lone surrogate", "bad\ud800name.wav", False),  # a JSON escape no file system name can hold
    ("undecodable bytes", "bad\udcffname.wav", True),  # a Latin-1 file name, as Python decodes it
])
def test_eval_retrieval_with_odd_characters_in_a_stem_file_name_skips_or_reads_it(tmp_path, case, name, readable):
    t = np.arange(SR // 2) / SR
    m = run_eval(eval_corpus(tmp_path / "c", name, (0.3 * np.sin(2 * np.pi * 700 * t)).astype(np.float32) if readable
                             else None), tmp_path / "out")
    if readable:
        assert m["n_pool"] == 10 and m["n_stems_unreadable"] == 0
        assert "bad\\udcffname" in (tmp_path / "out" / "rankings.csv").read_text()  # escaped, written, one line
    else:
        assert m["n_pool"] == 9 and m["n_stems_unreadable"] == 1
        [skipped] = m["skipped_stems"]
        assert "characters no file can have" in skipped["reason"] and "\x00" not in skipped["reason"]
    # a second run reads the cache (fingerprints and keys of odd names hash fine)
    again = run_eval(tmp_path / "c", tmp_path / "out")
    assert again["n_songs_from_cache"] == 3 and again["n_pool"] == m["n_pool"]


# --- the Python API's array input ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def default_model():
    from stemjepa import load_model

    return load_model("default", device="cpu").set_precision("fp32")


def music(rate: int, seconds: float = 4.0) -> np.ndarray:
    """(2, N) stereo at `rate`: a few harmonics with vibrato and a pulse, different in each channel."""
    t = np.arange(int(seconds * rate)) / rate
    env = 0.6 + 0.4 * np.sin(2 * np.pi * 2.0 * t) ** 2
    left = sum(0.2 / k * np.sin(2 * np.pi * 220 * k * t + 0.3 * np.sin(2 * np.pi * 5 * t)) for k in range(1, 6)) * env
    right = 0.8 * left + 0.1 * np.sin(2 * np.pi * 1320 * t)
    return np.stack([left, right]).astype(np.float32)


def cosine(a, b) -> float:
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


def test_embed_48khz_stereo_array_with_its_sample_rate_matches_the_16khz_mono_embedding(default_model):
    ref = default_model.embed(music(16000).mean(axis=0)).vector  # mono 16 kHz: the model's own input
    for wave in (music(48000), music(48000).T):  # (channels, N) and (N, channels)
        got = default_model.embed(wave, sample_rate=48000).vector
        assert cosine(got, ref) > 0.99
    q = default_model.query(music(48000), "bass", sample_rate=48000).vector
    assert cosine(q, default_model.query(music(16000).mean(axis=0), "bass").vector) > 0.99


def test_embed_array_without_a_rate_or_of_ambiguous_layout_is_refused(default_model):
    with pytest.raises(StemJepaError, match="needs its sample rate"):
        default_model.embed(music(48000))  # the case that silently gave a cosine of 0.19
    with pytest.raises(StemJepaError, match="ambiguous layout"):
        default_model.embed(np.zeros((3000, 3000), np.float32), sample_rate=16000)
    with pytest.raises(StemJepaError, match="ambiguous layout"):
        default_model.embed_many([np.zeros((2, 40), np.float32)], sample_rate=16000)
    with pytest.raises(StemJepaError, match=r"waves\[1\]: sample values reach"):
        default_model.embed_many([music(16000)[0], np.full(16000, 1e30, np.float32)])
    with pytest.raises(StemJepaError, match="NaN"):
        default_model.query(np.full(16000, np.nan, np.float32), "bass")


# --- embed --out -----------------------------------------------------------------------------------------------------------
def test_embed_out_writes_the_file_list_beside_the_array_and_exits_nonzero_when_a_file_failed(tmp_path, capsys):
    files = [write(tmp_path / f"s{i}.wav", tone(110.0 * (i + 1), 1.0)) for i in range(3)]
    bad = huge_wav(tmp_path / "huge.wav", 1.0)
    argv = ["embed", str(files[0]), str(bad), str(files[1]), str(files[2]), "--out", str(tmp_path / "x.npy"),
            "--device", "cpu"]
    assert main(argv) == 1
    assert f"skipped {bad}" in capsys.readouterr().out
    array = np.load(tmp_path / "x.npy")
    listing = json.loads((tmp_path / "x.files.json").read_text())
    assert listing["files"] == [str(p) for p in files] and array.shape[0] == len(listing["files"]) == 3
    assert [s["file"] for s in listing["skipped"]] == [str(bad)] and "sample values" in listing["skipped"][0]["reason"]
    assert main(argv) == 2 and "exists already" in capsys.readouterr().err  # never overwritten
    assert main(argv[:1] + [str(f) for f in files] + ["--out", str(tmp_path / "y"), "--device", "cpu"]) == 0
    assert np.load(tmp_path / "y.npy").shape[0] == len(json.loads((tmp_path / "y.files.json").read_text())["files"])


# --- query --export on a full disk ------------------------------------------------------------------------------------------
def test_query_export_on_a_full_disk_leaves_no_partial_wav_and_the_rerun_works(fake_index, tmp_path, monkeypatch, capsys):
    mixes = [write(tmp_path / f"mix{i}.wav", tone(4 * f, 3.0, 0.2)) for i, f in enumerate((98.0, 55.0))]
    out = tmp_path / "export"
    argv = ["query", *map(str, mixes), "--instrument", "bass", "--index", str(fake_index), "-k", "2", "--export",
            str(out)]
    capsys.readouterr()
    full = disk_full_after(sf.write, n_ok=3)  # mix 1's two candidates, mix 2's first; then the disk is full
    with monkeypatch.context() as patch:
        patch.setattr(sf, "write", full)
        assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "disk full" in err[0] and str(out) in err[0] and ".wav" in err[0]
    assert full.calls["n"] == 4
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]  # nothing partial, nothing half-exported
    assert main(argv) == 0  # the re-run is not blocked
    wavs = sorted(out.rglob("*.wav"))
    assert len(wavs) == 4 and all(sf.info(p).frames == 3 * SR for p in wavs)
    assert len(list(out.rglob("results.json"))) == 2 and not list(out.rglob(".*.tmp"))


# --- help texts --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["query", "--help"], ["eval", "beats", "--help"]])
def test_help_texts_name_the_model_chunk_not_a_fixed_8_s(argv, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    text = " ".join(capsys.readouterr().out.split())
    assert "8 s chunk" not in text and "4 s for the default model" in text
