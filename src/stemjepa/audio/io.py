"""Audio file I/O: decode any common format to float32 at the model's sample rate.

soundfile handles wav/flac/ogg/mp3 quickly; PyAV (FFmpeg) handles everything else, including the multi-stream
`.stem.mp4` files of MUSDB18. Resampling uses soxr (a proper band-limited resampler).
"""
from __future__ import annotations

import logging
import os
import re
import stat
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ..errors import AudioError
from . import SAMPLE_RATE

log = logging.getLogger(__name__)

MAX_SECONDS = 12 * 3600.0  # a read is bounded: longer files are refused before their samples are decoded
_FILE_KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
               stat.S_IFSOCK: "a socket"}
_SHOULD_BE = re.compile(r"^(data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".mp4", ".aac", ".aif", ".aiff", ".wma")


def is_audio_file(path) -> bool:
    name = str(path).lower()
    return name.endswith(AUDIO_EXTENSIONS) and not Path(name).name.startswith(".")


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample along the last axis with soxr (high quality)."""
    if orig_sr == target_sr:
        return wave
    if wave.ndim == 1:
        return soxr.resample(wave, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)
    # soxr wants (frames, channels)
    return soxr.resample(wave.T, orig_sr, target_sr, quality="HQ").T.astype(np.float32, copy=False)


def check_regular_file(path) -> None:
    """Only regular files are opened as audio: reading a FIFO, a device or a socket can block forever."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise AudioError(path, "file not found") from None
    except OSError as exc:
        raise AudioError(path, f"cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioError(path, "is a folder, not an audio file")
    if not stat.S_ISREG(st.st_mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise AudioError(path, f"is {kind}, not a regular audio file; only regular files are read")


def _truncation(path: Path, info) -> str | None:
    """libsndfile reads what a truncated WAV/AIFF holds; its header log says how much the header promised."""
    m = _SHOULD_BE.search(getattr(info, "extra_info", "") or "")
    if not m or int(m.group(2)) <= int(m.group(3)):
        return None
    held = info.frames / info.samplerate
    promised = held * int(m.group(2)) / max(1, int(m.group(3)))
    return f"truncated file: its header promises {promised:.2f} s but it holds {held:.2f} s; only those are used"


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    info = sf.info(str(path))
    if info.samplerate and info.frames / info.samplerate > MAX_SECONDS:
        raise AudioError(path, f"longer than {MAX_SECONDS / 3600:g} h ({info.frames / info.samplerate / 3600:.1f} h); "
                               "cut it into shorter files")
    problem = _truncation(path, info)
    if problem:
        log.warning("%s: %s", path, problem)
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return data.T, sr  # (channels, frames)


def _read_pyav(path: Path, stream: int | None) -> tuple[np.ndarray, int]:
    import av

    with av.open(str(path)) as container:
        audio_streams = container.streams.audio
        if not audio_streams:
            raise AudioError(path, "no audio stream in file")
        index = 0 if stream is None else stream
        if index >= len(audio_streams):
            raise AudioError(path, f"audio stream {index} requested but the file has {len(audio_streams)}")
        st = audio_streams[index]
        sr = st.rate or st.codec_context.sample_rate
        chunks, n = [], 0
        for frame in container.decode(st):
            arr = frame.to_ndarray()
            if arr.dtype.kind == "i":
                arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
            arr = arr.astype(np.float32, copy=False)
            if frame.format.is_planar:
                chunks.append(arr.reshape(len(frame.layout.channels), -1))
            else:  # packed: (1, frames * channels)
                chunks.append(arr.reshape(-1, len(frame.layout.channels)).T)
            n += chunks[-1].shape[1]
            if sr and n > MAX_SECONDS * sr:
                raise AudioError(path, f"longer than {MAX_SECONDS / 3600:g} h; cut it into shorter files")
        if not chunks:
            raise AudioError(path, "no audio could be decoded (empty or truncated file)")
        return np.concatenate(chunks, axis=1), int(sr)


def load_audio(path, sample_rate: int | None = SAMPLE_RATE, mono: bool = True, stream: int | None = None) -> np.ndarray:
    """Load `path` as float32, downmixed to mono (shape (N,)) or (C, N), resampled to `sample_rate` (None keeps it).

    `stream` selects an audio stream in multi-stream containers (MUSDB18 `.stem.mp4`). Raises AudioError naming the file.
    """
    path = Path(path)
    check_regular_file(path)
    wave = sr = None
    if stream is None:
        try:
            wave, sr = _read_soundfile(path)
        except AudioError:
            raise
        except Exception:  # noqa: BLE001 - fall through to FFmpeg, which reads more formats
            wave = None
    if wave is None:
        try:
            wave, sr = _read_pyav(path, stream)
        except AudioError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise AudioError(path, f"cannot decode audio ({type(exc).__name__}: {exc})") from None
    if wave.size == 0:
        raise AudioError(path, "file holds no audio samples")
    if not np.all(np.isfinite(wave)):
        raise AudioError(path, "audio holds NaN or infinite samples")
    if mono:
        wave = wave.mean(axis=0)
    if sample_rate is not None:
        wave = resample(wave, sr, sample_rate)
    return np.ascontiguousarray(wave, dtype=np.float32)


def audio_duration(path) -> float:
    """Duration in seconds without decoding where the container says it."""
    path = Path(path)
    check_regular_file(path)
    try:
        info = sf.info(str(path))
        return info.frames / info.samplerate
    except Exception:  # noqa: BLE001
        import av

        try:
            with av.open(str(path)) as c:
                if c.duration:
                    return c.duration / 1_000_000
        except Exception as exc:  # noqa: BLE001
            raise AudioError(path, f"cannot read audio header ({exc})") from None
    return len(load_audio(path, sample_rate=SAMPLE_RATE)) / SAMPLE_RATE


def save_audio(path, wave: np.ndarray, sample_rate: int = SAMPLE_RATE, subtype: str = "PCM_16") -> None:
    """Write a mono (N,) or (C, N) float array as wav/flac (by extension), clipped to [-1, 1]."""
    wave = np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0)
    data = wave.T if wave.ndim == 2 else wave
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, sample_rate, subtype=subtype)
