"""saememory.lexical: BM25 per user equals bm25s on that user's messages, through deletes and saves."""

from __future__ import annotations

import bm25s
import numpy as np
import pytest
import Stemmer

from saememory import SAEMemory
from saememory.lexical import LexicalIndex
from tests.helpers import CONVERSATION, DISTRACTORS

QUERIES = ["my sister lives in Lisbon", "guitar guitar lessons", "insurance for the car", "zebra quantum"]


def bm25s_scores(docs: list[str], query: str, stemmer: str | None = None) -> np.ndarray:
    """The reference: bm25s with its defaults (and PyStemmer's stemmer), over exactly ``docs``."""
    stem = Stemmer.Stemmer(stemmer) if stemmer else None
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(docs, stopwords="en", stemmer=stem, show_progress=False), show_progress=False)
    tokens = bm25s.tokenize([query], stopwords="en", stemmer=stem, show_progress=False)
    if not tokens.vocab:
        return np.zeros(len(docs))
    found, scores = retriever.retrieve(tokens, k=len(docs), show_progress=False)
    out = np.zeros(len(docs))
    out[found[0]] = scores[0]
    return out


@pytest.mark.parametrize("stemmer", [None, "english"])
@pytest.mark.parametrize("query", QUERIES + ["lessons on the guitars", "living in Lisbon"])
def test_parity_with_bm25s(query, stemmer):
    docs = [m["content"] for m in CONVERSATION]
    lexical = LexicalIndex(stemmer=stemmer)
    lexical.add(docs[:5])
    lexical.add(docs[5:])  # added in two batches, as a live conversation grows
    np.testing.assert_allclose(lexical.scores(query, np.arange(len(docs))), bm25s_scores(docs, query, stemmer), atol=1e-5)


def test_stemming_matches_word_forms_and_is_saved(tmp_path):
    docs = ["I started taking guitar lessons", "The weather was cold"]
    plain, stemmed = LexicalIndex(), LexicalIndex(stemmer="english")
    for lexical in (plain, stemmed):
        lexical.add(docs)
    rows = np.arange(2)
    assert plain.scores("guitar lesson", rows)[0] < stemmed.scores("guitar lesson", rows)[0]
    stemmed.save(tmp_path)
    loaded = LexicalIndex.load(tmp_path)
    assert loaded.stemmer == "english"
    np.testing.assert_allclose(loaded.scores("lesson", rows), stemmed.scores("lesson", rows))


def test_unknown_stemmer_language_is_refused():
    with pytest.raises(ValueError, match="klingon.*Snowball.*english"):
        LexicalIndex(stemmer="klingon")


@pytest.mark.parametrize("stemmer", [None, "english"])
def test_each_user_is_its_own_corpus_and_deletes_take_effect(encoder, stemmer):
    memory = SAEMemory(encoder, bm25_weight=1.0, bm25_stemmer=stemmer)
    memory.add([{"content": t, "user_id": "a", "id": f"a{i}"} for i, t in enumerate(DISTRACTORS[:10])])
    memory.add([{"content": t, "user_id": "b", "id": f"b{i}"} for i, t in enumerate(DISTRACTORS[5:])])
    memory.delete(["a1", "a4"], user_id="a")
    for user in ("a", "b"):
        stored = memory.messages(user)
        docs = [m["content"] for m in stored]
        for query in QUERIES + ["plants that survive low light", "meeting on Friday"]:
            expected = dict(zip([m["id"] for m in stored], bm25s_scores(docs, query, stemmer)))
            for hit in memory.search(query, k=100, user_id=user):
                assert hit.bm25_score == pytest.approx(expected[hit.id], abs=1e-5)


def test_lexical_index_is_saved_and_loaded(encoder, tmp_path):
    memory = SAEMemory(encoder, bm25_weight=0.5, normalization="minmax", fusion="weighted")
    memory.add(CONVERSATION)
    memory.delete(memory.messages()[0]["id"])
    before = [(h.id, round(h.bm25_score, 6), round(h.score, 6)) for h in memory.search("sister Lisbon", k=20)]
    memory.save(tmp_path / "m")
    loaded = SAEMemory.load(tmp_path / "m", encoder=encoder)
    assert loaded.config == memory.config
    assert [(h.id, round(h.bm25_score, 6), round(h.score, 6)) for h in loaded.search("sister Lisbon", k=20)] == before
    assert any(b > 0 for _, b, _ in before)


def test_select_keeps_only_the_terms_of_the_rows_it_keeps(tmp_path):
    index = LexicalIndex(stemmer="english")
    index.add(["my sister lives in Lisbon", "my schizophrenia diagnosis", "the violin lessons in Lisbon"])
    kept = index.select(np.array([0, 2]))
    gone = set(index.vocab) - set(kept.vocab)
    assert len(gone) == 2 and {"lisbon", "violin", "sister"} <= set(kept.vocab)  # the stems of the second row's words
    for query in ("Lisbon violin", "sister", "schizophrenia"):  # the same scores as over those rows before
        np.testing.assert_allclose(kept.scores(query, np.arange(2)), index.scores(query, np.array([0, 2])), rtol=1e-6)
    kept.save(tmp_path)
    assert not any(term in (tmp_path / "bm25_vocab.json").read_text() for term in gone)
    loaded = LexicalIndex.load(tmp_path)
    np.testing.assert_allclose(loaded.scores("Lisbon violin", np.arange(2)), kept.scores("Lisbon violin", np.arange(2)))
    empty = index.select(np.array([], dtype=np.int64))
    assert empty.vocab == {} and len(empty) == 0
