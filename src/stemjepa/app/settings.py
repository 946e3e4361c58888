"""What the server was told at start: indexes, model, folders it may read, and the limits on uploads."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Limits:
    """Bounds that keep one upload or query from taking the machine (all checked before the work starts)."""

    max_upload_mb: float = 200.0  # bytes on the wire
    max_seconds: float = 600.0  # mix duration: embedding and playback buffers grow with it
    max_k: int = 50
    kept_queries: int = 16  # finished queries whose results (and downloads) stay available


@dataclass
class ServeConfig:
    indexes: list[Path]
    model: str | None = None  # checkpoint path; default: the one recorded in each index
    mixes: Path | None = None  # a folder of mixes the page may pick from
    library: Path | None = None  # root the library's audio is served from; default: the indexed files' common folder
    uploads: Path | None = None  # where uploads are kept; default: a temporary folder removed at exit
    device: str | None = None
    limits: Limits = field(default_factory=Limits)
