"""Train the built-in model: the exact, resumable reproduction of `src/stemjepa/weights/<name>.safetensors`.

Stages (each reused when re-run with the same settings; a changed setting redoes that stage and the ones after it):
  1. render a built-in corpus with `stemjepa.data.synth`: every instrument of the palette (95 General-MIDI instruments in
     10 categories; drum kits written whole or split into kick / snare / toms / hi-hat / cymbals stems, chosen per song by
     the generator), once per installed General-MIDI soundfont (TimGM6mb from pretty_midi, plus FluidR3_GM and MuseScore
     General where Debian's `fluid-soundfont-gm` / `musescore-general-soundfont-small` are installed), training songs and
     held-out songs rendered with different seeds;
  2. phase 1 (`tiny_phase1`, contrastive) on the training songs;
  3. phase 2 (`tiny`, JEPA with FiLM on MiniLM text embeddings) initialised from phase 1 (`--init`);
  4. held-out retrieval (Table I protocol, fine labels) ranked by cosine (what the stem index uses) and by the paper's L2
     distance, with chance, for the phase-2 model and, as a reference, the phase-1 model;
  5. the slim export into `src/stemjepa/weights/<name>.safetensors` (replacing it), its card `<name>.json` with the
     measured figures, the alias `default` -> <name> (unless --no-alias), and docs/MODEL_CARD.md.

Usage (the built-in model; the numbers of its card come from this command):
  python benchmarks/train_default.py --out runs/default
  python benchmarks/train_default.py --out runs/default --train-songs 48 --test-songs 8 --seconds 20 --p1-steps 60 --p2-steps 60
  python benchmarks/train_default.py ... --p1 optim.lr=1e-3 --p2 data.batch_size=32     # config overrides
Run it under `nice -n 19` on a shared machine. Renders, caches and runs live under --out (renders are shared between runs
with different song counts: a bigger run renders only the songs it lacks).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

DEFAULT_NAME = "stemjepa-tiny-synth-v1"
TRAIN_SEED = 1000   # part i (soundfont i) of the training songs: seed TRAIN_SEED + i
TEST_SEED = 2000    # part i of the held-out songs: seed TEST_SEED + i (never a training seed)
SOUNDFONT_DIRS = ("/usr/share/sounds/sf2", "/usr/share/sounds/sf3", "/usr/share/soundfonts")
KIT_PIECES = {"kick drum", "snare drum", "toms", "hi-hat", "cymbals"}
MAX_MB = 25.0
METRICS = ("R@1", "R@5", "R@10", "norm_rank_median", "norm_rank_mean")
LIMITS = (
    "Trained on General-MIDI renders only (synthetic songs rendered from MIDI with FluidSynth and a few General-MIDI "
    "soundfonts): no real recordings, no vocals other than GM choir / voice patches, no mixing or mastering effects. "
    "Its figures are measured on held-out songs of the same synthetic kind and say little about real music. It is a "
    "tiny model (3 transformer layers of 128 dimensions, 4 s chunks) trained for minutes on a CPU, not the paper's "
    "ViT-Base trained for days. For real recordings train on real multitracks with `stemjepa fit` (see README, Training) "
    "and use that checkpoint with --model.")


# ----------------------------------------------------------------------------------------------- helpers
def log(msg: str) -> None:
    print(f"[train_default {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data) -> None:
    from stemjepa.fsutil import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1, default=str) + "\n")


def discover_soundfonts() -> list[Path]:
    """Distinct General-MIDI soundfonts installed here: pretty_midi's TimGM6mb first, then those of Debian's packages.

    Alternatives links (default-GM.sf2 ...) are resolved, and a second copy of the same soundfont (same name, or same
    size) is skipped."""
    from stemjepa.data.synth import default_soundfont

    found, seen_names, seen_sizes = [], set(), set()
    candidates = [default_soundfont()]
    for d in SOUNDFONT_DIRS:
        if Path(d).is_dir():
            candidates += sorted(p for p in Path(d).iterdir() if p.suffix.lower() in (".sf2", ".sf3"))
    for p in candidates:
        try:
            real = p.resolve(strict=True)
            size = real.stat().st_size
        except OSError:
            continue
        key = real.stem.lower().replace("_lite", "").replace("-lite", "")
        if key in seen_names or size in seen_sizes or real in found:
            continue
        seen_names.add(key)
        seen_sizes.add(size)
        found.append(real)
    return found


def split_counts(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# ----------------------------------------------------------------------------------------------- 1. corpus
def timings_file(out: Path) -> Path:
    return out / "data" / "timings.json"


def add_timing(out: Path, key: str, seconds: float, items: int = 0) -> None:
    t = read_json(timings_file(out)) or {}
    entry = t.setdefault(key, {"seconds": 0.0, "items": 0})
    entry["seconds"] = round(entry["seconds"] + seconds, 1)
    entry["items"] += items
    write_json(timings_file(out), t)


def measured(out: Path, folders: list[str], songs: int) -> dict:
    """Recorded time of the work behind `folders` ({"seconds", "songs_timed", "songs"}): renders done by an earlier
    version of this script, or by hand, were not timed."""
    t = read_json(timings_file(out)) or {}
    return {"seconds": round(sum(t[f]["seconds"] for f in folders if f in t), 1),
            "songs_timed": sum(t[f]["items"] for f in folders if f in t), "songs": songs}


def render_part(out: Path, kind: str, index: int, sf2: Path, n_songs: int, seconds: float, seed: int, jobs: int,
                **synth) -> list[Path]:
    """Songs of one soundfont; `synth` passes further settings to synthesize_corpus (exclude, require, production), and
    a folder rendered with other settings is never reused (their digest is part of its name)."""
    from stemjepa.data.synth import synthesize_corpus

    synth = {k: v for k, v in synth.items() if v not in (None, (), [], "none")}
    extra = f"-{digest(synth)}" if synth else ""
    folder = out / "data" / "parts" / f"{kind}-{slug(sf2.stem)}-seed{seed}-{seconds:g}s{extra}"
    if n_songs < 1:
        return []
    summary: dict = {}
    t0 = time.time()
    done = synthesize_corpus(folder, n_songs, seconds=seconds, seed=seed, jobs=jobs, soundfont=str(sf2), progress=True,
                             summary=summary, **synth)
    if summary.get("written"):  # the time spent on this folder's renders, over every run of the script
        add_timing(out, folder.name, time.time() - t0, summary["written"])
    if summary.get("failed"):
        log(f"{folder.name}: {len(summary['failed'])} songs failed to render and are left out "
            f"(e.g. song {summary['failed'][0][0]}: {summary['failed'][0][1]})")
    return done[:n_songs]


def merge(out: Path, kind: str, parts: list[tuple[Path, list[Path]]], spec: dict) -> Path:
    """One multitrack folder of links `<soundfont>-song_NNNNN` -> the rendered song folders (its cache lives inside)."""
    folder = out / "data" / f"{kind}-{digest(spec)}"
    folder.mkdir(parents=True, exist_ok=True)
    for sf2, songs in parts:
        for song in songs:
            link = folder / f"{slug(sf2.stem)}-{song.name}"
            if not link.exists():
                link.symlink_to(os.path.relpath(song, folder))
    write_json(folder.parent / f"{folder.name}.spec.json", spec)
    return folder


def corpus_stats(folder: Path) -> dict:
    """What a merged corpus holds: songs, stems, hours, instruments, categories, split / whole drum kits."""
    from stemjepa.data.multitrack import read_folder

    songs, _ = read_folder(folder)
    instruments, categories, split, whole, seconds, n_stems = set(), set(), 0, 0, 0.0, 0
    for song in songs:
        names = [s.labels[-1].lower() for s in song.stems if s.labels]
        instruments.update(names)
        categories.update(s.labels[0].lower() for s in song.stems if s.labels)
        kit_stems = [s for s in song.stems if s.labels and s.labels[0].lower() == "drums"]
        if any(s.labels[-1].lower() in KIT_PIECES for s in kit_stems):
            split += 1
        elif kit_stems:
            whole += 1
        seconds += float(song.meta.get("seconds", 0.0) or 0.0)
        n_stems += len(song.stems)
    return {"songs": len(songs), "stems": n_stems, "hours": round(seconds / 3600, 2), "instruments": len(instruments),
            "categories": sorted(categories), "songs_with_split_kit": split, "songs_with_whole_kit": whole}


# ----------------------------------------------------------------------------------------------- 2-3. training
def train_stage(run: Path, config: str, steps: int, overrides: list[str], data: Path, init: Path | None, seed: int,
                device: str, spec_extra: dict, max_minutes: float | None = None) -> tuple[Path, dict]:
    """One phase through the package's stage runner (stemjepa.training.stage: reused when its stage.json records the same
    settings, resumed when interrupted); `max_minutes` is a time box, and part of the settings."""
    from stemjepa.training.stage import train_stage as run_stage

    extra = {**spec_extra, **({"max_minutes": max_minutes} if max_minutes else {})}
    stage = run_stage(run, config, [f"max_steps={steps}", f"seed={seed}", "data.num_workers=1", *overrides], data, init,
                      device=device, max_minutes=max_minutes, extra=extra, log=log)
    return stage.checkpoint, stage.record


# ----------------------------------------------------------------------------------------------- 4. evaluation
def evaluate(ckpt: Path, test: Path, out: Path, device: str) -> dict:
    """Held-out retrieval by cosine and L2 (fine labels), reused when the model and the songs are unchanged."""
    from stemjepa.data.multitrack import read_folder
    from stemjepa.evaluation.retrieval import RetrievalProtocol, evaluate_retrieval
    from stemjepa.models import load_model

    model = load_model(str(ckpt), device=None if device == "auto" else device)
    key = {"model_id": model.model_id, "test": str(test), "songs": sorted(p.name for p in test.iterdir() if p.is_dir())}
    done = read_json(out / "result.json")
    if done and done.get("key") == key:
        return done
    songs, _ = read_folder(test)
    result: dict = {"key": key}
    for distance in ("cosine", "l2"):
        m = evaluate_retrieval(model, songs, RetrievalProtocol(split="held-out", distance=distance), out / distance,
                               cache_dir=out / "cache", overwrite=True, progress=False)
        result[distance] = {k: round(float(m[k]), 2) for k in METRICS}
        result["chance"] = {k: round(float(m["chance"][k]), 2) for k in METRICS if k in m["chance"]}
        result.update(n_queries=m["n_queries"], n_pool=m["n_pool"], n_songs=m["n_songs"],
                      pool_diagnostics={k: m["pool_diagnostics"].get(k)
                                        for k in ("median_cosine", "spread", "rankme", "collapsed")},
                      training_overlap=m["training_overlap"].get("n_songs"))
    write_json(out / "result.json", result)
    return result


def generalization_figures(args, ckpt: Path, out: Path, device: str) -> dict:
    """The model on the pools of benchmarks/generalization.py (held-out soundfont families, instruments, production)."""
    import generalization as g

    ns = argparse.Namespace(test_songs=32, test_seconds=20.0, production="full" if g.production_available() else "none",
                            jobs=args.jobs, test_families=list(g.DEFAULT_TEST_FAMILIES))
    gen_out = out / "generalization"
    pools = g.pools(gen_out, ns)
    per_pool = {fam: g.evaluate_model(str(ckpt), pool, gen_out / "eval" / digest([str(ckpt), str(pool)]), device)
                for fam, pool in pools.items()}
    result = {"test_families": list(pools), "held_out_instruments": list(g.HELD_OUT_INSTRUMENTS),
              "production": ns.production, "pools": {f: {k: r[k] for k in ("cosine", "l2", "chance", "n_pool", "n_queries")}
                                                    for f, r in per_pool.items()}}
    result["all"] = g.mean_row(list(per_pool.values()))
    log(f"generalisation (cosine, all pools): {result['all']['cosine']}, chance {result['all']['chance']}")
    return result


# ----------------------------------------------------------------------------------------------- 5. export and card
def machine() -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "torch": torch.__version__, "python": platform.python_version()}


def fmt_row(name: str, r: dict) -> str:
    return f"| {name} | " + " | ".join(f"{r[k]:.1f}" for k in ("R@1", "R@5", "R@10", "norm_rank_median")) + " |"


MODEL_CARD = """# Model card: `{name}` (built-in model, alias `{alias}`)

Written by {writer} on {created}; every figure below was measured by that run. Regenerate with:

```
{command}
```

## What it is

The model `stemjepa index`, `query`, `embed`, `eval` and `serve` use when no `--model` is given (`stemjepa models` lists
it; `stemjepa.load_model()` in Python, `torch.hub.load(repo_dir, "stemjepa", source="local")`). A {size} Stem-JEPA:
log-mel front-end, ViT encoder ({enc}), its EMA target encoder (embeds library stems), a {pred_layers}-layer token-wise
MLP predictor with FiLM conditioning on MiniLM text embeddings (free-text instruments; {n_labels} training labels cached
in the file), {params:,} parameters. File: `src/stemjepa/weights/{file}`, {mb:.1f} MB (safetensors, float32, no pickle),
model id `{model_id}`.

## Training data

{corpus_text}

## Recipe

1. {phase1_text}
2. Phase 2, config `{p2_config}` (JEPA, EMA target encoder, FiLM on MiniLM), initialised from {p2_init} (`--init`):
   {p2_steps} steps, batch {p2_batch}, {p2_seconds:.0f} s{p2_over}; last logged in-batch top-1 {p2_top1} (chance {p2_chance}).

Training time: {train_minutes:.1f} min ({device}; {cpu}, {cores} cores{gpu}; 1-minute load average {load} at the start and
end of the phases: above the core count means other jobs shared the machine and the times are longer than on an idle one).
{render_text}

## Measured figures

Held-out songs: {n_test} songs rendered with seeds never used for training ({test_desc}), pool of {n_pool} stems,
{n_queries} queries (each stem of each song, queried with the mix of the song's other stems and its fine label), percent
(one query is {one_query:.1f} points):

| model | R@1 | R@5 | R@10 | median rank |
|---|---|---|---|---|
{rows}

Ranked by cosine (what the stem index uses) unless marked L2 (the paper's distance). Pool median pairwise cosine
{median_cos}, RankMe {rankme} (a collapsed model has a median cosine near 1). The held-out songs use the same instruments
and soundfonts as training: this measures retrieval on unseen songs, not on unseen instruments or real recordings.{generalization}

## Limits

{limits}
"""


def write_outputs(args, model, card: dict, weights: Path) -> None:
    from stemjepa.fsutil import atomic_write_text
    from stemjepa.models.export import export_model
    from stemjepa.models.registry import ALIASES_FILE

    weights.mkdir(parents=True, exist_ok=True)
    target = weights / f"{args.name}.safetensors"
    tmp = weights / f".{args.name}.candidate.safetensors"
    export_model(model, tmp, force=True, source=card["training"]["phase2"]["checkpoint"],
                 extra_metadata={"name": args.name, "created": card["created"]})
    mb = tmp.stat().st_size / 1e6
    if mb > args.max_mb:
        tmp.unlink()
        raise SystemExit(f"error: the export is {mb:.1f} MB, over the {args.max_mb:.0f} MB limit of a built-in model")
    os.replace(tmp, target)
    card["file"] = target.name
    card["bytes"] = target.stat().st_size
    card["sha256"] = hashlib.sha256(target.read_bytes()).hexdigest()
    write_json(weights / f"{args.name}.json", card)
    if not args.no_alias:
        aliases = read_json(weights / ALIASES_FILE) or {}
        aliases[args.alias] = args.name
        write_json(weights / ALIASES_FILE, aliases)
    if args.model_card:
        atomic_write_text(Path(args.model_card), render_card(card))


def timing_text(t: dict) -> str:
    def part(what: str, m: dict) -> str:
        if not m.get("songs_timed"):
            return f"{what}: reused from an earlier run whose time was not recorded"
        text = f"{what}: {m['seconds'] / 60:.1f} min for {m['songs_timed']} songs"
        return text + (f" ({m['songs'] - m['songs_timed']} more reused, not timed)" if m["songs"] > m["songs_timed"] else "")

    return f"{part('Rendering the corpus', t['render'])}; {part('decoding it into the training cache', t['cache'])}."


def production_phrase(corpus: dict) -> str:
    """How the corpus was produced and which instruments it leaves out, for the card."""
    text = (", each stem through a random production chain (EQ, compression, reverb and room, drive, modulation, levels "
            "and fades; `--production full`, pedalboard)") if corpus.get("production") == "full" else ""
    excluded = corpus.get("excluded_instruments") or []
    return text + (f", without {', '.join(excluded)} (held out for the generalisation benchmark)" if excluded
                   else ", every instrument of the palette allowed")


def limits_text(production: str, width: int, device: str = "cpu") -> str:
    """LIMITS as they apply to this corpus, size and training device."""
    text = LIMITS if device == "cpu" else LIMITS.replace("trained for minutes on a CPU", "trained for minutes on one GPU")
    if production == "full":
        text = text.replace("no mixing or mastering effects", "production chains of random effects (pedalboard) "
                            "instead of real mixing and mastering")
    if width > 128:
        text = text.replace("It is a tiny model (3 transformer layers of 128 dimensions, 4 s chunks)",
                            f"It is a small model ({width} dimensions, 4 s chunks)")
    return text


def generalization_text(gen: dict | None) -> str:
    """The model card's paragraph and table of the generalisation benchmark (empty when it was not measured)."""
    if not gen:
        return ""
    rows = [fmt_row(f"this model on `{fam}`", r["cosine"]) for fam, r in gen["pools"].items()]
    rows.append(fmt_row("this model, all pools", gen["all"]["cosine"]))
    rows.append(fmt_row("this model, all pools, L2", gen["all"]["l2"]))
    rows.append(fmt_row("chance", gen["all"]["chance"]))
    return ("\n\n### Generalisation (`benchmarks/generalization.py`)\n\nSongs rendered with soundfont families never used "
            f"in training ({', '.join(gen['test_families'])}), each holding at least one instrument kept out of training "
            f"({', '.join(gen['held_out_instruments'])}), with production chains of unseen seeds ({gen['production']}); "
            "fine labels, cosine unless marked L2:\n\n| pool | R@1 | R@5 | R@10 | median rank |\n|---|---|---|---|---|\n"
            + "\n".join(rows))


def _round(x, digits: int):
    return round(x, digits) if isinstance(x, (int, float)) else x


def phase1_text(p1: dict) -> str:
    """The recipe's first line: phase 1 as trained, or the model a fine-tuning run (`--init`) started from."""
    if p1.get("init"):  # init_recipe: where the init came from, for an init that is not shipped with its own card
        return (f"No phase 1: phase 2 fine-tunes the model `{p1['init']}` (its architecture, encoder, EMA target "
                f"and predictor), {p1.get('init_recipe', 'whose own recipe is on its card')}.")
    over = f", overrides {' '.join(p1['overrides'])}" if p1["overrides"] else ""
    return (f"Phase 1, config `{p1['config']}` (contrastive InfoNCE on centred embeddings): {p1['steps']} steps, batch "
            f"{p1['batch_size']},\n   {p1['seconds']:.0f} s{over}; last logged in-batch top-1 "
            f"{p1['last_logged'].get('top1', 'n/a')} (chance {1 / p1['batch_size']:.3f}).")


def render_card(card: dict) -> str:
    t, ev, arch = card["training"], card["evaluation"]["held_out"], card["architecture"]
    p1, p2 = t["phase1"], t["phase2"]
    c = t["corpus"]
    sf_lines = "\n".join(f"  - `{s['file']}` ({s['mb']:.1f} MB): {s['train_songs']} training songs, {s['test_songs']} "
                         "held-out songs" for s in c["soundfonts"])
    corpus_text = (
        f"{c['train']['songs']} synthetic songs of {c['seconds']:g} s ({c['train']['hours']} h, {c['train']['stems']} "
        f"stems) rendered from generated MIDI by `stemjepa synth` (FluidSynth){production_phrase(c)}: "
        f"{c['train']['instruments']} distinct instruments heard in {len(c['train']['categories'])} categories "
        f"({', '.join(c['train']['categories'])}); drum kits written as one stem in {c['train']['songs_with_whole_kit']} "
        f"songs and split into kick / snare / toms / hi-hat / cymbals stems in {c['train']['songs_with_split_kit']}. "
        f"Soundfonts (General MIDI), each rendering its own songs with its own seed:\n{sf_lines}\n\n"
        f"Training seeds {c['train_seeds']}, held-out seeds {c['test_seeds']}. No real recordings.")
    rows = [fmt_row("this model (phase 2)", ev["cosine"]), fmt_row("this model, L2", ev["l2"])]
    if card["evaluation"].get("phase1"):
        rows.append(fmt_row("phase-1 model (contrastive baseline)", card["evaluation"]["phase1"]["cosine"]))
    rows.append(fmt_row(f"chance ({ev['n_pool']} stems)", ev["chance"]))
    m = card["machine"]
    return MODEL_CARD.format(
        name=card["name"], alias=card.get("alias") or "-", created=card["created"], command=t["command"],
        writer=card.get("writer", "`benchmarks/train_default.py`"), size="tiny" if arch["embed_dim"] <= 128 else "small",
        enc=f"{arch['embed_dim']} d, {arch['depth']} layers, {arch['heads']} heads, {arch['chunk_seconds']:g} s chunks",
        pred_layers=arch["predictor_layers"], n_labels=arch["n_text_labels"], params=arch["parameters"], file=card["file"],
        mb=card["bytes"] / 1e6, model_id=card["model_id"], corpus_text=corpus_text,
        phase1_text=phase1_text(p1), p2_init="phase 1" if p2.get("init", "phase 1") == "phase 1" else f"`{p2['init']}`",
        p2_config=p2["config"], p2_steps=p2["steps"], p2_batch=p2["batch_size"], p2_seconds=p2["seconds"],
        p2_over=f", overrides {' '.join(p2['overrides'])}" if p2["overrides"] else "",
        p2_top1=p2["last_logged"].get("top1", "n/a"), p2_chance=f"{1 / p2['batch_size']:.3f}",
        load=" / ".join(f"{a}-{b}" for a, b in (p1.get("load_average") or ["?", "?"], p2.get("load_average") or ["?", "?"])
                        if p1.get("steps") or (a, b) != ("?", "?")),
        one_query=100.0 / max(1, ev["n_queries"]),
        train_minutes=(p1["seconds"] + p2["seconds"]) / 60, device=t["device"], cpu=m["cpu"], cores=m["cpu_cores"],
        gpu=f", GPU {m['gpu']}" if m.get("gpu") and t["device"] != "cpu" else "",
        render_text=timing_text(t),
        n_test=ev["n_songs"], test_desc=f"{c['test']['songs']} songs of {c['test_seconds']:g} s, {c['test']['stems']} stems",
        n_pool=ev["n_pool"], n_queries=ev["n_queries"], rows="\n".join(rows),
        median_cos=_round(ev["pool_diagnostics"].get("median_cosine"), 3), rankme=_round(ev["pool_diagnostics"].get("rankme"), 1),
        limits=card["limits"], generalization=generalization_text(card["evaluation"].get("generalization")))


# ----------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/default", help="work folder (renders, caches, runs, evaluations)")
    ap.add_argument("--name", default=DEFAULT_NAME, help="versioned name of the built-in model (file and card names)")
    ap.add_argument("--alias", default="default", help="alias pointed at --name (the model used without --model)")
    ap.add_argument("--no-alias", action="store_true", help="do not point the alias at this model")
    ap.add_argument("--train-songs", type=int, default=384, help="training songs, split evenly over the soundfonts")
    ap.add_argument("--test-songs", type=int, default=24, help="held-out songs, split evenly over the soundfonts")
    ap.add_argument("--seconds", type=float, default=30.0, help="length of a training song")
    ap.add_argument("--test-seconds", type=float, default=16.0, help="length of a held-out song")
    ap.add_argument("--p1-steps", type=int, default=None, help="phase-1 steps (default: the config's max_steps)")
    ap.add_argument("--p2-steps", type=int, default=None, help="phase-2 steps (default: the config's max_steps)")
    ap.add_argument("--p1-config", default="tiny_phase1")
    ap.add_argument("--p2-config", default="tiny")
    ap.add_argument("--p1", nargs="*", default=[], metavar="KEY=VALUE", help="phase-1 config overrides")
    ap.add_argument("--p2", nargs="*", default=[], metavar="KEY=VALUE", help="phase-2 config overrides")
    ap.add_argument("--seed", type=int, default=0, help="training seed (both phases)")
    ap.add_argument("--soundfonts", nargs="+", default=None, metavar="SF2",
                    help="soundfonts to render with (default: every distinct General-MIDI soundfont installed)")
    ap.add_argument("--production", default="none", choices=["none", "full"],
                    help="per-stem production chains of the rendered songs (`stemjepa synth --production`; full needs "
                         "pedalboard)")
    ap.add_argument("--exclude-instruments", nargs="*", default=[], metavar="NAME",
                    help="instruments kept out of every training and held-out song (e.g. those of the generalisation "
                         "benchmark, so that its figures stay honest)")
    ap.add_argument("--init", default=None, metavar="MODEL",
                    help="fine-tune this model (a built-in name or a file) instead of training from scratch: no phase 1, "
                         "phase 2 takes its architecture and continues its weights (`fit --init`)")
    ap.add_argument("--p1-minutes", type=float, default=None, help="time box of phase 1 (stops before its steps)")
    ap.add_argument("--p2-minutes", type=float, default=None, help="time box of phase 2")
    ap.add_argument("--generalization", action="store_true",
                    help="also measure the model on the pools of benchmarks/generalization.py (held-out soundfont "
                         "families, instruments and production) and write the figures in the card")
    ap.add_argument("--jobs", type=int, default=2, help="rendering processes")
    ap.add_argument("--max-mb", type=float, default=MAX_MB,
                    help=f"refuse an export larger than this (default {MAX_MB:g} MB: the repository ships the weights)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="training device")
    ap.add_argument("--weights-dir", default=str(REPO / "src" / "stemjepa" / "weights"),
                    help="where the built-in model is written (the package's weights folder)")
    ap.add_argument("--model-card", default=str(REPO / "docs" / "MODEL_CARD.md"),
                    help="Markdown model card to write ('' to skip)")
    args = ap.parse_args(argv)
    from stemjepa.models.registry import NAME_RE

    if not NAME_RE.match(args.name) or not NAME_RE.match(args.alias):
        ap.error("--name and --alias: lower-case letters, digits, '.', '_' and '-' only")
    if args.train_songs < 2 or args.test_songs < 1:
        ap.error("--train-songs must be at least 2 and --test-songs at least 1")
    command = "python benchmarks/train_default.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))

    from stemjepa.config import load_config
    from stemjepa.models.encoder import encoder_dims

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sfs = [Path(s).resolve() for s in args.soundfonts] if args.soundfonts else discover_soundfonts()
    log(f"soundfonts: {', '.join(p.name for p in sfs)}")

    # 1. corpus
    t0 = time.time()
    n_train, n_test = split_counts(args.train_songs, len(sfs)), split_counts(args.test_songs, len(sfs))
    train_parts, test_parts, sf_info = [], [], []
    synth = {"exclude": tuple(args.exclude_instruments), "production": args.production}
    for i, sf2 in enumerate(sfs):
        jobs = max(1, min(args.jobs, n_train[i]))
        train_parts.append((sf2, render_part(out, "train", i, sf2, n_train[i], args.seconds, TRAIN_SEED + i, jobs,
                                             **synth)))
        test_parts.append((sf2, render_part(out, "test", i, sf2, n_test[i], args.test_seconds, TEST_SEED + i,
                                            max(1, min(args.jobs, n_test[i])), **synth)))
        sf_info.append({"file": sf2.name, "mb": round(sf2.stat().st_size / 1e6, 1), "train_songs": len(train_parts[-1][1]),
                        "test_songs": len(test_parts[-1][1]), "train_seed": TRAIN_SEED + i, "test_seed": TEST_SEED + i})
    render_s = time.time() - t0
    train_spec = {"kind": "train", "seconds": args.seconds, "parts": [(str(s), len(p)) for s, p in train_parts]}
    test_spec = {"kind": "test", "seconds": args.test_seconds, "parts": [(str(s), len(p)) for s, p in test_parts]}
    train_dir, test_dir = merge(out, "train", train_parts, train_spec), merge(out, "test", test_parts, test_spec)
    train_stats, test_stats = corpus_stats(train_dir), corpus_stats(test_dir)
    log(f"corpus: train {train_stats}, held-out {test_stats} ({render_s:.0f} s)")
    from stemjepa.training.fit import prepare_folder_cache

    t0 = time.time()  # decoded once into the folder's training cache here, so the training times below are training only
    prepare_folder_cache(train_dir, train_dir / ".stemjepa_cache", load_config(args.p1_config).model.frontend.sample_rate,
                         progress=False)
    if not (read_json(timings_file(out)) or {}).get(f"cache:{train_dir.name}"):
        add_timing(out, f"cache:{train_dir.name}", time.time() - t0, train_stats["songs"])
    part_names = [f.parent.name for _, songs in train_parts + test_parts for f in songs[:1]]
    render_time = measured(out, part_names, train_stats["songs"] + test_stats["songs"])
    cache_time = measured(out, [f"cache:{train_dir.name}"], train_stats["songs"])

    # 2-3. training
    device = args.device
    p1_steps = args.p1_steps or load_config(args.p1_config).max_steps
    p2_steps = args.p2_steps or load_config(args.p2_config).max_steps
    if args.init:  # fine-tuning: no phase 1; phase 2 in the init's architecture, from its weights
        from stemjepa.training.init_from import architecture_overrides, read_init

        p1_ckpt, p1 = None, {"init": args.init, "seconds": 0.0, "steps": 0}
        p2_over = architecture_overrides(read_init(args.init).model_config) + args.p2
        p2_ckpt, p2 = train_stage(out / "runs" / "phase2", args.p2_config, p2_steps, p2_over, train_dir, args.init,
                                  args.seed, device, {}, args.p2_minutes)
    else:
        p1_ckpt, p1 = train_stage(out / "runs" / "phase1", args.p1_config, p1_steps, args.p1, train_dir, None, args.seed,
                                  device, {}, args.p1_minutes)
        p2_ckpt, p2 = train_stage(out / "runs" / "phase2", args.p2_config, p2_steps, args.p2, train_dir, p1_ckpt,
                                  args.seed, device, {"phase1": digest(p1["spec"]), "phase1_seconds": p1["seconds"]},
                                  args.p2_minutes)

    # 4. evaluation
    eval_device = "cpu" if device == "cpu" else "auto"
    ev2 = evaluate(p2_ckpt, test_dir, out / "eval" / "phase2", eval_device)
    ev1 = evaluate(p1_ckpt, test_dir, out / "eval" / "phase1", eval_device) if p1_ckpt else None
    log(f"held-out (cosine): phase 2 {ev2['cosine']}, phase 1 {ev1 and ev1['cosine']}, chance {ev2['chance']}")
    gen = generalization_figures(args, p2_ckpt, out, eval_device) if args.generalization else None

    # 5. export, card, alias, MODEL_CARD.md
    from stemjepa import __version__
    from stemjepa.models import load_model

    model = load_model(str(p2_ckpt), device="cpu")
    mcfg = model.config
    d, depth, heads = encoder_dims(mcfg.encoder)
    labels = list(model.conditioner.labels) if model.conditioning_kind == "text" else []
    created = time.strftime("%Y-%m-%d %H:%M")
    res = ev2["cosine"]
    card = {
        "name": args.name,
        "alias": None if args.no_alias else args.alias,
        "created": created,
        "stemjepa_version": __version__,
        "model_id": str(model.model_id),
        "summary": (f"{'tiny' if d <= 128 else 'small'} Stem-JEPA (phase 2, FiLM on MiniLM text) "
                    + (f"{args.init} fine-tuned on " if args.init else "trained on ") +
                    f"{train_stats['songs']} General-MIDI "
                    f"synthetic songs ({train_stats['hours']} h, {len(sfs)} soundfont{'s' if len(sfs) > 1 else ''}); "
                    f"held-out R@10 {res['R@10']:.1f}% (chance {ev2['chance']['R@10']:.1f}%)"),
        "architecture": {"phase": model.phase, "embed_dim": d, "depth": depth, "heads": heads,
                         "chunk_seconds": mcfg.encoder.chunk_seconds, "patch_size": mcfg.encoder.patch_size,
                         "predictor_layers": mcfg.predictor.num_layers, "predictor_hidden": mcfg.predictor.hidden_dim,
                         "predictor_conditioning": mcfg.predictor.fusion,
                         "conditioning": f"{mcfg.conditioning.kind} ({mcfg.conditioning.text_backend})",
                         "center_embeddings": mcfg.center_embeddings, "n_text_labels": len(labels),
                         "parameters": sum(p.numel() for p in model.parameters()),
                         "sample_rate": mcfg.frontend.sample_rate},
        "training": {
            "command": command,
            "device": device if device != "auto" else ("cuda" if machine()["gpu"] else "cpu"),
            "render": render_time,
            "cache": cache_time,
            "train_seconds": round(p1["seconds"] + p2["seconds"], 1),
            "corpus_summary": (f"{train_stats['songs']} synthetic General-MIDI songs of {args.seconds:g} s, "
                               f"{train_stats['instruments']} instruments, drum kits whole and split, soundfonts "
                               + ", ".join(p.name for p in sfs)),
            "corpus": {"seconds": args.seconds, "test_seconds": args.test_seconds, "soundfonts": sf_info,
                       "train_seeds": [s["train_seed"] for s in sf_info], "test_seeds": [s["test_seed"] for s in sf_info],
                       "train": train_stats, "test": test_stats, "generator": "stemjepa synth (stemjepa.data.synth)",
                       "production": args.production, "excluded_instruments": list(args.exclude_instruments)},
            "phase1": p1 if args.init else {
                "config": args.p1_config, "steps": p1.get("steps_reached") or p1_steps, "max_steps": p1_steps,
                "overrides": args.p1, "seconds": p1["seconds"], "batch_size": p1["batch_size"], "lr": p1["lr"],
                "last_logged": p1["last_logged"], "load_average": p1.get("load_average"), "checkpoint": str(p1_ckpt)},
            "phase2": {"config": args.p2_config, "steps": p2.get("steps_reached") or p2_steps, "max_steps": p2_steps,
                       "overrides": args.p2, "seconds": p2["seconds"],
                       "batch_size": p2["batch_size"], "lr": p2["lr"], "last_logged": p2["last_logged"],
                       "load_average": p2.get("load_average"), "checkpoint": str(p2_ckpt),
                       "init": args.init or "phase 1"},
        },
        "evaluation": {
            "protocol": "Table I protocol on held-out songs: every non-silent stem is a query (the mix of the other stems "
                        "of its song, conditioned on its fine label) against the pool of all stems; percent; "
                        "norm_rank = rank / pool size",
            "held_out": {k: ev2[k] for k in ("cosine", "l2", "chance", "n_songs", "n_pool", "n_queries",
                                             "pool_diagnostics", "training_overlap")},
            "phase1": {"cosine": ev1["cosine"], "l2": ev1["l2"]} if ev1 else None,
            "generalization": gen,
        },
        "machine": machine(),
        "limits": limits_text(args.production, d, "cpu" if device == "cpu" or not machine()["gpu"] else "cuda"),
    }
    write_outputs(args, model, card, Path(args.weights_dir))
    write_json(out / "card.json", card)
    log(f"wrote {Path(args.weights_dir) / (args.name + '.safetensors')} ({card['bytes'] / 1e6:.1f} MB) and its card"
        + (f"; {args.model_card}" if args.model_card else ""))
    print(json.dumps({"name": args.name, "held_out_cosine": ev2["cosine"], "chance": ev2["chance"],
                      "train_seconds": card["training"]["train_seconds"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
