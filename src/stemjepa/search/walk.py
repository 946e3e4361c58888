"""File discovery for the stem library: which audio files are under a folder, their size/mtime, and a content checksum.

Unchanged files are recognised by (size, mtime) first, which costs one `stat`; the checksum is only read when the
size matches but the mtime moved (a copy or a `touch`), so re-indexing a large library reads almost nothing.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..audio.io import is_audio_file

CHECKSUM_ALGORITHM = "blake2b-128"


@dataclass(frozen=True)
class FileInfo:
    """An audio file found on disk: absolute path (str, resolved) and the stat fields used to detect changes."""

    path: str
    size: int
    mtime_ns: int


def file_checksum(path, block_size: int = 1 << 20) -> str:
    """Hex digest of the file's bytes (BLAKE2b, 128 bits: fast, and collisions are not a concern here)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(block_size):
            digest.update(chunk)
    return digest.hexdigest()


def stat_file(path) -> FileInfo | None:
    """FileInfo of `path`, or None when it is gone or not a regular file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not os.path.isfile(path):
        return None
    return FileInfo(str(path), st.st_size, st.st_mtime_ns)


def walk_audio(root, exclude: list[Path] | None = None,
               select: Callable[[str], bool] | None = None) -> tuple[list[FileInfo], list[tuple[str, str]]]:
    """All audio files under `root` (sorted, hidden files and folders skipped, symlinked folders not followed).
    `select(relative path)`, when given, keeps a file before it is stat'ed (a shard stats only its own files).

    Returns (files, errors) where errors are (path, problem) for folders or files that could not be read; a batch job
    reports them and carries on. Folders in `exclude` (e.g. the index being written inside the library) are skipped.
    """
    root = Path(root).resolve()
    excluded = {Path(p).resolve() for p in (exclude or [])}
    files: list[FileInfo] = []
    errors: list[tuple[str, str]] = []

    def on_error(exc: OSError) -> None:
        errors.append((str(exc.filename), exc.strerror or str(exc)))

    for folder, dirnames, filenames in os.walk(root, onerror=on_error):
        here = Path(folder)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (here / d).resolve() not in excluded)
        for name in sorted(filenames):
            if not is_audio_file(name):
                continue
            path = here / name
            if select is not None and not select(os.path.relpath(path, root)):
                continue
            try:
                st = path.stat()
            except OSError as exc:
                errors.append((str(path), exc.strerror or str(exc)))
                continue
            if not path.is_file():
                continue
            files.append(FileInfo(str(path), st.st_size, st.st_mtime_ns))
    files.sort(key=lambda f: f.path)
    return files, errors
