"""stemjepa: zero-shot musical stem retrieval with JEPAs."""
from .version import __version__  # noqa: F401 - the public name


def load_model(name_or_path=None, device=None, eval_mode: bool = True):
    """A StemJEPA by built-in name or alias (default: the built-in default model; `stemjepa models` lists them), or from
    a .safetensors export (`stemjepa export`) or a .ckpt training checkpoint. device=None: CUDA when present, else CPU.

    >>> import stemjepa
    >>> model = stemjepa.load_model()                     # the built-in model, offline
    >>> model.embed(wave_16k).vector                      # one vector per stem
    >>> model.query(mix_16k, "bass").vector               # the predicted embedding of the missing bass
    """
    from .models.registry import load_model as _load  # imported here: `import stemjepa` stays light

    return _load(name_or_path, device=device, eval_mode=eval_mode)


def list_models() -> list[str]:
    """The built-in model names and aliases."""
    from .models.registry import known_names

    return known_names()
