"""How the similarity signals of one query's candidates become one ranking score.

Signals: ``"dense"`` (cosine of embeddings, in [-1, 1]), ``"sparse"`` (cosine of SAE codes,
in [0, 1]) and ``"bm25"`` (lexical, >= 0). Each is first normalised per query
(``NORMALIZATIONS``), then the weighted signals are fused (``FUSIONS``):

- ``"sqrt"``: ``sqrt(sum (w * max(s, 0))**2)``, the poster's ``sqrt(dense² + sparse²)`` with
  negative values clamped at 0 (unclamped, a message of opposite meaning would rank high).
- ``"sqrt_unclamped"``: the poster's exact formula, kept for comparison.
- ``"weighted"``: ``sum w * s``.
- ``"rrf"``: reciprocal-rank fusion, ``sum w / (rrf_k + rank)`` (1-based ranks).
- ``"dense"`` / ``"sparse"`` / ``"bm25"``: one signal alone.

``calibrate`` turns a query's fused scores into z-scores against all of the user's messages,
so that one threshold means the same for every query (see ``SAEMemory(selection="adaptive")``);
``fit_budget`` keeps the best messages that fit in a context of so many characters.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

SIGNALS = ("dense", "sparse", "bm25")
FUSIONS = ("sqrt", "sqrt_unclamped", "weighted", "rrf", "dense", "sparse", "bm25")
NORMALIZATIONS = ("none", "minmax", "zscore", "rank")


def check_fusion(fusion: str) -> str:
    if fusion not in FUSIONS:
        raise ValueError(f"fusion={fusion!r} is not one of {FUSIONS}.")
    return fusion


def check_normalization(normalization: str) -> str:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization={normalization!r} is not one of {NORMALIZATIONS}.")
    return normalization


def ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks, best first; ties keep input order so results are deterministic."""
    order = np.argsort(-scores, kind="stable")
    out = np.empty(scores.size, dtype=np.int64)
    out[order] = np.arange(1, scores.size + 1)
    return out


def normalize(scores: np.ndarray, normalization: str = "none", top: int | None = None) -> np.ndarray:
    """Per-query normalisation of one signal over the candidates.

    ``"minmax"`` maps to [0, 1]; ``"zscore"`` to mean 0, sd 1; ``"rank"`` to ``1 - (rank-1)/n``.
    A constant signal becomes all zeros under ``"minmax"`` and ``"zscore"``: it cannot tell the
    candidates apart. With ``top``, only the signal's own ``top`` best candidates are normalised
    (among themselves) and the rest score 0, as fusing each retriever's top list does
    (LlamaIndex's relative-score fusion).
    """
    check_normalization(normalization)
    scores = np.asarray(scores, dtype=np.float64)
    if normalization == "none" or scores.size == 0:
        return scores
    if top is not None and top < scores.size:
        keep = np.argsort(-scores, kind="stable")[:top]
        out = np.zeros_like(scores)
        out[keep] = normalize(scores[keep], normalization)
        return out
    if normalization == "rank":
        return 1.0 - (ranks(scores) - 1) / scores.size
    if normalization == "minmax":
        low, high = scores.min(), scores.max()
        return (scores - low) / (high - low) if high > low else np.zeros_like(scores)
    sd = scores.std()
    return (scores - scores.mean()) / sd if sd > 0 else np.zeros_like(scores)


def fuse(
    signals: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    fusion: str = "sqrt",
    normalization: str = "none",
    rrf_k: int = 60,
    top: int | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Fuses aligned signals into one score per candidate.

    Args:
        signals: Signal name to raw scores, all of the same length.
        weights: Signal name to weight; signals with weight 0 (or missing) take no part.
        fusion: One of ``FUSIONS``. Defaults to ``"sqrt"``.
        normalization: One of ``NORMALIZATIONS``, applied per signal first. Defaults to ``"none"``.
        rrf_k: The constant of reciprocal-rank fusion. Defaults to 60.
        top: Normalise each signal over its own ``top`` best candidates only (see ``normalize``).
            Defaults to None (all candidates).

    Returns:
        ``(scores, normalized, shares)``: the fused scores; each used signal normalised; and each
        used signal's share of every candidate's score (shares of a candidate sum to 1, or are all 0).
    """
    check_fusion(fusion)
    if fusion in SIGNALS:
        used = {fusion: 1.0}
    else:
        used = {name: float(w) for name, w in weights.items() if w}
    missing = [name for name in used if name not in signals]
    if missing:
        raise ValueError(f"fusion={fusion!r} needs signals {missing}, which were not computed.")
    normalized = {name: normalize(signals[name], normalization, top) for name in used}
    if fusion == "rrf":
        terms = {name: w / (rrf_k + ranks(normalized[name])) for name, w in used.items()}
    elif fusion == "sqrt":
        terms = {name: (w * np.maximum(normalized[name], 0.0)) ** 2 for name, w in used.items()}
    elif fusion == "sqrt_unclamped":
        terms = {name: (w * normalized[name]) ** 2 for name, w in used.items()}
    else:
        terms = {name: w * normalized[name] for name, w in used.items()}
    total = np.sum(list(terms.values()), axis=0)
    scores = np.sqrt(total) if fusion.startswith("sqrt") else total
    magnitude = np.sum([np.abs(t) for t in terms.values()], axis=0)
    safe = np.where(magnitude > 0, magnitude, 1.0)
    shares = {name: np.where(magnitude > 0, np.abs(t) / safe, 0.0) for name, t in terms.items()}
    return scores, normalized, shares


def combine(
    dense: np.ndarray,
    sparse: np.ndarray,
    fusion: str = "sqrt",
    dense_weight: float = 1.0,
    sparse_weight: float = 1.0,
    rrf_k: int = 60,
) -> np.ndarray:
    """Fused scores from dense and sparse similarities alone, unnormalised (see ``fuse``)."""
    if fusion == "bm25":
        raise ValueError("combine() fuses dense and sparse only; use fuse() with a 'bm25' signal.")
    weights = {"dense": dense_weight, "sparse": sparse_weight}
    signals = {"dense": np.asarray(dense, np.float64), "sparse": np.asarray(sparse, np.float64)}
    return fuse(signals, weights, fusion, "none", rrf_k)[0]


def calibrate(scores: np.ndarray) -> np.ndarray:
    """Z-scores of a query's fused scores against all of that user's candidates.

    A message's calibrated score says how far it stands out from the rest of the memory for
    this query, which is comparable across queries, unlike a raw cosine or a min-max score.
    """
    scores = np.asarray(scores, dtype=np.float64)
    sd = scores.std() if scores.size > 1 else 0.0
    return (scores - scores.mean()) / sd if sd > 0 else np.zeros_like(scores)


def top_k(scores: np.ndarray, k: int, min_score: float | None = None) -> np.ndarray:
    """Positions of the best ``k`` scores (at most), best first, dropping those below ``min_score``."""
    order = np.argsort(-scores, kind="stable")[:k]
    if min_score is not None:
        order = order[scores[order] >= min_score]
    return order


def fit_budget(ranked: np.ndarray, lengths: np.ndarray, max_chars: int) -> np.ndarray:
    """The positions of ``ranked`` (best first) that fit in a context of ``max_chars``.

    Walks the ranking in order and skips a message that would overflow the budget, so a
    shorter, lower-ranked message can still take the room a long one could not.

    Args:
        ranked: Positions, best first.
        lengths: Length (characters) of every position.
        max_chars: The budget.
    """
    kept, used = [], 0
    for position in ranked.tolist():
        if used + lengths[position] <= max_chars:
            kept.append(position)
            used += int(lengths[position])
    return np.asarray(kept, dtype=np.int64)
