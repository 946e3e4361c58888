"""Log-mel front-end as a torch module, so it runs batched on the model's device and its statistics travel in the checkpoint."""
from __future__ import annotations

import librosa
import torch
from torch import nn

from ..config import FrontendConfig


class LogMelFrontend(nn.Module):
    """Waveform (B, N) at `sample_rate` -> normalised log-mel (B, n_mels, frames).

    Centered STFT (reflect pad) with a periodic Hann window, power 2, Slaney mel filterbank with Slaney area normalisation,
    log(mel + eps), then (x - mean) / std with one global mean/std (buffers, saved in the checkpoint).
    """

    def __init__(self, cfg: FrontendConfig):
        super().__init__()
        self.cfg = cfg
        fb = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max,
                                 htk=False, norm="slaney")
        self.register_buffer("mel_fb", torch.from_numpy(fb).float(), persistent=True)  # (n_mels, n_fft // 2 + 1)
        self.register_buffer("window", torch.hann_window(cfg.win_length, periodic=True), persistent=False)
        self.register_buffer("norm_mean", torch.tensor(float(cfg.norm_mean)))
        self.register_buffer("norm_std", torch.tensor(float(cfg.norm_std)))

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.cfg.hop_length + 1

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """Un-normalised log-mel, computed in float32 whatever the autocast state (the FFT needs it)."""
        with torch.autocast(device_type=wave.device.type, enabled=False):
            spec = torch.stft(wave.float(), n_fft=self.cfg.n_fft, hop_length=self.cfg.hop_length, win_length=self.cfg.win_length,
                              window=self.window, center=True, pad_mode="reflect", return_complex=True)
            power = spec.real.square() + spec.imag.square()
            mel = torch.matmul(self.mel_fb, power)
            return torch.log(mel + self.cfg.log_eps)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return (self.log_mel(wave) - self.norm_mean) / self.norm_std

    @torch.no_grad()
    def set_statistics(self, mean: float, std: float) -> None:
        """Store dataset statistics of the log-mel (e.g. measured on the training cache)."""
        self.norm_mean.fill_(float(mean))
        self.norm_std.fill_(float(std))
