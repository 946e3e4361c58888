"""What the server was told at start: indexes, model, folders it may read, who may call it, and its limits."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")  # Host names a local browser uses; a DNS-rebinding page sends its own


@dataclass
class Limits:
    """Bounds that keep one request, upload or query from taking the machine (all checked before the work starts)."""

    max_upload_mb: float = 200.0  # bytes on the wire
    max_seconds: float = 600.0  # mix duration: embedding and playback buffers grow with it
    max_decoded_mb: float = 512.0  # channels x rate x duration x 4 bytes, read from the header before decoding
    max_k: int = 50
    max_instrument_chars: int = 200  # instrument text ("warm electric piano"), not a document
    max_request_kb: float = 64.0  # body of any request but an upload (a JSON query is a few hundred bytes)
    upload_ttl_s: float = 3600.0  # an upload is deleted this long after it was last used
    max_uploads: int = 64  # uploads kept at once; the least recently used are deleted first
    max_uploads_mb: float = 4000.0  # bytes of all uploads together; the least recently used are deleted first
    job_grace_s: float = 300.0  # a finished query's job stays this long after its result was first read ...
    job_ttl_s: float = 3600.0  # ... and at most this long after it finished, read or not
    max_jobs: int = 1024  # finished jobs kept (the read ones are dropped first)
    max_queued: int = 256  # queries waiting for the worker; more are refused (503) until some finish
    kept_queries: int = 256  # finished queries whose downloads (aligned stems, pictures) stay available
    audio_cache_mb: float = 1024.0  # decoded mixes and aligned candidates kept for playback


@dataclass
class ServeConfig:
    indexes: list[Path]
    model: str | None = None  # NAME_OR_PATH of the model; default: the one recorded in each index
    mixes: Path | None = None  # a folder of mixes the page may pick from
    library: Path | None = None  # root the library's audio is served from; default: the indexed files' common folder
    uploads: Path | None = None  # where uploads are kept; default: a temporary folder removed at exit
    device: str | None = None
    limits: Limits = field(default_factory=Limits)
    # Host header values answered ("name" or "name:port", "*" = any); default: the loopback names on any port
    allowed_hosts: list[str] | None = None
