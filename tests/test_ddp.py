"""Data-parallel training through Lightning's DDP: 2 CPU processes with the gloo backend end with identical weights."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("ddp_fit.py")  # fit with a callback that writes each rank's weight digest


@pytest.mark.parametrize("config", ["tiny_phase1", "tiny"])  # phase 1 gathers the global batch; phase 2 runs the EMA
def test_two_process_ddp_ranks_hold_identical_weights(toy_corpus, tmp_path, config):
    digests = tmp_path / "digests"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(SCRIPT), config, str(toy_corpus), str(tmp_path / "run"), str(digests)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads((digests / f"rank{i}.json").read_text()) for i in range(2)]
    assert [rec["world_size"] for rec in records] == [2, 2]
    assert records[0]["step"] == records[1]["step"] == 3
    assert records[0]["digest"] == records[1]["digest"]  # gradients all-reduced, EMA applied identically on both ranks
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
