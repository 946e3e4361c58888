"""Spectrogram pictures (PNG) of a mix and of a candidate aligned to it, so the two line up in time on the page."""
from __future__ import annotations

import io

import numpy as np

WIDTH = 720  # time columns of a picture
HEIGHT = 96  # frequency rows (log-spaced)


def spectrogram(wave: np.ndarray, sample_rate: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """(height, width) dB magnitudes in [0, 1], low frequencies at the bottom row, log-spaced 40 Hz to Nyquist."""
    x = np.asarray(wave, np.float32)
    x = x.mean(0) if x.ndim == 2 else x
    n_fft = 1024
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    starts = np.linspace(0, len(x) - n_fft, width).astype(np.int64)
    frames = np.stack([x[s:s + n_fft] for s in starts]) * np.hanning(n_fft).astype(np.float32)
    mag = np.abs(np.fft.rfft(frames, axis=1))  # (width, bins)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    edges = np.geomspace(40.0, sample_rate / 2, height + 1)
    rows = np.clip(np.searchsorted(freqs, edges), 1, len(freqs) - 1)
    bands = np.stack([mag[:, a:max(b, a + 1)].mean(1) for a, b in zip(rows[:-1], rows[1:])], axis=0)
    db = 20 * np.log10(bands + 1e-6)
    top = float(db.max())
    return np.clip((db - (top - 80.0)) / 80.0, 0.0, 1.0)[::-1]


def spectrogram_png(wave: np.ndarray, sample_rate: int) -> bytes:
    """The spectrogram as a PNG (magma colour map)."""
    from matplotlib import image

    buf = io.BytesIO()
    image.imsave(buf, spectrogram(wave, sample_rate), cmap="magma", vmin=0.0, vmax=1.0, format="png")
    return buf.getvalue()
