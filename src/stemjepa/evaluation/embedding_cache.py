"""Per-song cache of the retrieval benchmark's embeddings, so that re-running it (another metric, the other label level,
a fixed plot) does not re-encode audio. Not the training cache (`stemjepa.data.training_cache`, decoded audio).

Layout: CACHE_DIR/<model_id>/<dataset>-<split>/<song key>.npz holding the song's fingerprint (its stem files' paths,
sizes and mtimes and the silence threshold), the status of each stem ("ok", "silent" or "unreadable: <why>"), the reference
(pool) vector of every usable stem and the query vectors computed so far, keyed by (stem, text the query was conditioned
on). A stale fingerprint means the entry is ignored and rewritten. Files are written with `fsutil.atomic_write`.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.multitrack import Song
from ..fsutil import atomic_write, safe_component

CACHE_VERSION = 1


def _bytes(text: str) -> bytes:
    """UTF-8, keeping the lone surrogates that stand for undecodable bytes of a file name (hashing must not fail on them)."""
    return text.encode("utf-8", "surrogatepass")


def song_fingerprint(song: Song, extra: str = "") -> str:
    """Hash of what the song's embeddings depend on: its stem files (path, size, mtime, stream) and `extra`."""
    h = hashlib.sha256(_bytes(f"v{CACHE_VERSION}|{extra}"))
    for stem in song.stems:
        try:
            st = os.stat(stem.path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except (OSError, ValueError):  # ValueError: a name no file can have (a NUL byte); the stem is reported unreadable
            stamp = "missing"
        h.update(_bytes(f"|{stem.name}|{stem.path}|{stem.stream}|{stamp}"))
    return h.hexdigest()[:32]


def _safe(name: str) -> str:
    """A file-name-safe key; a hash suffix keeps distinct names distinct after sanitising."""
    clean = safe_component(name, limit=80)
    return f"{clean}-{hashlib.sha1(_bytes(name)).hexdigest()[:8]}"


@dataclass
class SongEntry:
    fingerprint: str
    status: dict[str, str] = field(default_factory=dict)  # stem key -> "ok" | "silent" | "unreadable: <reason>"
    pool: dict[str, np.ndarray] = field(default_factory=dict)
    queries: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # empty vector: the mix was silent


class EmbeddingCache:
    """Embeddings of one (checkpoint, dataset, split); `root=None` disables caching."""

    def __init__(self, root, model_id: str, dataset: str, split: str):
        self.dir = None if root is None else Path(root) / _safe(model_id) / _safe(f"{dataset}-{split}")

    def _path(self, song_id: str) -> Path:
        return self.dir / f"{_safe(song_id)}.npz"

    def load(self, song_id: str, fingerprint: str) -> SongEntry | None:
        """The cached entry of the song, or None when there is none or it is stale or unreadable."""
        if self.dir is None:
            return None
        path = self._path(song_id)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["fingerprint"]) != fingerprint:
                    return None
                entry = SongEntry(fingerprint)
                entry.status = {str(n): str(s) for n, s in zip(z["status_names"], z["status_values"])}
                entry.pool = {str(n): v for n, v in zip(z["pool_names"], z["pool_vectors"])}
                entry.queries = {
                    (str(n), str(lab)): (np.zeros(0, np.float32) if empty else v)
                    for n, lab, empty, v in zip(z["query_names"], z["query_labels"], z["query_empty"], z["query_vectors"])
                }
                return entry
        except (OSError, KeyError, ValueError):
            return None  # a corrupt entry is recomputed

    def save(self, song_id: str, entry: SongEntry) -> None:
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)

        def stack(vectors) -> np.ndarray:
            vectors = list(vectors)
            dim = max((v.size for v in vectors), default=0)
            out = np.zeros((len(vectors), dim), np.float32)
            for i, v in enumerate(vectors):
                out[i, : v.size] = v
            return out

        qkeys = list(entry.queries)
        atomic_write(self._path(song_id), lambda fh: np.savez(
            fh,
            fingerprint=np.array(entry.fingerprint),
            status_names=np.array(list(entry.status), dtype=str),
            status_values=np.array(list(entry.status.values()), dtype=str),
            pool_names=np.array(list(entry.pool), dtype=str),
            pool_vectors=stack(entry.pool.values()),
            query_names=np.array([k[0] for k in qkeys], dtype=str),
            query_labels=np.array([k[1] for k in qkeys], dtype=str),
            query_empty=np.array([entry.queries[k].size == 0 for k in qkeys], dtype=bool),
            query_vectors=stack(entry.queries[k] for k in qkeys),
        ))
