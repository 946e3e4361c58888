"""int8 reference embedding on the CPU: the encoder run in ONNX Runtime with its matrix products dynamically quantised to
int8 (`quantize`: auto | none | int8; `stemjepa index` and `embed --quantize`, `model.quantize = ...`).

Why: on a small CPU the model is half of `stemjepa index`'s work (benchmarks/RESULTS.md, "Index updates and indexing
speed"), and ONNX Runtime's dynamically quantised MatMul on int8 dot-product instructions (AVX512-VNNI) runs the built-in
model's encoder 1.5x as fast as PyTorch's bf16 autocast on the same 2-core CPU (index: 0.55 of the decode floor once
started, against 0.36), with vectors within cosine 0.9994 of the bf16 ones and R@10 unchanged on four pools (R@1 within
one query). PyTorch's own dynamic quantisation (`torch.ao.quantization.quantize_dynamic`) measured 1.23x with 7x the
error, so it is not used. The activations are quantised with each batch's range, so a vector depends a little on the
chunks batched with it (cosine >= 0.9996 between batchings).

Only the reference side runs in int8: the stems an index holds (`embed_many`, `embed_files` without a label). Queries
(context encoder and predictor) stay in PyTorch at the model's precision. The log-mel front-end stays in PyTorch (fp32),
and pooling too, so everything but the encoder's arithmetic is the path of `quantize="none"`.

`auto` picks int8 where all of these hold: the model is on the CPU; the CPU has int8 dot-product instructions
(`precision.detect_cpu_int8`: without them int8 is no faster, and its x86 fallback can saturate); onnxruntime and onnx are
installed (`pip install 'stemjepa[onnx]'`); and no precision other than auto was asked for (`--precision fp32` means fp32
everywhere). `int8` asks for it whatever the precision: where it cannot run, a RuntimeWarning says why, once, and the
model runs as with `none`. `STEMJEPA_QUANTIZE` sets the default of `model.quantize` (`none` otherwise), for tools that
load the model themselves (`stemjepa eval retrieval`).

The quantised graph (TorchScript ONNX export, opset 17, then `onnxruntime.quantization.quantize_dynamic`: int8 weights
per output channel, MatMuls only, which measured both faster and closer to fp32 than per tensor with the patch
convolution) takes 1.3 s to build (0.6 s of it importing onnx), so it is kept on disk, named by the sha256 of the
encoder's weights and the torch / onnxruntime versions: `$STEMJEPA_CACHE/int8` (default `$XDG_CACHE_HOME/stemjepa`, else
`~/.cache/stemjepa`; `STEMJEPA_CACHE=off`: never written). A later process loads it in 0.07 s; a cache that cannot be
written or read is skipped (the graph is built in memory).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import logging
import os
import tempfile
import threading
import warnings
import weakref
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import StemJepaError
from .precision import check_precision, detect_cpu_int8

QUANTIZE = ("auto", "none", "int8")
ENV_DEFAULT = "STEMJEPA_QUANTIZE"
CACHE_ENV = "STEMJEPA_CACHE"
OPSET = 17
RECIPE = "int8-per-channel-matmul/1"  # how quantized_graph quantises: part of a cached graph's name

_built: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # encoder -> (weights key, Int8Encoder)
_lock = threading.Lock()
_warned: set[str] = set()


def check_quantize(value: str | None) -> str:
    """The normalised name ('none' for None), or a StemJepaError naming the choices."""
    q = "none" if value is None else str(value).strip().lower()
    q = {"off": "none", "fp": "none", "qint8": "int8"}.get(q, q)
    if q not in QUANTIZE:
        raise StemJepaError(f"quantize {value!r} unknown (choose from {', '.join(QUANTIZE)})")
    return q


def default_quantize() -> str:
    """The default of `model.quantize`: $STEMJEPA_QUANTIZE, else none (the Python API embeds as it always did)."""
    value = os.environ.get(ENV_DEFAULT, "").strip()
    try:
        return check_quantize(value or None)
    except StemJepaError as exc:
        raise StemJepaError(f"{ENV_DEFAULT}: {exc}") from None


def runtime_problem() -> str | None:
    """Why ONNX Runtime int8 cannot run in this environment (a missing package), None when it can. onnx (to build a
    graph) is looked up, not imported: importing it costs 0.6 s, which a cached graph does not need."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed (pip install 'stemjepa[onnx]')"
    try:
        found = importlib.util.find_spec("onnx") is not None
    except (ImportError, ValueError):
        found = False
    return None if found else "onnx is not installed (pip install 'stemjepa[onnx]')"


def int8_problem(device) -> str | None:
    """Why int8 cannot run for a model on `device` here, None when it can."""
    dev = torch.device(device)
    if dev.type != "cpu":
        return f"int8 runs on the CPU only (the model is on {dev})"
    native, how = detect_cpu_int8()
    if not native:
        return f"this CPU has no int8 dot-product instructions ({how})"
    return runtime_problem()


def use_int8(quantize: str | None, precision: str | None, device) -> bool:
    """Whether a reference batch runs in int8: `quantize` (auto | none | int8) with the precision asked for (auto | fp32
    | bf16 | fp16) on `device`. An explicit int8 that cannot run warns once with the reason and answers False."""
    q = check_quantize(quantize)
    if q == "none" or (q == "auto" and check_precision(precision) != "auto"):
        return False
    problem = int8_problem(device)
    if problem is None:
        return True
    if q == "int8" and problem not in _warned:
        _warned.add(problem)
        warnings.warn(f"--quantize int8: {problem}; embedding without int8 (as --quantize none)", RuntimeWarning,
                      stacklevel=3)
    return False


def describe(quantize: str | None, precision: str | None, device="cpu") -> str:
    """One line for logs and benchmarks: what `quantize` does on `device` and why."""
    q = check_quantize(quantize)
    if use_int8(q, precision, device):
        return f"{q} -> int8 (ONNX Runtime; {detect_cpu_int8()[1]})"
    if q == "none":
        return "none"
    return f"{q} -> none ({int8_problem(device) or 'a precision other than auto was asked for'})"


class Int8Encoder:
    """An encoder as an int8 ONNX Runtime session: log-mel (B, n_mels, frames) -> (B, F, T, d) float32 tokens, as the
    module's forward. The session uses torch's thread count and does not spin between runs, so the decoding threads of
    the pipeline get the cores while it waits."""

    def __init__(self, encoder: nn.Module, n_mels: int, n_frames: int, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = cached_graph_path(encoder, n_mels, n_frames)
        graph = _read(path)
        if graph is not None:
            try:
                self.session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
                return
            except Exception:  # noqa: BLE001 - a damaged cache file: built again and replaced
                pass
        graph = quantized_graph(encoder, n_mels, n_frames)
        self.session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        _write(path, graph)

    def __call__(self, mel: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(mel.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(self.session.run(None, {"mel": x})[0])


def quantized_graph(encoder: nn.Module, n_mels: int, n_frames: int) -> bytes:
    """The serialised ONNX graph of `encoder` (fp32 export, dynamic batch) with its MatMuls quantised to int8."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    buf = io.BytesIO()
    example = torch.zeros(2, n_mels, n_frames)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(encoder, (example,), buf, input_names=["mel"], output_names=["tokens"],
                          dynamic_axes={"mel": {0: "batch"}, "tokens": {0: "batch"}}, opset_version=OPSET,
                          dynamo=False, do_constant_folding=True)
    with tempfile.TemporaryDirectory(prefix="stemjepa-int8-") as tmp, _quiet_root_logger():
        out = Path(tmp) / "encoder.int8.onnx"
        quantize_dynamic(onnx.load_from_string(buf.getvalue()), out, weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"])
        return out.read_bytes()


def cache_folder() -> Path | None:
    """Where built int8 graphs are kept (`int8/` inside it), None when $STEMJEPA_CACHE is off."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "0", "off", "none") else Path(value).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "stemjepa"


def cached_graph_path(encoder: nn.Module, n_mels: int, n_frames: int) -> Path | None:
    """The cache file of `encoder`'s int8 graph: named by its weights and what built it, so nothing stale is loaded."""
    import onnxruntime

    from .digest import weights_digest

    folder = cache_folder()
    if folder is None:
        return None
    how = f"{RECIPE} opset {OPSET} torch {torch.__version__} onnxruntime {onnxruntime.__version__} {n_mels}x{n_frames}"
    tag = hashlib.sha256(how.encode()).hexdigest()[:12]
    return folder / "int8" / f"encoder-{weights_digest(encoder)[:32]}-{tag}.onnx"


def _read(path: Path | None) -> bytes | None:
    try:
        return path.read_bytes() if path is not None else None
    except OSError:
        return None


def _write(path: Path | None, graph: bytes) -> None:
    """Keep a built graph for later processes; a cache that cannot be written is skipped (it only saves time)."""
    if path is None:
        return
    from ..fsutil import atomic_write

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda fh: fh.write(graph))
    except (OSError, StemJepaError):
        pass


@contextlib.contextmanager
def _quiet_root_logger():
    """ONNX Runtime's quantiser logs advice (run its pre-processing: measured, no faster here) on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


@contextlib.contextmanager
def one_torch_thread():
    """PyTorch on one thread inside (the int8 path's front-end and pooling, a few % of its work): measured on 2 cores,
    its OpenMP team spinning after each small op beside the decoding threads cost more than the op (index 0.8x)."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _weights_key(module: nn.Module) -> tuple:
    """Changes when a weight is replaced or updated in place (training between two embeddings)."""
    return tuple((t.data_ptr(), t._version) for t in (*module.parameters(), *module.buffers()))


def int8_encoder(encoder: nn.Module, n_mels: int, n_frames: int) -> Int8Encoder:
    """The Int8Encoder of `encoder`, built on first use and again only when its weights changed."""
    key = (_weights_key(encoder), n_mels, n_frames, torch.get_num_threads())
    with _lock:
        got = _built.get(encoder)
        if got is None or got[0] != key:
            got = (key, Int8Encoder(encoder, n_mels, n_frames))
            _built[encoder] = got
        return got[1]


__all__ = ["QUANTIZE", "ENV_DEFAULT", "check_quantize", "default_quantize", "int8_problem", "runtime_problem", "use_int8",
           "describe", "Int8Encoder", "quantized_graph", "int8_encoder", "one_torch_thread", "cache_folder",
           "cached_graph_path"]
