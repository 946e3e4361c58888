"""Lightning data module: the training cache, the deterministic sample order, pinned asynchronous host-to-device copies."""
from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from ..config import TrainConfig
from ..data.sampling import ChunkPairDataset, OffsetSampler, collate_pairs
from ..data.training_cache import TrainingCache
from ..errors import StemJepaError


class ChunkPairDataModule(L.LightningDataModule):
    def __init__(self, cfg: TrainConfig, cache: TrainingCache, chunk_samples: int):
        super().__init__()
        self.cfg = cfg
        self.cache = cache
        self.dataset = ChunkPairDataset(cache, cfg.data, chunk_samples, length=cfg.max_steps * cfg.data.batch_size, seed=cfg.seed)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world = trainer.world_size if trainer else 1
        rank = trainer.global_rank if trainer else 0
        if self.cfg.data.batch_size % world:
            raise StemJepaError(f"global batch size {self.cfg.data.batch_size} is not divisible by the {world} devices")
        start = (trainer.global_step if trainer else 0) * self.cfg.data.batch_size  # resume exactly where the last run stopped
        sampler = OffsetSampler(len(self.dataset), start, rank, world)
        workers = self.cfg.data.num_workers
        return DataLoader(
            self.dataset,
            batch_size=self.cfg.data.batch_size // world,
            sampler=sampler,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
            prefetch_factor=self.cfg.data.prefetch_factor if workers > 0 else None,
            drop_last=True,
            collate_fn=collate_pairs,
        )
