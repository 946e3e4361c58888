"""Which files the server may read: the indexed library, a folder of mixes, and the uploads it received (bounded).

Every path that comes from a request is relative to one of these roots. It is refused when it is absolute, climbs
with `..`, or resolves (symlinks followed) to a place outside the root, so a request can never read another file.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..audio.io import AUDIO_EXTENSIONS, is_audio_file
from ..errors import StemJepaError
from ..fsutil import WriteError, temp_name
from .settings import Limits


class PathRefused(StemJepaError):
    """A requested path outside the folders the server may read (answered with 403)."""


class NotFound(StemJepaError):
    """A requested file, upload, query or index that does not exist (answered with 404)."""


class TooLarge(StemJepaError):
    """An upload over the size, duration or decoded-size limit, or text over its length limit (answered with 413)."""


class StorageFull(StemJepaError):
    """No space left on the server's disk for an upload (answered with 507)."""


class Busy(StemJepaError):
    """Too many queries waiting for the worker (answered with 503)."""


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
    size: int = 0
    used: float = 0.0  # clock time of the last use (upload or query); it expires upload_ttl_s later


def _write_chunk(fh, data: bytes) -> None:
    """Append one piece of an upload to its file (a seam the disk-full tests replace)."""
    fh.write(data)


class UploadStore:
    """Uploaded mixes, each stored under a random id; nothing else in the folder is ever served.

    Uploads are bounded so that no page can fill the disk: each is deleted `limits.upload_ttl_s` after its last use,
    and when a new one would pass `limits.max_uploads` files or `limits.max_uploads_mb`, the least recently used are
    deleted first. An id that was deleted answers 404 saying why. `clock` is injectable for tests.
    """

    def __init__(self, folder: Path | None, limits: Limits | None = None, clock: Callable[[], float] = time.monotonic):
        self._temp = folder is None
        self.folder = Path(tempfile.mkdtemp(prefix="stemjepa-uploads-")) if folder is None else Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.limits = limits or Limits()
        self.clock = clock
        self._items: OrderedDict[str, Upload] = OrderedDict()  # least recently used first
        self._gone: OrderedDict[str, str] = OrderedDict()  # deleted id -> why (bounded)
        self._lock = threading.Lock()

    def new_path(self, name: str) -> tuple[str, Path]:
        suffix = Path(name).suffix.lower()
        uid = uuid.uuid4().hex
        return uid, self.folder / f"{uid}{suffix if suffix in AUDIO_EXTENSIONS else '.bin'}"

    async def write(self, path: Path, name: str, chunks: AsyncIterable[bytes], declared: int = 0) -> int:
        """Stream an upload to a temporary name beside `path`, then rename it: a refused, cut or failed upload leaves no
        file. Room is made first (for `declared` bytes). A full disk raises StorageFull naming the upload."""
        self.make_room(declared, files=1)
        tmp = temp_name(path)
        size = 0
        try:
            with open(tmp, "wb") as fh:
                async for part in chunks:
                    size += len(part)
                    _write_chunk(fh, part)
            os.replace(tmp, path)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
                raise StorageFull(f"{name}: the server's disk is full (no space left in {self.folder}); the upload was "
                                  "not kept: free some space on the server, or upload a shorter or compressed mix") from None
            raise WriteError(path, exc) from None
        finally:
            tmp.unlink(missing_ok=True)
        return size

    def add(self, uid: str, name: str, path: Path, size: int | None = None) -> Upload:
        item = Upload(uid, Path(name).name or "upload", path, path.stat().st_size if size is None else size, self.clock())
        with self._lock:
            self._items[uid] = item
        self.make_room(keep=uid)
        return item

    def get(self, uid: str) -> Upload:
        self.expire()
        with self._lock:
            item = self._items.get(str(uid))
            if item is not None:
                item.used = self.clock()
                self._items.move_to_end(item.id)
                return item
            why = self._gone.get(str(uid))
        if why is not None:
            raise NotFound(f"upload {uid!r} {why}")
        raise NotFound(f"upload {uid!r} not found (uploads are forgotten when the server restarts)")

    def expire(self) -> None:
        """Delete the uploads unused for `upload_ttl_s`."""
        ttl = self.limits.upload_ttl_s
        now = self.clock()
        with self._lock:
            old = [u for u in self._items.values() if now - u.used > ttl]
            for u in old:
                self._forget(u, f"expired: uploads are deleted {ttl / 60:g} min after their last use; upload it again")

    def make_room(self, incoming: int = 0, files: int = 0, keep: str | None = None) -> None:
        """Delete expired uploads, then the least recently used ones (never `keep`) until `files` more files and
        `incoming` more bytes fit the quota."""
        self.expire()
        lim = self.limits
        budget = int(lim.max_uploads_mb * 1e6)
        with self._lock:
            total = sum(u.size for u in self._items.values())
            while len(self._items) + files > lim.max_uploads or total + incoming > budget:
                victim = next((u for u in self._items.values() if u.id != keep), None)
                if victim is None:
                    break  # only the new one is left: max_upload_mb bounds it
                total -= victim.size
                self._forget(victim, f"was deleted to make room for newer uploads (this server keeps {lim.max_uploads} "
                                     f"uploads, {lim.max_uploads_mb:g} MB in all); upload it again")

    def _forget(self, item: Upload, why: str) -> None:
        self._items.pop(item.id, None)
        item.path.unlink(missing_ok=True)
        self._gone[item.id] = why
        while len(self._gone) > 4096:
            self._gone.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def close(self) -> None:
        if self._temp:
            shutil.rmtree(self.folder, ignore_errors=True)
