"""saememory.scoring on hand-made cases where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from saememory.scoring import combine, ranks, top_k


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
