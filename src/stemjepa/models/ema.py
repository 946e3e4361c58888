"""EMA target encoder (Eq. 4) with the rate tau_i linear from tau_0 to tau_T over training."""
from __future__ import annotations

import torch
from torch import nn


def ema_tau(step: int, total_steps: int, tau_start: float, tau_end: float) -> float:
    """tau_i = tau_0 + (tau_T - tau_0) * i / T, clamped to [0, T]."""
    if total_steps <= 0:
        return tau_end
    frac = min(max(step / total_steps, 0.0), 1.0)
    return tau_start + (tau_end - tau_start) * frac


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """theta_bar <- tau * theta_bar + (1 - tau) * theta, in place with one foreach kernel per dtype group."""
    t_params = [p for p in target.parameters()]
    o_params = [p.detach() for p in online.parameters()]
    torch._foreach_lerp_(t_params, o_params, 1.0 - tau)
