"""Steering: a query's SAE features boosted or suppressed before ranking.

``Encoder.steer`` and ``LMEncoder.steer`` call these; ``SAEMemory.search(..., steer=...)`` calls
the encoder's ``steer``. A strength of 1.0 makes a feature as strong as the query's strongest
feature; 0 suppresses it. ``SAEMemory`` also moves the dense query towards each text steered by
at a strength above 0 (``steer_dense``): the SAE is one signal of three, so features alone move
few messages. With an embedding-source SAE the encoder's ``steer`` moves the dense query
already, along the features' decoder directions, and the text does not move it again.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp

from saememory.config import finite
from saememory.interpret.labels import label_terms
from saememory.messages import check_text


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


def steer_dense(dense: np.ndarray, towards: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """A dense query moved towards texts it is steered by: ``dense + sum(strength * text)``,
    L2-normalised again (a strength of 1.0 weighs a text as much as the query; 0 leaves it out).

    Args:
        dense: (dim,) the query's unit dense vector.
        towards: ``(vector, strength)`` per steering text: its unit dense vector (as a query is
            encoded) and its strength (>= 0).

    Returns:
        (dim,) float32; zero only if the texts cancel the query exactly.

    Raises:
        ValueError: For a strength that is not a finite number from 0 to ``MAX_STRENGTH``.
    """
    moved = np.asarray(dense, dtype=np.float64).copy()
    for vector, strength in towards:
        moved += checked_strength("steer_dense strength", strength) * np.asarray(vector, dtype=np.float64)
    return (moved / max(float(np.linalg.norm(moved)), 1e-12)).astype(np.float32)


def _pinned(row: Any, strengths: dict[int, float]) -> Any:
    """Sets each feature of ``row`` (numpy or torch, in place) to its strength times the row's peak."""
    peak = float(row.max()) if row.max() > 0 else 1.0
    for feature, strength in strengths.items():
        row[int(feature)] = strength * peak
    return row


TEXT_FEATURES = 8  # a text that names no label steers by this many of its own strongest features
MAX_STRENGTH = 100.0  # far beyond any useful boost; larger values overflow float32 codes
MAX_KEYS = 64  # features or texts per steering spec: each text may be encoded


def checked_strength(name: str, value: Any) -> float:
    """``value`` as a float if it is a finite number from 0 to ``MAX_STRENGTH``, else ValueError."""
    value = finite(name, value)
    if not 0.0 <= value <= MAX_STRENGTH:
        raise ValueError(f"{name} must be from 0 (suppress) to {MAX_STRENGTH:g}, got {value!r}; 1.0 makes a feature "
                         "as strong as the query's strongest.")
    return value


def resolve_steering(sae: Any, steer: Any, encode: Callable[[str], sp.csr_matrix] | None = None) -> dict[int, float]:
    """A steering spec, feature id or text to strength, as feature ids to finite strengths.

    A text steers every feature whose label holds each of its words as a term ("violin": all the
    features labelled with "violin", however many) or whose phrase it is ("live music"), except
    features hidden from explanations. A text that no label holds steers by what it
    means to the SAE: its own ``TEXT_FEATURES`` strongest features, those the SAE's hygiene
    hides left out (``encode`` gives its code).

    Args:
        sae: The ``SparseAutoencoder``.
        steer: Feature id (int) or text to strength (1.0: as strong as the query's strongest
            feature; 0 suppresses).
        encode: Gives a text's (1, d_sae) SAE code. Defaults to None: a text that no label
            holds is then an error.

    Raises:
        ValueError: Without an SAE; for a strength that is not a finite number from 0 to
            ``MAX_STRENGTH``; for more than ``MAX_KEYS`` keys; for a text that is empty or not
            valid Unicode; or a text that neither a label holds nor, without ``encode``, can be
            encoded, or that has no feature to steer. A str key is always a text, even of
            digits ("2019"); a feature id is an int.
        TypeError: If ``steer`` is not a mapping, or a key is neither a str nor an int.
    """
    if sae is None:
        raise ValueError("Steering needs an SAE; this memory's encoder is dense only.")
    if not isinstance(steer, Mapping):
        raise TypeError(f"steer must be a dict of feature id or text to strength, got {type(steer).__name__}.")
    if len(steer) > MAX_KEYS:
        raise ValueError(f"steer has {len(steer)} keys; at most {MAX_KEYS} features or texts steer one query.")
    checked = {}
    for key, strength in steer.items():  # every key and strength checked before any text is encoded
        name = f"steer[{key!r}]"
        if isinstance(key, str):
            check_text(name, key)  # a str is a text, even of digits ("2019"); a feature id is an int
        elif not isinstance(key, (int, np.integer)) or isinstance(key, bool):
            raise TypeError(f"steer key {key!r} is neither a text nor a feature id (an int).")
        checked[key] = checked_strength(name, strength)
    out: dict[int, float] = {}
    for key, strength in checked.items():
        if isinstance(key, str):
            features = labelled_features(sae, key) or text_features(sae, key, encode)
        else:
            features = [int(key)]  # steer_code checks the range
        out.update({f: strength for f in features})
    return out


def labelled_features(sae: Any, text: str) -> list[int]:
    """Every feature whose label holds each word of ``text`` as a term, or whose phrase is
    ``text`` (case folded), by id; features the SAE's hygiene hides (function words,
    punctuation) left out."""
    words = set(re.findall(r"\w+", text.lower()))
    hidden = getattr(sae, "hidden", None) or {}
    if not words:
        return []
    phrase = " ".join(text.lower().split())
    phrases = getattr(sae, "phrases", None) or {}
    return sorted(f for f, label in (getattr(sae, "labels", None) or {}).items()
                  if f not in hidden and (words <= {t.lower() for t in label_terms(label)} or phrases.get(f) == phrase))


def text_features(sae: Any, text: str, encode: Callable[[str], sp.csr_matrix] | None) -> list[int]:
    """The ``TEXT_FEATURES`` strongest features of ``text``'s own code, hidden ones left out."""
    if encode is None:
        raise ValueError(f"No feature label of SAE {getattr(sae, 'name', 'this SAE')!r} holds {text[:60]!r}, and "
                         "without an encoder the text cannot be read; steer by feature id instead.")
    code = sp.csr_matrix(encode(text))
    hidden = getattr(sae, "hidden", None) or {}
    order = [int(code.indices[i]) for i in np.argsort(-code.data, kind="stable")]
    features = [f for f in order if f not in hidden][:TEXT_FEATURES]
    if not features:
        raise ValueError(f"{text[:60]!r} activates no feature to steer by; steer by feature id instead.")
    return features
