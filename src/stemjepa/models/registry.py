"""Models by name: the built-in weights shipped in the package, and the one loader for every form of a model.

    from stemjepa import load_model
    model = load_model()                              # the built-in default model
    model = load_model("stemjepa-tiny-synth-v1")      # a built-in model by its versioned name
    model = load_model("runs/p2/checkpoints/last.ckpt")   # a training checkpoint (torch.load, weights only)
    model = load_model("my_model.safetensors")        # a slim export (`stemjepa export`)

Built-in models live in `stemjepa/weights/`: `<name>.safetensors` (a slim export, see `stemjepa.models.export`) with its
card `<name>.json` (size, training data, recipe, measured figures), and `aliases.json` mapping short names such as
`default` to a versioned name. `benchmarks/train_default.py` trains and writes them.

Resolution of NAME_OR_PATH: an existing file is loaded by its content (a safetensors export or a checkpoint); otherwise a
built-in name or alias; otherwise a one-line error listing the known names. An index records the versioned name of a
built-in model (or the path of a file) together with the model id, which is the same for a checkpoint and its export.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CheckpointError
from ..fsutil import read_json
from .source import ModelSource

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
ALIASES_FILE = "aliases.json"
DEFAULT = "default"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def weights_dir() -> Path:
    """The folder of built-in models (`STEMJEPA_WEIGHTS_DIR` overrides the package's `stemjepa/weights`)."""
    return Path(os.environ.get("STEMJEPA_WEIGHTS_DIR") or WEIGHTS_DIR)


@dataclass
class ModelEntry:
    """A built-in model: its versioned name, weights file, card and the aliases that point to it."""

    name: str
    file: Path
    card: dict = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)

    @property
    def size_mb(self) -> float:
        return self.file.stat().st_size / 1e6

    def summary(self) -> str:
        return str(self.card.get("summary") or "(no card)")

    def figures(self) -> str:
        """One line of the card's held-out retrieval figures next to chance, '' when the card has none."""
        ev = (self.card.get("evaluation") or {}).get("held_out") or {}
        cos, chance = ev.get("cosine") or {}, ev.get("chance") or {}
        if not cos:
            return ""
        parts = [f"{k} {cos[k]:.1f}%" + (f" (chance {chance[k]:.1f}%)" if k in chance else "")
                 for k in ("R@1", "R@10") if k in cos]
        if "norm_rank_median" in cos:
            parts.append(f"median rank {cos['norm_rank_median']:.1f}%")
        return (f"held-out retrieval on {ev.get('n_songs', '?')} songs, pool of {ev.get('n_pool', '?')} stems: "
                + ", ".join(parts))


def read_aliases(folder: Path | None = None) -> dict[str, str]:
    path = (folder or weights_dir()) / ALIASES_FILE
    if not path.exists():
        return {}
    try:
        data = read_json(path, error=CheckpointError)
    except CheckpointError as exc:
        raise CheckpointError(f"unreadable alias file of the built-in models: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: the alias file must map names to model names")
    return {str(k): str(v) for k, v in data.items()}


def builtin_models(folder: Path | None = None) -> dict[str, ModelEntry]:
    """Versioned name -> ModelEntry for every `<name>.safetensors` of the weights folder."""
    folder = folder or weights_dir()
    entries: dict[str, ModelEntry] = {}
    if not folder.is_dir():
        return entries
    for f in sorted(folder.glob("*.safetensors")):
        card_path = f.with_suffix(".json")
        try:
            card = read_json(card_path, error=CheckpointError) if card_path.exists() else {}
        except CheckpointError:
            card = {"summary": f"(unreadable card {card_path.name})"}
        entries[f.stem] = ModelEntry(f.stem, f, card if isinstance(card, dict) else {})
    for alias, target in read_aliases(folder).items():
        if target in entries:
            entries[target].aliases.append(alias)
    return entries


def known_names(folder: Path | None = None) -> list[str]:
    """Aliases (that point to a model present) first, then the versioned names."""
    models = builtin_models(folder)
    aliases = [a for a, t in read_aliases(folder).items() if t in models]
    return sorted(aliases) + sorted(models)


def canonical_name(name: str, folder: Path | None = None) -> str | None:
    """The versioned name behind a built-in name or alias; None when it is not one."""
    models = builtin_models(folder)
    if name in models:
        return name
    target = read_aliases(folder).get(name)
    return target if target in models else None


def _unknown(spec: str) -> CheckpointError:
    names = known_names()
    looks_like_path = os.sep in spec or "/" in spec or Path(spec).suffix in (".ckpt", ".safetensors", ".pt", ".pth")
    listed = ", ".join(names) if names else "none (the package's weights folder is empty)"
    if looks_like_path:
        return CheckpointError(f"{spec}: model file not found (built-in model names: {listed})")
    return CheckpointError(f"{spec!r} is not a known model name nor an existing file; known names: {listed} "
                           "(`stemjepa models` lists them), or give the path of a .safetensors export or .ckpt checkpoint")


def resolve(spec=None) -> ModelSource:
    """Resolve NAME_OR_PATH (None: the default built-in model) without loading it; one-line errors."""
    spec = DEFAULT if spec is None or str(spec) == "" else str(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        from .export import is_safetensors

        return ModelSource("export" if is_safetensors(path) else "checkpoint", path)
    if path.exists():
        raise CheckpointError(f"{path}: is a folder, not a model file (a .safetensors export or a .ckpt checkpoint)")
    name = canonical_name(spec)
    if name is None:
        raise _unknown(spec)
    return ModelSource("builtin", builtin_models()[name].file, name)


def model_ref(spec) -> str:
    """The reference an index stores for NAME_OR_PATH (see ModelSource.ref)."""
    return resolve(spec).ref


def load_model(name_or_path=None, device=None, eval_mode: bool = True):
    """Load a StemJEPA by built-in name or alias (default: the built-in default model), or from a .safetensors export or
    a .ckpt checkpoint. device=None: CUDA when present, else CPU. The returned model has `model_id` (the same for a
    checkpoint and its export) and `source` (`ModelSource`: kind, file, built-in name or None, training config and
    songs)."""
    source = resolve(name_or_path)
    if source.kind == "checkpoint":
        from .checkpoint import load_model as load_file
    else:
        from .export import load_export as load_file
    return load_file(source.path, device=device, eval_mode=eval_mode, source=source)


def describe(folder: Path | None = None) -> str:
    """The `stemjepa models` listing: each built-in model with its aliases, size, file and card summary."""
    models = builtin_models(folder)
    if not models:
        return (f"no built-in models in {folder or weights_dir()}; train one with benchmarks/train_default.py, "
                "or pass a checkpoint / export path to --model")
    lines = []
    for name, e in models.items():
        alias = f"  (alias: {', '.join(sorted(e.aliases))})" if e.aliases else ""
        lines.append(f"{name}{alias}")
        lines.append(f"  size: {e.size_mb:.1f} MB   file: {e.file}")
        lines.append(f"  {e.summary()}")
        if e.figures():
            lines.append(f"  {e.figures()}")
        trained = (e.card.get("training") or {}).get("corpus_summary")
        if trained:
            lines.append(f"  trained on: {trained}")
    lines.append("use one with --model NAME (default: 'default'); docs/MODEL_CARD.md describes the default model")
    return "\n".join(lines)
