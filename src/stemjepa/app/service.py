"""What the web app does, without HTTP: open the indexes, answer a query with progress, render aligned audio.

The API layer (api.py) only translates requests to these calls and errors to status codes.
"""
from __future__ import annotations

import io
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import numpy as np

from ..audio.io import load_playback, probe, resample
from ..audio.mix import Mix, align, load_query, premix
from ..errors import AudioError, StemJepaError
from ..models.registry import load_model
from ..search.export import SUBTYPE, fit_candidate, safe_name
from ..search.inputs import check_instrument
from ..search.reader import SearchResult, StemIndex, recorded_model
from .files import Library, MixFolder, NotFound, TooLarge, UploadStore
from .filters import QueryFilters, analysis_dict
from .jobs import Job, Jobs
from .labels import stem_labels
from .settings import ServeConfig

CHUNKS_PER_STEP = 16  # model chunks embedded between two progress reports (a longer mix is embedded piece by piece)
DECODES_AT_ONCE = 2  # mixes decoded at the same time (each up to max_decoded_mb): concurrent uploads wait their turn
FITS_AT_ONCE = 2  # candidates fitted to their mix at the same time (a fit is seconds of CPU and a mix-sized buffer)


@dataclass
class IndexHandle:
    name: str
    folder: Path
    index: StemIndex
    library: Library
    lock: threading.Lock


@dataclass
class QueryRecord:
    id: str
    index: str
    mix_path: Path
    mix_name: str
    instrument: str
    frames: int
    sample_rate: int
    channels: int
    results: list[SearchResult]
    library_size: int
    mix_analysis: object | None = None  # stemjepa.analysis.Analysis of the mix; None when it could not be analysed
    filters: QueryFilters | None = None


def wav_bytes(wave: np.ndarray, sample_rate: int) -> bytes:
    import soundfile as sf

    data = np.clip(np.atleast_2d(wave), -1.0, 1.0).T
    buf = io.BytesIO()
    sf.write(buf, data, sample_rate, format="WAV", subtype=SUBTYPE)
    return buf.getvalue()


def embed_mix(model, mix: Mix, label: str, on_progress) -> np.ndarray:
    """The query vector of a checked mix at the model's rate, through the one pipeline (models.pipeline.embed_files),
    CHUNKS_PER_STEP chunks at a time so that `on_progress(done, total, seconds)` can show progress inside it."""
    from ..models.pipeline import Decoded, EmbedOptions, embed_files

    options = EmbedOptions(piece_chunks=CHUNKS_PER_STEP)
    [got] = embed_files(model, [mix.name], options, label=label, load=lambda _: Decoded(mix.wave),
                        on_progress=on_progress)
    if got.problem is not None:
        raise AudioError(mix.name, got.problem)
    return np.asarray(got.embedding.vector, np.float32)


class Engine:
    def __init__(self, config: ServeConfig):
        if not config.indexes:
            raise StemJepaError("give at least one index folder (--index DIR)")
        self.config, self.limits = config, config.limits
        self.mixes = MixFolder(config.mixes) if config.mixes else None
        self.indexes: OrderedDict[str, IndexHandle] = OrderedDict()
        shared = load_model(config.model, device=config.device) if config.model else None
        models: dict[str, object] = {}
        try:
            for folder in config.indexes:
                folder = Path(folder).expanduser()
                index = StemIndex.open(folder, model=shared, device=config.device)
                if shared is None:  # share one loaded model between indexes built with the same model
                    ref = str(recorded_model(index.store))
                    if ref in models:
                        index.close()
                        index = StemIndex.open(folder, model=models[ref], device=config.device)
                    models[ref] = index.model  # loads now: a missing model is refused at start
                name = self._unique_name(folder.resolve().name or "index")
                paths = index.store.live_stats(index.generation).keys()
                self.indexes[name] = IndexHandle(name, folder, index, Library(paths, config.library), threading.Lock())
        except BaseException:
            self.close()
            raise
        lim = self.limits
        self.uploads = UploadStore(config.uploads, lim)
        self.jobs = Jobs(keep=lim.max_jobs, grace_s=lim.job_grace_s, ttl_s=lim.job_ttl_s, max_queued=lim.max_queued)
        self.queries: OrderedDict[str, QueryRecord] = OrderedDict()
        self._lock = threading.Lock()
        self._audio_cache: OrderedDict[tuple, tuple[np.ndarray, int]] = OrderedDict()
        self._decoding = threading.BoundedSemaphore(DECODES_AT_ONCE)
        self._fitting = threading.BoundedSemaphore(FITS_AT_ONCE)

    def _unique_name(self, base: str) -> str:
        name, i = base, 2
        while name in self.indexes:
            name, i = f"{base}-{i}", i + 1
        return name

    def close(self) -> None:
        for h in self.indexes.values():
            h.index.close()
        if hasattr(self, "jobs"):
            self.jobs.close()
        if hasattr(self, "uploads"):
            self.uploads.close()

    # --- lookups ---------------------------------------------------------------------------------------------------
    def handle(self, name: str | None) -> IndexHandle:
        if name is None:
            return next(iter(self.indexes.values()))
        if name not in self.indexes:
            raise NotFound(f"unknown index {name!r} (this server has: {', '.join(self.indexes)})")
        return self.indexes[name]

    def query_record(self, qid: str) -> QueryRecord:
        with self._lock:
            rec = self.queries.get(qid)
        if rec is None:
            raise NotFound(f"query {qid!r} not found (only the last {self.limits.kept_queries} are kept; "
                           "queries are forgotten when the server restarts)")
        return rec

    def candidate(self, qid: str, rank: int) -> tuple[QueryRecord, SearchResult]:
        rec = self.query_record(qid)
        if not 1 <= rank <= len(rec.results):
            raise NotFound(f"query {qid} has no candidate of rank {rank} (it has {len(rec.results)})")
        return rec, rec.results[rank - 1]

    def labels(self) -> list[str]:
        out: set[str] = set()
        for h in self.indexes.values():
            out.update(h.index.model.known_labels)
        return sorted(out)

    def info(self) -> dict:
        return {
            "indexes": [{"name": h.name, "files": len(h.index), "model_id": h.index.model_id,
                         "has_predictor": bool(h.index.model.has_predictor)}
                        for h in self.indexes.values()],
            "mixes_folder": self.mixes is not None,
            "limits": {"max_upload_mb": self.limits.max_upload_mb, "max_seconds": self.limits.max_seconds,
                       "max_decoded_mb": self.limits.max_decoded_mb, "max_k": self.limits.max_k,
                       "max_instrument_chars": self.limits.max_instrument_chars,
                       "upload_ttl_s": self.limits.upload_ttl_s},
        }

    # --- uploads ---------------------------------------------------------------------------------------------------
    @property
    def max_samples(self) -> int:
        """Samples (channels x frames, float32) one decoded mix or candidate may hold."""
        return max(1, int(self.limits.max_decoded_mb * 1e6 / 4))

    def check_mix(self, path: Path, name: str) -> tuple[np.ndarray, int]:
        """Check a mix from its header (duration, channels x rate x duration against the decoded-size budget), then
        decode it within that budget and check it can be queried (length, silence); errors name `name`.

        The header check is what stops a decode bomb (a 1 MB FLAC of 8 channels at 192 kHz for 590 s is 3.6 GB of
        samples) before any sample is decoded; a header that does not state the length is decoded with the budget as
        the cap."""
        lim = self.limits
        try:
            info = probe(path)
        except AudioError as exc:
            raise AudioError(name, exc.problem) from None
        if info.seconds is not None and info.seconds > lim.max_seconds:
            raise TooLarge(f"{name}: {info.seconds:.0f} s long; this server accepts mixes up to "
                           f"{lim.max_seconds:.0f} s (stemjepa serve --max-seconds)")
        if info.frames is not None and info.frames * info.channels > self.max_samples:
            raise TooLarge(f"{name}: {info.channels} channels x {info.seconds:.0f} s at {info.sample_rate} Hz decode to "
                           f"{info.frames * info.channels * 4 / 1e9:.1f} GB; this server decodes mixes up to "
                           f"{lim.max_decoded_mb:g} MB (stemjepa serve --max-decoded-mb): down-mix or shorten it")
        try:
            with self._decoding:
                wave, sr = load_playback(path, max_samples=self.max_samples)
                load_query(wave, sr, name=name)  # too short, silent, NaN
        except AudioError as exc:
            raise AudioError(name, exc.problem) from None
        if wave.shape[1] / sr > lim.max_seconds:
            raise TooLarge(f"{name}: {wave.shape[1] / sr:.0f} s long; this server accepts mixes up to "
                           f"{lim.max_seconds:.0f} s (stemjepa serve --max-seconds)")
        self._cache_audio(("native", str(path)), wave, sr)
        return wave, sr

    def _cache_audio(self, key, wave, sr) -> None:
        """Keep decoded audio for playback, the most recent first, within `audio_cache_mb`."""
        budget = self.limits.audio_cache_mb * 1e6
        with self._lock:
            self._audio_cache[key] = (wave, sr)
            self._audio_cache.move_to_end(key)
            while len(self._audio_cache) > 1 and sum(w.nbytes for w, _ in self._audio_cache.values()) > budget:
                self._audio_cache.popitem(last=False)

    def _cached(self, key) -> tuple[np.ndarray, int] | None:
        with self._lock:
            return self._audio_cache.get(key)

    def _native(self, path: Path) -> tuple[np.ndarray, int]:
        key = ("native", str(path))
        hit = self._cached(key)
        if hit is None:
            hit = load_playback(path, max_samples=self.max_samples)
            self._cache_audio(key, *hit)
        return hit

    # --- queries ---------------------------------------------------------------------------------------------------
    def submit_query(self, mix_path: Path, mix_name: str, instrument: str, k: int, index: str | None,
                     bpm: str | None = None, key: str | None = None, rank: str = "model") -> Job:
        """Start a query job; every field is checked here, before the job is queued (a bad filter is a 400 now, not a
        failed job later)."""
        handle = self.handle(index)
        if isinstance(instrument, str) and len(instrument) > self.limits.max_instrument_chars:
            raise TooLarge(f"instrument text of {len(instrument)} characters; this server accepts up to "
                           f"{self.limits.max_instrument_chars} (name an instrument, e.g. \"warm electric piano\")")
        instrument = check_instrument(instrument)
        if not 1 <= int(k) <= self.limits.max_k:
            raise StemJepaError(f"k must be between 1 and {self.limits.max_k}, got {k}")
        filters = QueryFilters.parse(bpm, key, rank)
        return self.jobs.submit(lambda job: self._run_query(job, handle, mix_path, mix_name, instrument, int(k), filters))

    def _run_query(self, job: Job, h: IndexHandle, mix_path: Path, mix_name: str, instrument: str, k: int,
                   filters: QueryFilters | None = None) -> dict:
        filters = filters or QueryFilters()
        job.report(f"decoding {mix_name}", 0.01)
        hit = self._cached(("native", str(mix_path)))  # an upload, checked when it arrived
        native, sr = hit if hit is not None else self.check_mix(mix_path, mix_name)
        model = h.index.model
        model_sr = model.sample_rate
        # checked by check_mix (length, silence): only down-mixed and resampled here, not checked again
        wave = np.ascontiguousarray(resample(native.mean(0), sr, model_sr), np.float32)
        seconds = len(wave) / model_sr
        started = time.monotonic()

        def report(done: int, total: int, at: float) -> None:
            job.report(f"embedding {mix_name} ({min(at, seconds):.0f} of {seconds:.0f} s, "
                       f"{time.monotonic() - started:.0f} s so far)", 0.05 + 0.9 * min(at / max(seconds, 1e-9), 1.0))

        vector = embed_mix(model, Mix(wave, model_sr, mix_name), instrument, report)
        job.report(f"finding the tempo and key of {mix_name}", 0.95)
        mix_analysis = analyse_mix(h.index, wave, model_sr)
        job.report("searching the library", 0.97)
        with h.lock:
            results = h.index.search_vectors(vector[None], k, **filters.search_args(mix_analysis))[0]
            h.library.set_paths(h.index.store.live_stats(h.index.generation).keys())
            size = len(h.index)
        rec = QueryRecord(uuid.uuid4().hex[:16], h.name, mix_path, mix_name, instrument, native.shape[1], sr,
                          native.shape[0], results, size, mix_analysis, filters)
        with self._lock:
            self.queries[rec.id] = rec
            while len(self.queries) > self.limits.kept_queries:
                self.queries.popitem(last=False)
        return self.describe(rec)

    def describe(self, rec: QueryRecord) -> dict:
        lib = self.indexes[rec.index].library
        base = f"/api/queries/{rec.id}"
        filters = rec.filters or QueryFilters()
        return {
            "id": rec.id, "index": rec.index, "instrument": rec.instrument, "library_size": rec.library_size,
            "filters": filters.describe(rec.mix_analysis),
            "mix": {"name": rec.mix_name, "frames": rec.frames, "sample_rate": rec.sample_rate,
                    "channels": rec.channels, "seconds": rec.frames / rec.sample_rate,
                    "analysis": analysis_dict(rec.mix_analysis),
                    "audio_url": f"{base}/mix.wav", "picture_url": f"{base}/mix.png"},
            "results": [{
                "rank": r.rank, "z": round(r.z, 4), "percentile": round(r.percentile, 2),
                "cosine": r.cosine, "chunk_cosine": r.chunk_cosine, "offset": r.offset, "duration": r.duration,
                "analysis": analysis_dict(getattr(r, "analysis", None)),
                "compatibility": getattr(r, "compatibility", None),
                "path": lib.relative(r.path), "name": Path(r.path).name, "labels": stem_labels(r.path),
                "file_name": self.download_name(rec, r, fit=False),
                "fitted_file_name": self.download_name(rec, r, fit=True),
                "audio_url": f"/api/library/file?{urlencode({'index': rec.index, 'path': lib.relative(r.path)})}",
                "aligned_url": f"{base}/candidates/{r.rank}/aligned.wav",
                "fitted_url": f"{base}/candidates/{r.rank}/aligned.wav?fit=1",
                "premix_url": f"{base}/candidates/{r.rank}/premix.wav",
                "picture_url": f"{base}/candidates/{r.rank}/picture.png",
            } for r in rec.results],
        }

    @staticmethod
    def download_name(rec: QueryRecord, r: SearchResult, fit: bool, premix: bool = False) -> str:
        """`mix_01_stem.wav` (`mix_premix_01_stem.wav`; `.fit.wav` when fitted): the name a download or a drag out of
        the page is saved under."""
        name = safe_name(f"{Path(rec.mix_name).stem}{'_premix' if premix else ''}_{r.rank:02d}_{Path(r.path).stem}")
        return f"{name}{'.fit' if fit else ''}.wav"

    # --- audio renditions ------------------------------------------------------------------------------------------
    def mix_audio(self, qid: str) -> tuple[np.ndarray, int]:
        return self._native(self.query_record(qid).mix_path)

    def aligned(self, qid: str, rank: int) -> tuple[np.ndarray, int]:
        """The candidate from its matched offset, looped or trimmed to the mix, at the mix's rate."""
        rec, r = self.candidate(qid, rank)
        key = ("aligned", qid, rank)
        hit = self._cached(key)
        if hit is not None:
            return hit
        cand, cand_sr = load_playback(self._library_file(rec, r), max_samples=self.max_samples)
        out = align(cand, cand_sr, r.offset, rec.frames, rec.sample_rate), rec.sample_rate
        self._cache_audio(key, *out)
        return out

    def _library_file(self, rec: QueryRecord, r: SearchResult) -> Path:
        """A candidate's file, still inside its library and still there."""
        lib = self.indexes[rec.index].library
        return lib.resolve(lib.relative(r.path))

    def fitted(self, qid: str, rank: int) -> tuple[np.ndarray, int]:
        """The candidate fitted to the mix (tempo, key, downbeat; stemjepa.audio.fit), the mix's length and rate.

        Cached like the aligned audio; FITS_AT_ONCE fits run at a time (uploads are not held up by them), each bounded by
        the mix's size (which passed the decoded-size check) and the candidate's decode budget."""
        rec, r = self.candidate(qid, rank)
        if rec.mix_analysis is None:
            raise StemJepaError(f"{rec.mix_name}: the tempo and key of this mix are unknown, so the candidate cannot be "
                                "fitted to it (listen to it aligned instead)")
        key = ("fit", qid, rank)
        hit = self._cached(key)
        if hit is not None:
            return hit
        path = self._library_file(rec, r)
        with self._fitting:
            hit = self._cached(key)  # fitted by a request that held the semaphore before this one
            if hit is not None:
                return hit
            cand, cand_sr = load_playback(path, max_samples=self.max_samples)
            wave, _ = fit_candidate(cand, cand_sr, r, rec.mix_analysis, rec.frames, rec.sample_rate)
            out = np.atleast_2d(wave), rec.sample_rate
            self._cache_audio(key, *out)
        return out

    def candidate_audio(self, qid: str, rank: int, fit: bool = False) -> tuple[np.ndarray, int]:
        return self.fitted(qid, rank) if fit else self.aligned(qid, rank)

    def premix(self, qid: str, rank: int, balance: float, fit: bool = False) -> tuple[np.ndarray, int]:
        cand, sr = self.candidate_audio(qid, rank, fit)
        mix, _ = self.mix_audio(qid)
        return premix(mix, cand, balance), sr


def analyse_mix(index: StemIndex, wave: np.ndarray, sample_rate: int):
    """The mix's tempo and key (StemIndex.analyse_mix), or None when it cannot be analysed: the query still answers,
    without the mix's BPM/key, compat ranking or fitting (a damaged or unusual mix must not cost the whole query)."""
    run = getattr(index, "analyse_mix", None)
    if run is None:
        return None
    try:
        return run(wave, sample_rate)
    except (StemJepaError, ImportError, ValueError, FloatingPointError):
        return None
