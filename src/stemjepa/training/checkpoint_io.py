"""Checkpoint files written atomically (temp name, fsync, rename): a full disk or a kill during a save leaves the
previous checkpoint whole, never a truncated `last.ckpt`, and no temp file behind."""
from __future__ import annotations

from pathlib import Path

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from ..fsutil import atomic_write


def os_error(exc: BaseException) -> OSError | None:
    """The OSError behind `exc`: torch's zip writer reports a failed write (a full disk) as a RuntimeError
    ('unexpected pos ...') raised while handling the OSError of the file's `write`."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def save_torch(obj, fh) -> None:
    """torch.save(obj, fh), a failed write raised as its OSError (atomic_write turns it into a WriteError naming the file)."""
    try:
        torch.save(obj, fh)
    except RuntimeError as exc:
        cause = os_error(exc)
        if cause is None:
            raise
        raise cause from None


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda fh: save_torch(checkpoint, fh))
