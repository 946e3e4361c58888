"""The main job, `stemjepa demo`: the whole system end to end on the built-in synthetic data, within a time budget.

1. a synthetic corpus: training songs without some instruments, held-out songs that contain them (zero-shot);
2. phase 1 (contrastive, also the contrastive baseline of Table I), then phase 2 (JEPA, FiLM on text embeddings) from it;
3. the retrieval benchmark on the held-out songs for both models, fine and coarse labels;
4. a stem index of the held-out songs and example queries ("which bass fits this mix?");
5. a report (HTML and Markdown) with the metrics, the Fig. 2 chart, training curves and audio players.
Every stage reuses what an earlier run already produced, so running it again is fast.
"""
from __future__ import annotations

import csv
import html
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# the demo ranks by cosine, as the stem index does (the paper's L2 is `stemjepa eval retrieval`'s default)
DISTANCE = "cosine"
# instruments that only the held-out songs play: their category is known from training, the instrument itself is not
HELD_OUT = ("alto saxophone", "violin", "rhodes electric piano")


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
    phase1_steps: int = 300
    phase2_steps: int = 300
    batch_size: int = 24
    progress: bool = True
    timings: dict = field(default_factory=dict)


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


def _train(cfg: DemoConfig, config: str, run: Path, steps: int, seconds: float, data: Path, init: Path | None = None) -> Path:
    """Train one phase unless a finished run is already there; an unfinished one is resumed."""
    from .config import load_config
    from .models.checkpoint import read_checkpoint
    from .training.fit import FitOptions, fit

    last = run / "checkpoints" / "last.ckpt"
    done = run / "done.json"
    if last.is_file() and done.is_file():
        print(f"   reusing {last} ({json.loads(done.read_text())['steps']} steps)")
        return last
    resume = last.is_file()  # an interrupted demo run continues
    overrides = [f"max_steps={steps}", f"data.batch_size={cfg.batch_size}", "data.num_workers=1", "log_every=5",
                 f"checkpoint_every={max(50, steps // 4)}", f"seed={cfg.seed}"]
    opts = FitOptions(data=str(data), out=str(run), init=str(init) if init else None, resume=resume, overwrite=not resume,
                      device="auto", progress=cfg.progress, max_time=max(30.0, seconds))
    last = fit(load_config(config, overrides), opts)
    done.write_text(json.dumps({"steps": read_checkpoint(last)["global_step"]}))
    return last


def _curves(runs: dict[str, Path], path: Path, batch_size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.2))
    for ax, (title, run) in zip(np.atleast_1d(axes), runs.items()):
        steps, losses, top_steps, top1 = [], [], [], []
        for f in sorted((run / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])):
            with open(f) as fh:
                for row in csv.DictReader(fh):
                    if row.get("train/loss"):
                        steps.append(int(row["step"]))
                        losses.append(float(row["train/loss"]))
                    if row.get("train/top1"):
                        top_steps.append(int(row["step"]))
                        top1.append(float(row["train/top1"]))
        ax.plot(steps, losses, lw=1.2)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
        if top1:  # learning, not only a falling loss: in-batch matching against chance
            ax2 = ax.twinx()
            ax2.plot(top_steps, np.convolve(top1, np.ones(5) / 5, mode="same"), color="tab:orange", lw=1.2)
            ax2.axhline(1.0 / batch_size, color="tab:orange", ls=":", lw=1)
            ax2.set_ylabel("in-batch top-1 (dotted: chance)", color="tab:orange")
            ax2.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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


def run_demo(cfg: DemoConfig) -> dict:
    """Run every stage; returns the summary (also written to OUT/summary.json)."""
    from .data.multitrack import load_song, read_folder
    from .data.synth import synthesize_corpus

    started = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = cfg.minutes * 60.0
    train_dir, test_dir = out / "data" / "train", out / "data" / "test"

    with _Stage(cfg, "1/5 synthetic corpus (FluidSynth)"):
        synthesize_corpus(train_dir, cfg.train_songs, cfg.seconds, seed=cfg.seed, jobs=cfg.jobs, exclude=cfg.held_out,
                          progress=cfg.progress)
        synthesize_corpus(test_dir, cfg.test_songs, cfg.seconds, seed=cfg.seed + 1, jobs=cfg.jobs, require=cfg.held_out,
                          progress=cfg.progress)
        print(f"   {cfg.train_songs} training songs without {', '.join(cfg.held_out)}; {cfg.test_songs} held-out songs with them")

    # training gets what is left after the other stages (about 20% of the budget for evaluation, search and the report)
    left = budget - (time.time() - started)
    train_seconds = max(60.0, 0.8 * left - 30)
    runs = {"contrastive baseline (phase 1)": out / "runs" / "phase1", "full model (phase 2, FiLM)": out / "runs" / "phase2"}
    with _Stage(cfg, "2/5 training: phase 1 (contrastive) then phase 2 (JEPA, FiLM on MiniLM text embeddings)"):
        p1 = _train(cfg, "tiny_phase1", runs["contrastive baseline (phase 1)"], cfg.phase1_steps, 0.5 * train_seconds, train_dir)
        p2 = _train(cfg, "tiny", runs["full model (phase 2, FiLM)"], cfg.phase2_steps,
                    train_seconds - (time.time() - started - (budget - left)), train_dir, init=p1)

    from .evaluation.report import compare_table
    from .evaluation.retrieval import evaluate_retrieval

    songs, _ = read_folder(test_dir)
    metrics = {}
    with _Stage(cfg, "3/5 retrieval benchmark on the held-out songs (Table I protocol)"):
        for name, ckpt in (("contrastive baseline", p1), ("full model", p2)):
            for cond in ("fine", "coarse"):
                d = out / "eval" / f"{name.replace(' ', '_')}-{cond}"
                metrics[(name, cond)] = evaluate_retrieval(str(ckpt), songs, cond, d, dataset="folder", split="held-out",
                                                           cache_dir=out / "eval" / "cache", name=name, overwrite=True,
                                                           progress=cfg.progress, distance=DISTANCE)
        table = compare_table(sorted((out / "eval").glob("*-fine")) + sorted((out / "eval").glob("*-coarse")))

    from .search import StemIndex, build_index

    examples = []
    with _Stage(cfg, "4/5 stem library: index the held-out songs' stems and ask which stem fits a mix"):
        from .models import load_model

        model = load_model(p2)
        summary = build_index(test_dir, out / "index", model, checkpoint=str(p2), progress=cfg.progress)
        print("   " + summary.text().replace("\n", "\n   "))
        qdir = out / "queries"
        qdir.mkdir(exist_ok=True)
        from .audio.io import save_audio

        with StemIndex.open(out / "index", model=model) as index:
            for song, s in _pick_queries(songs, cfg.held_out):
                loaded = load_song(song, 16000)
                target = song.stems[s]
                keep = [i for i, st in enumerate(loaded.stems) if st.path != target.path]
                mix_path = qdir / f"{song.id}_without_{target.name}.wav"
                mix = loaded.audio[keep].sum(0)
                save_audio(mix_path, mix / max(1.0, float(np.abs(mix).max()) / 0.95), 16000)
                text = target.labels[-1] if target.labels else "music"
                results = index.query(str(mix_path), text, k=5)
                rows = [{"rank": r.rank, "score": round(r.score, 2), "cosine": round(r.cosine, 3), "path": r.path, "offset": r.offset,
                         "right_stem": Path(r.path).resolve() == Path(target.path).resolve(),
                         "same_song": Path(r.path).resolve().parent == Path(target.path).resolve().parent} for r in results]
                examples.append({"song": song.id, "mix": str(mix_path), "instrument": text, "truth": str(target.path),
                                 "zero_shot": any(h in " ".join(target.labels) for h in cfg.held_out), "results": rows})
                print(f"\n   Which {text!r} fits {mix_path.name}?" + ("  (zero-shot: never heard in training)" if examples[-1]["zero_shot"] else ""))
                for r in rows:
                    mark = "RIGHT STEM" if r["right_stem"] else ("same song" if r["same_song"] else "")
                    print(f"    {r['rank']}. {r['score']:+5.1f} sd  {Path(r['path']).parent.name}/{Path(r['path']).name:<28} {mark}")

    with _Stage(cfg, "5/5 report"):
        _curves(runs, out / "training_curves.png", cfg.batch_size)
        result = {"metrics": {f"{n} / {c}": {**{k: m[k] for k in ("R@1", "R@5", "R@10", "norm_rank_mean", "norm_rank_median", "top1_k64", "n_queries", "n_pool", "chance", "distance")},
                                             "pool_diagnostics": m.get("pool_diagnostics")}
                              for (n, c), m in metrics.items()},
                  "examples": examples, "timings_s": cfg.timings, "held_out": list(cfg.held_out),
                  "checkpoints": {"phase1": str(p1), "phase2": str(p2)}}
        _write_reports(out, cfg, table, metrics, examples)
    result["timings_s"]["total"] = round(time.time() - started, 1)
    (out / "summary.json").write_text(json.dumps(result, indent=1, default=str))
    _print_summary(metrics, out, result["timings_s"]["total"])
    return result


def _print_summary(metrics: dict, out: Path, total: float) -> None:
    from .evaluation.report import protocol_note

    print("\n" + "=" * 78)
    print(f"stemjepa demo: retrieval on held-out songs (percent; this run, {total / 60:.1f} min)")
    print(f"{'model':<24}{'labels':<8}{'R@1':>7}{'R@5':>7}{'R@10':>7}{'mean rank':>11}{'median rank':>13}  pool median cos")
    for (name, cond), m in metrics.items():
        pool = m.get("pool_diagnostics") or {}
        flag = "  COLLAPSED" if pool.get("collapsed") else ""
        print(f"{name:<24}{cond:<8}{m['R@1']:>7.1f}{m['R@5']:>7.1f}{m['R@10']:>7.1f}{m['norm_rank_mean']:>11.1f}"
              f"{m['norm_rank_median']:>13.1f}  {pool.get('median_cosine', float('nan')):.3f}{flag}")
    c = next(iter(metrics.values()))["chance"]
    print(f"{'chance':<32}{c['R@1']:>7.1f}{c['R@5']:>7.1f}{c['R@10']:>7.1f}{c['norm_rank_mean']:>11.1f}{c['norm_rank_median']:>13.1f}")
    print(protocol_note(next(iter(metrics.values()))))
    print(f"report: {out / 'report.html'} (and report.md)")


def _rel(path, root: Path) -> str:
    return os.path.relpath(Path(path).resolve(), root.resolve())


def _write_reports(out: Path, cfg: DemoConfig, table: str, metrics: dict, examples: list) -> None:
    from .evaluation.report import protocol_note

    fig2 = out / "eval" / "full_model-fine" / "fig2.png"
    shutil.copyfile(fig2, out / "fig2_full_model_fine.png")
    md = ["# stemjepa demo report", "",
          f"Held-out songs: {cfg.test_songs} (instruments never heard in training: {', '.join(cfg.held_out)}); "
          f"training songs: {cfg.train_songs}, {cfg.seconds:.0f} s each.", "",
          "## Retrieval (Table I protocol, percent)", "", table, "",
          "## Instrument analysis of the full model (fine labels, Fig. 2)", "", "![fig2](fig2_full_model_fine.png)", "",
          "## Training curves", "", "![curves](training_curves.png)", "", "## Example queries", ""]
    for ex in examples:
        md.append(f"- `{Path(ex['mix']).name}` as **{ex['instrument']}**" + (" (zero-shot)" if ex["zero_shot"] else "") + ": "
                  + ", ".join(f"{r['rank']}. {Path(r['path']).parent.name}/{Path(r['path']).name}"
                              + (" (right stem)" if r["right_stem"] else "") for r in ex["results"]))
    md += ["", "## Timings (s)", "", "| stage | seconds |", "|---|---|"] + [f"| {k} | {v} |" for k, v in cfg.timings.items()]
    (out / "report.md").write_text("\n".join(md) + "\n")

    def cell(value) -> str:
        return "-" if value is None else f"{value:.1f}"

    rows = "".join(f"<tr><td>{html.escape(n)}</td><td>{c}</td>"
                   + "".join(f"<td>{cell(m.get(k))}</td>" for k in ("R@1", "R@5", "R@10", "norm_rank_mean", "norm_rank_median", "top1_k64"))
                   + f"<td>{m['n_queries']}</td><td>{(m.get('pool_diagnostics') or {}).get('median_cosine', float('nan')):.3f}"
                   + (" COLLAPSED" if (m.get("pool_diagnostics") or {}).get("collapsed") else "") + "</td></tr>"
                   for (n, c), m in metrics.items())
    chance = next(iter(metrics.values()))["chance"]
    rows += ("<tr><td><i>chance</i></td><td></td>" + "".join(f"<td>{cell(chance.get(k))}</td>" for k in
             ("R@1", "R@5", "R@10", "norm_rank_mean", "norm_rank_median")) + "<td></td><td></td><td></td></tr>")
    players = []
    for ex in examples:
        items = [f"<p><b>Query mix</b> {html.escape(Path(ex['mix']).name)}, instrument <i>{html.escape(ex['instrument'])}</i>"
                 + (" <span class='z'>zero-shot</span>" if ex["zero_shot"] else "")
                 + f"<br><audio controls src='{_rel(ex['mix'], out)}'></audio></p>",
                 f"<p>True stem: {html.escape(Path(ex['truth']).parent.name + '/' + Path(ex['truth']).name)}<br>"
                 f"<audio controls src='{_rel(ex['truth'], out)}'></audio></p><ol>"]
        for r in ex["results"][:3]:
            tag = " <b>(right stem)</b>" if r["right_stem"] else (" (same song)" if r["same_song"] else "")
            items.append(f"<li>{html.escape(Path(r['path']).parent.name + '/' + Path(r['path']).name)} score {r['score']:+.1f} sd "
                         f"(cosine {r['cosine']:.3f}){tag}"
                         f"<br><audio controls src='{_rel(r['path'], out)}'></audio></li>")
        players.append("<div class='ex'>" + "".join(items) + "</ol></div>")
    timings = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in cfg.timings.items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>stemjepa demo</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
td:first-child,td:nth-child(2){{text-align:left}}.ex{{border:1px solid #ddd;padding:0 1em;margin:1em 0}}.z{{background:#fd8;padding:0 4px}}</style></head><body>
<h1>stemjepa demo</h1>
<p>{cfg.train_songs} synthetic training songs without <i>{html.escape(', '.join(cfg.held_out))}</i>; {cfg.test_songs} held-out songs
that contain them. Metrics measured by this run on the held-out songs (percent; ranks normalised by the pool size).</p>
<table><tr><th>model</th><th>labels</th><th>R@1</th><th>R@5</th><th>R@10</th><th>mean rank</th><th>median rank</th><th>top-1 of 64</th><th>queries</th><th>pool median cosine</th></tr>{rows}</table>
<p>{html.escape(protocol_note(next(iter(metrics.values()))))}</p>
<h2>Instrument analysis (full model, fine labels, as Fig. 2)</h2><img src="fig2_full_model_fine.png" style="max-width:100%">
<h2>Training curves</h2><img src="training_curves.png" style="max-width:100%">
<h2>Which stem fits this mix?</h2>{''.join(players)}
<h2>Timings (s)</h2><table>{timings}</table></body></html>"""
    (out / "report.html").write_text(page)
