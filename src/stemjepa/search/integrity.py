"""Size and checksums of an index's snapshot files, recorded in SQLite when a generation is committed.

A snapshot that was truncated, zeroed or overwritten on disk would otherwise be memory-mapped as is and answer every
query wrongly. Queries check the size and a digest of sampled blocks (a few reads, whatever the size); `stemjepa index`
checks the full checksum and rewrites a snapshot that does not match (the SQLite rows are the source of truth).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from .walk import file_checksum

BLOCK = 1 << 16
SAMPLES = 16


def full_digest(path) -> str:
    """The checksum of the whole file: the one the library's files get (`walk.file_checksum`)."""
    return file_checksum(path)


def sample_digest(path, size: int) -> str:
    """Digest of SAMPLES blocks spread over the file, the first and last included (the whole file when it is small)."""
    digest = hashlib.blake2b(digest_size=16)
    starts = sorted({int(x) for x in np.linspace(0, max(0, size - BLOCK), SAMPLES)})
    with open(path, "rb") as fh:
        for start in starts:
            fh.seek(start)
            digest.update(fh.read(BLOCK))
    return digest.hexdigest()


def file_record(path) -> dict:
    size = os.path.getsize(path)
    return {"size": size, "sample": sample_digest(path, size), "digest": full_digest(path)}


def snapshot_record(paths: dict[str, Path]) -> dict:
    """{name: record} of the snapshot files that exist (ids, vectors, bf16, ann)."""
    return {name: file_record(p) for name, p in paths.items() if p.exists()}


def check_file(path: Path, record: dict | None, full: bool = False) -> str | None:
    """The problem with `path` against its record, or None when it matches (no record: nothing to compare)."""
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if record is None:
        return None
    if size != record["size"]:
        return f"{size} bytes instead of {record['size']} (truncated or overwritten)"
    try:
        ok = (full_digest(path) == record["digest"]) if full else (sample_digest(path, size) == record["sample"])
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return None if ok else "contents do not match the checksum recorded at write time (damaged)"


def check_snapshot(paths: dict[str, Path], records: dict | None, full: bool = False) -> str | None:
    """First problem of a snapshot as 'path: problem', or None. Without records (older indexes) only readability counts."""
    names = ("ids", "vectors") if records is None else tuple(records)
    for name in names:
        problem = check_file(paths[name], None if records is None else records[name], full)
        if problem:
            return f"{paths[name]}: {problem}"
    return None


def unit_rows_ok(vectors: np.ndarray, n_rows: int = 64) -> bool:
    """True when a spread sample of rows has unit norm (what the index stores); a zeroed file fails it."""
    if len(vectors) == 0:
        return True
    rows = np.unique(np.linspace(0, len(vectors) - 1, min(n_rows, len(vectors))).astype(np.int64))
    norms = np.linalg.norm(np.asarray(vectors[rows], dtype=np.float32), axis=1)
    return bool(np.all(np.abs(norms - 1.0) < 1e-2))
