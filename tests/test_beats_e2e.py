"""The beat probe end to end: click tracks and a multitrack folder through a fake onset-sensitive encoder (the pipeline
must learn beats), and `stemjepa eval beats` with the tiny checkpoint on the toy corpus (real model, outputs in range)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from stemjepa.cli.main import main
from stemjepa.evaluation.beats.probe import ProbeConfig
from stemjepa.evaluation.beats.runner import BeatEvalConfig, evaluate_beats

SR = 16000
METRIC_KEYS = ("F1", "CMLt", "AMLt")


class OnsetModel:
    """Fake encoder with the inference API: per patch, F=2 bands x d=8 values = the log energy of the eight 20 ms
    sub-frames and its rise from the previous sub-frame. A linear probe can read beats off it."""

    sample_rate, chunk_samples, patch_seconds, embed_dim, model_id = SR, 128000, 0.16, 8, "onset-fake"

    def encode_chunks(self, waves):
        import torch

        frames = waves.reshape(waves.shape[0], -1, 320)  # 20 ms sub-frames, 400 per chunk
        energy = torch.log(frames.pow(2).mean(-1) + 1e-8)  # (B, 400)
        rise = torch.relu(energy - torch.nn.functional.pad(energy, (1, 0), value=float(energy.min()))[:, :-1])
        grid = torch.stack([energy, rise], dim=1)  # (B, 2, 400)
        return grid.reshape(waves.shape[0], 2, 50, 8)  # (B, F, T, d)


def click_track(seconds: float, bpm: float, offset: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    wave = 0.003 * rng.standard_normal(int(seconds * SR)).astype(np.float32)
    beats = np.arange(offset, seconds - 0.05, 60.0 / bpm)
    burst = (rng.standard_normal(160) * np.exp(-np.arange(160) / 40)).astype(np.float32) * 0.5
    for b in beats:
        i = int(round(b * SR))
        wave[i : i + 160] += burst[: len(wave) - i]
    return wave, beats


def write_click_dataset(root, n: int, seed: int, seconds: float = 16.0) -> None:
    (root / "audio").mkdir(parents=True)
    (root / "annotations").mkdir()
    for i in range(n):
        bpm = 90 + (17 * i + 11 * seed) % 60
        wave, beats = click_track(seconds, bpm, 0.1 + 0.03 * i, seed * 100 + i)
        sf.write(root / "audio" / f"track{i:02d}.wav", wave, SR)
        (root / "annotations" / f"track{i:02d}.beats").write_text(
            "".join(f"{b:.4f} {k % 4 + 1}\n" for k, b in enumerate(beats)))


def write_click_multitrack(root, n: int, seed: int, seconds: float = 16.0) -> None:
    """Generic folder: a click stem and a quiet drone stem per song, beats in stems.json."""
    for i in range(n):
        folder = root / f"song{i}"
        folder.mkdir(parents=True)
        wave, beats = click_track(seconds, 100 + 13 * i, 0.2, seed * 100 + i)
        t = np.arange(len(wave)) / SR
        sf.write(folder / "clicks.wav", wave, SR)
        sf.write(folder / "drone.wav", (0.02 * np.sin(2 * np.pi * 110 * t)).astype(np.float32), SR)
        meta = {"stems": [{"file": "clicks.wav", "labels": ["percussion"]}, {"file": "drone.wav", "labels": ["synth"]}],
                "beats": [round(float(b), 4) for b in beats], "downbeats": [round(float(b), 4) for b in beats[::4]]}
        (folder / "stems.json").write_text(json.dumps(meta))


def _check_report(m: dict, test_names, cv_names) -> None:
    assert set(m["test"]) == set(test_names) and set(m["cross_validation"]) == set(cv_names)
    for group in ("test", "cross_validation"):
        for r in m[group].values():
            for k in METRIC_KEYS:
                assert 0.0 <= r[k] <= 1.0 and 0.0 <= r["std"][k] <= 1.0
            assert r["n_tracks"] > 0 and len(r["per_fold"]) == m["folds"]
    assert m["mir_eval"]["min_beat_time"] == 5.0 and m["mir_eval"]["f_measure_threshold"] == 0.07
    assert m["probe"]["fps"] == 50.0 and m["probe"]["frames_per_patch"] == 8
    assert m["decoder"]["name"] and m["decoder"]["fps"] == 50.0


@pytest.mark.parametrize("decoder", ["auto", "peaks"])
def test_probe_learns_click_tracks_through_fake_encoder(tmp_path, decoder):
    write_click_dataset(tmp_path / "clicks", n=6, seed=1)
    write_click_multitrack(tmp_path / "multi", n=3, seed=2)
    write_click_dataset(tmp_path / "held", n=3, seed=3)
    cfg = BeatEvalConfig(folds=3, probe=ProbeConfig(epochs=15, lr=1e-2, batch_size=64), decoder=decoder)
    out = tmp_path / "out"
    m = evaluate_beats(OnsetModel(), [("clicks", tmp_path / "clicks"), ("synth", tmp_path / "multi")],
                       [("held", tmp_path / "held")], out, cfg)
    _check_report(m, ["held"], ["clicks", "synth"])
    assert m["train"]["clicks"]["n_tracks"] == 6 and m["train"]["synth"]["n_tracks"] == 3
    assert m["probe"]["feature_dim"] == 16 and m["skipped"] == []
    assert m["test"]["held"]["n_tracks"] == 9  # 3 tracks x 3 folds
    assert m["test"]["held"]["F1"] > 0.9 and m["test"]["held"]["AMLt"] > 0.9, m["test"]["held"]
    assert m["cross_validation"]["clicks"]["F1"] > 0.9
    if decoder == "peaks":
        assert m["decoder"]["name"] == "peak-picking"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test"]["held"]["F1"] == pytest.approx(m["test"]["held"]["F1"])
    assert (out / "beats_example.png").read_bytes()[:4] == b"\x89PNG" and saved["plot"]["file"] == "beats_example.png"
    assert len(list((out / "features" / "onset-fake").rglob("*.npy"))) == 12  # features computed once per track


def test_feature_cache_is_reused(tmp_path, monkeypatch):
    write_click_dataset(tmp_path / "clicks", n=4, seed=4, seconds=8.0)
    calls = []
    model = OnsetModel()
    original = model.encode_chunks
    monkeypatch.setattr(model, "encode_chunks", lambda w: calls.append(len(w)) or original(w), raising=False)
    cfg = BeatEvalConfig(folds=2, probe=ProbeConfig(epochs=1), decoder="peaks")
    evaluate_beats(model, [("clicks", tmp_path / "clicks")], [], tmp_path / "o", cfg)
    assert len(calls) == 4
    evaluate_beats(model, [("clicks", tmp_path / "clicks")], [], tmp_path / "o", cfg)
    assert len(calls) == 4  # second run read every feature from the cache


def test_cli_eval_beats_with_tiny_checkpoint(tiny_checkpoint, toy_corpus, tmp_path, capsys):
    """The real model on the toy corpus (4 songs x 10 s, beats in stems.json); then the random-encoder baseline."""
    held = tmp_path / "held"
    write_click_dataset(held, n=2, seed=5, seconds=10.0)
    out = tmp_path / "beats"
    argv = ["eval", "beats", "--checkpoint", str(tiny_checkpoint), "--train", f"toy:{toy_corpus}", "--test", f"clicks:{held}",
            "--out", str(out), "--folds", "2", "--epochs", "2", "--device", "cpu"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "toy" in printed and "clicks" in printed and "F1" in printed
    m = json.loads((out / "metrics.json").read_text())
    _check_report(m, ["clicks"], ["toy"])
    assert m["checkpoint"] == str(tiny_checkpoint) and m["random_init"] is False
    assert m["probe"]["feature_dim"] == 5 * 128  # F = 80 mels / 16 = 5 tokens of d = 128 per 160 ms
    assert (out / "beats_example.png").is_file()
    assert main(argv) == 2  # never overwrites results unasked
    assert "already exists" in capsys.readouterr().err
    assert main(argv + ["--overwrite", "--random-init"]) == 0
    r = json.loads((out / "metrics.json").read_text())
    assert r["random_init"] is True and r["model_id"].startswith(f"{m['model_id']}-random-init-")
    assert len(list((out / "features").iterdir())) == 2  # trained and random features cached apart


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", "beats", "--checkpoint", str(tmp_path / "none.ckpt"), "--train", "x", "--out", str(tmp_path)]) == 2
    assert "none.ckpt" in capsys.readouterr().err


def test_probe_on_synthetic_corpus_with_tiny_checkpoint(tiny_checkpoint, tmp_path):
    """Songs from `stemjepa.data.synth` (beats and downbeats in stems.json, audio = sum of the stems)."""
    synth = pytest.importorskip("stemjepa.data.synth")
    from stemjepa.errors import StemJepaError
    from stemjepa.models import load_model

    try:
        synth.synthesize_corpus(tmp_path / "synth", n_songs=4, seconds=8.0, seed=0, progress=False)
    except StemJepaError as exc:  # e.g. FluidSynth or the soundfont missing on this machine
        pytest.skip(f"synthetic corpus unavailable: {exc}")
    model = load_model(tiny_checkpoint, device="cpu")
    cfg = BeatEvalConfig(folds=2, probe=ProbeConfig(epochs=2))
    m = evaluate_beats(model, [("synth", tmp_path / "synth")], [], tmp_path / "out", cfg)
    _check_report(m, [], ["synth"])
    assert m["train"]["synth"]["n_tracks"] == 4
    assert (tmp_path / "out" / "beats_example.png").is_file()
