"""How dense and sparse similarities become one ranking score.

All functions take aligned arrays of one query's candidates and return one score each;
higher is better. Fusions:

- ``"sqrt"``: ``sqrt(max(dense, 0)**2 + sparse**2)``, the poster's combination with negative
  dense cosines clamped at 0 (unclamped, a message of opposite meaning would rank high).
- ``"sqrt_unclamped"``: the poster's exact formula, kept for comparison.
- ``"weighted"``: ``dense_weight * dense + sparse_weight * sparse``.
- ``"rrf"``: reciprocal-rank fusion, ``sum 1 / (rrf_k + rank)`` over the two rankings (1-based).
- ``"dense"`` / ``"sparse"``: one signal alone.
"""

from __future__ import annotations

import numpy as np

FUSIONS = ("sqrt", "sqrt_unclamped", "weighted", "rrf", "dense", "sparse")


def check_fusion(fusion: str) -> str:
    if fusion not in FUSIONS:
        raise ValueError(f"fusion={fusion!r} is not one of {FUSIONS}.")
    return fusion


def ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks, best first; ties keep input order so results are deterministic."""
    order = np.argsort(-scores, kind="stable")
    out = np.empty(scores.size, dtype=np.int64)
    out[order] = np.arange(1, scores.size + 1)
    return out


def combine(
    dense: np.ndarray,
    sparse: np.ndarray,
    fusion: str = "sqrt",
    dense_weight: float = 1.0,
    sparse_weight: float = 1.0,
    rrf_k: int = 60,
) -> np.ndarray:
    """Combined scores of candidates from their dense and sparse similarities.

    Args:
        dense: Dense cosine similarities, in [-1, 1].
        sparse: Sparse code cosines, in [0, 1].
        fusion: One of ``FUSIONS``. Defaults to ``"sqrt"``.
        dense_weight: Weight of the dense signal for ``"weighted"``. Defaults to 1.0.
        sparse_weight: Weight of the sparse signal for ``"weighted"``. Defaults to 1.0.
        rrf_k: The constant of reciprocal-rank fusion. Defaults to 60.
    """
    check_fusion(fusion)
    dense = np.asarray(dense, dtype=np.float64)
    sparse = np.asarray(sparse, dtype=np.float64)
    if fusion == "sqrt":
        return np.sqrt(np.maximum(dense, 0.0) ** 2 + sparse**2)
    if fusion == "sqrt_unclamped":
        return np.sqrt(dense**2 + sparse**2)
    if fusion == "weighted":
        return dense_weight * dense + sparse_weight * sparse
    if fusion == "rrf":
        return 1.0 / (rrf_k + ranks(dense)) + 1.0 / (rrf_k + ranks(sparse))
    return dense if fusion == "dense" else sparse


def top_k(scores: np.ndarray, k: int, min_score: float | None = None) -> np.ndarray:
    """Positions of the best ``k`` scores (at most), best first, dropping those below ``min_score``."""
    order = np.argsort(-scores, kind="stable")[:k]
    if min_score is not None:
        order = order[scores[order] >= min_score]
    return order
