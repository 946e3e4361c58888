"""Shared fixtures: a tone corpus in the generic layout and tiny trained checkpoints (phase 1 and phase 2)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `--precision auto` picks bf16 on CPUs with native bf16 (AVX512-BF16/AMX) and fp32 elsewhere: the suite runs in fp32 on
# every machine so that its tolerances do not depend on the CPU (bf16 paths are tested explicitly in test_precision.py)
os.environ.setdefault("STEMJEPA_CPU_BF16", "0")
# indexes built by the suite store no tempo/key (the analyser costs about a second per file and the suite builds hundreds
# of small indexes that do not test it); modules marked `analysis` turn it on (the fixture below)
os.environ.setdefault("STEMJEPA_ANALYSIS", "0")

from toy import write_toy_corpus  # noqa: E402

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """The script benchmarks/NAME.py as a module (benchmarks are scripts, not a package; several reuse
    train_default's stages, hence the folder on sys.path)."""
    import importlib.util

    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY_OVERRIDES = ["data.batch_size=4", "data.num_workers=0", "model.encoder.depth=2", "checkpoint_every=1000"]


@pytest.fixture(scope="session", autouse=True)
def int8_cache(tmp_path_factory):
    """int8 encoder graphs built by `index`/`embed` in the suite (and its CLI subprocesses) go to pytest's temp folder
    (the last runs' are kept, older ones deleted), not to the user's ~/.cache/stemjepa."""
    if "STEMJEPA_CACHE" in os.environ:
        yield
        return
    os.environ["STEMJEPA_CACHE"] = str(tmp_path_factory.mktemp("int8-cache"))
    yield
    os.environ.pop("STEMJEPA_CACHE", None)


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory) -> Path:
    """Four 10 s songs with four labelled stems each (generic multitrack folder)."""
    return write_toy_corpus(tmp_path_factory.mktemp("toy_corpus"), n_songs=4)


def train_tiny(config: str, data: Path, out: Path, steps: int, extra: list[str] | None = None, init: Path | None = None) -> Path:
    from stemjepa.config import load_config
    from stemjepa.training.fit import FitOptions, fit

    cfg = load_config(config, TINY_OVERRIDES + [f"max_steps={steps}"] + list(extra or []))
    return fit(cfg, FitOptions(data=str(data), out=str(out), init=str(init) if init else None, device="cpu", progress=False))


@pytest.fixture(scope="session")
def tiny_phase1_checkpoint(toy_corpus, tmp_path_factory) -> Path:
    """A phase-1 (contrastive only) checkpoint of the tiny config, a few steps on the toy corpus."""
    return train_tiny("tiny_phase1", toy_corpus, tmp_path_factory.mktemp("run_p1"), steps=3)


@pytest.fixture(scope="session")
def tiny_checkpoint(toy_corpus, tmp_path_factory) -> Path:
    """A phase-2 checkpoint of the `tiny` config (FiLM on MiniLM text embeddings), a few steps on the toy corpus."""
    return train_tiny("tiny", toy_corpus, tmp_path_factory.mktemp("run_p2"), steps=3)


@pytest.fixture(scope="module", autouse=True)
def _index_time_analysis(request):
    """STEMJEPA_ANALYSIS=1 for the modules marked `analysis` (set before their module-scoped fixtures build indexes)."""
    marked = request.node.get_closest_marker("analysis") is not None
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STEMJEPA_ANALYSIS", "1" if marked else "0")
        yield
