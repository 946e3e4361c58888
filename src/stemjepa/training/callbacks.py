"""Training callbacks: throughput measurement and per-rank weight digests (to check that DDP ranks agree)."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import lightning as L
import torch


class Throughput(L.Callback):
    """Samples per second between step `warmup` and the end of training (synchronising the device only at those two points)."""

    def __init__(self, warmup: int = 10):
        self.warmup = warmup
        self.t0 = self.t1 = None
        self.steps = 0
        self.samples = 0

    def _sync(self, trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self.warmup:
            self._sync(trainer)
            self.t0 = time.perf_counter()
        elif step > self.warmup and self.t0 is not None:
            self.steps += 1
            self.samples += batch["target"].shape[0] * trainer.world_size
            if step >= trainer.max_steps:  # stop the clock before end-of-training work (checkpoints)
                self._sync(trainer)
                self.t1 = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        if self.t1 is None:
            self._sync(trainer)
            self.t1 = time.perf_counter()

    @property
    def samples_per_second(self) -> float:
        if self.t0 is None or self.t1 is None or self.t1 <= self.t0:
            return float("nan")
        return self.samples / (self.t1 - self.t0)


def weight_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(module.state_dict().items()):
        if isinstance(p, torch.Tensor):
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class RankDigest(L.Callback):
    """At the end of training every rank writes the digest of its weights to `folder/rank<R>.json`."""

    def __init__(self, folder):
        self.folder = Path(folder)

    def on_train_end(self, trainer, pl_module) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "step": trainer.global_step,
                  "digest": weight_digest(pl_module.model)}
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
