"""Long work (decoding and embedding a mix) runs in one background worker; the page polls its progress.

One worker, because the model already uses every core: queries wait their turn instead of slowing each other down.
A finished job is kept until its result has been read and `grace_s` more (the page may fetch it again), and at most
`ttl_s` after it finished, read or not; at most `keep` finished jobs are kept, the read ones dropped first. So a burst
of queries loses no result, memory stays bounded, and an id that was dropped answers 404 saying why.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..errors import StemJepaError
from .files import Busy, NotFound

log = logging.getLogger(__name__)

FINISHED = ("done", "error")
GONE_REMEMBERED = 4096  # ids of dropped jobs remembered for the 404 message


@dataclass
class Job:
    id: str
    state: str = "queued"  # queued | running | done | error
    stage: str = "waiting for the worker"
    progress: float = 0.0  # 0..1 of the current job
    error: str | None = None
    result: dict | None = None
    finished_at: float | None = None  # clock time the job ended
    read_at: float | None = None  # clock time its finished state was first read
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def report(self, stage: str, progress: float) -> None:
        with self._lock:
            self.stage, self.progress = stage, min(max(float(progress), 0.0), 1.0)

    def to_dict(self) -> dict:
        with self._lock:
            return {"id": self.id, "state": self.state, "stage": self.stage, "progress": round(self.progress, 4),
                    "error": self.error, "result": self.result}


class Jobs:
    """Submit `work(job)` functions; each runs in turn and its return value (a dict) becomes `job.result`."""

    def __init__(self, keep: int = 1024, grace_s: float = 300.0, ttl_s: float = 3600.0, max_queued: int = 256,
                 clock: Callable[[], float] = time.monotonic):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="stemjepa-job")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._gone: OrderedDict[str, str] = OrderedDict()
        self.keep, self.grace_s, self.ttl_s, self.max_queued, self.clock = keep, grace_s, ttl_s, max_queued, clock
        self._lock = threading.Lock()

    def submit(self, work: Callable[[Job], dict]) -> Job:
        job = Job(uuid.uuid4().hex[:16])
        with self._lock:
            self._expire()
            waiting = sum(j.state not in FINISHED for j in self._jobs.values())
            if waiting >= self.max_queued:
                raise Busy(f"{waiting} queries are waiting for the worker (the limit is {self.max_queued}); "
                           "try again when some have finished")
            self._jobs[job.id] = job
        self._pool.submit(self._run, job, work)
        return job

    def _run(self, job: Job, work: Callable[[Job], dict]) -> None:
        job.state = "running"
        result = error = None
        try:
            result = work(job)
        except StemJepaError as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 - the page shows it; the server keeps serving
            log.exception("query failed")
            error = f"internal error ({type(exc).__name__}: {exc})"
        with job._lock:
            job.result, job.error = result, error
            if error is None:
                job.stage, job.progress = "done", 1.0
            job.finished_at = self.clock()
            job.state = "done" if error is None else "error"

    def read(self, job_id: str) -> dict:
        """The job's state (and result when done); reading a finished job starts its grace period."""
        with self._lock:
            self._expire()
            job = self._jobs.get(job_id)
            if job is None:
                why = self._gone.get(job_id)
                raise NotFound(f"job {job_id!r} {why}" if why else f"job {job_id!r} not found "
                               "(jobs are forgotten when the server restarts)")
            out = job.to_dict()
            if out["state"] in FINISHED and job.read_at is None:
                job.read_at = self.clock()
        return out

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def _expire(self) -> None:
        """Drop finished jobs past their grace period or TTL, then the oldest (read ones first) over `keep`."""
        now = self.clock()
        finished = [j for j in self._jobs.values() if j.state in FINISHED and j.finished_at is not None]
        for j in finished:
            if j.read_at is not None and now - j.read_at > self.grace_s:
                self._drop(j, f"expired: a finished query is kept {self.grace_s / 60:g} min after its result was "
                              "first read; run it again")
            elif now - j.finished_at > self.ttl_s:
                self._drop(j, f"expired: a finished query is kept at most {self.ttl_s / 60:g} min; run it again")
        finished = [j for j in finished if j.id in self._jobs]
        over = len(finished) - self.keep
        if over > 0:
            oldest = sorted(finished, key=lambda j: (j.read_at is None, j.finished_at))[:over]
            for j in oldest:
                self._drop(j, f"expired: this server keeps the last {self.keep} finished queries; run it again")

    def _drop(self, job: Job, why: str) -> None:
        self._jobs.pop(job.id, None)
        self._gone[job.id] = why
        while len(self._gone) > GONE_REMEMBERED:
            self._gone.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
