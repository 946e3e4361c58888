"""Table I protocol (issue 14): the default pools, L2 vs cosine ranking, chance levels and collapse diagnostics beside the
scores, the reference encoder, the training-songs overlap check and the Fig. 2 label colours."""
import json
import logging

import numpy as np
import pytest
import soundfile as sf
from test_eval_retrieval import FakeModel, band_vector, oracle_for, track, write_corpus

from stemjepa.cli.main import main
from stemjepa.data.multitrack import read_folder
from stemjepa.errors import StemJepaError
from stemjepa.evaluation import RetrievalProtocol, evaluate_retrieval, metrics
from stemjepa.evaluation.retrieval import Corpus, PoolItem, default_split, load_songs, score_corpus
from stemjepa.models.source import ModelSource

FINE, COARSE = RetrievalProtocol(label_level="fine"), RetrievalProtocol(label_level="coarse")

SR = 16000


def test_l2_and_cosine_rank_differently_on_a_hand_made_case():
    # q points the same way as a (cosine 1) but is much closer to b in Euclidean distance
    q = np.array([[1.0, 0.0]])
    pool = np.array([[3.0, 0.0], [1.0, 0.5], [-1.0, 0.0]])
    cos = metrics.similarities(q, pool, "cosine")
    l2 = metrics.similarities(q, pool, "l2")
    assert np.allclose(-l2[0], [2.0, 0.5, 2.0])
    assert metrics.target_ranks(cos, np.array([0]))[0] == 1 and metrics.target_ranks(cos, np.array([1]))[0] == 2
    assert metrics.target_ranks(l2, np.array([1]))[0] == 1
    assert metrics.target_ranks(l2, np.array([0]))[0] == 3  # ties with item 2 (both at distance 2) count against it
    with pytest.raises(ValueError, match="distance"):
        metrics.similarities(q, pool, "manhattan")

    # the same case through score_corpus: one query per pool item, query 0 is q with target a
    corpus = Corpus(items=[PoolItem("s0", "a", "x", "x", 0), PoolItem("s1", "b", "y", "y", 1), PoolItem("s2", "c", "z", "z", 2)],
                    pool=list(pool), queries=[q[0]], query_targets=[0], query_labels=["x"], n_songs=3)
    by_cos, _, _ = score_corpus(corpus, distance="cosine")
    by_l2, rows, _ = score_corpus(corpus, distance="l2")
    assert by_cos["R@1"] == 100.0 and by_l2["R@1"] == 0.0 and rows[0]["rank"] == 3
    assert rows[0]["target_score"] == pytest.approx(-2.0)


def test_chance_levels():
    c = metrics.chance_metrics(600)
    assert c["R@1"] == pytest.approx(100 / 600) and c["R@10"] == pytest.approx(100 * 10 / 600)
    assert c["norm_rank_median"] == pytest.approx(100 * 601 / 1200)
    assert metrics.chance_metrics(4)["R@5"] == 100.0


def test_table1_pools_are_whole_datasets(tmp_path):
    assert default_split("musdb18") == default_split("musdb18hq") == default_split("moisesdb") == "all"
    assert default_split("slakh2100") == "test" and default_split("folder") == "all"
    root = tmp_path / "musdb18hq"
    t = np.arange(SR // 4) / SR
    for split, n in (("train", 3), ("test", 2)):
        for i in range(n):
            d = root / split / f"Artist {split} {i} - Title"
            d.mkdir(parents=True)
            for j, src in enumerate(("mixture", "drums", "bass", "other", "vocals")):
                sf.write(d / f"{src}.wav", (0.2 * np.sin(2 * np.pi * (100 + 37 * j + 11 * i) * t)).astype(np.float32), SR)
    songs, split, _ = load_songs("musdb18hq", root)
    assert split == "all" and len(songs) == 5
    songs, split, _ = load_songs("musdb18hq", root, "test")
    assert split == "test" and len(songs) == 2


@pytest.fixture()
def corpus(tmp_path):
    songs, problems = read_folder(write_corpus(tmp_path / "corpus"))
    assert not problems
    return songs


def test_metrics_json_and_report_state_pool_chance_distance_and_encoder(corpus, tmp_path):
    out = tmp_path / "run"
    m = evaluate_retrieval(FakeModel(oracle=oracle_for(corpus)), corpus, FINE, out, progress=False)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["distance"] == "l2" and "Euclidean" in on_disk["distance_reason"]
    assert on_disk["reference_encoder"] == "target" and on_disk["n_pool"] == 12
    assert on_disk["chance"]["R@1"] == pytest.approx(100 / 12)
    assert on_disk["chance"]["norm_rank_median"] == pytest.approx(100 * 13 / 24)
    d = on_disk["pool_diagnostics"]
    assert d["n"] == 12 and set(d) >= {"median_cosine", "spread", "rankme", "collapsed"}
    report = (out / "report.md").read_text()
    assert "| chance (pool of 12) | 8.3 | 41.7 | 83.3 |" in report
    assert "pool of 12 stems from 3 songs" in report and "Euclidean (L2) distance (the paper)" in report
    assert m["training_overlap"]["checked"] is False  # a model that records no training songs

    cosine = RetrievalProtocol(distance="cosine")
    cos = evaluate_retrieval(FakeModel(oracle=oracle_for(corpus)), corpus, cosine, tmp_path / "cos", progress=False)
    assert cos["distance"] == "cosine" and "not the paper" in cos["distance_reason"]
    with pytest.raises(StemJepaError, match="--overwrite"):  # another distance is another evaluation
        evaluate_retrieval(FakeModel(oracle=oracle_for(corpus)), corpus, cosine, out, progress=False)


class CollapsedModel(FakeModel):
    """Every embedding is one shared vector plus a whisper of the input's own: the state of a collapsed encoder."""

    def embed_many(self, waves, batch_size=16, target=True, precision=None):
        common = np.linspace(1.0, 2.0, 48, dtype=np.float32)
        return [track(common + 1e-4 * band_vector(w)) for w in waves]

    def query_many(self, mixes, labels, batch_size=16, precision=None):
        return self.embed_many(mixes)


def test_a_collapsed_pool_is_flagged_loudly(corpus, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        m = evaluate_retrieval(CollapsedModel(), corpus, FINE, tmp_path / "run", progress=False)
    assert m["pool_diagnostics"]["collapsed"] is True and m["pool_diagnostics"]["median_cosine"] > 0.99
    assert "COLLAPSED" in caplog.text
    assert "COLLAPSED" in (tmp_path / "run" / "report.md").read_text()
    rng = np.random.default_rng(0)

    class Spread(FakeModel):
        def embed_many(self, waves, batch_size=16, target=True, precision=None):
            return [track(rng.standard_normal(48).astype(np.float32)) for _ in waves]

    spread = evaluate_retrieval(Spread(), corpus, FINE, tmp_path / "spread", progress=False)
    assert spread["pool_diagnostics"]["collapsed"] is False


def test_reference_encoder_context_embeds_the_pool_with_the_context_encoder(corpus, tmp_path):
    class Recording(FakeModel):
        def embed_many(self, waves, batch_size=16, target=True, precision=None):
            self.calls[f"target={target}"] += len(waves)
            return super().embed_many(waves, batch_size, target, precision)

    model = Recording()
    m = evaluate_retrieval(model, corpus, RetrievalProtocol(reference_encoder="context"), tmp_path / "ctx", progress=False)
    assert model.calls["target=False"] == 12 and model.calls["target=True"] == 0 and m["reference_encoder"] == "context"
    with pytest.raises(StemJepaError, match="reference encoder"):
        evaluate_retrieval(model, corpus, RetrievalProtocol(reference_encoder="predictor"), tmp_path / "x", progress=False)


def _training_record(root):
    from stemjepa.data.prepare import prepare
    from stemjepa.data.provenance import training_songs
    from stemjepa.data.training_cache import TrainingCache

    prepare("folder", root, root.parent / f"{root.name}-cache", progress=False)
    return training_songs(TrainingCache(root.parent / f"{root.name}-cache").songs)


def test_overlap_with_training_songs_warns_and_strict_refuses(tmp_path, caplog, monkeypatch):
    train_root = write_corpus(tmp_path / "train", n_songs=3)
    record = _training_record(train_root)
    assert record["folder"]["n"] == 3 and len(record["folder"]["digest"]) == 64
    train_songs, _ = read_folder(train_root)
    model = FakeModel()
    model.source = ModelSource("checkpoint", training_songs=record)
    with caplog.at_level(logging.WARNING):
        m = evaluate_retrieval(model, train_songs, FINE, tmp_path / "leak", progress=False)
    assert m["training_overlap"] == {"checked": True, "n_songs": 3, "of": 3, "examples": ["song0", "song1", "song2"]}
    assert "TRAINING songs" in caplog.text
    assert "3 evaluated songs were training songs" in (tmp_path / "leak" / "report.md").read_text()
    with pytest.raises(StemJepaError, match="--strict: 3 of the 3"):
        evaluate_retrieval(model, train_songs, FINE, tmp_path / "strict", strict=True, progress=False)

    # other songs that happen to have the same folder names (as two synthetic corpora do) are not training songs
    other_root = write_corpus(tmp_path / "other", n_songs=2)
    for d in other_root.iterdir():
        meta = json.loads((d / "stems.json").read_text())
        (d / "stems.json").write_text(json.dumps({**meta, "tempo": 99}))
    other, _ = read_folder(other_root)
    m = evaluate_retrieval(model, other, FINE, tmp_path / "clean", strict=True, progress=False)
    assert m["training_overlap"]["n_songs"] == 0

    # the CLI: warning without --strict, exit 2 with it
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(b"x")
    monkeypatch.setattr("stemjepa.models.load_model", lambda path, device=None: model)
    argv = ["eval", "retrieval", "--checkpoint", str(ckpt), "--dataset", "folder", "--root", str(train_root)]
    assert main(argv + ["--out", str(tmp_path / "cli")]) == 0
    assert main(argv + ["--out", str(tmp_path / "cli2"), "--strict"]) == 2


def test_musdb_families_share_song_ids():
    from stemjepa.data.provenance import song_identity

    assert song_identity("musdb18", "A - B") == song_identity("musdb18hq", "A - B") == "A - B"
    assert song_identity("folder", "song_00000", {"tempo": 90}) != song_identity("folder", "song_00000", {"tempo": 91})


def test_fig2_colours_seen_reworded_unseen():
    from stemjepa.evaluation.analysis import PRESENCE_COLOURS, label_presence

    # training labels of the demo's corpus: every level of its label paths, without the held-out instruments
    seen = {"piano", "electric piano", "fm electric piano", "vocals", "lead vocals", "background vocals", "bass",
            "electric bass", "lead female singer"}
    assert label_presence("electric piano", seen, "folder") == "seen"
    assert label_presence("rhodes electric piano", seen, "folder") == "unseen"  # held out: a finer instrument, not a rewording
    assert label_presence("female lead vocals", seen, "moisesdb") == "reworded"  # the paper's example
    assert label_presence("backing vocals", seen, "moisesdb") == "reworded"
    assert label_presence("bass guitar", seen, "moisesdb") == "reworded"  # "electric bass" in training
    assert label_presence("banjo, mandolin, ukulele, harp", seen, "moisesdb") == "unseen"
    assert label_presence("sound effects", seen, "moisesdb") == "unseen"
    # names the table lacks: the word-overlap fallback, which no longer calls a more specific instrument a rewording
    assert label_presence("warm fuzzy electric piano", seen) == "unseen"
    assert label_presence("female singer lead", {"lead female voice"}) == "reworded"
    assert set(PRESENCE_COLOURS) == {"seen", "reworded", "unseen"}


def test_fig2_colours_reach_the_csv(tmp_path):
    from stemjepa.evaluation.analysis import tally, write_analysis

    rows = tally(["rhodes electric piano", "electric piano", "female lead vocals"], ["right_stem", "wrong", "wrong"])
    write_analysis(rows, tmp_path, "t", {"electric piano", "lead female singer"}, "folder")
    text = (tmp_path / "analysis.csv").read_text()
    assert "rhodes electric piano,1,unseen" in text and "electric piano,1,seen" in text
    assert "female lead vocals,1,reworded" in text


def test_prepare_defaults_to_the_training_split(tmp_path):
    from test_datasets import make_musdb18hq

    from stemjepa.data.training_cache import TrainingCache

    root = make_musdb18hq(tmp_path / "musdb18hq")
    assert main(["prepare", "--dataset", "musdb18hq", "--root", str(root), "--out", str(tmp_path / "c"), "--jobs", "1",
                 "--no-progress"]) == 0
    assert [s["id"] for s in TrainingCache(tmp_path / "c").songs] == ["A - One"]  # the test track stays out
    assert main(["prepare", "--dataset", "musdb18hq", "--root", str(root), "--out", str(tmp_path / "all"), "--split", "all",
                 "--jobs", "1", "--no-progress"]) == 0
    assert len(TrainingCache(tmp_path / "all").songs) == 2


def test_a_run_inherits_the_training_songs_of_its_init_checkpoint():
    from stemjepa.data.provenance import training_songs

    phase1 = training_songs([{"id": "Track00001", "dataset": "slakh2100"}, {"id": "A - One", "dataset": "musdb18hq"}])
    phase2 = training_songs([{"id": "Track00002", "dataset": "slakh2100"}], inherited=phase1)
    assert phase2["slakh2100"]["ids"] == ["Track00001", "Track00002"] and phase2["slakh2100"]["n"] == 2
    assert phase2["musdb18"]["ids"] == ["A - One"]  # MUSDB18 and MUSDB18-HQ are one family
    assert phase2["slakh2100"]["digest"] != phase1["slakh2100"]["digest"]
