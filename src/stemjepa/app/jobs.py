"""Long work (decoding and embedding a mix) runs in one background worker; the page polls its progress.

One worker, because the model already uses every core: queries wait their turn instead of slowing each other down.
"""
from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..errors import StemJepaError

log = logging.getLogger(__name__)


@dataclass
class Job:
    id: str
    state: str = "queued"  # queued | running | done | error
    stage: str = "waiting for the worker"
    progress: float = 0.0  # 0..1 of the current job
    error: str | None = None
    result: dict | None = None
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

    def __init__(self, keep: int = 64):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="stemjepa-job")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()

    def submit(self, work: Callable[[Job], dict]) -> Job:
        job = Job(uuid.uuid4().hex[:16])
        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > self._keep:
                self._jobs.popitem(last=False)
        self._pool.submit(self._run, job, work)
        return job

    def _run(self, job: Job, work: Callable[[Job], dict]) -> None:
        job.state = "running"
        try:
            result = work(job)
        except StemJepaError as exc:
            job.error, job.state = str(exc), "error"
            return
        except Exception as exc:  # noqa: BLE001 - the page shows it; the server keeps serving
            log.exception("query failed")
            job.error, job.state = f"internal error ({type(exc).__name__}: {exc})", "error"
            return
        job.result = result
        job.report("done", 1.0)
        job.state = "done"

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
