"""Compatibility ranking on held-out synthetic songs: does rank="compat" (the model's z lowered by a tempo/key clash with
the mix) find the missing stem more often than the model's own order?

Songs rendered by `stemjepa synth` with a seed no built-in model was trained on; every stem of every song is indexed
with the built-in model (`build_index`, so each stem's tempo and key are *estimated* by stemjepa.analysis at index
time); each stem is then a query: the mix of its song's other stems, its fine label as the instrument text, the mix's
tempo and key estimated by `StemIndex.analyse_mix` (never the metadata). R@1 / R@10 are reported for rank="model" and
rank="compat" (and a sweep of COMPAT_WEIGHT), next to chance; also the z and percentile that right answers score (the
thresholds of `stemjepa query`'s legend), how often the estimated tempo/key of the mixes match the metadata (context
for the result), and the index's files/s with and without the analysis.

    python benchmarks/compat_ranking.py --out /tmp/compat --songs 40 --seconds 16 --seed 9100 --production full
    python benchmarks/compat_ranking.py --out /tmp/compat --songs-dir DIR     # songs rendered elsewhere
Everything lives under --out (songs/, idx/, results.json); a re-run reuses the renders and the index.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

WEIGHTS = (0.5, 1.0, 1.5, 2.0, 3.0, 5.0)


def render(out: Path, songs: int, seconds: float, seed: int, production: str, jobs: int) -> Path:
    from stemjepa.data.synth import synthesize_corpus

    folder = out / f"songs-seed{seed}-{seconds:g}s-{production}"
    synthesize_corpus(folder, songs, seconds=seconds, seed=seed, jobs=jobs, progress=True,
                      **({"production": production} if production != "none" else {}))
    return folder


def build(songs_dir: Path, out: Path, model, analysis: bool) -> dict:
    """Index the songs' stems; returns files/s. analysis=False measures the index as it was before tempo and key."""
    import stemjepa.search.build as build_module

    real = build_module.analyse_wave
    if not analysis:
        build_module.analyse_wave = lambda wave, sr: (None, None)
    try:
        started = time.perf_counter()
        summary = build_module.build_index(songs_dir, out, model, model_ref="default", progress=False)
        seconds = time.perf_counter() - started
    finally:
        build_module.analyse_wave = real
    n = summary.added + summary.updated
    return {"files": summary.total, "indexed_now": n, "seconds": round(seconds, 2),
            "files_per_s": round(n / seconds, 2) if n else None, "unanalysed": len(summary.unanalysed)}


def mirex_key(text: str | None) -> str | None:
    from stemjepa.analysis.compat import key_name

    return key_name(text) if text else None


def tempo_ok(est: float | None, truth: float, octaves: bool) -> bool:
    if est is None:
        return False
    factors = (1.0, 2.0, 0.5, 3.0, 1 / 3) if octaves else (1.0,)
    return any(abs(est - truth * f) <= 0.04 * truth * f for f in factors)


def recall(ranks: list[int], k: int) -> float:
    return 100.0 * float(np.mean([r <= k for r in ranks])) if ranks else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--songs-dir", type=Path, help="songs already rendered (else rendered under --out)")
    ap.add_argument("--songs", type=int, default=40)
    ap.add_argument("--seconds", type=float, default=16.0)
    ap.add_argument("--seed", type=int, default=9100, help="corpus seed (the built-in models trained on 1000-1004)")
    ap.add_argument("--production", default="full", choices=["none", "full"])
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default=None)
    ap.add_argument("--no-speed", action="store_true", help="skip the index without analysis (files/s before)")
    args = ap.parse_args()

    from stemjepa.analysis.compat import compatibility
    from stemjepa.data.multitrack import load_song, read_folder
    from stemjepa.models import load_model
    from stemjepa.search import StemIndex
    from stemjepa.search import scores as scores_module

    args.out.mkdir(parents=True, exist_ok=True)
    songs_dir = args.songs_dir or render(args.out, args.songs, args.seconds, args.seed, args.production, args.jobs)
    model = load_model(args.model, device=args.device)
    from stemjepa.analysis import ANALYSIS_VERSION

    result: dict = {"model": args.model, "model_name": model.source.name, "model_id": model.model_id,
                    "analysis_version": ANALYSIS_VERSION, "songs_dir": str(songs_dir)}
    idx = args.out / f"idx-{songs_dir.name}"
    result["index_with_analysis"] = build(songs_dir, idx, model, analysis=True)
    if not args.no_speed:
        result["index_without_analysis"] = build(songs_dir, args.out / f"idx-noanalysis-{time.time_ns()}", model,
                                                 analysis=False)
    songs, problems = read_folder(songs_dir)
    queries = []  # (mix wave, fine label, target path, song meta)
    truth = {}  # path -> (tempo, key) from the metadata: only for the upper-bound row, never for the measured ranking
    for song in songs:
        for stem in song.stems:
            truth[str(Path(stem.path).resolve())] = (float(song.meta["tempo"]),
                                                    None if stem.meta.get("is_drum") else mirex_key(song.meta.get("key")))
        loaded = load_song(song, model.sample_rate)
        for i, stem in enumerate(loaded.stems):
            if len(loaded.stems) < 2:
                continue
            mix = np.delete(loaded.audio, i, axis=0).sum(0)
            if float(np.sqrt(np.mean(mix ** 2))) < 1e-3:
                continue
            queries.append((mix.astype(np.float32), stem.fine, str(Path(stem.path).resolve()), song.meta))
    print(f"{len(songs)} songs, {len(queries)} queries", file=sys.stderr)

    with StemIndex.open(idx, model=model) as index:
        n = len(index)
        t0 = time.perf_counter()
        analyses = [index.analyse_mix(q[0], model.sample_rate) for q in queries]
        mix_analysis_s = (time.perf_counter() - t0) / max(1, len(queries))
        vectors = []
        for start in range(0, len(queries), 32):
            part = queries[start:start + 32]
            embs = model.query_many([q[0] for q in part], [q[1] for q in part])
            vectors += [np.asarray(e.vector, np.float32) for e in embs]
        ranks: dict[str, list[int]] = {"model": []}
        right_z, right_pct, wrong_top_z = [], [], []
        for w in WEIGHTS:
            ranks[f"compat w={w:g}"] = []
        ranks["compat, metadata tempo/key (upper bound)"] = []
        for (_mix, _label, target, meta), vec, mix_a in zip(queries, vectors, analyses):
            res = index.search_vectors(vec[None], k=n, mix_analyses=[mix_a])[0]
            order = [r.path for r in res]
            r_model = order.index(target) + 1
            ranks["model"].append(r_model)
            hit = res[r_model - 1]
            right_z.append(hit.z)
            right_pct.append(hit.percentile)
            if r_model > 1:
                wrong_top_z.append(res[0].z)
            mix_truth = SimpleNamespace(bpm=float(meta["tempo"]), key=mirex_key(meta.get("key")))
            oracle = sorted(res, key=lambda r: -scores_module.compat_score(
                r.z, compatibility(mix_truth, SimpleNamespace(bpm=truth[r.path][0], key=truth[r.path][1]))))
            ranks["compat, metadata tempo/key (upper bound)"].append([r.path for r in oracle].index(target) + 1)
            for w in WEIGHTS:
                scores_module.COMPAT_WEIGHT = w
                res_c = index.search_vectors(vec[None], k=n, rank="compat", mix_analyses=[mix_a])[0]
                ranks[f"compat w={w:g}"].append([r.path for r in res_c].index(target) + 1)
            scores_module.COMPAT_WEIGHT = 1.5
        ranks["compat"] = ranks["compat w=1.5"]
        # tempo / key of the mixes against the metadata (MIREX major/minor of the synth's mode), for context
        tempo1 = [tempo_ok(a.bpm, float(q[3]["tempo"]), False) for q, a in zip(queries, analyses)]
        tempo2 = [tempo_ok(a.bpm, float(q[3]["tempo"]), True) for q, a in zip(queries, analyses)]
        key_same = [a.key is not None and a.key == mirex_key(q[3].get("key")) for q, a in zip(queries, analyses)]
    by_rank = {name: {"R@1": round(recall(r, 1), 1), "R@10": round(recall(r, 10), 1),
                      "median_rank": float(np.median(r))} for name, r in ranks.items()}
    right_at_1 = [z for z, r in zip(right_z, ranks["model"]) if r == 1]
    result.update({
        "pool": n, "queries": len(queries), "problems": problems,
        "chance": {"R@1": round(100 / n, 2), "R@10": round(100 * min(10, n) / n, 2)},
        "ranking": by_rank,
        "z_of_right_answers_at_rank_1": {q: round(float(np.percentile(right_at_1, q)), 2) for q in (10, 25, 50, 75, 90)}
        if right_at_1 else None,
        "z_of_right_answers_any_rank": {q: round(float(np.percentile(right_z, q)), 2) for q in (10, 50, 90)},
        "percentile_of_right_answers": {q: round(float(np.percentile(right_pct, q)), 1) for q in (10, 50, 90)},
        "z_of_wrong_first_answers": {q: round(float(np.percentile(wrong_top_z, q)), 2) for q in (10, 50, 90)}
        if wrong_top_z else None,
        "mix_analysis": {"seconds_per_mix": round(mix_analysis_s, 3), "tempo_acc1": round(100 * np.mean(tempo1), 1),
                         "tempo_acc2": round(100 * np.mean(tempo2), 1), "key_same": round(100 * np.mean(key_same), 1)},
    })
    (args.out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result, indent=1, default=str))
    print("\n| rank | R@1 | R@10 | median rank |\n|---|---|---|---|")
    for name, m in by_rank.items():
        print(f"| {name} | {m['R@1']} | {m['R@10']} | {m['median_rank']:g} |")
    print(f"| chance | {result['chance']['R@1']} | {result['chance']['R@10']} | {math.ceil(n / 2)} |")


if __name__ == "__main__":
    main()
