"""Word-level explanations: which word of the query matched which word of the message."""

from __future__ import annotations

import pytest
import scipy.sparse as sp

from saememory import Encoder, EncoderConfig, SAEMemory
from saememory.encoders.sentence_transformer import _words
from saememory.interpret.explain import match_words
from tests.helpers import CONVERSATION, QUESTION


def test_wordpieces_join_into_words():
    words, owner = _words(["my", "daughter", "ma", "##ya", "'", "s", "violin", "!", "!"])
    assert words == ["my", "daughter", "maya", "'", "s", "violin", "!!"]
    assert owner == [0, 1, 2, 2, 3, 4, 5, 6, 6]
    assert _words(["▁My", "▁sis", "ter", "▁Ana"]) == (["My", "sister", "Ana"], [0, 1, 1, 2])
    assert _words(["ĠMy", "Ġsis", "ter"]) == (["My", "sister"], [0, 1, 1])


def test_match_words_adds_up_and_hides_function_pairs():
    code = sp.csr_matrix(([0.6, 0.5, 0.4], ([0, 0, 0], [1, 2, 3])), shape=(1, 8))
    q_acts = {1: 0.5, 2: 0.5, 3: 0.5}
    query = (["my", "instrument"], {1: 1, 2: 1, 3: 0})
    message = (["my", "violin"], {1: 1, 2: 1, 3: 0})

    class SAE:
        hidden = {2: "function words"}

        def label(self, f):
            return f"label {f}"

    pairs, share = match_words(code, q_acts, query, message, SAE(), 5)
    assert [(p["query_word"], p["message_word"]) for p in pairs] == [("instrument", "violin")]  # "my"~"my" not shown
    assert pairs[0]["contribution"] == pytest.approx(0.3 + 0.25)
    assert [f["id"] for f in pairs[0]["features"]] == [1]  # the hidden feature counts but is not named
    assert share == pytest.approx(0.55 / 0.75)


def test_pairs_shown_are_the_query_words_that_carry_most_each_with_its_best_message_words():
    # Query word "flat" is matched by four message words, "job" by one, "cat" by one (weakest).
    words = ["flat", "job", "cat"]
    m_words = ["apartment", "rent", "lease", "home", "work", "kitten"]
    contributions = {0: (0, 0, 0.30), 1: (0, 1, 0.20), 2: (0, 2, 0.10), 3: (0, 3, 0.05), 4: (1, 4, 0.25), 5: (2, 5, 0.02)}
    code = sp.csr_matrix(([c for _, _, c in contributions.values()], ([0] * 6, list(contributions))), shape=(1, 8))
    q_acts = {f: 1.0 for f in contributions}
    query = (words, {f: q for f, (q, _, _) in contributions.items()})
    message = (m_words, {f: m for f, (_, m, _) in contributions.items()})

    class SAE:
        hidden: dict = {}

        def label(self, f):
            return None

    pairs, share = match_words(code, q_acts, query, message, SAE(), 2)
    assert [(p["query_word"], p["message_word"]) for p in pairs] == [
        ("flat", "apartment"), ("flat", "rent"), ("flat", "lease"), ("job", "work")]  # "home" is a 4th, "cat" a 3rd word
    assert share == pytest.approx(0.85 / 0.92)
    pairs, _ = match_words(code, q_acts, query, message, SAE(), 5, per_word=1)
    assert [p["message_word"] for p in pairs] == ["apartment", "work", "kitten"]
    with pytest.raises(ValueError, match="per_word=-1"):
        match_words(code, q_acts, query, message, SAE(), 5, per_word=-1)


def test_peak_words_name_a_word_for_every_active_feature(encoder):
    text = "My daughter Maya just started violin lessons on Tuesdays."
    (words, peaks), = encoder.peak_words([text])
    code = encoder.encode_documents([text]).sparse[0]
    assert "violin" in words and set(code.indices.tolist()) <= set(peaks)  # peaks name hidden features too
    assert set(peaks) - set(code.indices.tolist()) <= set(encoder.sae.hidden)
    assert all(0 <= i < len(words) for i in peaks.values())


def test_search_and_explain_explain_word_by_word(encoder):
    memory = SAEMemory(encoder)
    memory.add(CONVERSATION)
    plain = memory.search(QUESTION, k=3)
    assert all(h.matched_words == [] for h in plain)
    hits = memory.search(QUESTION, k=3, words=True)
    assert [h.id for h in hits] == [h.id for h in plain]  # the ranking does not change
    for hit in hits:
        assert hit.matched_words and 0 < hit.words_share <= 1
        total = sum(p["contribution"] for p in hit.matched_words)
        assert total == pytest.approx(hit.words_share * hit.sparse_score, abs=1e-4)
        assert all(p["query_word"].lower() in QUESTION.lower() for p in hit.matched_words)
        assert all(p["message_word"].lower() in hit.content.lower().replace(" ", "") for p in hit.matched_words)
        listed = hit.features + hit.shared_features
        assert all(f["word"].lower() in hit.content.lower().replace(" ", "") for f in listed)  # where each fired
        assert all(f["id"] in encoder.peak_words([hit.content])[0][1] for f in listed)
    assert not any("word" in f for h in plain for f in h.features + h.shared_features)
    explained = memory.explain(QUESTION, hits[0].id)
    assert explained.matched_words == hits[0].matched_words
    assert explained.shared_features == hits[0].shared_features


def test_an_embedding_sae_has_no_words(encoder):
    memory = SAEMemory(Encoder(EncoderConfig(sae="minilm-emb-topk4k"), model=encoder.model))
    memory.add(CONVERSATION[:3])
    hit = memory.search(QUESTION, k=1, words=True)[0]
    assert hit.matched_words == [] and hit.words_share == 0.0


def test_steered_features_are_paired_and_the_share_stays_a_share(encoder):
    memory = SAEMemory(encoder)
    memory.add([{"content": "I love my old violin. " * 80}, {"content": "My sister Ana lives in Lisbon."}])
    for hit in memory.search("Which city does my sister live in now?", k=2, words=True, steer={"violin": 1.0}):
        assert 0.0 <= hit.words_share <= 1.0
        assert all(p["features"] for p in hit.matched_words)  # never a pair carried by hidden features only
    with pytest.raises(TypeError, match="words"):
        memory.search("violin", words="no")


def test_all_pairs_make_up_the_score_even_when_steered(encoder):
    from saememory.interpret.explain import match_words

    memory = SAEMemory(encoder)
    memory.add([{"id": "v", "content": "I love my old violin and play it every day."}])
    query = "Which city does my sister live in now?"
    q = encoder.steer(encoder.encode_query(query), memory.resolve_features({"violin": 1.0}))
    q_acts = dict(zip(q.sparse[0].indices.tolist(), q.sparse[0].data.tolist()))
    code = encoder.encode_documents([memory.get("v")["content"]]).sparse[0]
    read = encoder.peak_words([query], query=True)[0], encoder.peak_words([memory.get("v")["content"]])[0]

    class Everything:  # no hygiene, and every word counts
        hidden: dict = {}

        def label(self, f):
            return None

    import saememory.interpret.explain as explain

    original = explain._function_word
    explain._function_word = lambda word: False
    try:
        pairs, share = match_words(code, q_acts, *read, Everything(), 10_000, per_word=10_000)
    finally:
        explain._function_word = original
    assert sum(p["contribution"] for p in pairs) == pytest.approx(float(code.multiply(q.sparse[0]).sum()), abs=1e-4)
    assert any(p["query_word"] == "(steered)" for p in pairs) and share == pytest.approx(1.0, abs=1e-4)
