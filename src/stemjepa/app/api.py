"""The HTTP layer: a FastAPI app with the JSON API under /api (OpenAPI at /openapi.json) and the page at /.

Errors are JSON `{"detail": "<file or thing>: <problem>"}` with 400 (bad input), 403 (a path outside the folders the
server may read; a Host the server does not answer to; a cross-site Origin), 404 (unknown or expired upload, query,
job, index or file), 413 (over a size, duration, decoded-size or text-length limit), 415 (a state-changing request whose
content type a cross-site form could send), 503 (too many queries waiting) or 507 (the server's disk is full).
Every request first passes `guard.Guard` (Host allow-list, same-origin state changes, body-size limit).
"""
from __future__ import annotations

import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from .. import __version__
from ..errors import AudioError, StemJepaError
from ..fsutil import WriteError
from .files import Busy, NotFound, PathRefused, StorageFull, TooLarge
from .guard import Guard, HostList
from .pictures import spectrogram_png
from .service import Engine, wav_bytes
from .settings import LOOPBACK_NAMES, ServeConfig

STATIC = Path(__file__).parent / "static"


class WrongType(StemJepaError):
    """A state-changing request with a content type the route does not take (answered with 415)."""


STATUS = ((PathRefused, 403), (NotFound, 404), (TooLarge, 413), (WrongType, 415), (Busy, 503), (StorageFull, 507),
          (WriteError, 500), (StemJepaError, 400))
UPLOAD_PATH = "/api/uploads"
UPLOAD_TYPES = ("application/octet-stream", "audio/*")
MAX_NAME = 200  # characters of an upload's file name kept for messages


def accepts(*types: str):
    """A dependency refusing (415) a request whose Content-Type is none of `types` ("audio/*" matches any audio type).

    The types a cross-site form or a "simple" fetch can send (text/plain, form encodings) are never among them, so a
    page of another site cannot make the browser send a request here without a CORS preflight, which this server
    never grants."""
    def check(request: Request) -> None:
        got = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not any(got == t or (t.endswith("/*") and got.startswith(t[:-1])) for t in types):
            raise WrongType(f"{request.url.path}: content type {got or '(none)'!r} refused; send {' or '.join(types)}")
    return Depends(check)


class QueryRequest(BaseModel):
    """One query: a mix (an upload id or a path in the mixes folder), the instrument to look for, k, and optional
    tempo/key filters and ranking (the CLI's --bpm, --key, --rank)."""

    upload: str | None = Field(None, description="id returned by POST /api/uploads")
    mix: str | None = Field(None, description="path relative to the server's mixes folder (GET /api/mixes)")
    instrument: str = Field(..., description='free text, e.g. "bass" or "warm electric piano"')
    k: int = Field(10, description="number of candidates")
    index: str | None = Field(None, description="index name (GET /api/info); default: the first")
    bpm: str | float | None = Field(None, description='tempo filter: "120" (+-4 %), "120+-3", "118-124"; a trailing '
                                                      '"!" turns half/double time off')
    key: str | None = Field(None, description='key filter: "A minor", "Am", "8A" (Camelot); ":relative", ":camelot" '
                                              '(neighbours) or "+-2" (within 2 semitones)')
    rank: Literal["model", "compat"] = Field("model", description='"compat": the model\'s z lowered by a poor tempo/key '
                                                                  "fit to the mix")


def _name(filename: str) -> str:
    """The base name of an upload's file name (no folders), shortened for messages."""
    name = Path(str(filename).replace("\\", "/")).name or "upload"
    if len(name) <= MAX_NAME:
        return name
    stem, suffix = os.path.splitext(name)
    return f"{stem[:MAX_NAME]}...{suffix[:12]}"


def _wav(wave, sr: int, download: str | None = None) -> Response:
    headers = {"Content-Disposition": f'attachment; filename="{download}"'} if download else {}
    return Response(wav_bytes(wave, sr), media_type="audio/wav", headers=headers)


def create_app(config: ServeConfig | None = None, engine: Engine | None = None) -> FastAPI:
    """The app for `config` (or an Engine already built). Opening the indexes and the model happens here, so a bad
    index or model is refused before the server listens."""
    engine = engine or Engine(config)

    @asynccontextmanager
    async def lifespan(app):
        yield
        engine.close()

    app = FastAPI(title="stemjepa", version=__version__, lifespan=lifespan,
                  description="Search a stem library with a mix and an instrument, and audition the candidates.")
    app.state.engine = engine
    _add_guard(app, engine)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _add_page_routes(app, engine)
    _add_upload_route(app, engine)
    _add_query_routes(app, engine)
    _add_audio_routes(app, engine)
    return app


def _add_guard(app: FastAPI, engine: Engine) -> None:
    """Every request passes `guard.Guard` (Host allow-list, Origin, body limits); user errors become JSON with their
    status code (STATUS)."""
    config = engine.config
    hosts = HostList(config.allowed_hosts if config.allowed_hosts is not None else LOOPBACK_NAMES)

    def body_limit(scope) -> tuple[int, str]:
        lim = engine.limits
        if scope["path"] == UPLOAD_PATH:
            name = Request(scope).query_params.get("filename", "upload")
            return int(lim.max_upload_mb * 1e6), (f"{_name(name)}: larger than this server's upload limit of "
                                                  f"{lim.max_upload_mb:g} MB (stemjepa serve --max-upload-mb)")
        return int(lim.max_request_kb * 1000), (f"{scope['path']}: request body larger than this server's limit of "
                                                f"{lim.max_request_kb:g} kB")

    app.add_middleware(Guard, hosts=hosts, body_limit=body_limit)

    @app.exception_handler(StemJepaError)
    async def user_error(request: Request, exc: StemJepaError):
        code = next(c for cls, c in STATUS if isinstance(exc, cls))
        return JSONResponse({"detail": str(exc)}, status_code=code)


def _add_page_routes(app: FastAPI, engine: Engine) -> None:
    """The page, and what it shows before a query: indexes, labels, mixes."""

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/api/info", summary="Indexes served, their size and model, and the upload limits")
    def info():
        return engine.info()

    @app.get("/api/labels", summary="Instrument labels the model knows (suggestions for the instrument text)")
    def labels():
        return {"labels": engine.labels()}

    @app.get("/api/mixes", summary="Mixes in the folder the server was given (--mixes)")
    def mixes():
        if engine.mixes is None:
            raise NotFound("this server has no mixes folder (start it with --mixes DIR)")
        return {"mixes": engine.mixes.list()}


def _add_upload_route(app: FastAPI, engine: Engine) -> None:
    @app.post(UPLOAD_PATH, status_code=201, dependencies=[accepts(*UPLOAD_TYPES)],
              summary="Upload a mix (the request body is the audio file, sent as application/octet-stream or audio/*)",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    async def upload(request: Request, filename: str = Query(..., description="the file's name, e.g. song.wav")):
        name = _name(filename)
        declared = request.headers.get("content-length", "")
        uid, path = engine.uploads.new_path(name)
        try:
            size = await engine.uploads.write(path, name, request.stream(), int(declared) if declared.isdigit() else 0)
            if size == 0:
                raise AudioError(name, "empty upload (0 bytes)")
            wave, sr = await run_in_threadpool(engine.check_mix, path, name)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        engine.uploads.add(uid, name, path, size)
        return {"id": uid, "name": name, "bytes": size, "sample_rate": sr, "channels": int(wave.shape[0]),
                "frames": int(wave.shape[1]), "seconds": wave.shape[1] / sr}


def _add_query_routes(app: FastAPI, engine: Engine) -> None:
    """Queries: start one, poll its job, read its result."""

    @app.post("/api/queries", status_code=202, dependencies=[accepts("application/json")],
              summary="Start a query (a JSON body); poll the returned job for progress")
    def start_query(req: QueryRequest):
        if (req.upload is None) == (req.mix is None):
            raise StemJepaError("give either an uploaded mix ('upload') or a mix of the mixes folder ('mix')")
        if req.upload is not None:
            item = engine.uploads.get(req.upload)
            path, name = item.path, item.name
        else:
            if engine.mixes is None:
                raise NotFound("this server has no mixes folder (start it with --mixes DIR)")
            path, name = engine.mixes.resolve(req.mix), req.mix
        job = engine.submit_query(path, name, req.instrument, req.k, req.index, bpm=req.bpm, key=req.key,
                                  rank=req.rank)
        return {"job": job.id, "job_url": f"/api/jobs/{job.id}"}

    @app.get("/api/jobs/{job_id}", summary="State and progress of a query; its result when done (kept a while after "
                                            "it is first read, see Limits.job_grace_s / job_ttl_s)")
    def job(job_id: str):
        return engine.jobs.read(job_id)

    @app.get("/api/queries/{qid}", summary="The result of a finished query")
    def query(qid: str):
        return engine.describe(engine.query_record(qid))


def _add_audio_routes(app: FastAPI, engine: Engine) -> None:
    """The audio and pictures of a finished query, and the library's files."""

    @app.get("/api/queries/{qid}/mix.wav", summary="The mix as WAV (for playback)")
    def mix_wav(qid: str):
        return _wav(*engine.mix_audio(qid))

    @app.get("/api/queries/{qid}/mix.png", summary="Spectrogram of the mix")
    def mix_png(qid: str):
        return Response(spectrogram_png(*engine.mix_audio(qid)), media_type="image/png")

    fit_param = Query(False, description="fitted to the mix: time-stretched to its tempo, transposed to its key, "
                                         "started on its first downbeat (stemjepa.audio.fit)")

    @app.get("/api/queries/{qid}/candidates/{rank}/aligned.wav",
             summary="Candidate from its matched offset, looped or trimmed to the mix (its length and rate); "
                     "fit=1: fitted to the mix's tempo, key and downbeat")
    def aligned_wav(qid: str, rank: int, fit: bool = fit_param):
        rec, r = engine.candidate(qid, rank)
        wave, sr = engine.candidate_audio(qid, rank, fit)
        return _wav(wave, sr, download=engine.download_name(rec, r, fit))

    @app.get("/api/queries/{qid}/candidates/{rank}/premix.wav", summary="Mix plus the aligned (or fitted) candidate")
    def premix_wav(qid: str, rank: int, balance: float = Query(0.5, ge=0.0, le=1.0,
                                                                 description="0 mix only, 0.5 both, 1 candidate only"),
                   fit: bool = fit_param):
        rec, r = engine.candidate(qid, rank)
        return _wav(*engine.premix(qid, rank, balance, fit), download=engine.download_name(rec, r, fit, premix=True))

    @app.get("/api/queries/{qid}/candidates/{rank}/picture.png", summary="Spectrogram of the aligned candidate")
    def candidate_png(qid: str, rank: int):
        return Response(spectrogram_png(*engine.aligned(qid, rank)), media_type="image/png")

    @app.get("/api/library/file", summary="A file of the indexed library, by its path relative to the library")
    def library_file(path: str, index: str | None = None):
        return FileResponse(engine.handle(index).library.resolve(path))
