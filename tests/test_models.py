import math

import pytest
import torch

from stemjepa.config import ConditioningConfig, TrainConfig, load_config
from stemjepa.models.conditioning import ClassConditioner
from stemjepa.models.ema import ema_tau, ema_update
from stemjepa.models.encoder import ViTEncoder, count_parameters, sincos_2d
from stemjepa.models.losses import info_nce, jepa_loss
from stemjepa.models.predictor import Predictor


def test_paper_encoder_has_about_85m_parameters_and_a_5x50_grid():
    enc = ViTEncoder(n_mels=80, n_frames=801, embed_dim=768, depth=12, num_heads=12)
    assert 85.0e6 < count_parameters(enc) < 85.6e6
    assert enc.grid == (5, 50)  # K = 250 tokens


def test_encoder_returns_patch_grid_without_cls():
    enc = ViTEncoder(n_mels=80, n_frames=801, embed_dim=32, depth=1, num_heads=2)
    out = enc(torch.randn(3, 80, 801))
    assert out.shape == (3, 5, 50, 32)


def test_sincos_positions_split_time_and_frequency():
    pos = sincos_2d(8, 2, 3).view(2, 3, 8)
    # first half depends on time only, second half on frequency only
    assert torch.allclose(pos[0, :, :4], pos[1, :, :4])
    assert torch.allclose(pos[:, 0, 4:], pos[:, 2, 4:])
    assert not torch.allclose(pos[0, 0, :4], pos[0, 1, :4])


def test_film_shapes_and_condition_changes_output():
    pred = Predictor(embed_dim=16, cond_dim=6, hidden_dim=32, num_layers=6, fusion="film")
    gamma, beta = pred.film_params(torch.randn(2, 6))
    assert gamma.shape == beta.shape == (2, 5, 32)  # one (gamma, beta) pair per hidden layer l = 1..L-1
    z = torch.randn(2, 5, 50, 16)
    c1, c2 = torch.randn(2, 6), torch.randn(2, 6)
    out1, out2 = pred(z, c1), pred(z, c2)
    assert out1.shape == z.shape
    assert not torch.allclose(out1, out2)
    # tokens are processed separately: permuting tokens permutes outputs
    perm = torch.randperm(250)
    flat = z.reshape(2, 250, 16)
    assert torch.allclose(pred(flat[:, perm], c1), pred(flat, c1)[:, perm], atol=1e-5)


def test_film_equation_5_by_hand():
    pred = Predictor(embed_dim=3, cond_dim=2, hidden_dim=4, num_layers=2, fusion="film", final_norm=False)
    z, c = torch.randn(1, 1, 3), torch.randn(1, 2)
    gamma, beta = pred.film_params(c)
    h1 = pred.layers[0](z)
    expected = pred.layers[1](torch.relu(gamma[:, 0] * h1 + beta[:, 0]))
    assert torch.allclose(pred(z, c), expected, atol=1e-6)


def test_concat_conditioning_appends_c_to_each_token():
    pred = Predictor(embed_dim=8, cond_dim=3, hidden_dim=16, num_layers=3, fusion="concat")
    assert pred.layers[0].in_features == 11
    z = torch.randn(2, 10, 8)
    assert not torch.allclose(pred(z, torch.zeros(2, 3)), pred(z, torch.ones(2, 3)))


def test_info_nce_value_on_hand_made_tensors():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    s_bar = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    tau = 0.5
    # cosine matrix [[1, 0.6], [0, 0.8]] / tau; row-wise cross-entropy on the diagonal
    l0 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(1.2)))
    l1 = -math.log(math.exp(1.6) / (math.exp(0.0) + math.exp(1.6)))
    assert info_nce(s, s_bar, tau).item() == pytest.approx((l0 + l1) / 2, abs=1e-6)
    # scale invariance of the cosine similarity
    assert info_nce(3 * s, 0.5 * s_bar, tau).item() == pytest.approx((l0 + l1) / 2, abs=1e-6)


def test_info_nce_hard_negative_joins_its_row_only_where_masked_in():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    s_bar = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    hard = torch.tensor([[0.8, 0.6], [1.0, 0.0]])
    tau = 0.5
    # row 0 gains the extra logit cos(s_0, hard_0) / tau = 1.6; row 1 is masked out, so it keeps its Eq. 1 value
    l0 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(1.2) + math.exp(1.6)))
    l1 = -math.log(math.exp(1.6) / (math.exp(0.0) + math.exp(1.6)))
    mask = torch.tensor([True, False])
    assert info_nce(s, s_bar, tau, hard=hard, hard_mask=mask).item() == pytest.approx((l0 + l1) / 2, abs=1e-6)
    # the column direction of the symmetric loss is Eq. 1's: targets are not contrasted with the hard negatives
    cols = (-math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(0.0)))
            - math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))) / 2
    sym = info_nce(s, s_bar, tau, symmetric=True, hard=hard, hard_mask=mask).item()
    assert sym == pytest.approx(0.5 * ((l0 + l1) / 2 + cols), abs=1e-6)


def test_jepa_loss_equation_3():
    pred = torch.tensor([[[2.0, 0.0], [0.0, 3.0]]])  # one sample, K = 2 tokens
    target = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    # token 1: same direction -> 0; token 2: orthogonal -> |(0,1) - (1,0)|^2 = 2
    assert jepa_loss(pred, target, reduction="sum").item() == pytest.approx(2.0)
    assert jepa_loss(pred, target, reduction="mean").item() == pytest.approx(1.0)
    assert jepa_loss(-target, target, reduction="mean").item() == pytest.approx(4.0)


def test_ema_schedule_endpoints_and_update():
    assert ema_tau(0, 100, 0.99995, 0.99999) == pytest.approx(0.99995)
    assert ema_tau(100, 100, 0.99995, 0.99999) == pytest.approx(0.99999)
    assert ema_tau(50, 100, 0.9, 1.0) == pytest.approx(0.95)
    online, target = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = target.weight.detach().clone()
    ema_update(target, online, 0.9)
    assert torch.allclose(target.weight, 0.9 * before + 0.1 * online.weight.detach())


def test_class_conditioner_maps_labels():
    cond = ClassConditioner(ConditioningConfig(kind="classes", classes=["bass", "drums", "vocals", "other"], class_dim=4))
    assert cond.class_index("bass") == 0
    assert cond.class_index("electric bass") == 0
    assert cond.class_index("Drums") == 1
    assert cond.class_index("banjo") == 3
    assert cond(["bass", "drums"]).shape == (2, 4)


def test_text_conditioner_minilm_is_real_and_cached():
    from stemjepa.models.conditioning import TextConditioner

    cond = TextConditioner(ConditioningConfig(kind="text", text_backend="minilm"))
    c = cond(["electric bass", "bass guitar", "snare drum"])
    assert c.shape == (3, 384)
    sims = c @ c.T
    assert sims[0, 1] > sims[0, 2]  # a real sentence model: bass ~ bass more than bass ~ snare
    n = len(cond.labels)
    cond(["electric bass"])
    assert len(cond.labels) == n


def test_clap_backend_missing_gives_clear_error(tmp_path):
    from stemjepa.errors import ConfigError
    from stemjepa.models.text_encoders import ClapTextEncoder

    with pytest.raises(ConfigError, match="not found locally"):
        ClapTextEncoder(str(tmp_path / "no_such_clap"))


def test_every_config_builds():
    from stemjepa.config import available_configs

    names = available_configs()
    for required in ["paper_phase1", "paper_phase2", "contrastive_baseline", "stemjepa", "clap_conditioning",
                     "contrastive_pretraining", "film", "tiny_phase1", "tiny"]:
        assert required in names
    for name in names:
        cfg = load_config(name)
        assert isinstance(cfg, TrainConfig)
    paper = load_config("paper_phase2")
    assert (paper.data.batch_size, paper.max_steps, paper.optim.warmup_steps, paper.optim.lr) == (256, 300000, 20000, 1e-3)
    assert paper.model.predictor.num_layers == 6 and paper.model.predictor.hidden_dim == 1024
    assert paper.model.conditioning.text_backend == "clap" and paper.model.predictor.fusion == "film"


def test_config_errors_are_clear():
    from stemjepa.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        load_config("tiny", ["model.bogus=1"])
    with pytest.raises(ConfigError, match="not found"):
        load_config("no_such_config")


def test_long_inputs_are_chunked_and_short_ones_padded_with_silence():
    import numpy as np

    from stemjepa.models.inference import split_chunks

    chunks, valid = split_chunks(np.ones(16000 * 20, dtype=np.float32), 128000, 2560)
    assert chunks.shape == (3, 128000) and valid.tolist() == [50, 50, 25]  # 20 s = 8 + 8 + 4 s; 4 s = 25 patches of 0.16 s
    assert chunks[2, 64000:].max() == 0 and chunks[2, :64000].min() == 1  # the last chunk is padded with silence
    chunks, valid = split_chunks(np.ones(48000, dtype=np.float32), 128000, 2560)
    assert chunks.shape == (1, 128000) and valid.tolist() == [19]  # 3 s -> ceil(48000 / 2560) patches hold audio


def test_track_embedding_averages_only_real_patches(tiny_checkpoint):
    import numpy as np

    from stemjepa.models import load_model

    model = load_model(tiny_checkpoint, device="cpu")
    wave = (np.random.default_rng(0).standard_normal(model.chunk_samples + model.chunk_samples // 2) * 0.1).astype(np.float32)
    emb = model.embed(wave)
    assert emb.chunks.shape == (2, model.embed_dim)
    assert emb.offsets.tolist() == [0.0, model.chunk_samples / model.sample_rate]
    expected = (emb.chunks * emb.weights[:, None]).sum(0) / emb.weights.sum()
    assert np.allclose(emb.vector, expected, atol=1e-5)


def test_config_values_are_typed_and_checked():
    from stemjepa.errors import ConfigError

    cfg = load_config("tiny", ["optim.lr=5e-4", "data.num_workers=3", "compile=true", "data.split=null"])
    assert cfg.optim.lr == 5e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.data.num_workers == 3 and cfg.compile is True and cfg.data.split is None
    for bad, message in [("phase=3", "not one of"), ("data.label_level=fin", "not one of"), ("optim.lr=abc", "not a valid float"),
                         ("max_steps=1.5", "not a valid int")]:
        with pytest.raises(ConfigError, match=message):
            load_config("tiny", [bad])


def test_predictor_fusion_key_and_its_old_name_conditioning():
    from stemjepa.config import from_dict, to_dict
    from stemjepa.errors import ConfigError

    old = from_dict({"phase": 2, "model": {"predictor": {"conditioning": "concat", "num_layers": 3}}})  # old files
    assert old.model.predictor.fusion == "concat" and old.model.predictor.num_layers == 3
    assert "conditioning" not in to_dict(old)["model"]["predictor"]  # written again under the new name
    assert load_config("tiny", ["model.predictor.conditioning=concat"]).model.predictor.fusion == "concat"  # old override
    assert load_config("tiny", ["model.predictor.fusion=concat"]).model.predictor.fusion == "concat"
    with pytest.raises(ConfigError, match="old name of 'fusion'"):
        from_dict({"model": {"predictor": {"conditioning": "concat", "fusion": "film"}}})
    with pytest.raises(ConfigError, match="not one of film, concat"):
        load_config("tiny", ["model.predictor.fusion=sum"])


def test_old_yaml_key_is_migrated_before_its_base_is_merged(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("base: tiny\nmodel:\n  predictor: {conditioning: concat}\n")  # tiny.yaml says fusion: film
    cfg = load_config(str(old))
    assert cfg.model.predictor.fusion == "concat" and cfg.model.predictor.hidden_dim == 256


def test_closed_choices_are_literal_types_checked_and_coerced():
    from stemjepa.errors import ConfigError

    assert load_config("tiny", ["precision=32"]).precision == "32"  # YAML reads 32 as an int
    assert load_config("tiny", ["phase=1"]).phase == 1
    for override, message in [("phase=3", "not one of 1, 2"), ("model.conditioning.kind=words", "not one of classes, text"),
                              ("data.label_level=finest", "not one of random"), ("jepa.loss_reduction=max", "mean, sum")]:
        with pytest.raises(ConfigError, match=message):
            load_config("tiny", [override])


def test_model_is_built_from_its_model_config_and_phase_alone():
    from stemjepa.config import ModelConfig
    from stemjepa.models.stemjepa import StemJEPA

    cfg = load_config("tiny", ["model.encoder.depth=1", "model.conditioning.kind=classes", "model.conditioning.class_dim=8"])
    model = StemJEPA(cfg.model, 2)
    assert isinstance(model.config, ModelConfig) and model.phase == 2 and model.has_predictor
    assert model.predictor.fusion == cfg.model.predictor.fusion
    p1 = StemJEPA(cfg.model, 1)
    assert not p1.has_predictor and "log_temperature" in p1.state_dict()  # the phase-1 temperature keeps its key
    with pytest.raises(ValueError, match="phase must be 1 or 2"):
        StemJEPA(cfg.model, 3)


def test_encoder_size_presets_live_beside_the_encoder():
    from stemjepa.config import EncoderConfig
    from stemjepa.errors import ConfigError
    from stemjepa.models.encoder import ENCODER_SIZES, encoder_dims

    assert encoder_dims(EncoderConfig(size="tiny")) == (192, 4, 3) and set(ENCODER_SIZES) == {"tiny", "small", "base"}
    assert encoder_dims(EncoderConfig(size="tiny", depth=1)) == (192, 1, 3)
    assert encoder_dims(EncoderConfig(size="custom", embed_dim=64, depth=2, num_heads=4)) == (64, 2, 4)
    with pytest.raises(ConfigError, match="unknown"):
        encoder_dims(EncoderConfig(size="huge"))


def test_text_queries_leave_the_state_dict_and_config_unchanged(monkeypatch):
    import numpy as np

    from stemjepa.models import conditioning
    from stemjepa.models.digest import weights_digest

    calls = []

    class FakeText:
        def encode(self, labels):
            calls.append(list(labels))
            return np.stack([np.full(4, float(len(l)), dtype=np.float32) for l in labels])

    monkeypatch.setattr(conditioning, "get_text_encoder", lambda backend, clap_model: FakeText())
    monkeypatch.setattr(conditioning, "text_dim", lambda backend, clap_model: 4)
    cfg = ConditioningConfig(kind="text", text_backend="minilm")
    cond = conditioning.TextConditioner(cfg)
    assert cond.dim == 4 and cfg.text_dim is None  # the conditioner does not write into the config
    cond.add_labels(["Bass", "drums"])  # training labels: the saved table
    before, digest = {k: v.clone() for k, v in cond.state_dict().items() if torch.is_tensor(v)}, weights_digest(cond)
    c = cond(["bass", "a kazoo", "drums", "a kazoo"])
    assert torch.equal(c[0], before["table"][0]) and torch.equal(c[1], c[3]) and c[1, 0] == len("a kazoo")
    assert cond(["a kazoo"]).shape == (1, 4) and calls == [["bass", "drums"], ["a kazoo"]]  # embedded once, then cached
    assert weights_digest(cond) == digest and cond.labels == ["bass", "drums"]  # queries change no saved state
    assert set(cond.state_dict()) == set(before) | {"_extra_state"}
    fresh = conditioning.TextConditioner(cfg)
    fresh.load_state_dict(cond.state_dict())
    assert fresh.labels == ["bass", "drums"] and torch.equal(fresh(["drums"]), c[2:3])


def test_a_model_built_without_a_recipe_exports_its_model_config_and_phase(tmp_path):
    from stemjepa.models.export import export_model, load_export, read_export
    from stemjepa.models.stemjepa import StemJEPA

    cfg = load_config("tiny_phase1", ["model.encoder.depth=1"])
    model = StemJEPA(cfg.model, 1)
    export_model(model, tmp_path / "m.safetensors")
    saved = read_export(tmp_path / "m.safetensors")[1]["config"]
    assert saved["phase"] == 1 and saved["model"]["encoder"]["depth"] == 1 and "optim" not in saved
    loaded = load_export(tmp_path / "m.safetensors", device="cpu")
    assert loaded.model_id == model.model_id and loaded.config == model.config and loaded.phase == 1


@pytest.mark.parametrize(("config", "distance"), [("paper_phase1", "l2"), ("paper_phase2", "l2"), ("tiny_phase1", "cosine"),
                                                  ("tiny", "cosine")])
def test_a_model_records_the_distance_it_was_trained_for(config, distance):
    """Centred models are trained with InfoNCE on normalised vectors (cosine); the paper's with Eq. 3 on raw ones (L2)."""
    from stemjepa.models.stemjepa import StemJEPA

    cfg = load_config(config, ["model.encoder.embed_dim=32", "model.encoder.depth=1", "model.encoder.num_heads=2",
                               "model.conditioning.kind=classes"])
    with torch.device("meta"):  # only the config matters: nothing is allocated
        model = StemJEPA(cfg.model, phase=cfg.phase)
    assert model.distance == distance == ("cosine" if cfg.model.center_embeddings else "l2")


def test_both_conditioners_expose_labels_and_vectors():
    """Callers read `labels` and `vectors()` whatever the conditioning kind (no kind-specific attribute, no hasattr)."""
    from stemjepa.config import ConditioningConfig
    from stemjepa.models.conditioning import build_conditioner

    classes = build_conditioner(ConditioningConfig(kind="classes", classes=["bass", "drums", "Other"], class_dim=8))
    assert classes.labels == ["bass", "drums", "other"] and tuple(classes.vectors().shape) == (3, 8)
    text = build_conditioner(ConditioningConfig(kind="text", text_backend="minilm", text_dim=384))
    text.add_labels(["Hi-Hat", "bass guitar"])
    assert text.labels == ["bass guitar", "hi-hat"] and tuple(text.vectors().shape) == (2, 384)


def test_one_label_picker_for_fine_coarse_and_random():
    from pathlib import Path

    import numpy as np

    from stemjepa.data.labels import UNLABELLED, label_at
    from stemjepa.data.multitrack import Stem

    path = ["guitar", "clean electric guitar"]
    assert (label_at(path, "fine"), label_at(path, "coarse"), label_at([], "fine")) == (path[1], path[0], UNLABELLED)
    assert {label_at(path, "random", np.random.default_rng(s)) for s in range(20)} == set(path)
    stem = Stem(name="gtr", path=Path("gtr.wav"), labels=path)
    assert (stem.fine, stem.coarse) == (path[1], path[0])
    with pytest.raises(ValueError, match="fine or coarse"):
        label_at(path, "finest")
