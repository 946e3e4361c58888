"""Learning-rate schedule: linear warm-up, then cosine annealing (paper Sec. II-D)."""
from __future__ import annotations

import math


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate at `step` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def scaled_lr(base_lr: float, global_batch: int, batch_ref: int) -> float:
    """Linear scaling rule: the base learning rate is given for a global batch of `batch_ref` samples (256 in the paper)."""
    return base_lr * global_batch / batch_ref
