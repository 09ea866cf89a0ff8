"""saememory.interpret.families: parents are denser, dense features stay out, files round-trip."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from saememory.interpret.families import (
    cooccurrence,
    family_parents,
    feature_families,
    load_families,
    write_families,
)
from saememory.sae import SAEConfig, SparseAutoencoder


def identity_weights(d: int) -> dict[str, torch.Tensor]:
    eye = torch.eye(d)
    return {"W_enc": eye, "b_enc": torch.zeros(d), "W_dec": eye, "b_dec": torch.zeros(d)}


def hand_made_cooccurrence() -> np.ndarray:
    """Features A=0 (fires 100 times), B=1 (50), C=2 (20), D=3 (30), E=4 (10)."""
    cooc = np.diag([100.0, 50.0, 20.0, 30.0, 10.0])
    for i, j, n in [(0, 1, 40), (1, 2, 15), (0, 2, 12), (0, 3, 20), (1, 3, 5), (0, 4, 1)]:
        cooc[i, j] = cooc[j, i] = n
    return cooc


def test_families_point_from_denser_to_sparser():
    cooc = hand_made_cooccurrence()
    # Weights: AB .78, BC .71, AD .65, AC .57 (a cycle: left out), BD .16, AE .09 (below 0.1).
    parent = family_parents(cooc, np.ones(5, bool))
    assert parent.tolist() == [-1, 0, 1, 0, -1]
    families = feature_families(cooc, n_messages=1000)
    assert families[0]["children"] == [1, 3] and families[1]["children"] == [2]
    assert [families[f]["root"] for f in range(5)] == [0, 0, 0, 0, 4]
    assert families[2]["depth"] == 2 and families[2]["parent"] == 1
    # Level 2 drops A, the only parent root: B heads B, C and D.
    assert [families[f]["roots"] for f in range(5)] == [[0, None], [0, 1], [0, 1], [0, 1], [4, 4]]
    sae = SparseAutoencoder(SAEConfig(d_in=5, d_sae=5, architecture="standard"), identity_weights(5),
                            labels={0: "travel", 1: "flight"})
    sae.set_families(families)
    assert sae.family(2) == {
        "root": 0, "root_label": "travel", "parent": 1, "parent_label": "flight", "depth": 2, "size": 4}
    assert sae.family(99) is None


def test_dense_features_stay_out_of_families():
    families = feature_families(hand_made_cooccurrence(), n_messages=300)  # A fires on 1/3
    assert families[0] == {"parent": None, "children": [], "root": 0, "depth": 0, "density": 0.333333,
                           "roots": [0, None]}
    assert families[2]["parent"] == 1 and families[3]["parent"] == 1


def test_cooccurrence_counts_messages():
    codes = sp.csr_matrix(np.array([[1.0, 0.5, 0.0], [2.0, 0.0, 0.0], [0.0, 0.3, 0.1]]))
    assert cooccurrence(codes).tolist() == [[2, 1, 0], [1, 2, 1], [0, 1, 1]]


def test_written_families_load_back(tmp_path):
    families = feature_families(hand_made_cooccurrence(), n_messages=1000)
    write_families(tmp_path / "families.json", families, sae_sha256="abc", method="test")
    assert load_families(tmp_path, sae_sha256="abc") == families
    with pytest.raises(ValueError, match="rerun python -m saememory.interpret.label --saes"):
        load_families(tmp_path, sae_sha256="other")
    with pytest.raises(FileNotFoundError, match="python -m saememory.interpret.label --saes"):
        load_families(tmp_path / "missing")
