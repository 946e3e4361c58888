"""A library stem's own instrument labels (the model's, suggestions for the text box, are `model.known_labels`)."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=4096)
def _folder_labels(folder: str, mtime_ns: int) -> dict[str, list[str]]:
    try:
        doc = json.loads((Path(folder) / "stems.json").read_text())
        return {str(s["file"]): [str(x) for x in s.get("labels") or []] for s in doc.get("stems", []) if "file" in s}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
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
