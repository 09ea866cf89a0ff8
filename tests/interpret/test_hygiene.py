"""Feature hygiene: which features are never shown as explanations, and that they never are."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import scipy.sparse as sp

from saememory import Encoder, EncoderConfig, SAEMemory
from saememory.interpret.explain import explain_features
from saememory.interpret.hygiene import (HYGIENE_FILENAME, document_frequency, function_label, hidden_features,
                                         load_hygiene, visible_codes, write_hygiene)
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


def test_visible_codes_drop_the_hidden_features_and_scale_rows_to_unit_norm():
    codes = sp.csr_matrix(np.array([[3.0, 4.0, 12.0], [0.0, 5.0, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32))
    out = visible_codes(codes, {2: "function words"})
    np.testing.assert_allclose(out.toarray(), [[0.6, 0.8, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]], atol=1e-6)
    assert out.nnz == 3 and out.dtype == np.float32  # the hidden entry is gone, not stored as a zero
    assert visible_codes(codes, {1: "x"})[1].nnz == 0  # only hidden features: a zero row, scoring 0
    np.testing.assert_allclose(visible_codes(codes, np.array([2])).toarray(), out.toarray())  # ids as an array
    with pytest.raises(TypeError, match="feature ids"):
        visible_codes(codes, np.array([False, False, True]))  # a mask is not a list of ids
    np.testing.assert_allclose(codes.toarray(), [[3, 4, 12], [0, 5, 0], [0, 0, 0]])  # the input is untouched


def test_by_default_no_code_holds_a_hidden_feature(encoder):
    hidden = set(encoder.sae.hidden)
    assert encoder.config.hygiene and encoder.hidden_ids.tolist() == sorted(hidden)
    texts = ["My sister Ana moved to Lisbon. She loves it there!", "the and of ?"]
    docs, query = encoder.encode_documents(texts).sparse, encoder.encode_query("Where does my sister live?").sparse
    assert not hidden & set(docs.indices.tolist()) and not hidden & set(query.indices.tolist())
    np.testing.assert_allclose(sp.linalg.norm(docs[0]), 1.0, atol=1e-5)
    kept = Encoder(EncoderConfig(hygiene=False), model=encoder.model, sae=encoder.sae)
    raw = kept.encode_documents(texts).sparse
    assert hidden & set(raw.indices.tolist())  # they fire; hygiene leaves them out
    np.testing.assert_allclose(docs.toarray(), visible_codes(raw, encoder.sae.hidden).toarray(), atol=1e-6)
    assert kept.hidden_ids is None and "sae_hygiene" not in kept.identity() and "sae_hygiene" in encoder.identity()
    assert EncoderConfig.from_dict({k: v for k, v in EncoderConfig().to_dict().items() if k != "hygiene"}).hygiene is False
    with pytest.raises(ValueError, match="hygiene must be True or False, got 'yes'"):
        EncoderConfig(hygiene="yes")


def test_steering_by_a_hidden_feature_says_it_would_change_nothing(encoder):
    memory = SAEMemory(encoder)
    memory.add(CONVERSATION)
    feature = next(iter(encoder.sae.hidden))
    with pytest.raises(ValueError, match=f"Feature {feature} is left out of every code by the SAE's hygiene"):
        memory.search(QUESTION, steer={feature: 2.0})
    kept = SAEMemory(Encoder(EncoderConfig(hygiene=False), model=encoder.model, sae=encoder.sae))
    kept.add(CONVERSATION)
    assert kept.search(QUESTION, k=1, steer={feature: 2.0})  # with every feature kept, it steers
    # An embedding SAE steers through the dense query too: allowed, and its code stays without it.
    emb = Encoder(EncoderConfig(sae="minilm-emb-topk4k"), model=encoder.model)
    hidden = int(emb.hidden_ids[0])
    query = emb.encode_query(QUESTION)
    steered = emb.steer(query, {hidden: 2.0})
    assert hidden not in set(steered.sparse.indices.tolist()) and not np.allclose(steered.dense, query.dense)


def test_the_hidden_features_are_read_once_when_the_encoder_is_made(encoder):
    import copy

    sae = copy.copy(encoder.sae)
    sae.hidden = dict(encoder.sae.hidden)
    made = Encoder(EncoderConfig(), model=encoder.model, sae=sae)
    before, identity = made.encode_documents(["My sister lives in Lisbon, and I love it."]).sparse, made.identity()
    sae.hidden = {}  # changes what explanations list, not what the codes hold
    after = made.encode_documents(["My sister lives in Lisbon, and I love it."]).sparse
    np.testing.assert_allclose(after.toarray(), before.toarray())
    assert made.identity() == identity
