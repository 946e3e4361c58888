"""The retrieval protocol of Table I as one frozen object: what makes two retrieval figures comparable.

Two evaluations are the same measurement when they rank the same pool (dataset, split, the silence threshold that drops
stems from it) with the same queries (label level, label map), the same ranking (distance), references from the same
encoder, and the same k=64 draws. `RetrievalProtocol.identity` is that record; an output folder that holds another one is
never overwritten without being asked (evaluation/retrieval.py `check_out_dir`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..data.multitrack import UNLABELLED, Stem
from ..errors import StemJepaError
from . import metrics

SILENCE_DB = -60.0  # a stem whose 100 ms frames all stay below this (dBFS RMS) is silent: out of the pool, not queried
MUSDB_LABEL_MAP = {"other": UNLABELLED}  # the paper conditions MUSDB's "other" stem on "music"
# Table I evaluates zero-shot on whole datasets: all 150 MUSDB18 tracks (train + test) and all 240 MoisesDB tracks
TABLE1_POOL = {"musdb18": "all", "musdb18hq": "all", "moisesdb": "all"}
DISTANCE_REASON = {
    "l2": "the paper's: normalised rank = position of the true stem in the sorted list of Euclidean distances ||q - z|| "
          "between raw mean-pooled vectors (Sec. III-A)",
    "cosine": "not the paper's: cosine similarity of L2-normalised vectors (what the search index uses)",
}
REFERENCE_ENCODERS = ("target", "context")
LABEL_LEVELS = ("fine", "coarse")  # the label a query is conditioned on: a stem's most specific one, or its category


def default_split(dataset: str) -> str:
    """The evaluation pool of `dataset` when no split is asked for: Table I's (all tracks) for MUSDB18 and MoisesDB, else
    the dataset's test split, or all songs where it has none."""
    if dataset in TABLE1_POOL:
        return TABLE1_POOL[dataset]
    from ..data.datasets import default_eval_split

    return default_eval_split(dataset)


def default_label_map(dataset: str) -> dict[str, str]:
    """Dataset-specific renaming of labels into conditioning text."""
    return dict(MUSDB_LABEL_MAP) if dataset in ("musdb18", "musdb18hq") else {}


def conditioning_label(stem: Stem, label_level: str, label_map: dict[str, str] | None = None) -> str:
    """The text a stem's query is conditioned on: its fine (most specific) or coarse label, "music" when unlabelled."""
    if label_level not in LABEL_LEVELS:
        raise StemJepaError(f"label level must be 'fine' or 'coarse', not {label_level!r}")
    label = stem.fine if label_level == "fine" else stem.coarse
    return (label_map or {}).get(label, label)


def class_conditioning_text(stem: Stem, label_level: str, label_map: dict[str, str] | None = None) -> str:
    """For a class-conditioned model (Stem-JEPA): the label path "coarse > ... > level", which the model maps to the first
    class it names, finest level first (so MoisesDB's instruments fall into the four sources through their category)."""
    labels = list(stem.labels) if label_level == "fine" else list(stem.labels[:1])
    if not labels:
        return conditioning_label(stem, label_level, label_map)
    return " > ".join((label_map or {}).get(l, l) for l in labels)


@dataclass(frozen=True)
class RetrievalProtocol:
    """Table I's protocol: `dataset` and `split` name the pool; `label_level` which label conditions a query and
    `label_map` how labels become text (None: the dataset's default, MUSDB's "other" -> "music"); `distance` the ranking
    ("l2", the paper's, or "cosine"; None: the one the model was trained for); `reference_encoder` which encoder embeds
    the pool ("target", the EMA encoder the predictor is trained against, or "context"); `k64_draws` and `seed` the
    top-1-among-64 draws; `silence_db` the threshold under which a stem is silent."""
    dataset: str = "folder"
    split: str = "all"
    label_level: str = "fine"
    distance: str | None = None
    reference_encoder: str = "target"
    k64_draws: int = 10
    seed: int = 0
    silence_db: float = SILENCE_DB
    label_map: tuple[tuple[str, str], ...] | None = None

    def __post_init__(self):
        if isinstance(self.label_map, dict):  # frozen, hashable: kept as sorted pairs
            object.__setattr__(self, "label_map", tuple(sorted(self.label_map.items())))
        if self.label_level not in LABEL_LEVELS:
            raise StemJepaError(f"label level must be 'fine' or 'coarse', not {self.label_level!r}")
        if self.distance is not None and self.distance not in metrics.DISTANCES:
            raise StemJepaError(f"distance must be one of {', '.join(metrics.DISTANCES)}, not {self.distance!r}")
        if self.reference_encoder not in REFERENCE_ENCODERS:
            raise StemJepaError(f"reference encoder must be one of {', '.join(REFERENCE_ENCODERS)}, "
                                f"not {self.reference_encoder!r}")
        if not isinstance(self.k64_draws, int) or self.k64_draws < 1:
            raise StemJepaError(f"k64_draws must be a positive integer, not {self.k64_draws!r}")

    @property
    def labels(self) -> dict[str, str]:
        """The label map in force: the given one, else the dataset's default."""
        return dict(self.label_map) if self.label_map is not None else default_label_map(self.dataset)

    def for_model(self, model) -> RetrievalProtocol:
        """This protocol with the distance settled: the given one, else the ranking `model` was trained for."""
        return self if self.distance else replace(self, distance=model.distance)

    def identity(self, model_id: str) -> dict:
        """What names this measurement of model `model_id` (recorded in metrics.json; a folder holding another one is
        not overwritten without being asked)."""
        return {"model_id": model_id, "dataset": self.dataset, "split": self.split, "label_level": self.label_level,
                "distance": self.distance, "reference_encoder": self.reference_encoder, "k64_draws": self.k64_draws,
                "seed": self.seed, "silence_db": self.silence_db, "label_map": self.labels}
