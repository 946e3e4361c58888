"""Inference precision (auto / fp32 / bf16 / fp16), the CPU bf16 capability check, and the streamed cross-file batching."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from stemjepa.config import load_config
from stemjepa.errors import StemJepaError
from stemjepa.models import precision as P
from stemjepa.models.stemjepa import StemJEPA


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    cfg = load_config("tiny", ["model.conditioning.kind=classes", "model.encoder.depth=2"])
    cfg.model.conditioning.classes = ["bass", "drums", "piano", "music"]
    return StemJEPA(cfg.model, cfg.phase).eval()


def waves(n, seed=0, max_seconds=9.0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * max_seconds)) / 16000
    out = []
    for _ in range(n):
        length = int(rng.integers(800, len(t)))
        f = 55.0 * 2 ** (rng.integers(0, 48) / 12)
        out.append((0.3 * np.sin(2 * np.pi * f * t[:length]) + 0.05 * rng.standard_normal(length)).astype(np.float32))
    return out


# --- capability check -------------------------------------------------------------------------------------------------
def test_auto_falls_back_to_fp32_on_a_cpu_without_native_bf16(monkeypatch, tiny_model):
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: False)
    assert P.resolve_precision("auto", "cpu") is None
    assert P.resolve_precision(None, "cpu") is None
    assert tiny_model.resolved_precision("auto") == "fp32"
    assert tiny_model.resolved_precision() == "fp32"  # the model's default is auto


def test_auto_picks_bf16_on_a_cpu_with_native_bf16(monkeypatch, tiny_model):
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    assert P.resolve_precision("auto", "cpu") is torch.bfloat16
    assert tiny_model.resolved_precision() == "bf16"
    assert P.resolve_precision("fp32", "cpu") is None  # fp32 stays fp32


def test_detection_reads_torch_cpuinfo_then_proc_cpuinfo(monkeypatch, tmp_path):
    monkeypatch.delenv(P.ENV_OVERRIDE, raising=False)
    x86 = {"architecture": "x86_64", "avx2": True, "avx512_bf16": False, "amx_bf16": False}
    monkeypatch.setattr(P, "_torch_cpu_flags", lambda: dict(x86))
    assert P.detect_cpu_bf16()[0] is False
    monkeypatch.setattr(P, "_torch_cpu_flags", lambda: {**x86, "avx512_bf16": True})
    ok, why = P.detect_cpu_bf16()
    assert ok and "avx512_bf16" in why
    monkeypatch.setattr(P, "_torch_cpu_flags", lambda: {**x86, "amx_bf16": True})
    assert P.detect_cpu_bf16()[0] is True
    # no torch cpuinfo: /proc/cpuinfo flags (x86 'flags', Arm 'Features')
    monkeypatch.setattr(P, "_torch_cpu_flags", lambda: None)
    cpuinfo = tmp_path / "cpuinfo"
    real = P._proc_cpu_flags
    monkeypatch.setattr(P, "_proc_cpu_flags", lambda path=str(cpuinfo): real(path))
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    assert P.detect_cpu_bf16()[0] is False
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert P.detect_cpu_bf16()[0] is True
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n")
    assert P.detect_cpu_bf16()[0] is True
    cpuinfo.unlink()
    assert P.detect_cpu_bf16()[0] is False  # unreadable: fp32, never a guess


def test_environment_override(monkeypatch):
    monkeypatch.setattr(P, "_torch_cpu_flags", lambda: {"architecture": "x86_64", "avx512_bf16": False})
    monkeypatch.setenv(P.ENV_OVERRIDE, "1")
    assert P.detect_cpu_bf16()[0] is True
    monkeypatch.setenv(P.ENV_OVERRIDE, "0")
    monkeypatch.setattr(P, "_torch_cpu_flags", lambda: {"architecture": "x86_64", "avx512_bf16": True})
    assert P.detect_cpu_bf16()[0] is False


def test_names_and_refusals(tiny_model):
    assert P.check_precision("BF16") == "bf16" and P.check_precision("float32") == "fp32"
    with pytest.raises(StemJepaError, match="unknown"):
        P.check_precision("int8")
    with pytest.raises(StemJepaError, match="CUDA only"):
        P.resolve_precision("fp16", "cpu")
    with pytest.raises(StemJepaError):
        tiny_model.precision = "fp64"
    assert P.resolve_precision("fp32", "cuda") is None  # no CUDA call needed for fp32
    assert "auto ->" in P.describe("cpu")


def test_explicit_bf16_on_a_cpu_without_it_warns_once(monkeypatch):
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(P, "_warned", set())
    with pytest.warns(RuntimeWarning, match="slower"):
        assert P.resolve_precision("bf16", "cpu") is torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        P.resolve_precision("bf16", "cpu")  # once per process


# --- bf16 against fp32 ------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:bf16 asked for")
def test_bf16_embeddings_agree_with_fp32_on_a_tiny_model(tiny_model):
    ws = waves(6, seed=1)
    ref = tiny_model.embed_many(ws, batch_size=8, precision="fp32")
    low = tiny_model.embed_many(ws, batch_size=8, precision="bf16")
    for a, b in zip(ref, low):
        assert b.vector.dtype == np.float32
        cos = float(a.vector @ b.vector / np.linalg.norm(a.vector) / np.linalg.norm(b.vector))
        assert cos > 0.999, cos
    q_ref = tiny_model.query_many(ws, ["bass"] * 6, batch_size=8, precision="fp32")
    q_low = tiny_model.query_many(ws, ["bass"] * 6, batch_size=8, precision="bf16")
    for a, b in zip(q_ref, q_low):
        cos = float(a.vector @ b.vector / np.linalg.norm(a.vector) / np.linalg.norm(b.vector))
        assert cos > 0.995, cos  # the predictor's output, after a second network in bf16


def test_precision_attribute_is_used_by_embed_many(monkeypatch, tiny_model):
    seen = []
    real = tiny_model._pooled

    def spy(batch, valid, labels, target, dtype):
        seen.append(dtype)
        return real(batch, valid, labels, target, None)

    monkeypatch.setattr(tiny_model, "_pooled", spy)
    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    try:
        tiny_model.set_precision("fp32").embed_many(waves(1))
        tiny_model.set_precision("auto").embed_many(waves(1))
        tiny_model.embed_many(waves(1), precision="fp32")
    finally:
        tiny_model.precision = "auto"
    assert seen == [None, torch.bfloat16, None]


# --- streamed batching across files -----------------------------------------------------------------------------------
def test_short_files_share_full_batches(monkeypatch, tiny_model):
    sizes = []
    real = tiny_model._pooled
    monkeypatch.setattr(tiny_model, "_pooled", lambda b, *a: sizes.append(len(b)) or real(b, *a))
    one_shots = [w[:4000] for w in waves(20, seed=2)]  # 0.25 s each: one chunk per file
    tiny_model.embed_many(one_shots, batch_size=8)
    assert sizes == [8, 8, 4]


def test_streamed_tracks_match_one_by_one_and_come_in_order(tiny_model):
    ws = waves(7, seed=3, max_seconds=13.0)
    together = tiny_model.embed_many(ws, batch_size=3)
    alone = [tiny_model.embed(w, batch_size=16) for w in ws]
    for a, b in zip(together, alone):
        assert a.chunks.shape == b.chunks.shape
        np.testing.assert_allclose(a.vector, b.vector, atol=2e-5)
        np.testing.assert_allclose(a.offsets, b.offsets)
        np.testing.assert_array_equal(a.weights, b.weights)
    # a lazy iterator: each track is handed back before later waves are read
    read = []

    def lazy():
        for i, w in enumerate(ws):
            read.append(i)
            yield w

    for k, emb in enumerate(tiny_model.iter_tracks(lazy(), batch_size=2)):
        assert emb.chunks.shape == together[k].chunks.shape
        assert len(read) <= k + 1 + 2  # never more than a batch of chunks ahead
    queries = tiny_model.query_many(ws, ["bass", "drums"] * 3 + ["piano"], batch_size=4)
    for w, lab, q in zip(ws, ["bass", "drums"] * 3 + ["piano"], queries):
        np.testing.assert_allclose(q.vector, tiny_model.query(w, lab).vector, atol=2e-5)


def test_prefetch_keeps_order_and_reports_errors():
    from stemjepa.models.inference import prefetch

    def load(x):
        if x == 3:
            raise ValueError("bad")
        return x * 10

    got = []
    for item, fut in prefetch(range(7), load, workers=2, ahead=3):
        try:
            got.append((item, fut.result()))
        except ValueError:
            got.append((item, None))
    assert got == [(0, 0), (1, 10), (2, 20), (3, None), (4, 40), (5, 50), (6, 60)]


# --- command line -----------------------------------------------------------------------------------------------------
def write_wavs(folder, n=3, seconds=(0.3, 5.0, 11.0)):
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, w in enumerate(waves(n, seed=5, max_seconds=12.0)):
        w = w[: int(16000 * seconds[i % len(seconds)])]
        sf.write(folder / f"s{i}.wav", w, 16000)
        paths.append(folder / f"s{i}.wav")
    return paths


def test_cli_embed_streams_files_with_a_precision(tiny_phase1_checkpoint, tmp_path, capsys):
    from stemjepa.audio.io import load_audio
    from stemjepa.cli.main import main
    from stemjepa.models.checkpoint import load_model

    paths = write_wavs(tmp_path / "wavs")
    bad = tmp_path / "wavs" / "bad.wav"
    bad.write_bytes(b"not audio")
    argv = ["embed", str(paths[0]), str(bad), str(paths[1]), str(paths[2]), "--checkpoint", str(tiny_phase1_checkpoint),
            "--device", "cpu", "--batch-size", "2", "--precision", "fp32", "--out", str(tmp_path / "e.npy")]
    assert main(argv) == 1  # one file skipped
    assert "bad.wav" in capsys.readouterr().out
    got = np.load(tmp_path / "e.npy")
    model = load_model(tiny_phase1_checkpoint, device="cpu")
    want = np.stack([e.vector for e in model.embed_many([load_audio(p, 16000) for p in paths], precision="fp32")])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert main(["embed", str(paths[0]), "--checkpoint", str(tiny_phase1_checkpoint), "--device", "cpu",
                 "--precision", "fp16"]) == 2
    assert "CUDA only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["embed", str(paths[0]), "--checkpoint", str(tiny_phase1_checkpoint), "--precision", "int8"])


def test_cli_index_and_query_take_a_precision(tiny_phase1_checkpoint, tmp_path, capsys, monkeypatch):
    import json

    from stemjepa.cli.main import main

    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: False)  # auto = fp32 here, whatever this CPU has
    paths = write_wavs(tmp_path / "lib")
    assert main(["index", str(tmp_path / "lib"), "--checkpoint", str(tiny_phase1_checkpoint), "--out",
                 str(tmp_path / "idx"), "--device", "cpu", "--quiet", "--precision", "fp32"]) == 0
    capsys.readouterr()
    assert main(["query", str(paths[1]), "--instrument", "bass", "--index", str(tmp_path / "idx"), "--device", "cpu",
                 "--precision", "auto", "--json", "-k", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["results"]) == 3
