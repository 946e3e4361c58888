"""Render a corpus and train a larger built-in model on one lent GPU inside a fixed wall-clock budget (issue 24, item 4).

The device machines lent to this project are bare (no FluidSynth, no soundfonts, no text-encoder weights, nothing to
download) and lent for minutes, so this script is the one prepared run: it renders songs on the machine's cores for a
share of the budget, then hands the rest to `train_default.py` (phase 1, phase 2, held-out evaluation, slim export and
card) with time boxes computed from what is left, and writes the weights (split into parts small enough to come back),
the card and the logs to --result.

Two things differ from a CPU run of train_default.py, both for the time box:
  - the cosine learning-rate decay runs over the time box (progress = the larger of steps done / max_steps and time spent
    / time box), since the number of steps a GPU reaches in the box is not known beforehand;
  - the text labels are embedded from a table computed beforehand with the same MiniLM (`--labels`, made by
    `--make-labels` on a machine that has the text model), since the machine cannot hold the text model.

Usage (see benchmarks/RESULTS.md, "Built-in model v3 on one GPU" and "Built-in model v5 on one GPU", for the exact calls,
what travelled and what they measured):
  python benchmarks/train_gpu.py --make-labels .devcarry/labels.npz              # here, once
  python benchmarks/train_gpu.py --out /tmp/gpu --result $OUT --budget 530 --soundfonts A.sf3 B.sf2 --labels labels.npz
  ... --init MODEL                  # fine-tune MODEL instead: no phase 1, the whole training time to phase 2
  python benchmarks/train_gpu.py --adopt RESULT_DIR --command "..."              # back here: join, measure, install
--adopt joins the weight parts, checks them against the card, completes the card (the steps each phase reached, the
exact device command, the generalisation pools of benchmarks/generalization.py measured here), and installs the weights,
their card, docs/MODEL_CARD.md and the `default` alias.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import train_default as td  # noqa: E402

HELD_OUT = ("alto saxophone", "violin", "rhodes electric piano", "fretless bass", "clavinet", "muted electric guitar")
PART_MB = 15  # files come back from the device machine at most 16 MiB each


def log(msg: str) -> None:
    print(f"[train_gpu {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_labels(path: Path) -> None:
    """Every label path of the palette (each level and each coarse-to-fine prefix) embedded with the frozen MiniLM."""
    import numpy as np

    from stemjepa.data.labels import label_key
    from stemjepa.data.synth.palette import PALETTE
    from stemjepa.models.text_encoders import get_text_encoder

    labels = sorted({label_key(x) for ins in PALETTE for i in range(len(ins.labels))
                     for x in (ins.labels[i], " > ".join(ins.labels[:i + 1]))} | {"music"})  # "music": unlabelled stems
    vectors = get_text_encoder("minilm").encode(labels).astype(np.float32)
    np.savez(path, labels=np.array(labels), vectors=vectors)
    log(f"{len(labels)} labels embedded into {path}")


def use_label_table(path: Path) -> None:
    """Serve the conditioner's text embeddings from the table; an unknown label falls back to its finest known level."""
    import numpy as np

    from stemjepa.data.labels import label_key
    from stemjepa.models import conditioning, text_encoders

    data = np.load(path)
    table = dict(zip((str(x) for x in data["labels"]), data["vectors"]))

    class TableEncoder:
        dim = int(data["vectors"].shape[1])

        def encode(self, texts):
            rows = []
            for t in texts:
                key = label_key(t)
                if key not in table:
                    known = [p.strip() for p in key.split(">") if p.strip() in table]
                    log(f"label {key!r} not in the table: using {known[-1] if known else 'the mean'}")
                    rows.append(table[known[-1]] if known else data["vectors"].mean(0))
                else:
                    rows.append(table[key])
            return np.stack(rows).astype(np.float32)

    encoder = TableEncoder()
    conditioning.get_text_encoder = text_encoders.get_text_encoder = lambda *a, **k: encoder


def decay_by_time() -> None:
    """Cosine decay over each stage's time box as well as over its steps (whichever is further along)."""
    from stemjepa.training import module, schedule

    clock = {"start": None, "seconds": None}
    original_stage = td.train_stage

    def lr_factor(step, warmup_steps, total_steps, min_ratio=0.0):
        by_steps = schedule.lr_factor(step, warmup_steps, total_steps, min_ratio)
        if step < warmup_steps or not clock["seconds"]:
            return by_steps
        progress = min(1.0, (time.time() - clock["start"]) / clock["seconds"])
        by_time = min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return min(by_steps, by_time)

    def train_stage(*args, **kwargs):
        minutes = kwargs.get("max_minutes", args[9] if len(args) > 9 else None)
        clock.update(start=time.time(), seconds=minutes * 60 if minutes else None)
        return original_stage(*args, **kwargs)

    module.lr_factor = lr_factor
    td.train_stage = train_stage


def parallel_cache(jobs: int) -> None:
    """Decode the rendered songs into the training cache with `jobs` processes (train_default uses one)."""
    from stemjepa.data.prepare import format_summary, prepare
    from stemjepa.training import fit

    def prepare_folder_cache(folder, cache_dir, sample_rate, progress=True):
        result = prepare("folder", folder, cache_dir, sample_rate=sample_rate, progress=progress, jobs=jobs)
        if result.skipped:
            print(format_summary(result))
        return cache_dir

    fit.prepare_folder_cache = prepare_folder_cache


def render(args, sfs: list[Path], deadline: float) -> int:
    """Songs per soundfont, rendered in rounds of --songs-step until the render share of the budget is spent."""
    synth = {"exclude": tuple(args.exclude_instruments), "production": args.production}
    n = 0
    while n < args.max_songs and (n == 0 or time.time() < deadline):
        t0 = time.time()
        n += args.songs_step
        for i, sf in enumerate(sfs):
            td.render_part(Path(args.out), "train", i, sf, n, args.seconds, td.TRAIN_SEED + i, args.jobs, **synth)
        log(f"rendered {n} songs per soundfont ({time.time() - t0:.0f} s for this round)")
        if time.time() + (time.time() - t0) > deadline:  # another round would overrun
            break
    return n


def split_into(src: Path, dest: Path) -> list[str]:
    """`src` cut into parts of at most PART_MB MB (join with `cat NAME.part* > NAME`)."""
    data, names = src.read_bytes(), []
    step = PART_MB * 1_000_000
    for k in range(0, len(data), step):
        name = f"{src.name}.part{k // step}"
        (dest / name).write_bytes(data[k:k + step])
        names.append(name)
    return names


def adopt(result: Path, command: str, gen_out: Path, weights_dir: Path, card_md: Path, alias: str | None) -> int:
    """Install a model trained on the device (see the module docstring)."""
    import hashlib
    import json

    from stemjepa.fsutil import atomic_write, atomic_write_text
    from stemjepa.models.registry import ALIASES_FILE
    from stemjepa.training.stage import logged_steps

    card = json.loads((result / "card.json").read_text())
    name = card["name"]
    data = b"".join(p.read_bytes() for p in sorted(result.glob(f"{name}.safetensors.part*"),
                                                   key=lambda p: int(p.name.rsplit("part", 1)[1])))
    if hashlib.sha256(data).hexdigest() != card["sha256"]:
        raise SystemExit(f"{result}: the joined weights do not match the card's sha256")
    weights_dir.mkdir(parents=True, exist_ok=True)
    target = weights_dir / f"{name}.safetensors"
    atomic_write(target, lambda fh: fh.write(data))
    t = card["training"]
    t["command"] = command
    t["schedule"] = "cosine decay over each phase's time box (benchmarks/train_gpu.py)"
    for phase in ("phase1", "phase2"):
        reached = logged_steps(result / f"{phase}_metrics.csv") if (result / f"{phase}_metrics.csv").is_file() else None
        if reached:
            t[phase]["max_steps"], t[phase]["steps"] = t[phase]["steps"], reached
    card["limits"] = td.limits_text(t["corpus"]["production"], card["architecture"]["embed_dim"], "cuda")
    args = argparse.Namespace(jobs=2)
    card["evaluation"]["generalization"] = td.generalization_figures(args, target, gen_out, "cpu")
    card["alias"] = alias
    card["writer"] = "`benchmarks/train_gpu.py` (the training run on the device, then `--adopt` here)"
    td.write_json(weights_dir / f"{name}.json", card)
    if alias:
        aliases = td.read_json(weights_dir / ALIASES_FILE) or {}
        aliases[alias] = name
        td.write_json(weights_dir / ALIASES_FILE, aliases)
    atomic_write_text(card_md, td.render_card(card))
    log(f"installed {target} ({len(data) / 1e6:.1f} MB), its card and {card_md}; generalisation "
        f"{card['evaluation']['generalization']['all']['cosine']}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--make-labels", metavar="NPZ", default=None, help="write the label table and stop")
    ap.add_argument("--adopt", metavar="DIR", default=None, help="install the model that a device run wrote to DIR")
    ap.add_argument("--command", default="", help="with --adopt: the device command, recorded in the card")
    ap.add_argument("--gen-out", default="runs/default",
                    help="with --adopt: a work folder of train_default.py --generalization (pools in its generalization/)")
    ap.add_argument("--weights-dir", default=str(td.REPO / "src" / "stemjepa" / "weights"))
    ap.add_argument("--model-card", default=str(td.REPO / "docs" / "MODEL_CARD.md"))
    ap.add_argument("--alias", default="default", help="with --adopt: alias pointed at the model ('' for none)")
    ap.add_argument("--out", default="/tmp/gpu", help="work folder")
    ap.add_argument("--result", default=None, help="folder for what comes back (weights in parts, card, logs)")
    ap.add_argument("--budget", type=float, default=520.0, help="seconds for everything, setup to export")
    ap.add_argument("--render-share", type=float, default=0.28, help="share of the budget spent rendering")
    ap.add_argument("--reserve", type=float, default=75.0, help="seconds kept for caching, evaluation and export")
    ap.add_argument("--p1-share", type=float, default=0.25, help="share of the training time given to phase 1")
    ap.add_argument("--soundfonts", nargs="+", default=[])
    ap.add_argument("--labels", default=None, help="label table (.npz) from --make-labels")
    ap.add_argument("--seconds", type=float, default=24.0, help="length of a training song")
    ap.add_argument("--songs-step", type=int, default=64, help="songs per soundfont per rendering round")
    ap.add_argument("--max-songs", type=int, default=4096, help="at most this many songs per soundfont")
    ap.add_argument("--test-songs", type=int, default=16)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="rendering and caching processes")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2), help="data-loading workers")
    ap.add_argument("--embed-dim", type=int, default=256)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1.5e-3, help="peak learning rate at --batch (no further scaling)")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--production", default="full", choices=["none", "full"])
    ap.add_argument("--exclude-instruments", nargs="*", default=list(HELD_OUT))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--init", default=None, metavar="MODEL",
                    help="fine-tune this model (a built-in name or a file): no phase 1, its architecture, the whole "
                         "training time to phase 2 (train_default.py --init)")
    ap.add_argument("--name", default="stemjepa-small-synth-v3")
    ap.add_argument("--max-mb", type=float, default=32.0)
    args = ap.parse_args(argv)
    if args.make_labels:
        make_labels(Path(args.make_labels))
        return 0
    if args.adopt:
        return adopt(Path(args.adopt), args.command, Path(args.gen_out), Path(args.weights_dir), Path(args.model_card),
                     args.alias or None)
    t_start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.labels:
        use_label_table(Path(args.labels))
    decay_by_time()
    parallel_cache(args.jobs)
    sfs = [Path(s).resolve() for s in args.soundfonts] or td.discover_soundfonts()
    log(f"soundfonts {[p.name for p in sfs]}, {args.jobs} jobs, {args.workers} loader workers, budget {args.budget:.0f} s")

    n = render(args, sfs, t_start + args.render_share * args.budget)
    left = args.budget - (time.time() - t_start) - args.reserve
    if left < 60:
        raise SystemExit(f"only {left:.0f} s left for training after rendering")
    p1_share = 0.0 if args.init else args.p1_share
    p1_min, p2_min = left * p1_share / 60, left * (1 - p1_share) / 60
    log(f"{n} songs per soundfont; training {p1_min:.1f} + {p2_min:.1f} min" + (f" from {args.init}" if args.init else ""))
    shape = [] if args.init else [f"model.encoder.embed_dim={args.embed_dim}", f"model.encoder.depth={args.depth}",
                                  f"model.encoder.num_heads={args.heads}"]  # a fine-tuned model keeps its init's shape
    shape += [f"data.batch_size={args.batch}", f"optim.lr={args.lr}",
             f"optim.lr_batch_ref={args.batch}", f"optim.warmup_steps={args.warmup}", f"data.num_workers={args.workers}",
             "data.prefetch_factor=4", "checkpoint_every=100000", "log_every=25"]
    weights = out / "weights"
    card_md = out / "MODEL_CARD.md"
    code = td.main(["--out", str(out), "--name", args.name, "--no-alias", "--weights-dir", str(weights),
                    "--model-card", str(card_md), "--soundfonts", *map(str, sfs), "--train-songs", str(n * len(sfs)),
                    "--test-songs", str(args.test_songs), "--seconds", str(args.seconds), "--test-seconds", "16",
                    "--production", args.production, "--exclude-instruments", *args.exclude_instruments,
                    "--p1-steps", "1000000", "--p2-steps", "1000000",
                    "--p1-minutes", f"{p1_min:.3f}", "--p2-minutes", f"{p2_min:.3f}",
                    "--jobs", str(args.jobs), "--device", args.device, "--max-mb", str(args.max_mb),
                    *(["--init", args.init] if args.init else []), "--p1", *shape, "--p2", *shape])
    log(f"train_default returned {code} after {time.time() - t_start:.0f} s")
    if args.result:
        dest = Path(args.result)
        dest.mkdir(parents=True, exist_ok=True)
        parts = split_into(weights / f"{args.name}.safetensors", dest)
        for src in (out / "card.json", card_md):
            if src.is_file():
                shutil.copy(src, dest / src.name)
        for phase in ("phase1", "phase2"):  # the training curves (steps reached, losses, in-batch top-1)
            for csv in sorted((out / "runs" / phase / "logs").glob("version_*/metrics.csv"))[-1:]:
                shutil.copy(csv, dest / f"{phase}_metrics.csv")
        log(f"wrote {parts} and the card to {dest}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
