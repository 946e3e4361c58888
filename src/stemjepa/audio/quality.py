"""One rule for degenerate audio wherever a file becomes an embedding (`embed`, `index`; `query` adds stricter limits
for a mix, see `stemjepa.audio.mix`): silence and audio shorter than one time patch are refused with a message
naming the file, because their embedding is meaningless yet looks like any other; a truncated file is read with a
warning (`stemjepa.audio.io`); NaN or infinite samples are refused when decoding.
"""
from __future__ import annotations

import numpy as np

from ..errors import AudioError

MIN_SECONDS = 0.16  # one time patch of the encoder: shorter audio holds no complete patch of sound
SILENT_PEAK = 1e-4  # peak below -80 dBFS: digital silence or a muted bounce


def check_embeddable(wave: np.ndarray, sample_rate: int, name) -> None:
    """Raise AudioError naming `name` when `wave` is too short or silent to embed."""
    seconds = len(wave) / float(sample_rate)
    if seconds < MIN_SECONDS:
        raise AudioError(name, f"too short ({seconds:.3f} s; at least {MIN_SECONDS:g} s, one patch, is needed)")
    peak = float(np.max(np.abs(wave))) if len(wave) else 0.0
    if peak < SILENT_PEAK:
        raise AudioError(name, "silent (peak below -80 dBFS): nothing to embed")


def check_finite_embedding(vector: np.ndarray, name) -> None:
    """NaN/inf in a model output means broken weights or an overflow: report it instead of printing or storing it."""
    if not np.all(np.isfinite(vector)):
        raise AudioError(name, "the model returned NaN or infinite values for this file (damaged checkpoint weights?)")
