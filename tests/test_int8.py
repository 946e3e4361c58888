"""int8 reference embedding (models/int8.py, `--quantize`): close to the default path, used end to end by index and
query, chosen by `auto` only where it runs, and a clear fallback where it cannot."""
from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import load_benchmark

from stemjepa.config import load_config
from stemjepa.errors import StemJepaError
from stemjepa.models import int8 as I
from stemjepa.models import precision as P
from stemjepa.models.stemjepa import StemJEPA

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

# bound on the tests' tiny models (random or 3 training steps): the track vectors of the int8 path and of fp32 PyTorch
# agree to this cosine (measured: min 0.99998 on the random tiny model; the built-in model: min 0.9994 against bf16, RESULTS)
MIN_COSINE = 0.999


@pytest.fixture(autouse=True)
def vnni(monkeypatch, tmp_path_factory):
    """A CPU with int8 dot products, whatever this one has (ONNX Runtime's int8 kernels run on any x86-64 or Arm CPU)."""
    monkeypatch.setattr(I, "detect_cpu_int8", lambda: (True, "test: avx512_vnni"))
    monkeypatch.setattr(I, "_warned", set())
    monkeypatch.delenv(I.ENV_DEFAULT, raising=False)
    monkeypatch.setenv(I.CACHE_ENV, str(tmp_path_factory.getbasetemp() / "int8-cache"))


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    cfg = load_config("tiny", ["model.conditioning.kind=classes", "model.encoder.depth=2"])
    cfg.model.conditioning.classes = ["bass", "drums", "music"]
    return StemJEPA(cfg.model, cfg.phase).eval()


def waves(seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(16000 * 9) / 16000
    out = []
    for n in (3000, 16000 * 3, 16000 * 9):  # a padded one-shot, one chunk-ish, several chunks
        f = 55.0 * 2 ** (rng.integers(0, 48) / 12)
        out.append((0.3 * np.sin(2 * np.pi * f * t[:n]) + 0.05 * rng.standard_normal(n)).astype(np.float32))
    return out


def cosine(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_int8_embeddings_are_close_to_the_default_path(tiny_model):
    ref = tiny_model.embed_many(waves(), precision="fp32")
    tiny_model.quantize = "int8"
    try:
        got = tiny_model.embed_many(waves(), precision="fp32")  # an explicit int8 runs whatever the precision
        queries = tiny_model.query_many(waves(), ["bass"] * 3, precision="fp32")
    finally:
        tiny_model.quantize = "none"
    for a, b in zip(ref, got):
        assert a.chunks.shape == b.chunks.shape and np.array_equal(a.weights, b.weights)
        assert cosine(a.vector, b.vector) >= MIN_COSINE
        assert not np.array_equal(a.vector, b.vector)  # the int8 graph did run
    want = tiny_model.query_many(waves(), ["bass"] * 3, precision="fp32")
    for a, b in zip(want, queries):  # queries stay in PyTorch
        np.testing.assert_allclose(a.vector, b.vector, atol=1e-6)


def test_auto_picks_int8_only_where_it_runs(monkeypatch, tiny_model):
    assert I.use_int8("auto", "auto", "cpu")
    assert not I.use_int8("auto", "fp32", "cpu") and not I.use_int8("auto", "bf16", "cpu")  # a precision was asked for
    assert not I.use_int8("none", "auto", "cpu")
    assert not I.use_int8("auto", "auto", "meta")  # not a CPU: quietly off
    monkeypatch.setattr(I, "detect_cpu_int8", lambda: (False, "no int8 dot-product flag"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto falls back without a word
        assert not I.use_int8("auto", "auto", "cpu")
    assert tiny_model.int8_encoder("auto") is None


def test_an_unsupported_cpu_falls_back_with_a_clear_message(monkeypatch, tiny_model):
    monkeypatch.setattr(I, "detect_cpu_int8", lambda: (False, "torch cpuinfo: no avx512_vnni / avx_vnni / amx_int8"))
    want = tiny_model.embed_many(waves(), precision="fp32")
    tiny_model.quantize = "int8"
    try:
        with pytest.warns(RuntimeWarning, match="no int8 dot-product instructions.*avx512_vnni.*--quantize none"):
            got = tiny_model.embed_many(waves(), precision="fp32")
    finally:
        tiny_model.quantize = "none"
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a.vector, b.vector)


def test_a_missing_runtime_falls_back_with_a_clear_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    assert "onnxruntime is not installed (pip install 'stemjepa[onnx]')" in I.int8_problem("cpu")
    with pytest.warns(RuntimeWarning, match="onnxruntime is not installed"):
        assert not I.use_int8("int8", "auto", "cpu")
    assert "onnxruntime is not installed" in I.describe("auto", "auto")


def test_names_environment_default_and_refusals(monkeypatch, tiny_model):
    assert I.check_quantize(None) == "none" and I.check_quantize(" INT8 ") == "int8"
    with pytest.raises(StemJepaError, match="choose from auto, none, int8"):
        I.check_quantize("int4")
    with pytest.raises(StemJepaError, match="choose from"):
        tiny_model.quantize = "fp8"
    assert tiny_model.quantize == "none"
    monkeypatch.setenv(I.ENV_DEFAULT, "int8")
    tiny_model.quantize = None  # back to the default
    try:
        assert tiny_model.quantize == "int8"
    finally:
        tiny_model.quantize = "none"
    monkeypatch.setenv(I.ENV_DEFAULT, "int4")
    with pytest.raises(StemJepaError, match=I.ENV_DEFAULT):
        I.default_quantize()


def test_the_graph_is_rebuilt_when_the_weights_change(tiny_model):
    enc = tiny_model.target_encoder
    n_mels, frames = tiny_model.frontend.cfg.n_mels, tiny_model.frontend.num_frames(tiny_model.chunk_samples)
    first = I.int8_encoder(enc, n_mels, frames)
    assert I.int8_encoder(enc, n_mels, frames) is first
    with torch.no_grad():
        enc.norm.bias.add_(0.0)  # an in-place update (a training step)
    assert I.int8_encoder(enc, n_mels, frames) is not first


def test_the_graph_is_kept_on_disk_and_a_damaged_one_is_rebuilt(monkeypatch, tmp_path, tiny_model):
    monkeypatch.setenv(I.CACHE_ENV, str(tmp_path / "cache"))
    enc, build = tiny_model.encoder, I.quantized_graph
    shape = (tiny_model.frontend.cfg.n_mels, tiny_model.frontend.num_frames(tiny_model.chunk_samples))
    mel = torch.randn(2, *shape)
    want = I.Int8Encoder(enc, *shape)(mel)
    [path] = (tmp_path / "cache" / "int8").glob("encoder-*.onnx")
    assert path == I.cached_graph_path(enc, *shape)
    builds = []
    monkeypatch.setattr(I, "quantized_graph", lambda *a: builds.append(a) or build(*a))
    torch.testing.assert_close(I.Int8Encoder(enc, *shape)(mel), want)  # read from the file
    assert not builds
    path.write_bytes(b"not a graph")
    torch.testing.assert_close(I.Int8Encoder(enc, *shape)(mel), want)  # rebuilt, and the file replaced
    assert len(builds) == 1 and path.stat().st_size > 1000
    monkeypatch.setenv(I.CACHE_ENV, "off")
    assert I.cache_folder() is None and I.cached_graph_path(enc, *shape) is None


def test_detection_reads_torch_cpuinfo_then_proc_cpuinfo(monkeypatch, tmp_path):
    x86 = {"architecture": "x86_64", "avx2": True, "avx512_vnni": False, "avx_vnni": False, "amx_int8": False}
    monkeypatch.setattr(P, "_torch_cpu_flags", lambda: dict(x86))
    assert P.detect_cpu_int8() == (False, "torch cpuinfo: no avx512_vnni / avx_vnni / amx_int8")
    monkeypatch.setattr(P, "_torch_cpu_flags", lambda: {**x86, "avx512_vnni": True})
    assert P.detect_cpu_int8() == (True, "torch cpuinfo: avx512_vnni")
    monkeypatch.setattr(P, "_torch_cpu_flags", lambda: None)  # e.g. Arm: /proc/cpuinfo's Features
    monkeypatch.setattr(P, "_proc_cpu_flags", lambda: {"fp", "asimd", "asimddp"})
    assert P.detect_cpu_int8() == (True, "/proc/cpuinfo: asimddp")
    monkeypatch.setattr(P, "_proc_cpu_flags", lambda: set())
    ok, why = P.detect_cpu_int8()
    assert not ok and "not readable" in why


def test_index_and_query_with_int8_end_to_end(tiny_phase1_checkpoint, tmp_path, capsys):
    from stemjepa.cli.main import main
    from stemjepa.search import StemIndex

    lib = tmp_path / "lib"
    lib.mkdir()
    for i, w in enumerate(waves(seed=3) + waves(seed=4)):
        sf.write(lib / f"s{i}.wav", w, 16000)
    common = ["--checkpoint", str(tiny_phase1_checkpoint), "--device", "cpu", "--quiet"]
    for q in ("none", "int8"):
        assert main(["index", str(lib), "--out", str(tmp_path / q), "--quantize", q, *common]) == 0
    assert "6 added" in capsys.readouterr().out
    assert main(["query", str(lib / "s2.wav"), "--instrument", "bass", "--index", str(tmp_path / "int8"), "--device",
                 "cpu", "--json", "-k", "6"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert len(results) == 6
    with StemIndex.open(tmp_path / "int8", device="cpu") as index:  # the Python reader: same answers as the CLI
        top = index.query(sf.read(lib / "s2.wav", dtype="float32")[0], "bass", k=6)
    assert [r.path for r in top] == [r["path"] for r in results]
    vectors = load_benchmark("index_speed").vectors  # the live file vectors of an index, by path
    va, vb = (vectors(tmp_path / q) for q in ("none", "int8"))  # the same files, vectors within the bound
    assert sorted(va) == sorted(vb)
    assert min(cosine(va[p], vb[p]) for p in va) >= MIN_COSINE


def test_cli_quantize_option(tiny_phase1_checkpoint, tmp_path, capsys):
    from stemjepa.cli.main import main

    with pytest.raises(SystemExit):
        main(["embed", "a.wav", "--quantize", "int4"])
    assert "invalid choice" in capsys.readouterr().err
    path = tmp_path / "a.wav"
    sf.write(path, waves()[1], 16000)
    out = tmp_path / "e.npy"
    assert main(["embed", str(path), "--checkpoint", str(tiny_phase1_checkpoint), "--device", "cpu", "--quantize", "int8",
                 "--out", str(out)]) == 0
    from stemjepa.models.checkpoint import load_model

    want = load_model(tiny_phase1_checkpoint, device="cpu").embed_many([waves()[1]], precision="fp32")[0].vector
    assert cosine(np.load(out)[0], want) >= MIN_COSINE
