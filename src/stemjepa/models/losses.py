"""The two training objectives: InfoNCE of Eq. 1 (phase 1) and the normalised MSE of Eq. 3 (phase 2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(s: torch.Tensor, s_bar: torch.Tensor, temperature: torch.Tensor | float, symmetric: bool = False,
             hard: torch.Tensor | None = None, hard_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 1: s_i and s_bar_i (context mix and target stem of pair i) are positives, the other targets of the batch negatives.

    Logits are cosine similarities divided by the (trainable) temperature; the loss is the cross-entropy of each context
    against all targets of the batch, averaged over the batch (and over both directions when `symmetric`).
    `hard` (B, D), not in the paper: one extra negative per context (a stem of its own mix), used where `hard_mask` is True.
    """
    s = F.normalize(s.float(), dim=-1)
    s_bar = F.normalize(s_bar.float(), dim=-1)
    logits = s @ s_bar.T / temperature
    labels = torch.arange(s.shape[0], device=s.device)
    rows = logits
    if hard is not None:
        extra = (s * F.normalize(hard.float(), dim=-1)).sum(-1, keepdim=True) / temperature
        if hard_mask is not None:
            extra = extra.masked_fill(~hard_mask[:, None], float("-inf"))
        rows = torch.cat([logits, extra], dim=1)
    loss = F.cross_entropy(rows, labels)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, labels))
    return loss


def jepa_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
              standardize_targets: bool = False) -> torch.Tensor:
    """Eq. 3: sum_k || pred_k/|pred_k| - target_k/|target_k| ||^2, per sample, averaged over the batch.

    reduction="sum" is Eq. 3 as written; "mean" divides by the number of tokens K (Stem-JEPA's code), which keeps the loss scale
    independent of K. `standardize_targets` first applies a parameter-free layer norm to each target token (Stem-JEPA's code).
    """
    pred = pred.float().flatten(1, -2)
    target = target.float().flatten(1, -2)
    if standardize_targets:
        target = F.layer_norm(target, target.shape[-1:])
    per_token = (F.normalize(pred, dim=-1) - F.normalize(target, dim=-1)).square().sum(-1)  # (B, K) = 2 - 2 cos
    if reduction == "sum":
        return per_token.sum(-1).mean()
    if reduction == "mean":
        return per_token.mean()
    raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")
