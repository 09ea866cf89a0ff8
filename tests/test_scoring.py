"""saememory.scoring on hand-made cases where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from saememory.scoring import combine, fit_budget, ranks, top_k


def test_sqrt_clamps_negative_dense():
    dense, sparse = np.array([0.6, -0.9, 0.0]), np.array([0.8, 0.0, 0.5])
    np.testing.assert_allclose(combine(dense, sparse, "sqrt"), [1.0, 0.0, 0.5])
    # The poster's unclamped form ranks the opposite-meaning message first: why we clamp.
    np.testing.assert_allclose(combine(dense, sparse, "sqrt_unclamped"), [1.0, 0.9, 0.5])


def test_weighted_sum():
    np.testing.assert_allclose(combine([0.5, 0.2], [0.1, 0.4], "weighted", 2.0, 0.5), [1.05, 0.6])


def test_reciprocal_rank_fusion():
    dense, sparse = np.array([0.9, 0.5, 0.1]), np.array([0.1, 0.9, 0.5])
    got = combine(dense, sparse, "rrf", rrf_k=60)
    expected = [1 / 61 + 1 / 63, 1 / 62 + 1 / 61, 1 / 63 + 1 / 62]
    np.testing.assert_allclose(got, expected)
    assert np.argmax(got) == 1


def test_single_signals():
    assert combine([0.3], [0.7], "dense")[0] == pytest.approx(0.3)
    assert combine([0.3], [0.7], "sparse")[0] == pytest.approx(0.7)


def test_unknown_fusion():
    with pytest.raises(ValueError, match="fusion='max'"):
        combine([0.1], [0.1], "max")


def test_ranks_and_ties_are_stable():
    assert ranks(np.array([0.2, 0.9, 0.2])).tolist() == [2, 1, 3]


def test_top_k_with_min_score():
    scores = np.array([0.1, 0.9, 0.5, 0.7])
    assert top_k(scores, 2).tolist() == [1, 3]
    assert top_k(scores, 10, min_score=0.5).tolist() == [1, 3, 2]
    assert top_k(scores, 10, min_score=0.95).tolist() == []


from saememory.scoring import calibrate, fuse, normalize  # noqa: E402


def test_normalizations():
    s = np.array([1.0, 3.0, 2.0])
    np.testing.assert_allclose(normalize(s, "minmax"), [0.0, 1.0, 0.5])
    np.testing.assert_allclose(normalize(s, "zscore"), (s - 2.0) / np.std(s))
    np.testing.assert_allclose(normalize(s, "rank"), [1 / 3, 1.0, 2 / 3])
    np.testing.assert_allclose(normalize(s, "none"), s)
    assert normalize(np.array([0.4, 0.4]), "minmax").tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="normalization"):
        normalize(s, "softmax")


def test_three_signal_weighted_fusion_and_shares():
    signals = {"dense": np.array([0.2, 0.6]), "sparse": np.array([0.5, 0.1]), "bm25": np.array([0.0, 4.0])}
    weights = {"dense": 1.0, "sparse": 2.0, "bm25": 0.5}
    scores, normalized, shares = fuse(signals, weights, "weighted", "minmax")
    # minmax over two candidates: dense [0, 1], sparse [1, 0], bm25 [0, 1]
    np.testing.assert_allclose(scores, [2.0, 1.5])
    np.testing.assert_allclose(shares["sparse"], [1.0, 0.0])
    np.testing.assert_allclose(shares["dense"][1], 1.0 / 1.5)
    np.testing.assert_allclose(sum(shares.values()), [1.0, 1.0])


def test_default_zscore_fusion_with_the_sae_weighted_twice():
    signals = {"dense": np.array([0.0, 1.0, 2.0]), "sparse": np.array([2.0, 1.0, 0.0]), "bm25": np.array([0.0, 0.0, 3.0])}
    scores, normalized, shares = fuse(signals, {"dense": 1.0, "sparse": 2.0, "bm25": 1.0}, "weighted", "zscore")
    a, b = np.sqrt(1.5), np.sqrt(0.5)  # z of [0, 1, 2] is [-a, 0, a]; z of [0, 0, 3] is [-b, -b, 2b]
    np.testing.assert_allclose(normalized["bm25"], [-b, -b, 2 * b])
    np.testing.assert_allclose(scores, [-a + 2 * a - b, -b, a - 2 * a + 2 * b])
    # Shares are of each term's magnitude, so negative terms count and a candidate's shares sum to 1.
    np.testing.assert_allclose(shares["sparse"][0], 2 * a / (a + 2 * a + b))
    np.testing.assert_allclose([shares[n][1] for n in ("dense", "sparse", "bm25")], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(sum(shares.values()), [1.0, 1.0, 1.0])


def test_zero_weight_leaves_a_signal_out():
    signals = {"dense": np.array([0.1, 0.9]), "sparse": np.array([0.9, 0.1])}
    scores, normalized, _ = fuse(signals, {"dense": 1.0, "sparse": 0.0}, "weighted")
    np.testing.assert_allclose(scores, [0.1, 0.9])
    assert set(normalized) == {"dense"}
    with pytest.raises(ValueError, match="bm25"):
        fuse(signals, {"dense": 1.0, "bm25": 1.0}, "weighted")


def test_sqrt_on_normalized_scores():
    signals = {"dense": np.array([-0.5, 0.5, 0.0]), "sparse": np.array([0.0, 0.3, 0.6])}
    scores, _, shares = fuse(signals, {"dense": 1.0, "sparse": 1.0}, "sqrt", "minmax")
    # minmax: dense [0, 1, 0.5], sparse [0, 0.5, 1]
    np.testing.assert_allclose(scores, [0.0, np.sqrt(1.25), np.sqrt(1.25)])
    np.testing.assert_allclose(shares["dense"], [0.0, 0.8, 0.2])


def test_weighted_rrf():
    signals = {"dense": np.array([0.9, 0.1]), "bm25": np.array([0.0, 2.0])}
    scores, _, _ = fuse(signals, {"dense": 2.0, "bm25": 1.0}, "rrf", rrf_k=10)
    np.testing.assert_allclose(scores, [2 / 11 + 1 / 12, 2 / 12 + 1 / 11])


def test_calibrate_is_scale_free():
    s = np.array([0.1, 0.2, 0.3, 0.9])
    np.testing.assert_allclose(calibrate(s), calibrate(10 * s + 3))
    assert calibrate(s).argmax() == 3 and calibrate(np.array([0.5, 0.5])).tolist() == [0.0, 0.0]


def test_normalizing_over_each_signals_top_list():
    s = np.array([0.9, 0.1, 0.5, 0.3])
    # top 2 are 0.9 and 0.5: normalised among themselves; the others score 0
    np.testing.assert_allclose(normalize(s, "minmax", top=2), [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(normalize(s, "minmax", top=3), [1.0, 0.0, (0.5 - 0.3) / 0.6, 0.0])
    np.testing.assert_allclose(normalize(s, "minmax", top=10), normalize(s, "minmax"))
    signals = {"dense": np.array([0.9, 0.8, 0.1]), "bm25": np.array([0.0, 5.0, 4.0])}
    scores, _, _ = fuse(signals, {"dense": 1.0, "bm25": 1.0}, "weighted", "minmax", top=2)
    np.testing.assert_allclose(scores, [1.0, 1.0, 0.0])


def test_fit_budget_skips_what_overflows_and_keeps_rank_order():
    lengths = np.array([100, 400, 50, 300, 60])
    ranked = np.array([1, 3, 0, 2, 4])  # best first
    # 400 fits; 300 would overflow 500; 100 fits (500); 50 and 60 would overflow
    assert fit_budget(ranked, lengths, 500).tolist() == [1, 0]
    assert fit_budget(ranked, lengths, 900).tolist() == [1, 3, 0, 2]  # 850 used; the last 60 would make 910
    assert fit_budget(ranked, lengths, 910).tolist() == [1, 3, 0, 2, 4]
    assert fit_budget(ranked, lengths, 10).tolist() == []
