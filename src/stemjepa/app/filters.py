"""A query's tempo and key filters and its ranking, as the web app takes them: text fields checked before the job starts.

The parsing is stemjepa.analysis.compat's (the CLI's `--bpm` / `--key` grammar), so the page, the CLI and the Python API
read "120+-3" or "Am:camelot" the same way. Text over `MAX_FILTER_CHARS` is a 413 like the instrument text.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import StemJepaError
from .files import TooLarge

MAX_FILTER_CHARS = 64  # "118-124!" or "F# minor:camelot" are a few characters; a longer text is not a filter
RANKS = ("model", "compat")


def _text(value, what: str) -> str | None:
    """`value` as filter text: None for empty, 413 over MAX_FILTER_CHARS (checked before any parsing)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = f"{value:g}"
    if not isinstance(value, str):
        raise StemJepaError(f"{what} filter: give text such as {'120+-3' if what == 'tempo' else 'Am:relative'}")
    if len(value) > MAX_FILTER_CHARS:
        raise TooLarge(f"{what} filter of {len(value)} characters; this server accepts up to {MAX_FILTER_CHARS}")
    return value.strip() or None


@dataclass(frozen=True)
class QueryFilters:
    """The parsed filters (BpmFilter / KeyFilter or None) and the ranking ("model" or "compat")."""

    bpm: object | None = None
    key: object | None = None
    rank: str = "model"

    @classmethod
    def parse(cls, bpm=None, key=None, rank: str | None = "model") -> QueryFilters:
        """Filters from the request's text; FilterError (a StemJepaError: 400) quoting a text that does not parse."""
        rank = rank or "model"
        if rank not in RANKS:
            raise StemJepaError(f"unknown rank {rank!r} (choose from {', '.join(RANKS)})")
        bpm, key = _text(bpm, "tempo"), _text(key, "key")
        if bpm is None and key is None:
            return cls(rank=rank)
        from ..analysis.compat import parse_bpm_filter, parse_key_filter

        return cls(None if bpm is None else parse_bpm_filter(bpm), None if key is None else parse_key_filter(key), rank)

    def search_args(self, mix_analysis) -> dict:
        """Keyword arguments of StemIndex.search_vectors. Without the mix's analysis "compat" cannot rank: the model's
        order is used (and `describe` of the record says which was used)."""
        args = {}
        if self.bpm is not None:
            args["bpm"] = self.bpm
        if self.key is not None:
            args["key"] = self.key
        if mix_analysis is not None:  # also gives each result its tempo/key fit to the mix ("compatibility")
            args["mix_analyses"] = [mix_analysis]
            if self.rank == "compat":
                args["rank"] = "compat"
        return args

    def describe(self, mix_analysis=None) -> dict:
        rank = self.rank if self.rank == "model" or mix_analysis is not None else "model"
        return {"bpm": None if self.bpm is None else str(self.bpm), "key": None if self.key is None else str(self.key),
                "rank": rank}


def analysis_dict(analysis) -> dict | None:
    """An Analysis as the API shows it (its to_dict, JSON-safe, plus the key's Camelot code), None when there is none."""
    if analysis is None:
        return None
    from ..analysis.compat import camelot

    d = analysis.to_dict()
    try:
        d["camelot"] = camelot(analysis.key) if analysis.key else None
    except StemJepaError:
        d["camelot"] = None
    return d
