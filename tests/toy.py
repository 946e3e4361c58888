"""A tiny tone-based multitrack corpus for tests: songs with distinct tempo and key, written in the generic folder layout."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

STEM_LABELS = {
    "bass": ["bass", "electric bass"],
    "drums": ["drums", "drum kit"],
    "keys": ["piano", "electric piano"],
    "lead": ["vocals", "lead vocals"],
}


def song_stems(index: int, seconds: float = 10.0, sr: int = 16000, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, index])
    t = np.arange(int(seconds * sr)) / sr
    bpm = 70 + 11 * (index % 9)
    beat = 60.0 / bpm
    root = 110.0 * 2 ** ((index * 5 % 12) / 12)
    phase = (t % beat) / beat
    env = np.exp(-6 * phase)
    stems = {
        "bass": 0.4 * np.sin(2 * np.pi * root / 2 * t) * env,
        "drums": 0.3 * rng.standard_normal(len(t)) * np.exp(-30 * phase),
        "keys": 0.15 * sum(np.sin(2 * np.pi * root * r * t) for r in (1, 1.26, 1.5)) * (0.6 + 0.4 * env),
        "lead": 0.2 * np.sin(2 * np.pi * root * 2 * (1 + 0.06 * np.floor(t / beat % 4)) * t),
    }
    return {k: v.astype(np.float32) for k, v in stems.items()}


def write_toy_corpus(root, n_songs: int = 4, seconds: float = 10.0, sr: int = 16000, seed: int = 0) -> Path:
    root = Path(root)
    for i in range(n_songs):
        folder = root / f"toy_{i:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        entries = []
        for name, wave in song_stems(i, seconds, sr, seed).items():
            sf.write(folder / f"{name}.wav", wave, sr, subtype="PCM_16")
            entries.append({"file": f"{name}.wav", "labels": STEM_LABELS[name]})
        bpm = 70 + 11 * (i % 9)
        beats = list(np.arange(0, seconds, 60.0 / bpm).round(4))
        (folder / "stems.json").write_text(json.dumps({"stems": entries, "tempo": bpm, "beats": beats}))
    return root
