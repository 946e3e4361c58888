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
    add_quantize_option(p)
    p.set_defaults(func=run)


def add_quantize_option(p) -> None:
    """`--quantize auto|none|int8` (embed, index); see stemjepa.models.int8."""
    from ..models.int8 import QUANTIZE

    p.add_argument("--quantize", type=str.lower, choices=QUANTIZE, default="auto",
                   help="the stems' encoder in int8 (ONNX Runtime, dynamic quantisation; 1.5x the encoder's speed "
                        "on the built-in model, same R@10; queries are not quantised): auto = int8 on CPUs with int8 "
                        "dot-product instructions (AVX512-VNNI, AVX-VNNI, AMX, Arm dotprod) when onnxruntime is installed "
                        "and --precision is auto; int8 asks for it (falls back with a warning where it cannot run); "
                        "none: never (default auto)")


def set_quantize(model, value: str) -> None:
    """`model.quantize = value` where the model has the setting (every StemJEPA; a test's fake may not)."""
    if hasattr(model, "quantize"):
        model.quantize = value


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
    from ..errors import StemJepaError
    from ..models import load_model

    out, listing = _out_paths(args.out)
    model = load_model(args.model, device=args.device)
    model.precision = args.precision
    set_quantize(model, args.quantize)
    vectors, failed = _embed(model, args.files, args.batch_size)
    if not vectors:
        raise StemJepaError("no file could be embedded")
    if out is not None:
        _save(out, listing, str(model.model_id), vectors, failed)
    else:
        _print(vectors)
    return 1 if failed else 0


def _out_paths(out_arg: str | None):
    """(the .npy path, its file list beside it), checked before the model loads; (None, None) without --out."""
    from pathlib import Path

    from ..errors import StemJepaError

    if not out_arg:
        return None, None
    out = Path(out_arg) if out_arg.endswith(".npy") else Path(out_arg + ".npy")  # np.save appends .npy
    listing = files_list_path(out)
    for p in (out, listing):
        if p.exists():
            raise StemJepaError(f"{p}: exists already; choose another --out")
    if not out.parent.is_dir():
        raise StemJepaError(f"{out.parent}: folder not found (for --out {out})")
    return out, listing


def _embed(model, files: list[str], batch_size: int) -> tuple[list, list]:
    """([(path, vector, analysis)], [(path, problem)]) of the files, through the one pipeline (models.pipeline): decoded
    and analysed for tempo and key in two threads while the model runs; a file that fails is reported and skipped."""
    from ..errors import printable
    from ..models.pipeline import Decoded, EmbedOptions, decode_for_model, embed_files
    from ..search.build import analyse_wave

    sr = model.sample_rate

    def load(path) -> Decoded:
        wave = decode_for_model(path, sr)
        return Decoded(wave, analyse_wave(wave, sr))  # in the loader threads, beside the model

    vectors, failed = [], []
    for got in embed_files(model, files, EmbedOptions(batch_size=batch_size), load=load):
        if got.problem is not None:
            print(f"warning: skipped {printable(str(got.item))}: {got.problem}")
            failed.append((got.item, f"{printable(str(got.item))}: {got.problem}"))
            continue
        analysis, problem = got.decoded.extra
        if problem:
            print(f"warning: {got.item}: {problem}")
        vectors.append((got.item, got.embedding.vector, analysis))
    return vectors, failed


def _save(out, listing, model_id: str, vectors: list, failed: list) -> None:
    """The array and its file list, each written whole (never a half-written file, never one without the other)."""
    import json

    import numpy as np

    from ..errors import StemJepaError
    from ..fsutil import atomic_write, atomic_write_text

    atomic_write(out, lambda fh: np.save(fh, np.stack([v for _, v, _ in vectors])))
    doc = {"array": out.name, "model_id": model_id, "files": [str(p) for p, _, _ in vectors],
           "analysis": [a for _, _, a in vectors],
           "skipped": [{"file": str(p), "reason": r} for p, r in failed]}
    try:
        atomic_write_text(listing, json.dumps(doc, indent=1) + "\n")
    except StemJepaError:
        out.unlink(missing_ok=True)  # an array without its file list is not left behind
        raise
    print(f"saved {len(vectors)} embeddings of dimension {vectors[0][1].shape[0]} to {out}, their files with tempo "
          f"and key in {listing}" + (f"; {len(failed)} file(s) failed and are in neither" if failed else ""))


def _print(vectors: list) -> None:
    import numpy as np

    np.set_printoptions(precision=4, suppress=True, linewidth=120, threshold=12)
    for path, v, a in vectors:
        bpm = "-" if a is None or a.get("bpm") is None else f"{a['bpm']:.1f}"
        key = "-" if a is None or a.get("key") is None else a["key"]
        print(f"{path}\t{bpm} BPM\t{key}\t{v}")
