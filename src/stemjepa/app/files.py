"""Which files the server may read: the indexed library, a folder of mixes, and the uploads it received.

Every path that comes from a request is relative to one of these roots. It is refused when it is absolute, climbs
with `..`, or resolves (symlinks followed) to a place outside the root, so a request can never read another file.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..audio.io import AUDIO_EXTENSIONS, is_audio_file
from ..errors import StemJepaError


class PathRefused(StemJepaError):
    """A requested path outside the folders the server may read (answered with 403)."""


class NotFound(StemJepaError):
    """A requested file, upload, query or index that does not exist (answered with 404)."""


class TooLarge(StemJepaError):
    """An upload over the size or duration limit (answered with 413)."""


def resolve_inside(root: Path, rel: str) -> Path:
    """`root / rel` with symlinks resolved, refused unless it stays inside `root` (itself resolved)."""
    if not isinstance(rel, str) or not rel.strip():
        raise PathRefused("empty path")
    if "\x00" in rel or "\\" in rel:
        raise PathRefused(f"{rel!r}: path holds a forbidden character")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or Path(rel).is_absolute():
        raise PathRefused(f"{rel}: absolute paths are refused; give a path relative to the folder")
    if ".." in pure.parts:
        raise PathRefused(f"{rel}: '..' is refused; give a path inside the folder")
    real_root = root.resolve()
    target = (real_root / pure).resolve()
    if target != real_root and real_root not in target.parents:
        raise PathRefused(f"{rel}: points outside the folder (a symlink leading out of it?)")
    return target


class Library:
    """The audio files of one index, served by their path relative to `root`."""

    def __init__(self, paths, root: Path | None = None):
        self.set_paths(paths)
        if root is None:
            parents = [os.path.dirname(p) for p in self.paths]
            root = Path(os.path.commonpath(parents)) if parents else Path("/nonexistent-empty-library")
        self.root = Path(root).expanduser().resolve()

    def set_paths(self, paths) -> None:
        self.paths = {str(p) for p in paths}

    def relative(self, path: str) -> str:
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def resolve(self, rel: str) -> Path:
        """The real file of the indexed stem `rel`; refused when not indexed or leading out of the library."""
        real = resolve_inside(self.root, rel)
        stored = str(self.root / PurePosixPath(rel))
        if stored not in self.paths and str(real) not in self.paths:
            raise NotFound(f"{rel}: not a file of this index")
        if not real.is_file():
            raise NotFound(f"{rel}: indexed, but the file is gone")
        return real


class MixFolder:
    """A folder of mixes the page may pick from (`stemjepa serve --mixes DIR`)."""

    def __init__(self, root: Path):
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise StemJepaError(f"{root}: mixes folder not found")

    def list(self, limit: int = 2000) -> list[str]:
        out = []
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                path = Path(folder) / name
                if is_audio_file(name) and path.resolve().is_relative_to(self.root):
                    out.append(path.relative_to(self.root).as_posix())
                    if len(out) >= limit:
                        return out
        return out

    def resolve(self, rel: str) -> Path:
        real = resolve_inside(self.root, rel)
        if not real.is_file():
            raise NotFound(f"{rel}: no such mix in the mixes folder")
        if not is_audio_file(real):
            raise PathRefused(f"{rel}: not an audio file (known: {', '.join(AUDIO_EXTENSIONS)})")
        return real


@dataclass
class Upload:
    id: str
    name: str  # the file name the user gave, for messages
    path: Path


class UploadStore:
    """Uploaded mixes, each stored under a random id; nothing else in the folder is ever served."""

    def __init__(self, folder: Path | None):
        self._temp = folder is None
        self.folder = Path(tempfile.mkdtemp(prefix="stemjepa-uploads-")) if folder is None else Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._items: dict[str, Upload] = {}
        self._lock = threading.Lock()

    def new_path(self, name: str) -> tuple[str, Path]:
        suffix = Path(name).suffix.lower()
        uid = uuid.uuid4().hex
        return uid, self.folder / f"{uid}{suffix if suffix in AUDIO_EXTENSIONS else '.bin'}"

    def add(self, uid: str, name: str, path: Path) -> Upload:
        item = Upload(uid, Path(name).name or "upload", path)
        with self._lock:
            self._items[uid] = item
        return item

    def get(self, uid: str) -> Upload:
        with self._lock:
            item = self._items.get(str(uid))
        if item is None:
            raise NotFound(f"upload {uid!r} not found (uploads are forgotten when the server restarts)")
        return item

    def close(self) -> None:
        if self._temp:
            shutil.rmtree(self.folder, ignore_errors=True)
