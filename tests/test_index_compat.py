"""An index written before the search/ split (tests/fixtures/index_format1: built with the fake model of
test_search_fakes from `write_songs` under /tmp/oldfix/stems by the code of commit 'EmbeddingModel protocol') still opens,
answers queries and takes an update with today's code."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_search_fakes import FakeModel, write_songs

from stemjepa.search import StemIndex, build_index

FIXTURE = Path(__file__).parent / "fixtures" / "index_format1"
OLD_ROOT = "/tmp/oldfix/stems"


def old_index(tmp_path: Path) -> Path:
    out = tmp_path / "idx"
    shutil.copytree(FIXTURE, out)
    return out


def test_old_index_opens_and_finds_the_held_out_bass(tmp_path):
    out = old_index(tmp_path)
    songs = write_songs(tmp_path / "stems")  # the same deterministic songs the fixture was built from
    with StemIndex.open(out, model=FakeModel()) as index:
        assert len(index) == 15 and index.generation == 1
        for i, stems in songs.items():
            best = index.query(stems["keys"] + stems["drums"], "bass", k=2)
            assert best[0].path == f"{OLD_ROOT}/song{i}/bass.wav"
            assert best[0].cosine > 0.99 > best[1].cosine


@pytest.fixture
def old_root_files():
    """The fixture's stems where it says they are (its rows hold absolute paths under OLD_ROOT): without them an update
    rightly removes the 15 old rows as deleted files, which is not what this test is about. Removed again if made here."""
    root = Path(OLD_ROOT)
    made = not root.exists()
    write_songs(root)
    yield root
    if made:
        shutil.rmtree(root.parent, ignore_errors=True)


def test_old_index_takes_an_update(tmp_path, old_root_files):
    out = old_index(tmp_path)
    root = tmp_path / "stems"
    songs = write_songs(root)
    summary = build_index(root, out, FakeModel(), progress=False)
    # a second root joins the index (files outside the walked root stay), as the code before the split did
    assert (summary.added, summary.reused, summary.removed, summary.failed) == (15, 0, 0, [])
    assert (summary.total, summary.generation) == (30, 2)
    with StemIndex.open(out, model=FakeModel()) as index:
        mix = songs[2]["keys"] + songs[2]["drums"]
        assert index.query(mix, "bass", k=1)[0].path == str(root / "song2" / "bass.wav")


def test_old_index_is_migrated_by_its_next_update_keeping_its_snapshot(tmp_path, old_root_files, monkeypatch):
    """With shards (no rewrite of a small index), the format-1 snapshot becomes the first shard as it is."""
    import json

    from stemjepa.search import snapshot as snapshot_module
    from stemjepa.search.store import FORMAT_VERSION, MetaStore

    monkeypatch.setattr(snapshot_module, "COMPACT_BELOW_ROWS", 0)
    out = old_index(tmp_path)
    old = {p.name: p.read_bytes() for p in out.glob("snapshot-1.*")}
    root = tmp_path / "stems"
    songs = write_songs(root)
    (old_root_files / "song3" / "keys.wav").unlink()  # one file of the old index removed: a tombstone in shard 1
    summary = build_index(root, out, FakeModel(), progress=False)
    assert (summary.added, summary.removed, summary.total, summary.generation) == (15, 1, 29, 2)
    assert {p.name: p.read_bytes() for p in out.glob("snapshot-1.*") if p.name in old} == old  # not rewritten
    manifest = json.loads((out / "snapshot-2.manifest.json").read_text())
    assert [sh["gen"] for sh in manifest["shards"]] == [1, 2] and manifest["deleted"]["rows"] == 1
    store = MetaStore(out)
    try:
        assert store.get("format_version") == FORMAT_VERSION and store.get("snapshot_files") is None
    finally:
        store.close()
    with StemIndex.open(out, model=FakeModel()) as index:
        assert len(index) == 29
        mix = songs[2]["keys"] + songs[2]["drums"]
        assert index.query(mix, "bass", k=1)[0].path == str(root / "song2" / "bass.wav")
        paths = {r.path for r in index.query(mix, "bass", k=40)}
        assert f"{OLD_ROOT}/song3/keys.wav" not in paths and f"{OLD_ROOT}/song2/bass.wav" in paths
