"""Where a model comes from: the one frozen `ModelSource` record a loader sets as `model.source`.

It is provenance only (messages, the index's model reference, `stemjepa export`, evaluation's training-overlap check):
nothing a model computes reads it. A model built in this process (training, tests) has `IN_MEMORY`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ..config import TrainConfig

SourceKind = Literal["checkpoint", "export", "builtin", "memory"]


@dataclass(frozen=True)
class ModelSource:
    """kind: 'checkpoint' (a .ckpt of `stemjepa fit`), 'export' (a .safetensors of `stemjepa export`), 'builtin' (an export
    shipped in the package, by its versioned `name`) or 'memory' (built here, not loaded); `path`: the file;
    `training_config`: the recipe it was trained with; `training_songs`: {dataset family: {"n", "digest", "ids"}} it was
    trained on, None when not recorded."""

    kind: SourceKind = "memory"
    path: Path | None = None
    name: str | None = None
    training_config: TrainConfig | None = None
    training_songs: dict | None = None

    @property
    def ref(self) -> str:
        """What an index records: the versioned built-in name, else the absolute path of the file ('' in memory)."""
        if self.name:
            return self.name
        return str(self.path.resolve()) if self.path is not None else ""

    @property
    def file(self) -> str | None:
        """The file it was loaded from, as text (None in memory): for messages."""
        return None if self.path is None else str(self.path)


IN_MEMORY = ModelSource()

__all__ = ["IN_MEMORY", "ModelSource", "SourceKind"]
