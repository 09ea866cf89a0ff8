"""saememory.labels: planted terms win, the check counts right, families follow density; shipped files fit."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from saememory import Encoder, EncoderConfig, list_bundled_saes, load_labels
from saememory.encoder import BUNDLED_SAE_DIR
from saememory.labels import (
    STOPWORDS,
    check_labels,
    cooccurrence,
    describe_family,
    distinctive_terms,
    embedding_codes,
    family_parents,
    feature_families,
    find_features,
    format_label,
    label_terms,
    load_families,
    residual_codes,
    split_words,
    stopword_mask,
    top_examples,
    write_families,
    write_labels,
)
from saememory.sae import SAEConfig, SparseAutoencoder
from tests.helpers import DISTRACTORS, PLANTED

VOLCANO = [
    "We hiked up the volcano at dawn.",
    "The volcano erupted last year, the whole island shook.",
    "Is the volcano still active?",
    "I bought a postcard of the volcano and the harbour.",
]
TEXTS = VOLCANO + DISTRACTORS[:8]


def identity_sae(d: int) -> SparseAutoencoder:
    """A hand-built ReLU SAE whose feature i reads input coordinate i."""
    eye = torch.eye(d)
    weights = {"W_enc": eye, "b_enc": torch.zeros(d), "W_dec": eye, "b_dec": torch.zeros(d)}
    return SparseAutoencoder(SAEConfig(d_in=d, d_sae=d, architecture="standard"), weights)


def test_split_words_matches_the_encoders_tokens_and_max_pooling(encoder):
    texts = TEXTS + ["I don't know, café-flights 😊 to N.Y.!"]
    words = split_words(encoder.tokenizer, texts, encoder.max_tokens)
    states, _ = encoder.token_states(texts, encoder.layer)
    assert states.shape[0] == words.token_occurrence.size
    assert "volcano" in words.vocab and "café" in words.vocab and "?" in words.vocab
    first = words.span[words.message == 0]
    assert [texts[0][s:e] for s, e in first][:3] == ["We", "hiked", "up"]
    _, messages = residual_codes(encoder.sae, states, words)
    pooled = torch.nn.functional.normalize(torch.from_numpy(messages.toarray()), dim=-1)
    assert np.allclose(pooled.numpy(), encoder.encode_documents(texts).sparse.toarray(), atol=1e-4)


def test_states_of_other_texts_are_refused(encoder):
    words = split_words(encoder.tokenizer, TEXTS, encoder.max_tokens)
    with pytest.raises(ValueError, match="real tokens"):
        residual_codes(encoder.sae, torch.zeros(3, encoder.dim), words)


def test_embedding_labels_pick_the_planted_term(encoder):
    words = split_words(encoder.tokenizer, TEXTS, encoder.max_tokens)
    # Hand-made "embeddings": coordinate 0 is high on the volcano messages, 1 on every message.
    dense = np.zeros((len(TEXTS), 2), dtype=np.float32)
    dense[: len(VOLCANO), 0] = [4.0, 3.0, 2.0, 1.0]
    dense[:, 1] = 1.0
    codes = embedding_codes(identity_sae(2), dense)
    terms = distinctive_terms(codes, words.message_terms(), words.vocab, avoid=stopword_mask(words.vocab))
    assert terms[0][0] == "volcano"
    assert not set(terms[0]) & STOPWORDS
    examples = top_examples(codes, np.arange(len(TEXTS)), TEXTS, n_examples=2)
    assert examples[0] == VOLCANO[:2]


def test_residual_labels_pick_the_planted_word(encoder):
    words = split_words(encoder.tokenizer, TEXTS, encoder.max_tokens)
    volcano, question = words.vocab.index("volcano"), words.vocab.index("?")
    token_term = words.term[words.token_occurrence]
    # Hand-made token states: coordinate 0 fires on "volcano" tokens, 1 on "?", 2 on nothing.
    states = torch.zeros(token_term.size, 3)
    states[:, 0] = torch.from_numpy((token_term == volcano).astype(np.float32))
    states[:, 1] = torch.from_numpy((token_term == question).astype(np.float32))
    occurrences, messages = residual_codes(identity_sae(3), states, words, messages_per_chunk=5)
    terms = distinctive_terms(occurrences, words.occurrence_terms(), words.vocab)
    assert terms[0] == ["volcano"] and terms[1] == ["?"]
    assert 2 not in terms  # a dead feature gets no label
    assert messages[:, 0].nnz == len(VOLCANO)
    examples = top_examples(occurrences, words.message, TEXTS, spans=words.span, n_examples=1)
    assert examples[0] == ["We hiked up the [volcano] at dawn."]


def test_check_rate_and_lift_on_a_hand_made_case():
    vocab = ["a", "b", "c"]
    holds = np.zeros((10, 3))
    holds[[0, 1, 2, 3, 7], 0] = 1  # "a": in all four firing messages, one quiet one
    holds[[5, 6], 1] = 1  # "b": only in quiet messages
    acts = np.zeros((10, 2))
    acts[:4, :] = 1.0  # both features fire on messages 0-3, equally strongly
    result = check_labels(sp.csr_matrix(acts), sp.csr_matrix(holds), vocab, {0: "a", 1: "b / c"}, min_fires=2)
    assert result["n_features"] == 2
    assert result["pass_rate"] == 0.5
    lift_a = (5 / 6) / (2 / 8)  # Laplace: (4 + 1) / (4 + 2) against (1 + 1) / (6 + 2)
    lift_b = (1 / 6) / (3 / 8)
    assert result["mean_lift"] == pytest.approx((lift_a + lift_b) / 2)
    assert result["baseline_pass_rate"] == 0.5  # the shuffle swaps the two labels
    with pytest.raises(ValueError, match="min_fires=5"):
        check_labels(sp.csr_matrix(acts), sp.csr_matrix(holds), vocab, {0: "a"}, min_fires=5)


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
    assert describe_family(families, 2, {0: "travel", 1: "flight"}) == {
        "root": 0, "root_label": "travel", "parent": 1, "parent_label": "flight", "depth": 2, "size": 4}
    assert describe_family(families, 99) is None


def test_dense_features_stay_out_of_families():
    families = feature_families(hand_made_cooccurrence(), n_messages=300)  # A fires on 1/3
    assert families[0] == {"parent": None, "children": [], "root": 0, "depth": 0, "density": 0.333333,
                           "roots": [0, None]}
    assert families[2]["parent"] == 1 and families[3]["parent"] == 1


def test_cooccurrence_counts_messages():
    codes = sp.csr_matrix(np.array([[1.0, 0.5, 0.0], [2.0, 0.0, 0.0], [0.0, 0.3, 0.1]]))
    assert cooccurrence(codes).tolist() == [[2, 1, 0], [1, 2, 1], [0, 1, 1]]


def test_written_files_load_back(tmp_path):
    path = write_labels(tmp_path / "labels.json", {3: format_label(["flight", "airline"]), 1: "?"},
                        {3: ["Book a flight"]}, sae_sha256="abc", method="test")
    assert load_labels(path) == {1: "?", 3: "flight / airline"}
    assert label_terms("flight / airline") == ["flight", "airline"]
    families = feature_families(hand_made_cooccurrence(), n_messages=1000)
    write_families(tmp_path / "families.json", families, sae_sha256="abc", method="test")
    assert load_families(tmp_path, sae_sha256="abc") == families
    with pytest.raises(ValueError, match="rerun benchmarks/label_saes.py"):
        load_families(tmp_path, sae_sha256="other")


def test_find_features_by_label_text():
    labels = {5: "flight / airline / depart", 9: "airline / bus", 2: "flights", 7: "movie"}
    assert find_features(labels, "airline") == [9, 5]  # "airline" leads 9's label
    assert find_features(labels, "flight airline") == [5, 9, 2]
    assert find_features(labels, "volcano") == []
    assert find_features(labels, "flight", limit=1) == [5]


@pytest.mark.parametrize("name", list_bundled_saes())
def test_shipped_labels_fit_the_shipped_weights(encoder, name):
    directory = BUNDLED_SAE_DIR / name
    data = json.loads((directory / "labels.json").read_text(encoding="utf-8"))
    digest = hashlib.sha256((directory / "sae_weights.safetensors").read_bytes()).hexdigest()
    assert data["sae_sha256"] == digest, "labels.json is stale: rerun benchmarks/label_saes.py"
    sae = SparseAutoencoder.from_disk(directory)
    assert sae.labels and set(sae.labels) == {int(f) for f in data["labels"]}
    assert set(data["examples"]) == set(data["labels"])
    probe = DISTRACTORS + [PLANTED]
    probe_encoder = Encoder(EncoderConfig(sae=name), model=encoder.model, sae=sae)
    live = set(np.unique(probe_encoder.encode_documents(probe).sparse.indices).tolist())
    assert live and live <= set(sae.labels), f"unlabelled live features: {sorted(live - set(sae.labels))[:10]}"
    families = load_families(directory, sae_sha256=digest)
    assert set(families) == set(sae.labels)
    card = json.loads((directory / "card.json").read_text())
    assert 0 <= card["labels"]["check"]["pass_rate"] <= 1
