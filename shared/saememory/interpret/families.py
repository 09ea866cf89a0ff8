"""Feature families: which features fire together, as trees from general (parent) to specific (child).

Follows O'Neill et al. (2024, arXiv 2408.00657) and their saerch code: message-level
co-occurrence counts, normalised by the sparser feature's count, thresholded, maximum spanning
forest, edges pointing from the denser (parent) to the sparser (child) feature; then again with
the parents of the first level removed.

``families.json`` sits beside an SAE's weights: :func:`write_families` writes it,
:func:`load_families` reads it, ``SparseAutoencoder.from_disk`` attaches it and
``SparseAutoencoder.family`` gives one feature's family as a hit carries it. The command
``python -m saememory.interpret.label`` builds it.

numpy and scipy only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import minimum_spanning_tree

from saememory.interpret.labels import write_sae_file

FAMILIES_FILENAME = "families.json"
FAMILIES_FORMAT = "saememory-families/1"


def cooccurrence(codes: sp.spmatrix) -> np.ndarray:
    """(d_sae, d_sae) counts of messages where two features both fire; the diagonal counts each."""
    fired = sp.csr_matrix(codes, dtype=np.float32)
    fired.data = (fired.data > 0).astype(np.float32)
    fired.eliminate_zeros()
    return np.asarray((fired.T @ fired).toarray(), dtype=np.float64)


def family_parents(cooc: np.ndarray, active: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """Each active feature's parent in the maximum spanning forest of normalised co-occurrence.

    The weight of features ``i`` and ``j`` is ``C[i, j] / (min(C[i, i], C[j, j]) + 1)``, about the
    share of the sparser one's firings where the denser one fires too; weights below ``threshold``
    are dropped. In the maximum spanning forest of what remains, each edge points from the denser
    feature (the parent; ties go to the lower id) to the sparser; a feature with several denser
    neighbours keeps the one it is most strongly tied to, so the parent links form a forest.

    Args:
        cooc: (d_sae, d_sae) co-occurrence counts from :func:`cooccurrence`.
        active: (d_sae,) bool, the features taking part.
        threshold: Minimum normalised weight of an edge. Defaults to 0.1, as O'Neill et al.

    Returns:
        (d_sae,) int: the parent of each feature, -1 for roots and features not taking part.
    """
    counts = np.diag(cooc).astype(np.float64)
    ids = np.flatnonzero(active)
    parent = np.full(cooc.shape[0], -1, dtype=np.int64)
    if ids.size < 2:
        return parent
    n = counts[ids]
    weight = cooc[np.ix_(ids, ids)] / (np.minimum.outer(n, n) + 1.0)
    np.fill_diagonal(weight, 0.0)
    weight[weight < threshold] = 0.0
    # A minimum spanning forest of (2 - w) on the kept edges is a maximum spanning forest of w:
    # every spanning forest of a graph has the same number of edges.
    tree = minimum_spanning_tree(sp.csr_matrix(np.where(weight > 0, 2.0 - weight, 0.0))).tocoo()
    best = np.zeros(cooc.shape[0])
    for a, b in zip(tree.row, tree.col):
        i, j = ids[a], ids[b]
        if (counts[j], -j) > (counts[i], -i):
            i, j = j, i  # i is the denser: the parent
        w = weight[a, b]
        if w > best[j] or (w == best[j] and 0 <= i < parent[j]):
            parent[j], best[j] = i, w
    return parent


def feature_families(
    cooc: np.ndarray,
    n_messages: int,
    *,
    threshold: float = 0.1,
    max_density: float = 0.2,
    levels: int = 2,
) -> dict[int, dict[str, Any]]:
    """Feature families: trees of parent links, recomputed with the first level's parents removed.

    Args:
        cooc: (d_sae, d_sae) co-occurrence counts over ``n_messages`` messages.
        n_messages: Messages the counts come from.
        threshold: Minimum normalised co-occurrence of an edge. Defaults to 0.1.
        max_density: Features firing on a larger share of messages stay out of families (their own
            root), as the saerch code keeps only features below a density bound: a feature that
            fires almost everywhere co-occurs with everything. Defaults to 0.2.
        levels: Rounds; each round after the first drops the roots of the previous round's families
            with children and builds the forest again. Defaults to 2.

    Returns:
        For every feature that fires: ``parent`` (id or None), ``children`` (ids), ``root`` (the
        family's top feature), ``depth`` (0 for a root), ``density`` (share of messages) and
        ``roots``: its family's root at each level (None where the feature was itself removed).

    Raises:
        ValueError: If ``cooc`` is not square or the settings are out of range.
    """
    if cooc.ndim != 2 or cooc.shape[0] != cooc.shape[1]:
        raise ValueError(f"cooc must be a square (d_sae, d_sae) matrix, got shape {cooc.shape}.")
    if not 0 < threshold < 1 or not 0 < max_density <= 1 or levels < 1 or n_messages < 1:
        raise ValueError(
            f"Need 0 < threshold < 1, 0 < max_density <= 1, levels >= 1 and n_messages >= 1; got "
            f"threshold={threshold}, max_density={max_density}, levels={levels}, n_messages={n_messages}."
        )
    counts = np.diag(cooc)
    fires = counts > 0
    active = fires & (counts / n_messages <= max_density)
    out: dict[int, dict[str, Any]] = {
        int(f): {"parent": None, "children": [], "root": int(f), "depth": 0,
                 "density": round(float(counts[f] / n_messages), 6), "roots": []}
        for f in np.flatnonzero(fires)
    }
    for level in range(levels):
        parent = family_parents(cooc, active, threshold)
        for f, record in out.items():
            if not active[f]:
                record["roots"].append(None if level else f)
                continue
            root, depth = f, 0
            while parent[root] >= 0:
                root, depth = int(parent[root]), depth + 1
            record["roots"].append(root)
            if level == 0:
                record["root"], record["depth"] = root, depth
                record["parent"] = int(parent[f]) if parent[f] >= 0 else None
        if level == 0:
            for child in np.flatnonzero(parent >= 0):
                out[int(parent[child])]["children"].append(int(child))
        has_children = np.zeros_like(active)
        has_children[parent[parent >= 0]] = True
        active = active & ~(has_children & (parent < 0))
    return out


def write_families(
    path: str | Path, families: Mapping[int, dict[str, Any]], *, sae_sha256: str | None, method: str, **extra: Any
) -> Path:
    """Writes ``families.json``: one record per feature, as :func:`feature_families` returns them."""
    fields = {**extra, "features": {str(f): families[f] for f in sorted(families)}}
    return write_sae_file(path, FAMILIES_FORMAT, sae_sha256=sae_sha256, method=method, fields=fields,
                          separators=(",", ":"))


def load_families(path: str | Path, sae_sha256: str | None = None) -> dict[int, dict[str, Any]]:
    """Reads ``families.json`` (or the one inside an SAE directory).

    Args:
        path: The file, or the SAE directory holding it.
        sae_sha256: If given, the file must have been made for the weights with this hash
            (``SparseAutoencoder.sha256``). Defaults to None (not checked).

    Returns:
        Feature id to ``parent``, ``children``, ``root``, ``depth``, ``density`` and ``roots``.

    Raises:
        FileNotFoundError: If there is no such file.
        ValueError: If the file is not a families file or was made for other weights.
    """
    path = Path(path)
    if path.is_dir():
        path = path / FAMILIES_FILENAME
    if not path.is_file():
        raise FileNotFoundError(
            f"No families file at {path}; make one with: python -m saememory.interpret.label --saes {path.parent}"
        )
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != FAMILIES_FORMAT:
        raise ValueError(f"{path} is not a {FAMILIES_FORMAT!r} file (its format is {data.get('format')!r}).")
    if sae_sha256 is not None and data.get("sae_sha256") != sae_sha256:
        raise ValueError(
            f"{path} was made for SAE weights with sha256 {data.get('sae_sha256')}, not {sae_sha256}; "
            f"rerun python -m saememory.interpret.label --saes {path.parent} for these weights."
        )
    return {int(f): record for f, record in data["features"].items()}
