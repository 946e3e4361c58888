"""Checks on query input that are the search's own (the instrument text); the mix's checks are
`stemjepa.audio.mix.load_query`."""
from __future__ import annotations

from ..errors import StemJepaError


class QueryError(StemJepaError):
    """A query that cannot be answered as asked (empty instrument text, wrong array shape...)."""


def check_instrument(text) -> str:
    """The instrument text, stripped; an empty one is refused (the predictor needs to know which stem to look for)."""
    if not isinstance(text, str) or not text.strip():
        raise QueryError("empty instrument text: say which stem to look for, e.g. --instrument \"bass\"")
    return text.strip()
