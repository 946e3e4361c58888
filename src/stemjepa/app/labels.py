"""A library stem's own instrument labels (the model's, suggestions for the text box, are `model.known_labels`).

The `stems.json` beside a stem is the library owner's file, read while a query's answer is built: it is read through
`fsutil.read_json` (regular files only, size- and depth-bounded), so a FIFO, a huge or a deeply nested file there
costs the answer its labels, never the query worker.
"""
from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from ..errors import DataError
from ..fsutil import read_json

log = logging.getLogger(__name__)


@lru_cache(maxsize=4096)
def _folder_labels(folder: str, mtime_ns: int) -> dict[str, list[str]]:
    try:
        doc = read_json(Path(folder) / "stems.json", error=DataError)
        return {str(s["file"]): [str(x) for x in s.get("labels") or []] for s in doc.get("stems", []) if "file" in s}
    except DataError as exc:
        log.warning("labels not shown: %s", exc)
        return {}
    except (TypeError, KeyError, AttributeError):
        return {}


def stem_labels(path) -> list[str]:
    """Labels of a library stem from the `stems.json` beside it (the generic multitrack layout), coarse to fine."""
    path = Path(path)
    meta = path.parent / "stems.json"
    try:
        mtime = meta.stat().st_mtime_ns
    except OSError:
        return []
    return _folder_labels(str(path.parent), mtime).get(path.name, [])
