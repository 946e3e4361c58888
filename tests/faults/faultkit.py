"""Helpers of the fault tests: bounded calls (a hang fails, it does not block the suite), a simulated full disk, and a
way to run code without root's permission bypass."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
NOBODY = 65534


def bounded(fn, seconds: float = 30.0):
    """Run fn() in a thread; fail the test if it has not returned after `seconds` (a hang). Returns (result, error)."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s: it hangs"
    return box.get("result"), box.get("error")


def disk_full_after(real, n_ok: int = 0, partial: bytes = b"\x93NUMPY partial"):
    """A stand-in for a write function `real(obj, fh_or_path, ...)`-like call (np.save(fh, a), torch.save(obj, fh)) that
    succeeds `n_ok` times, then writes a few bytes and raises OSError(ENOSPC), as a full disk does."""
    calls = {"n": 0}

    def fake(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= n_ok:
            return real(*args, **kwargs)
        for a in args:
            if hasattr(a, "write"):
                a.write(partial)
        raise OSError(errno.ENOSPC, "No space left on device")

    fake.calls = calls
    return fake


def shared_tmp() -> Path:
    """A temp folder that an unprivileged user can enter (pytest's tmp_path is private to its owner)."""
    path = Path(tempfile.mkdtemp(prefix="stemjepa-faults-", dir="/tmp"))
    path.chmod(0o755)
    return path


def run_unprivileged(code: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run Python `code` as an ordinary user (uid nobody) when the tests run as root, so permission checks apply;
    skips the test where that is impossible."""
    if not IS_ROOT:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    try:
        probe = subprocess.run([sys.executable, "-c", "import stemjepa"], user=NOBODY, group=NOBODY,
                               capture_output=True, text=True, timeout=timeout, cwd="/tmp")
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"running as root and cannot drop to an unprivileged user ({exc})")
    if probe.returncode != 0:
        pytest.skip(f"running as root and an unprivileged user cannot import stemjepa: {probe.stderr[-200:]}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), "HOME": "/tmp"}
    return subprocess.run([sys.executable, "-c", code], user=NOBODY, group=NOBODY, capture_output=True, text=True,
                          timeout=timeout, cwd="/tmp", env=env)
