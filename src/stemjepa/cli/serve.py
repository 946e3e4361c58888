"""`stemjepa serve --index DIR`: the local web app to search a stem library and audition candidates with the mix."""
from __future__ import annotations

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="local web app: upload a mix, find stems, play them with the mix, download them aligned",
        description="Serve a web page (and a JSON API under /api, documented at /openapi.json) to query stem "
                    "indexes with a mix and an instrument, listen to each candidate played with the mix, and download "
                    "it aligned to the mix. Listens on 127.0.0.1 only unless --host says otherwise.")
    p.add_argument("--index", action="append", required=True, metavar="DIR",
                   help="index folder made by `stemjepa index` (repeat for several)")
    p.add_argument("--model", "--checkpoint", dest="model", default=None, metavar="NAME_OR_PATH",
                   help="model to query with: a built-in name, a .safetensors export or a .ckpt checkpoint "
                        "(default: the one recorded in each index)")
    p.add_argument("--mixes", default=None, metavar="DIR", help="a folder of mixes the page may pick from")
    p.add_argument("--library", default=None, metavar="DIR",
                   help="the only folder library audio is served from (default: the indexed files' common folder)")
    p.add_argument("--uploads", default=None, metavar="DIR",
                   help="keep uploads in DIR (default: a temporary folder deleted when the server stops)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--max-upload-mb", type=float, default=200.0, help="largest accepted upload (default 200 MB)")
    p.add_argument("--max-seconds", type=float, default=600.0, help="longest accepted mix (default 600 s)")
    p.add_argument("--device", default=None, help="cpu, cuda... (default: cuda when present)")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys
    from pathlib import Path

    from ..app.settings import Limits, ServeConfig
    from ..errors import StemJepaError

    if not 0 <= args.port <= 65535:
        raise StemJepaError(f"--port must be between 0 and 65535, got {args.port}")
    if args.max_upload_mb <= 0 or args.max_seconds <= 0:
        raise StemJepaError("--max-upload-mb and --max-seconds must be positive")
    try:
        import uvicorn

        from ..app.api import create_app
    except ModuleNotFoundError as exc:
        raise StemJepaError(f"the web app needs {exc.name}: pip install 'stemjepa' with its dependencies "
                            "(fastapi, uvicorn)") from None
    config = ServeConfig(
        indexes=[Path(p) for p in args.index], model=args.model, mixes=Path(args.mixes) if args.mixes else None,
        library=Path(args.library) if args.library else None, uploads=Path(args.uploads) if args.uploads else None,
        device=args.device, limits=Limits(max_upload_mb=args.max_upload_mb, max_seconds=args.max_seconds))
    app = create_app(config)
    if args.host not in LOOPBACK:
        print(f"warning: listening on {args.host}: anyone who can reach this machine can query the library and "
              "listen to its files", file=sys.stderr)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"stemjepa: open http://{host}:{args.port}/ (API docs at /openapi.json; Ctrl-C stops)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
