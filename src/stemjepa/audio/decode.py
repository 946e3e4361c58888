"""Bounded decoding: the header is read and checked before any sample is decoded, then the audio is decoded in blocks that
are checked, down-mixed and resampled (soxr's streaming resampler) one at a time into the output.

Peak memory is the output plus one block, never channels x native rate x duration: a 1 MB FLAC of 8 channels at 192 kHz
that would decode to gigabytes is read into a mono 16 kHz array of tens of megabytes. Where the header does not state the
length (some FFmpeg streams), samples are counted while decoding and the read stops at the budget. The limits live in
`stemjepa.audio.io` (what callers import); this module holds the two readers (libsndfile, FFmpeg) and the block pipeline.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from ..errors import AudioError

BLOCK_SAMPLES = 1 << 20  # samples (frames x channels) decoded per block: 4 MB of float32 whatever the channel count
MAX_PEAK = 1000.0  # +60 dBFS. Decoded integer audio never exceeds 1; floating-point audio may run a little hot (+24 dBFS
# at most in practice). Samples beyond this are not audio in the [-1, 1] scale (garbage, or integer values stored as
# floats) and would overflow the model's log-mel spectrogram (1e30 squared is infinite in float32): refused, not guessed


@dataclass(frozen=True)
class AudioInfo:
    """What a header says: channel count, sample rate and length in frames (None when the header does not say)."""

    channels: int
    sample_rate: int
    frames: int | None

    @property
    def seconds(self) -> float | None:
        return None if self.frames is None else self.frames / self.sample_rate

    @property
    def samples(self) -> int | None:
        """Channels x frames: what decoding the file costs (None when the length is unknown)."""
        return None if self.frames is None else self.frames * self.channels


def check_samples(block: np.ndarray, name) -> None:
    """Refuse NaN/inf samples and samples beyond MAX_PEAK, naming `name` (max and min: no temporary copy of the block)."""
    if block.size == 0:
        return
    peak = max(float(np.max(block)), -float(np.min(block)))  # NaN propagates through both
    if not np.isfinite(peak):
        raise AudioError(name, "audio holds NaN or infinite samples")
    if peak > MAX_PEAK:
        raise AudioError(name, f"sample values reach {peak:.3g}, far outside audio's range -1..1 (the limit is "
                               f"{MAX_PEAK:g}, +60 dBFS): not audio, or audio stored at the wrong scale; normalise it")


def downmix(block: np.ndarray, channels: int) -> np.ndarray:
    """(frames, C) -> (frames, channels): the mean of all channels (1), or of the even / odd channels (2: left and right
    of the usual layouts L R C LFE Ls Rs ...); `block` itself when it has `channels` already."""
    c = block.shape[1]
    if c == channels:
        return block
    if channels == 1:
        return block.mean(axis=1, keepdims=True, dtype=np.float32)
    if c == 1:
        return np.repeat(block, channels, axis=1)
    return np.stack([block[:, 0::2].mean(axis=1, dtype=np.float32), block[:, 1::2].mean(axis=1, dtype=np.float32)], axis=1)


class Reducer:
    """Collects decoded (frames, channels) blocks as (out_channels, n) float32 at `out_rate`, refusing a read whose input
    or output exceeds its budget as soon as the count passes it (headers may lie or be silent about the length)."""

    def __init__(self, path, info: AudioInfo, out_channels: int, out_rate: int, max_out: int, max_in: int,
                 max_seconds: float):
        self.path, self.info = path, info
        self.out_channels, self.out_rate = out_channels, out_rate
        self.max_out, self.max_in, self.max_seconds = max_out, max_in, max_seconds
        self.frames_in = 0
        self.n = 0
        self.stream = None
        if out_rate != info.sample_rate:
            self.stream = soxr.ResampleStream(info.sample_rate, out_rate, out_channels, dtype="float32", quality="HQ")
        # soxr returns round(frames x out_rate / rate) samples (halves up): the output is allocated once at its size
        expected = 1 << 20 if info.frames is None else (2 * info.frames * out_rate + info.sample_rate) // (2 * info.sample_rate)
        self.buf = np.empty((out_channels, max(1, min(expected, max_out // out_channels + 1))), np.float32)

    def add(self, block: np.ndarray) -> None:
        """One decoded block, (frames, channels) float32 at the input rate."""
        if block.shape[0] == 0:
            return
        check_samples(block, self.path)
        self.frames_in += block.shape[0]
        if self.frames_in * block.shape[1] > self.max_in:
            raise AudioError(self.path, f"decodes to more than {self.max_in:,} samples (channels x frames); "
                                        "cut it into shorter files")
        if self.frames_in > self.max_seconds * self.info.sample_rate:
            raise AudioError(self.path, f"longer than {self.max_seconds / 3600:g} h; cut it into shorter files")
        mixed = downmix(block, self.out_channels)
        if self.stream is not None:
            mixed = self.stream.resample_chunk(np.ascontiguousarray(mixed), last=False)
        self._put(mixed)

    def _put(self, frames: np.ndarray) -> None:
        k = len(frames)
        if self.n + k > self.buf.shape[1]:
            if (self.n + k) * self.out_channels > self.max_out:
                raise AudioError(self.path, f"decodes to more than {self.max_out:,} output samples "
                                            f"({self.out_channels} channel(s) at {self.out_rate} Hz); cut it into shorter "
                                            "files")
            grown = np.empty((self.out_channels, max(self.n + k, int(self.buf.shape[1] * 1.5))), np.float32)
            grown[:, : self.n] = self.buf[:, : self.n]
            self.buf = grown
        self.buf[:, self.n: self.n + k] = frames.reshape(k, self.out_channels).T
        self.n += k

    def finish(self) -> np.ndarray:
        """(out_channels, n) float32; an AudioError when nothing was decoded."""
        if self.stream is not None:
            self._put(self.stream.resample_chunk(np.zeros((0, self.out_channels), np.float32), last=True))
        if self.frames_in == 0:
            raise AudioError(self.path, "file holds no audio samples")
        out = self.buf[:, : self.n]
        if self.n != self.buf.shape[1] and (self.out_channels > 1 or self.n < 0.8 * self.buf.shape[1]):
            out = out.copy()  # contiguous, and without the spare capacity of a header that promised more
        self.buf = None
        return out


# --- readers: each yields its AudioInfo first (nothing decoded yet), then (frames, channels) float32 blocks ---------------
def soundfile_blocks(path: Path) -> Iterator:
    import soundfile as sf

    with sf.SoundFile(str(path)) as f:
        frames = f.frames if 0 <= f.frames < (1 << 62) else None  # libsndfile's "unknown" is a huge count
        yield AudioInfo(int(f.channels), int(f.samplerate), frames), getattr(f, "extra_info", "")
        step = max(1, BLOCK_SAMPLES // max(1, f.channels))
        while True:
            block = f.read(step, dtype="float32", always_2d=True)
            if not len(block):
                return
            yield block


def pyav_blocks(path: Path, stream: int | None) -> Iterator:
    import av

    with av.open(str(path)) as container:
        audio_streams = container.streams.audio
        if not audio_streams:
            raise AudioError(path, "no audio stream in file")
        index = 0 if stream is None else stream
        if index >= len(audio_streams):
            raise AudioError(path, f"audio stream {index} requested but the file has {len(audio_streams)}")
        st = audio_streams[index]
        frames = container.decode(st)
        first = None
        sr = int(st.rate or st.codec_context.sample_rate or 0)
        channels = len(st.codec_context.layout.channels) if st.codec_context.layout else 0
        if not sr or not channels:  # some streams say so only in their frames: the first one tells
            first = next(frames, None)
            if first is not None:
                sr, channels = int(first.sample_rate or 0), len(first.layout.channels)
        seconds = None
        if st.duration and st.time_base:
            seconds = float(st.duration * st.time_base)
        elif container.duration:
            seconds = container.duration / av.time_base
        yield AudioInfo(channels, sr, None if seconds is None or not sr else int(round(seconds * sr))), ""
        for frame in itertools.chain([first] if first is not None else [], frames):
            if frame.sample_rate and frame.sample_rate != sr:
                raise AudioError(path, f"sample rate changes within the stream ({sr} -> {frame.sample_rate} Hz)")
            arr = frame.to_ndarray()
            if arr.dtype.kind == "i":
                arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
            elif arr.dtype.kind == "u":  # FFmpeg's only unsigned format is 8-bit, centred on 128
                arr = (arr.astype(np.float32) - 128.0) / 128.0
            arr = arr.astype(np.float32, copy=False)
            n_ch = len(frame.layout.channels)
            if n_ch != channels:
                raise AudioError(path, f"channel count changes within the stream ({channels} -> {n_ch})")
            yield arr.reshape(n_ch, -1).T if frame.format.is_planar else arr.reshape(-1, n_ch)
