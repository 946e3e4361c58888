"""Log-mel front-end as a torch module, so it runs batched on the model's device and its statistics travel in the checkpoint."""
from __future__ import annotations

from collections.abc import Callable

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
        self.register_buffer("mel_fb", _mel_filterbank(cfg), persistent=True)  # (n_mels, n_fft // 2 + 1)
        self.reset_fixed_buffers()
        self.register_buffer("norm_mean", torch.tensor(float(cfg.norm_mean)))
        self.register_buffer("norm_std", torch.tensor(float(cfg.norm_std)))

    def reset_fixed_buffers(self) -> None:
        """The analysis window: computed, not saved (see fixed_buffer)."""
        cfg = self.cfg
        self.register_buffer("window", fixed_buffer((cfg.win_length,), lambda: torch.hann_window(cfg.win_length, periodic=True)),
                             persistent=False)

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


def on_meta() -> bool:
    """True inside `torch.device("meta")`, where models are built for their shapes (the architecture check) or to be given
    the tensors of a file (`models.rebuild`)."""
    return torch.empty(0).device.type == "meta"


def fixed_buffer(shape: tuple[int, ...], compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """A buffer computed from the config and never saved: `compute()`, or on the meta device an empty tensor of its
    `shape`, which `models.rebuild` replaces (`reset_fixed_buffers`) once the model holds its file's tensors. Meta-device
    arithmetic (arange, hann_window) imports torch._dynamo, 1.0-1.4 s of every command's start-up."""
    return torch.empty(shape) if on_meta() else compute()


def _mel_filterbank(cfg: FrontendConfig) -> torch.Tensor:
    """librosa's Slaney filterbank; only its shape on the meta device, where the model is built to be checked or to receive
    the filterbank saved in its file (`models.rebuild`): importing librosa.filters (scipy.signal) is 1-2 s of start-up."""
    if on_meta():
        return torch.empty(cfg.n_mels, cfg.n_fft // 2 + 1)
    import librosa

    fb = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max,
                             htk=False, norm="slaney")
    return torch.from_numpy(fb).float()
