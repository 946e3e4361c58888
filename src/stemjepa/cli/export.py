"""`stemjepa export MODEL OUT.safetensors`: a slim, pickle-free file of what inference needs (or ONNX with --onnx)."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write a slim inference file (.safetensors, no optimizer state, no pickle) of a model, or ONNX graphs",
        description="Write the model's weights and config into one safetensors file: front-end, encoder, EMA target "
                    "encoder (phase 2: library stems are embedded with it), predictor, conditioning table and running "
                    "centres; no optimizer or trainer state and no pickle, so loading it runs no code from the file. "
                    "It embeds exactly as the checkpoint does and has the same model id, so indexes built with either "
                    "accept both. Load it with --model OUT.safetensors or stemjepa.load_model(OUT).")
    p.add_argument("model", metavar="MODEL", help="checkpoint (.ckpt), export, or built-in model name")
    p.add_argument("out", metavar="OUT", help="output file (.safetensors; .onnx with --onnx)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--onnx", action="store_true", help="write ONNX instead: OUT.reference.onnx and OUT.query.onnx (graphs), "
                   "OUT.conditions.npy (phase 2) and OUT.onnx.json, their description (stemjepa.models.onnx_export)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..errors import StemJepaError
    from ..models.registry import load_model

    out = Path(args.out)
    if out.exists() and not args.force:
        raise StemJepaError(f"{out}: exists already; pass --force to replace it")
    if args.onnx:
        try:
            from ..models.onnx_export import describe_graphs, export_onnx
        except ImportError as exc:
            raise StemJepaError(f"ONNX export is not available in this installation ({exc}); export to .safetensors "
                                "without --onnx") from None
        prefix = out.with_suffix("") if out.suffix == ".onnx" else out  # files PREFIX.reference.onnx, .query.onnx...
        taken = sorted(str(p) for p in prefix.parent.glob(f"{prefix.name}.*")) if prefix.parent.is_dir() else []
        if taken and not args.force:
            raise StemJepaError(f"{taken[0]}: exists already; pass --force to replace the ONNX files of {prefix}")
        model = load_model(args.model, device="cpu")
        files = export_onnx(model, out)
        print(f"wrote {', '.join(str(f) for f in files)} (ONNX, model {model.model_id})")
        from ..fsutil import read_json

        for line in describe_graphs(read_json(files[-1], error=StemJepaError)):
            print(f"  {line}")
        return 0
    from ..models.export import export_model

    model = load_model(args.model, device="cpu")
    meta = export_model(model, out, force=args.force, source=str(args.model))
    phase = "phase 2 (encoder, target encoder, predictor, conditioning)" if model.has_predictor else \
        "phase 1 (one encoder; no target encoder or predictor)"
    print(f"wrote {out}: {out.stat().st_size / 1e6:.1f} MB, model {meta['model_id']}, {phase}")
    return 0
