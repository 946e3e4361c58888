import json

import numpy as np
import pytest
import soundfile as sf
import torch

from stemjepa.config import DataConfig
from stemjepa.data.sampling import ChunkPairDataset, OffsetSampler, collate_pairs, mix_context, pick_label
from stemjepa.data.training_cache import TrainingCache, frame_rms_db
from stemjepa.errors import DataError
from stemjepa.training.fit import prepare_folder_cache


def make_song(folder, stems: dict, sr=16000):
    folder.mkdir(parents=True)
    entries = []
    for name, (wave, labels) in stems.items():
        sf.write(folder / f"{name}.wav", wave.astype(np.float32), sr)
        entries.append({"file": f"{name}.wav", "labels": labels})
    (folder / "stems.json").write_text(json.dumps({"stems": entries}))


def tone(seconds, freq=220.0, amp=0.3, sr=16000):
    t = np.arange(int(seconds * sr)) / sr
    return amp * np.sin(2 * np.pi * freq * t)


def test_frame_rms_db():
    x = np.ones((1, 3200), dtype=np.float32) * 0.1
    x[0, 1600:] = 0
    db = frame_rms_db(x, 1600)
    assert db.shape == (1, 2)
    assert db[0, 0] == pytest.approx(-20.0, abs=0.01) and db[0, 1] < -100


def test_sampler_picks_active_stems_and_non_empty_context(tmp_path):
    # stem "late" is silent for the first 10 s, "quiet" is always below the threshold, one song is silent throughout.
    late = np.concatenate([np.zeros(16000 * 10), tone(10, 330)])
    make_song(tmp_path / "data" / "a", {"bass": (tone(20, 55), ["bass", "electric bass"]), "late": (late, ["keys"]),
                                        "quiet": (tone(20) * 1e-5, []), "drums": (tone(20, 900, 0.2), ["drums"])})
    make_song(tmp_path / "data" / "silent", {"x": (np.zeros(16000 * 20), []), "y": (np.zeros(16000 * 20), [])})
    cache = TrainingCache(prepare_folder_cache(tmp_path / "data", tmp_path / "cache", 16000, progress=False))
    cfg = DataConfig(max_context_stems=3, label_level="random")
    ds = ChunkPairDataset(cache, cfg, chunk_samples=128000, length=200, seed=1)
    quiet_index = [s["name"] for s in cache.songs[0]["stems"]].index("quiet")
    for i in range(200):
        song, start, target, context, label, _ = ds.draw(i)
        assert cache.songs[song]["id"] == "a"  # the silent song never yields a pair
        active = set(ds.active_stems(song, start))
        assert target in active and len(context) >= 1 and set(context) <= active - {target}
        assert quiet_index not in context and quiet_index != target
        batch = collate_pairs([ds[i]])
        mix = mix_context(batch["context"], batch["owner"], batch["gains"], 1)
        assert float(mix.abs().max()) > 0.01  # never an all-zero context
    # determinism: sample i is a function of (seed, i) only
    a, b = ds[17], ds[17]
    assert a["label"] == b["label"] and np.array_equal(a["target"].numpy(), b["target"].numpy())


def test_sampler_refuses_data_without_pairs(tmp_path):
    make_song(tmp_path / "data" / "solo", {"only": (tone(10), ["piano"])})
    cache = TrainingCache(prepare_folder_cache(tmp_path / "data", tmp_path / "cache", 16000, progress=False))
    with pytest.raises(DataError, match="at least two stems"):
        ChunkPairDataset(cache, DataConfig(), 128000, 10)


def test_pick_label_levels():
    rng = np.random.default_rng(0)
    path = ["guitar", "electric guitar", "lead electric guitar"]
    assert pick_label(path, "fine", rng) == "lead electric guitar"
    assert pick_label(path, "coarse", rng) == "guitar"
    assert pick_label([], "random", rng) == "music"
    assert {pick_label(path, "random", rng) for _ in range(100)} == set(path)


def test_offset_sampler_splits_global_batches_over_ranks():
    ranks = [list(OffsetSampler(16, start=8, rank=r, world_size=2)) for r in range(2)]
    assert ranks[0] == [8, 10, 12, 14] and ranks[1] == [9, 11, 13, 15]


def test_collate_packs_variable_contexts_and_mixes_per_sample():
    items = [{"context": torch.ones(k, 4, dtype=torch.float16) * (i + 1), "gains": torch.full((k,), 0.5),
              "target": torch.zeros(4), "label": "x", "index": i} for i, k in enumerate([1, 3])]
    batch = collate_pairs(items)
    assert batch["context"].shape == (4, 4) and batch["owner"].tolist() == [0, 1, 1, 1]
    mix = mix_context(batch["context"], batch["owner"], batch["gains"], 2)
    assert torch.allclose(mix, torch.tensor([[0.5] * 4, [3.0] * 4]))


def test_folder_cache_follows_changed_and_deleted_songs(tmp_path):
    import shutil

    make_song(tmp_path / "data" / "a", {"b": (tone(3, 55), ["bass"]), "k": (tone(3, 330), ["keys"])})
    make_song(tmp_path / "data" / "gone", {"x": (tone(3, 110), []), "y": (tone(3, 440), [])})
    cache_dir = prepare_folder_cache(tmp_path / "data", tmp_path / "cache", 16000, progress=False)
    assert {s["id"] for s in TrainingCache(cache_dir).songs} == {"a", "gone"}
    shutil.rmtree(tmp_path / "data" / "gone")
    sf.write(tmp_path / "data" / "a" / "b.wav", (tone(3, 55) * 0.01).astype(np.float32), 16000)  # a changed stem
    prepare_folder_cache(tmp_path / "data", cache_dir, 16000, progress=False)
    cache = TrainingCache(cache_dir)
    assert [s["id"] for s in cache.songs] == ["a"]
    assert float(np.abs(cache.audio(0)[0]).max()) < 0.01  # the new file, not the cached copy of the old one


def test_unaligned_target_comes_from_another_time_where_the_stem_plays(tmp_path):
    # the "ramp" stem's level names the time (its amplitude grows through the song), so the target's time can be read back
    sr, seconds = 16000, 24
    t = np.arange(seconds * sr) / sr
    ramp = (0.05 + 0.9 * t / seconds) * np.sign(np.sin(2 * np.pi * 110 * t))
    late = np.concatenate([np.zeros(sr * 12), tone(12, 330)])  # plays only in the second half
    make_song(tmp_path / "data" / "a", {"ramp": (ramp, ["keys"]), "late": (late, ["bass"]),
                                        "drums": (tone(seconds, 900), ["drums"])})
    cache = TrainingCache(prepare_folder_cache(tmp_path / "data", tmp_path / "cache", sr, progress=False))
    chunk = 2 * sr
    names = [s["name"] for s in cache.songs[0]["stems"]]
    aligned = ChunkPairDataset(cache, DataConfig(), chunk_samples=chunk, length=300, seed=3)
    moved = ChunkPairDataset(cache, DataConfig(unaligned_target=1.0), chunk_samples=chunk, length=300, seed=3)
    audio = cache.audio(0)
    n_moved = 0
    for i in range(300):
        song, start, target, _, _, rng = moved.draw(i)
        t0 = moved.target_start(song, start, target, rng)
        assert target in moved.active_stems(song, t0)  # never a silent target
        if t0 != start:
            n_moved += 1
            assert abs(t0 - start) >= chunk // 2
        item = moved[i]
        assert np.array_equal(item["target"].numpy(), audio[target, t0:t0 + chunk].astype(np.float16))
        if names[target] == "late":
            assert t0 + chunk * 3 // 4 >= 12 * sr - sr // 10  # the late stem only where it plays (a quarter of the chunk)
        # off: the target is the context's chunk, as before the option existed
        song, start, target, _, _, _ = aligned.draw(i)
        assert np.array_equal(aligned[i]["target"].numpy(), audio[target, start:start + chunk].astype(np.float16))
    assert n_moved > 200  # almost every target moved
