"""Audio file I/O: decode any common format to float32 at the model's sample rate, within a stated memory budget.

soundfile handles wav/flac/ogg/mp3 quickly; PyAV (FFmpeg) handles everything else, including the multi-stream
`.stem.mp4` files of MUSDB18. Resampling uses soxr (a proper band-limited resampler).

Every file is hostile until its header has been checked: `probe` reads channels x rate x duration without decoding and
refuses absurd values, `check_decoded_size` says whether a read fits the sample budget, and the readers then decode in
bounded blocks that are down-mixed and resampled one at a time (`stemjepa.audio.decode`), so a read needs the memory of its
output, not of channels x native rate x duration. Samples are checked as they are decoded: NaN, infinite or absurdly large
values (beyond MAX_PEAK, +60 dBFS) refuse the file, naming it.
"""
from __future__ import annotations

import io
import logging
import os
import re
import stat
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ..errors import AudioError
from . import SAMPLE_RATE
from .decode import MAX_PEAK, AudioInfo, Reducer, check_samples, pyav_blocks, soundfile_blocks

__all__ = ["AUDIO_EXTENSIONS", "MAX_PEAK", "AudioInfo", "array_to_mono", "audio_duration", "check_decoded_size",
           "check_regular_file", "check_samples", "is_audio_file", "load_audio", "load_playback", "playback_format", "probe",
           "resample", "save_audio"]

log = logging.getLogger(__name__)

# Limits of one read, checked on the header before anything is decoded, and again while decoding (a header may lie).
MAX_SECONDS = 12 * 3600.0  # longer files are refused: cut them into shorter files
MAX_CHANNELS = 64  # 7th-order Ambisonics; stems and mixes have 1 to 8. More is a broken or hostile header
MAX_RATE = 768_000  # the highest rate audio converters offer (DXD is 352.8 kHz); higher is not audio we can use
MAX_INPUT_SAMPLES = 1 << 32  # channels x frames decoded by one read (12 h of stereo 48 kHz): bounds a read's work
MAX_OUTPUT_SAMPLES = int(MAX_SECONDS * SAMPLE_RATE)  # samples one read returns: 12 h of mono 16 kHz (2.8 GB of float32)
PLAYBACK_MAX_SAMPLES = 1 << 28  # native-rate reads for playback and export: 1 GiB of float32 (46 min of stereo 48 kHz)
PLAYBACK_STEPS = ((2, 48000), (1, 48000))  # (channels, rate) a playback read is reduced to, in turn, when over its budget
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


def array_to_mono(wave, sample_rate: int | None, target_rate: int, name="<array>") -> np.ndarray:
    """A waveform given as an array, as mono float32 at `target_rate`: the Python API's one rule for array input.

    (N,) is mono; a 2-D array is (channels, N) or (N, channels), the channel axis being the short one (at most
    MAX_CHANNELS); its layout must be unambiguous. `sample_rate` is the array's rate: it is resampled and down-mixed. It
    is required for a 2-D array; a 1-D array without it is taken to be at `target_rate` (nothing in the samples can tell
    otherwise). Values must be finite and within MAX_PEAK. Raises AudioError naming `name`.
    """
    arr = np.asarray(wave)
    if arr.dtype.kind not in "fiu":
        raise AudioError(name, f"an audio array must hold numbers, got dtype {arr.dtype}")
    if arr.ndim == 2:
        if sample_rate is None:
            raise AudioError(name, f"a {arr.shape[0]} x {arr.shape[1]} array needs its sample rate (sample_rate=...): "
                                   f"it is resampled to {target_rate} Hz and down-mixed to mono")
        short, long = sorted(arr.shape)
        if short == long or long <= MAX_CHANNELS or short > MAX_CHANNELS:
            raise AudioError(name, f"ambiguous layout {arr.shape[0]} x {arr.shape[1]}: give (channels, samples) or "
                                   f"(samples, channels) with at most {MAX_CHANNELS} channels and more samples than "
                                   "channels, or a 1-D mono array")
        arr = arr.astype(np.float32, copy=False)
        check_samples(arr, name)
        arr = arr.mean(axis=int(np.argmin(arr.shape)), dtype=np.float32)
    elif arr.ndim == 1:
        arr = arr.astype(np.float32, copy=False)
        check_samples(arr, name)
    else:
        raise AudioError(name, f"an audio array must be (N,), (channels, N) or (N, channels), got shape {arr.shape}")
    if sample_rate is not None:
        if not 1 <= int(sample_rate) <= MAX_RATE:
            raise AudioError(name, f"sample_rate {sample_rate} is not an audio rate (1 to {MAX_RATE} Hz)")
        arr = resample(arr, int(sample_rate), target_rate)
    return np.ascontiguousarray(arr, dtype=np.float32)


def check_regular_file(path) -> None:
    """Only regular files are opened as audio: reading a FIFO, a device or a socket can block forever."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise AudioError(path, "file not found") from None
    except OSError as exc:
        raise AudioError(path, f"cannot be read ({exc.strerror or exc})") from None
    except ValueError:  # a NUL byte, or a lone surrogate that no file system name can hold
        raise AudioError(path, "the file name holds characters no file can have (a NUL byte or invalid text); "
                               "rename the file or fix the name where it is listed") from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioError(path, "is a folder, not an audio file")
    if not stat.S_ISREG(st.st_mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise AudioError(path, f"is {kind}, not a regular audio file; only regular files are read")


def _truncation(info: AudioInfo, extra_info: str) -> str | None:
    """libsndfile reads what a truncated WAV/AIFF holds; its header log says how much the header promised."""
    m = _SHOULD_BE.search(extra_info or "")
    if not m or not info.frames or int(m.group(2)) <= int(m.group(3)):
        return None
    held = info.frames / info.sample_rate
    promised = held * int(m.group(2)) / max(1, int(m.group(3)))
    return f"truncated file: its header promises {promised:.2f} s but it holds {held:.2f} s; only those are used"


def _check_header(path, info: AudioInfo) -> None:
    """Refuse headers no real audio has, and files longer than a read may be, before decoding anything."""
    if not 1 <= info.channels <= MAX_CHANNELS:
        raise AudioError(path, f"{info.channels} audio channels (at most {MAX_CHANNELS} are read)")
    if not 1 <= info.sample_rate <= MAX_RATE:
        raise AudioError(path, f"sample rate {info.sample_rate} Hz (at most {MAX_RATE} Hz is read)")
    if info.frames is None:
        return  # counted while decoding
    if info.frames > MAX_SECONDS * info.sample_rate:
        raise AudioError(path, f"longer than {MAX_SECONDS / 3600:g} h ({info.seconds / 3600:.1f} h); "
                               "cut it into shorter files")
    if info.frames * info.channels > MAX_INPUT_SAMPLES:
        raise AudioError(path, f"{info.channels} channels x {info.seconds:.0f} s at {info.sample_rate} Hz is "
                               f"{info.frames * info.channels:,} samples to decode (at most {MAX_INPUT_SAMPLES:,})")


def _readers(path: Path, stream: int | None):
    """The readers to try in turn: libsndfile (fast, common formats) unless a stream is asked for, then FFmpeg."""
    if stream is None:
        yield lambda: soundfile_blocks(path)
    yield lambda: pyav_blocks(path, stream)


def probe(path, stream: int | None = None) -> AudioInfo:
    """Channels, sample rate and length (frames, `.seconds`; None where the header does not say) of an audio file, read
    from its header without decoding; an AudioError naming the file when it is unreadable or beyond the limits of a read
    (MAX_CHANNELS, MAX_RATE, MAX_SECONDS, MAX_INPUT_SAMPLES). Cheap: use it before accepting or queueing a file."""
    path = Path(path)
    check_regular_file(path)
    failure = None
    for open_blocks in _readers(path, stream):
        try:
            with closing(open_blocks()) as blocks:
                info, _ = next(blocks)
        except AudioError:
            raise
        except Exception as exc:  # noqa: BLE001 - try the next reader; report the last failure
            failure = exc
            continue
        _check_header(path, info)
        return info
    raise AudioError(path, f"cannot read the audio header ({type(failure).__name__}: {failure})")


def decoded_samples(info: AudioInfo, sample_rate: int | None, channels: int) -> int | None:
    """Samples a read of `info` at `sample_rate` (None: native) with `channels` returns; None when the length is unknown."""
    if info.frames is None:
        return None
    rate = sample_rate or info.sample_rate
    return channels * ((2 * info.frames * rate + info.sample_rate) // (2 * info.sample_rate))


def check_decoded_size(path_or_info, sample_rate: int | None = SAMPLE_RATE, mono: bool = True,
                       max_samples: int = MAX_OUTPUT_SAMPLES, stream: int | None = None) -> AudioInfo:
    """`probe` (or the AudioInfo given), then an AudioError unless a read at `sample_rate` (None: native), down-mixed to
    mono or not, returns at most `max_samples` samples. A length the header does not state passes here and is counted
    while decoding (the read stops at the budget)."""
    info = path_or_info if isinstance(path_or_info, AudioInfo) else probe(path_or_info, stream)
    name = "<audio>" if isinstance(path_or_info, AudioInfo) else path_or_info
    n = decoded_samples(info, sample_rate, 1 if mono else info.channels)
    if n is not None and n > max_samples:
        rate = sample_rate or info.sample_rate
        raise AudioError(name, f"{info.seconds:.0f} s would decode to {n:,} samples ({'mono' if mono else info.channels} "
                               f"at {rate} Hz), over the budget of {max_samples:,}; cut it into shorter files")
    return info


def playback_format(info: AudioInfo, max_samples: int = PLAYBACK_MAX_SAMPLES) -> tuple[int, int]:
    """(channels, rate) for playing `info` back: as stored when that fits `max_samples`, else reduced by PLAYBACK_STEPS
    (at most 2 channels at 48 kHz, then mono) without ever raising the rate or the channel count; (0, 0) if nothing fits."""
    steps = [(info.channels, info.sample_rate)] + [(min(c, info.channels), min(r, info.sample_rate))
                                                   for c, r in PLAYBACK_STEPS]
    for channels, rate in steps:
        n = decoded_samples(info, rate, channels)
        if n is None or n <= max_samples:
            return channels, rate
    return 0, 0


def _decode(path: Path, stream: int | None, shape: Callable[[AudioInfo], tuple[int, int, int]]) -> tuple[np.ndarray, int]:
    """Decode `path` in bounded blocks; `shape(info)` -> (channels, rate, max samples) of the output, or an AudioError."""
    check_regular_file(path)
    failure = None
    for open_blocks in _readers(path, stream):
        try:
            with closing(open_blocks()) as blocks:
                info, extra = next(blocks)
                _check_header(path, info)
                channels, rate, max_out = shape(info)
                problem = _truncation(info, extra)
                if problem:
                    log.warning("%s: %s", path, problem)
                reducer = Reducer(path, info, channels, rate, max_out, MAX_INPUT_SAMPLES, MAX_SECONDS)
                for block in blocks:
                    reducer.add(block)
                return reducer.finish(), rate
        except AudioError:
            raise
        except MemoryError:
            raise AudioError(path, "not enough memory to decode it") from None
        except Exception as exc:  # noqa: BLE001 - libsndfile failed: FFmpeg reads more formats
            failure = exc
    raise AudioError(path, f"cannot decode audio ({type(failure).__name__}: {failure})")


def load_audio(path, sample_rate: int | None = SAMPLE_RATE, mono: bool = True, stream: int | None = None) -> np.ndarray:
    """Load `path` as float32, downmixed to mono (shape (N,)) or (C, N), resampled to `sample_rate` (None keeps it).

    `stream` selects an audio stream in multi-stream containers (MUSDB18 `.stem.mp4`). The read is checked against
    MAX_OUTPUT_SAMPLES before decoding and decoded block by block. Raises AudioError naming the file.
    """
    path = Path(path)

    def shape(info: AudioInfo) -> tuple[int, int, int]:
        check_decoded_size(info, sample_rate, mono, MAX_OUTPUT_SAMPLES)
        return (1 if mono else info.channels), (sample_rate or info.sample_rate), MAX_OUTPUT_SAMPLES

    try:
        wave, _ = _decode(path, stream, shape)
    except AudioError as exc:
        raise AudioError(path, exc.problem) from None  # named by the file, also for a budget checked on the header
    return wave[0] if mono else wave


def load_playback(path, max_samples: int = PLAYBACK_MAX_SAMPLES, stream: int | None = None) -> tuple[np.ndarray, int]:
    """(float32 (channels, frames), sample rate) for playback and export: as stored when it fits `max_samples`, else down-
    mixed to 2 channels (then mono) at 48 kHz at most (`playback_format`); an AudioError when even that does not fit."""
    path = Path(path)

    def shape(info: AudioInfo) -> tuple[int, int, int]:
        channels, rate = playback_format(info, max_samples)
        if not channels:
            raise AudioError(path, f"{info.seconds:.0f} s is too long to play back or export (over {max_samples:,} "
                                   "samples even as mono at 48 kHz); cut it into shorter files")
        if (channels, rate) != (info.channels, info.sample_rate):
            log.info("%s: %d channels at %d Hz read as %d at %d Hz for playback (memory budget)", path, info.channels,
                     info.sample_rate, channels, rate)
        return channels, rate, max_samples

    return _decode(path, stream, shape)


def audio_duration(path) -> float:
    """Duration in seconds without decoding where the header says it (counted by decoding where it does not)."""
    info = probe(path)
    if info.seconds is not None:
        return info.seconds
    return len(load_audio(path, sample_rate=SAMPLE_RATE)) / SAMPLE_RATE


def save_audio(path, wave: np.ndarray, sample_rate: int = SAMPLE_RATE, subtype: str = "PCM_16") -> None:
    """Write a mono (N,) or (C, N) float array as wav/flac (by extension), clipped to [-1, 1], atomically: encoded in
    memory, then written through `fsutil.atomic_write` (a full disk leaves no partial file: a WriteError naming `path`)."""
    from ..fsutil import WriteError, atomic_write

    path = Path(path)
    wave = np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0)
    data = wave.T if wave.ndim == 2 else wave
    fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".aif": "AIFF", ".aiff": "AIFF"}.get(path.suffix.lower(), "WAV")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(path, exc) from None

    def write(fh) -> None:
        buf = io.BytesIO()
        sf.write(buf, data, sample_rate, subtype=subtype, format=fmt)
        fh.write(buf.getbuffer())

    atomic_write(path, write)
