"""The wheel `pip install stemjepa` would get: under PyPI's per-file limit, with the default model and its aliases, and
without the superseded built-in models that pyproject.toml leaves out (a clone still has them)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPI_FILE_LIMIT = 100 * 2**20  # bytes: PyPI's default upload limit per file
LEFT_OUT = ("stemjepa-small-synth-v2", "stemjepa-small-synth-v3")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the tree (the build writes build/ and egg-info next to the sources)."""
    pytest.importorskip("setuptools", minversion="77")  # the build-system requirement, with bdist_wheel built in
    src = tmp_path_factory.mktemp("tree")
    for name in ("pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(out)], capture_output=True, text=True)
    if run.returncode != 0:
        pytest.fail(f"pip wheel failed: {run.stderr[-2000:]}")
    (path,) = out.glob("stemjepa-*.whl")
    return path


def test_the_wheel_fits_pypi_and_holds_the_default_model(wheel):
    assert wheel.stat().st_size < PYPI_FILE_LIMIT, wheel.stat().st_size
    names = set(zipfile.ZipFile(wheel).namelist())
    weights = {Path(n).name for n in names if n.startswith("stemjepa/weights/")}
    aliases = json.loads(zipfile.ZipFile(wheel).read("stemjepa/weights/aliases.json"))
    for model in set(aliases.values()) | {"stemjepa-tiny-synth-v1"}:
        assert {f"{model}.safetensors", f"{model}.json"} <= weights, model
    assert not [n for n in weights if n.startswith(LEFT_OUT)]
    assert all((ROOT / "src/stemjepa/weights" / f"{m}.safetensors").exists() for m in LEFT_OUT)  # the clone keeps them
