"""Typed configuration, named after the paper's terms, loaded from YAML files under `configs/`.

A YAML config may name a `base:` config whose values it overrides; `key.sub=value` overrides on the command line apply last.
Every value is checked against its field's type and, for a number, the `Rule` declared beside the field. Training
completes the config once (`resolve_config`); that trained config is saved in the run's config.json and inside every
checkpoint, so a checkpoint alone rebuilds its model.
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

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


@dataclass(frozen=True)
class Rule:
    """The range of a numeric field, declared beside it (`lr: Annotated[float, POSITIVE]`) and checked with its type when a
    config is built (a negative learning rate fails there, not after the data is decoded). A renamed field keeps its rule;
    every numeric field declares one (ANY when every value is allowed: tests/test_config_rules.py)."""

    test: Callable[[Any], bool]
    text: str  # what a value must be, in the error

    def check(self, path: str, value) -> None:
        if value is not None and not self.test(value):
            raise ConfigError(f"{path}: {value!r} must be {self.text}")


POSITIVE = Rule(lambda v: v > 0, "greater than 0")
NONNEGATIVE = Rule(lambda v: v >= 0, "0 or more")
FRACTION = Rule(lambda v: 0 <= v <= 1, "between 0 and 1")
BETAS = Rule(lambda v: all(0 <= b < 1 for b in v), "two values in [0, 1)")
MOMENTUM = Rule(lambda v: 0 < v <= 1, "greater than 0 and at most 1")
ANY = Rule(lambda v: True, "any value")


@dataclass
class FrontendConfig:
    """Log-mel front-end: 80 mel bands of 25 ms windows every 10 ms, log-compressed and standardised."""

    sample_rate: Annotated[int, POSITIVE] = SAMPLE_RATE
    n_fft: Annotated[int, POSITIVE] = 400
    win_length: Annotated[int, POSITIVE] = 400
    hop_length: Annotated[int, POSITIVE] = 160
    n_mels: Annotated[int, POSITIVE] = 80
    f_min: Annotated[float, NONNEGATIVE] = 50.0
    f_max: Annotated[float, POSITIVE] = 8000.0
    log_eps: Annotated[float, POSITIVE] = 1.1920929e-07
    norm_mean: Annotated[float, ANY] = -9.453
    norm_std: Annotated[float, POSITIVE] = 3.569


@dataclass
class EncoderConfig:
    """ViT encoder f_theta. `size` picks a preset (models.encoder.ENCODER_SIZES); explicit dims override it."""

    size: str = "base"  # a preset name; any name when all three dims are given
    embed_dim: Annotated[int | None, POSITIVE] = None
    depth: Annotated[int | None, POSITIVE] = None
    num_heads: Annotated[int | None, POSITIVE] = None
    patch_size: Annotated[int, POSITIVE] = 16
    mlp_ratio: Annotated[float, POSITIVE] = 4.0
    chunk_seconds: Annotated[float, POSITIVE] = 8.0


@dataclass
class ConditioningConfig:
    """How the instrument c reaches the predictor: `classes` (learned embedding per class) or `text` (frozen text encoder)."""

    kind: ConditioningKind = "text"
    text_backend: TextBackend = "minilm"
    clap_model: str = "laion/larger_clap_music"  # local directory or a model id in the local Hugging Face cache
    # recorded from the text encoder at training time (`resolve_config`), so loading a checkpoint needs no encoder
    text_dim: Annotated[int | None, POSITIVE] = None
    classes: list[str] = field(default_factory=lambda: ["bass", "drums", "vocals", "other"])
    class_fallback: str = "other"
    class_dim: Annotated[int, POSITIVE] = 768


@dataclass
class PredictorConfig:
    """Token-wise MLP g_phi: L layers, m hidden units, the condition fused by `concat` (Stem-JEPA) or `film` (Eq. 5)."""

    num_layers: Annotated[int, POSITIVE] = 6
    hidden_dim: Annotated[int, POSITIVE] = 1024
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
    center_momentum: Annotated[float, MOMENTUM] = 0.02  # weight of each training batch in the running means


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay. `lr` is the base learning rate for a global batch of `lr_batch_ref`."""

    lr: Annotated[float, POSITIVE] = 1e-3
    lr_batch_ref: Annotated[int, POSITIVE] = 256  # lr scales linearly with global batch / lr_batch_ref
    min_lr_ratio: Annotated[float, FRACTION] = 0.0
    betas: Annotated[tuple[float, float], BETAS] = (0.9, 0.95)
    weight_decay: Annotated[float, NONNEGATIVE] = 0.05
    warmup_steps: Annotated[int, NONNEGATIVE] = 20000
    grad_clip: Annotated[float, NONNEGATIVE] = 3.0
    fused: bool | None = None  # None: fused AdamW on CUDA


@dataclass
class ContrastiveConfig:
    """Phase 1: InfoNCE (Eq. 1) with a trainable temperature."""

    temperature_init: Annotated[float, POSITIVE] = 0.1
    temperature_min: Annotated[float, POSITIVE] = 0.01
    symmetric: bool = False
    # Not in the paper (off in the paper configs): also contrast each mix against one of the stems it contains (a hard
    # negative: the benchmark's pool holds every stem of the query's mix, and in-batch negatives come from other songs only).
    context_negatives: bool = False


@dataclass
class JEPAConfig:
    """Phase 2: Eq. 3 loss and the EMA schedule of Eq. 4."""

    ema_tau_start: Annotated[float, FRACTION] = 0.99995
    ema_tau_end: Annotated[float, FRACTION] = 0.99999
    loss_reduction: LossReduction = "mean"  # "mean" over tokens (Stem-JEPA code) or "sum" (Eq. 3 as written)
    standardize_targets: bool = True
    # Not in the paper (0 in the paper configs): weight of an InfoNCE term between the pooled prediction and the pooled
    # target (in-batch negatives, plus a stem of the mix with contrastive.context_negatives), added to Eq. 3. Eq. 3 alone
    # lets the pooled prediction carry the instrument and little of the song; see README "Training that learns".
    contrastive_weight: Annotated[float, NONNEGATIVE] = 0.0
    contrastive_temperature: Annotated[float, POSITIVE] = 0.1


@dataclass
class DataConfig:
    """Context/target sampling from the training cache (paper Sec. II-E)."""

    batch_size: Annotated[int, POSITIVE] = 256  # global batch, split across devices
    num_workers: Annotated[int, NONNEGATIVE] = 8
    prefetch_factor: Annotated[int, POSITIVE] = 4
    activity_db: Annotated[float, ANY] = -50.0  # a frame is active above this RMS level (dBFS)
    min_active_fraction: Annotated[float, FRACTION] = 0.25  # a stem is active in a chunk if this share of its frames is
    max_context_stems: Annotated[int, POSITIVE] = 8
    label_level: LabelLevel = "random"  # "random" (phase 2, paper) | "fine" | "coarse"
    unlabelled: str = "music"
    split: str | None = "train"
    gain_db: Annotated[float, NONNEGATIVE] = 0.0  # random per-stem gain in [-gain_db, +gain_db] when mixing the context
    # share of samples whose target chunk is taken at another time of the same song (where the target stem plays) instead
    # of the context's time: the index averages whole tracks, so time alignment is no cue at query time (not in the paper)
    unaligned_target: Annotated[float, FRACTION] = 0.0


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
    max_steps: Annotated[int, POSITIVE] = 300000
    seed: Annotated[int, ANY] = 0
    # "auto": bf16 autocast where native (CUDA, AVX512-BF16 / AMX CPUs), else fp32; or "32", "bf16-mixed"
    precision: Precision = "auto"
    compile: bool | None = None  # None: torch.compile on CUDA only
    log_every: Annotated[int, NONNEGATIVE] = 50
    checkpoint_every: Annotated[int, NONNEGATIVE] = 5000
    val_every: Annotated[int, NONNEGATIVE] = 0


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


def field_rule(cls, key: str) -> Rule | None:
    """The Rule declared beside field `key` of `cls` (None: a field without one, e.g. a string or a choice)."""
    hint = typing.get_type_hints(cls, include_extras=True)[key]
    extras = getattr(hint, "__metadata__", ()) if typing.get_origin(hint) is Annotated else ()
    return next((r for r in extras if isinstance(r, Rule)), None)


def field_rules(cls=None, prefix: str = "") -> dict[str, Rule]:
    """{dotted field path: its Rule} over a config class and its sections (TrainConfig by default)."""
    cls = cls or TrainConfig
    out: dict[str, Rule] = {}
    for f in dataclasses.fields(cls):
        sub = _section(cls, f.name)
        if sub is not None:
            out.update(field_rules(sub, f"{prefix}{f.name}."))
        elif (rule := field_rule(cls, f.name)) is not None:
            out[f"{prefix}{f.name}"] = rule
    return out


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
    rule = field_rule(cls, key)
    if rule is not None:
        rule.check(where.split(".", 1)[1] if "." in where else where, value)
    return value



def resolve_config(cfg: TrainConfig, cache=None) -> TrainConfig:
    """The trained config: `cfg` completed with what the training data (`cache`, a `TrainingCache`) and the text encoder
    decide, as a new config (`cfg` is left as it is). It is what the run's config.json and every checkpoint save, so a
    checkpoint alone rebuilds its model; resolving a resolved config changes nothing. Phase 2 only:

    - `model.conditioning.classes: auto`: the coarse labels of the cache's stems, then `data.unlabelled`, which is also the
      fallback class (ConfigError without a cache);
    - text conditioning: `text_dim`, the width of the text encoder's embeddings (loading the checkpoint then needs no
      text encoder; the CLAP backend is loaded to read it).
    """
    out = copy.deepcopy(cfg)
    cond = out.model.conditioning
    if out.phase != 2:
        return out
    if cond.kind == "classes" and cond.classes in ("auto", ["auto"]):
        if cache is None:
            raise ConfigError("model.conditioning.classes: 'auto' is resolved from the training data, and none was given")
        coarse = sorted({s["labels"][0].lower() for song in cache.songs for s in song["stems"] if s["labels"]})
        cond.classes = coarse + [out.data.unlabelled]
        cond.class_fallback = out.data.unlabelled
    if cond.kind == "text" and cond.text_dim is None:
        from .models.text_encoders import text_dim

        cond.text_dim = text_dim(cond.text_backend, cond.clap_model)
    return out


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
