"""Retrieval metrics on hand-computed rankings, the tie rule, the K=64 protocol and the Fig. 2 classes."""
import numpy as np
import pytest

from stemjepa.evaluation import analysis, metrics

# 3 queries x 4 pool items. Query 0: its target (0) ties with item 2 -> pessimistic rank 2.
# Query 1: target 1 is the nearest -> rank 1. Query 2: target 3 is the farthest -> rank 4 = |pool|.
SIM = np.array([
    [0.9, 0.5, 0.9, 0.1],
    [0.2, 0.8, 0.3, 0.4],
    [0.5, 0.6, 0.7, 0.1],
])
TARGETS = np.array([0, 1, 3])


def test_ranks_ties_count_against_the_query_and_farthest_target_is_last():
    assert metrics.target_ranks(SIM, TARGETS).tolist() == [2, 1, 4]


def test_recall_and_normalised_ranks_by_hand():
    m = metrics.retrieval_metrics(np.array([2, 1, 4]), pool_size=4, ks=(1, 2, 5))
    assert m["R@1"] == pytest.approx(100 / 3)
    assert m["R@2"] == pytest.approx(200 / 3)
    assert m["R@5"] == pytest.approx(100.0)
    # normalised ranks 50, 25, 100 percent
    assert m["norm_rank_mean"] == pytest.approx(175 / 3)
    assert m["norm_rank_median"] == pytest.approx(50.0)


def test_default_metric_keys_and_empty_input():
    m = metrics.retrieval_metrics(np.array([1, 20]), pool_size=20)
    assert set(m) == {"R@1", "R@5", "R@10", "norm_rank_mean", "norm_rank_median"}
    assert m["R@10"] == 50.0 and m["norm_rank_median"] == pytest.approx((5 + 100) / 2)
    with pytest.raises(ValueError):
        metrics.retrieval_metrics(np.array([]), pool_size=3)


def test_queries_equal_to_targets_score_perfectly():
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(37, 8)).astype(np.float32)
    targets = np.arange(37)
    sim = metrics.cosine_similarities(pool * 3.0, pool)  # scale does not matter for cosine
    ranks = metrics.target_ranks(sim, targets)
    m = metrics.retrieval_metrics(ranks, len(pool))
    assert m["R@1"] == 100.0
    assert m["norm_rank_median"] == pytest.approx(100 / 37)
    assert m["norm_rank_mean"] == pytest.approx(100 / 37)


def test_identical_vectors_are_exact_ties_and_a_constant_model_scores_worst():
    pool = np.ones((5, 4), np.float32)
    sim = metrics.cosine_similarities(pool, pool)
    ranks = metrics.target_ranks(sim, np.arange(5))
    assert ranks.tolist() == [5] * 5  # every item ties: the pessimistic rule puts the target last
    assert metrics.retrieval_metrics(ranks, 5)["R@1"] == 0.0


def test_zero_vectors_do_not_give_nan():
    sim = metrics.cosine_similarities(np.zeros((1, 3)), np.array([[1.0, 0, 0], [0, 1.0, 0]]))
    assert np.all(np.isfinite(sim)) and np.all(sim == 0)


def test_nearest_neighbour_prefers_the_non_target_on_a_tie():
    assert metrics.nearest_neighbours(SIM, TARGETS).tolist() == [2, 1, 2]
    assert metrics.nearest_neighbours(np.array([[0.3, 0.9, 0.9]]), np.array([2])).tolist() == [1]


def test_top1_at_k_extremes_and_candidate_count():
    # tracks: pool items 0,1 belong to track 0; items 2..9 to tracks 1..8
    pool_groups = np.array([0, 0, 1, 2, 3, 4, 5, 6, 7, 8])
    # query of track 0 whose target (item 0) beats everything -> always right
    sim = np.array([[1.0, 0.99] + [0.5] * 8])
    acc, k = metrics.top1_at_k(sim, np.array([0]), np.array([0]), pool_groups, k=64, n_draws=3)
    assert acc == 100.0 and k == 9  # only 8 stems from other tracks exist: 1 + 8 candidates
    # the same-track item 1 scores higher but is never a distractor; a tie with an other-track item counts against
    sim2 = np.array([[0.5, 0.99, 0.5] + [0.1] * 7])
    acc2, _ = metrics.top1_at_k(sim2, np.array([0]), np.array([0]), pool_groups, k=64, n_draws=3)
    assert acc2 == 0.0


def test_top1_at_k_averages_seeded_draws():
    # target beats exactly half of 40 other-track items; with one distractor the expected accuracy is 50 %
    pool_groups = np.array([0] + list(range(1, 41)))
    sim = np.array([[0.5] + [0.9] * 20 + [0.1] * 20])
    acc, k = metrics.top1_at_k(sim, np.array([0]), np.array([0]), pool_groups, k=2, n_draws=400, seed=1)
    assert k == 2 and 40.0 < acc < 60.0
    again, _ = metrics.top1_at_k(sim, np.array([0]), np.array([0]), pool_groups, k=2, n_draws=400, seed=1)
    assert again == acc  # seeded


def test_fig2_classes():
    tracks = [0, 0, 0, 1, 1, 1]
    instruments = ["acoustic guitar", "electric guitar", "kick", "acoustic guitar", "electric guitar", "snare"]
    categories = ["guitar", "guitar", "drums", "guitar", "guitar", "drums"]
    c = lambda n: analysis.classify_neighbour(0, n, tracks, instruments, categories)  # noqa: E731
    assert [c(n) for n in range(6)] == [
        "right_stem", "track_same_category", "track_other_category", "same_instrument", "same_category", "wrong",
    ]


def test_tally_percentages_and_overall_row():
    rows = analysis.tally(["bass", "bass", "drums", "bass"], ["right_stem", "wrong", "right_stem", "right_stem"])
    by = {r["label"]: r for r in rows}
    assert by["bass"]["n"] == 3 and by["bass"]["right_stem"] == 2
    assert by["bass"]["right_stem_pct"] == pytest.approx(200 / 3)
    assert by["drums"]["right_stem_pct"] == 100.0
    assert rows[0]["label"] == "drums"  # best first
    for r in rows:
        assert sum(r[f"{k}_pct"] for k in analysis.CLASS_KEYS) == pytest.approx(100.0)
    total = analysis.overall_row(rows)
    assert total["n"] == 4 and total["right_stem_pct"] == 75.0


def test_label_presence_in_training_set():
    from stemjepa.evaluation.analysis import label_presence

    seen = {"lead female singer", "bass", "electric bass", "tenor saxophone"}
    assert label_presence("Electric_Bass", seen) == "seen"
    assert label_presence("female lead vocals", seen) == "reworded"
    assert label_presence("alto saxophone", seen) == "unseen"
    assert label_presence("banjo", seen) == "unseen"
