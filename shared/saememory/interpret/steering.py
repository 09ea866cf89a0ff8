"""Steering: a query's SAE features boosted or suppressed before ranking.

``Encoder.steer`` and ``LMEncoder.steer`` call these; ``SAEMemory.search(..., steer=...)`` calls
the encoder's ``steer``. A strength of 1.0 makes a feature as strong as the query's strongest
feature; 0 suppresses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp

from saememory.config import finite


def steer_code(code: sp.csr_matrix, strengths: dict[int, float], d_sae: int) -> sp.csr_matrix:
    """A query's sparse code with features boosted or suppressed, normalised again.

    Feature ``f`` is set to ``strengths[f]`` times the code's largest entry.

    Args:
        code: (1, d_sae) the query's L2-normalised code.
        strengths: Feature id to strength (>= 0).
        d_sae: Number of features.

    Raises:
        ValueError: For a feature id outside ``0..d_sae-1`` or a negative strength.
    """
    for feature, strength in strengths.items():
        if not 0 <= int(feature) < d_sae:
            raise ValueError(f"Feature {feature} is outside 0..{d_sae - 1}.")
        if not strength >= 0:
            raise ValueError(f"Steering strength of feature {feature} must be >= 0 (0 suppresses), got {strength}.")
    row = _pinned(code.toarray()[0], strengths)
    norm = np.linalg.norm(row)
    return sp.csr_matrix(row / norm if norm > 0 else row, dtype=np.float32)


def steer_embedding(sae: Any, dense: np.ndarray, strengths: dict[int, float]) -> np.ndarray:
    """A dense query moved as an embedding-source SAE reads it: the same change, decoded.

    The query's raw code (``sae.encode(dense)``) gets the strengths as ``steer_code`` sets them
    (relative to the raw code's largest entry); the dense vector moves by the difference of the
    two decodings and is L2-normalised again. Check the strengths with ``steer_code`` first.

    Args:
        sae: The ``SparseAutoencoder`` that reads the dense embedding.
        dense: (1, dim) float32, the query's dense vector.
        strengths: Feature id to strength (>= 0).

    Returns:
        (1, dim) float32.
    """
    import torch

    query = torch.from_numpy(dense)
    raw = sae.encode(query)[0]
    steered = _pinned(raw.clone(), strengths)
    delta = sae.decode(steered[None]) - sae.decode(raw[None])
    return torch.nn.functional.normalize(query + delta, dim=-1).numpy().astype(np.float32)


def _pinned(row: Any, strengths: dict[int, float]) -> Any:
    """Sets each feature of ``row`` (numpy or torch, in place) to its strength times the row's peak."""
    peak = float(row.max()) if row.max() > 0 else 1.0
    for feature, strength in strengths.items():
        row[int(feature)] = strength * peak
    return row


def resolve_steering(sae: Any, steer: Any) -> dict[int, float]:
    """A steering spec, feature id or label text to strength, as feature ids to finite strengths.

    Raises:
        ValueError: Without an SAE, for a strength that is not a finite number, or a label text
            that matches no feature.
        TypeError: If ``steer`` is not a mapping, or a key is neither a str nor an int.
    """
    if sae is None:
        raise ValueError("Steering needs an SAE; this memory's encoder is dense only.")
    if not isinstance(steer, Mapping):
        raise TypeError(f"steer must be a dict of feature id or label text to strength, got {type(steer).__name__}.")
    out: dict[int, float] = {}
    for key, strength in steer.items():
        strength = finite(f"steer[{key!r}]", strength)
        if isinstance(key, str):
            features = sae.find_features(key)
        elif isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            features = [int(key)]  # steer_code checks the range
        else:
            raise TypeError(f"steer key {key!r} is neither a label text nor a feature id (an int).")
        out.update({f: strength for f in features})
    return out
