"""What a hit lists: features that read the same are one entry, and the shares still add up."""

from __future__ import annotations

import pytest
import scipy.sparse as sp

from saememory.interpret.explain import explain_features, feature_text, match_words


class _SAE:
    """Features 1, 2 and 5 read "table", 3 reads "chair", 4 has no label; 5 is hidden."""

    hidden = {5: "function words"}
    families: dict = {}
    labels = {1: "table", 2: "table", 3: "chair", 5: "table"}

    def label(self, feature):
        return self.labels.get(feature)


def _code(values: dict[int, float]) -> sp.csr_matrix:
    return sp.csr_matrix((list(values.values()), ([0] * len(values), list(values))), shape=(1, 8))


def test_features_that_read_the_same_are_one_entry():
    code = _code({1: 0.3, 2: 0.3, 3: 0.5, 4: 0.2, 5: 0.9})
    q_acts = {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0, 5: 1.0}
    strongest, shared, explained = explain_features(code, q_acts, _SAE(), 5)
    assert [(f["id"], f["ids"], f["activation"]) for f in strongest] == [(3, [3], 0.5), (1, [1, 2], 0.3), (4, [4], 0.2)]
    # Two small "table" features together carry more than the one larger "chair": listed first.
    assert [(f["ids"], f["contribution"]) for f in shared] == [([1, 2], pytest.approx(0.6)), ([3], 0.5), ([4], 0.2)]
    assert explained == pytest.approx(1.3 / (1.3 + 0.9))  # the hidden feature counts, unlisted
    _, one, share = explain_features(code, q_acts, _SAE(), 1)
    assert [f["ids"] for f in one] == [[1, 2]] and share == pytest.approx(0.6 / 2.2)


def test_word_pairs_list_features_that_read_the_same_once():
    code = _code({1: 0.3, 2: 0.3, 3: 0.1})
    q_acts = {1: 1.0, 2: 1.0, 3: 1.0}
    pairs, share = match_words(code, q_acts, (["desk"], {1: 0, 2: 0, 3: 0}), (["tables"], {1: 0, 2: 0, 3: 0}), _SAE(), 5)
    assert [(f["ids"], f["contribution"]) for f in pairs[0]["features"]] == [([1, 2], pytest.approx(0.6)), ([3], 0.1)]
    assert pairs[0]["contribution"] == pytest.approx(0.7) and share == pytest.approx(1.0)


def test_feature_text_names_every_feature_of_an_entry():
    assert feature_text({"id": 1, "label": "table"}) == "#1 'table'"
    assert feature_text({"id": 1, "ids": [1, 2], "label": "table"}) == "#1 #2 'table'"
    assert feature_text({"id": 1, "ids": [1, 2, 7, 9, 11], "label": "table", "phrase": "the table"}) == (
        "#1 #2 #7 (+2) 'the table' ('table')")
    assert feature_text({"id": 1, "label": "pats / mystics", "word": "violin"}) == "#1 'pats / mystics' at 'violin'"
    assert feature_text({"id": 1, "word": "violin"}) == "#1 at 'violin'"


def test_features_with_one_phrase_are_one_entry_whatever_their_labels():
    class Phrased(_SAE):
        labels = {1: "name", 2: "name / named / call", 3: "chair"}
        phrases = {1: "the name", 2: "the name"}

        def phrase(self, feature):
            return self.phrases.get(feature)

    strongest, shared, _ = explain_features(_code({1: 0.5, 2: 0.4, 3: 0.3}), {1: 1.0, 2: 1.0, 3: 1.0}, Phrased(), 5)
    assert [(f["ids"], f["phrase"], f["label"]) for f in strongest] == [([1, 2], "the name", "name"), ([3], None, "chair")]
    assert [f["ids"] for f in shared] == [[1, 2], [3]]


def test_the_strongest_list_reads_on_when_the_top_features_all_read_the_same():
    class Many(_SAE):
        hidden: dict = {}
        labels = {**{f: "table" for f in range(30)}, 30: "chair"}

    code = sp.csr_matrix(([1.0 - f / 100 for f in range(31)], ([0] * 31, list(range(31)))), shape=(1, 40))
    strongest, _, _ = explain_features(code, {}, Many(), 2)
    assert [f["label"] for f in strongest] == ["table", "chair"]
    assert strongest[0]["ids"] == list(range(30))  # read on past the first 4 x 2: every "table" is named
