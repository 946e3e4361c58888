"""The whole model: log-mel front-end, encoder f_theta, and for phase 2 the EMA target encoder, conditioner and
predictor g_phi."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..audio.frontend import LogMelFrontend
from ..config import ModelConfig, Phase, TrainConfig
from .architecture import check_model_config
from .conditioning import build_conditioner
from .digest import weights_digest
from .encoder import ViTEncoder, encoder_dims
from .inference import InferenceMixin
from .predictor import Predictor
from .source import IN_MEMORY, ModelSource


class StemJEPA(InferenceMixin, nn.Module):
    """Everything needed to embed audio and predict stems; built from its model config and training phase alone (both
    saved in checkpoints and exports), so it depends on no training setting.

    Phase 1 holds the trainable InfoNCE temperature `log_temperature` (saved under that key; the training module sets its
    initial value and its floor); phase 2 the EMA target encoder, the conditioner and the predictor.
    """

    source: ModelSource = IN_MEMORY  # set once by the loaders (`models.rebuild`): where it comes from (provenance only)

    def __init__(self, config: ModelConfig, phase: Phase):
        super().__init__()
        if phase not in (1, 2):
            raise ValueError(f"phase must be 1 or 2, not {phase}")
        check_model_config(config, phase)  # sizes bounded before anything is allocated (ConfigError)
        self.config = config
        self.phase = phase
        fcfg = config.frontend
        self.frontend = LogMelFrontend(fcfg)
        self.sample_rate = fcfg.sample_rate
        self.chunk_samples = int(round(config.encoder.chunk_seconds * fcfg.sample_rate))
        n_frames = self.frontend.num_frames(self.chunk_samples)
        d, depth, heads = encoder_dims(config.encoder)
        self.embed_dim = d
        self.encoder = ViTEncoder(fcfg.n_mels, n_frames, d, depth, heads, config.encoder.patch_size, config.encoder.mlp_ratio)
        self.patch_samples = fcfg.hop_length * config.encoder.patch_size
        self.patch_seconds = self.patch_samples / fcfg.sample_rate
        self.has_predictor = phase == 2
        if phase == 1:
            self.log_temperature = nn.Parameter(torch.zeros(()))
        elif phase == 2:
            self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
            self.conditioner = build_conditioner(config.conditioning)
            p = config.predictor
            self.predictor = Predictor(d, self.conditioner.dim, p.hidden_dim, p.num_layers, p.fusion, p.final_norm)
        else:
            raise ValueError(f"phase must be 1 or 2, not {phase}")
        self.center_embeddings = config.center_embeddings
        if self.center_embeddings:  # running means of pooled query (mix / prediction) and reference (stem) embeddings
            self.register_buffer("query_center", torch.zeros(d))
            self.register_buffer("reference_center", torch.zeros(d))
            self.register_buffer("center_updates", torch.zeros((), dtype=torch.long))
        self._model_id: str | None = None

    # --- training-time pieces ------------------------------------------------------------------------------------------
    def encode(self, wave: torch.Tensor, target: bool = False) -> torch.Tensor:
        """(B, chunk_samples) waveforms -> (B, F, T, d) patch grid; `target` uses the EMA target encoder (phase 2)."""
        mel = self.frontend(wave)
        encoder = self.target_encoder if (target and self.has_predictor) else self.encoder
        return encoder(mel)

    def condition(self, labels: list[str]) -> torch.Tensor:
        return self.conditioner(labels)

    def predict(self, z: torch.Tensor, labels: list[str]) -> torch.Tensor:
        """Predicted target tokens (Eq. 2) for context tokens z (B, ..., d) and the target instruments' labels."""
        return self.predictor(z, self.condition(labels))

    @torch.no_grad()
    def update_centers(self, queries: torch.Tensor, references: torch.Tensor) -> None:
        """Move the running means towards this batch's pooled (B, d) query and reference embeddings."""
        # weight 1/(n+1) until it falls to the momentum: the exact mean of the first batches, then a running mean
        weight = (1.0 / (self.center_updates + 1).float()).clamp(min=self.config.center_momentum)
        self.query_center.lerp_(queries.detach().float().mean(0), weight)
        self.reference_center.lerp_(references.detach().float().mean(0), weight)
        self.center_updates += 1

    def load_encoder_from(self, other_state: dict) -> None:
        """Initialise encoder (and target encoder) and front-end statistics from a phase-1 state dict (`--init`)."""
        enc = {k[len("encoder."):]: v for k, v in other_state.items() if k.startswith("encoder.")}
        if not enc:
            raise KeyError("no encoder weights in the init checkpoint")
        self.encoder.load_state_dict(enc)
        if self.has_predictor:
            self.target_encoder.load_state_dict(enc)
        for name in ("norm_mean", "norm_std"):
            key = f"frontend.{name}"
            if key in other_state:
                getattr(self.frontend, name).copy_(other_state[key])
        if self.center_embeddings and "reference_center" in other_state:  # same encoder, same reference side
            self.reference_center.copy_(other_state["reference_center"])

    @property
    def model_id(self) -> str:
        """Stable id of the weights: the first 16 hex digits of `weights_digest`, computed once (the loaders compute it
        as they load). Queries cannot change it: labels first seen in a query are kept outside the state dict."""
        if self._model_id is None:
            self._model_id = weights_digest(self)[:16]
        return self._model_id

    # --- provenance, read-only views of `source` (kept for callers written before it) -------------------------------------
    @property
    def checkpoint_path(self) -> str | None:
        """The file it was loaded from (None: built in memory); `source.path`."""
        return self.source.file

    @property
    def training_songs(self) -> dict | None:
        """The songs it was trained on, None when not recorded; `source.training_songs`."""
        return self.source.training_songs

    @property
    def training_config(self) -> TrainConfig | None:
        """The recipe it was trained with; `source.training_config`."""
        return self.source.training_config

    @property
    def model_name(self) -> str | None:
        """The built-in model's versioned name, None for a file; `source.name`."""
        return self.source.name
