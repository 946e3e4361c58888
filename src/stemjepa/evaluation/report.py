"""Table-I-style Markdown: one run's row (report.md) and the side-by-side table of `stemjepa eval compare`.

Table I has one row per model and one column group (R@1, R@5, R@10, mean and median normalised rank, in percent) per
benchmark (MUSDB18; MoisesDB fine; MoisesDB coarse). `compare_table` rebuilds that layout from run folders: rows are the
runs' names, column groups their (dataset, split, label level). Every table carries a chance row (a random ranking of the
same pool) and, under it, the protocol (|pool|, distance, reference encoder) and the pool's collapse diagnostics.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from ..fsutil import atomic_write_text, read_json
from .metrics import METRIC_COLUMNS

EXTRA_COLUMNS = {"top1_k64": "top-1 K=64", "n_queries": "queries", "n_pool": "pool", "seconds": "time (s)"}


def fmt(value) -> str:
    """One decimal like Table I; two for values under 1 (small normalised ranks); '-' when missing."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        return f"{value:.1f}" if abs(value) >= 1 or value == 0 else f"{value:.2f}"
    return str(value)


def upgrade_record(m: dict) -> dict:
    """A metrics.json as this version writes it: files from before the rename call the label level "conditioning", and
    files from before the protocol object recorded no silence threshold (it was always -60 dBFS)."""
    m = dict(m)
    if "label_level" not in m and "conditioning" in m:
        m["label_level"] = m.pop("conditioning")
    m.setdefault("silence_db", -60.0)
    return m


def benchmark_name(m: dict) -> str:
    split = m.get("split")
    variant = "".join(f" [{v}]" for v in (m.get("distance") == "cosine" and "cosine",
                                          m.get("reference_encoder") == "context" and "context refs") if v)
    return f"{m.get('dataset')}{'' if split in (None, 'all') else f' {split}'} {m.get('label_level')}{variant}"


def table_header(extra=()) -> str:
    """The header and rule lines of a one-benchmark table (`table_row`, `chance_row`)."""
    header = ["model"] + [h for _, h in METRIC_COLUMNS] + [EXTRA_COLUMNS[k] for k in extra]
    return "| " + " | ".join(header) + " |\n" + "|" + "---|" * len(header)


def table_row(m: dict, extra=()) -> str:
    cells = ([m.get("name") or m.get("model_id", "?")] + [fmt(m.get(k)) for k, _ in METRIC_COLUMNS]
             + [fmt(m.get(k)) for k in extra])
    return "| " + " | ".join(cells) + " |"


def chance_row(m: dict, extra=()) -> str:
    """The Table-I row of a random ranking of m's pool (R@k = k / |pool|, normalised ranks about 50 %)."""
    chance = m.get("chance") or {}
    cells = [f"chance (pool of {m.get('n_pool')})"] + [fmt(chance.get(k)) for k, _ in METRIC_COLUMNS] + ["" for _ in extra]
    return "| " + " | ".join(cells) + " |"


def collapse_note(m: dict) -> str:
    """The pool's diagnostics in words, with a loud flag for a collapsed model; '' when metrics.json predates them."""
    d = m.get("pool_diagnostics") or {}
    if d.get("median_cosine") is None:
        return ""
    flag = ("COLLAPSED: the embeddings barely differ, so these scores say nothing about the stems"
            if d.get("collapsed") else "not collapsed")
    return (f"pool median pairwise cosine {d['median_cosine']:.3f}, spread {d['spread']:.3f}, RankMe {d['rankme']:.1f} "
            f"of {d['n']}: {flag}")


def reference_words(ref) -> str:
    """The reference encoder of a metrics.json in words ("encoder": a phase-1 model, which has only one)."""
    return "the model's only encoder (phase 1)" if ref == "encoder" else f"the {ref} encoder" if ref else "an unrecorded encoder"


def protocol_note(m: dict, diagnostics: bool = True, references: bool = True) -> str:
    """One paragraph stating what a metrics.json's R@k must be read against: |pool|, chance level, distance, reference
    encoder, overlap with training songs and the collapse verdict. Used beside every table (report.md, compare, demo).
    Without `references` and `diagnostics`, it holds only what every model on the same pool shares."""
    chance = m.get("chance") or {}
    parts = [f"pool of {m.get('n_pool')} stems from {m.get('n_songs')} songs"]
    if chance:
        parts.append("chance R@1 / R@5 / R@10 = " + " / ".join(fmt(chance.get(f"R@{k}")) for k in (1, 5, 10))
                     + f" %, median rank {fmt(chance.get('norm_rank_median'))} %")
    if m.get("distance"):
        parts.append(f"ranked by {'Euclidean (L2) distance' if m['distance'] == 'l2' else 'cosine similarity'}"
                     f"{' (the paper)' if m['distance'] == 'l2' else ' (not the paper)'}"
                     + (f", references from {reference_words(m.get('reference_encoder'))}" if references else ""))
    overlap = m.get("training_overlap") or {}
    if overlap.get("n_songs"):
        parts.append(f"WARNING: {overlap['n_songs']} evaluated songs were training songs")
    note = collapse_note(m) if diagnostics else ""
    if note:
        parts.append(note)
    return "; ".join(parts)


def write_report(m: dict, path) -> None:
    """report.md of one run: the Table-I row with its header, and the counts behind it."""
    extra = ("top1_k64",)
    ckpt = f"`{m['checkpoint']}`" if m.get("checkpoint") else "(model object, no file)"
    predictor = "with predictor" if m.get("has_predictor") else "no predictor: the mix embedding is the query"
    lines = [
        f"# Retrieval: {m.get('name')} on {benchmark_name(m)}",
        "",
        "Recall@k and normalised rank in percent (Table I protocol); top-1 among "
        f"{m.get('k64_candidates')} candidates (COCOLA/PHALAR protocol, {m.get('k64_draws')} draws).",
        "",
        table_header(extra),
        table_row(m, extra),
        chance_row(m, extra),
        "",
        f"- protocol: {protocol_note(m)}",
        f"- distance: {m.get('distance')} ({m.get('distance_reason')})",
        f"- checkpoint: {ckpt} (model id `{m.get('model_id')}`, {predictor})",
        f"- {m.get('n_queries')} queries against a pool of {m.get('n_pool')} stems from {m.get('n_songs')} songs",
        f"- excluded: {m.get('n_silent_excluded')} silent stems, {m.get('n_silent_mix_excluded')} queries with a silent mix, "
        f"{m.get('n_stems_unreadable', 0)} unreadable stems, {len(m.get('skipped') or [])} unreadable songs",
        f"- ties: {m.get('tie_rule')}",
        f"- time: {m.get('seconds')} s",
        "",
    ]
    atomic_write_text(path, "\n".join(lines))


def read_run(run_dir) -> dict:
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise DataError(f"{path}: missing (not a `stemjepa eval retrieval` output folder)")
    m = read_json(path, error=DataError)
    if not isinstance(m, dict):
        raise DataError(f"{path}: not a `stemjepa eval retrieval` metrics file (not a JSON object)")
    m = upgrade_record(m)
    missing = [k for k, _ in METRIC_COLUMNS if k not in m]
    if missing:
        raise DataError(f"{path}: lacks {', '.join(missing)}")
    return m


def compare_table(run_dirs, extra=()) -> str:
    """One Markdown table: a row per run name, a column group per benchmark (dataset, split, label level).

    `extra` adds columns from EXTRA_COLUMNS (e.g. ("top1_k64", "seconds")) to each group. Runs of the same name on
    the same benchmark: the last one given wins.
    """
    runs = [read_run(d) for d in run_dirs]
    if not runs:
        raise DataError("no run folders given")
    for k in extra:
        if k not in EXTRA_COLUMNS:
            raise DataError(f"unknown extra column {k!r}; known: {', '.join(EXTRA_COLUMNS)}")
    benches, names, cells = [], [], {}
    for m in runs:
        b, n = benchmark_name(m), (m.get("name") or m.get("model_id", "?"))
        if b not in benches:
            benches.append(b)
        if n not in names:
            names.append(n)
        cells[(n, b)] = m
    keys = [k for k, _ in METRIC_COLUMNS] + list(extra)
    heads = [h for _, h in METRIC_COLUMNS] + [EXTRA_COLUMNS[k] for k in extra]
    if len(benches) == 1:
        header = ["model"] + heads
        title = f"Benchmark: {benches[0]} (percent)\n\n"
    else:
        header = ["model"] + [f"{b}: {h}" for b in benches for h in heads]
        title = ""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for n in names:
        row = [n]
        for b in benches:
            m = cells.get((n, b), {})
            row += [fmt(m.get(k)) for k in keys]
        lines.append("| " + " | ".join(row) + " |")
    first = {b: next(cells[(n, b)] for n in names if (n, b) in cells) for b in benches}
    row = [f"chance (pool of {' / '.join(str(first[b].get('n_pool')) for b in benches)})"]
    for b in benches:
        chance = first[b].get("chance") or {}
        row += [fmt(chance.get(k)) for k, _ in METRIC_COLUMNS] + ["" for _ in extra]
    lines.append("| " + " | ".join(row) + " |")
    notes = [""]
    for b in benches:
        m = first[b]
        refs = {n: cells[(n, b)].get("reference_encoder", "-") for n in names if (n, b) in cells}
        short = {r: "the only one (phase 1)" if r == "encoder" else r for r in refs.values()}
        if len(short) == 1:  # one line per benchmark; the runs' reference encoders only when they differ
            ref = f"reference encoder {next(iter(short.values()))}"
        else:
            ref = "reference encoders " + ", ".join(f"{n}: {short[r]}" for n, r in refs.items())
        notes.append(f"- {b}: pool of {m.get('n_pool')} stems from {m.get('n_songs')} songs, "
                     f"distance {m.get('distance', 'cosine (not recorded)')}, {ref}")
    for (n, b), m in cells.items():
        note = collapse_note(m)
        overlap = (m.get("training_overlap") or {}).get("n_songs")
        if note or overlap:
            notes.append(f"- {n} on {b}: {note}"
                         + (f"; WARNING: {overlap} evaluated songs were training songs" if overlap else ""))
    return title + "\n".join(lines + notes) + "\n"
