"""File-system helpers shared by every writer: atomic writes, temp-file cleanup, and write errors in the user's words.

A file we write is either the old one or the complete new one, never half of it: the bytes go to a temporary name in the
same folder, are fsynced, then renamed over the target. A failed write removes its temporary file (a full disk must not
stay full of our leftovers), and `clean_stale_temps` removes those of killed runs.
"""
from __future__ import annotations

import csv
import errno
import io
import os
import re
from collections.abc import Callable
from pathlib import Path

from .errors import StemJepaError

_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NO_PERMISSION = {errno.EACCES, errno.EPERM, errno.EROFS}
USER_ERRNOS = _DISK_FULL | _NO_PERMISSION  # errors of the user's environment, not of stemjepa
_TEMP = re.compile(r"^\..+\.(\d+)\.tmp$")  # .<name>.<pid>.tmp
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_component(text: str, limit: int | None = None, strip: bool = False, empty: str = "") -> str:
    """`text` as one file-name component: each run of characters other than letters, digits, '.', '_' and '-' becomes
    '_'; `strip` drops leading and trailing '.' and '_' (no hidden files), then at most `limit` characters, `empty` when
    nothing is left. Cache paths are built with it: its output for a given text must never change."""
    out = _UNSAFE.sub("_", text)
    if strip:
        out = out.strip("._")
    if limit is not None:
        out = out[:limit]
    return out or empty


class WriteError(StemJepaError):
    """A file that could not be written (disk full, no permission...): one line naming the path and what to do."""

    def __init__(self, path, exc: OSError):
        self.path, self.errno = str(path), exc.errno
        super().__init__(describe_write_error(path, exc))

    @property
    def disk_full(self) -> bool:
        return self.errno in _DISK_FULL


def describe_write_error(path, exc: OSError) -> str:
    if exc.errno in _DISK_FULL:
        return f"{path}: disk full (no space left on the device); free some space and run again"
    if exc.errno in _NO_PERMISSION:
        return f"{path}: {exc.strerror or exc}; check its permissions or choose a folder you can write to"
    return f"{path}: cannot write ({exc.strerror or exc})"


def temp_name(path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def fsync_dir(folder) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, write: Callable, *, by_name: bool = False) -> None:
    """Write `path` atomically: `write(fh)` fills an open binary temp file (or, with by_name, `write(tmp_path)` creates it).

    On any error the temp file is removed and the target is untouched; OSErrors become a WriteError naming `path`.
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        if by_name:
            write(tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        else:
            with open(tmp, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise WriteError(path, exc) from None
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass
    fsync_dir(path.parent)


def atomic_write_text(path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode()))


def atomic_write_csv(path, fieldnames: list[str], rows) -> None:
    """A CSV table (header, then one dict per row) written atomically: a reader never sees half a table."""
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(folder) -> int:
    """Remove the temp files (`.<name>.<pid>.tmp`) that dead processes left in `folder`; returns how many."""
    n = 0
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return 0
    for p in entries:
        m = _TEMP.match(p.name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            try:
                p.unlink()
                n += 1
            except OSError:
                pass
    return n


MAX_JSON_BYTES = 16 * 1024 * 1024  # metadata files (stems.json, data.json, cards) are kilobytes; a larger one is refused
MAX_JSON_DEPTH = 64  # metadata nests a few levels; deeper nesting is refused before Python's recursion limit is reached


def _json_depth(text: str) -> int:
    """Deepest nesting of brackets outside strings, counted without parsing (parsing a deep document is what overflows)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def read_json(path, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH, error=None):
    """Parse a JSON metadata file that may be hostile: only a regular file (a FIFO would block forever), at most `max_bytes`,
    nested at most `max_depth` levels. Any problem raises `error` (default StemJepaError) naming the file."""
    import json
    import stat

    error = error or StemJepaError
    path = Path(path)
    try:
        # opened without blocking and checked on the open descriptor: a FIFO swapped in after a check cannot block us
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise error(f"{path}: not a regular file; only regular files are read as metadata")
            if st.st_size > max_bytes:
                raise error(f"{path}: {st.st_size / 1e6:.1f} MB is too large for a metadata file "
                            f"(limit {max_bytes / 1e6:g} MB)")
            raw = fh.read(max_bytes + 1)
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if len(raw) > max_bytes:
        raise error(f"{path}: too large for a metadata file (limit {max_bytes / 1e6:g} MB)")
    encoding = json.detect_encoding(raw)  # UTF-8, or UTF-16/32 as JSON allows (from a BOM or the first bytes)
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text ({encoding}: {exc.reason} at byte {exc.start}); save it as UTF-8") from None
    if _json_depth(text) > max_depth:
        raise error(f"{path}: JSON nested deeper than {max_depth} levels; not a metadata file")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
