"""Writes into every checkpoint which songs the run was trained on (see `stemjepa.data.provenance`)."""
from __future__ import annotations

import lightning as L


class TrainingSongsRecord(L.Callback):
    """Stores `record` ({family: {"n", "digest", "ids"}}) as the checkpoint's top-level "training_songs" entry."""

    def __init__(self, record: dict):
        self.record = record

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["training_songs"] = self.record
