"""Token-wise MLP predictor g_phi (Eq. 2), conditioned on the instrument embedding c by concatenation or FiLM (Eq. 5)."""
from __future__ import annotations

from typing import get_args

import torch
from torch import nn

from ..config import Fusion


class Predictor(nn.Module):
    """L linear layers with ReLU between them: d -> m -> ... -> m -> d, applied to each token separately.

    The fusion of c: concat: c is appended to every input token (Stem-JEPA). film: for l = 1..L-1 the input of layer l+1 is
    ReLU(gamma_l(c) * h_l + beta_l(c)) where h_l is the output of layer l and gamma_l, beta_l are affine maps R^p -> R^m.
    """

    def __init__(self, embed_dim: int, cond_dim: int, hidden_dim: int = 1024, num_layers: int = 6, fusion: Fusion = "film",
                 final_norm: bool = True):
        super().__init__()
        if fusion not in get_args(Fusion):
            raise ValueError(f"predictor fusion must be 'film' or 'concat', not {fusion!r}")
        if num_layers < 2:
            raise ValueError("the predictor needs at least 2 layers")
        self.fusion = fusion
        self.num_layers = num_layers
        self.hidden_dim = hidden_dim
        in_dim = embed_dim + cond_dim if fusion == "concat" else embed_dim
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [embed_dim]
        self.layers = nn.ModuleList(nn.Linear(dims[i], dims[i + 1]) for i in range(num_layers))
        if fusion == "film":
            # gamma_l and beta_l for the L-1 hidden layers, computed by one affine map for speed
            self.film = nn.Linear(cond_dim, 2 * hidden_dim * (num_layers - 1))
        self.norm = nn.LayerNorm(embed_dim) if final_norm else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        for layer in self.layers:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        if self.fusion == "film":
            nn.init.xavier_uniform_(self.film.weight)
            with torch.no_grad():
                self.film.bias.zero_()
                self.film.bias.view(self.num_layers - 1, 2, self.hidden_dim)[:, 0] = 1.0  # gamma starts around 1

    def film_params(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """gamma, beta of shape (B, L-1, m)."""
        gb = self.film(c).view(c.shape[0], self.num_layers - 1, 2, self.hidden_dim)
        return gb[:, :, 0], gb[:, :, 1]

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """z: (B, K, d) context tokens (any leading token dims are flattened), c: (B, p) -> (B, K, d)."""
        shape = z.shape
        z = z.reshape(shape[0], -1, shape[-1])
        if self.fusion == "concat":
            h = torch.cat([z, c[:, None, :].to(z.dtype).expand(-1, z.shape[1], -1)], dim=-1)
            for layer in self.layers[:-1]:
                h = torch.relu(layer(h))
        else:
            gamma, beta = self.film_params(c.to(z.dtype))
            h = z
            for l, layer in enumerate(self.layers[:-1]):
                h = torch.relu(gamma[:, l, None, :] * layer(h) + beta[:, l, None, :])
        out = self.norm(self.layers[-1](h))
        return out.reshape(shape)
