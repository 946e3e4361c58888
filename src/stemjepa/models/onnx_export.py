"""ONNX export of a StemJEPA model, for plug-ins and other runtimes (onnxruntime, ...): `export_onnx(model, out)`.

Files written for the prefix OUT (`OUT` or `OUT.onnx` given):

- `OUT.reference.onnx`: the reference (stem) side, used to index a library: input `wave` (B, chunk_samples) float32 mono
  audio at the model's sample rate, `valid_patches` (B,) int64, the number of time patches per chunk that hold audio
  (`ceil(len / patch_samples)` for a short last chunk, all of them otherwise); outputs `embedding` (B, d), the chunk's
  mean patch embedding (minus the model's reference centre when it centres embeddings), and `tokens` (B, F, T, d).
  Target encoder for phase-2 models (the EMA encoder that references are embedded with), the encoder for phase 1.
- `OUT.query.onnx`: the query (mix) side: the context encoder and, for phase-2 models, the predictor with its
  conditioning. Inputs `wave`, `valid_patches` as above and, for phase 2, `condition` (B, p) float32: the conditioning
  vector of the instrument, so the graph needs no text model. Outputs `embedding` (B, d) (minus the query centre) and
  `tokens`. A phase-1 model's query is the mix embedding itself (no `condition`).
- `OUT.conditions.npy` (N, p) float32 and, in `OUT.onnx.json`, the N labels of its rows: the conditioning vectors of
  every label the model knows (text conditioning: the frozen text encoder's embedding of each label seen in training,
  the table saved in the checkpoint; classes: the learned class embeddings). A new free-text label needs the
  model's text encoder (`minilm` / `clap`, `stemjepa.models.text_encoders.get_text_encoder(...).encode([label])`),
  run outside the graph; its vector goes into `condition` unchanged.
- `OUT.onnx.json`: sample rate, chunk and patch lengths, grid, dimensions, model id, the files, and each graph's inputs
  and outputs with their shapes (`"batch"` for the dynamic batch dimension) and dtypes, as in the graphs
  (tests/test_onnx_export.py compares them with what onnxruntime reports).

The log-mel front-end is inside both graphs. torch.stft (complex output) has no ONNX export, so the graphs compute
the same centred STFT as a strided convolution with fixed windowed cos / sin kernels (reflect padding, periodic Hann,
n_fft, hop), then power, the Slaney mel filterbank, log and the model's mean / std. This agrees with the FFT of the
PyTorch model to float32 rounding (checked by `verify_onnx` and tests/test_onnx_export.py).

A track's embedding from the chunk embeddings e_i and their `valid_patches` w_i: sum_i w_i e_i / sum_i w_i (what
`embed_many` returns as `vector`); cut a track into chunks of `chunk_samples`, padding the last with zeros.

Exporter: torch.onnx's TorchScript exporter (`dynamo=False`, opset 17), so onnxscript is not needed; the batch
dimension is dynamic. The graphs are float32 (onnxruntime picks its own kernels per CPU).
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..fsutil import atomic_write, atomic_write_text

OPSET = 17
FORMAT = "stemjepa-onnx/1"


class ConvLogMel(nn.Module):
    """The model's LogMelFrontend with the STFT as a convolution (exportable): (B, N) -> (B, n_mels, frames)."""

    def __init__(self, frontend):
        super().__init__()
        cfg = frontend.cfg
        self.n_fft, self.hop, self.log_eps = cfg.n_fft, cfg.hop_length, float(cfg.log_eps)
        window = torch.hann_window(cfg.win_length, periodic=True, dtype=torch.float64)
        if cfg.win_length < cfg.n_fft:  # torch.stft centres a shorter window in the frame
            left = (cfg.n_fft - cfg.win_length) // 2
            window = torch.nn.functional.pad(window, (left, cfg.n_fft - cfg.win_length - left))
        n_bins = cfg.n_fft // 2 + 1
        n = torch.arange(cfg.n_fft, dtype=torch.float64)
        k = torch.arange(n_bins, dtype=torch.float64)
        angle = 2 * math.pi * k[:, None] * n[None, :] / cfg.n_fft
        kernels = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])  # (2 * bins, n_fft)
        self.register_buffer("kernels", kernels.float()[:, None, :])
        self.register_buffer("mel_fb", frontend.mel_fb.detach().float().cpu().clone())
        self.register_buffer("norm_mean", frontend.norm_mean.detach().float().cpu().clone())
        self.register_buffer("norm_std", frontend.norm_std.detach().float().cpu().clone())
        self.n_bins = n_bins

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        pad = self.n_fft // 2
        x = torch.nn.functional.pad(wave[:, None, :], (pad, pad), mode="reflect")
        spec = torch.nn.functional.conv1d(x, self.kernels, stride=self.hop)  # (B, 2 * bins, frames)
        real, imag = spec[:, : self.n_bins], spec[:, self.n_bins:]
        power = real * real + imag * imag
        mel = torch.matmul(self.mel_fb, power)
        return (torch.log(mel + self.log_eps) - self.norm_mean) / self.norm_std


def _pool(tokens: torch.Tensor, valid: torch.Tensor, center: torch.Tensor | None) -> torch.Tensor:
    """Mean over all frequency rows and the first `valid` time patches of (B, F, T, d) tokens, minus `center`."""
    t = tokens.shape[2]
    mask = (torch.arange(t, device=tokens.device)[None, :] < valid[:, None]).to(tokens.dtype)  # (B, T)
    sums = (tokens * mask[:, None, :, None]).sum(dim=(1, 2))
    out = sums / (mask.sum(dim=1, keepdim=True) * tokens.shape[1])
    return out - center if center is not None else out


class _Side(nn.Module):
    """One exported graph: front-end, an encoder, optionally the predictor, pooling."""

    def __init__(self, model, encoder: nn.Module, predictor: nn.Module | None, center: torch.Tensor | None):
        super().__init__()
        self.frontend = ConvLogMel(model.frontend)
        self.encoder = encoder
        self.predictor = predictor
        self.register_buffer("center", center.detach().float().clone() if center is not None else None)

    def forward(self, wave, valid_patches, condition=None):
        tokens = self.encoder(self.frontend(wave))
        if self.predictor is not None:
            tokens = self.predictor(tokens, condition)
        return _pool(tokens, valid_patches, self.center), tokens


def _prefix(out_path) -> Path:
    p = Path(out_path)
    return p.with_suffix("") if p.suffix == ".onnx" else p


def _condition_table(model) -> tuple[np.ndarray, list[str], str]:
    cond = model.conditioner
    if hasattr(cond, "table"):
        return cond.table.detach().float().cpu().numpy(), list(cond.labels), "text"
    return cond.embedding.weight.detach().float().cpu().numpy(), list(cond.classes), "classes"


def _export(module: nn.Module, args: tuple, path: Path, input_names: list[str]) -> None:
    """One graph, written atomically (a temporary name, then renamed): a failed export leaves no half-written file."""
    dynamic = {name: {0: "batch"} for name in input_names + ["embedding", "tokens"]}

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(module, args, str(tmp), input_names=input_names, output_names=["embedding", "tokens"],
                              dynamic_axes=dynamic, opset_version=OPSET, dynamo=False, do_constant_folding=True)

    atomic_write(path, write, by_name=True)


def _tensor(shape: list, dtype: str = "float32") -> dict:
    return {"shape": shape, "dtype": dtype}


def graph_io(model, condition: bool) -> dict:
    """Inputs and outputs of one exported graph, with shapes ("batch": the dynamic dimension) and dtypes."""
    f, t = model.encoder.grid
    d = int(model.embed_dim)
    inputs = {"wave": _tensor(["batch", int(model.chunk_samples)]), "valid_patches": _tensor(["batch"], "int64")}
    if condition:
        inputs["condition"] = _tensor(["batch", int(model.conditioner.dim)])
    return {"inputs": inputs, "outputs": {"embedding": _tensor(["batch", d]), "tokens": _tensor(["batch", int(f), int(t), d])}}


def export_onnx(model, out_path) -> list[Path]:
    """Write the reference and query graphs of `model` (a loaded StemJEPA), the conditioning table and a JSON
    description under the prefix `out_path` (a trailing .onnx is dropped). Returns the files written."""
    try:
        import onnx  # noqa: F401 - torch.onnx.export writes through it
    except ImportError:
        from ..errors import StemJepaError

        raise StemJepaError("ONNX export needs the onnx package: pip install 'stemjepa[onnx]' (onnx, onnxruntime)") from None
    prefix = _prefix(out_path)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    device = model.device
    model = model.eval()
    try:
        model.to("cpu")
        files, labels, kind = _write_graphs(model, prefix)
    finally:
        model.to(device)
        model.train(was_training)
    meta_path = Path(f"{prefix}.onnx.json")
    atomic_write_text(meta_path, json.dumps(_description(model, prefix, labels, kind), indent=1))
    return [*files, meta_path]


def _write_graphs(model, prefix: Path) -> tuple[list[Path], list[str], str | None]:
    """The reference graph, the query graph and (phase 2) the conditioning table of `model` (on the CPU, in eval mode);
    returns the files, the table's labels and the conditioning kind."""
    phase2, centred = bool(model.has_predictor), bool(model.center_embeddings)
    example = 0.1 * torch.randn(2, model.chunk_samples, generator=torch.Generator().manual_seed(0))
    valid = torch.tensor([model.chunk_samples // model.patch_samples, 1], dtype=torch.long)
    ref_encoder = model.target_encoder if phase2 else model.encoder
    ref = _Side(model, ref_encoder, None, model.reference_center if centred else None).eval()
    ref_path = Path(f"{prefix}.reference.onnx")
    _export(ref, (example, valid), ref_path, ["wave", "valid_patches"])
    files = [ref_path]

    query_inputs = ["wave", "valid_patches"]
    q_args: tuple = (example, valid)
    table, labels, kind = (None, [], None)
    if phase2:
        table, labels, kind = _condition_table(model)
        query_inputs.append("condition")
        cond = torch.from_numpy(table[:1].repeat(2, 0)) if len(table) else torch.zeros(2, model.conditioner.dim)
        q_args = (example, valid, cond)
    query = _Side(model, model.encoder, model.predictor if phase2 else None,
                  model.query_center if centred else None).eval()
    query_path = Path(f"{prefix}.query.onnx")
    _export(query, q_args, query_path, query_inputs)
    files.append(query_path)
    if phase2:
        cond_path = Path(f"{prefix}.conditions.npy")
        atomic_write(cond_path, lambda fh: np.save(fh, np.asarray(table, dtype=np.float32)))
        files.append(cond_path)
    return files, labels, kind


def _description(model, prefix: Path, labels: list[str], kind: str | None) -> dict:
    """OUT.onnx.json: what a runtime needs to feed the graphs and pool their outputs into track embeddings."""
    phase2 = bool(model.has_predictor)
    f, t = model.encoder.grid
    return {
        "format": FORMAT,
        "model_id": str(model.model_id),
        "phase": 2 if phase2 else 1,
        "sample_rate": int(model.sample_rate),
        "chunk_samples": int(model.chunk_samples),
        "patch_samples": int(model.patch_samples),
        "grid": [int(f), int(t)],
        "embed_dim": int(model.embed_dim),
        "centered": bool(model.center_embeddings),
        "opset": OPSET,
        "frontend": "in graph (STFT as a convolution with windowed DFT kernels, mel, log, normalisation)",
        "reference": {"file": f"{prefix.name}.reference.onnx", **graph_io(model, condition=False),
                      "encoder": "target_encoder" if phase2 else "encoder"},
        "query": {"file": f"{prefix.name}.query.onnx", **graph_io(model, condition=phase2), "encoder": "encoder",
                  "predictor": phase2},
        "conditioning": None if not phase2 else {
            "kind": kind, "dim": int(model.conditioner.dim), "file": f"{prefix.name}.conditions.npy", "labels": labels,
            "text_backend": model.conditioner.backend if kind == "text" else None,
            "note": "row i of the table is the condition vector of labels[i]; text labels are normalised (lower case, "
                    "single spaces, '_' -> ' '); a new text label: the text encoder's embedding, computed outside"},
        "track_vector": "sum_i valid_patches_i * embedding_i / sum_i valid_patches_i over the track's chunks",
    }


def describe_graphs(meta: dict) -> list[str]:
    """One line per graph of an export's description: its inputs and outputs with their shapes and dtypes."""
    def side(entries: dict) -> str:
        return ", ".join(f"{name} [{', '.join(map(str, e['shape']))}] {e['dtype']}" for name, e in entries.items())

    return [f"{name} graph {meta[name]['file']}: {side(meta[name]['inputs'])} -> {side(meta[name]['outputs'])}"
            for name in ("reference", "query")]


# ----------------------------------------------------------------------------------------------------------------------
# running an export (onnxruntime) and checking it against PyTorch
# ----------------------------------------------------------------------------------------------------------------------
class OnnxEmbedder:
    """Embed tracks with an exported model in onnxruntime, the same way `embed_many` / `query_many` do in PyTorch.

    >>> emb = OnnxEmbedder("out/model")                 # the prefix given to export_onnx
    >>> emb.embed(wave).vector, emb.query(mix, condition_vector).vector
    """

    def __init__(self, prefix, providers: list[str] | None = None):
        import onnxruntime as ort

        from ..errors import StemJepaError
        from ..fsutil import read_json

        prefix = _prefix(prefix)
        self.meta = read_json(Path(f"{prefix}.onnx.json"), error=StemJepaError)
        folder = Path(f"{prefix}.onnx.json").parent
        opts = ort.SessionOptions()
        providers = providers or ["CPUExecutionProvider"]
        self.reference = ort.InferenceSession(str(folder / self.meta["reference"]["file"]), opts, providers=providers)
        self.query_session = ort.InferenceSession(str(folder / self.meta["query"]["file"]), opts, providers=providers)
        cond = self.meta.get("conditioning")
        self.conditions = np.load(folder / cond["file"]) if cond else None
        self.labels = cond["labels"] if cond else []

    def condition(self, label: str) -> np.ndarray:
        """The stored condition vector of a known label (text: normalised spelling; classes: the class name)."""
        from ..data.labels import label_key

        key = label_key(label)
        if key not in self.labels:
            raise KeyError(f"label {label!r} not in the exported table; embed it with the model's text encoder")
        return self.conditions[self.labels.index(key)]

    def _run(self, session, wave: np.ndarray, condition: np.ndarray | None, batch_size: int):
        from .inference import TrackEmbedding, split_chunks

        m = self.meta
        chunks, valid = split_chunks(wave, m["chunk_samples"], m["patch_samples"])
        outs = []
        for s in range(0, len(chunks), batch_size):
            feeds = {"wave": chunks[s:s + batch_size], "valid_patches": valid[s:s + batch_size].astype(np.int64)}
            if condition is not None:
                feeds["condition"] = np.repeat(np.asarray(condition, np.float32).reshape(1, -1), len(feeds["wave"]), 0)
            outs.append(session.run(["embedding"], feeds)[0])
        e = np.concatenate(outs).astype(np.float32)
        w = valid.astype(np.float64)
        vector = (e.astype(np.float64) * w[:, None]).sum(0) / w.sum()
        offsets = (np.arange(len(e)) * m["chunk_samples"] / m["sample_rate"]).astype(np.float32)
        return TrackEmbedding(chunks=e, offsets=offsets, weights=valid.astype(np.float32), vector=vector.astype(np.float32))

    def embed(self, wave: np.ndarray, batch_size: int = 8):
        return self._run(self.reference, wave, None, batch_size)

    def query(self, mix: np.ndarray, condition=None, batch_size: int = 8):
        """`condition`: a label known to the table, or a condition vector (p,); ignored by phase-1 exports."""
        if self.meta["phase"] == 1:
            condition = None
        elif isinstance(condition, str):
            condition = self.condition(condition)
        elif condition is None:
            raise ValueError("a phase-2 query needs a condition (a label or its vector)")
        return self._run(self.query_session, mix, condition, batch_size)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def verify_onnx(model, prefix, waves: list[np.ndarray] | None = None, label: str | None = None) -> dict:
    """Embed `waves` (default: two generated test signals) with the export in onnxruntime and with `model` in PyTorch
    fp32; returns the worst max abs difference and the lowest cosine of the track vectors, reference and query side."""
    if waves is None:
        rng = np.random.default_rng(0)
        sr = model.sample_rate
        t = np.arange(int(sr * model.chunk_samples / sr * 1.6)) / sr
        waves = [(0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32),
                 (0.2 * rng.standard_normal(len(t) // 3)).astype(np.float32)]
    runner = OnnxEmbedder(prefix)
    report = {}
    ref_pt = model.embed_many(waves, precision="fp32")
    ref_ox = [runner.embed(w) for w in waves]
    if model.has_predictor:
        label = label or (runner.labels[0] if runner.labels else None)
        if label is None:
            raise ValueError("the export's condition table is empty: give a label the model knows")
        q_pt = model.query_many(waves, [label] * len(waves), precision="fp32")
        cond = model.condition([label]).detach().float().cpu().numpy()[0]
        q_ox = [runner.query(w, cond) for w in waves]
    else:
        q_pt = model.query_many(waves, ["music"] * len(waves), precision="fp32")
        q_ox = [runner.query(w) for w in waves]
    for side, pt, ox in (("reference", ref_pt, ref_ox), ("query", q_pt, q_ox)):
        report[side] = {
            "max_abs_diff": max(float(np.abs(a.chunks - b.chunks).max()) for a, b in zip(pt, ox)),
            "min_cosine": min(_cosine(a.vector, b.vector) for a, b in zip(pt, ox)),
            "max_abs": max(float(np.abs(a.chunks).max()) for a in pt),
        }
    return report


__all__ = ["export_onnx", "OnnxEmbedder", "verify_onnx", "ConvLogMel", "describe_graphs", "graph_io"]
