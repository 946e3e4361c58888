"""torch.hub entry points: `torch.hub.load(repo_dir, "stemjepa", source="local")` loads the built-in model offline.

    import torch
    model = torch.hub.load("/path/to/stemjepa", "stemjepa", source="local")                  # the default model
    model = torch.hub.load("/path/to/stemjepa", "stemjepa", "stemjepa-tiny-synth-v1", source="local", device="cpu")
    model = torch.hub.load("/path/to/stemjepa", "stemjepa", "runs/p2/checkpoints/last.ckpt", source="local")

The weights are read from the repository's `src/stemjepa/weights/` (safetensors; nothing is downloaded). Audio arrays are
given with their sample rate; they are resampled to the model's 16 kHz and down-mixed (a 2-D array without a rate, or of
ambiguous layout, is refused; a 1-D array without one is taken to be mono 16 kHz):

    model.embed(wave, sample_rate=48000).vector            # (N,), (channels, N) or (N, channels)
    model.query(mix, "bass", sample_rate=44100).vector
"""
import os
import sys

dependencies = ["torch", "numpy", "safetensors", "soundfile", "soxr"]

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)


def stemjepa(name="default", device=None, pretrained=True):
    """A StemJEPA model: `name` is a built-in model name or alias (`stemjepa models`), a .safetensors export or a .ckpt
    checkpoint. pretrained=False: the same architecture with freshly initialised weights (from the model's config).
    Embed with `model.embed(wave, sample_rate=sr)` / `model.query(mix, label, sample_rate=sr)` (module docstring)."""
    from stemjepa.models.registry import load_model

    model = load_model(name, device="cpu" if not pretrained else device)
    if pretrained:
        return model
    from stemjepa.models.checkpoint import place_model
    from stemjepa.models.stemjepa import StemJEPA

    fresh = StemJEPA(model.config, model.phase)
    return place_model(fresh, device)

