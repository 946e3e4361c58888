"""The retrieval benchmark end to end with fake models on a tiny folder corpus of tones: outputs, exclusions, cache,
out-dir protection, reports and the CLI."""
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stemjepa.cli.main import main
from stemjepa.data.multitrack import Stem, load_song, read_folder
from stemjepa.errors import StemJepaError
from stemjepa.evaluation import RetrievalProtocol, compare_table, evaluate_retrieval
from stemjepa.evaluation.retrieval import conditioning_label, is_silent, load_songs, other_stems_mix
from stemjepa.models.inference import TrackEmbedding
from stemjepa.models.source import IN_MEMORY

FINE, COARSE = RetrievalProtocol(label_level="fine"), RetrievalProtocol(label_level="coarse")

SR = 16000

# (file, labels coarse -> fine, frequency offset); every song transposes its tones so no two stems are alike
STEMS = [
    ("bass.wav", ["bass", "bass guitar"], 55.0),
    ("gtr1.wav", ["guitar", "electric guitar"], 330.0),
    ("gtr2.wav", ["guitar", "acoustic guitar"], 440.0),
    ("keys.wav", [], 880.0),
]


def write_corpus(root: Path, n_songs: int = 3, seconds: float = 0.5, silent_stem: bool = True) -> Path:
    t = np.arange(int(seconds * SR)) / SR
    for s in range(n_songs):
        d = root / f"song{s}"
        d.mkdir(parents=True)
        entries = []
        for j, (fname, labels, f0) in enumerate(STEMS):
            wave = 0.3 * np.sin(2 * np.pi * f0 * (1 + 0.13 * s + 0.01 * j) * t)
            sf.write(d / fname, wave.astype(np.float32), SR)
            entries.append({"file": fname, "labels": labels})
        if silent_stem and s == 0:
            sf.write(d / "silent.wav", np.zeros_like(t, dtype=np.float32), SR)
            entries.append({"file": "silent.wav", "labels": ["fx"]})
        (d / "stems.json").write_text(json.dumps({"stems": entries}))
    return root


def band_vector(wave: np.ndarray, n_bands: int = 48) -> np.ndarray:
    """A crude, deterministic embedding: log energies of log-spaced FFT bands."""
    spec = np.abs(np.fft.rfft(np.asarray(wave, np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(wave), 1 / SR)
    edges = np.geomspace(30, SR / 2, n_bands + 1)
    idx = np.clip(np.searchsorted(edges, freqs) - 1, 0, n_bands - 1)
    return np.log1p(np.bincount(idx, weights=spec, minlength=n_bands)).astype(np.float32)


def track(vector: np.ndarray) -> TrackEmbedding:
    """A one-chunk TrackEmbedding of `vector` (the benchmark only reads the track vector)."""
    vector = np.asarray(vector, np.float32)
    return TrackEmbedding(chunks=vector[None], offsets=np.zeros(1, np.float32), weights=np.ones(1, np.float32),
                          vector=vector)


class FakeModel:
    """An EmbeddingModel with a band-energy embedding. `oracle` maps a mix (by its bytes) to the stem it lacks, so the
    query can equal its target exactly; without an entry the query is the mix embedding (a contrastive baseline)."""

    sample_rate = SR
    chunk_samples = 8 * SR
    embed_dim = 48
    source = IN_MEMORY
    precision = "auto"
    distance = "l2"

    def __init__(self, model_id="fake-1", oracle=None, has_predictor=True):
        self.model_id = model_id
        self.oracle = oracle or {}
        self.has_predictor = has_predictor
        self.conditioning_kind = "text" if has_predictor else "none"
        self.calls = Counter()
        self.labels_seen = []

    @property
    def known_labels(self) -> list[str]:
        return []  # text conditioning that records no training labels

    def embed_many(self, waves, batch_size=16, target=True, precision=None):
        self.calls["embed"] += len(waves)
        return [track(band_vector(w)) for w in waves]

    def query_many(self, mixes, labels, batch_size=16, precision=None):
        self.calls["query"] += len(mixes)
        self.labels_seen += list(labels)
        return [track(band_vector(self.oracle.get(_key(m), m))) for m in mixes]


def _key(wave: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(wave, np.float32).tobytes()).hexdigest()


def oracle_for(songs) -> dict:
    oracle = {}
    for song in songs:
        audio = load_song(song, SR).audio
        for row in range(len(audio)):
            oracle[_key(other_stems_mix(audio, row))] = audio[row]
    return oracle


@pytest.fixture()
def corpus(tmp_path):
    root = write_corpus(tmp_path / "corpus")
    songs, problems = read_folder(root)
    assert not problems
    return songs


def test_queries_equal_to_targets_give_perfect_scores_and_all_outputs(corpus, tmp_path):
    model = FakeModel(oracle=oracle_for(corpus))
    out = tmp_path / "run"
    m = evaluate_retrieval(model, corpus, FINE, out, progress=False)
    n_pool = 3 * 4  # the silent stem of song0 is excluded
    assert m["n_pool"] == n_pool and m["n_queries"] == n_pool and m["n_silent_excluded"] == 1
    assert m["R@1"] == 100.0 and m["R@10"] == 100.0
    assert m["norm_rank_median"] == pytest.approx(100 / n_pool)
    assert m["top1_k64"] == 100.0 and m["k64_candidates"] == 9  # 8 stems of other tracks exist
    for f in ("metrics.json", "rankings.csv", "analysis.csv", "fig2.png", "report.md"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    on_disk = json.loads((out / "metrics.json").read_text())
    for k in ("R@1", "R@5", "R@10", "norm_rank_mean", "norm_rank_median", "top1_k64", "n_queries", "n_pool",
              "checkpoint", "dataset", "split", "label_level", "n_silent_excluded", "seconds"):
        assert k in on_disk, k
    assert (out / "fig2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rankings = (out / "rankings.csv").read_text().splitlines()
    assert len(rankings) == 1 + n_pool and rankings[0].startswith("query,song,stem,label")
    analysis = (out / "analysis.csv").read_text().splitlines()
    assert analysis[-1].startswith("all,12,12,0,0,0,0,0")  # every nearest neighbour is the right stem
    assert "| fake-1 | 100.0 | 100.0 | 100.0 |" in (out / "report.md").read_text()
    # unlabelled stems are conditioned on "music", fine labels otherwise
    assert sorted(set(model.labels_seen)) == ["acoustic guitar", "bass guitar", "electric guitar", "music"]


def test_mix_embedding_baseline_has_values_in_range(corpus, tmp_path):
    m = evaluate_retrieval(FakeModel(has_predictor=False), corpus, COARSE, tmp_path / "run", progress=False)
    for k in ("R@1", "R@5", "R@10", "top1_k64"):
        assert 0.0 <= m[k] <= 100.0
    assert 100 / m["n_pool"] <= m["norm_rank_median"] <= 100.0
    assert m["R@1"] <= m["R@5"] <= m["R@10"]
    assert m["has_predictor"] is False


def test_cache_avoids_re_encoding(corpus, tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    first = FakeModel()
    m1 = evaluate_retrieval(first, corpus, FINE, out, cache_dir=cache, progress=False)
    assert first.calls == Counter(embed=12, query=12)
    again = FakeModel()
    m2 = evaluate_retrieval(again, corpus, FINE, out, cache_dir=cache, progress=False)
    assert again.calls == Counter()  # nothing re-encoded
    assert m2["n_songs_from_cache"] == 3 and m2["R@1"] == m1["R@1"] and m2["n_silent_excluded"] == 1
    coarse = FakeModel()
    evaluate_retrieval(coarse, corpus, COARSE, tmp_path / "run-coarse", cache_dir=cache, progress=False)
    # the pool is reused; only queries whose conditioning text changed are recomputed (fine "bass guitar" -> "bass"...)
    assert coarse.calls["embed"] == 0 and coarse.calls["query"] == 9
    other = FakeModel(model_id="fake-2")
    evaluate_retrieval(other, corpus, FINE, tmp_path / "run2", cache_dir=cache, progress=False)
    assert other.calls == Counter(embed=12, query=12)  # another checkpoint has its own cache


def test_changed_audio_invalidates_the_cache(tmp_path):
    root = write_corpus(tmp_path / "c", n_songs=2, silent_stem=False)
    songs, _ = read_folder(root)
    evaluate_retrieval(FakeModel(), songs, out_dir=tmp_path / "run", progress=False)
    sf.write(root / "song1" / "bass.wav", np.full(SR // 2, 0.1, np.float32), SR)
    model = FakeModel()
    evaluate_retrieval(model, songs, out_dir=tmp_path / "run", progress=False)
    assert model.calls == Counter(embed=4, query=4)  # song1 only


def test_refuses_results_of_another_checkpoint(corpus, tmp_path):
    out = tmp_path / "run"
    evaluate_retrieval(FakeModel("a"), corpus, out_dir=out, progress=False)
    evaluate_retrieval(FakeModel("a"), corpus, out_dir=out, progress=False)  # a re-run is fine
    with pytest.raises(StemJepaError, match="another"):
        evaluate_retrieval(FakeModel("b"), corpus, out_dir=out, progress=False)
    with pytest.raises(StemJepaError, match="label_level='fine' \\(now 'coarse'\\)"):
        evaluate_retrieval(FakeModel("a"), corpus, COARSE, out_dir=out, progress=False)
    m = evaluate_retrieval(FakeModel("b"), corpus, out_dir=out, overwrite=True, progress=False)
    assert json.loads((out / "metrics.json").read_text())["model_id"] == "b" == m["model_id"]
    user = tmp_path / "user"
    user.mkdir()
    (user / "report.md").write_text("my notes")
    with pytest.raises(StemJepaError, match="report.md"):
        evaluate_retrieval(FakeModel("a"), corpus, out_dir=user, progress=False)
    assert (user / "report.md").read_text() == "my notes"


def test_silent_mix_and_unreadable_files_are_excluded_and_counted(tmp_path):
    root = write_corpus(tmp_path / "c", n_songs=2, silent_stem=False)
    solo = root / "solo"
    solo.mkdir()
    sf.write(solo / "a.wav", 0.2 * np.sin(np.arange(SR // 2) * 0.3).astype(np.float32), SR)
    sf.write(solo / "b.wav", np.zeros(SR // 2, np.float32), SR)
    (solo / "c.wav").write_bytes(b"not audio")
    (solo / "stems.json").write_text(json.dumps({"stems": [{"file": "a.wav"}, {"file": "b.wav"}, {"file": "c.wav"}]}))
    broken = root / "broken"
    broken.mkdir()
    (broken / "x.wav").write_bytes(b"junk")
    (broken / "stems.json").write_text(json.dumps({"stems": [{"file": "x.wav"}]}))
    songs, _ = read_folder(root)
    m = evaluate_retrieval(FakeModel(), songs, out_dir=tmp_path / "run", progress=False)
    assert m["n_pool"] == 9 and m["n_queries"] == 8  # solo/a is in the pool but has only silence as context
    assert m["n_silent_excluded"] == 1 and m["n_silent_mix_excluded"] == 1 and m["n_stems_unreadable"] == 1
    assert [s["song"] for s in m["skipped"]] == ["broken"]


def test_labels_and_silence_helpers():
    other = Stem("other", Path("o.wav"), ["other"])
    assert conditioning_label(other, "fine", {"other": "music"}) == "music"
    assert conditioning_label(Stem("x", Path("x.wav"), []), "coarse") == "music"
    assert conditioning_label(Stem("g", Path("g.wav"), ["guitar", "electric guitar"]), "coarse") == "guitar"
    with pytest.raises(StemJepaError):
        conditioning_label(other, "medium")
    assert is_silent(np.zeros(SR)) and is_silent(np.full(SR, 1e-4))
    blip = np.zeros(10 * SR, np.float32)
    blip[5 * SR: 5 * SR + 1600] = 0.05  # one 100 ms event in 10 s of silence is not silent
    assert not is_silent(blip)


def test_musdb_other_is_conditioned_on_music(tmp_path):
    songs, _ = read_folder(write_corpus(tmp_path / "c", n_songs=2, silent_stem=False))
    for song in songs:
        song.stems[3].labels = ["other"]
    model = FakeModel()
    m = evaluate_retrieval(model, songs, RetrievalProtocol(dataset="musdb18", split="test"), out_dir=tmp_path / "run",
                           progress=False)
    assert "music" in model.labels_seen and "other" not in model.labels_seen
    assert m["label_map"] == {"other": "music"}


def test_compare_table_layout(corpus, tmp_path):
    evaluate_retrieval(FakeModel("a"), corpus, FINE, tmp_path / "a-fine", name="contrastive", progress=False)
    evaluate_retrieval(FakeModel("a"), corpus, COARSE, tmp_path / "a-coarse", name="contrastive", progress=False)
    evaluate_retrieval(FakeModel("b", oracle_for(corpus)), corpus, FINE, tmp_path / "b-fine", name="oracle", progress=False)
    table = compare_table([tmp_path / "a-fine", tmp_path / "a-coarse", tmp_path / "b-fine"])
    lines = table.strip().splitlines()
    assert lines[0].startswith("| model | folder fine: R@1 |") and "folder coarse: median rank" in lines[0]
    assert lines[2].startswith("| contrastive |") and lines[3].startswith("| oracle | 100.0 |")
    assert lines[3].endswith("| - | - | - | - | - |")  # the oracle was not run with coarse labels
    # chance beside the table: R@1 = 1 / 12, R@5 = 5 / 12, R@10 = 10 / 12, normalised rank (12 + 1) / 24
    assert lines[4] == "| chance (pool of 12 / 12) | 8.3 | 41.7 | 83.3 | 54.2 | 54.2 | 8.3 | 41.7 | 83.3 | 54.2 | 54.2 |"
    assert "- folder fine: pool of 12 stems from 3 songs, distance l2, reference encoder target" in lines
    single = compare_table([tmp_path / "b-fine"], extra=("top1_k64", "seconds"))
    assert "| model | R@1 | R@5 | R@10 | mean rank | median rank | top-1 K=64 | time (s) |" in single
    with pytest.raises(StemJepaError, match="metrics.json"):
        compare_table([tmp_path])


def test_cli_retrieval_and_compare(tmp_path, monkeypatch, capsys):
    root = write_corpus(tmp_path / "corpus", n_songs=2, silent_stem=False)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"fake")
    fake = FakeModel("cli")
    monkeypatch.setattr("stemjepa.models.load_model", lambda path, device=None: fake)
    out = tmp_path / "eval"
    argv = ["eval", "retrieval", "--checkpoint", str(ckpt), "--dataset", "folder", "--root", str(root), "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| run |" in printed and "8 queries" in printed
    m = json.loads((out / "metrics.json").read_text())
    assert m["name"] == "run" and m["split"] == "all" and m["checkpoint"] == str(ckpt)
    assert any((out / "cache").rglob("*.npz"))
    monkeypatch.setattr("stemjepa.models.load_model", lambda path, device=None: FakeModel("other"))
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["eval", "compare", str(out), "--k64", "--out", str(tmp_path / "t.md")]) == 0
    assert "| run |" in capsys.readouterr().out and "top-1 K=64" in (tmp_path / "t.md").read_text()
    assert main(["eval", "compare", str(out), "--out", str(tmp_path / "t.md")]) == 2  # no silent overwrite
    assert main(["eval", "compare", str(tmp_path / "nothing")]) == 2
    assert main(["eval", "retrieval", "--checkpoint", str(tmp_path / "no.ckpt"), "--dataset", "folder",
                 "--root", str(root), "--out", str(out)]) == 2


def test_results_written_before_the_label_level_rename_stay_readable(corpus, tmp_path):
    out = tmp_path / "run"
    evaluate_retrieval(FakeModel("a"), corpus, COARSE, out, progress=False)
    old = json.loads((out / "metrics.json").read_text())
    old["conditioning"] = old.pop("label_level")  # how metrics.json spelt it before
    (out / "metrics.json").write_text(json.dumps(old))
    assert compare_table([out]).startswith("Benchmark: folder coarse (percent)")
    evaluate_retrieval(FakeModel("a"), corpus, COARSE, out, progress=False)  # the same evaluation: no refusal
    with pytest.raises(StemJepaError, match="label_level"):
        evaluate_retrieval(FakeModel("a"), corpus, FINE, out, progress=False)


@pytest.mark.parametrize("flag", ["--label-level", "--conditioning"])
def test_cli_label_level_keeps_its_old_spelling(tmp_path, monkeypatch, flag):
    root = write_corpus(tmp_path / "corpus", n_songs=2, silent_stem=False)
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(b"x")
    fake = FakeModel("cli")
    monkeypatch.setattr("stemjepa.models.load_model", lambda path, device=None: fake)
    out = tmp_path / "eval"
    assert main(["eval", "retrieval", "--checkpoint", str(ckpt), "--dataset", "folder", "--root", str(root),
                 "--out", str(out), flag, "coarse"]) == 0
    assert json.loads((out / "metrics.json").read_text())["label_level"] == "coarse"
    assert "bass" in fake.labels_seen and "bass guitar" not in fake.labels_seen


def test_load_songs_folder_split(tmp_path):
    root = write_corpus(tmp_path / "c", n_songs=2, silent_stem=False)
    songs, split, problems = load_songs("folder", root, None)
    assert len(songs) == 2 and split == "all" and not problems


def test_scoring_in_query_blocks_gives_the_same_results(corpus):
    from stemjepa.evaluation.retrieval import encode_corpus, score_corpus

    enc = encode_corpus(FakeModel(), corpus, progress=False)
    whole, rows_whole, tally_whole = score_corpus(enc, k64_draws=3)
    blocked, rows_blocked, tally_blocked = score_corpus(enc, k64_draws=3, block=5)
    for k in ("R@1", "R@5", "R@10", "norm_rank_mean", "norm_rank_median", "k64_candidates"):
        assert whole[k] == blocked[k]
    assert [r["rank"] for r in rows_whole] == [r["rank"] for r in rows_blocked]
    assert [r["nn_class"] for r in rows_whole] == [r["nn_class"] for r in rows_blocked] and tally_whole == tally_blocked
    assert 0.0 <= blocked["top1_k64"] <= 100.0


def test_evaluate_checkpoints_gives_the_ablation_table(corpus, tmp_path):
    from stemjepa.evaluation import evaluate_checkpoints

    models = {"baseline": FakeModel("m1", has_predictor=False), "oracle": FakeModel("m2", oracle_for(corpus))}
    table = evaluate_checkpoints(models, corpus, tmp_path / "ablations", progress=False)
    assert (tmp_path / "ablations" / "oracle" / "fig2.png").is_file()
    lines = table.strip().splitlines()
    assert "top-1 K=64 | time (s) |" in lines[2]
    rows = [l for l in lines if l.startswith("| ")]
    assert rows[-3].startswith("| baseline |") and rows[-2].startswith("| oracle | 100.0 | 100.0 | 100.0 |")
    assert rows[-1].startswith("| chance (pool of 12) | 8.3 |")


def test_cli_musdb18hq_layout_defaults_to_table1_pool_and_music_label(tmp_path, monkeypatch):
    root = tmp_path / "musdb18hq"
    t = np.arange(SR // 2) / SR
    for split, n in (("train", 1), ("test", 2)):
        for i in range(n):
            d = root / split / f"Artist {i} - Title {split}"
            d.mkdir(parents=True)
            for j, src in enumerate(("mixture", "drums", "bass", "other", "vocals")):
                sf.write(d / f"{src}.wav", (0.2 * np.sin(2 * np.pi * (100 + 37 * j + 11 * i) * t)).astype(np.float32), SR)
    fake = FakeModel("musdb")
    monkeypatch.setattr("stemjepa.models.load_model", lambda path, device=None: fake)
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(b"x")
    out = tmp_path / "eval"
    assert main(["eval", "retrieval", "--checkpoint", str(ckpt), "--dataset", "musdb18hq", "--root", str(root),
                 "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    # Table I's pool: every track of train and test (the mixture is not a stem)
    assert m["split"] == "all" and m["n_songs"] == 3 and m["n_pool"] == 12
    assert m["chance"]["R@1"] == pytest.approx(100 / 12) and m["distance"] == "l2"
    assert sorted(set(fake.labels_seen)) == ["bass", "drums", "music", "vocals"]
    out2 = tmp_path / "eval-test"
    assert main(["eval", "retrieval", "--checkpoint", str(ckpt), "--dataset", "musdb18hq", "--root", str(root), "--out",
                 str(out2), "--split", "test"]) == 0
    m = json.loads((out2 / "metrics.json").read_text())
    assert m["split"] == "test" and m["n_songs"] == 2 and m["n_pool"] == 8


def test_single_track_corpus_has_no_k64_and_empty_input_is_refused(tmp_path):
    songs, _ = read_folder(write_corpus(tmp_path / "c", n_songs=1, silent_stem=False))
    m = evaluate_retrieval(FakeModel(), songs, out_dir=tmp_path / "run", progress=False)
    assert m["top1_k64"] is None and m["k64_candidates"] == 1
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["top1_k64"] is None
    assert "| - |" in (tmp_path / "run" / "report.md").read_text()
    with pytest.raises(StemJepaError, match="no songs"):
        evaluate_retrieval(FakeModel(), [], out_dir=tmp_path / "run2", progress=False)
