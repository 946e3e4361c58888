"""benchmarks/table1.py end to end at the tiny size: five rows trained for two steps each on a generic training folder, each
evaluated on MUSDB18-HQ and MoisesDB fixtures written in their real layouts, the table printed beside the paper's numbers,
and a second run that redoes nothing."""
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import load_benchmark
from toy import write_toy_corpus

pytestmark = pytest.mark.slow

SR = 16000


def _tone(f0: float, seconds: float, seed: int) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    env = np.exp(-5 * ((t * (1 + seed % 3)) % 0.5))
    return ((0.25 * np.sin(2 * np.pi * f0 * t) + 0.02 * rng.standard_normal(len(t))) * env).astype(np.float32)


def write_musdb18hq(root: Path, seconds: float = 4.0) -> Path:
    """{train,test}/<Artist - Title>/{mixture,drums,bass,other,vocals}.wav: 2 train tracks and 1 test track."""
    for i, (split, name) in enumerate((("train", "A - One"), ("train", "B - Two"), ("test", "C - Three"))):
        folder = root / split / name
        folder.mkdir(parents=True)
        stems = {src: _tone(f, seconds, 10 * i + j) for j, (src, f) in
                 enumerate((("drums", 90.0), ("bass", 55.0 * (1 + i / 7)), ("other", 330.0), ("vocals", 440.0 * (1 + i / 9))))}
        for src, wave in stems.items():
            sf.write(folder / f"{src}.wav", np.stack([wave, wave], 1), SR)
        mix = sum(stems.values())
        sf.write(folder / "mixture.wav", np.stack([mix, mix], 1), SR)
    return root


def write_moisesdb(root: Path, seconds: float = 4.0) -> Path:
    """moisesdb_v0.1/<uuid>/data.json + <stemName>/<track id>.wav, two songs with fine trackTypes."""
    stems = [("bass", "bass_guitar", 55.0), ("vocals", "lead_female_singer", 440.0), ("guitar", "clean_electric_guitar", 330.0),
             ("piano", "electric_piano", 262.0)]
    for s in range(2):
        song = root / "moisesdb_v0.1" / f"0a1b2c3d-0000-4000-8000-00000000010{s}"
        data = {"song": f"Song {s}", "artist": "Artist", "genre": "pop", "stems": []}
        for j, (stem_name, track_type, f0) in enumerate(stems):
            track_id = f"t{s}{j}"
            (song / stem_name).mkdir(parents=True)
            sf.write(song / stem_name / f"{track_id}.wav", _tone(f0 * (1 + s / 5), seconds, 100 + 10 * s + j), SR)
            data["stems"].append({"id": f"s{s}{j}", "stemName": stem_name,
                                  "tracks": [{"id": track_id, "trackType": track_type, "extension": "wav", "has_bleed": False}]})
        (song / "data.json").write_text(json.dumps(data))
    return root


def test_table1_benchmark_runs_end_to_end_and_resumes(tmp_path, capsys, monkeypatch):
    train = write_toy_corpus(tmp_path / "train", n_songs=3, seconds=4.0)
    musdb = write_musdb18hq(tmp_path / "musdb18hq")
    moises = write_moisesdb(tmp_path / "moisesdb")
    out = tmp_path / "table1"
    argv = ["--train", str(train), "--musdb", str(musdb), "--moisesdb", str(moises), "--out", str(out), "--size", "tiny",
            "--steps", "2", "--device", "cpu", "--quiet", "--set", "data.batch_size=4", "--set", "data.num_workers=0",
            "--set", "model.encoder.depth=1", "--set", "checkpoint_every=1000", "--set", "log_every=1"]
    bench = load_benchmark("table1")
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert "pool musdb: musdb18hq, split all, 3 songs" in printed  # Table I's pool: train and test tracks
    assert "### MUSDB18: this run (paper)" in printed and "### MoisesDB (coarse conditioning): this run (paper)" in printed
    assert "(38.8)" in printed and "(22.0)" in printed  # the paper's +FiLM R@1 beside ours
    assert "| chance | 8.3 | 41.7 | 83.3 |" in printed  # 12 MUSDB stems
    assert "Euclidean (L2) distance (the paper)" in printed
    dump = json.loads((out / "table1.json").read_text())
    assert set(dump["rows"]) == {r[0] for r in bench.ROWS}
    for key, row in dump["rows"].items():
        assert set(row) == {"musdb/fine", "moisesdb/fine", "moisesdb/coarse"}, key
        assert row["musdb/fine"]["n_pool"] == 12 and row["moisesdb/fine"]["n_pool"] == 8
        assert row["musdb/fine"]["training_overlap"] == 0  # the toy training songs are none of the evaluated ones
        for m in row.values():
            assert 0.0 <= m["R@1"] <= m["R@5"] <= m["R@10"] <= 100.0
    assert dump["rows"]["film"]["moisesdb/fine"]["paper"]["R@1"] == 22.0
    from stemjepa.models import load_model

    film = load_model(out / "runs" / "film" / "checkpoints" / "last.ckpt", device="cpu")
    assert film.training_songs["folder"]["n"] == 3  # its own songs and, through --init, phase 1's (the same three)

    # everything is done: a second run trains and evaluates nothing
    import stemjepa.evaluation.retrieval as retrieval
    import stemjepa.training.fit as fit

    monkeypatch.setattr(fit, "fit", lambda *a, **k: pytest.fail("trained again"))
    monkeypatch.setattr(retrieval, "evaluate_retrieval", lambda *a, **k: pytest.fail("evaluated again"))
    assert bench.main(argv) == 0
    again = capsys.readouterr().out
    assert again.count("skipped") == 5 and (out / "table1.md").read_text().count("(paper)") == 3
