"""saememory.interpret.labels: planted terms win, the check counts right, files round-trip; shipped labels fit."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from saememory import Encoder, EncoderConfig, list_bundled_saes, load_labels
from saememory.encoders.sentence_transformer import BUNDLED_SAE_DIR
from saememory.interpret.families import load_families
from saememory.interpret.label import embedding_codes, residual_codes, residual_phrases
from saememory.interpret.labels import (
    STOPWORDS,
    check_labels,
    distinctive_terms,
    find_features,
    format_label,
    label_terms,
    split_words,
    stopword_mask,
    top_examples,
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
    every_feature = Encoder(EncoderConfig(hygiene=False), model=encoder.model, sae=encoder.sae)
    assert np.allclose(pooled.numpy(), every_feature.encode_documents(texts).sparse.toarray(), atol=1e-4)


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


def test_residual_phrases_read_the_words_around_the_firing_one(encoder):
    texts = TEXTS + ["I don't know.", "We are here. Next time I love 😀 you", "I said 'thank you' to him", "milk\neggs"]
    words = split_words(encoder.tokenizer, texts, encoder.max_tokens)
    matrix, vocab = words.occurrence_phrases(texts)
    assert "the volcano" in vocab and "don't" in vocab and "know." not in vocab
    assert "here. next" not in vocab and "next time" in vocab  # not across a sentence end
    assert "love you" not in vocab and "i love" in vocab  # not over text the tokenizer dropped
    assert "i don" not in vocab and "t know" not in vocab  # nor inside a contraction
    assert "'thank you'" not in vocab and "thank you" in vocab and "said 'thank" not in vocab  # quotes are not
    assert "milk eggs" not in vocab  # nor across a line break
    assert "active?" not in vocab  # a run may not end on punctuation
    assert matrix.shape == (words.term.size, len(vocab)) and matrix[:, vocab.index("don't")].nnz == 3
    volcano, question = words.vocab.index("volcano"), words.vocab.index("?")
    token_term = words.term[words.token_occurrence]
    states = torch.zeros(token_term.size, 2)  # coordinate 0 fires on "volcano", 1 on "?"
    states[:, 0] = torch.from_numpy((token_term == volcano).astype(np.float32))
    states[:, 1] = torch.from_numpy((token_term == question).astype(np.float32))
    occurrences, _ = residual_codes(identity_sae(2), states, words)
    phrases = residual_phrases(occurrences, words, texts)
    assert phrases[0] == "the volcano"  # around all four volcanoes
    assert 1 not in phrases  # "?" ends its messages: no run of words holds it


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


def test_written_files_load_back(tmp_path):
    path = write_labels(tmp_path / "labels.json", {3: format_label(["flight", "airline"]), 1: "?"},
                        {3: ["Book a flight"]}, sae_sha256="abc", method="test")
    assert load_labels(path) == {1: "?", 3: "flight / airline"}
    assert label_terms("flight / airline") == ["flight", "airline"]


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
    assert data["sae_sha256"] == digest, "labels.json is stale: rerun python -m saememory.interpret.label"
    sae = SparseAutoencoder.from_disk(directory)
    assert sae.labels and set(sae.labels) == {int(f) for f in data["labels"]}
    assert set(data["examples"]) == set(data["labels"])
    assert sae.examples == {int(f): v for f, v in data["examples"].items()}
    if sae.cfg.hook_name.startswith("hidden_states."):  # phrases are read around a token's word
        assert data["phrases"] and set(sae.phrases) <= set(sae.labels)
        assert all(sae.phrase(int(f)) == p for f, p in data["phrases"].items())
    probe = DISTRACTORS + [PLANTED]
    probe_encoder = Encoder(EncoderConfig(sae=name), model=encoder.model, sae=sae)
    live = set(np.unique(probe_encoder.encode_documents(probe).sparse.indices).tolist())
    assert live and live <= set(sae.labels), f"unlabelled live features: {sorted(live - set(sae.labels))[:10]}"
    families = load_families(directory, sae_sha256=digest)
    assert set(families) == set(sae.labels)
    card = json.loads((directory / "card.json").read_text())
    assert 0 <= card["labels"]["check"]["pass_rate"] <= 1
