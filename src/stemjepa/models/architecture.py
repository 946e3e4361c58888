"""What a model config describes, checked before anything is allocated: the bounds of every size in it, the number of
values its tensors hold, and the names, shapes and dtypes of the tensors a model file must hold for it.

A checkpoint or export carries its config, and the model is built from that config before the weights are loaded: a
file whose config asks for a huge model (a 100 000-wide encoder, a million layers, a chunk of hours) would allocate that
model first. So the loaders (`checkpoint.load_model`, `export.load_export`, `fit --resume`) read the file's tensor
names, shapes and dtypes without reading the tensors, compare them with the tensors of the config's model built on the
`meta` device (shapes only, no memory), and only then build the real model; `StemJEPA.__init__` itself checks the sizes
first (`check_model_config`), so a hand-made config cannot allocate an absurd model either.
"""
from __future__ import annotations

import torch

from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError

# The paper's phase-2 model (ViT-Base encoder and its EMA target, 6 x 1024 predictor) holds about 185 M values, phase 1
# about 86 M. The bound leaves room for a ViT-Large phase-2 model (~620 M) and refuses what no machine of ours would load:
# 1e9 float32 values are 4 GB.
MAX_MODEL_VALUES = 1_000_000_000
# Each size is bounded on its own too, so that counting, the mel filterbank (librosa, numpy) and the shape-only build of a
# hostile config stay small. Every bound is far above the paper's value (in brackets).
MAX_SIZES = {
    "encoder.embed_dim": 4096,     # [768] ViT-Huge is 1280
    "encoder.depth": 128,          # [12]
    "encoder.mlp_ratio": 16,       # [4]
    "encoder.chunk_seconds": 300,  # [8] seconds of audio per chunk
    "encoder.tokens": 16384,       # [5 x 50 = 250] patches per chunk: attention is quadratic in them
    "frontend.sample_rate": 384_000,   # [16000] Hz
    "frontend.n_fft": 16384,       # [400]
    "frontend.n_mels": 512,        # [80]
    "conditioning.classes": 10000,     # [4] class names
    "conditioning.class_dim": 4096,    # [768]
    "conditioning.text_dim": 4096,     # [512] CLAP; MiniLM is 384
    "predictor.num_layers": 64,    # [6]
    "predictor.hidden_dim": 16384,  # [1024]
}
MAX_LABELS = 100_000  # rows of a text conditioner's table (labels seen in training; a corpus has a few hundred)
TEXT_DIM_GUESS = 1024  # conditioning width counted for a text config that does not record its text_dim


def _bound(name: str, value, limit) -> None:
    if value > limit:
        raise ConfigError(f"model.{name}: {value!r} is above the limit of {limit} (see stemjepa.models.architecture)")


def encoder_values(cfg: ModelConfig, d: int, depth: int) -> int:
    """Values (parameters and buffers) of one ViT encoder: patch embedding, positions, blocks, final norm."""
    p = cfg.encoder.patch_size
    gf, gt = patch_grid(cfg)
    h = int(d * cfg.encoder.mlp_ratio)
    block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * h + h) + (h * d + d)
    return (d * p * p + d) + gf * gt * d + depth * block + 2 * d


def predictor_values(d: int, cond_dim: int, cfg: ModelConfig) -> int:
    p = cfg.predictor
    m, layers = p.hidden_dim, p.num_layers
    dims = [d + cond_dim if p.fusion == "concat" else d] + [m] * (layers - 1) + [d]
    linear = sum(dims[i] * dims[i + 1] + dims[i + 1] for i in range(layers))
    film = (cond_dim * 2 * m * (layers - 1) + 2 * m * (layers - 1)) if p.fusion == "film" else 0
    return linear + film + (2 * d if p.final_norm else 0)


def model_values(cfg: ModelConfig, phase: int) -> int:
    """Number of values (parameters and buffers, saved or not) of the StemJEPA that `cfg` and `phase` describe, from the
    config alone. A text conditioner's table (its rows are the training labels) is not counted: it comes from the file."""
    from .encoder import encoder_dims

    f = cfg.frontend
    d, depth, _ = encoder_dims(cfg.encoder)
    total = f.n_mels * (f.n_fft // 2 + 1) + f.win_length + 2
    total += encoder_values(cfg, d, depth) * (2 if phase == 2 else 1)
    if phase == 1:
        total += 1  # log_temperature
    else:
        c = cfg.conditioning
        cond_dim = c.class_dim if c.kind == "classes" else (c.text_dim or TEXT_DIM_GUESS)
        if c.kind == "classes":
            total += len(c.classes) * c.class_dim
        total += predictor_values(d, cond_dim, cfg)
    if cfg.center_embeddings:
        total += 2 * d + 1
    return total


def check_model_config(cfg: ModelConfig, phase: int) -> int:
    """Refuse (ConfigError) a model config with a size above its bound (MAX_SIZES) or describing more than
    MAX_MODEL_VALUES values, before anything is built; returns the number of values."""
    from .encoder import encoder_dims

    e, f, c, p = cfg.encoder, cfg.frontend, cfg.conditioning, cfg.predictor
    d, depth, _ = encoder_dims(e)
    for name, value in (("encoder.embed_dim", d), ("encoder.depth", depth), ("encoder.mlp_ratio", e.mlp_ratio),
                        ("encoder.chunk_seconds", e.chunk_seconds), ("frontend.sample_rate", f.sample_rate),
                        ("frontend.n_fft", f.n_fft), ("frontend.n_mels", f.n_mels),
                        ("conditioning.class_dim", c.class_dim), ("conditioning.text_dim", c.text_dim or 0),
                        ("predictor.num_layers", p.num_layers), ("predictor.hidden_dim", p.hidden_dim)):
        _bound(name, value, MAX_SIZES[name])
    if c.kind == "classes":
        _bound("conditioning.classes", len(c.classes), MAX_SIZES["conditioning.classes"])
    if f.win_length > f.n_fft:
        raise ConfigError(f"model.frontend.win_length: {f.win_length} is longer than n_fft {f.n_fft}")
    if f.hop_length > f.n_fft:
        raise ConfigError(f"model.frontend.hop_length: {f.hop_length} is longer than n_fft {f.n_fft} (samples would be skipped)")
    if phase == 2 and p.num_layers < 2:
        raise ConfigError(f"model.predictor.num_layers: {p.num_layers}; the predictor needs at least 2 layers")
    gf, gt = patch_grid(cfg)
    if gf < 1 or gt < 1:
        raise ConfigError(f"model.encoder.patch_size: {e.patch_size} is larger than the log-mel of a chunk "
                          f"({f.n_mels} mel bands x {num_frames(cfg)} frames)")
    _bound("encoder.tokens", gf * gt, MAX_SIZES["encoder.tokens"])
    n = model_values(cfg, phase)
    if n > MAX_MODEL_VALUES:
        raise ConfigError(f"the model config describes {n:,} values ({n * 4 / 1e9:.1f} GB of float32), above the limit of "
                          f"{MAX_MODEL_VALUES:,} (stemjepa.models.architecture.MAX_MODEL_VALUES)")
    return n


def chunk_samples(cfg: ModelConfig) -> int:
    return int(round(cfg.encoder.chunk_seconds * cfg.frontend.sample_rate))


def num_frames(cfg: ModelConfig) -> int:
    """Log-mel frames of one chunk (as `LogMelFrontend.num_frames`)."""
    return chunk_samples(cfg) // cfg.frontend.hop_length + 1


def patch_grid(cfg: ModelConfig) -> tuple[int, int]:
    """(frequency, time) patches of one chunk (as `ViTEncoder.grid`)."""
    p = cfg.encoder.patch_size
    return cfg.frontend.n_mels // p, num_frames(cfg) // p


# --- the tensors a file must hold ---------------------------------------------------------------------------------------
Spec = tuple[tuple[int, ...], torch.dtype]

# safetensors dtype names (the header's) -> torch dtypes
SAFETENSORS_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
    "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
}


def tensor_specs(state: dict) -> dict[str, Spec]:
    """(shape, dtype) of every tensor of a state dict (tensors on any device, memory-mapped or meta: nothing is read)."""
    return {k: (tuple(v.shape), v.dtype) for k, v in state.items() if torch.is_tensor(v)}


def expected_specs(cfg: ModelConfig, phase: int) -> dict[str, Spec]:
    """The state dict's tensors of the model `cfg` describes, built on the meta device (shapes and dtypes, no memory)."""
    from .stemjepa import StemJEPA

    with torch.device("meta"):
        model = StemJEPA(cfg, phase)
    return tensor_specs(model.state_dict())


def _kind(dtype) -> str:
    if not isinstance(dtype, torch.dtype):
        return "unknown"
    if dtype.is_floating_point:
        return "floating-point"
    if dtype.is_complex:
        return "complex"
    return "bool" if dtype == torch.bool else "integer"


def _name(dtype) -> str:
    return str(dtype).replace("torch.", "") if isinstance(dtype, torch.dtype) else str(dtype)


def check_tensors(expected: dict[str, Spec], found: dict[str, Spec], path, labels=None) -> None:
    """Refuse (CheckpointError naming `path` and the first mismatch) a file whose tensors are not those of the model:
    a missing or extra tensor, another shape, or another dtype (integer, bool or complex weights where the model holds
    floating-point ones). A text conditioner's table may hold any number of rows (up to MAX_LABELS), one per label in
    `labels` (the label list saved beside it)."""
    missing = [k for k in expected if k not in found]
    if missing:
        raise CheckpointError(f"{path}: weights do not match the config inside it: tensor {missing[0]} is missing "
                              f"({len(missing)} missing)")
    extra = [k for k in found if k not in expected]
    if extra:
        raise CheckpointError(f"{path}: weights do not match the config inside it: unexpected tensor {extra[0]} "
                              f"({len(extra)} not in the model)")
    for name, (shape, dtype) in expected.items():
        got_shape, got_dtype = found[name]
        if name.endswith("conditioner.table") and len(shape) == 2 and len(got_shape) == 2 and got_shape[1] == shape[1]:
            if got_shape[0] > MAX_LABELS:
                raise CheckpointError(f"{path}: {name} holds {got_shape[0]} labels, above the limit of {MAX_LABELS}")
            if labels is not None and len(labels) != got_shape[0]:
                raise CheckpointError(f"{path}: damaged model file: {name} has {got_shape[0]} rows for "
                                      f"{len(labels)} labels")
        elif tuple(got_shape) != tuple(shape):
            raise CheckpointError(f"{path}: weights do not match the config inside it: {name} has shape "
                                  f"{list(got_shape)}, the config describes {list(shape)}")
        if got_dtype != dtype:
            kind = _kind(got_dtype)
            what = (f"{kind} weights are not model weights (only floating-point weights are loaded)"
                    if _kind(dtype) == "floating-point" and kind != "floating-point" else "another dtype than the model's")
            raise CheckpointError(f"{path}: tensor {name} is {_name(got_dtype)} where the model holds {_name(dtype)}: "
                                  f"{what}; the file is damaged or not a stemjepa model")


def check_architecture(cfg, found: dict[str, Spec], path, labels=None) -> None:
    """The whole check of a model file before its model is built: the config's sizes (ConfigError -> CheckpointError
    naming the file), then the file's tensors against the config's."""
    try:
        check_model_config(cfg.model, cfg.phase)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: config inside the file is refused: {exc}") from None
    check_tensors(expected_specs(cfg.model, cfg.phase), found, path, labels)
