"""Models: encoder, predictor, conditioning, losses, EMA, the whole StemJEPA, and checkpoint loading."""
from .checkpoint import load_model
from .inference import TrackEmbedding

__all__ = ["load_model", "TrackEmbedding"]
