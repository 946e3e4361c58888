"""`stemjepa serve --index DIR`: the local web app to search a stem library and audition candidates with the mix."""
from __future__ import annotations

import argparse

from .options import positive_float, positive_int

LOOPBACK = ("127.0.0.1", "localhost", "::1")
ANY_ADDRESS = ("0.0.0.0", "::", "")

EPILOG = """\
limits and safety (see also the options above):
  Requests are answered only when their Host header is one of: localhost, 127.0.0.1, [::1] and the --host address,
  each on --port, plus every --allowed-host. A page of another site (DNS rebinding) is refused, and so is any
  POST whose Origin is not this server or whose content type a cross-site form can send (uploads take
  application/octet-stream or audio/*, queries application/json; others get 415).
  Bodies: an upload up to --max-upload-mb, any other request up to 64 kB (declared or chunked; 413 otherwise).
  A mix is checked from its header before decoding: up to --max-seconds long and --max-decoded-mb of samples
  (channels x rate x duration x 4 bytes; a small file of many channels at a high rate is refused, 413).
  Instrument text: up to 200 characters; k: 1 to 50.
  Uploads are deleted --upload-ttl-min after their last use, and the least recently used when more than
  --max-uploads files or --max-uploads-mb are kept; a full disk answers 507 and keeps no partial file.
  A finished query's result stays 5 min after it is first read and at most 1 h (up to 1024 kept); at most 256
  queries wait for the worker (503 beyond). An expired id answers 404 saying so.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="local web app: upload a mix, find stems, play them with the mix, download them aligned",
        description="Serve a web page (and a JSON API under /api, documented at /openapi.json) to query stem "
                    "indexes with a mix and an instrument, listen to each candidate played with the mix, and download "
                    "it aligned to the mix. Listens on 127.0.0.1 only unless --host says otherwise.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME[:PORT]",
                   help="also answer requests whose Host header is NAME (on PORT, or any port), e.g. this machine's "
                        "name when serving on the network with --host 0.0.0.0; repeat for several; '*' answers any "
                        "name (not recommended: it lets pages of other sites read the API through DNS rebinding)")
    p.add_argument("--max-upload-mb", type=positive_float, default=200.0, help="largest accepted upload (default 200 MB)")
    p.add_argument("--max-seconds", type=positive_float, default=600.0, help="longest accepted mix (default 600 s)")
    p.add_argument("--max-decoded-mb", type=positive_float, default=512.0,
                   help="most memory one decoded mix may take, checked from its header before decoding: channels x "
                        "rate x duration x 4 bytes (default 512 MB: 10 min of stereo at 96 kHz)")
    p.add_argument("--upload-ttl-min", type=positive_float, default=60.0,
                   help="delete an upload this many minutes after its last use (default 60)")
    p.add_argument("--max-uploads", type=positive_int, default=64,
                   help="uploads kept at once; the least recently used are deleted first (default 64)")
    p.add_argument("--max-uploads-mb", type=positive_float, default=4000.0,
                   help="disk space of all uploads together; the least recently used are deleted first (default 4000 MB)")
    p.add_argument("--device", default=None, help="cpu, cuda... (default: cuda when present)")
    p.set_defaults(func=run)


def allowed_hosts(host: str, port: int, extra: list[str]) -> list[str]:
    """Host header values answered: the loopback names and the listening address on `port` (any port for port 0,
    which the system picks), plus `extra` as given."""
    names = list(LOOPBACK) + ([host] if host not in LOOPBACK and host not in ANY_ADDRESS else [])
    if not port:
        return names + list(extra)
    return [f"[{n}]:{port}" if ":" in n else f"{n}:{port}" for n in names] + list(extra)


def run(args) -> int:
    import sys
    from pathlib import Path

    from ..app.settings import Limits, ServeConfig
    from ..errors import StemJepaError

    if not 0 <= args.port <= 65535:
        raise StemJepaError(f"--port must be between 0 and 65535, got {args.port}")
    if args.max_uploads_mb < args.max_upload_mb:
        raise StemJepaError(f"--max-uploads-mb ({args.max_uploads_mb:g}) must be at least --max-upload-mb "
                            f"({args.max_upload_mb:g})")
    try:
        import uvicorn

        from ..app.api import create_app
        from ..app.guard import HostList
    except ModuleNotFoundError as exc:
        raise StemJepaError(f"the web app needs {exc.name}: pip install 'stemjepa' with its dependencies "
                            "(fastapi, uvicorn)") from None
    hosts = allowed_hosts(args.host, args.port, args.allowed_host)
    try:
        HostList(hosts)
    except ValueError as exc:
        raise StemJepaError(f"--allowed-host {exc}") from None
    limits = Limits(max_upload_mb=args.max_upload_mb, max_seconds=args.max_seconds, max_decoded_mb=args.max_decoded_mb,
                    upload_ttl_s=args.upload_ttl_min * 60, max_uploads=args.max_uploads,
                    max_uploads_mb=args.max_uploads_mb)
    config = ServeConfig(
        indexes=[Path(p) for p in args.index], model=args.model, mixes=Path(args.mixes) if args.mixes else None,
        library=Path(args.library) if args.library else None, uploads=Path(args.uploads) if args.uploads else None,
        device=args.device, limits=limits, allowed_hosts=hosts)
    app = create_app(config)
    if args.host not in LOOPBACK:
        print(f"warning: listening on {args.host}: anyone who can reach this machine can query the library and "
              "listen to its files", file=sys.stderr)
        if args.host in ANY_ADDRESS and not args.allowed_host:
            print("note: only requests to localhost are answered; give --allowed-host NAME for the name others use "
                  "to reach this machine", file=sys.stderr)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"stemjepa: open http://{host}:{args.port}/ (API docs at /openapi.json; Ctrl-C stops)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
