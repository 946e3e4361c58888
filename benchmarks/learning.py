"""Does the model learn? Held-out retrieval next to chance for the three arms of the training recipe, over several seeds.

Arms (all trained on the same built-in synthetic corpus, evaluated on held-out songs that contain instruments never heard
in training, fine labels, the Table I protocol):
  a  the contrastive baseline (phase 1; the mix embedding is the query),
  b  the full model (phase 2, FiLM on text embeddings) from scratch,
  c  the full model initialised from the phase-1 encoder of arm a (the paper's recipe).
For each run: R@1/R@5/R@10 and median normalised rank with chance, the training time, the collapse diagnostics of the last
training steps (in-batch top-1, spread, RankMe) and of the evaluation pool (spread, RankMe, median pairwise cosine).
Mean and standard deviation over the seeds are printed as Markdown and written to OUT/learning.md and OUT/learning.json.

Usage:
  python benchmarks/learning.py --out runs/learning            # renders the corpus first if --train/--test are not given
  python benchmarks/learning.py --train DATA/train --test DATA/test --out runs/learning --seeds 0 1 2
  python benchmarks/learning.py ... --arms a --p1 optim.lr=1e-3   # one arm, with config overrides (recipe experiments)
Runs already finished in OUT are reused (delete OUT/<arm>-seed<N> to redo one).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

HELD_OUT = ("alto saxophone", "violin", "rhodes electric piano")
ARMS = {"a": "contrastive baseline", "b": "full model from scratch", "c": "full model from phase 1"}
METRICS = ("R@1", "R@5", "R@10", "norm_rank_median")


def run_arm(arm: str, seed: int, args, p1_ckpt: Path | None) -> tuple[Path, dict]:
    from stemjepa.data.multitrack import read_folder
    from stemjepa.evaluation.retrieval import RetrievalProtocol, evaluate_retrieval
    from stemjepa.training.rundir import last_logged
    from stemjepa.training.stage import train_stage

    run = Path(args.out) / f"{arm}-seed{seed}"
    result_file = run / "result.json"
    config, steps, overrides = ((args.phase1_config, args.phase1_steps, args.p1) if arm == "a"
                                else (args.phase2_config, args.phase2_steps, args.p2))
    stage = train_stage(run, config, [f"max_steps={steps}", f"seed={seed}", "data.num_workers=1", *overrides],
                        Path(args.train), p1_ckpt if arm == "c" else None, device="cpu", log=lambda msg: None)
    last, train_s = stage.checkpoint, stage.seconds
    if stage.reused and result_file.is_file():  # evaluated with these very settings
        result = json.loads(result_file.read_text())
        if result.get("stage") == stage.record["digest"]:
            return last, result
    songs, _ = read_folder(args.test)
    m = evaluate_retrieval(str(last), songs, RetrievalProtocol(split="held-out", distance="cosine"), run / "eval",
                           cache_dir=run / "cache", overwrite=True, progress=False)
    paper = evaluate_retrieval(str(last), songs, RetrievalProtocol(split="held-out", distance="l2"), run / "eval-l2",
                               cache_dir=run / "cache", overwrite=True, progress=False)
    pool = m["pool_diagnostics"]
    result = {"arm": arm, "seed": seed, "steps": steps, "train_seconds": round(train_s, 1), "n_pool": m["n_pool"],
              "distance": m["distance"], **{k: round(m[k], 2) for k in METRICS},
              **{f"l2 {k}": round(paper[k], 2) for k in METRICS},
              **{f"chance {k}": round(m["chance"][k], 2) for k in METRICS},
              **{f"train {k}": round(v, 3) for k, v in last_logged(run).items()},
              "pool_spread": round(pool["spread"], 3), "pool_rankme": round(pool["rankme"], 1),
              "pool_median_cosine": round(pool["median_cosine"], 3), "pool_collapsed": pool["collapsed"],
              "overrides": overrides, "stage": stage.record["digest"]}
    result_file.write_text(json.dumps(result, indent=1))
    return last, result


def render_corpus(out: Path, train_songs: int, test_songs: int, seconds: float) -> tuple[str, str]:
    from stemjepa.data.synth import synthesize_corpus

    train, test = out / "data" / "train", out / "data" / "test"
    synthesize_corpus(train, train_songs, seconds, seed=0, jobs=2, exclude=HELD_OUT, progress=True)
    synthesize_corpus(test, test_songs, 16.0, seed=1, jobs=2, require=HELD_OUT, progress=True)
    return str(train), str(test)


def summary(results: list[dict]) -> str:
    cols = ["R@1", "R@5", "R@10", "norm_rank_median", "l2 R@1", "l2 R@10", "train_seconds", "train top1", "train rankme",
            "pool_median_cosine", "pool_rankme"]
    head = "| arm | seeds | " + " | ".join(cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    for arm, name in ARMS.items():
        rs = [r for r in results if r["arm"] == arm]
        if not rs:
            continue
        cells = []
        for c in cols:
            vals = [r[c] for r in rs if c in r]
            if not vals:
                cells.append("")
            else:
                digits = 2 if c in ("train top1", "pool_median_cosine") else 1
                sd = f" ± {statistics.stdev(vals):.{digits}f}" if len(vals) > 1 else ""
                cells.append(f"{statistics.mean(vals):.{digits}f}{sd}")
        lines.append(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")
    r0 = results[0]
    chance = ", ".join(f"{k} {r0[f'chance {k}']:.1f}" for k in METRICS if f"chance {k}" in r0)
    return "\n".join(lines) + (f"\n\nChance (pool of {r0['n_pool']} stems, ranked by {r0['distance']} distance): {chance} "
                                "(percent).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", help="training corpus (a multitrack folder or cache); rendered into OUT/data if omitted")
    ap.add_argument("--test", help="held-out songs (a multitrack folder); rendered into OUT/data if omitted")
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-songs", type=int, default=256)
    ap.add_argument("--test-songs", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--phase1-config", default="tiny_phase1")
    ap.add_argument("--phase2-config", default="tiny")
    ap.add_argument("--phase1-steps", type=int, default=None, help="default: the config's max_steps")
    ap.add_argument("--phase2-steps", type=int, default=None, help="default: the config's max_steps")
    ap.add_argument("--p1", nargs="*", default=[], help="overrides for phase 1 (key.sub=value)")
    ap.add_argument("--p2", nargs="*", default=[], help="overrides for phase 2 (key.sub=value)")
    args = ap.parse_args()

    from stemjepa.config import load_config

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (args.train and args.test):
        args.train, args.test = render_corpus(out, args.train_songs, args.test_songs, args.seconds)
    args.phase1_steps = args.phase1_steps or load_config(args.phase1_config).max_steps
    args.phase2_steps = args.phase2_steps or load_config(args.phase2_config).max_steps
    results = []
    for seed in args.seeds:
        p1 = None
        for arm in args.arms if "c" not in args.arms or "a" in args.arms else ["a", *args.arms]:
            ckpt, r = run_arm(arm, seed, args, p1)
            if arm == "a":
                p1 = ckpt
            if arm in args.arms:
                results.append(r)
                print(json.dumps(r), flush=True)
    table = summary(results)
    print(table)
    (out / "learning.md").write_text(table + "\n")
    (out / "learning.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
