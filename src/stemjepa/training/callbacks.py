"""Training callbacks: throughput measurement and the learning/collapse monitor."""
from __future__ import annotations

import logging
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from ..models.diagnostics import COLLAPSE_SPREAD

log = logging.getLogger(__name__)


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


class LearningMonitor(L.Callback):
    """Watches the diagnostics that the module logs (in-batch top-1, spread, RankMe): warns once when the pooled embeddings
    collapse and gives a one-line verdict at the end of training (`verdict`), so a run that only lowers its loss is not
    mistaken for one that learns."""

    def __init__(self, batch_size: int, min_step: int = 50):
        self.chance = 1.0 / max(1, batch_size)
        self.min_step = min_step
        self.warned = False
        self.verdict: str | None = None

    def _read(self, trainer) -> dict:
        metrics = trainer.callback_metrics
        return {k: float(metrics[f"train/{k}"]) for k in ("top1", "spread", "rankme", "loss") if f"train/{k}" in metrics}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.warned or trainer.global_step < self.min_step or trainer.global_step % max(1, pl_module.cfg.log_every):
            return
        m = self._read(trainer)
        if "spread" in m and m["spread"] < COLLAPSE_SPREAD:
            self.warned = True
            log.warning("step %d: the pooled embeddings are collapsing (spread %.3f < %.2f, RankMe %.1f, in-batch top-1 %.2f, "
                        "chance %.2f); retrieval from this model will be near chance. See README, 'Training that learns'.",
                        trainer.global_step, m["spread"], COLLAPSE_SPREAD, m.get("rankme", float("nan")),
                        m.get("top1", float("nan")), self.chance)

    def on_train_end(self, trainer, pl_module) -> None:
        m = self._read(trainer)
        if "top1" not in m:
            return
        figures = (f"in-batch top-1 {m['top1']:.2f} (chance {self.chance:.2f}), spread {m.get('spread', float('nan')):.2f}, "
                   f"RankMe {m.get('rankme', float('nan')):.1f}")
        if m.get("spread", 1.0) < COLLAPSE_SPREAD:
            state = "COLLAPSED: the embeddings point the same way"
        elif m["top1"] <= 2 * self.chance:
            state = ("NOT LEARNING: in-batch matching at chance" if trainer.global_step >= self.min_step else
                     f"too early to judge after {trainer.global_step} steps (in-batch matching at chance so far; "
                     f"judged from step {self.min_step})")
        else:
            state = "learning"
        self.verdict = f"training verdict at step {trainer.global_step}: {state} ({figures})"


class StepProgressBar(TQDMProgressBar):
    """Lightning's progress bar without what does not apply to this step-based training: 'Epoch 0' (a run is one pass of
    max_steps batches, there are no epochs) and 'v_num' (the logger's version folder, not a figure of the training)."""

    def init_train_tqdm(self):
        bar = super().init_train_tqdm()
        describe = bar.set_description

        def set_description(desc=None, refresh=True):  # Lightning names the bar "Epoch N" at every epoch start
            describe("training steps" if str(desc).startswith("Epoch") else desc, refresh)

        bar.set_description = set_description
        return bar

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items
