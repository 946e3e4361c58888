"""Checkpoint files written atomically (temp name, fsync, rename): a full disk or a kill during a save leaves the
previous checkpoint whole, never a truncated `last.ckpt`, and no temp file behind."""
from __future__ import annotations

from pathlib import Path

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from ..fsutil import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda fh: torch.save(checkpoint, fh))
