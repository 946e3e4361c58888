"""Typed configuration, named after the paper's terms, loaded from YAML files under `configs/`.

A YAML config may name a `base:` config whose values it overrides; `key.sub=value` overrides on the command line apply last.
The whole config is saved inside every checkpoint, so a checkpoint alone rebuilds its model.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .audio import SAMPLE_RATE
from .errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"

# closed choices, checked when a config is built (a typo fails here, not deep inside training)
Phase = Literal[1, 2]  # 1: contrastive pretraining of the encoder; 2: JEPA with the EMA target encoder
ConditioningKind = Literal["classes", "text"]
TextBackend = Literal["minilm", "clap"]
Fusion = Literal["film", "concat"]  # how the predictor takes the condition c: concatenated, or FiLM (Eq. 5)
LabelLevel = Literal["random", "fine", "coarse"]
LossReduction = Literal["mean", "sum"]
Precision = Literal["auto", "32", "32-true", "bf16-mixed", "16-mixed"]


@dataclass
class FrontendConfig:
    """Log-mel front-end: 80 mel bands of 25 ms windows every 10 ms, log-compressed and standardised."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 400
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 80
    f_min: float = 50.0
    f_max: float = 8000.0
    log_eps: float = 1.1920929e-07
    norm_mean: float = -9.453
    norm_std: float = 3.569


@dataclass
class EncoderConfig:
    """ViT encoder f_theta. `size` picks a preset (models.encoder.ENCODER_SIZES); explicit dims override it."""

    size: str = "base"  # a preset name; any name when all three dims are given
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    patch_size: int = 16
    mlp_ratio: float = 4.0
    chunk_seconds: float = 8.0


@dataclass
class ConditioningConfig:
    """How the instrument c reaches the predictor: `classes` (learned embedding per class) or `text` (frozen text encoder)."""

    kind: ConditioningKind = "text"
    text_backend: TextBackend = "minilm"
    clap_model: str = "laion/larger_clap_music"  # local directory or a model id in the local Hugging Face cache
    text_dim: int | None = None  # recorded from the text encoder at training time, so loading a checkpoint needs no encoder
    classes: list[str] = field(default_factory=lambda: ["bass", "drums", "vocals", "other"])
    class_fallback: str = "other"
    class_dim: int = 768


@dataclass
class PredictorConfig:
    """Token-wise MLP g_phi: L layers, m hidden units, the condition fused by `concat` (Stem-JEPA) or `film` (Eq. 5)."""

    num_layers: int = 6
    hidden_dim: int = 1024
    fusion: Fusion = "film"  # named `conditioning` before; old files and YAML are migrated (RENAMED)
    final_norm: bool = True


@dataclass
class ModelConfig:
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    # Not in the paper (off in the paper configs): subtract from every pooled embedding the mean of its side (queries:
    # mixes or predictions; references: isolated stems), kept as running means of the training batches. Phase 1 computes
    # InfoNCE on batch-centred embeddings. Without it the pooled ViT output is dominated by one vector shared by every
    # input (pairwise cosine 0.99) and phase 1 sits on the ln(B) plateau; see README "Training that learns".
    center_embeddings: bool = False
    center_momentum: float = 0.02  # weight of each training batch in the running means


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay. `lr` is the base learning rate for a global batch of `lr_batch_ref`."""

    lr: float = 1e-3
    lr_batch_ref: int = 256  # lr scales linearly with global batch / lr_batch_ref
    min_lr_ratio: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    warmup_steps: int = 20000
    grad_clip: float = 3.0
    fused: bool | None = None  # None: fused AdamW on CUDA


@dataclass
class ContrastiveConfig:
    """Phase 1: InfoNCE (Eq. 1) with a trainable temperature."""

    temperature_init: float = 0.1
    temperature_min: float = 0.01
    symmetric: bool = False
    # Not in the paper (off in the paper configs): also contrast each mix against one of the stems it contains (a hard
    # negative: the benchmark's pool holds every stem of the query's mix, and in-batch negatives come from other songs only).
    context_negatives: bool = False


@dataclass
class JEPAConfig:
    """Phase 2: Eq. 3 loss and the EMA schedule of Eq. 4."""

    ema_tau_start: float = 0.99995
    ema_tau_end: float = 0.99999
    loss_reduction: LossReduction = "mean"  # "mean" over tokens (Stem-JEPA code) or "sum" (Eq. 3 as written)
    standardize_targets: bool = True
    # Not in the paper (0 in the paper configs): weight of an InfoNCE term between the pooled prediction and the pooled
    # target (in-batch negatives, plus a stem of the mix with contrastive.context_negatives), added to Eq. 3. Eq. 3 alone
    # lets the pooled prediction carry the instrument and little of the song; see README "Training that learns".
    contrastive_weight: float = 0.0
    contrastive_temperature: float = 0.1


@dataclass
class DataConfig:
    """Context/target sampling from the training cache (paper Sec. II-E)."""

    batch_size: int = 256  # global batch, split across devices
    num_workers: int = 8
    prefetch_factor: int = 4
    activity_db: float = -50.0  # a frame is active above this RMS level (dBFS)
    min_active_fraction: float = 0.25  # a stem is active in a chunk if this fraction of its frames is
    max_context_stems: int = 8
    label_level: LabelLevel = "random"  # "random" (phase 2, paper) | "fine" | "coarse"
    unlabelled: str = "music"
    split: str | None = "train"
    gain_db: float = 0.0  # random per-stem gain in [-gain_db, +gain_db] when mixing the context
    # share of samples whose target chunk is taken at another time of the same song (where the target stem plays) instead
    # of the context's time: the index averages whole tracks, so time alignment is no cue at query time (not in the paper)
    unaligned_target: float = 0.0


@dataclass
class TrainConfig:
    """One training phase. phase=1: contrastive pretraining of the encoder; phase=2: JEPA with EMA target encoder."""

    name: str = "paper_phase2"
    phase: Phase = 2
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    jepa: JEPAConfig = field(default_factory=JEPAConfig)
    data: DataConfig = field(default_factory=DataConfig)
    max_steps: int = 300000
    seed: int = 0
    precision: Precision = "auto"  # "auto": bf16 autocast on CUDA, fp32 on CPU; or "32", "bf16-mixed"
    compile: bool | None = None  # None: torch.compile on CUDA only
    log_every: int = 50
    checkpoint_every: int = 5000
    val_every: int = 0


# ---------------------------------------------------------------------------------------------------------------------------


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


# keys renamed since configs were first saved: {section class: {old key: new key}}; checkpoints, exports and YAML files
# written with the old key still load
RENAMED = {PredictorConfig: {"conditioning": "fusion"}}


def _migrate(cls, data: dict, where: str) -> dict:
    """`data` with the old names of `cls`'s keys replaced by the new ones; both at once is an error."""
    renames = RENAMED.get(cls, {})
    if not any(old in data for old in renames):
        return data
    data = dict(data)
    for old, new in renames.items():
        if old in data:
            if new in data:
                raise ConfigError(f"{where}: {old!r} is the old name of {new!r}; give only {new!r}")
            data[new] = data.pop(old)
    return data


def _migrate_tree(cls, data, where: str):
    """_migrate applied to every section of `data` (one YAML file, before it is merged with its base)."""
    if not isinstance(data, dict):
        return data
    data = _migrate(cls, data, where)
    return {k: _migrate_tree(sub, v, f"{where}.{k}") if (sub := _section(cls, k)) else v for k, v in data.items()}


def _migrate_path(keys: list[str]) -> list[str]:
    """An override's key path with old key names replaced (`model.predictor.conditioning` -> `model.predictor.fusion`)."""
    cls, out = TrainConfig, []
    for k in keys:
        k = RENAMED.get(cls, {}).get(k, k)
        out.append(k)
        cls = _section(cls, k) if cls is not None else None
    return out


def _section(cls, key):
    """The dataclass of section `key` of `cls`; None for a plain field or an unknown key (reported later by _build)."""
    hint = typing.get_type_hints(cls).get(key)
    return hint if dataclasses.is_dataclass(hint) else None


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    data = _migrate(cls, data, where)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(fields)})")
        sub = _nested_type(cls, key)
        kwargs[key] = _build(sub, value, f"{where}.{key}") if sub is not None else _coerce(cls, key, value, f"{where}.{key}")
    return cls(**kwargs)


def _nested_type(cls, key):
    hint = typing.get_type_hints(cls)[key]
    return hint if dataclasses.is_dataclass(hint) else None


def _positive(v) -> bool:
    return v > 0


def _nonnegative(v) -> bool:
    return v >= 0


def _fraction(v) -> bool:
    return 0 <= v <= 1


_RULES = {_positive: "greater than 0", _nonnegative: "0 or more", _fraction: "between 0 and 1"}

# numeric fields with a range, checked with the types (a negative learning rate fails here, not after decoding the data)
RANGES = {
    "max_steps": _positive, "log_every": _nonnegative, "checkpoint_every": _nonnegative, "val_every": _nonnegative,
    "optim.lr": _positive, "optim.lr_batch_ref": _positive, "optim.min_lr_ratio": _fraction,
    "optim.betas": lambda v: all(0 <= b < 1 for b in v), "optim.weight_decay": _nonnegative,
    "optim.warmup_steps": _nonnegative, "optim.grad_clip": _nonnegative,
    "contrastive.temperature_init": _positive, "contrastive.temperature_min": _positive,
    "jepa.ema_tau_start": _fraction, "jepa.ema_tau_end": _fraction, "jepa.contrastive_weight": _nonnegative,
    "jepa.contrastive_temperature": _positive,
    "data.batch_size": _positive, "data.num_workers": _nonnegative, "data.prefetch_factor": _positive,
    "data.min_active_fraction": _fraction, "data.max_context_stems": _positive, "data.gain_db": _nonnegative,
    "data.unaligned_target": _fraction,
    "model.frontend.sample_rate": _positive, "model.frontend.n_fft": _positive, "model.frontend.win_length": _positive,
    "model.frontend.hop_length": _positive, "model.frontend.n_mels": _positive, "model.frontend.f_min": _nonnegative,
    "model.frontend.f_max": _positive, "model.frontend.log_eps": _positive, "model.frontend.norm_std": _positive,
    "model.encoder.embed_dim": _positive, "model.encoder.depth": _positive, "model.encoder.num_heads": _positive,
    "model.encoder.patch_size": _positive, "model.encoder.mlp_ratio": _positive, "model.encoder.chunk_seconds": _positive,
    "model.conditioning.text_dim": _positive, "model.conditioning.class_dim": _positive,
    "model.predictor.num_layers": _positive, "model.predictor.hidden_dim": _positive,
    "model.center_momentum": lambda v: 0 < v <= 1,
}
_RANGE_TEXT = {"optim.betas": "two values in [0, 1)"}


def _check_range(where: str, value) -> None:
    field_path = where.split(".", 1)[1] if "." in where else where
    rule = RANGES.get(field_path)
    if rule is not None and value is not None and not rule(value):
        raise ConfigError(f"{field_path}: {value!r} must be {_RANGE_TEXT.get(field_path) or _RULES[rule]}")


def _coerce(cls, key: str, value, where: str):
    """Check a value against the field's type (YAML reads `5e-4` as a string, for instance) and its allowed choices."""
    hint = typing.get_type_hints(cls)[key]
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    members = [t for t in typing.get_args(hint) if t is not type(None)] if union else [hint]
    optional = type(None) in typing.get_args(hint)
    if value is None and optional:
        return None
    base = members[0] if members else hint
    choices = typing.get_args(base) if typing.get_origin(base) is Literal else None
    if choices:  # a closed choice: coerce to the type of its values (YAML `precision: 32` is the int 32), then check
        base = type(choices[0])
    try:
        if base is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                value = value.lower() in ("true", "yes", "1")
            elif not isinstance(value, bool):
                raise ValueError
        elif base is int:
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            value = int(float(value))
        elif base is float:
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
        elif base is str:
            if not isinstance(value, str):
                value = str(value)
        elif typing.get_origin(base) is tuple:
            value = tuple(float(v) for v in value)
        elif typing.get_origin(base) is list:
            if key == "classes" and value == "auto":
                return value
            value = [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not a valid {getattr(base, '__name__', base)}") from None
    if choices and value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
    _check_range(where, value)
    return value



def from_dict(data: dict) -> TrainConfig:
    return _build(TrainConfig, data, "config")


def _deep_update(base: dict, new: dict) -> dict:
    out = dict(base)
    for k, v in new.items():
        out[k] = _deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _read_yaml(name_or_path: str, seen: tuple = ()) -> dict:
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"config {name_or_path!r} not found "
                          f"(a path to a YAML file, or one of: {', '.join(available_configs())})")
    if str(path) in seen:
        raise ConfigError(f"{path}: circular 'base:' chain")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    data = _migrate_tree(TrainConfig, data, str(path))  # before the merge: a file may use old key names, its base new ones
    base = data.pop("base", None)
    name = data.get("name") or path.stem
    if base:
        data = _deep_update(_read_yaml(base, seen + (str(path),)), data)
    data["name"] = name
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, value = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value)


def load_config(name_or_path: str, overrides: list[str] | None = None) -> TrainConfig:
    """Load a named config (configs/NAME.yaml) or a YAML path, then apply `key.sub=value` overrides."""
    data = _read_yaml(name_or_path)
    for text in overrides or []:
        keys, value = parse_override(text)
        keys = _migrate_path(keys)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k!r} is not a section")
        node[keys[-1]] = value
    return from_dict(data)
