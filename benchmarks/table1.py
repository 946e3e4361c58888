"""Table I end to end: train the five rows (phase 1 once, the four phase-2 rows), evaluate each on MUSDB18 and MoisesDB (fine
and coarse) with the paper's protocol, and print the table beside the paper's numbers.

    python benchmarks/table1.py --train CACHE_OR_FOLDER --musdb /data/musdb18 --moisesdb /data/moisesdb --out runs/table1 \
        [--size paper|tiny] [--clap /models/music_audioset_epoch_15_esc_90.14.pt] [--devices 8] [--set KEY=VALUE ...]

Every step is resumable: a row whose last checkpoint reached its step count is not trained again (an interrupted one is
resumed), and an evaluation whose checkpoint has not changed since is not redone (OUT/steps.json). The training source must
not contain MUSDB18 or MoisesDB songs (the paper trains on other data and evaluates zero-shot on whole datasets); an overlap
is reported by every evaluation, and refused with --strict. Results: OUT/table1.md and OUT/table1.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from stemjepa.evaluation.metrics import METRIC_COLUMNS  # noqa: E402
from stemjepa.evaluation.metrics import METRIC_KEYS as METRICS
from stemjepa.fsutil import atomic_write_text  # noqa: E402

# (key, row name in Table I, paper config, tiny config, initialised from row)
ROWS = [
    ("contrastive_baseline", "Contrastive baseline", "contrastive_baseline", "tiny_contrastive_baseline", None),
    ("stemjepa", "Stem-JEPA", "stemjepa", "tiny_stemjepa", None),
    ("clap_conditioning", "+CLAP conditioning", "clap_conditioning", "tiny_text_conditioning", None),
    ("contrastive_pretraining", "+contrastive pretraining", "contrastive_pretraining", "tiny_contrastive_pretraining",
     "contrastive_baseline"),
    ("film", "+FiLM conditioning", "film", "tiny", "contrastive_baseline"),
]
BENCHMARKS = [("musdb", "fine", "MUSDB18"), ("moisesdb", "fine", "MoisesDB (fine conditioning)"),
              ("moisesdb", "coarse", "MoisesDB (coarse conditioning)")]
# Table I of the paper (percent), in the order of METRICS: R@1, R@5, R@10, normalised mean rank, median rank
PAPER = {
    "contrastive_baseline": [(2.2, 72.5, 86.0, 1.5, 0.7), (2.7, 31.2, 43.3, 7.7, 0.6), (2.7, 31.2, 43.3, 7.7, 0.6)],
    "stemjepa": [(33.0, 63.2, 76.2, 2.0, 0.5), (9.9, 24.1, 31.6, 11.7, 1.7), (9.9, 24.1, 31.6, 11.7, 1.7)],
    "clap_conditioning": [(33.5, 63.0, 74.5, 2.5, 0.5), (19.3, 35.8, 44.0, 7.2, 0.7), (18.9, 37.8, 46.9, 7.3, 0.5)],
    "contrastive_pretraining": [(32.2, 91.0, 96.2, 0.6, 0.3), (12.5, 45.6, 59.3, 1.9, 0.3), (11.1, 44.5, 58.1, 2.1, 0.3)],
    "film": [(38.8, 89.7, 95.0, 0.7, 0.3), (22.0, 49.5, 57.8, 4.5, 0.2), (19.2, 49.5, 60.0, 3.8, 0.2)],
}


def _stamp(path: Path) -> list:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


class Steps:
    """OUT/steps.json: which evaluations are done, and from which checkpoint file (path, size, mtime)."""

    def __init__(self, path: Path):
        self.path = path
        self.done = json.loads(path.read_text()) if path.is_file() else {}

    def is_done(self, key: str, ckpt: Path, out_dir: Path) -> bool:
        return self.done.get(key) == _stamp(ckpt) and (out_dir / "metrics.json").is_file()

    def mark(self, key: str, ckpt: Path) -> None:
        self.done[key] = _stamp(ckpt)
        atomic_write_text(self.path, json.dumps(self.done, indent=1))


def train_row(key: str, config: str, args, overrides: list[str], init: Path | None) -> Path:
    """Train one row, or resume it, or reuse it when it finished with the same settings (stemjepa.training.stage)."""
    from stemjepa.training.stage import train_stage

    run = Path(args.out) / "runs" / key
    stage = train_stage(run, config, overrides, Path(args.train), init, device=args.device, progress=not args.quiet,
                        log=lambda msg: print(f"[{key}] {msg}", flush=True), devices=args.devices)
    return stage.checkpoint


def musdb_layout(root: Path) -> str:
    """musdb18 (.stem.mp4 files) or musdb18hq (one folder of wavs per track)."""
    return "musdb18" if any(root.glob("*/*.stem.mp4")) else "musdb18hq"


def evaluate_row(key: str, name: str, ckpt: Path, pools: dict, args, steps: Steps) -> dict:
    from stemjepa.evaluation.retrieval import RetrievalProtocol, evaluate_retrieval

    results = {}
    for bench, cond, _ in BENCHMARKS:
        if bench not in pools:
            continue
        dataset, split, songs = pools[bench]
        out_dir = Path(args.out) / "eval" / f"{key}-{bench}-{cond}"
        step = f"{key}/{bench}/{cond}"
        if steps.is_done(step, ckpt, out_dir):
            results[(bench, cond)] = json.loads((out_dir / "metrics.json").read_text())
            continue
        t0 = time.time()
        protocol = RetrievalProtocol(dataset=dataset, split=split, label_level=cond, distance=args.distance)
        results[(bench, cond)] = evaluate_retrieval(
            str(ckpt), songs, protocol, out_dir, name=name, overwrite=True, cache_dir=Path(args.out) / "eval" / "cache",
            strict=args.strict, device=None if args.device == "auto" else args.device, progress=not args.quiet)
        steps.mark(step, ckpt)
        print(f"[{key}] {bench} {cond}: R@1 {results[(bench, cond)]['R@1']:.1f} in {time.time() - t0:.0f} s", flush=True)
    return results


def side_by_side(results: dict, pools: dict) -> str:
    """One Markdown table per benchmark: each cell "ours (paper)", the pool's median pairwise cosine per row (with a flag for a
    collapsed model), a chance row and the protocol under it."""
    from stemjepa.evaluation.report import fmt, protocol_note

    blocks = []
    for bi, (bench, cond, title) in enumerate(BENCHMARKS):
        if bench not in pools:
            continue
        lines = [f"### {title}: this run (paper)", "",
                 "| model | " + " | ".join(f"norm. {h}" if "rank" in h else h for _, h in METRIC_COLUMNS)
                 + " | pool median cosine |",
                 "|---|" + "---|" * (len(METRIC_COLUMNS) + 1)]
        first = None
        for key, name, *_ in ROWS:
            m = results.get(key, {}).get((bench, cond))
            if m is None:
                continue
            first = first or m
            cells = [f"{fmt(m[k])} ({fmt(p)})" for k, p in zip(METRICS, PAPER[key][bi])]
            d = m.get("pool_diagnostics") or {}
            cells.append(f"{d['median_cosine']:.3f}{' COLLAPSED' if d.get('collapsed') else ''}" if "median_cosine" in d else "-")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if first is None:
            continue
        chance = first["chance"]
        lines.append("| chance | " + " | ".join(fmt(chance[k]) for k in METRICS) + " | |")
        shown = [m for key, *_ in ROWS if (m := results.get(key, {}).get((bench, cond)))]
        phase2 = next((m for m in shown if m.get("reference_encoder") != "encoder"), first)
        lines += ["", f"Protocol: {protocol_note(phase2, diagnostics=False)} (the contrastive baseline: its only encoder).", ""]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True, help="training data: a cache from `stemjepa prepare` or a multitrack folder")
    ap.add_argument("--musdb", default=None, help="MUSDB18 or MUSDB18-HQ root (all 150 tracks are evaluated)")
    ap.add_argument("--moisesdb", default=None, help="MoisesDB root (all 240 tracks are evaluated)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", choices=("paper", "tiny"), default="paper", help="the paper's configs or the tiny CPU ones")
    ap.add_argument("--clap", default=None, help="CLAP weights for the text rows (model.conditioning.clap_model), e.g. the "
                    "paper's music_audioset_epoch_15_esc_90.14.pt")
    ap.add_argument("--steps", type=int, default=None, help="training steps per row (default: the config's, 300k for the paper)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every row")
    ap.add_argument("--rows", nargs="+", default=None, choices=[r[0] for r in ROWS], help="only these rows (phase 1 is "
                    "trained too when a row starts from it)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--distance", choices=("l2", "cosine"), default="l2")
    ap.add_argument("--limit", type=int, default=None, help="evaluate only the first N songs of each dataset (smoke tests)")
    ap.add_argument("--strict", action="store_true", help="refuse to evaluate songs the checkpoints were trained on")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)

    from stemjepa.evaluation.retrieval import load_songs

    if not (args.musdb or args.moisesdb):
        ap.error("give --musdb and/or --moisesdb")
    pools = {}
    if args.musdb:
        dataset = musdb_layout(Path(args.musdb))
        songs, split, _ = load_songs(dataset, args.musdb)
        pools["musdb"] = (dataset, split, songs[: args.limit] if args.limit else songs)
    if args.moisesdb:
        songs, split, _ = load_songs("moisesdb", args.moisesdb)
        pools["moisesdb"] = ("moisesdb", split, songs[: args.limit] if args.limit else songs)
    for bench, (dataset, split, songs) in pools.items():
        print(f"pool {bench}: {dataset}, split {split}, {len(songs)} songs", flush=True)

    Path(args.out).mkdir(parents=True, exist_ok=True)
    steps = Steps(Path(args.out) / "steps.json")
    wanted = set(args.rows or [r[0] for r in ROWS])
    wanted |= {r[4] for r in ROWS if r[0] in wanted and r[4]}
    ckpts, results, timings = {}, {}, {}
    for key, name, paper_cfg, tiny_cfg, init in ROWS:
        if key not in wanted:
            continue
        overrides = list(args.set) + ([f"max_steps={args.steps}"] if args.steps else [])
        text_row = key in ("clap_conditioning", "contrastive_pretraining", "film")
        if args.clap and text_row:
            overrides.append(f"model.conditioning.clap_model={args.clap}")
        t0 = time.time()
        ckpts[key] = train_row(key, paper_cfg if args.size == "paper" else tiny_cfg, args, overrides, ckpts.get(init))
        t1 = time.time()
        results[key] = evaluate_row(key, name, ckpts[key], pools, args, steps)
        timings[key] = {"train_s": round(t1 - t0, 1), "eval_s": round(time.time() - t1, 1)}

    table = side_by_side(results, pools)
    weights = args.clap or ("the configs' CLAP model" if args.size == "paper" else "MiniLM (tiny configs)")
    header = (f"# Table I reproduction ({args.size} configs, training data {args.train}; text rows conditioned on {weights})\n\n"
              "Each cell: this run (the paper's number), percent.\n\n")
    print(table, end="")
    (Path(args.out) / "table1.md").write_text(header + table)
    dump = {"size": args.size, "train": args.train, "text_weights": weights, "timings": timings,
            "rows": {key: {f"{b}/{c}": {**{k: m[k] for k in METRICS}, "paper": dict(zip(METRICS, PAPER[key][bi])),
                                        "n_pool": m["n_pool"], "chance": m["chance"], "distance": m["distance"],
                                        "collapsed": (m.get("pool_diagnostics") or {}).get("collapsed"),
                                        "training_overlap": (m.get("training_overlap") or {}).get("n_songs")}
                           for bi, (b, c, _) in enumerate(BENCHMARKS) if (m := res.get((b, c)))}
                     for key, res in results.items()}}
    (Path(args.out) / "table1.json").write_text(json.dumps(dump, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
