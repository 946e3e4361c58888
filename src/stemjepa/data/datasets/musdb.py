"""MUSDB18 (`.stem.mp4`, 5 AAC streams) and MUSDB18-HQ (wav folders).

Layouts, as distributed:
    MUSDB18:    ROOT/{train,test}/<Artist - Title>.stem.mp4   streams: 0 mixture, 1 drums, 2 bass, 3 other, 4 vocals
    MUSDB18-HQ: ROOT/{train,test}/<Artist - Title>/{mixture,drums,bass,other,vocals}.wav
The mixture is never a stem (its path is kept in Song.meta["mixture"]). Labels are the four source names; the
evaluation maps "other" to the word "music". Splits are the train/test folders (the musdb package's validation
tracks are part of "train"). A folder of `.stem.mp4` files without train/test sub-folders is read with split None.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import DataError
from ..multitrack import Song, Stem

SOURCES = ("drums", "bass", "other", "vocals")  # stream i + 1 of a .stem.mp4
SPLITS = ("train", "test")
N_STREAMS = 5


def _split_dirs(root: Path) -> list[tuple[str | None, Path]]:
    return [(s, root / s) for s in SPLITS if (root / s).is_dir()]


def _count_audio_streams(path: Path) -> int:
    import av

    from ...audio.io import check_regular_file

    check_regular_file(path)  # a FIFO would block av.open forever
    with av.open(str(path)) as container:
        return len(container.streams.audio)


def load_musdb18(root: Path, problems: list) -> list[Song]:
    """Songs of MUSDB18: one Stem per source stream (1..4) of each `.stem.mp4`; files that cannot be opened are reported."""
    dirs = _split_dirs(root) or [(None, root)]
    files = [(split, p) for split, d in dirs for p in sorted(d.glob("*.stem.mp4")) if not p.name.startswith(".")]
    if not files:
        hint = ""
        if any(d.is_dir() and any(d.glob("*/vocals.wav")) for _, d in dirs):
            hint = " (this looks like MUSDB18-HQ: use the dataset name musdb18hq)"
        raise DataError(f"{root}: no MUSDB18 files; expected {root}/train/*.stem.mp4 and {root}/test/*.stem.mp4{hint}")
    songs = []
    for split, path in files:
        try:
            n = _count_audio_streams(path)
        except Exception as exc:  # noqa: BLE001 - any FFmpeg failure means an unreadable file
            problems.append((str(path), f"cannot open ({type(exc).__name__}: {exc}); song skipped"))
            continue
        if n < N_STREAMS:
            problems.append((str(path), f"has {n} audio streams, a MUSDB18 .stem.mp4 has {N_STREAMS}; song skipped"))
            continue
        song_id = path.name[: -len(".stem.mp4")]
        stems = [Stem(name=src, path=path, labels=[src], stream=i + 1) for i, src in enumerate(SOURCES)]
        songs.append(Song(id=song_id, stems=stems, split=split, meta={"mixture": {"path": str(path), "stream": 0}},
                          root=path.parent))
    if not songs:
        raise DataError(f"{root}: none of the {len(files)} .stem.mp4 files could be opened ({problems[-1][1]})")
    return songs


def load_musdb18hq(root: Path, problems: list) -> list[Song]:
    """Songs of MUSDB18-HQ: one Stem per source wav; a missing source wav is reported and left out."""
    dirs = _split_dirs(root)
    if not dirs:
        hint = " (this looks like MUSDB18: use the dataset name musdb18)" if any(root.glob("*.stem.mp4")) else ""
        raise DataError(f"{root}: no MUSDB18-HQ split folders; "
                        f"expected {root}/train/<track>/vocals.wav and {root}/test/...{hint}")
    songs = []
    for split, d in dirs:
        for folder in sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")):
            stems = [Stem(name=src, path=folder / f"{src}.wav", labels=[src])
                     for src in SOURCES if (folder / f"{src}.wav").is_file()]
            if not stems:
                problems.append((str(folder), f"no source wav ({', '.join(s + '.wav' for s in SOURCES)}); song skipped"))
                continue
            for src in SOURCES:
                if not (folder / f"{src}.wav").is_file():
                    problems.append((str(folder / f"{src}.wav"), "missing; stem left out"))
            has_mixture = (folder / "mixture.wav").is_file()
            meta = {"mixture": {"path": str(folder / "mixture.wav"), "stream": None}} if has_mixture else {}
            songs.append(Song(id=folder.name, stems=stems, split=split, meta=meta, root=folder))
    if not songs:
        looks_like_musdb18 = any(any(d.glob("*.stem.mp4")) for _, d in dirs)
        hint = " (this looks like MUSDB18: use the dataset name musdb18)" if looks_like_musdb18 else ""
        raise DataError(f"{root}: no MUSDB18-HQ track folders with {'/'.join(SOURCES)}.wav "
                        f"under {', '.join(s for s, _ in dirs)}{hint}")
    return songs
