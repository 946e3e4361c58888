"""Lightning module for both training phases: phase 1 (contrastive, Eq. 1) and phase 2 (JEPA, Eq. 3 + EMA of Eq. 4)."""
from __future__ import annotations

import math

import lightning as L
import torch

from ..config import TrainConfig, resolve_config, to_dict
from ..data.sampling import mix_context
from ..models.checkpoint import FORMAT_VERSION
from ..models.diagnostics import embedding_stats, in_batch_top1
from ..models.ema import ema_tau, ema_update
from ..models.losses import info_nce, jepa_loss
from ..models.stemjepa import StemJEPA
from .schedule import lr_factor, scaled_lr


class StemJEPAModule(L.LightningModule):
    def __init__(self, cfg: TrainConfig, labels: list[str] | None = None):
        super().__init__()
        self.cfg = cfg = resolve_config(cfg)  # what every checkpoint saves; `fit` passes it resolved already
        cond = cfg.model.conditioning
        self.model = StemJEPA(cfg.model, cfg.phase)
        if cfg.phase == 1:
            with torch.no_grad():
                self.model.log_temperature.fill_(math.log(cfg.contrastive.temperature_init))
        if cfg.phase == 2 and cond.kind == "text" and labels:
            self.model.conditioner.add_labels(labels)  # embed every training label once, into the table saved with the weights
        self._compiled = False

    # --- set-up ------------------------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        use_compile = self.cfg.compile if self.cfg.compile is not None else torch.cuda.is_available()
        if use_compile and not self._compiled:
            self.model.encoder.compile()
            if self.model.has_predictor:
                self.model.target_encoder.compile()
                self.model.predictor.compile()
            self._compiled = True

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
        o = self.cfg.optim
        lr = scaled_lr(o.lr, self.cfg.data.batch_size, o.lr_batch_ref)
        fused = o.fused if o.fused is not None else torch.cuda.is_available()
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=lr, betas=tuple(o.betas), fused=fused)
        total = self.cfg.max_steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, o.warmup_steps, total, o.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip the global gradient norm ourselves: Lightning refuses to with fused AdamW, though bf16 needs no unscaling."""
        if self.cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip, foreach=True)

    # --- steps -------------------------------------------------------------------------------------------------------------
    def compute_loss(self, batch) -> tuple[torch.Tensor, dict]:
        """The phase's objective on one batch: (loss, logged values), the loss terms among them as `loss_<term>`."""
        target = batch["target"].float()
        context = mix_context(batch["context"], batch["owner"], batch["gains"], target.shape[0])
        contrasts = self.cfg.phase == 1 or self.cfg.jepa.contrastive_weight > 0  # phase 2 uses negatives only in that term
        use_hard = self.cfg.contrastive.context_negatives and contrasts
        hard, hard_mask = self._context_negatives(batch) if use_hard else (None, None)
        if self.cfg.phase == 1:
            return self._phase1_loss(context, target, hard, hard_mask)
        return self._phase2_loss(context, target, list(batch["label"]), hard, hard_mask)

    def _phase1_loss(self, context, target, hard, hard_mask) -> tuple[torch.Tensor, dict]:
        """Eq. 1: InfoNCE between the pooled embeddings of a mix and of its missing stem, over the global batch."""
        z = self.model.encode(torch.cat([context, target] + ([hard] if hard is not None else [])))  # one pass
        s, s_bar, *h = z.float().mean(dim=(1, 2)).chunk(3 if hard is not None else 2)
        s, s_bar, h, hard_mask = (self._gather(x) for x in (s, s_bar, h[0] if h else None, hard_mask))
        if self.model.center_embeddings:  # running means of the global batch, kept for inference
            self.model.update_centers(s, s_bar)
        temperature = self.model.log_temperature.exp().clamp(min=self.cfg.contrastive.temperature_min)
        loss, s, s_bar = self._contrast(s, s_bar, temperature, self.cfg.contrastive.symmetric, h, hard_mask)
        return loss, {"loss_infonce": loss.detach(), "temperature": temperature.detach(), **self._diagnostics(s, s_bar)}

    def _phase2_loss(self, context, target, labels: list[str], hard, hard_mask) -> tuple[torch.Tensor, dict]:
        """Eq. 3: the token-wise distance between the prediction from the mix (conditioned on the label) and the EMA
        target encoder's tokens of the stem; plus, with `jepa.contrastive_weight` (not in the paper), InfoNCE between
        the pooled prediction and the pooled targets of the global batch."""
        z = self.model.encode(context)
        with torch.no_grad():
            z_bar = self.model.encode(target, target=True)
            h = self.model.encode(hard, target=True).float().mean(dim=(1, 2)) if hard is not None else None
        pred = self.model.predict(z, labels)
        terms = {"jepa": jepa_loss(pred, z_bar, self.cfg.jepa.loss_reduction, self.cfg.jepa.standardize_targets)}
        pooled_pred, pooled_target = pred.float().mean(dim=(1, 2)), z_bar.float().mean(dim=(1, 2))
        loss = terms["jepa"]
        if self.cfg.jepa.contrastive_weight > 0:
            q, k, h, hard_mask = (self._gather(x) for x in (pooled_pred, pooled_target, h, hard_mask))
            terms["contrast"], _, _ = self._contrast(q, k, self.cfg.jepa.contrastive_temperature, False, h, hard_mask)
            loss = loss + self.cfg.jepa.contrastive_weight * terms["contrast"]
        if self.model.center_embeddings:  # the global batch's means, so that every rank keeps the same running means
            self.model.update_centers(self._gather(pooled_pred.detach()), self._gather(pooled_target))
            pooled_pred, pooled_target = pooled_pred - self.model.query_center, pooled_target - self.model.reference_center
        logged = {f"loss_{name}": value.detach() for name, value in terms.items()}
        return loss, {**logged, **self._diagnostics(pooled_pred, pooled_target)}

    def _gather(self, x: torch.Tensor | None) -> torch.Tensor | None:
        """`x` over the global batch (every rank's part, concatenated); gradients flow back to this rank's part when `x`
        carries them. One process: `x` itself."""
        if x is None or self.trainer.world_size <= 1:
            return x
        return self.all_gather(x, sync_grads=x.requires_grad).flatten(0, 1)

    def _contrast(self, queries, keys, temperature, symmetric: bool, hard=None, hard_mask=None):
        """InfoNCE of (already gathered) queries against keys, each query's own key its positive and `hard` an extra
        negative; on batch-centred embeddings when the model centres them. Returns (loss, queries, keys) as ranked."""
        if self.model.center_embeddings:
            key_mean = keys.mean(0)
            queries, keys = queries - queries.mean(0), keys - key_mean
            hard = hard - key_mean if hard is not None else None
        return info_nce(queries, keys, temperature, symmetric, hard, hard_mask), queries, keys

    def _context_negatives(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One stem of each sample's own context mix (its first, at the gain it was mixed with), and a mask of the samples
        whose mix holds at least two stems (a one-stem mix would be its own negative)."""
        owner, n = batch["owner"], batch["target"].shape[0]
        counts = torch.bincount(owner, minlength=n)
        first = (torch.cumsum(counts, 0) - counts).clamp(max=len(owner) - 1)  # stems are packed sample by sample
        hard = batch["context"][first].float() * batch["gains"][first].float()[:, None]
        return hard, counts >= 2

    def _diagnostics(self, queries: torch.Tensor, keys: torch.Tensor) -> dict:
        """Learning and collapse diagnostics of the pooled embeddings of a batch, on logging steps only: in-batch top-1
        (query -> its own key among the batch; chance 1/B), and the spread, per-dimension std and effective rank (RankMe) of
        the L2-normalised keys (the side a retrieval pool stores)."""
        if not self._log_now() or len(keys) < 2:
            return {}
        stats = embedding_stats(keys.detach())
        return {"top1": in_batch_top1(queries, keys), "spread": stats.spread, "std": stats.std, "rankme": stats.rankme}

    def training_step(self, batch, batch_idx):
        loss, extra = self.compute_loss(batch)
        bs = batch["target"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for k, v in extra.items():
            self.log(f"train/{k}", v, batch_size=bs, prog_bar=k in ("top1", "rankme"))
        if self._log_now():  # a Python float logged on CUDA is a blocking copy: only when it is written
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=bs)
        return loss

    def _log_now(self) -> bool:
        return self.global_step % max(1, self.cfg.log_every) == 0

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.model.has_predictor:
            j = self.cfg.jepa
            tau = ema_tau(self.global_step, self.cfg.max_steps, j.ema_tau_start, j.ema_tau_end)
            ema_update(self.model.target_encoder, self.model.encoder, tau)
            if self._log_now():
                self.log("train/ema_tau", tau, batch_size=batch["target"].shape[0])

    # --- checkpoints ---------------------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["stemjepa"] = {"format_version": FORMAT_VERSION, "config": to_dict(self.cfg)}
