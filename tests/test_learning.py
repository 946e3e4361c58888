"""Collapse diagnostics, embedding centring, and a short training run that must learn (not merely lower its loss)."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from stemjepa.models.diagnostics import embedding_stats, in_batch_top1, is_collapsed, rankme


def test_collapse_detector_fires_on_collapsed_embeddings():
    g = torch.Generator().manual_seed(0)
    common = torch.randn(128, generator=g) * 10
    collapsed = common + 0.3 * torch.randn(48, 128, generator=g)  # pairwise cosine ~0.99, as measured before the fix
    stats = embedding_stats(collapsed)
    assert stats.median_cosine > 0.99
    assert stats.spread < 0.2
    assert is_collapsed(stats)


def test_collapse_detector_is_quiet_on_spread_embeddings():
    g = torch.Generator().manual_seed(0)
    stats = embedding_stats(torch.randn(48, 128, generator=g))
    assert abs(stats.median_cosine) < 0.1
    assert stats.spread > 0.9
    assert stats.rankme > 30
    assert not is_collapsed(stats)


def test_rankme_counts_directions():
    x = torch.zeros(10, 16)
    x[:, 0] = torch.arange(1.0, 11.0)  # rank one
    assert rankme(x) == pytest.approx(1.0, abs=0.01)
    assert rankme(torch.eye(8)) == pytest.approx(8.0, rel=1e-3)


def test_in_batch_top1():
    q = torch.eye(6)
    assert in_batch_top1(q, q) == 1.0
    assert in_batch_top1(q, q[[1, 2, 3, 4, 5, 0]]) == 0.0


def _centred_model():
    from stemjepa.config import load_config
    from stemjepa.models.stemjepa import StemJEPA

    cfg = load_config("tiny_phase1", ["model.encoder.depth=1", "model.center_embeddings=true"])
    return StemJEPA(cfg.model, cfg.phase).eval()


def test_running_centres_start_exact_then_follow_the_momentum():
    model = _centred_model()
    a, b = torch.randn(4, 128), torch.randn(4, 128)
    model.update_centers(a, b)
    assert torch.allclose(model.query_center, a.mean(0), atol=1e-6)
    assert torch.allclose(model.reference_center, b.mean(0), atol=1e-6)
    model.update_centers(a + 1, b)  # second batch: the exact mean of both
    assert torch.allclose(model.query_center, a.mean(0) + 0.5, atol=1e-6)
    m = model.config.center_momentum
    for _ in range(int(2 / m)):
        model.update_centers(a + 1, b)
    before = model.query_center.clone()
    model.update_centers(a + 3, b)  # past 1/momentum batches each moves the mean by `momentum`
    assert torch.allclose(model.query_center, before + m * (a.mean(0) + 3 - before), atol=1e-5)


def test_centred_model_subtracts_its_centres_at_inference():
    model = _centred_model()
    wave = np.random.default_rng(0).standard_normal(model.chunk_samples).astype(np.float32) * 0.1
    raw = model.embed(wave).vector
    model.reference_center.fill_(0.5)
    model.query_center.fill_(-1.0)
    assert np.allclose(model.embed(wave).vector, raw - 0.5, atol=1e-5)  # references: minus the reference centre
    assert np.allclose(model.query(wave, "bass").vector, raw + 1.0, atol=1e-5)  # mixes (phase 1): minus the query centre


def test_phase1_learns_to_match_context_and_target(tmp_path):
    """A short deterministic run of the tiny recipe: the in-batch top-1 (context -> its own target among the batch) must end
    well above chance, and the pooled embeddings must not collapse."""
    from toy import write_toy_corpus

    from stemjepa.config import load_config
    from stemjepa.training.fit import FitOptions, fit

    data = write_toy_corpus(tmp_path / "toy", n_songs=9, seconds=6.0)
    cfg = load_config("tiny_phase1", ["max_steps=40", "data.batch_size=8", "data.num_workers=0", "log_every=5",
                                      "model.encoder.depth=2", "model.encoder.chunk_seconds=2.0", "checkpoint_every=1000",
                                      "optim.warmup_steps=10"])
    fit(cfg, FitOptions(data=str(data), out=str(tmp_path / "run"), device="cpu", progress=False))
    rows = list(csv.DictReader(open(next((tmp_path / "run" / "logs").glob("version_*/metrics.csv")))))
    top1 = [float(r["train/top1"]) for r in rows if r.get("train/top1")]
    spread = [float(r["train/spread"]) for r in rows if r.get("train/spread")]
    chance = 1 / 8
    assert np.mean(top1[-3:]) > 3 * chance, top1
    assert spread[-1] > 0.2, spread


def _phase2_module(overrides):
    import lightning as L

    from stemjepa.config import load_config
    from stemjepa.training.module import StemJEPAModule

    cfg = load_config("tiny", ["model.encoder.depth=1", "model.conditioning.kind=classes", "model.conditioning.class_dim=16",
                               "model.predictor.num_layers=2", *overrides])
    module = StemJEPAModule(cfg)
    module.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                               enable_checkpointing=False)
    return module


def _batch(model, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    samples = model.chunk_samples
    owner = torch.tensor([0, 0, 1, 2, 2, 2, 3])  # sample 1 and 3 have a one-stem mix
    return {"context": 0.1 * torch.randn(len(owner), samples, generator=g), "owner": owner, "gains": torch.ones(len(owner)),
            "target": 0.1 * torch.randn(n, samples, generator=g), "label": ["bass", "drums", "vocals", "other"]}


def test_phase2_contrastive_term_is_infonce_of_batch_centred_pooled_prediction_and_target():
    """jepa.contrastive_weight adds w * InfoNCE(pooled prediction, pooled EMA target) to Eq. 3, both batch-centred."""
    from stemjepa.data.sampling import mix_context
    from stemjepa.models.losses import info_nce, jepa_loss

    module = _phase2_module(["jepa.contrastive_weight=0.5", "jepa.contrastive_temperature=0.2"])
    batch = _batch(module.model)
    loss, _ = module.compute_loss(batch)
    with torch.no_grad():
        model = module.model
        context = mix_context(batch["context"], batch["owner"], batch["gains"], 4)
        pred = model.predict(model.encode(context), batch["label"])
        z_bar = model.encode(batch["target"], target=True)
        eq3 = jepa_loss(pred, z_bar, "mean", True)
        q, k = pred.mean(dim=(1, 2)), z_bar.mean(dim=(1, 2))
        expected = eq3 + 0.5 * info_nce(q - q.mean(0), k - k.mean(0), 0.2)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert loss.item() > eq3.item()


def test_loss_terms_are_logged_by_name_and_sum_to_the_loss():
    """Phase 2 logs Eq. 3 (`loss_jepa`) and the pooled InfoNCE (`loss_contrast`) apart; the loss is jepa + w * contrast.
    Phase 1 logs its one term, Eq. 1 (`loss_infonce`)."""
    import lightning as L

    from stemjepa.config import load_config
    from stemjepa.training.module import StemJEPAModule

    module = _phase2_module(["jepa.contrastive_weight=0.5"])
    loss, extra = module.compute_loss(_batch(module.model))
    assert loss.item() == pytest.approx((extra["loss_jepa"] + 0.5 * extra["loss_contrast"]).item(), abs=1e-6)
    module = _phase2_module(["jepa.contrastive_weight=0"])
    loss, extra = module.compute_loss(_batch(module.model))
    assert "loss_contrast" not in extra and loss.item() == pytest.approx(extra["loss_jepa"].item())
    phase1 = StemJEPAModule(load_config("tiny_phase1", ["model.encoder.depth=1"]))
    phase1.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_checkpointing=False)
    loss, extra = phase1.compute_loss(_batch(phase1.model))
    assert loss.item() == pytest.approx(extra["loss_infonce"].item()) and loss.requires_grad


def test_context_negative_is_a_stem_of_the_samples_own_mix():
    module = _phase2_module(["jepa.contrastive_weight=1.0", "contrastive.context_negatives=true"])
    batch = _batch(module.model)
    batch["gains"] = torch.tensor([2.0, 1.0, 3.0, 0.5, 1.0, 1.0, 1.0])
    hard, mask = module._context_negatives(batch)
    assert mask.tolist() == [True, False, True, False]  # a one-stem mix would be its own negative
    assert torch.allclose(hard[0], 2.0 * batch["context"][0]) and torch.allclose(hard[2], 0.5 * batch["context"][3])
    loss, _ = module.compute_loss(batch)
    assert torch.isfinite(loss)


def test_last_logged_takes_each_diagnostics_latest_value_over_log_versions(tmp_path):
    from stemjepa.training.rundir import last_logged

    for version, rows in ((0, "step,train/loss,train/top1\n0,3.0,0.1\n10,2.5,\n"),
                          (1, "step,train/loss,train/rankme\n20,2.0,7.5\n")):
        folder = tmp_path / "logs" / f"version_{version}"
        folder.mkdir(parents=True)
        (folder / "metrics.csv").write_text(rows)
    assert last_logged(tmp_path) == {"loss": 2.0, "top1": 0.1, "rankme": 7.5}


def test_phase1_temperature_starts_at_its_config_value_and_is_floored_by_it():
    import math

    import lightning as L

    from stemjepa.config import load_config
    from stemjepa.training.module import StemJEPAModule

    cfg = load_config("tiny_phase1", ["model.encoder.depth=1", "contrastive.temperature_init=0.2",
                                      "contrastive.temperature_min=0.05"])
    module = StemJEPAModule(cfg)
    assert module.model.log_temperature.item() == pytest.approx(math.log(0.2))  # saved under its old key
    module.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                               enable_checkpointing=False)
    with torch.no_grad():
        module.model.log_temperature.fill_(math.log(0.001))
    _, extra = module.compute_loss(_batch(module.model))
    assert extra["temperature"].item() == pytest.approx(0.05)


def test_text_dim_is_recorded_in_the_training_config_not_by_the_model(monkeypatch):
    from stemjepa.config import load_config, resolve_config
    from stemjepa.models import conditioning, text_encoders
    from stemjepa.training import module as module_mod

    monkeypatch.setattr(text_encoders, "text_dim", lambda backend, clap_model: 12)
    monkeypatch.setattr(conditioning, "text_dim", lambda backend, clap_model: pytest.fail("the model asked the encoder"))
    cfg = load_config("tiny", ["model.encoder.depth=1", "model.predictor.num_layers=2"])
    assert cfg.model.conditioning.text_dim is None
    resolved = resolve_config(cfg)
    assert resolved.model.conditioning.text_dim == 12 and cfg.model.conditioning.text_dim is None  # pure: cfg unchanged
    assert resolve_config(resolved) == resolved  # resolving twice changes nothing
    module = module_mod.StemJEPAModule(cfg)
    assert module.cfg.model.conditioning.text_dim == 12 == module.model.conditioner.dim  # the checkpoint saves module.cfg
