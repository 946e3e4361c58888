"""Generalisation benchmark: retrieval on a soundfont, instruments and production never heard in training.

The built-in models are trained on synthetic renders; what a user meets is music unlike them. This benchmark measures that
gap with material kept out of training on three axes at once:
  - soundfont: the test songs are rendered with a General-MIDI soundfont family no training song uses (by default the
    families that no built-in model was trained on: Csound's `sf_GMbank` and the `OPL-3` FM bank, from Debian's
    `csound-soundfont` and `opl3-soundfont`);
  - instruments: every test song holds at least one of HELD_OUT_INSTRUMENTS, which training corpora exclude;
  - production: test songs get random per-stem production chains (`stemjepa synth --production full`: EQ, compression,
    reverb, drive, modulation, levels and fades) with seeds never used in training.
Each test soundfont is one pool (fine labels, the Table I protocol: every stem is a query with the mix of its song's other
stems); the figures are R@1/5/10 and the median normalised rank, next to chance, by cosine and by L2.

Modes:
  models     evaluate models (names such as `stemjepa-tiny-synth-v1`, or checkpoint / export paths) on the test pools;
  train      train a recipe (phase 1 then phase 2, configs and overrides) on every other soundfont family and evaluate
             each saved checkpoint: R@10 against training minutes (the learning curve);
  loso       leave-one-soundfont-out: for every family, train the recipe on the others and test on it; mean over folds;
  curve-of   the learning curve of a run trained elsewhere (train_default.py's runs/phase1, runs/phase2; a fine-tuning
             run, `--init`, has no phase 1 and starts with its init at minute 0);
  curve      plot every recorded curve (--out's curves/ and the records kept in benchmarks/curves/), with the `models`
             results and the built-in models' cards as reference lines.

Usage:
  python benchmarks/generalization.py --out runs/gen models stemjepa-tiny-synth-v1 stemjepa-small-synth-v2
  python benchmarks/generalization.py --out runs/gen train --name tiny --p1-steps 300 --p2-steps 600
  python benchmarks/generalization.py --out runs/gen train --name small --p1 model.encoder.embed_dim=192 ...
  python benchmarks/generalization.py --out runs/gen loso --name tiny --p1-steps 200 --p2-steps 300
  python benchmarks/generalization.py --out runs/gen curve-of --runs runs/default/runs --name small-v2   # a run made elsewhere
  python benchmarks/generalization.py --out runs/gen curve-of --runs runs/v6/runs --name v6 --phases phase2 \
      --init-model v5.safetensors                                     # a fine-tuning whose init is not built in
  python benchmarks/generalization.py --out runs/gen curve            # docs/img/generalization_curve.png from every run
Renders, caches, runs and evaluations live under --out and are reused when re-run with the same settings. Run it under
`nice` on a shared machine and one at a time: training times are part of the result.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_default import (  # noqa: E402 - the built-in model's own render / train / evaluate stages, reused as they are
    corpus_stats,
    digest,
    discover_soundfonts,
    log,
    merge,
    read_json,
    render_part,
    split_counts,
    train_stage,
    write_json,
)

KEPT_CURVES = Path(__file__).resolve().parent / "curves"  # curve records worth keeping (small JSON), plotted with --out's
HELD_OUT_INSTRUMENTS = ("alto saxophone", "violin", "rhodes electric piano", "fretless bass", "clavinet",
                        "muted electric guitar")
# soundfont families: files of one family share their samples (a mono or lossy copy, a lite / full edition), so a held-out
# family is held out whole
FAMILIES = (("fluidr3", re.compile(r"fluidr3", re.I)), ("musescore", re.compile(r"musescore", re.I)),
            ("timgm6mb", re.compile(r"timgm6mb", re.I)), ("csound-gmbank", re.compile(r"sf_gmbank", re.I)),
            ("opl3-fm", re.compile(r"opl-?3", re.I)))
DEFAULT_TEST_FAMILIES = ("csound-gmbank", "opl3-fm")  # families no built-in model was trained on
TRAIN_SEED, TEST_SEED = 5000, 7000  # disjoint from train_default.py's 1000+ / 2000+
METRICS = ("R@1", "R@5", "R@10", "norm_rank_median")


def family(sf2: Path) -> str | None:
    """The family of a General-MIDI soundfont, None for a file of no known family (drum-only kits and the like)."""
    return next((name for name, pattern in FAMILIES if pattern.search(sf2.name)), None)


def soundfonts_by_family() -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for sf2 in discover_soundfonts():
        fam = family(sf2)
        if fam is not None:
            found.setdefault(fam, []).append(sf2)
    return found


def production_available() -> bool:
    try:
        import pedalboard  # noqa: F401
    except ImportError:
        return False
    return True


def render(out: Path, kind: str, sf2: Path, n: int, seconds: float, seed: int, args, **kw) -> list[Path]:
    """Songs of one soundfont, through train_default's resumable renderer (extra synth settings passed through)."""
    return render_part(out, kind, 0, sf2, n, seconds, seed, args.jobs, **kw)


def test_pool(out: Path, fam: str, sfs: list[Path], args) -> Path:
    """The held-out songs of one family: held-out instruments in every song, production chains, test seeds."""
    kw = {"require": HELD_OUT_INSTRUMENTS, "production": args.production}
    parts = []
    for i, (sf2, n) in enumerate(zip(sfs, split_counts(args.test_songs, len(sfs)))):
        parts.append((sf2, render(out, f"gtest-{args.production}", sf2, n, args.test_seconds, TEST_SEED + 10 * i, args, **kw)))
    spec = {"kind": "gtest", "family": fam, "production": args.production, "seconds": args.test_seconds,
            "parts": [(str(s), len(p)) for s, p in parts]}
    return merge(out, f"gtest-{fam}", parts, spec)


def train_corpus(out: Path, families: dict[str, list[Path]], args) -> Path:
    """Training songs over the given families (held-out instruments excluded), split evenly over their soundfonts."""
    sfs = [sf2 for fam in sorted(families) for sf2 in families[fam]]
    kw = {"exclude": HELD_OUT_INSTRUMENTS, "production": args.train_production}
    parts = []
    for sf2, n in zip(sfs, split_counts(args.train_songs, len(sfs))):
        seed = TRAIN_SEED + sum(map(ord, sf2.name))  # a soundfont's songs are the same whichever fold uses them
        parts.append((sf2, render(out, f"gtrain-{args.train_production}", sf2, n, args.seconds, seed, args, **kw)))
    spec = {"kind": "gtrain", "families": sorted(families), "production": args.train_production,
            "seconds": args.seconds, "parts": [(str(s), len(p)) for s, p in parts]}
    return merge(out, "gtrain", parts, spec)


def evaluate_model(model_ref: str, pool: Path, out: Path, device: str) -> dict:
    """Cosine and L2 retrieval of one model on one pool (reused when the model and the songs are unchanged)."""
    from stemjepa.data.multitrack import read_folder
    from stemjepa.evaluation.retrieval import RetrievalProtocol, evaluate_retrieval
    from stemjepa.models import load_model

    model = load_model(model_ref, device=None if device == "auto" else device)
    key = {"model_id": str(model.model_id), "pool": str(pool), "songs": sorted(p.name for p in pool.iterdir() if p.is_dir())}
    done = read_json(out / "result.json")
    if done and done.get("key") == key:
        return done
    songs, _ = read_folder(pool)
    result: dict = {"key": key, "model": model_ref}
    for distance in ("cosine", "l2"):
        m = evaluate_retrieval(model, songs, RetrievalProtocol(split="held-out", distance=distance), out / distance,
                               cache_dir=out / "cache", overwrite=True, progress=False)
        result[distance] = {k: round(float(m[k]), 2) for k in METRICS}
        result["chance"] = {k: round(float(m["chance"][k]), 2) for k in METRICS if k in m["chance"]}
        result.update(n_queries=m["n_queries"], n_pool=m["n_pool"], n_songs=m["n_songs"])
    write_json(out / "result.json", result)
    return result


def table(rows: list[tuple[str, str, dict]]) -> str:
    lines = ["| model | test pool | stems | cos R@1 | cos R@5 | cos R@10 | cos median | L2 R@1 | L2 R@10 | L2 median |"
             " chance R@1 | chance R@10 |", "|" + "---|" * 12]
    for name, pool, r in rows:
        c, l2, ch = r["cosine"], r["l2"], r["chance"]
        lines.append(f"| {name} | {pool} | {r['n_pool']} | {c['R@1']:.1f} | {c['R@5']:.1f} | {c['R@10']:.1f} | "
                     f"{c['norm_rank_median']:.1f} | {l2['R@1']:.1f} | {l2['R@10']:.1f} | {l2['norm_rank_median']:.1f} | "
                     f"{ch['R@1']:.1f} | {ch['R@10']:.1f} |")
    return "\n".join(lines)


def mean_row(results: list[dict]) -> dict:
    """Pooled figures over several test pools, weighted by their number of queries."""
    n = sum(r["n_queries"] for r in results)
    out = {"n_pool": round(sum(r["n_pool"] for r in results) / len(results)), "n_queries": n}
    for part in ("cosine", "l2", "chance"):
        out[part] = {k: sum(r[part][k] * r["n_queries"] for r in results) / n for k in METRICS}
    return out


def pools(out: Path, args) -> dict[str, Path]:
    fams = soundfonts_by_family()
    missing = [f for f in args.test_families if f not in fams]
    if missing:
        raise SystemExit(f"error: no soundfont of famil{'ies' if len(missing) > 1 else 'y'} {', '.join(missing)} is installed "
                         f"(found: {', '.join(fams) or 'none'}); apt-get install csound-soundfont opl3-soundfont")
    return {f: test_pool(out, f, fams[f], args) for f in args.test_families}


# ----------------------------------------------------------------------------------------------- modes
def run_models(args) -> list[tuple[str, str, dict]]:
    out = Path(args.out)
    test = pools(out, args)
    rows = []
    for ref in args.models:
        per_pool = []
        for fam, pool in test.items():
            r = evaluate_model(ref, pool, out / "eval" / digest([ref, str(pool)]), args.device)
            rows.append((ref, fam, r))
            per_pool.append(r)
            log(f"{ref} on {fam}: cosine {r['cosine']}, L2 {r['l2']}, chance {r['chance']}")
        if len(per_pool) > 1:
            rows.append((ref, "all (weighted)", mean_row(per_pool)))
    return rows


def train_recipe(out: Path, name: str, families: dict[str, list[Path]], args) -> tuple[Path, Path, dict]:
    data = train_corpus(out, families, args)
    stats = corpus_stats(data)
    tag = f"{name}-{digest([sorted(families), args.train_songs, args.seconds, args.train_production])}"
    runs = out / "runs" / tag
    p1_ckpt, p1 = train_stage(runs / "phase1", args.p1_config, args.p1_steps, args.p1, data, None, args.seed, args.device, {})
    p2_ckpt, p2 = train_stage(runs / "phase2", args.p2_config, args.p2_steps, args.p2, data, p1_ckpt, args.seed, args.device,
                              {"phase1": digest(p1["spec"]), "phase1_seconds": p1["seconds"]})
    return runs, data, {"corpus": stats, "phase1": p1, "phase2": p2}


def curve_points(runs: Path, p1: dict | None, p2: dict) -> list[tuple[str, float, Path]]:
    """(phase, training minutes, checkpoint) for every saved step checkpoint; minutes pro rata of the phase's time.
    A fine-tuning run (no phase 1, phase 2 from a model: `--init`) starts with that model at minute 0."""
    points = [] if p1 else [("init", 0.0, Path(p2["spec"]["init"]))]  # a built-in name evaluates as itself
    for phase, stage, offset in (("phase1", p1, 0.0), ("phase2", p2, p1["seconds"] if p1 else 0.0)):
        if stage is None:
            continue
        steps = stage.get("steps_reached") or stage["spec"].get("steps") or stage["config_resolved"]["max_steps"]
        for ck in sorted((runs / phase / "checkpoints").glob("step*.ckpt")):
            step = int(re.sub(r"\D", "", ck.stem))
            points.append((phase, (offset + stage["seconds"] * min(step, steps) / steps) / 60, ck))
    return points


def curve_point(args, test: dict[str, Path], phase: str, minutes: float, ck: Path) -> tuple[dict, dict]:
    """One point of a learning curve: checkpoint `ck` (or a model name) on every held-out pool (cached), pooled."""
    out = Path(args.out)
    per_pool = [evaluate_model(str(ck), pool, out / "eval" / digest([str(ck), str(pool)]), args.device)
                for pool in test.values()]
    m = mean_row(per_pool) if len(per_pool) > 1 else per_pool[0]
    log(f"{args.name} {phase} {ck.name} ({minutes:.1f} min): cosine {m['cosine']['R@10']:.1f} R@10")
    return ({"phase": phase, "minutes": round(minutes, 2), "checkpoint": ck.name, "R@10": m["cosine"]["R@10"],
             "R@1": m["cosine"]["R@1"], "median": m["cosine"]["norm_rank_median"], "chance R@10": m["chance"]["R@10"]}, m)


def run_train(args) -> list[tuple[str, str, dict]]:
    out = Path(args.out)
    fams = soundfonts_by_family()
    test = pools(out, args)
    train_fams = {f: s for f, s in fams.items() if f not in args.test_families}
    if not train_fams:
        raise SystemExit("error: every installed soundfont family is a test family; nothing is left to train on")
    t0 = time.time()
    runs, data, info = train_recipe(out, args.name, train_fams, args)
    curve = []
    rows = []
    for phase, minutes, ck in curve_points(runs, info["phase1"], info["phase2"]):
        curve.append(curve_point(args, test, phase, minutes, ck)[0])
    final = info["phase2"]["spec"]
    last = runs / "phase2" / "checkpoints" / "last.ckpt"
    for fam, pool in test.items():
        rows.append((f"{args.name} (phase 2)", fam, evaluate_model(str(last), pool, out / "eval" / digest([str(last), str(pool)]),
                                                                   args.device)))
    record = {"name": args.name, "train_families": sorted(train_fams), "test_families": list(test), "corpus": info["corpus"],
              "p1": {"config": args.p1_config, "steps": args.p1_steps, "overrides": args.p1,
                     "seconds": info["phase1"]["seconds"]},
              "p2": {"config": args.p2_config, "steps": args.p2_steps, "overrides": args.p2,
                     "seconds": info["phase2"]["seconds"]},
              "spec": final, "curve": curve, "final": {fam: r for _, fam, r in rows}, "wall_seconds": round(time.time() - t0)}
    write_json(out / "curves" / f"{args.name}.json", record)
    return rows


def run_curve_of(args) -> list[tuple[str, str, dict]]:
    """The learning curve of a two-phase run trained elsewhere (e.g. by train_default.py: RUNS/phase1, RUNS/phase2 with
    their stage.json), on the held-out pools; recorded beside the curves of the `train` mode."""
    out, runs = Path(args.out), Path(args.runs)
    test = pools(out, args)
    stages = {ph: read_json(runs / ph / "stage.json") for ph in ("phase1", "phase2")}
    fine_tuned = bool(stages["phase2"] and not stages["phase1"] and stages["phase2"]["spec"].get("init"))
    missing = [ph for ph, st in stages.items() if not st and not (fine_tuned and ph == "phase1")]
    if missing:
        raise SystemExit(f"error: {runs}: no finished {' and '.join(missing)} (stage.json) to read a curve from")
    curve, rows = [], []
    for phase, minutes, ck in curve_points(runs, stages["phase1"], stages["phase2"]):
        if phase not in args.phases and phase != "init":
            continue
        if phase == "init" and args.init_model:  # an init that is no built-in model (an intermediate not shipped)
            ck = Path(args.init_model)
        point, m = curve_point(args, test, phase, minutes, ck)
        curve.append(point)
        rows.append((f"{args.name} {phase} {ck.name}", "all (weighted)", m))
    record = {"name": args.name, "runs": str(runs), "test_families": list(test), "curve": curve,
              "p1": ({"seconds": stages["phase1"]["seconds"], "spec": stages["phase1"]["spec"]} if stages["phase1"]
                     else {"seconds": 0.0, "init": stages["phase2"]["spec"]["init"]}),
              "p2": {"seconds": stages["phase2"]["seconds"], "spec": stages["phase2"]["spec"]}}
    write_json(out / "curves" / f"{args.name}.json", record)
    return rows


def run_loso(args) -> list[tuple[str, str, dict]]:
    out = Path(args.out)
    fams = soundfonts_by_family()
    rows, per_fold = [], []
    for held in sorted(fams):
        train_fams = {f: s for f, s in fams.items() if f != held}
        pool = test_pool(out, held, fams[held], args)
        runs, _, _ = train_recipe(out / "loso" / held, args.name, train_fams, args)
        r = evaluate_model(str(runs / "phase2" / "checkpoints" / "last.ckpt"), pool, out / "eval" / f"loso-{args.name}-{held}",
                           args.device)
        rows.append((f"{args.name}, trained without {held}", held, r))
        per_fold.append(r)
    rows.append((f"{args.name}, leave-one-soundfont-out", "mean of folds", mean_row(per_fold)))
    return rows


def card_references(shown: set[str]) -> list[tuple[str, float]]:
    """(name, pooled cosine R@10) of every built-in model whose card records this benchmark, newest name first."""
    from stemjepa.models.registry import builtin_models

    refs = []
    for name, entry in sorted(builtin_models().items(), reverse=True):
        pooled = ((entry.card.get("evaluation") or {}).get("generalization") or {}).get("all") or {}
        if name not in shown and "cosine" in pooled:
            refs.append((name, pooled["cosine"]["R@10"]))
    return refs


def plot_curves(out: Path, png: Path) -> None:
    """R@10 on the held-out pools against training minutes, one line per recipe run (`train` mode records)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {p.name: p for d in (KEPT_CURVES, out / "curves") for p in sorted(d.glob("*.json"))}  # a fresh run wins
    records = [r for r in (read_json(p) for p in files.values()) if r and r.get("curve")]
    if not records:
        raise SystemExit(f"error: no learning curve under {out / 'curves'} or {KEPT_CURVES} (run the `train` mode first)")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in records:
        xs = [p["minutes"] for p in r["curve"]]
        ax.plot(xs, [p["R@10"] for p in r["curve"]], marker="o", label=r["name"])
        p2 = [p for p in r["curve"] if p["phase"] == "phase2"]
        if p2 and not r["p1"].get("init"):
            ax.axvline(r["p1"]["seconds"] / 60, color=ax.lines[-1].get_color(), alpha=0.25, linestyle=":")
    shown = set()
    for table_file in sorted((out / "tables").glob("models-*.json"), reverse=True):  # newest first: one line per model
        for row in read_json(table_file) or []:
            if row.get("pool") == "all (weighted)" and row["model"] not in shown:
                shown.add(row["model"])
                r10 = row["cosine"]["R@10"]
                ax.axhline(r10, linestyle="-.", alpha=0.7, color=("C3", "C6", "C7", "C8", "C9")[(len(shown) - 1) % 5],
                           label=f"{row['model']} ({r10:.1f})")
    for name, r10 in card_references(shown):
        shown.add(name)
        ax.axhline(r10, linestyle="-.", alpha=0.7, color=("C3", "C6", "C7", "C8", "C9")[(len(shown) - 1) % 5],
                   label=f"{name} ({r10:.1f})")
    chance = records[0]["curve"][0]["chance R@10"]
    ax.axhline(chance, color="grey", linestyle="--", label=f"chance ({chance:.1f})")
    ax.set_xlabel("training minutes (this CPU; dotted: phase 1 -> phase 2)")
    ax.set_ylabel("R@10 on held-out soundfonts (%)")
    ax.set_title("Generalisation: held-out soundfont, instruments and production")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left")  # the lower right holds the curves, the top the reference lines
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    log(f"wrote {png}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/generalization", help="work folder (renders, runs, evaluations, results)")
    ap.add_argument("--test-families", nargs="+", default=list(DEFAULT_TEST_FAMILIES),
                    help=f"held-out soundfont families (known: {', '.join(n for n, _ in FAMILIES)})")
    ap.add_argument("--test-songs", type=int, default=32, help="held-out songs per test family")
    ap.add_argument("--test-seconds", type=float, default=20.0)
    ap.add_argument("--production", default=None, choices=["none", "full"],
                    help="production of the test songs (default: full where pedalboard is installed)")
    ap.add_argument("--jobs", type=int, default=2, help="rendering processes")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    sub = ap.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("models", help="evaluate models on the held-out pools")
    m.add_argument("models", nargs="+", help="model names, checkpoints or exports")
    for name in ("train", "loso"):
        t = sub.add_parser(name, help="train a recipe and evaluate it" if name == "train" else "leave one soundfont family out")
        t.add_argument("--name", required=True, help="name of the recipe in tables and plots")
        t.add_argument("--train-songs", type=int, default=384)
        t.add_argument("--seconds", type=float, default=30.0)
        t.add_argument("--train-production", default=None, choices=["none", "full"])
        t.add_argument("--p1-config", default="tiny_phase1")
        t.add_argument("--p2-config", default="tiny")
        t.add_argument("--p1-steps", type=int, default=300)
        t.add_argument("--p2-steps", type=int, default=600)
        t.add_argument("--p1", nargs="*", default=[], metavar="KEY=VALUE")
        t.add_argument("--p2", nargs="*", default=[], metavar="KEY=VALUE")
        t.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("curve-of", help="learning curve of a two-phase run trained elsewhere (train_default.py)")
    r.add_argument("--runs", required=True, help="folder holding phase1/ and phase2/ run folders")
    r.add_argument("--name", required=True)
    r.add_argument("--phases", nargs="+", default=["phase1", "phase2"], choices=["phase1", "phase2"])
    r.add_argument("--init-model", default=None, metavar="PATH",
                   help="a fine-tuning run's init, where its recorded name is not a built-in model")
    c = sub.add_parser("curve", help="plot every recorded learning curve")
    c.add_argument("--png", default=str(REPO / "docs" / "img" / "generalization_curve.png"))
    args = ap.parse_args(argv)
    full = production_available()
    args.production = args.production or ("full" if full else "none")
    if getattr(args, "train_production", "x") is None:
        args.train_production = args.production
    if "full" in (args.production, getattr(args, "train_production", None)) and not full:
        ap.error("--production full needs pedalboard (pip install 'stemjepa[effects]')")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.mode == "curve":
        plot_curves(out, Path(args.png))
        return 0
    rows = {"models": run_models, "train": run_train, "loso": run_loso, "curve-of": run_curve_of}[args.mode](args)
    text = table(rows)
    print(text)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / "tables").mkdir(exist_ok=True)
    (out / "tables" / f"{args.mode}-{stamp}.md").write_text(text + "\n")
    write_json(out / "tables" / f"{args.mode}-{stamp}.json", [{"model": a, "pool": b, **r} for a, b, r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
