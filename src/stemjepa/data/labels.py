"""Label text rules shared by the data, the models and the evaluation: one place decides how a label is written.

Two forms, on purpose: `label_key` is how a model stores and looks up a label's text embedding (the text the encoder
reads, so "hi-hat" keeps its hyphen); `label_words` is how two labels are compared as instrument names ("hi-hat", "hi hat"
and "Hi_Hat" are one name). Unlabelled stems are conditioned on UNLABELLED, as the paper does for MUSDB's "other".
"""
from __future__ import annotations

UNLABELLED = "music"


def label_key(label: str) -> str:
    """Lower-case, '_' read as a space, runs of white space as one: a model's text-table key."""
    return " ".join(str(label).replace("_", " ").split()).strip().lower()


def label_words(label: str) -> str:
    """`label_key` with '-' read as a space too: the form instrument names are compared under."""
    return " ".join(str(label).replace("_", " ").replace("-", " ").lower().split())


def label_at(labels, level: str, rng=None, unlabelled: str = UNLABELLED) -> str:
    """The one fine / coarse picker of a label path (coarse first, e.g. ["guitar", "clean electric guitar"]): "fine" its
    most specific label, "coarse" its category, "random" any level drawn with `rng` (phase 2, as the paper trains);
    `unlabelled` for a stem without labels."""
    if level not in ("fine", "coarse", "random"):
        raise ValueError(f"label level must be random, fine or coarse, not {level!r}")
    if not labels:
        return unlabelled
    if level == "random":
        return labels[int(rng.integers(len(labels)))]
    return labels[-1] if level == "fine" else labels[0]
