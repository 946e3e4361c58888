"""`stemjepa serve`: a local web app to search a stem library and audition candidates against the mix.

`create_app(config)` builds the FastAPI application (JSON API under /api, OpenAPI at /openapi.json, the page at /).
Names are imported lazily so that `stemjepa --help` does not load FastAPI, numpy or torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"create_app": "api", "ServeConfig": "settings", "Limits": "settings"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
