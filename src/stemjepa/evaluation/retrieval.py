"""The retrieval benchmark of Table I (paper Sec. III).

Every non-silent stem of every track is embedded over the whole track (the model chunks it in 8 s pieces and averages
the patch embeddings) into the reference pool. Every such stem is also a query: the mix of the other stems of its
track goes through encoder and predictor conditioned on the stem's label (a contrastive-only checkpoint returns the
mix embedding). Queries are ranked against the whole pool by Euclidean distance between the raw mean-pooled vectors, as the
paper defines the normalised rank ("the sorted list of distances ||q - z||", Sec. III-A); `distance="cosine"` ranks by
cosine similarity instead. References come from the target encoder (what the predictor is trained to predict, Eq. 3) unless
`reference_encoder="context"`. See `metrics` for the tie rule.

The default pool is Table I's: every track of MUSDB18 / MUSDB18-HQ (150) and of MoisesDB (240), since the paper's model is
trained on other data; a checkpoint that was trained on some of the evaluated songs is reported (and refused with `strict`).

Exclusions, counted in metrics.json: stems silent over the whole track (neither in the pool nor queried), and
queries whose mix of other stems is silent (the stem stays in the pool). Songs or stems that cannot be decoded or used
(a bad file name, absurd sample values, an embedding that overflows) are skipped and listed with the reason
(`skipped`, `skipped_stems`); the run goes on.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..audio import SAMPLE_RATE
from ..data.multitrack import Song, Stem, load_song
from ..data.training_cache import frame_rms_db
from ..errors import DataError, StemJepaError, printable
from ..fsutil import atomic_write_csv, atomic_write_text
from . import analysis, metrics
from .embedding_cache import EmbeddingCache, SongEntry, song_fingerprint
from .protocol import (  # noqa: F401 - the protocol's rules, also imported from here
    DISTANCE_REASON,
    LABEL_LEVELS,
    REFERENCE_ENCODERS,
    SILENCE_DB,
    RetrievalProtocol,
    class_conditioning_text,
    conditioning_label,
    default_label_map,
    default_split,
)
from .report import upgrade_record

log = logging.getLogger(__name__)

UNREADABLE = "unreadable"  # a stem's status when it cannot be used, followed by ": <why>" (the reason is cached with it)
QUERY_GROUP = 8  # query mixes passed to the model at once
OUTPUT_FILES = ("metrics.json", "rankings.csv", "analysis.csv", "fig2.png", "report.md")


def is_silent(wave: np.ndarray, sample_rate: int = SAMPLE_RATE, threshold_db: float = SILENCE_DB,
              frame_seconds: float = 0.1) -> bool:
    """True when no 100 ms frame of `wave` reaches `threshold_db` dBFS RMS (judged over frames, not one peak sample)."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.size == 0:
        return True
    return bool(frame_rms_db(wave, max(1, int(frame_seconds * sample_rate))).max() < threshold_db)


def other_stems_mix(audio: np.ndarray, index: int) -> np.ndarray:
    """The query input for stem `index` of a (S, N) song: the sum of every other stem."""
    keep = np.ones(len(audio), dtype=bool)
    keep[index] = False
    return audio[keep].sum(axis=0, dtype=np.float32)


def stem_key(index: int, stem: Stem) -> str:
    """Cache key of a stem: its position and name (names can repeat within a song)."""
    return f"{index}:{stem.name}"


@dataclass
class PoolItem:
    song: str
    stem: str
    instrument: str  # fine label
    category: str  # coarse label
    track: int  # index of the song


@dataclass
class Corpus:
    """The encoded benchmark: pool vectors and items, query vectors with their target and conditioning label."""

    items: list[PoolItem] = field(default_factory=list)
    pool: list[np.ndarray] = field(default_factory=list)
    queries: list[np.ndarray] = field(default_factory=list)
    query_targets: list[int] = field(default_factory=list)
    query_labels: list[str] = field(default_factory=list)
    n_silent_excluded: int = 0
    n_silent_mix_excluded: int = 0
    n_unreadable: int = 0
    n_songs: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    skipped_stems: list[tuple[str, str, str]] = field(default_factory=list)  # (song, stem, reason): unreadable stems
    n_cached_songs: int = 0


def _vectors(embeddings) -> list[np.ndarray]:
    return [np.asarray(e.vector, dtype=np.float32).reshape(-1) for e in embeddings]


def encode_corpus(
    model,
    songs: list[Song],
    label_level: str = "fine",
    label_map: dict[str, str] | None = None,
    cache: EmbeddingCache | None = None,
    silence_db: float = SILENCE_DB,
    progress: bool = True,
    reference_encoder: str = "target",
) -> Corpus:
    """Embed the pool and the queries of `songs`, song by song (one song's audio in memory at a time), using the cache.
    Queries of a class-conditioned model are conditioned on the label path (`class_conditioning_text`)."""
    from tqdm.auto import tqdm

    cache = cache or EmbeddingCache(None, "", "", "")
    sr = model.sample_rate
    corpus = Corpus()
    class_model = model.conditioning_kind == "classes"
    for song in tqdm(songs, desc="retrieval: encoding songs", unit="song", disable=not progress):
        fingerprint = song_fingerprint(song, extra=f"sr={sr}|silence_db={silence_db}")
        entry = cache.load(song.id, fingerprint)
        keys = [stem_key(i, s) for i, s in enumerate(song.stems)]
        labels = [conditioning_label(s, label_level, label_map) for s in song.stems]
        texts = [class_conditioning_text(s, label_level, label_map) for s in song.stems] if class_model else labels
        needs_audio = entry is None or any(
            k not in entry.status or (entry.status[k] == "ok" and (k not in entry.pool or (k, lab) not in entry.queries))
            for k, lab in zip(keys, texts)
        )
        if needs_audio:
            try:
                entry = _encode_song(model, song, keys, texts, entry or SongEntry(fingerprint), sr, silence_db,
                                     reference_encoder)
            except StemJepaError as exc:
                log.warning("skipping song %s: %s", printable(song.id), exc)
                corpus.skipped.append((printable(song.id), str(exc)))
                continue
            cache.save(song.id, entry)
        else:
            corpus.n_cached_songs += 1
        _add_song(corpus, song, keys, labels, entry, texts)
    return corpus


def _encode_song(model, song: Song, keys, labels, entry: SongEntry, sr: int, silence_db: float,
                 reference_encoder: str = "target") -> SongEntry:
    loaded = load_song(song, sr)
    # load_song drops unreadable stems; map the kept ones back to their position in song.stems
    kept_ids = {id(s) for s in loaded.stems}
    positions = [i for i, s in enumerate(song.stems) if id(s) in kept_ids]
    reasons = iter(reason for _, reason in loaded.skipped)  # in the order of song.stems, like the unread positions
    audio = loaded.audio
    status = {keys[i]: f"{UNREADABLE}: {next(reasons, 'unreadable')}" for i in range(len(song.stems)) if i not in positions}
    for row, i in enumerate(positions):
        status[keys[i]] = "silent" if is_silent(audio[row], sr, silence_db) else "ok"
    entry.status = status
    todo_pool = [(row, i) for row, i in enumerate(positions) if status[keys[i]] == "ok" and keys[i] not in entry.pool]
    if todo_pool:
        waves = [audio[row] for row, _ in todo_pool]
        vecs = _vectors(model.embed_many(waves, target=reference_encoder == "target"))
        for (_, i), v in zip(todo_pool, vecs):
            if np.all(np.isfinite(v)):
                entry.pool[keys[i]] = v
            else:  # an overflow in the model: this stem is reported and left out, the others go on
                status[keys[i]] = f"{UNREADABLE}: the model returned NaN or infinite values for this stem"
    todo_query = []
    for row, i in enumerate(positions):
        if status[keys[i]] != "ok" or (keys[i], labels[i]) in entry.queries:
            continue
        todo_query.append((row, i))
    # mixes are built QUERY_GROUP at a time: a song with many long stems would otherwise hold one full mix per stem
    for lo in range(0, len(todo_query), QUERY_GROUP):
        mixes, mix_rows = [], []
        for row, i in todo_query[lo: lo + QUERY_GROUP]:
            mix = other_stems_mix(audio, row)
            if is_silent(mix, sr, silence_db):
                entry.queries[(keys[i], labels[i])] = np.zeros(0, np.float32)  # marker: no context, no query
            else:
                mixes.append(mix)
                mix_rows.append(i)
        if mixes:
            vecs = _vectors(model.query_many(mixes, [labels[i] for i in mix_rows]))
            for i, v in zip(mix_rows, vecs):
                if not np.all(np.isfinite(v)):
                    raise StemJepaError(f"song {song.id!r}: the model returned NaN or infinite values for the mix of the "
                                        f"stems other than {song.stems[i].name!r}")
                entry.queries[(keys[i], labels[i])] = v
    return entry


def _add_song(corpus: Corpus, song: Song, keys, labels, entry: SongEntry, texts=None) -> None:
    track = corpus.n_songs
    corpus.n_songs += 1
    for i, stem in enumerate(song.stems):
        state = entry.status.get(keys[i], UNREADABLE)
        if state != "ok":
            if state == "silent":
                corpus.n_silent_excluded += 1
            else:
                corpus.n_unreadable += 1
                reason = state.partition(": ")[2] or "unreadable"
                log.warning("song %s: stem %s skipped: %s", printable(song.id), printable(stem.name), reason)
                corpus.skipped_stems.append((printable(song.id), printable(stem.name), reason))
            continue
        target = len(corpus.items)
        # names as printed and written to the CSV files: a NUL, a newline or undecodable bytes escaped
        corpus.items.append(PoolItem(printable(song.id), printable(stem.name), stem.fine, stem.coarse, track))
        corpus.pool.append(entry.pool[keys[i]])
        q = entry.queries[(keys[i], (texts or labels)[i])]
        if q.size == 0:
            corpus.n_silent_mix_excluded += 1
            continue
        corpus.queries.append(q)
        corpus.query_targets.append(target)
        corpus.query_labels.append(labels[i])


def score_corpus(corpus: Corpus, k64_draws: int = 10, seed: int = 0, block: int = 1024,
                 distance: str = "l2") -> tuple[dict, list[dict], list[dict]]:
    """Metrics, per-query ranking rows and the Fig. 2 tally of an encoded corpus, ranked by `distance` ("l2" or "cosine")."""
    if distance not in metrics.DISTANCES:
        raise StemJepaError(f"distance must be one of {', '.join(metrics.DISTANCES)}, not {distance!r}")
    if not corpus.queries:
        raise DataError("no query could be built (every stem silent, or every track has a single non-silent stem)")
    pool = np.stack(corpus.pool)
    queries = np.stack(corpus.queries)
    if queries.shape[1] != pool.shape[1]:
        raise StemJepaError(f"query vectors have {queries.shape[1]} dims but pool vectors {pool.shape[1]}")
    targets = np.asarray(corpus.query_targets)
    tracks = np.array([it.track for it in corpus.items])
    instruments = [it.instrument for it in corpus.items]
    categories = [it.category for it in corpus.items]
    n_distract = metrics.distractor_count(tracks[targets], tracks, 64)
    rng = np.random.default_rng(seed)
    ranks, nn, hits, target_sims, nn_sims = [], [], [], [], []
    for lo in range(0, len(queries), block):  # blocks of queries keep the (Q, |pool|) matrices small on large corpora
        t = targets[lo: lo + block]
        sim = metrics.similarities(queries[lo: lo + block], pool, distance)
        ranks.append(metrics.target_ranks(sim, t))
        nn.append(metrics.nearest_neighbours(sim, t))
        rows_idx = np.arange(len(t))
        target_sims.append(sim[rows_idx, t])
        nn_sims.append(sim[rows_idx, nn[-1]])
        if n_distract:
            hits.append(metrics.top1_hits(sim, t, tracks[t], tracks, n_distract, k64_draws, rng))
    ranks, nn = np.concatenate(ranks), np.concatenate(nn)
    target_sims, nn_sims = np.concatenate(target_sims), np.concatenate(nn_sims)
    result = metrics.retrieval_metrics(ranks, len(pool))
    # None (null in JSON) when the corpus has a single track: there is no stem of another track to draw
    result["top1_k64"] = float(100.0 * np.concatenate(hits).mean()) if n_distract else None
    result["k64_candidates"] = n_distract + 1
    result["n_queries"] = int(len(queries))
    result["n_pool"] = int(len(pool))
    classes = [analysis.classify_neighbour(t, n, tracks, instruments, categories) for t, n in zip(targets, nn)]
    rows = []
    for qi, (t, n, r, cls) in enumerate(zip(targets, nn, ranks, classes)):
        item, near = corpus.items[t], corpus.items[n]
        rows.append({
            "query": qi, "song": item.song, "stem": item.stem, "label": corpus.query_labels[qi],
            "instrument": item.instrument, "category": item.category, "rank": int(r),
            "norm_rank": round(100.0 * r / len(pool), 4), "target_score": round(float(target_sims[qi]), 6),
            "nn_song": near.song, "nn_stem": near.stem, "nn_score": round(float(nn_sims[qi]), 6), "nn_class": cls,
        })
    return result, rows, analysis.tally(corpus.query_labels, classes)


def load_songs(dataset: str, root, split: str | None = None) -> tuple[list[Song], str, list[tuple[str, str]]]:
    """Songs of `dataset` at `root` restricted to `split` (None: the dataset's evaluation split).

    Returns (songs, split, problems)."""
    from ..data.datasets import load_dataset

    problems: list[tuple[str, str]] = []
    split = split or default_split(dataset)
    songs = load_dataset(dataset, root, None if split == "all" else split, problems)
    if not songs:
        raise DataError(f"{root}: no songs of {dataset} in split {split!r}")
    return songs, split, problems


def _checkpoint_name(checkpoint: str | None, model_id: str) -> str:
    """A readable run name: the run folder of `run/checkpoints/last.ckpt`, else the checkpoint's file stem."""
    if not checkpoint:
        return model_id
    p = Path(checkpoint)
    if p.parent.name == "checkpoints" and p.parent.parent.name:
        return p.parent.parent.name
    return p.stem if p.suffix else p.name


def check_out_dir(out_dir: Path, identity: dict, overwrite: bool) -> None:
    """Refuse to write over results of another checkpoint / dataset / split / label level unless `overwrite`."""
    present = [f for f in OUTPUT_FILES if (out_dir / f).exists()]
    if not present or overwrite:
        return
    try:
        old = upgrade_record(json.loads((out_dir / "metrics.json").read_text()))
    except (OSError, json.JSONDecodeError):
        old = None
    if old is not None and all(old.get(k) == v for k, v in identity.items()):
        return  # a re-run of the same evaluation
    what = "results of another evaluation" if old is not None else f"files {', '.join(present)}"
    detail = ""
    if old is not None:
        diffs = [f"{k}={old.get(k)!r} (now {v!r})" for k, v in identity.items() if old.get(k) != v]
        detail = f" ({'; '.join(diffs)})"
    raise StemJepaError(f"{out_dir}: holds {what}{detail}; pass --overwrite (overwrite=True) or choose another --out")


def _write_rankings(path: Path, rows: list[dict]) -> None:
    atomic_write_csv(path, list(rows[0]), rows)


@dataclass(frozen=True)
class RetrievalRun:
    """How an evaluation runs, beside what it measures (RetrievalProtocol): the embedding cache (`cache_dir`, default
    OUT_DIR/cache; False: none), `overwrite` of another evaluation's files, the `name` in the report (default: the
    checkpoint's), the `device` of a model loaded from a file, a progress bar, and `strict` (refuse training songs)."""

    cache_dir: str | Path | bool | None = None
    overwrite: bool = False
    name: str | None = None
    device: str | None = None
    progress: bool = True
    strict: bool = False


def evaluate_retrieval(model_or_ckpt, songs: list[Song], protocol: RetrievalProtocol | None = None, out_dir=None, *,
                       run: RetrievalRun | None = None, **run_values) -> dict:
    """Run the Table I benchmark of a model (or model file) on `songs` under `protocol` (default: RetrievalProtocol())
    and return metrics.json's content; `run` (or its fields as keywords: cache_dir, overwrite, name, device, progress,
    strict): how it runs.

    With `out_dir`, writes metrics.json, rankings.csv, analysis.csv, fig2.png and report.md there (refusing a folder that
    holds another evaluation unless `overwrite`), and caches the embeddings. Songs the model was trained on are reported
    with a warning; `strict` refuses them.
    """
    start = time.perf_counter()
    run = replace(run or RetrievalRun(), **run_values)
    if not songs:
        raise DataError("no songs to evaluate")
    model, checkpoint = _resolve_model(model_or_ckpt, run.device)
    given = protocol or RetrievalProtocol()
    protocol = given.for_model(model)
    model_id = str(model.model_id)
    seen = analysis.training_labels(model)  # before queries add new labels to the model's text table
    overlap = training_overlap(model, songs, protocol.dataset, run.strict)
    out = None if out_dir is None else Path(out_dir)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        check_out_dir(out, protocol.identity(model_id), run.overwrite)
    cache_dir = out / "cache" if run.cache_dir is None and out is not None else run.cache_dir
    # the references depend on the encoder that made them (the queries do not, but are cheap next to them)
    cache = EmbeddingCache(cache_dir or None, model_id, protocol.dataset,
                           protocol.split if protocol.reference_encoder == "target" else f"{protocol.split}-context-ref")
    corpus = encode_corpus(model, songs, protocol.label_level, protocol.labels, cache, protocol.silence_db,
                           run.progress, protocol.reference_encoder)
    result, rows, tally = score_corpus(corpus, protocol.k64_draws, protocol.seed, distance=protocol.distance)
    record = _record(model, protocol, given.distance is None or given.distance == model.distance, result, corpus,
                     overlap, run.name or _checkpoint_name(checkpoint, model_id), checkpoint)
    record["seconds"] = round(time.perf_counter() - start, 3)
    if record["pool_diagnostics"]["collapsed"]:
        p = record["pool_diagnostics"]
        log.warning("COLLAPSED MODEL: the %d pool embeddings barely differ (median pairwise cosine %.3f, spread %.3f, RankMe "
                    "%.1f); retrieval scores of this checkpoint are at chance level whatever the training loss says",
                    p["n"], p["median_cosine"], p["spread"], p["rankme"])
    if out is not None:
        _write_outputs(out, record, rows, tally, seen, run.overwrite)
        record["seconds"] = round(time.perf_counter() - start, 3)
        atomic_write_text(out / "metrics.json", json.dumps(record, indent=2) + "\n")
    return record


def _resolve_model(model_or_ckpt, device):
    """(model, the file it came from or None) for a model or a path / built-in name."""
    if isinstance(model_or_ckpt, (str, os.PathLike)):
        from ..models import load_model

        return load_model(str(model_or_ckpt), device=device), str(model_or_ckpt)
    return model_or_ckpt, model_or_ckpt.source.file


def _record(model, protocol: RetrievalProtocol, models_own: bool, result: dict, corpus: Corpus, overlap: dict, name: str,
            checkpoint: str | None) -> dict:
    """metrics.json's content: the figures, their chance, the protocol, what was excluded or skipped and why."""
    return {
        **{k: result[k] for k in metrics.METRIC_KEYS + ("top1_k64", "n_queries", "n_pool")},
        "chance": metrics.chance_metrics(result["n_pool"]),
        "distance": protocol.distance,
        "distance_reason": DISTANCE_REASON[protocol.distance] + (
            "; the ranking this model was trained for" if models_own else f"; not the model's own ranking ({model.distance})"),
        "reference_encoder": protocol.reference_encoder if model.has_predictor else "encoder",  # phase 1: one encoder
        "pool_diagnostics": pool_diagnostics(corpus.pool),
        "training_overlap": overlap,
        "k64_candidates": result["k64_candidates"],
        "k64_draws": protocol.k64_draws,
        "seed": protocol.seed,
        "silence_db": protocol.silence_db,
        "name": name,
        "checkpoint": checkpoint,
        "model_id": str(model.model_id),
        "has_predictor": bool(model.has_predictor),
        "dataset": protocol.dataset,
        "split": protocol.split,
        "label_level": protocol.label_level,
        "label_map": protocol.labels,
        "n_songs": corpus.n_songs,
        "n_silent_excluded": corpus.n_silent_excluded,
        "n_silent_mix_excluded": corpus.n_silent_mix_excluded,
        "n_stems_unreadable": corpus.n_unreadable,
        "n_songs_from_cache": corpus.n_cached_songs,
        "skipped": [{"song": s, "reason": r} for s, r in corpus.skipped],
        "skipped_stems": [{"song": s, "stem": t, "reason": r} for s, t, r in corpus.skipped_stems],
        "tie_rule": "pessimistic: pool items as similar as the target rank before it",
    }


def _write_outputs(out: Path, record: dict, rows: list[dict], tally, seen, overwrite: bool) -> None:
    """rankings.csv, analysis.csv with Fig. 2, report.md (metrics.json is written last, by the caller)."""
    from .report import write_report

    if overwrite:
        for f in OUTPUT_FILES:
            (out / f).unlink(missing_ok=True)
    _write_rankings(out / "rankings.csv", rows)
    title = (f"{record['name']} on {record['dataset']} ({record['split']}), {record['label_level']} labels: nearest "
             "neighbour per label")
    analysis.write_analysis(tally, out, title, seen, record["dataset"])
    write_report(record, out / "report.md")


def pool_diagnostics(pool: list[np.ndarray]) -> dict:
    """Collapse diagnostics of the reference pool (`stemjepa.models.diagnostics`) and the verdict, as JSON-able values."""
    from ..models.diagnostics import embedding_stats, is_collapsed

    if len(pool) < 2:
        return {"n": len(pool), "collapsed": None}
    stats = embedding_stats(np.stack(pool))
    return {**{k: (round(v, 6) if isinstance(v, float) else v) for k, v in stats.as_dict().items()},
            "collapsed": bool(is_collapsed(stats))}


def training_overlap(model, songs: list[Song], dataset: str, strict: bool = False) -> dict:
    """Compare the evaluated songs with the songs the checkpoint records as training songs; warn loudly, or refuse if
    `strict`. Returns metrics.json's "training_overlap" entry."""
    from ..data.provenance import overlap

    shared = overlap(songs, dataset, model.source.training_songs)
    if shared is None:
        if strict:
            raise StemJepaError("--strict: the checkpoint does not record its training songs, so an overlap with the "
                                "evaluated songs cannot be ruled out")
        return {"checked": False, "n_songs": None, "note": "the checkpoint records no training songs"}
    out = {"checked": True, "n_songs": len(shared), "of": len(songs), "examples": shared[:10]}
    if shared:
        msg = (f"{len(shared)} of the {len(songs)} evaluated songs were TRAINING songs of this checkpoint "
               f"(e.g. {', '.join(shared[:3])}): the scores are not zero-shot and not comparable with Table I")
        if strict:
            raise StemJepaError(f"--strict: {msg}")
        log.warning("WARNING: %s", msg)
    return out


def evaluate_checkpoints(checkpoints: dict[str, str], songs: list[Song], out_root, protocol: RetrievalProtocol | None = None,
                         *, extra=("top1_k64", "seconds"), overwrite: bool = False, **kwargs) -> str:
    """Evaluate several checkpoints (name -> path) on the same songs under the same protocol, each into OUT_ROOT/<name>,
    and return the side-by-side Table-I Markdown (e.g. the five ablations of Table I trained on the same data)."""
    from .report import compare_table

    out_root = Path(out_root)
    dirs = []
    for name, ckpt in checkpoints.items():
        run_dir = out_root / name
        evaluate_retrieval(ckpt, songs, protocol, run_dir, name=name, overwrite=overwrite, **kwargs)
        dirs.append(run_dir)
    return compare_table(dirs, extra=extra)
