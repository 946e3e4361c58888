import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from stemjepa.audio.frontend import LogMelFrontend
from stemjepa.audio.io import load_audio
from stemjepa.config import FrontendConfig
from stemjepa.errors import AudioError


def test_log_mel_matches_librosa():
    cfg = FrontendConfig()
    rng = np.random.default_rng(0)
    t = np.arange(16000 * 2) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
    ref = librosa.feature.melspectrogram(y=wave, sr=16000, n_fft=400, hop_length=160, win_length=400, window="hann",
                                         center=True, pad_mode="reflect", power=2.0, n_mels=80, fmin=50, fmax=8000,
                                         htk=False, norm="slaney")
    ref = (np.log(ref + cfg.log_eps) + 9.453) / 3.569
    out = LogMelFrontend(cfg)(torch.from_numpy(wave)[None])[0].numpy()
    assert out.shape == ref.shape == (80, 201)
    np.testing.assert_allclose(out, ref, atol=2e-3)


def test_eight_seconds_give_801_frames_and_stats_are_buffers():
    fe = LogMelFrontend(FrontendConfig())
    assert fe(torch.zeros(2, 128000)).shape == (2, 80, 801)
    fe.set_statistics(-5.0, 2.0)
    state = fe.state_dict()
    assert float(state["norm_mean"]) == -5.0 and float(state["norm_std"]) == 2.0


@pytest.mark.parametrize("ext,subtype", [(".wav", "PCM_16"), (".flac", "PCM_24"), (".ogg", "VORBIS")])
def test_load_audio_downmixes_and_resamples(tmp_path, ext, subtype):
    sr = 44100
    t = np.arange(sr) / sr
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 440 * t)], axis=1).astype(np.float32) * 0.5
    path = tmp_path / f"tone{ext}"
    sf.write(path, stereo, sr, subtype=subtype)
    wave = load_audio(path, 16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(np.argmax(spectrum) * 16000 / len(wave) - 440) < 3  # the tone survives resampling
    assert 0.3 < np.max(np.abs(wave)) < 0.45  # mean of the two channels: 0.75 * 0.5


def test_load_audio_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF1234WAVEjunkjunk")
    with pytest.raises(AudioError, match="broken.wav"):
        load_audio(bad)
    with pytest.raises(AudioError, match="not found"):
        load_audio(tmp_path / "missing.flac")


@pytest.mark.parametrize("stream", [None, 0], ids=["libsndfile", "ffmpeg"])
def test_block_wise_decoding_equals_decoding_the_whole_file(tmp_path, monkeypatch, stream):
    """Blocks are down-mixed and resampled one at a time (soxr's streaming resampler): the same samples as one whole read."""
    from stemjepa.audio import decode
    from stemjepa.audio.io import resample

    sr = 44100
    stereo = (0.3 * np.random.default_rng(0).standard_normal((int(2.3 * sr), 2))).astype(np.float32)
    path = tmp_path / "noise.wav"
    sf.write(path, stereo, sr, subtype="FLOAT")
    monkeypatch.setattr(decode, "BLOCK_SAMPLES", 1000)  # hundreds of blocks
    np.testing.assert_allclose(load_audio(path, 16000, stream=stream), resample(stereo.mean(axis=1), sr, 16000), atol=1e-6)
    native = load_audio(path, None, mono=False, stream=stream)
    assert native.shape == (2, len(stereo)) and native.flags.c_contiguous
    np.testing.assert_array_equal(native, stereo.T)


def test_save_audio_writes_atomically_and_round_trips(tmp_path):
    from stemjepa.audio.io import save_audio

    wave = np.stack([np.linspace(-0.5, 0.5, 1600), np.linspace(0.5, -0.5, 1600)]).astype(np.float32)
    save_audio(tmp_path / "out" / "x.wav", wave, 16000, subtype="FLOAT")
    data, sr = sf.read(tmp_path / "out" / "x.wav", dtype="float32", always_2d=True)
    assert sr == 16000 and np.array_equal(data.T, wave)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["x.wav"]  # no temporary file left
