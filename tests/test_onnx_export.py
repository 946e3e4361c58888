"""ONNX export (models/onnx_export.py): onnxruntime against PyTorch on the same audio, reference and query graphs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from stemjepa.config import load_config  # noqa: E402
from stemjepa.models.onnx_export import ConvLogMel, OnnxEmbedder, export_onnx, verify_onnx  # noqa: E402
from stemjepa.models.stemjepa import StemJEPA  # noqa: E402


def signals(sr: int, chunk: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(int(chunk * 2.5)) / sr
    tone = 0.3 * np.sin(2 * np.pi * 110 * t) * (1 + np.sin(2 * np.pi * 2 * t)) + 0.02 * rng.standard_normal(len(t))
    return [tone.astype(np.float32), (0.2 * rng.standard_normal(chunk // 3)).astype(np.float32),
            (0.1 * rng.standard_normal(chunk)).astype(np.float32)]


def cosine(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def phase2_model():
    torch.manual_seed(0)
    cfg = load_config("tiny", ["model.conditioning.kind=classes", "model.encoder.depth=2"])
    cfg.model.conditioning.classes = ["bass", "drums", "music"]
    model = StemJEPA(cfg.model, cfg.phase).eval()
    with torch.no_grad():  # non-zero centres and a target encoder that differs from the context encoder
        model.query_center.normal_(0, 0.1)
        model.reference_center.normal_(0, 0.1)
        for p in model.target_encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


def test_conv_frontend_matches_the_fft_frontend(phase2_model):
    wave = 0.1 * torch.randn(3, phase2_model.chunk_samples)
    a, b = phase2_model.frontend(wave), ConvLogMel(phase2_model.frontend)(wave)
    assert a.shape == b.shape
    assert float((a - b).abs().max()) < 1e-3


def test_export_and_onnxruntime_agree_with_pytorch(phase2_model, tmp_path):
    model = phase2_model
    files = export_onnx(model, tmp_path / "tiny.onnx")
    names = sorted(p.name for p in files)
    assert names == ["tiny.conditions.npy", "tiny.onnx.json", "tiny.query.onnx", "tiny.reference.onnx"]
    assert all(p.is_file() for p in files)
    meta = json.loads((tmp_path / "tiny.onnx.json").read_text())
    assert meta["conditioning"]["labels"] == ["bass", "drums", "music"]
    assert meta["chunk_samples"] == model.chunk_samples and meta["phase"] == 2

    waves = signals(model.sample_rate, model.chunk_samples)
    runner = OnnxEmbedder(tmp_path / "tiny")
    for pt, ox in zip(model.embed_many(waves, precision="fp32"), [runner.embed(w, batch_size=5) for w in waves]):
        assert ox.chunks.shape == pt.chunks.shape
        assert np.abs(ox.chunks - pt.chunks).max() < 1e-3
        assert cosine(ox.vector, pt.vector) > 0.99999
        np.testing.assert_array_equal(ox.weights, pt.weights)
    for label in ("bass", "drums"):
        pt = model.query_many(waves, [label] * 3, precision="fp32")
        ox = [runner.query(w, label) for w in waves]
        for a, b in zip(pt, ox):
            assert np.abs(a.chunks - b.chunks).max() < 1e-3
            assert cosine(a.vector, b.vector) > 0.99999
    # the condition is an input: another label's vector gives another prediction
    assert cosine(runner.query(waves[0], "bass").vector, runner.query(waves[0], "drums").vector) < 0.99999

    report = verify_onnx(model, tmp_path / "tiny")
    for side in ("reference", "query"):
        assert report[side]["max_abs_diff"] < 1e-3 and report[side]["min_cosine"] > 0.99999


def test_phase1_export_has_no_condition_input(tmp_path):
    torch.manual_seed(1)
    model = StemJEPA(load_config("tiny_phase1", ["model.encoder.depth=1"]).model, 1).eval()
    files = export_onnx(model, tmp_path / "p1")
    assert sorted(p.name for p in files) == ["p1.onnx.json", "p1.query.onnx", "p1.reference.onnx"]
    session = ort.InferenceSession(str(tmp_path / "p1.query.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["wave", "valid_patches"]
    report = verify_onnx(model, tmp_path / "p1")
    assert report["reference"]["min_cosine"] > 0.99999 and report["query"]["max_abs_diff"] < 1e-3


@pytest.mark.slow
def test_export_of_a_trained_text_conditioned_checkpoint(tiny_checkpoint, tmp_path):
    from stemjepa.models.checkpoint import load_model

    model = load_model(tiny_checkpoint, device="cpu")
    labels = list(model.conditioner.labels)
    assert labels, "the trained checkpoint carries its text table"
    export_onnx(model, tmp_path / "m")
    runner = OnnxEmbedder(tmp_path / "m")
    assert runner.conditions.shape == (len(labels), model.conditioner.dim)
    report = verify_onnx(model, tmp_path / "m", label=labels[0])
    assert report["reference"]["max_abs_diff"] < 1e-3 and report["reference"]["min_cosine"] > 0.99999
    assert report["query"]["max_abs_diff"] < 1e-3 and report["query"]["min_cosine"] > 0.99999


def test_cli_export_onnx_of_the_builtin_model(tmp_path, capsys):
    """`stemjepa export default OUT --onnx` (cli/export.py calls export_onnx), checked in onnxruntime."""
    registry = pytest.importorskip("stemjepa.models.registry")
    from stemjepa.cli.main import main

    try:
        model = registry.load_model("default", device="cpu")
    except Exception as exc:  # noqa: BLE001 - a checkout without the built-in weights
        pytest.skip(f"no built-in default model ({exc})")
    assert main(["export", "default", str(tmp_path / "default.onnx"), "--onnx"]) == 0
    assert "default.reference.onnx" in capsys.readouterr().out
    report = verify_onnx(model, tmp_path / "default")
    for side in ("reference", "query"):
        assert report[side]["max_abs_diff"] < 1e-3 and report[side]["min_cosine"] > 0.99999, report


def _graph_io(path) -> dict:
    """Inputs and outputs of an ONNX graph as onnxruntime reports them: {name: (shape, dtype)}."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dtype = {"tensor(float)": "float32", "tensor(int64)": "int64"}
    return {side: {a.name: (list(a.shape), dtype[a.type]) for a in args}
            for side, args in (("inputs", session.get_inputs()), ("outputs", session.get_outputs()))}


@pytest.mark.parametrize("phase", [1, 2])
def test_onnx_description_lists_the_shapes_and_dtypes_of_the_graphs(phase, phase2_model, tmp_path, capsys):
    """The description (OUT.onnx.json, and the lines `stemjepa export --onnx` prints) gave the query's `wave` and
    `condition` as ["batch"]: every input and output is now described as the exported graph holds it."""
    from stemjepa.models.onnx_export import describe_graphs

    model = phase2_model if phase == 2 else StemJEPA(load_config("tiny_phase1", ["model.encoder.depth=1"]).model, 1).eval()
    export_onnx(model, tmp_path / "m.onnx")
    meta = json.loads((tmp_path / "m.onnx.json").read_text())
    f, t = model.encoder.grid
    for side in ("reference", "query"):
        described = {k: {n: (e["shape"], e["dtype"]) for n, e in meta[side][k].items()} for k in ("inputs", "outputs")}
        assert described == _graph_io(tmp_path / meta[side]["file"]), side
        assert meta[side]["outputs"]["tokens"]["shape"] == ["batch", f, t, model.embed_dim]
    assert meta["query"]["inputs"]["wave"]["shape"] == ["batch", model.chunk_samples]
    assert ("condition" in meta["query"]["inputs"]) == (phase == 2)
    if phase == 2:
        assert meta["query"]["inputs"]["condition"] == {"shape": ["batch", model.conditioner.dim], "dtype": "float32"}
    lines = describe_graphs(meta)
    assert f"wave [batch, {model.chunk_samples}] float32" in lines[1] and "valid_patches [batch] int64" in lines[0]
