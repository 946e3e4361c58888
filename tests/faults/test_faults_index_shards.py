"""Defect 6 (damaged snapshots) for sharded snapshots (search/snapshot.py): a damaged or missing shard, tombstone list
or manifest is refused by queries with a one-line message saying how to repair, and the next `index` run rebuilds the
snapshot from index.sqlite."""
from __future__ import annotations

import json

import pytest
from test_search_fakes import FakeModel, tone, write, write_songs

from stemjepa.search import StemIndex, StemIndexError, build_index
from stemjepa.search import snapshot as snapshot_module


def build(root, out, **kw):
    return build_index(root, out, FakeModel(), progress=False, **kw)


@pytest.fixture()
def sharded(tmp_path, monkeypatch):
    """Generation 2 = shard 1 (15 files) + shard 2 (1 new file) + 1 tombstone (a deleted file)."""
    monkeypatch.setattr(snapshot_module, "COMPACT_BELOW_ROWS", 0)
    root, out = tmp_path / "stems", tmp_path / "idx"
    write_songs(root)
    build(root, out)
    write(root / "new" / "a.wav", tone(300.0, 3.0))
    (root / "song4" / "drums.wav").unlink()
    assert build(root, out).generation == 2
    manifest = json.loads((out / "snapshot-2.manifest.json").read_text())
    assert [sh["gen"] for sh in manifest["shards"]] == [1, 2] and manifest["deleted"]["rows"] == 1
    return root, out


def answers(out, root) -> None:
    with StemIndex.open(out, model=FakeModel()) as index:
        assert len(index) == 15
        paths = [r.path for r in index.query(tone(4 * 300.0, 3.0), "bass", k=20)]
    assert paths[0] == str(root / "new" / "a.wav") and str(root / "song4" / "drums.wav") not in paths


def damage(path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "delete":
        path.unlink()
    elif how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "zero":
        data[128:] = bytes(len(data) - 128)  # the .npy header stays
        path.write_bytes(bytes(data))
    else:  # one byte changed, same size
        data[-3] ^= 0x55
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("name, how", [
    ("snapshot-1.vectors.npy", "zero"), ("snapshot-1.vectors.npy", "truncate"), ("snapshot-1.bf16.npy", "delete"),
    ("snapshot-2.ids.npy", "delete"), ("snapshot-2.vectors.npy", "flip"), ("snapshot-2.deleted.npy", "flip"),
    ("snapshot-2.deleted.npy", "delete"), ("snapshot-2.manifest.json", "flip"),
])
def test_damaged_or_missing_snapshot_file_is_refused_then_repaired(sharded, name, how):
    root, out = sharded
    damage(out / name, how)
    with pytest.raises(StemIndexError, match="stemjepa index") as info:
        with StemIndex.open(out, model=FakeModel()) as index:
            index.query(tone(4 * 300.0, 3.0), "bass", k=3)
    assert "\n" not in str(info.value)
    summary = build(root, out)
    assert name in summary.repaired and summary.generation == 3 and "repaired" in summary.text()
    manifest = json.loads((out / "snapshot-3.manifest.json").read_text())
    assert manifest["compacted"] and [sh["gen"] for sh in manifest["shards"]] == [3] and manifest["deleted"] is None
    answers(out, root)
    assert build(root, out).generation == 3  # sound again: nothing to redo
