"""Beat probe building blocks: targets, the 8-head layout, annotation parsing, chunking, mir_eval scores, decoders."""
from __future__ import annotations

import json

import numpy as np
import pytest

from stemjepa.errors import DataError
from stemjepa.evaluation.beats import annotations as ann
from stemjepa.evaluation.beats.crossval import ProbeItem, assign_folds
from stemjepa.evaluation.beats.decode import PeakDecoder, import_madmom, make_decoder
from stemjepa.evaluation.beats.features import chunk_waveform, grid_to_vectors, n_patches, track_features
from stemjepa.evaluation.beats.metrics import beat_scores
from stemjepa.evaluation.beats.probe import (
    ProbeConfig,
    activation,
    beat_targets,
    fit_probe,
    frame_times,
    frames_per_second,
    patch_targets,
)


# --- targets and layout ------------------------------------------------------------------------------------------------
def test_label_widening_targets():
    t = beat_targets([0.1, 0.5], n_frames=40, fps=50)
    assert t[5] == 1.0 and t[25] == 1.0
    assert t[4] == t[6] == t[24] == t[26] == 0.5
    assert t.sum() == pytest.approx(2 * 1.0 + 4 * 0.5)
    assert beat_targets([0.1], 40, 50, widen=0.25, radius=2)[[3, 4, 6, 7]].tolist() == [0.25] * 4


def test_label_widening_keeps_full_targets_of_close_beats_and_drops_outside_beats():
    t = beat_targets([0.1, 0.12, 10.0, -1.0], n_frames=20, fps=50)  # frames 5 and 6 are both beats
    assert t[5] == t[6] == 1.0 and t[4] == t[7] == 0.5
    assert t[0] == 0.0 and t[19] == 0.0
    edge = beat_targets([0.0, 0.38], n_frames=20, fps=50)
    assert edge[0] == 1.0 and edge[1] == 0.5 and edge[19] == 1.0 and edge[18] == 0.5


def test_eight_head_layout_frame_k_of_patch_t():
    times = frame_times(3)
    assert times.shape == (3, 8)
    for t in range(3):
        for k in range(8):
            assert times[t, k] == pytest.approx(0.16 * t + 0.02 * k)
    assert frames_per_second(0.16) == pytest.approx(50.0)
    # targets laid out like the heads: a beat at 0.16 t + 0.02 k lands in row t, column k
    tg = patch_targets([0.16 * 2 + 0.02 * 5], n_patch=4)
    assert tg.shape == (4, 8) and tg[2, 5] == 1.0 and tg[2, 4] == tg[2, 6] == 0.5
    # and the activation reads the heads back row by row: frame j = 8 t + k at j / 50 s
    probe = fit_probe([np.zeros((4, 3), np.float32)], [np.zeros((4, 8), np.float32)], ProbeConfig(epochs=0))
    import torch

    with torch.no_grad():
        probe.heads.weight.zero_()
        probe.heads.bias.copy_(torch.arange(8, dtype=torch.float32))
    act = activation(probe, np.zeros((4, 3), np.float32))
    assert act.shape == (32,)
    assert np.allclose(act[:8], 1 / (1 + np.exp(-np.arange(8)))) and np.allclose(act[8:16], act[:8])


# --- features -----------------------------------------------------------------------------------------------------------
class GridModel:
    """Fake encoder whose (F=2, T, d=3) grid encodes the absolute patch index, to check chunk joins."""

    sample_rate, chunk_samples, patch_seconds, embed_dim, model_id = 16000, 128000, 0.16, 3, "grid"

    def encode_chunks(self, waves):
        import torch

        start = waves[:, 0] * 1e6  # each chunk's first sample carries its chunk index (see test)
        t = torch.arange(50, dtype=torch.float32)
        patch = torch.round(start)[:, None] * 50 + t[None, :]  # (B, T) absolute patch index
        grid = torch.stack([patch, patch + 0.5, -patch], dim=-1)  # (B, T, d)
        return torch.stack([grid, 10 * grid], dim=1)  # (B, F=2, T, d)


def test_track_features_no_lost_or_duplicated_frames_at_joins():
    n = 2 * 128000 + 5000  # 2 full chunks + 5000 samples -> 100 + ceil(5000 / 2560) = 102 patches
    wave = np.zeros(n, np.float32)
    for i in range(3):
        wave[i * 128000] = i * 1e-6
    feats = track_features(GridModel(), wave, batch_size=2)
    assert feats.shape == (102, 6) == (n_patches(n, 2560), 6)
    assert np.allclose(feats[:, 0], np.arange(102))  # patch index strictly consecutive across chunk joins
    assert np.allclose(feats[:, 3], 10 * np.arange(102))  # F concatenated: [F0 tokens, F1 tokens]


def test_chunking_and_grid_flattening():
    chunks = chunk_waveform(np.ones(10, np.float32), 4)
    assert chunks.shape == (3, 4) and chunks.sum() == 10 and chunks[2, 2:].sum() == 0
    assert chunk_waveform(np.zeros(0, np.float32), 4).shape == (1, 4)
    grid = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)  # (B, F, T, d)
    vec = grid_to_vectors(grid)
    assert vec.shape == (8, 15)
    assert np.array_equal(vec[4 + 1], np.concatenate([grid[1, f, 1] for f in range(3)]))


# --- annotations --------------------------------------------------------------------------------------------------------
def test_parse_beats_formats():
    beats, pos = ann.parse_beats("0.5 1\n1.0 2\n1.5\t3\n2.0 4\n2.5 1\n")
    assert beats.tolist() == [0.5, 1.0, 1.5, 2.0, 2.5] and pos.tolist() == [1, 2, 3, 4, 1]
    beats, pos = ann.parse_beats("# SMC style\n\n0.25\n0.75\n1.25\n")
    assert beats.tolist() == [0.25, 0.75, 1.25] and pos is None
    beats, pos = ann.parse_beats("0.0,1,1\n0.5,2,1\n0.5,2,1\n1.0,1.0,2\n")  # Harmonix-style columns, a duplicate line
    assert beats.tolist() == [0.0, 0.5, 1.0] and pos.tolist() == [1, 2, 1]
    with pytest.raises(DataError, match="line 2"):
        ann.parse_beats("0.5\nabc\n", source="x.beats")
    with pytest.raises(DataError, match="no beats"):
        ann.parse_beats("# nothing\n")
    with pytest.raises(DataError, match=">= 0"):
        ann.parse_beats("-1.0\n")


def test_read_beat_file_downbeats(tmp_path):
    p = tmp_path / "a.beats"
    p.write_text("0.5 1\n1.0 2\n1.5 1\n")
    beats, downbeats = ann.read_beat_file(p)
    assert beats.tolist() == [0.5, 1.0, 1.5] and downbeats.tolist() == [0.5, 1.5]
    with pytest.raises(DataError, match="missing.beats"):
        ann.read_beat_file(tmp_path / "missing.beats")


def _touch_wav(path, seconds=0.2):
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.zeros(int(16000 * seconds), np.float32), 16000)


def test_paired_dataset_matching(tmp_path):
    root = tmp_path / "smc"
    _touch_wav(root / "audio" / "SMC_001.wav")
    _touch_wav(root / "audio" / "SMC_002.wav")
    _touch_wav(root / "audio" / "sub" / "blues.00000.wav")
    _touch_wav(root / "audio" / "lonely.wav")
    (root / "annotations").mkdir()
    (root / "annotations" / "SMC_001_2_1_1_a.txt").write_text("1.0\n2.0\n")  # SMC: annotation name extends the audio's
    (root / "annotations" / "SMC_002.txt").write_text("0.5\n")
    (root / "annotations" / "gtzan_blues_00000.beats").write_text("0.5 1\n1.0 2\n")  # GTZAN: prefixed annotation name
    (root / "annotations" / "SMC_0020.txt").write_text("9.0\n")  # must not match SMC_002 (no '_' boundary) nor SMC_001
    tracks, problems = ann.read_beat_dataset("smc", root)
    by_id = {t.id: t for t in tracks}
    assert set(by_id) == {"SMC_001", "SMC_002", "sub/blues.00000"}
    assert by_id["SMC_001"].beats.tolist() == [1.0, 2.0]
    assert by_id["SMC_002"].beats.tolist() == [0.5]
    assert by_id["sub/blues.00000"].downbeats.tolist() == [0.5]
    assert all(t.dataset == "smc" for t in tracks)
    assert [p for p, _ in problems] == [str(root / "audio" / "lonely.wav")]
    assert len(ann.read_beat_dataset("smc", root, limit=2)[0]) == 2


def test_dataset_errors_name_the_folder(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        ann.read_beat_dataset("x", tmp_path / "nowhere")
    _touch_wav(tmp_path / "d" / "a.wav")
    with pytest.raises(DataError, match="annotation"):
        ann.read_beat_dataset("x", tmp_path / "d")
    assert ann.parse_dataset_spec("gtzan:/data/g:tz") == ("gtzan", __import__("pathlib").Path("/data/g:tz"))
    assert str(ann.parse_dataset_spec("smc")[1]) == "data/smc"


def test_multitrack_folder_beats(tmp_path):
    root = tmp_path / "synth"
    for i, meta in enumerate([{"beats": [0.5, 1.0, 1.5], "downbeats": [0.5]}, {"tempo": 120}, {"beats": "oops"}]):
        song = root / f"song{i}"
        _touch_wav(song / "a.wav")
        _touch_wav(song / "b.wav")
        meta["stems"] = [{"file": "a.wav", "labels": ["drums"]}, {"file": "b.wav", "labels": ["bass"]}]
        (song / "stems.json").write_text(json.dumps(meta))
    tracks, problems = ann.read_beat_dataset("synth", root)
    assert [t.id for t in tracks] == ["song0"]
    assert tracks[0].beats.tolist() == [0.5, 1.0, 1.5] and tracks[0].downbeats.tolist() == [0.5]
    assert len(problems) == 2 and "beats" in problems[0][1]
    assert tracks[0].load_audio(16000).shape == (3200,)


# --- metrics ------------------------------------------------------------------------------------------------------------
def test_metrics_hand_made_cases():
    ref = np.arange(0.0, 30.0, 0.5)
    exact = beat_scores(ref, ref)
    assert exact == {"F1": 1.0, "CMLt": 1.0, "AMLt": 1.0}
    double = beat_scores(ref, np.arange(0.0, ref[-1] + 0.01, 0.25))  # double tempo, in phase
    assert double["AMLt"] == pytest.approx(1.0) and double["CMLt"] == 0.0
    assert double["F1"] == pytest.approx(2 * 50 / (50 + 99), abs=1e-3)  # all 50 scored refs hit, 99 estimates after 5 s
    offbeat = beat_scores(ref, ref + 0.25)  # anti-phase: AMLt accepts it, CMLt does not
    assert offbeat["CMLt"] == 0.0 and offbeat["AMLt"] > 0.95 and offbeat["F1"] == 0.0
    assert beat_scores(ref, []) == {"F1": 0.0, "CMLt": 0.0, "AMLt": 0.0}
    assert beat_scores(ref, ref[ref < 5.0])["F1"] == 0.0  # beats before 5 s are not scored


# --- decoding -----------------------------------------------------------------------------------------------------------
def _periodic_activation(period_s=0.5, seconds=30.0, fps=50):
    act = np.full(int(seconds * fps), 0.02, np.float32)
    act[:: int(period_s * fps)] = 0.9
    return act


def test_madmom_imports_through_the_metadata_alias_and_dbn_tracks_a_clean_activation():
    madmom = import_madmom()
    if madmom is None:
        pytest.skip("madmom not installed")
    assert madmom.__version__
    dec = make_decoder("dbn", 50)
    beats = dec(_periodic_activation())
    assert np.allclose(np.diff(beats), 0.5, atol=0.021) and len(beats) >= 58
    assert beat_scores(np.arange(0, 30, 0.5), beats)["F1"] > 0.98
    dec(np.ones(200, np.float32))  # saturated activations do not break the DBN (clipped inside (0, 1))


def test_without_madmom_auto_falls_back_to_peaks_and_dbn_is_a_clear_error(monkeypatch):
    from stemjepa.errors import ConfigError
    from stemjepa.evaluation.beats import decode

    monkeypatch.setattr(decode, "import_madmom", lambda: None)
    assert isinstance(decode.make_decoder("auto"), PeakDecoder)
    with pytest.raises(ConfigError, match="madmom"):
        decode.make_decoder("dbn")


def test_peak_picking_fallback():
    dec = PeakDecoder(50)
    beats = dec(_periodic_activation())
    assert np.allclose(beats, np.arange(0, 30, 0.5))
    assert dec(np.zeros(100)).size == 0
    assert isinstance(make_decoder("peaks"), PeakDecoder)
    with pytest.raises(ValueError):
        make_decoder("viterbi")


# --- folds and probe training -------------------------------------------------------------------------------------------
def test_fold_assignment_is_balanced_and_stratified():
    class T:
        def __init__(self, ds):
            self.dataset = ds

    items = [ProbeItem(T("a"), None, None) for _ in range(10)] + [ProbeItem(T("b"), None, None) for _ in range(6)]
    folds = assign_folds(items, 4, seed=1)
    assert np.bincount(folds, minlength=4).tolist() == [4, 4, 4, 4]
    assert sorted(set(folds[10:].tolist())) == [0, 1, 2, 3]  # b is spread over every fold
    assert np.array_equal(folds, assign_folds(items, 4, seed=1))


def test_probe_learns_a_linearly_separable_beat_feature():
    rng = np.random.default_rng(0)
    feats, targets = [], []
    for _ in range(4):
        y = (rng.random((200, 8)) < 0.1).astype(np.float32)
        x = np.concatenate([y * 3.0 + 0.1 * rng.standard_normal((200, 8)), rng.standard_normal((200, 4))], 1).astype(np.float32)
        feats.append(x)
        targets.append(y)
    probe = fit_probe(feats, targets, ProbeConfig(epochs=30, lr=1e-2, batch_size=64))
    act = activation(probe, feats[0]).reshape(200, 8)
    assert act[targets[0] == 1].min() > 0.5 and act[targets[0] == 0].max() < 0.5
