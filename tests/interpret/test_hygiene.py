"""Feature hygiene: which features are never shown as explanations, and that they never are."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import scipy.sparse as sp

from saememory import SAEMemory
from saememory.interpret.explain import explain_features
from saememory.interpret.hygiene import (HYGIENE_FILENAME, document_frequency, function_label, hidden_features,
                                         load_hygiene, write_hygiene)
from saememory.sae import SparseAutoencoder
from tests.helpers import CONVERSATION, QUESTION


@pytest.mark.parametrize("label, expected", [
    ("my / i", True), ("?", True), (". / ,", True), ("3 / 4", True), ("11th", True), ("'", True), ("the", True),
    ("violin", False), ("dentist / dentists", False), ("the / dog", False), ("", False), (None, False),
])
def test_function_label(label, expected):
    assert function_label(label) is expected


def test_hidden_features_names_each_reason():
    codes = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1]], dtype=np.float32))
    frequency = document_frequency(codes)
    assert frequency.tolist() == pytest.approx([1.0, 1 / 3, 1 / 3, 1 / 3])
    hidden = hidden_features({0: "dog", 1: "my / i", 2: "violin"}, frequency)
    assert hidden == {0: "fires on most messages", 1: "function words"}
    assert document_frequency(sp.csr_matrix((0, 3))).tolist() == [0.0, 0.0, 0.0]


def test_hygiene_round_trip_and_refusal(tmp_path):
    write_hygiene(tmp_path / HYGIENE_FILENAME, {3: "function words"}, sae_sha256="abc", source={}, check={})
    assert load_hygiene(tmp_path / HYGIENE_FILENAME, sae_sha256="abc") == {3: "function words"}
    with pytest.raises(ValueError, match="other SAE weights"):
        load_hygiene(tmp_path / HYGIENE_FILENAME, sae_sha256="def")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="hygiene"):
        load_hygiene(tmp_path / "other.json")


class _SAE:
    def __init__(self, hidden):
        self.hidden = hidden
        self.families = {}

    def label(self, feature):
        return f"label {feature}"


def test_explain_features_never_lists_hidden_features_and_reports_the_share_shown():
    code = sp.csr_matrix(([0.8, 0.5, 0.3], ([0, 0, 0], [1, 2, 3])), shape=(1, 8))
    q_acts = {1: 0.5, 2: 0.5, 3: 0.5}
    strongest, shared, explained = explain_features(code, q_acts, _SAE({1: "function words"}), 5)
    assert [f["id"] for f in strongest] == [2, 3] and [f["id"] for f in shared] == [2, 3]
    assert explained == pytest.approx((0.25 + 0.15) / (0.4 + 0.25 + 0.15))  # hidden still counts in the whole
    _, shared, explained = explain_features(code, q_acts, _SAE({}), 1)
    assert [f["id"] for f in shared] == [1] and explained == pytest.approx(0.4 / 0.8)


def test_the_shipped_sae_hides_function_word_features_from_hits(encoder):
    assert encoder.sae.hidden, "the default SAE ships hygiene.json"
    memory = SAEMemory(encoder)
    memory.add(CONVERSATION)
    for hit in memory.search(QUESTION, k=5):
        shown = hit.features + hit.shared_features
        assert shown and not any(f["id"] in encoder.sae.hidden for f in shown)
        assert not any(function_label(f["label"]) for f in shown)
        assert 0.0 <= hit.explained_share <= 1.0
        total = sum(f["contribution"] for f in hit.shared_features)
        assert total <= hit.sparse_score + 1e-5  # the shown ones carry part of the SAE score


def test_hygiene_for_other_weights_is_not_attached(tmp_path, caplog):
    from saememory.encoders.sentence_transformer import BUNDLED_SAE_DIR

    folder = tmp_path / "sae"
    shutil.copytree(BUNDLED_SAE_DIR / "minilm-l4-res-topk4k", folder)
    data = json.loads((folder / HYGIENE_FILENAME).read_text())
    data["sae_sha256"] = "0" * 64
    (folder / HYGIENE_FILENAME).write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        sae = SparseAutoencoder.from_disk(folder)
    assert sae.hidden == {} and "hygiene not attached" in caplog.text


@pytest.mark.parametrize("content", [
    '{"format": "saememory-hygiene/1", "sae_sha256": "abc"}',
    '{"format": "saememory-hygiene/1", "sae_sha256": "abc", "hidden": [1, 2]}',
    '{"format": "saememory-hygiene/1", "sae_sha256": "abc", "hidden": {"-5": "x"}}',
    '{"format": "saememory-hygiene/1", "sae_sha256": "abc", "hidden": {"3": 4}}',
    'not json',
])
def test_a_malformed_hygiene_file_is_refused_with_a_value_error(tmp_path, content):
    (tmp_path / HYGIENE_FILENAME).write_text(content)
    with pytest.raises(ValueError):
        load_hygiene(tmp_path / HYGIENE_FILENAME, sae_sha256="abc")


def test_a_hygiene_file_naming_features_out_of_range_is_not_attached(tmp_path, caplog):
    from saememory.encoders.sentence_transformer import BUNDLED_SAE_DIR

    folder = tmp_path / "sae"
    shutil.copytree(BUNDLED_SAE_DIR / "minilm-l4-res-topk4k", folder)
    data = json.loads((folder / HYGIENE_FILENAME).read_text())
    data["hidden"]["99999"] = "function words"
    (folder / HYGIENE_FILENAME).write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        assert SparseAutoencoder.from_disk(folder).hidden == {}
    assert "outside" in caplog.text
