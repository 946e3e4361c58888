"""Models: encoder, predictor, conditioning, losses, EMA, the whole StemJEPA, checkpoints, exports and built-in models."""
from .inference import TrackEmbedding
from .registry import load_model

__all__ = ["load_model", "TrackEmbedding"]
