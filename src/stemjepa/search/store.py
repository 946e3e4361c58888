"""The index's metadata and embeddings in SQLite, with generations so that writers never disturb readers.

Every file row carries `gen_added` and `gen_removed`. An `index` run works on generation N = committed + 1: it inserts
new rows with gen_added = N and marks replaced/deleted rows with gen_removed = N, committing after every batch, so a
killed run loses at most one batch. Readers only look at the committed generation G (rows with gen_added <= G and
gen_removed NULL or > G) through the snapshot files of G, so they never see half an update. The run ends by writing
the snapshot files of N (snapshot.py: a new shard and a tombstone list, or a compacted snapshot) and committing
`generation = N` with the record of its manifest in one transaction, which is the moment the update appears.
SQLite runs in WAL mode so that queries read while an update writes.
"""
from __future__ import annotations

import errno
import json
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import StemJepaError
from ..fsutil import WriteError
from .walk import FileInfo

FORMAT_VERSION = 2  # 2: sharded snapshots with a manifest (snapshot.py); 1 (one snapshot per generation) is read,
# and migrated by the next `index` run; a stemjepa that reads only format 1 refuses format 2 instead of missing shards
DB_NAME = "index.sqlite"
LOCK_NAME = "index.lock"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    checksum TEXT NOT NULL,
    duration REAL NOT NULL,
    n_chunks INTEGER NOT NULL,
    offsets BLOB NOT NULL,      -- float32 (n_chunks,): start of each chunk, seconds
    weights BLOB NOT NULL,      -- float32 (n_chunks,): valid patches per chunk
    chunks BLOB NOT NULL,       -- float16 (n_chunks, dim), L2-normalised: only used to locate the best offset
    vector BLOB NOT NULL,       -- float32 (dim,), L2-normalised file vector: what is searched
    gen_added INTEGER NOT NULL,
    gen_removed INTEGER,        -- NULL while the file is in the library
    analysis TEXT,              -- JSON of stemjepa.analysis.Analysis (tempo, key...); NULL: not analysed, or it failed
    analysis_version INTEGER,   -- ANALYSIS_VERSION that produced `analysis` (NULL: never analysed: rows of older indexes)
    bpm REAL,                   -- copies of analysis.bpm and .key, for filters
    key_name TEXT
);
CREATE INDEX IF NOT EXISTS files_path ON files(path);
CREATE INDEX IF NOT EXISTS files_checksum ON files(checksum);
CREATE INDEX IF NOT EXISTS files_gen ON files(gen_added, gen_removed);
CREATE INDEX IF NOT EXISTS files_removed ON files(gen_removed);  -- an update's tombstones, without a table scan
-- what every `index` run reads of every row (live_stats, pending_stats: path, size, mtime, checksum), read from this
-- index alone (~100 bytes a row) instead of the table, whose rows hold the vectors (a page or more each)
CREATE INDEX IF NOT EXISTS files_stat ON files(gen_added, gen_removed, path, size, mtime_ns, checksum);
"""
# columns added after format 1 was released: nullable, so older readers (SELECT *) and writers (named INSERT) still work
# on a newer index, and an older index gets them when a writer opens it (the next `index` run analyses its rows)
ADDED_COLUMNS = {"analysis": "TEXT", "analysis_version": "INTEGER", "bpm": "REAL", "key_name": "TEXT"}
ANALYSIS_CHECKED = "analysis_checked"  # info: {"version", "through_id"}: rows up to that id are analysed by that version


class StemIndexError(StemJepaError):
    """A stem index folder that is missing, foreign, unfinished, or written by a newer stemjepa."""


class IndexWriteError(WriteError, StemIndexError):
    """A write to an index folder that failed (disk full, no permission): one line naming the path; the generation
    committed before stays searchable, and the next `index` run resumes."""

    def __init__(self, path, exc: OSError):
        super().__init__(path, exc)
        self.args = (f"{self.args[0]} (the previous index is still usable)",)


_MIN_FREE_BYTES = 1 << 20  # below this, a failed SQLite write is a full disk ("disk I/O error" when the -shm cannot grow)


def _no_space(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < _MIN_FREE_BYTES
    except OSError:
        return False


def sqlite_write_error(db_path: Path, exc: sqlite3.Error) -> StemJepaError:
    """The user's words for an SQLite error while writing `db_path`: disk full and permission problems name the file
    (SQLite says "database or disk is full", or "disk I/O error" when its shared-memory file cannot grow)."""
    text = str(exc).lower()
    if "full" in text or _no_space(db_path.parent):
        return IndexWriteError(db_path, OSError(errno.ENOSPC, "No space left on device"))
    if "readonly" in text or "read-only" in text or "permission" in text:
        return IndexWriteError(db_path, OSError(errno.EACCES, str(exc)))
    if isinstance(exc, sqlite3.OperationalError):
        return StemIndexError(f"{db_path}: cannot write ({exc}); the previous index is still usable")
    return StemIndexError(f"{db_path}: damaged ({exc}); build the index again in a new --out folder")


class FileStat(NamedTuple):
    """What tells whether an indexed file changed: its row id, and the size, mtime and checksum it had."""

    id: int
    size: int
    mtime_ns: int
    checksum: str


@dataclass(frozen=True)
class FileVectors:
    """A file's embedding as the index keeps it: unit file vector (d,), unit chunk vectors (n, d), chunk start times
    (seconds) and valid-patch weights (n,)."""

    vector: np.ndarray
    chunks: np.ndarray
    offsets: np.ndarray
    weights: np.ndarray


@dataclass
class FileRow:
    """Metadata and vectors of one indexed file."""

    id: int
    path: str
    size: int
    mtime_ns: int
    checksum: str
    duration: float
    offsets: np.ndarray
    weights: np.ndarray
    chunks: np.ndarray
    vector: np.ndarray
    gen_added: int
    gen_removed: int | None
    analysis: dict | None = None  # Analysis.to_dict() as stored (None: not analysed, or the analysis failed)
    analysis_version: int | None = None

    @property
    def vectors(self) -> FileVectors:
        """The stored embedding, to copy to another row (a renamed or copied file)."""
        return FileVectors(self.vector, self.chunks.astype(np.float32), self.offsets, self.weights)


def _row(r: sqlite3.Row, dim: int) -> FileRow:
    n = r["n_chunks"]
    return FileRow(
        id=r["id"], path=r["path"], size=r["size"], mtime_ns=r["mtime_ns"], checksum=r["checksum"],
        duration=r["duration"],
        offsets=np.frombuffer(r["offsets"], np.float32), weights=np.frombuffer(r["weights"], np.float32),
        chunks=np.frombuffer(r["chunks"], np.float16).reshape(n, dim), vector=np.frombuffer(r["vector"], np.float32),
        gen_added=r["gen_added"], gen_removed=r["gen_removed"],
        analysis=_analysis_json(r["analysis"]) if "analysis" in r.keys() else None,
        analysis_version=r["analysis_version"] if "analysis_version" in r.keys() else None,
    )


def _analysis_json(text) -> dict | None:
    """A stored analysis, or None when it is missing or unreadable (a damaged row is shown without tempo and key)."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _analysis_values(analysis: dict | None) -> tuple[str | None, float | None, str | None]:
    """(JSON text, bpm, key) of an analysis dict for its columns."""
    if analysis is None:
        return None, None, None
    bpm, key = analysis.get("bpm"), analysis.get("key")
    return (json.dumps(analysis), float(bpm) if isinstance(bpm, (int, float)) else None,
            key if isinstance(key, str) else None)


@dataclass(frozen=True)
class AnalysisColumns:
    """Tempo and key of the rows visible at one generation, for filters: `ids` ascending, `bpm` (NaN: no beat found),
    `keys` (None: no key), `analysed` (False: not analysed, or the analysis failed: no filter can keep the row)."""

    ids: np.ndarray
    bpm: np.ndarray
    keys: np.ndarray
    analysed: np.ndarray


def _stats(rows) -> dict[str, FileStat]:
    return {r["path"]: FileStat(r["id"], r["size"], r["mtime_ns"], r["checksum"]) for r in rows}


class MetaStore:
    """SQLite file of one index folder. Writers open it with `create=True`; readers must find a finished index."""

    db_name = DB_NAME  # a shard's part (parts.py) keeps its rows in the same schema under another name

    def __init__(self, folder, create: bool = False):
        self.folder = Path(folder)
        self.db_path = self.folder / self.db_name
        if not create:
            check_index_folder(self.folder)
        self.writer = create
        try:
            self.conn = self._connect() if create else self._connect_readonly()
            version = self.get("format_version")
        except sqlite3.DatabaseError as exc:
            if getattr(self, "conn", None) is not None:
                self.conn.close()
            if create and isinstance(exc, sqlite3.OperationalError):  # a full disk is not an unreadable index
                raise sqlite_write_error(self.db_path, exc) from None
            raise StemIndexError(f"{self.db_path}: not a readable stem index ({exc})") from None
        if version is not None and int(version) > FORMAT_VERSION:
            self.conn.close()
            raise StemIndexError(
                f"{self.folder}: index written by a newer stemjepa (format {version}; this version reads up to "
                f"{FORMAT_VERSION}): upgrade stemjepa, or build a new index with this version"
            )

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.db_path), timeout=60.0, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # with WAL: a killed process loses nothing committed
        conn.executescript(_SCHEMA)
        have = {r["name"] for r in conn.execute("PRAGMA table_info(files)")}
        for name, kind in ADDED_COLUMNS.items():
            if name not in have:  # an index written before the column existed: no row of it is analysed
                conn.execute(f"ALTER TABLE files ADD COLUMN {name} {kind}")
                conn.execute("DELETE FROM info WHERE key = ?", (ANALYSIS_CHECKED,))
        return conn

    def _connect_readonly(self) -> sqlite3.Connection:
        """Queries never write, so an index on a read-only disk or with read-only files can be searched.

        `mode=ro` still sees a concurrent writer's commits (WAL); where SQLite cannot create the WAL's shared-memory file
        (a read-only folder, so no writer either) the file is opened as immutable, which reads the main file only: that
        is the current generation when the WAL is absent or empty (every `index` run ends by checkpointing into the main
        file). A non-empty WAL that cannot be applied is refused: the main file alone would be an older generation.
        """
        uri = self.db_path.resolve().as_uri()
        for query in ("?mode=ro", "?mode=ro&immutable=1"):
            if "immutable" in query:
                self._check_no_pending_wal()
            conn = sqlite3.connect(uri + query, uri=True, timeout=60.0, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            try:
                conn.execute("SELECT count(*) FROM info").fetchone()
                return conn
            except sqlite3.OperationalError as exc:
                conn.close()
                error = exc
        raise error

    def _check_no_pending_wal(self) -> None:
        wal = self.db_path.with_name(self.db_path.name + "-wal")
        try:
            pending = wal.stat().st_size > 0
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StemIndexError(f"{wal}: cannot be read ({exc.strerror or exc})") from None
        if pending:
            raise StemIndexError(
                f"{wal}: holds committed changes that SQLite cannot apply here (it cannot create "
                f"{DB_NAME}-shm in a read-only folder), and without them the index would answer from an older "
                f"generation: open it once where the folder is writable (e.g. `stemjepa index` on it), or copy it "
                f"together with its -shm file")

    def checkpoint(self) -> None:
        """Move the WAL's commits into the main file and empty the WAL, so that a copy of the folder (even without the
        -wal and -shm files, or read-only) holds the current generation. Waits briefly for readers; best effort."""
        try:
            self.conn.execute("PRAGMA busy_timeout = 2000")
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error:
            pass  # a full disk or a busy reader: the WAL stays, and readers still apply it

    def close(self) -> None:
        if self.writer:
            self.checkpoint()
        self.conn.close()

    # --- info key/values -----------------------------------------------------------------------------------------
    def _value(self, key: str, text: str):
        try:
            return json.loads(text)
        except (TypeError, ValueError, RecursionError):
            raise StemIndexError(f"{self.db_path}: damaged (info value {key!r} is not valid JSON); build the index again "
                                 "in a new --out folder") from None

    def get(self, key: str, default=None):
        row = self.conn.execute("SELECT value FROM info WHERE key = ?", (key,)).fetchone()
        return self._value(key, row[0]) if row else default

    def set(self, key: str, value) -> None:
        self.conn.execute("INSERT OR REPLACE INTO info(key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def unset(self, key: str) -> None:
        self.conn.execute("DELETE FROM info WHERE key = ?", (key,))

    def info(self) -> dict:
        return {k: self._value(k, v) for k, v in self.conn.execute("SELECT key, value FROM info")}

    @property
    def generation(self) -> int:
        return int(self.get("generation", 0))

    def transaction(self):
        return _Transaction(self.conn)

    # --- rows ----------------------------------------------------------------------------------------------------
    def rows_by_id(self, ids, dim: int) -> dict[int, FileRow]:
        ids = [int(i) for i in ids]
        out: dict[int, FileRow] = {}
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            q = f"SELECT * FROM files WHERE id IN ({','.join('?' * len(part))})"
            out.update({r["id"]: _row(r, dim) for r in self.conn.execute(q, part)})
        return out

    def live_stats(self, generation: int) -> dict[str, FileStat]:
        """path -> FileStat of the files visible at `generation` (the committed one)."""
        q = ("SELECT id, path, size, mtime_ns, checksum FROM files WHERE gen_added <= ? AND "
             "(gen_removed IS NULL OR gen_removed > ?)")
        return _stats(self.conn.execute(q, (generation, generation)))

    def pending_stats(self, generation: int) -> dict[str, FileStat]:
        """path -> FileStat of the rows a killed run already embedded for `generation` (not yet committed)."""
        q = "SELECT id, path, size, mtime_ns, checksum FROM files WHERE gen_added = ?"
        return _stats(self.conn.execute(q, (generation,)))

    def row_by_checksum(self, checksum: str, dim: int) -> FileRow | None:
        r = self.conn.execute("SELECT * FROM files WHERE checksum = ? ORDER BY id DESC LIMIT 1", (checksum,)).fetchone()
        return _row(r, dim) if r else None

    def insert_row(self, file: FileInfo, checksum: str, duration: float, vectors: FileVectors, generation: int,
                   analysis: dict | None = None, analysis_version: int | None = None) -> int:
        """Add a file's row, visible from `generation` on; returns its id. `analysis_version` None: not analysed yet."""
        v = vectors
        text, bpm, key = _analysis_values(analysis)
        cur = self.conn.execute(
            "INSERT INTO files(path, size, mtime_ns, checksum, duration, n_chunks, offsets, weights, chunks, vector, "
            "gen_added, gen_removed, analysis, analysis_version, bpm, key_name) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?)",
            (file.path, file.size, file.mtime_ns, checksum, float(duration), int(len(v.offsets)),
             np.ascontiguousarray(v.offsets, np.float32).tobytes(), np.ascontiguousarray(v.weights, np.float32).tobytes(),
             np.ascontiguousarray(v.chunks, np.float16).tobytes(), np.ascontiguousarray(v.vector, np.float32).tobytes(),
             generation, text, analysis_version, bpm, key),
        )
        return int(cur.lastrowid)

    # --- tempo and key ------------------------------------------------------------------------------------------
    def _has_analysis(self) -> bool:
        return "analysis" in {r["name"] for r in self.conn.execute("PRAGMA table_info(files)")}

    def set_analysis(self, row_id: int, analysis: dict | None, version: int) -> None:
        """Store the analysis of an existing row (same file bytes: the row's generation does not change); call
        `analyses_changed` in the same transaction."""
        text, bpm, key = _analysis_values(analysis)
        self.conn.execute("UPDATE files SET analysis = ?, analysis_version = ?, bpm = ?, key_name = ? WHERE id = ?",
                          (text, int(version), bpm, key, int(row_id)))

    def analyses_changed(self) -> None:
        """Bump `analysis_epoch`: readers reload the tempo and key columns they filter on (rows analysed in place do
        not start a new generation)."""
        self.set("analysis_epoch", int(self.get("analysis_epoch", 0)) + 1)

    def stale_analysis(self, generation: int, version: int, after_id: int = 0) -> list[tuple[int, str]]:
        """(id, path) of the rows visible at `generation` that were never analysed, or by another ANALYSIS_VERSION,
        among those whose id is above `after_id` (a range of the primary key: the rows added since the last check,
        `ANALYSIS_CHECKED`, not the whole table of vectors)."""
        q = ("SELECT id, path FROM files WHERE id > ? AND gen_added <= ? AND (gen_removed IS NULL OR gen_removed > ?) "
             "AND (analysis_version IS NULL OR analysis_version != ?) ORDER BY id")
        return [(int(r[0]), r[1]) for r in self.conn.execute(q, (int(after_id), generation, generation, int(version)))]

    def max_id(self) -> int:
        return int(self.conn.execute("SELECT MAX(id) FROM files").fetchone()[0] or 0)

    def analysis_columns(self, generation: int) -> AnalysisColumns:
        """Tempo and key of every row visible at `generation` (all rows unanalysed in an index without the columns)."""
        vis = "WHERE gen_added <= ? AND (gen_removed IS NULL OR gen_removed > ?) ORDER BY id"
        if self._has_analysis():
            rows = self.conn.execute(f"SELECT id, bpm, key_name, analysis IS NOT NULL FROM files {vis}",
                                     (generation, generation)).fetchall()
        else:
            rows = [(r[0], None, None, 0) for r in self.conn.execute(f"SELECT id FROM files {vis}", (generation, generation))]
        n = len(rows)
        return AnalysisColumns(
            ids=np.fromiter((r[0] for r in rows), np.int64, n),
            bpm=np.fromiter((np.nan if r[1] is None else r[1] for r in rows), np.float64, n),
            keys=np.array([r[2] for r in rows], dtype=object),
            analysed=np.fromiter((bool(r[3]) for r in rows), bool, n))

    def mark_removed(self, ids, generation: int) -> None:
        """Rows that leave the library at `generation` (readers of earlier generations still see them)."""
        self.conn.executemany("UPDATE files SET gen_removed = ? WHERE id = ?", [(generation, int(i)) for i in ids])

    def forget_removals(self, generation: int) -> None:
        """Undo the removals marked for `generation` or later (by a run that was interrupted)."""
        self.conn.execute("UPDATE files SET gen_removed = NULL WHERE gen_removed >= ?", (generation,))

    def delete_rows(self, ids) -> None:
        self.conn.executemany("DELETE FROM files WHERE id = ?", [(int(i),) for i in ids])

    def purge_removed(self, generation: int) -> None:
        """Delete the rows removed before `generation`: no reader can still see them once it is committed."""
        self.conn.execute("DELETE FROM files WHERE gen_removed IS NOT NULL AND gen_removed < ?", (generation,))

    def set_mtimes(self, mtimes: dict[int, int]) -> None:
        """New mtime_ns of rows whose file was touched but holds the same bytes (id -> mtime_ns)."""
        self.conn.executemany("UPDATE files SET mtime_ns = ? WHERE id = ?", [(m, i) for i, m in mtimes.items()])

    def count_visible(self, generation: int) -> int:
        """How many rows are visible at `generation` (read from the files_gen index, not the rows)."""
        q = "SELECT COUNT(*) FROM files WHERE gen_added <= ? AND (gen_removed IS NULL OR gen_removed > ?)"
        return int(self.conn.execute(q, (generation, generation)).fetchone()[0])

    def removed_at(self, generation: int) -> np.ndarray:
        """Ids (ascending) of the rows of earlier generations that leave the library at `generation`."""
        q = "SELECT id FROM files WHERE gen_removed = ? AND gen_added < ? ORDER BY id"
        rows = self.conn.execute(q, (generation, generation)).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def count_after(self, generation: int, after_id: int) -> int:
        """How many rows visible at `generation` have an id above `after_id` (a range of the primary key)."""
        q = "SELECT COUNT(*) FROM files WHERE id > ? AND gen_added <= ? AND (gen_removed IS NULL OR gen_removed > ?)"
        return int(self.conn.execute(q, (int(after_id), generation, generation)).fetchone()[0])

    def visible_vector_blocks(self, generation: int, dim: int, after_id: int = 0, rows: int = 65536):
        """(ids int64, float32 vectors (n, dim)) of the rows visible at `generation` whose id is above `after_id` (a
        range of the primary key: an update reads only the rows it adds), `rows` at a time in id order, each block read
        by its own statement from the last id on, so that a snapshot of 10M files (30.7 GB of float32 at 768-d) is
        written without holding it."""
        q = ("SELECT id, vector FROM files WHERE id > ? AND gen_added <= ? AND (gen_removed IS NULL OR gen_removed > ?) "
             "ORDER BY id LIMIT ?")
        last = int(after_id)
        while True:
            got = self.conn.execute(q, (last, generation, generation, int(rows))).fetchall()
            if not got:
                return
            ids = np.fromiter((r[0] for r in got), dtype=np.int64, count=len(got))
            vectors = np.empty((len(got), dim), np.float32)
            for i, r in enumerate(got):
                vectors[i] = np.frombuffer(r[1], np.float32)
            yield ids, vectors
            last = int(ids[-1])


class _Transaction:
    """`with store.transaction():` BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:  # SQLite has already rolled back after some errors (a full disk): keep that error
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        return False


def check_index_folder(folder) -> None:
    """Refuse a path that is not an index folder, with a message that says what to do."""
    folder = Path(folder)
    if not folder.exists():
        raise StemIndexError(f"{folder}: index folder not found (build one with `stemjepa index DIR --out {folder}`)")
    if not folder.is_dir():
        raise StemIndexError(f"{folder}: not a folder (an index is a folder made by `stemjepa index`)")
    if not (folder / DB_NAME).is_file():
        raise StemIndexError(
            f"{folder}: not a stem index (no {DB_NAME}; build one with `stemjepa index DIR --out {folder}`)")
