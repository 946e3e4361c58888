"""Run by tests/test_ddp.py (Lightning starts it once per rank): `fit` on 2 CPU processes, and every rank writes the digest of
its weights at the end of training, through `FitOptions.callbacks`.

    python tests/ddp_fit.py CONFIG DATA OUT DIGESTS
"""
import json
import sys
from pathlib import Path

import lightning as L

from stemjepa.config import load_config
from stemjepa.models.digest import weights_digest
from stemjepa.training.fit import FitOptions, fit


class RankDigest(L.Callback):
    """At the end of training every rank writes the digest of its weights to `folder/rank<R>.json`."""

    def __init__(self, folder):
        self.folder = Path(folder)

    def on_train_end(self, trainer, pl_module) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "step": trainer.global_step,
                  "digest": weights_digest(pl_module.model)}
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    config, data, out, digests = sys.argv[1:5]
    cfg = load_config(config, ["max_steps=3", "data.batch_size=4", "data.num_workers=0", "model.encoder.depth=1"])
    fit(cfg, FitOptions(data=data, out=out, device="cpu", devices=2, progress=False, callbacks=[RankDigest(digests)]))
