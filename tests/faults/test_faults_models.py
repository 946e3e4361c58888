"""Model files (issue 23): a .ckpt or .safetensors whose config describes a huge model is refused before anything is
allocated; the architecture a file describes is checked against its tensors' names, shapes and dtypes before the model is
built; only floating-point weights load; hostile numbers in a config are refused with a message naming the key.

The hostile files are made from the built-in model (no training needed): its export re-saved with another config, and
the same weights as a checkpoint (the `stemjepa` and `state_dict` entries `stemjepa fit` writes).
"""
from __future__ import annotations

import json
import tracemalloc

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from stemjepa.cli.main import main
from stemjepa.config import load_config
from stemjepa.errors import CheckpointError, ConfigError
from stemjepa.models.architecture import MAX_MODEL_VALUES, check_model_config, model_values
from stemjepa.models.registry import builtin_models, load_model
from stemjepa.models.stemjepa import StemJEPA

BUILTIN = "stemjepa-tiny-synth-v1"


@pytest.fixture(scope="module")
def builtin():
    """(tensors, metadata) of the built-in model's export. Loading it once first imports every module a load needs, so
    that the memory measured below is the load's, not that of first imports."""
    from safetensors import safe_open

    load_model(BUILTIN, device="cpu")
    with AllocationMeter():  # the meter's own first use imports torch._dynamo (tens of MB), which a load no longer does
        torch.zeros(1)
    path = builtin_models()[BUILTIN].file
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata())
    return load_file(str(path)), meta


def write_model(folder, fmt: str, tensors: dict, meta: dict, config_change=None, name: str = "m") -> str:
    """The built-in model's tensors, with `config_change(model_config_dict)` applied to its config, as a .safetensors
    export or a .ckpt checkpoint."""
    meta = dict(meta)
    config = json.loads(meta["config"])
    if config_change:
        config_change(config["model"])
    meta["config"] = json.dumps(config)
    meta.pop("model_id", None)  # a crafted export has no recorded id to compare with
    path = folder / f"{name}.{fmt}"
    if fmt == "safetensors":
        save_file(tensors, str(path), metadata=meta)
    else:
        state = {f"model.{k}": v for k, v in tensors.items()}
        state.update({f"model.{k}": v for k, v in json.loads(meta["extra_state"]).items()})
        torch.save({"stemjepa": {"format_version": 1, "config": config}, "state_dict": state}, path)
    return str(path)


class AllocationMeter(TorchDispatchMode):
    """Bytes of every new tensor storage on a real device (meta tensors hold no memory; a memory-mapped file's storage
    comes in as an input, not as a new one) while active."""

    def __init__(self):
        super().__init__()
        self.bytes = 0
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {x.untyped_storage().data_ptr() if torch.is_tensor(x) else x.data_ptr()
                  for x in tree_leaves((args, kwargs)) if torch.is_tensor(x) or isinstance(x, torch.UntypedStorage)}
        for t in tree_leaves(out):
            if torch.is_tensor(t) and t.device.type != "meta":
                storage = t.untyped_storage()
                ptr = storage.data_ptr()
                if ptr not in inputs and ptr not in self._seen:
                    self._seen.add(ptr)
                    self.bytes += storage.nbytes()
        return out


def measured(fn):
    """(error raised by fn, bytes of torch storages it allocated, peak bytes of Python / numpy memory)."""
    tracemalloc.start()
    meter = AllocationMeter()
    error = None
    try:
        with meter:
            fn()
    except Exception as exc:  # noqa: BLE001 - handed back to the test
        error = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return error, meter.bytes, peak


def _set(section: str, **values):
    def change(model: dict) -> None:
        model[section].update(values)
    return change


HUGE = {  # variant -> (config change, words of the refusal)
    "encoder_100000_wide": (_set("encoder", embed_dim=100_000, num_heads=4), "model.encoder.embed_dim: 100000 is above"),
    "a_million_encoder_layers": (_set("encoder", depth=1_000_000), "model.encoder.depth: 1000000 is above"),
    "ten_hour_chunks": (_set("encoder", chunk_seconds=36_000.0), "model.encoder.chunk_seconds"),
    "predictor_a_million_wide": (_set("predictor", hidden_dim=1_000_000), "model.predictor.hidden_dim"),
    "filterbank_of_ten_million_bins": (_set("frontend", n_fft=10_000_000, win_length=400), "model.frontend.n_fft"),
    "every_size_in_bounds_but_51_billion_values": (_set("encoder", embed_dim=4096, depth=128, num_heads=16),
                                                  "above the limit of 1,000,000,000"),
    "plausible_vit_large_with_the_tiny_tensors": (_set("encoder", embed_dim=1024, depth=24, num_heads=16),
                                                  "weights do not match the config inside it: tensor encoder.blocks.3"),
    "wide_encoder_with_the_tiny_tensors": (_set("encoder", embed_dim=2048, num_heads=16),
                                           "query_center has shape [128], the config describes [2048]"),
}


@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
@pytest.mark.parametrize("variant", sorted(HUGE))
def test_model_file_describing_a_huge_model_is_refused_before_allocation(variant, fmt, builtin, tmp_path):
    tensors, meta = builtin
    change, words = HUGE[variant]
    path = write_model(tmp_path, fmt, tensors, meta, change)
    error, torch_bytes, python_peak = measured(lambda: load_model(path, device="cpu"))
    assert isinstance(error, CheckpointError), error
    assert str(error).startswith(f"{path}: ") and words in str(error)
    # nothing the config describes was allocated: a few MB at most (the real model of the variant is GBs to TBs)
    assert torch_bytes < 2e6 and python_peak < 8e6, (torch_bytes, python_peak)


def test_allocation_meter_sees_a_model_being_built(builtin, tmp_path):
    """The positive control of the test above: loading the good file measures the model's memory."""
    tensors, meta = builtin
    path = write_model(tmp_path, "ckpt", tensors, meta)
    error, torch_bytes, _ = measured(lambda: load_model(path, device="cpu"))
    assert error is None
    assert torch_bytes > sum(t.nbytes for t in tensors.values())


@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool])
def test_integer_typed_weights_are_refused_naming_the_tensor(dtype, fmt, builtin, tmp_path):
    tensors, meta = builtin
    name = "encoder.blocks.0.attn.qkv.weight"
    bad = {**tensors, name: (tensors[name] * 1000).to(dtype)}
    path = write_model(tmp_path, fmt, bad, meta)
    with pytest.raises(CheckpointError) as exc:
        load_model(path, device="cpu")
    kind = str(dtype).replace("torch.", "")
    assert str(exc.value).startswith(f"{path}: tensor {name} is {kind} where the model holds float32")
    assert "only floating-point weights" in str(exc.value)


def test_complex_weights_are_refused_naming_the_tensor(builtin, tmp_path):
    tensors, meta = builtin
    name = "predictor.layers.0.weight"
    path = write_model(tmp_path, "ckpt", {**tensors, name: tensors[name].to(torch.complex64)}, meta)
    with pytest.raises(CheckpointError, match=f"tensor {name} is complex64 where the model holds float32"):
        load_model(path, device="cpu")


def test_float_weights_of_another_precision_are_refused_naming_the_tensor(builtin, tmp_path):
    tensors, meta = builtin
    name = "encoder.norm.weight"
    path = write_model(tmp_path, "safetensors", {**tensors, name: tensors[name].half()}, meta)
    with pytest.raises(CheckpointError, match=f"tensor {name} is float16 where the model holds float32"):
        load_model(path, device="cpu")


@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
def test_weights_of_another_shape_are_refused_naming_the_first_mismatch(fmt, builtin, tmp_path):
    tensors, meta = builtin
    name = "predictor.layers.1.weight"
    path = write_model(tmp_path, fmt, {**tensors, name: tensors[name][:, :10].clone()}, meta)
    with pytest.raises(CheckpointError) as exc:
        load_model(path, device="cpu")
    assert str(exc.value).startswith(f"{path}: weights do not match the config inside it: {name} has shape "
                                     f"[{tensors[name].shape[0]}, 10], the config describes {list(tensors[name].shape)}")


@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
def test_missing_or_extra_tensors_are_refused_naming_one(fmt, builtin, tmp_path):
    tensors, meta = builtin
    missing = {k: v for k, v in tensors.items() if k != "target_encoder.norm.bias"}
    with pytest.raises(CheckpointError, match="tensor target_encoder.norm.bias is missing"):
        load_model(write_model(tmp_path, fmt, missing, meta, name="missing"), device="cpu")
    extra = {**tensors, "encoder.blocks.99.mlp.0.weight": torch.zeros(4, 4)}
    with pytest.raises(CheckpointError, match="unexpected tensor encoder.blocks.99.mlp.0.weight"):
        load_model(write_model(tmp_path, fmt, extra, meta, name="extra"), device="cpu")


def test_text_table_with_more_rows_than_labels_is_refused(builtin, tmp_path):
    tensors, meta = builtin
    extra = json.loads(meta["extra_state"])
    labels = extra["conditioner._extra_state"]["labels"]
    extra["conditioner._extra_state"]["labels"] = labels[:-1]
    path = write_model(tmp_path, "safetensors", tensors, {**meta, "extra_state": json.dumps(extra)})
    with pytest.raises(CheckpointError, match=f"conditioner.table has {len(labels)} rows for {len(labels) - 1} labels"):
        load_model(path, device="cpu")


def test_hostile_model_file_is_one_line_in_the_cli(builtin, toy_corpus, tmp_path, capsys):
    tensors, meta = builtin
    path = write_model(tmp_path, "ckpt", tensors, meta, HUGE["a_million_encoder_layers"][0])
    wav = next(toy_corpus.glob("*/bass.wav"))
    assert main(["embed", str(wav), "--model", path]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and f"{path}: " in err and "encoder.depth" in err


HOSTILE_NUMBERS = [  # (override, words of the refusal)
    ("model.encoder.depth=0", "model.encoder.depth: 0 must be greater than 0"),
    ("model.encoder.embed_dim=-64", "model.encoder.embed_dim: -64 must be greater than 0"),
    ("model.encoder.num_heads=0", "model.encoder.num_heads: 0 must be greater than 0"),
    ("model.encoder.patch_size=0", "model.encoder.patch_size: 0 must be greater than 0"),
    ("model.encoder.patch_size=1000", "patch_size: 1000 is larger than the log-mel of a chunk"),
    ("model.encoder.chunk_seconds=0.01", "patch_size: 16 is larger than the log-mel of a chunk"),
    ("model.encoder.chunk_seconds=1e9", "model.encoder.chunk_seconds: 1000000000.0 is above the limit of 300"),
    ("model.encoder.depth=100000000", "model.encoder.depth: 100000000 is above the limit of 128"),
    ("model.encoder.mlp_ratio=1e6", "model.encoder.mlp_ratio: 1000000.0 is above the limit of 16"),
    ("model.frontend.n_mels=100000", "model.frontend.n_mels: 100000 is above the limit of 512"),
    ("model.frontend.sample_rate=1000000000", "model.frontend.sample_rate: 1000000000 is above"),
    ("model.frontend.win_length=4000", "model.frontend.win_length: 4000 is longer than n_fft 400"),
    ("model.frontend.hop_length=100000", "model.frontend.hop_length: 100000 is longer than n_fft 400"),
    ("model.predictor.num_layers=1", "model.predictor.num_layers: 1; the predictor needs at least 2 layers"),
    ("model.predictor.num_layers=100000", "model.predictor.num_layers: 100000 is above the limit of 64"),
    ("model.conditioning.text_dim=10000000", "model.conditioning.text_dim: 10000000 is above"),
]


@pytest.mark.parametrize("override,words", HOSTILE_NUMBERS, ids=[o for o, _ in HOSTILE_NUMBERS])
def test_hostile_numbers_in_a_model_config_are_refused_with_the_key(override, words):
    with pytest.raises(ConfigError) as exc:
        cfg = load_config("tiny", ["model.conditioning.text_dim=384", override])
        StemJEPA(cfg.model, cfg.phase)
    assert words in str(exc.value)


def test_hostile_numbers_in_a_model_file_are_refused_naming_the_file(builtin, tmp_path):
    tensors, meta = builtin
    path = write_model(tmp_path, "safetensors", tensors, meta, _set("encoder", patch_size=-16))
    with pytest.raises(CheckpointError, match=f"^{path}: config inside the export is not usable .*patch_size: -16 must be"):
        load_model(path, device="cpu")


@pytest.mark.parametrize("name", ["paper_phase1", "paper_phase2", "tiny", "tiny_phase1", "film", "tiny_contrastive_baseline"])
def test_size_bound_counts_every_value_and_admits_the_paper_models(name):
    """The count from the config alone is the real model's (parameters and buffers), and the paper's ViT-B models are
    well inside MAX_MODEL_VALUES."""
    cfg = load_config(name)
    if cfg.model.conditioning.kind == "text":
        cfg.model.conditioning.text_dim = 512
    with torch.device("meta"):
        model = StemJEPA(cfg.model, cfg.phase)
    real = sum(t.numel() for t in [*model.parameters(), *model.buffers()])
    assert model_values(cfg.model, cfg.phase) == real == check_model_config(cfg.model, cfg.phase)
    assert real < MAX_MODEL_VALUES / 4


def test_builtin_model_still_loads_with_its_recorded_id():
    model = load_model(BUILTIN, device="cpu")
    assert model.model_id == builtin_models()[BUILTIN].card["model_id"]
