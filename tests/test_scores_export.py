"""Readable scores (z-score within the library, percentile, raw cosine) and `stemjepa query --export`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from test_search_fakes import SR, FakeModel, noise, tone, write, write_songs

from stemjepa.audio.io import resample
from stemjepa.audio.mix import align, balance_gains, premix
from stemjepa.cli.main import main
from stemjepa.search import StemIndex, build_index
from stemjepa.search.scores import PoolStats, percentile, standardised


def test_scores_place_a_cosine_within_the_pool():
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((500, 16)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    q = pool[3]
    mean, std = PoolStats(pool).moments(q)
    cos = pool @ q
    assert mean == pytest.approx(float(cos.mean()), abs=1e-6) and std == pytest.approx(float(cos.std()), abs=1e-6)
    small = PoolStats(pool, sample_size=100)  # a large pool is estimated from an even sample
    assert len(small.sample) == 100 and small.moments(q)[1] == pytest.approx(std, rel=0.3)
    assert standardised(float(cos[3]), mean, std) > 3.5  # the vector itself stands out (1/sqrt(16) spread)
    assert standardised(0.5, 0.5, 0.0) == 0.0  # no spread (one file): no claim
    assert (percentile(1, 11), percentile(6, 11), percentile(11, 11), percentile(1, 1)) == (100.0, 50.0, 0.0, 100.0)


def test_collapsed_pool_still_gets_readable_scores():
    """Vectors sharing one direction (raw cosines all ~0.999) still separate the stand-out from the crowd."""
    rng = np.random.default_rng(1)
    common = rng.standard_normal(32)
    pool = common + 0.02 * rng.standard_normal((200, 32))
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    q = pool[7] + 0.001 * rng.standard_normal(32)
    q /= np.linalg.norm(q)
    cos = pool @ q
    assert cos.min() > 0.99  # raw cosines say nothing
    mean, std = PoolStats(pool).moments(q)
    z = np.array([standardised(c, mean, std) for c in cos])
    assert z[7] > 3 and np.median(z) < 0.5 and int(np.argmax(z)) == 7


def test_index_results_carry_score_percentile_and_cosine(tmp_path):
    root = tmp_path / "stems"
    songs = write_songs(root)
    build_index(root, tmp_path / "idx", FakeModel(), progress=False)
    with StemIndex.open(tmp_path / "idx", model=FakeModel()) as index:
        res = index.query(songs[2]["keys"] + songs[2]["drums"], "bass", k=15)
    assert res[0].path.endswith("song2/bass.wav")
    assert [r.percentile for r in res] == pytest.approx([100 * (15 - i) / 14 for i in range(1, 16)])
    assert [r.score for r in res] == sorted((r.score for r in res), reverse=True)
    assert res[0].score > 2.5 > res[1].score  # the right bass stands out; the rest are ordinary
    assert res[0].cosine > 0.99 and all(-1 <= r.cosine <= 1 for r in res)
    assert abs(np.mean([r.score for r in res])) < 0.5  # all 15 files: their z-scores average about 0


def test_align_loops_and_trims_at_the_offset():
    cand = np.arange(10, dtype=np.float32)[None] / 10
    out = align(cand, 10, offset=0.4, frames=15, sample_rate=10)
    assert out.shape == (1, 15)
    assert np.allclose(out[0] * 10, [4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6, 7, 8])
    assert np.allclose(align(cand, 10, 0.0, 4, 10)[0] * 10, [0, 1, 2, 3])  # trimmed
    stereo = np.stack([cand[0], -cand[0]])
    assert align(stereo, 10, 0.2, 5, 10).shape == (2, 5)
    assert balance_gains(0.0) == (1.0, 0.0) and balance_gains(0.5) == (1.0, 1.0) and balance_gains(1.0) == (0.0, 1.0)
    loud = premix(np.ones((1, 8), np.float32), np.ones((2, 8), np.float32))
    assert loud.shape == (2, 8) and float(np.max(np.abs(loud))) == pytest.approx(0.99)  # never clips


def test_query_export_writes_candidates_aligned_to_the_mix(tmp_path, monkeypatch, capsys):
    root = tmp_path / "stems"
    # 7 s stem in 2 s chunks: noise, noise, 98 Hz tone (4-6 s), noise -> the fake matches it at 4 s
    long = np.concatenate([noise(4.0, 0.3, seed=1), tone(98.0, 2.0), noise(1.0, 0.3, seed=2)])
    write(root / "long.wav", long)
    write(root / "other.wav", tone(220.0, 3.0))
    ckpt = tmp_path / "fake.ckpt"
    ckpt.write_bytes(b"x")
    monkeypatch.setattr("stemjepa.models.registry.load_model", lambda path, device=None: FakeModel())
    assert main(["index", str(root), "--checkpoint", str(ckpt), "--out", str(tmp_path / "idx"), "--quiet"]) == 0
    mix_sr = 22050  # the mix's own rate and channels, not the model's
    mono = resample(tone(4 * 98.0, 5.0, 0.2), SR, mix_sr)
    mix_path = tmp_path / "my mix.wav"
    sf.write(mix_path, np.stack([mono, mono]).T, mix_sr, subtype="FLOAT")
    out = tmp_path / "export"
    assert main(["query", str(mix_path), "--instrument", "bass", "--index", str(tmp_path / "idx"), "-k", "2",
                 "--export", str(out)]) == 0
    table = capsys.readouterr().out
    assert " z " in table and "percentile" in table
    doc = json.loads((out / "results.json").read_text())
    assert doc["sample_rate"] == mix_sr and doc["frames"] == len(mono) and len(doc["results"]) == 2
    best = doc["results"][0]
    assert best["path"].endswith("long.wav") and best["offset"] == 4.0
    assert {"z", "cosine", "percentile", "analysis"} <= set(best)
    data, sr = sf.read(out / best["file"], dtype="float32", always_2d=True)
    assert sr == mix_sr and data.shape == (len(mono), 1)
    expected = np.clip(resample(long, SR, mix_sr), -1, 1)  # written as PCM: clipped to full scale
    start = 4 * mix_sr
    n = len(expected) - start  # 3 s from the offset to the stem's end, then it loops from the start
    assert np.allclose(data[:n, 0], expected[start:], atol=1e-4)
    assert np.allclose(data[n:, 0], expected[:len(mono) - n], atol=1e-4)
    # nothing is overwritten without being asked
    assert main(["query", str(mix_path), "--instrument", "bass", "--index", str(tmp_path / "idx"), "-k", "2",
                 "--export", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["query", str(mix_path), "--instrument", "bass", "--index", str(tmp_path / "idx"), "-k", "2",
                 "--export", str(out), "--overwrite"]) == 0
