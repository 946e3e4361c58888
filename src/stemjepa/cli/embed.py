"""`stemjepa embed`: one mean-pooled embedding per audio file."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    from .options import add_model_option, positive_int

    p = subparsers.add_parser("embed", help="embed audio files (one mean-pooled vector per file, with its tempo and key)")
    p.add_argument("files", nargs="+", help="audio files")
    add_model_option(p)
    p.add_argument("--out", help="save the (n_files, d) array to this .npy file instead of printing, with the list of its "
                                 "files beside it (OUT.files.json: row i of the array is files[i], analysis[i] its tempo and "
                                 "key {bpm, key, ...}; files that failed are listed under 'skipped', not in the array); "
                                 "exit status 1 when a file failed")
    p.add_argument("--device", default=None, help="cpu or cuda (default: best available)")
    p.add_argument("--batch-size", type=positive_int, default=16,
                   help="audio chunks per forward pass, shared across files (default 16)")
    add_precision_option(p)
    p.set_defaults(func=run)


def add_precision_option(p) -> None:
    """`--precision auto|fp32|bf16|fp16` (embed, index, query); see stemjepa.models.precision."""
    from ..models.precision import PRECISIONS

    p.add_argument("--precision", type=str.lower, choices=PRECISIONS, default="auto",
                   help="inference precision: auto = bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16, AMX, "
                        "Arm BF16), fp32 on other CPUs; fp16 on CUDA only (default auto)")


def files_list_path(out):
    """The file list written beside an `embed --out` array: x.npy -> x.files.json."""
    from pathlib import Path

    out = Path(out)
    return out.with_name(out.name[: -len(".npy")] + ".files.json" if out.name.endswith(".npy") else out.name + ".files.json")


def run(args) -> int:
    import json
    from pathlib import Path

    import numpy as np

    from ..audio.io import load_audio
    from ..audio.quality import check_embeddable, check_finite_embedding
    from ..errors import StemJepaError
    from ..fsutil import atomic_write, atomic_write_text
    from ..models import load_model
    from ..search.build import analyse_wave

    out = listing = None
    if args.out:
        out = Path(args.out) if args.out.endswith(".npy") else Path(args.out + ".npy")  # np.save appends .npy
        listing = files_list_path(out)
        for p in (out, listing):
            if p.exists():
                raise StemJepaError(f"{p}: exists already; choose another --out")
        if not out.parent.is_dir():
            raise StemJepaError(f"{out.parent}: folder not found (for --out {out})")
    model = load_model(args.model, device=args.device)
    from ..models.inference import prefetch

    model.precision = args.precision
    vectors, failed, decoded, analyses = [], [], [], []

    def load(path):
        wave = load_audio(path, model.sample_rate)
        check_embeddable(wave, model.sample_rate, path)
        analysis, problem = analyse_wave(wave, model.sample_rate)  # in the loader threads, beside the model
        if problem:
            print(f"warning: {path}: {problem}")
        return wave, analysis

    def waves():  # decoded in two threads while the model runs; a file that fails is reported and skipped
        for path, fut in prefetch(args.files, load, workers=2, ahead=8):
            try:
                wave, analysis = fut.result()
            except StemJepaError as exc:
                print(f"warning: skipped {exc}")
                failed.append((path, str(exc)))
                continue
            decoded.append(path)
            analyses.append(analysis)
            yield wave

    # chunks of consecutive files share batches: many short files do not run one small batch each
    for k, emb in enumerate(model.iter_tracks(waves(), batch_size=args.batch_size)):
        path = decoded[k]
        try:
            check_finite_embedding(emb.vector, path)
        except StemJepaError as exc:
            print(f"warning: skipped {exc}")
            failed.append((path, str(exc)))
            continue
        vectors.append((path, emb.vector, analyses[k]))
    if not vectors:
        raise StemJepaError("no file could be embedded")
    if out is not None:
        atomic_write(out, lambda fh: np.save(fh, np.stack([v for _, v, _ in vectors])))  # never a half-written file
        doc = {"array": out.name, "model_id": str(model.model_id), "files": [str(p) for p, _, _ in vectors],
               "analysis": [a for _, _, a in vectors],
               "skipped": [{"file": str(p), "reason": r} for p, r in failed]}
        try:
            atomic_write_text(listing, json.dumps(doc, indent=1) + "\n")
        except StemJepaError:
            out.unlink(missing_ok=True)  # an array without its file list is not left behind
            raise
        print(f"saved {len(vectors)} embeddings of dimension {vectors[0][1].shape[0]} to {out}, their files with tempo "
              f"and key in {listing}" + (f"; {len(failed)} file(s) failed and are in neither" if failed else ""))
    else:
        np.set_printoptions(precision=4, suppress=True, linewidth=120, threshold=12)
        for path, v, a in vectors:
            bpm = "-" if a is None or a.get("bpm") is None else f"{a['bpm']:.1f}"
            key = "-" if a is None or a.get("key") is None else a["key"]
            print(f"{path}\t{bpm} BPM\t{key}\t{v}")
    return 1 if failed else 0
