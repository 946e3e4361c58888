"""A fake model (an `EmbeddingModel`, stemjepa.models.protocol) whose answers are known, and tone libraries for it.

Embedding: per 2 s chunk, the RMS amplitude in 32 log-spaced frequency bands (a pure tone is ~one band). Query
("predict the missing stem"): the fake reads the mix's strongest tone f0 and, for "bass", predicts a tone at f0 / 4
(in the generated songs the bass plays two octaves below the keys), so the held-out bass of a song is the right answer.
Also importable by the subprocess of the kill test (tests/ on sys.path).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import soundfile as sf

from stemjepa.models.inference import TrackEmbedding
from stemjepa.models.source import IN_MEMORY

SR = 16000
CHUNK = 2 * SR
PATCH = 2560
BANDS = np.geomspace(40.0, 7900.0, 33)
BASS_ROOTS = [55.0, 73.4, 98.0, 130.8, 174.6]  # ~5 semitones apart: distinct bands


def band_features(x: np.ndarray) -> np.ndarray:
    spec = np.abs(np.fft.rfft(x, n=CHUNK))
    freqs = np.fft.rfftfreq(CHUNK, 1 / SR)
    return np.array([np.sqrt(np.mean(spec[(freqs >= lo) & (freqs < hi)] ** 2) + 1e-12)
                     for lo, hi in zip(BANDS[:-1], BANDS[1:])], dtype=np.float32)


class FakeModel:
    """Deterministic stand-in for StemJEPA: the EmbeddingModel protocol (precision is accepted and ignored)."""

    sample_rate = SR
    chunk_samples = CHUNK
    patch_seconds = PATCH / SR
    embed_dim = 32
    has_predictor = True
    conditioning_kind = "text"
    source = IN_MEMORY
    precision = "auto"
    distance = "cosine"

    def __init__(self, model_id: str = "fake-0001", delay: float = 0.0):
        self.model_id = model_id
        self.delay = delay  # seconds per embedded file (slow model for the kill test)
        self.embedded = 0  # files embedded so far
        self.query_calls = 0

    @property
    def known_labels(self) -> list[str]:
        return ["bass", "drums", "keys"]

    def _track(self, wave: np.ndarray) -> TrackEmbedding:
        n = max(1, -(-len(wave) // CHUNK))
        padded = np.zeros(n * CHUNK, np.float32)
        padded[:len(wave)] = wave
        chunks = np.stack([band_features(c) for c in padded.reshape(n, CHUNK)])
        weights = np.array([max(1, min(CHUNK, len(wave) - i * CHUNK) // PATCH) for i in range(n)], np.float32)
        vector = (chunks * weights[:, None]).sum(0) / weights.sum()
        return TrackEmbedding(chunks, (np.arange(n) * CHUNK / SR).astype(np.float32), weights, vector.astype(np.float32))

    def embed_many(self, waves, batch_size: int = 16, target: bool = True, precision: str | None = None):
        out = []
        for w in waves:
            if self.delay:
                time.sleep(self.delay)
            out.append(self._track(np.asarray(w, np.float32)))
            self.embedded += 1
        return out

    def embed(self, wave, batch_size: int = 16):
        return self.embed_many([wave], batch_size)[0]

    def query_many(self, mixes, labels, batch_size: int = 16, precision: str | None = None):
        self.query_calls += 1
        out = []
        for mix, label in zip(mixes, labels):
            if label == "bass":
                spec = np.abs(np.fft.rfft(mix))
                f0 = np.fft.rfftfreq(len(mix), 1 / SR)[int(np.argmax(spec[1:])) + 1]
                mix = tone(f0 / 4, len(mix) / SR)
            out.append(self._track(np.asarray(mix, np.float32)))
        return out

    def query(self, mix, label, batch_size: int = 16):
        return self.query_many([mix], [label], batch_size)[0]


def tone(freq: float, seconds: float, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noise(seconds: float, amp: float = 0.05, seed: int = 0) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def write(path: Path, wave: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, SR, subtype="FLOAT")
    return path


def write_songs(root: Path, seconds: float = 3.0) -> dict[int, dict[str, np.ndarray]]:
    """Songs i = 0..4: bass tone at BASS_ROOTS[i], keys two octaves up, a little noise as drums; one file per stem."""
    songs = {}
    for i, root_f in enumerate(BASS_ROOTS):
        stems = {"bass": tone(root_f, seconds), "keys": tone(4 * root_f, seconds, 0.2), "drums": noise(seconds, seed=i)}
        for name, wave in stems.items():
            write(root / f"song{i}" / f"{name}.wav", wave)
        songs[i] = stems
    return songs


def test_fake_model_finds_the_bass_two_octaves_below():
    model = FakeModel()
    mix = tone(4 * 98.0, 3.0, 0.2) + noise(3.0)
    predicted = model.query(mix, "bass").vector
    bass = model.embed(tone(98.0, 3.0)).vector
    other = model.embed(tone(55.0, 3.0)).vector
    cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    assert cos(predicted, bass) > 0.99 > 0.2 > cos(predicted, other)
    emb = model.embed(tone(98.0, 5.0))
    assert emb.chunks.shape == (3, 32) and list(emb.offsets) == [0.0, 2.0, 4.0] and emb.weights[-1] < emb.weights[0]
