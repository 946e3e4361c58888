"""Table I at the tiny size: the five ablation rows trained on the same synthetic corpus with the same number of steps,
evaluated on held-out synthetic songs (fine and coarse labels). Prints the Markdown table and the time each row took.

Usage: python benchmarks/table1_tiny.py --train DATA/train --test DATA/test --out runs/table1 [--steps 300]
(the demo's corpus works: demo_out/data/train and demo_out/data/test).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

ROWS = [  # (row name, config, initialised from row)
    ("contrastive baseline", "tiny_contrastive_baseline", None),
    ("Stem-JEPA", "tiny_stemjepa", None),
    ("+ text conditioning", "tiny_text_conditioning", None),
    ("+ contrastive pretraining", "tiny_contrastive_pretraining", "contrastive baseline"),
    ("+ FiLM (full model)", "tiny", "contrastive baseline"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from stemjepa.data.multitrack import read_folder
    from stemjepa.evaluation.report import compare_table
    from stemjepa.evaluation.retrieval import RetrievalProtocol, evaluate_retrieval
    from stemjepa.training.stage import train_stage

    out = Path(args.out)
    songs, _ = read_folder(args.test)
    ckpts, timings = {}, {}
    for name, config, init in ROWS:
        run = out / "runs" / config
        t0 = time.time()
        last = train_stage(run, config, [f"max_steps={args.steps}", f"seed={args.seed}", "log_every=10"], Path(args.train),
                           ckpts[init] if init else None, device="cpu", log=lambda msg: None).checkpoint
        ckpts[name] = last
        train_s = time.time() - t0
        for cond in ("fine", "coarse"):
            t1 = time.time()
            evaluate_retrieval(str(last), songs, RetrievalProtocol(split="held-out", label_level=cond),
                               out / "eval" / f"{config}-{cond}", cache_dir=out / "eval" / "cache", name=name, overwrite=True,
                               progress=False)
            timings[(name, cond)] = (round(train_s), round(time.time() - t1))
        print(f"{name}: trained in {train_s:.0f} s", flush=True)
    dirs = [out / "eval" / f"{c}-{cond}" for cond in ("fine", "coarse") for _, c, _ in ROWS]
    table = compare_table(dirs)
    print(table)
    lines = [f"| {n} | {timings[(n, 'fine')][0]} | {timings[(n, 'fine')][1] + timings[(n, 'coarse')][1]} |" for n, _, _ in ROWS]
    times = "| row | training (s) | evaluation fine + coarse (s) |\n|---|---|---|\n" + "\n".join(lines)
    print(times)
    (out / "table1.md").write_text(table + "\n\n" + times + "\n")
    (out / "table1.json").write_text(json.dumps({f"{k[0]} / {k[1]}": v for k, v in timings.items()}, indent=1))


if __name__ == "__main__":
    main()
