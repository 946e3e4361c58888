"""ViT encoder f_theta on log-mel patches: fixed 2-D sin-cos positions, no CLS token, returns the (freq x time) patch grid."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..audio.frontend import fixed_buffer
from ..config import EncoderConfig
from ..errors import ConfigError

# `model.encoder.size` presets (ViT-Tiny / Small / Base widths); explicit dims in the config override them
ENCODER_SIZES = {
    "tiny": dict(embed_dim=192, depth=4, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
}


def encoder_dims(cfg: EncoderConfig) -> tuple[int, int, int]:
    """(embed_dim, depth, num_heads) of an encoder config: its size preset, overridden by the dims it gives."""
    if cfg.size not in ENCODER_SIZES and None in (cfg.embed_dim, cfg.depth, cfg.num_heads):
        raise ConfigError(f"encoder size {cfg.size!r} unknown (one of {', '.join(ENCODER_SIZES)}, or give all dims)")
    d = dict(ENCODER_SIZES.get(cfg.size, {}))
    for k in ("embed_dim", "depth", "num_heads"):
        if getattr(cfg, k) is not None:
            d[k] = getattr(cfg, k)
    if d["embed_dim"] % d["num_heads"]:
        raise ConfigError(f"encoder embed_dim {d['embed_dim']} must be divisible by num_heads {d['num_heads']}")
    if d["embed_dim"] % 4:
        raise ConfigError("encoder embed_dim must be divisible by 4 (2-D sin-cos positions)")
    return d["embed_dim"], d["depth"], d["num_heads"]


def sincos_2d(embed_dim: int, grid_f: int, grid_t: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions (grid_f * grid_t, d): half the dims encode time, half frequency. Tokens are freq-major."""
    half = embed_dim // 2

    def axis(n: int, dim: int) -> torch.Tensor:
        omega = 1.0 / (10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)))
        angles = torch.arange(n, dtype=torch.float64)[:, None] * omega[None]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # (n, dim)

    pos_t = axis(grid_t, half)[None, :, :].expand(grid_f, grid_t, half)
    pos_f = axis(grid_f, half)[:, None, :].expand(grid_f, grid_t, half)
    return torch.cat([pos_t, pos_f], dim=-1).reshape(grid_f * grid_t, embed_dim).float()


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # fused kernel (flash / memory-efficient) where available
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTEncoder(nn.Module):
    """Log-mel (B, n_mels, frames) -> patch grid (B, F, T, d) with F = n_mels // p, T = frames // p
    (the last frame is dropped)."""

    def __init__(self, n_mels: int, n_frames: int, embed_dim: int, depth: int, num_heads: int, patch_size: int = 16,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.patch_size = patch_size
        self.grid = (n_mels // patch_size, n_frames // patch_size)
        self.embed_dim = embed_dim
        self.patch_embed = nn.Conv2d(1, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.reset_fixed_buffers()
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self._init_weights()

    def reset_fixed_buffers(self) -> None:
        """The sin-cos positions: computed, not saved (see audio.frontend.fixed_buffer)."""
        grid, d = self.grid, self.embed_dim
        self.register_buffer("pos_embed", fixed_buffer((1, grid[0] * grid[1], d), lambda: sincos_2d(d, *grid)[None]),
                             persistent=False)

    def _init_weights(self) -> None:
        w = self.patch_embed.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        f, t = self.grid
        p = self.patch_size
        x = mel[:, None, : f * p, : t * p]
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, F*T, d), freq-major
        x = x + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return x.reshape(x.shape[0], f, t, self.embed_dim)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["ViTEncoder", "sincos_2d", "count_parameters"]
