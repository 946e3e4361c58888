"""Tempo, key and downbeat accuracy of `stemjepa.analysis.analyse` on held-out synthetic songs (issue 25).

    python benchmarks/analysis_accuracy.py [--data CORPUS | --out DIR --songs 40 --seconds 20 --seed 2525]
                                           [--production full] [--json OUT] [--verbose]

Without --data, renders the songs with `stemjepa synth` (seed 2525: not a training seed). The mix is the sum of a song's
stems; `analyse` runs on the mix and on every non-silent stem. Ground truth: the song's stems.json ("tempo", "key",
"downbeats", per stem "is_drum"). Modes map to their MIREX major/minor: ionian/lydian/mixolydian -> major of that tonic,
aeolian/dorian/phrygian/locrian -> minor of that tonic. Reported, for mixes and for pitched stems:
- tempo Acc1 (within 4 %) and Acc2 (also within 4 % of x2, x1/2, x3, x1/3);
- key MIREX weighted score (1 same, 0.5 fifth, 0.3 relative, 0.2 parallel, 0 else; "no key" scores 0);
- the rate of drum stems saying "no key" and of pitched stems wrongly saying "no key";
- downbeat F-measure (mir_eval.beat.f_measure, 70 ms window) on mixes;
- analysis seconds per mix (CPU).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import mir_eval
import numpy as np
import soundfile as sf

from stemjepa.analysis import analyse
from stemjepa.fsutil import atomic_write_text, read_json

NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
FLATS = {"Db": "C#", "Eb": "D#", "Gb": "F#", "Ab": "G#", "Bb": "A#", "Cb": "B", "Fb": "E"}
MAJOR_MODES = {"major", "ionian", "lydian", "mixolydian"}


def truth_key(text: str) -> str:
    """"D dorian" -> "D minor" (the MIREX major/minor of the mode, same tonic)."""
    tonic, mode = text.split()
    return f"{FLATS.get(tonic, tonic)} {'major' if mode.lower() in MAJOR_MODES else 'minor'}"


def mirex(est: str | None, ref: str) -> float:
    if est is None:
        return 0.0
    if est == ref:
        return 1.0
    (et, em), (rt, rm) = est.split(), ref.split()
    step = (NAMES.index(et) - NAMES.index(rt)) % 12
    if em == rm:
        return 0.5 if step in (5, 7) else 0.0
    if (rm, step) in (("major", 9), ("minor", 3)):
        return 0.3
    return 0.2 if step == 0 else 0.0


def tempo_hits(est: float | None, ref: float) -> tuple[bool, bool]:
    if est is None:
        return False, False
    acc1 = abs(est - ref) <= 0.04 * ref
    return acc1, acc1 or any(abs(est - ref * f) <= 0.04 * ref * f for f in (2, 0.5, 3, 1 / 3))


def render(out: Path, songs: int, seconds: float, seed: int, production: str) -> None:
    cmd = [str(Path(sys.executable).with_name("stemjepa")), "synth", "--out", str(out), "--songs", str(songs),
           "--seconds", str(seconds), "--seed", str(seed), "--production", production]
    subprocess.run(cmd, check=True)


def evaluate(corpus: Path, verbose: bool = False) -> dict:
    rows: dict[str, list] = {"mix": [], "pitched": [], "drums": []}
    seconds, downbeat_f = [], []
    for meta_path in sorted(corpus.glob("*/stems.json")):
        meta = read_json(meta_path)
        ref_bpm, ref_key = float(meta["tempo"]), truth_key(meta["key"])
        stems = []
        for stem in meta["stems"]:
            wave, sr = sf.read(meta_path.parent / stem["file"], dtype="float32", always_2d=True)
            stems.append((stem, wave.mean(axis=1)))
        mix = np.sum([w for _, w in stems], axis=0)
        t0 = time.process_time()
        a = analyse(mix, sr)
        seconds.append(time.process_time() - t0)
        rows["mix"].append((tempo_hits(a.bpm, ref_bpm), mirex(a.key, ref_key), a.key is None))
        downbeat_f.append(mir_eval.beat.f_measure(np.asarray(meta["downbeats"], float), np.asarray(a.downbeats, float)))
        if verbose:
            print(f"{meta_path.parent.name}: bpm {a.bpm} ({ref_bpm}) key {a.key} ({meta['key']})", flush=True)
        for stem, wave in stems:
            if np.abs(wave).max() < 1e-4:
                continue
            s = analyse(wave, sr)
            rows["drums" if stem.get("is_drum") else "pitched"].append(
                (tempo_hits(s.bpm, ref_bpm), mirex(s.key, ref_key), s.key is None))
    report = {"songs": len(rows["mix"]), "seconds_per_mix": round(float(np.mean(seconds)), 3),
              "mix_seconds": round(float(sf.info(next(corpus.glob("*/*.wav"))).duration), 1),
              "downbeat_f_measure_mix": round(float(np.mean(downbeat_f)), 3)}
    for kind, got in rows.items():
        report[kind] = {"n": len(got), "tempo_acc1": round(float(np.mean([h[0][0] for h in got])), 3),
                        "tempo_acc2": round(float(np.mean([h[0][1] for h in got])), 3),
                        "key_mirex": round(float(np.mean([h[1] for h in got])), 3),
                        "no_key_rate": round(float(np.mean([h[2] for h in got])), 3)}
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="a `stemjepa synth` corpus (else one is rendered to --out)")
    p.add_argument("--out", type=Path, default=Path("/tmp/analysis_accuracy"))
    p.add_argument("--songs", type=int, default=40)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=2525)
    p.add_argument("--production", default="full", choices=["none", "full"])
    p.add_argument("--json", type=Path)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    corpus = args.data
    if corpus is None:
        render(args.out, args.songs, args.seconds, args.seed, args.production)
        corpus = args.out
    report = evaluate(corpus, args.verbose)
    print(f"{report['songs']} songs of {report['mix_seconds']} s, {report['seconds_per_mix']} CPU s per mix analysis, "
          f"downbeat F (mixes) {report['downbeat_f_measure_mix']}")
    print("| | n | tempo Acc1 | tempo Acc2 | key MIREX | says no key |")
    print("|---|---|---|---|---|---|")
    for kind in ("mix", "pitched", "drums"):
        r = report[kind]
        print(f"| {kind} | {r['n']} | {100 * r['tempo_acc1']:.1f} % | {100 * r['tempo_acc2']:.1f} % | {r['key_mirex']:.3f} "
              f"| {100 * r['no_key_rate']:.1f} % |")
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
