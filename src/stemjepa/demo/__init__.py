"""The main job, `stemjepa demo`: the whole system end to end on the built-in synthetic data, within a time budget.

1. a synthetic corpus: training songs without some instruments, held-out songs that contain them (zero-shot);
2. phase 1 (contrastive, also the contrastive baseline of Table I), then phase 2 (JEPA, FiLM on text embeddings) from it;
3. the retrieval benchmark on the held-out songs for both models, fine and coarse labels;
4. a stem index of the held-out songs and example queries ("which bass fits this mix?");
5. a report (HTML and Markdown) with the metrics, the Fig. 2 chart, training curves and audio players.
Every stage reuses what an earlier run already produced, so running it again is fast.

`pipeline` runs the stages; `report` writes what they measured (the HTML page is the template `report.html`).
"""
from __future__ import annotations

from .pipeline import DISTANCE, HELD_OUT, DemoConfig, run_demo

__all__ = ["DISTANCE", "HELD_OUT", "DemoConfig", "run_demo"]
