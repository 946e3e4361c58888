"""benchmarks/index_speed.py and index_profile.py run end to end at tiny sizes (the tiny model; no timing asserted)."""
from __future__ import annotations

import json

import pytest
from conftest import load_benchmark

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def test_index_speed_rows_with_and_without_int8(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STEMJEPA_CACHE", str(tmp_path / "cache"))
    bench = load_benchmark("index_speed")
    out = tmp_path / "r.json"
    assert bench.main(["--quick", "--files", "4", "--no-distributed", "--no-analysis", "--keep", str(tmp_path / "w"),
                       "--quantize", "none,int8", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["quantize"] for r in result["rows"]] == [None, "none", "int8"]
    assert set(result["startup_seconds"]) == {"none", "int8"}
    agree = result["agreement"]["--quantize int8 vs none"]
    assert agree["same_paths"] and agree["min_cosine"] > 0.999
    assert "| index, 1 process, --quantize int8 |" in capsys.readouterr().out
    assert bench.amortised_hours(10.0, 3600.0, 30.0, 5.0) is None  # slower than twice the floor: never
    assert bench.amortised_hours(10.0, 3600.0, 15.0, 5.0) == pytest.approx(0.5 * 5 / (10 / 3600 - 0.5 * 10 / 3600) / 3600)


def test_index_profile_quick(tmp_path, monkeypatch):
    monkeypatch.setenv("STEMJEPA_CACHE", str(tmp_path / "cache"))
    bench = load_benchmark("index_profile")
    out = tmp_path / "p.json"
    assert bench.main(["--quick", "--lib", str(tmp_path / "lib"), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["profile"]["index"]) == {"none", "auto"}
    assert "ONNX Runtime int8, per channel, MatMul (adopted)" in result["candidates"]
