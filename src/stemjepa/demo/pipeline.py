"""The demo's stages: corpus, two training phases, the retrieval benchmark, a stem index with example queries, the report.

Each stage reuses what an earlier run left in the output folder (corpus, finished training runs, embedding cache).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..audio import SAMPLE_RATE
from ..errors import StemJepaError
from ..evaluation.protocol import LABEL_LEVELS
from ..fsutil import atomic_write_text

# the demo ranks by cosine, as the stem index does (the paper's L2 is `stemjepa eval retrieval`'s default)
DISTANCE = "cosine"
# instruments that only the held-out songs play: their category is known from training, the instrument itself is not
HELD_OUT = ("alto saxophone", "violin", "rhodes electric piano")


# what a demo writes in its --out folder; the marker file lists them, and a folder without it is not the demo's to write in
MARKER = ".stemjepa-demo.json"
DEMO_ENTRIES = ("data", "runs", "eval", "index", "queries", "training_curves.png", "fig2_full_model_fine.png", "report.md",
                "report.html", "summary.json")


def claim_out(out: Path) -> None:
    """Make `out` the demo's folder, or refuse before any work: never overwrite files the demo did not write.

    An absent or empty folder is claimed (the marker is written first); a folder with the marker is a previous demo's and
    is reused. A folder of an older demo (no marker, nothing but the demo's own entries, with its corpus) is claimed too.
    """
    if out.exists() and not out.is_dir():
        raise StemJepaError(f"{out}: exists and is not a folder; choose a new --out folder for the demo")
    found = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if MARKER in found:
        return
    older_demo = found and set(found) <= set(DEMO_ENTRIES) and (out / "data" / "train").is_dir()
    if found and not older_demo:
        raise StemJepaError(f"{out}: folder is not empty and is not a stemjepa demo output (holds "
                            f"{', '.join(found[:5])}{', ...' if len(found) > 5 else ''}); the demo would overwrite "
                            "report.md, summary.json and more: choose an empty or new --out folder, nothing was changed")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MARKER, json.dumps({"written_by": "stemjepa demo", "entries": list(DEMO_ENTRIES)}, indent=1))


@dataclass
class DemoConfig:
    out: Path = Path("demo_out")
    minutes: float = 10.0  # budget for the whole job (training gets what the other stages leave)
    train_songs: int = 128
    test_songs: int = 12
    seconds: float = 16.0
    seed: int = 0
    jobs: int = 2
    held_out: tuple[str, ...] = HELD_OUT
    # where training starts: a built-in model (fine-tuned on the corpus: FINETUNE) or "scratch" (the tiny configs
    # trained from random weights, as the paper's phases are; what the demo did before the built-in model v3)
    init: str = "default"
    phase1_steps: int | None = None  # None: 150 when fine-tuning, 300 from scratch
    phase2_steps: int | None = None
    batch_size: int = 24
    progress: bool = True
    timings: dict = field(default_factory=dict)


SCRATCH = "scratch"
# fine-tuning a built-in model: a tenth of the tiny recipe's peak learning rate would not move it, its own would undo it;
# measured on the demo's held-out songs (2026-12-04, this 2-core CPU, 150 + 150 steps of 24): from stemjepa-small-synth-v3,
# the model as it is R@1 40.2 / R@10 92.4, fine-tuned full model 44.6 / 92.4, contrastive baseline R@10 55.4; from v4
# 38.0 / 91.3, 38.0 / 93.5, 54.3; from v6 39.1 / 92.4, 45.7 / 94.6, 57.6 (from scratch in the same demo: 20.7 / 51.1 and 21.7)
FINETUNE = {"steps": 150, "overrides": ["optim.lr=2e-4", "optim.warmup_steps=20"]}
SCRATCH_STEPS = 300
BUILTIN_ROW = "built-in model as is"  # the init itself, before fine-tuning: what the fine-tuning adds


def phase_plan(cfg: DemoConfig) -> tuple[list[str], int, int]:
    """The overrides both phases share and the steps of each: the built-in model's architecture and the fine-tuning
    schedule when starting from it, the tiny configs as they are from scratch."""
    if cfg.init == SCRATCH:
        shared, steps = [], SCRATCH_STEPS
    else:
        from ..training.init_from import architecture_overrides, read_init

        shared, steps = architecture_overrides(read_init(cfg.init).model_config) + FINETUNE["overrides"], FINETUNE["steps"]
    return shared, cfg.phase1_steps or steps, cfg.phase2_steps or steps


class _Stage:
    def __init__(self, cfg: DemoConfig, name: str):
        self.cfg, self.name = cfg, name

    def __enter__(self):
        self.t0 = time.time()
        print(f"\n== {self.name}", flush=True)
        return self

    def __exit__(self, *exc):
        self.cfg.timings[self.name] = round(time.time() - self.t0, 1)
        if exc[0] is None:
            print(f"   done in {self.cfg.timings[self.name]:.0f} s", flush=True)


def _train(cfg: DemoConfig, config: str, run: Path, steps: int, seconds: float, data: Path, init=None,
           shared: tuple[str, ...] = ()) -> Path:
    """Train one phase unless a finished run of the same settings is already there; an interrupted one is resumed
    (stemjepa.training.stage). The time box is not a setting: a finished run is reused whatever the time left."""
    from ..training.stage import train_stage

    overrides = [*shared, f"max_steps={steps}", f"data.batch_size={cfg.batch_size}", "data.num_workers=1", "log_every=5",
                 f"checkpoint_every={max(50, steps // 4)}", f"seed={cfg.seed}"]
    stage = train_stage(run, config, overrides, data, init, device="auto", max_minutes=max(30.0, seconds) / 60,
                        progress=cfg.progress, log=lambda msg: None)
    if stage.reused:
        steps_done = stage.record.get("steps_reached")
        print(f"   reusing {stage.checkpoint} ({f'{steps_done} steps' if steps_done else 'steps unknown'})")
    return stage.checkpoint


def _pick_queries(songs, held_out) -> list[tuple]:
    """(song, stem index) pairs, one song each: a held-out (zero-shot) instrument, a bass, and drums."""
    wanted = [
        lambda st: any(h in " ".join(st.labels).lower() for h in held_out),
        lambda st: bool(st.labels) and st.labels[0] == "bass",
        lambda st: bool(st.labels) and st.labels[0] == "drums",
    ]
    picks, used = [], set()
    for want in wanted:
        for song in songs:
            hits = [i for i, st in enumerate(song.stems) if want(st)]
            if song.id not in used and hits and len(song.stems) > 2:
                picks.append((song, hits[0]))
                used.add(song.id)
                break
    return picks


def _example_queries(cfg: DemoConfig, index, songs, qdir: Path) -> list[dict]:
    """Ask the index which stem fits each picked song without one of its stems; print and return the answers."""
    from ..audio.io import save_audio
    from ..data.multitrack import load_song

    examples = []
    for song, s in _pick_queries(songs, cfg.held_out):
        loaded = load_song(song, SAMPLE_RATE)
        target = song.stems[s]
        keep = [i for i, st in enumerate(loaded.stems) if st.path != target.path]
        mix_path = qdir / f"{song.id}_without_{target.name}.wav"
        mix = loaded.audio[keep].sum(0)
        save_audio(mix_path, mix / max(1.0, float(np.abs(mix).max()) / 0.95), SAMPLE_RATE)
        text = target.labels[-1] if target.labels else "music"
        results = index.query(str(mix_path), text, k=5)
        rows = [{"rank": r.rank, "score": round(r.score, 2), "cosine": round(r.cosine, 3), "path": r.path, "offset": r.offset,
                 "right_stem": Path(r.path).resolve() == Path(target.path).resolve(),
                 "same_song": Path(r.path).resolve().parent == Path(target.path).resolve().parent} for r in results]
        examples.append({"song": song.id, "mix": str(mix_path), "instrument": text, "truth": str(target.path),
                         "zero_shot": any(h in " ".join(target.labels) for h in cfg.held_out), "results": rows})
        print(f"\n   Which {text!r} fits {mix_path.name}?"
              + ("  (zero-shot: never heard in training)" if examples[-1]["zero_shot"] else ""))
        for r in rows:
            mark = "RIGHT STEM" if r["right_stem"] else ("same song" if r["same_song"] else "")
            print(f"    {r['rank']}. {r['score']:+5.1f} sd  {Path(r['path']).parent.name}/{Path(r['path']).name:<28} {mark}")
    return examples


def _train_phases(cfg: DemoConfig, runs: dict, train_dir: Path, left: float) -> tuple[Path, Path]:
    """Phase 1 then phase 2 within `left` seconds (less a share for the later stages): from the init (both phases
    fine-tune it) or from scratch (phase 2 from phase 1)."""
    t0 = time.time()
    train_seconds = max(60.0, 0.8 * left - 30)
    scratch = cfg.init == SCRATCH
    shared, steps1, steps2 = phase_plan(cfg)
    start = "from random weights" if scratch else f"fine-tuning {cfg.init!r}"
    (name1, run1), (name2, run2) = runs.items()
    with _Stage(cfg, f"2/5 training {start}: phase 1 (contrastive) then phase 2 (JEPA, FiLM on MiniLM text embeddings)"):
        p1 = _train(cfg, "tiny_phase1", run1, steps1, 0.5 * train_seconds, train_dir, init=None if scratch else cfg.init,
                    shared=shared)
        p2 = _train(cfg, "tiny", run2, steps2, train_seconds - (time.time() - t0), train_dir,
                    init=p1 if scratch else cfg.init, shared=shared)
    return p1, p2


def _benchmark(cfg: DemoConfig, rows: tuple, songs: list) -> tuple[dict, str]:
    """Every (row name, model) on the held-out songs at both label levels: the metrics and their Markdown table."""
    from ..evaluation.report import compare_table
    from ..evaluation.retrieval import RetrievalProtocol, evaluate_retrieval

    out = Path(cfg.out)
    metrics = {}
    dirs = {(name, level): out / "eval" / f"{name.replace(' ', '_')}-{level}" for level in LABEL_LEVELS for name, _ in rows}
    with _Stage(cfg, "3/5 retrieval benchmark on the held-out songs (Table I protocol, ranked by cosine)"):
        for name, model in rows:
            for level in LABEL_LEVELS:
                protocol = RetrievalProtocol(split="held-out", label_level=level, distance=DISTANCE)
                metrics[(name, level)] = evaluate_retrieval(str(model), songs, protocol, dirs[name, level],
                                                            cache_dir=out / "eval" / "cache", name=name, overwrite=True,
                                                            progress=cfg.progress)
        table = compare_table([dirs[key] for key in sorted(dirs, key=lambda key: LABEL_LEVELS.index(key[1]))])
    return metrics, table


def run_demo(cfg: DemoConfig) -> dict:
    """Run every stage; returns the summary (also written to OUT/summary.json)."""
    from ..data.multitrack import read_folder
    from ..data.synth import synthesize_corpus
    from .report import plot_curves, print_summary, summary_metrics, write_reports

    started = time.time()
    out = Path(cfg.out)
    claim_out(out)
    budget = cfg.minutes * 60.0
    train_dir, test_dir = out / "data" / "train", out / "data" / "test"

    with _Stage(cfg, "1/5 synthetic corpus (FluidSynth)"):
        synthesize_corpus(train_dir, cfg.train_songs, cfg.seconds, seed=cfg.seed, jobs=cfg.jobs, exclude=cfg.held_out,
                          progress=cfg.progress)
        synthesize_corpus(test_dir, cfg.test_songs, cfg.seconds, seed=cfg.seed + 1, jobs=cfg.jobs, require=cfg.held_out,
                          progress=cfg.progress)
        print(f"   {cfg.train_songs} training songs without {', '.join(cfg.held_out)}; {cfg.test_songs} held-out songs with them")

    # training gets what is left after the other stages (about 20% of the budget for evaluation, search and the report)
    runs = {"contrastive baseline (phase 1)": out / "runs" / "phase1", "full model (phase 2, FiLM)": out / "runs" / "phase2"}
    p1, p2 = _train_phases(cfg, runs, train_dir, budget - (time.time() - started))
    rows = (("contrastive baseline", p1), ("full model", p2))
    if cfg.init != SCRATCH:
        rows += ((BUILTIN_ROW, cfg.init),)
    songs, _ = read_folder(test_dir)
    metrics, table = _benchmark(cfg, rows, songs)

    from ..search import StemIndex, build_index

    with _Stage(cfg, "4/5 stem library: index the held-out songs' stems and ask which stem fits a mix"):
        from ..models import load_model

        model = load_model(p2)
        summary = build_index(test_dir, out / "index", model, model_ref=str(p2), progress=cfg.progress)
        print("   " + summary.text().replace("\n", "\n   "))
        qdir = out / "queries"
        qdir.mkdir(exist_ok=True)
        with StemIndex.open(out / "index", model=model) as index:
            examples = _example_queries(cfg, index, songs, qdir)

    with _Stage(cfg, "5/5 report"):
        plot_curves(runs, out / "training_curves.png", cfg.batch_size)
        result = {"metrics": summary_metrics(metrics), "examples": examples, "timings_s": cfg.timings,
                  "held_out": list(cfg.held_out), "checkpoints": {"phase1": str(p1), "phase2": str(p2)}}
        write_reports(out, cfg, table, metrics, examples)
    result["timings_s"]["total"] = round(time.time() - started, 1)
    atomic_write_text(out / "summary.json", json.dumps(result, indent=1, default=str))
    print_summary(metrics, out, result["timings_s"]["total"])
    return result
