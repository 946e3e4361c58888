"""`stemjepa index --engine lightning` with the test fake model (tests/test_index_shards_dist.py): Lightning Fabric
launches the other local processes by running this script again, as it runs the `stemjepa` command.

    python index_dist.py ROOT OUT WORKERS   -> prints rank 0's summary as JSON on the last line
"""
import json
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1] / "src")]

from test_search_fakes import FakeModel  # noqa: E402

from stemjepa.search.build import IndexOptions  # noqa: E402
from stemjepa.search.parts import Cluster, index_with_lightning  # noqa: E402

if __name__ == "__main__":
    root, out, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    summary = index_with_lightning(root, out, lambda device: FakeModel(), options=IndexOptions(progress=False),
                                   cluster=Cluster(workers=workers, accelerator="cpu"))
    if hasattr(summary, "generation"):  # rank 0: the index's summary
        print(json.dumps({"total": summary.total, "merged": summary.merged, "added": summary.added,
                          "failed": [p for p, _ in summary.failed], "generation": summary.generation}))
