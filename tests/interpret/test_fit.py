"""saememory.interpret.fit: a label shows only where it fits the words around the one its feature fired on."""

from __future__ import annotations

import numpy as np
import pytest

from saememory import SAEMemory
from saememory.interpret import fit
from tests.helpers import CONVERSATION, QUESTION


class Labels:
    """An SAE stand-in with three labelled features."""

    name, sha256 = "stand-in", "00"
    labels = {1: "violin / cello / music", 2: "chevrolet cruze / millbrae", 3: "sister / brother / family"}


def test_a_label_read_elsewhere_is_withheld_and_one_that_fits_is_shown(encoder):
    words = "my daughter started violin lessons with a new teacher last week".split()
    peaks = {1: 3, 2: 3, 3: 1}  # all three fired on "violin" or "daughter"
    entries = [{"id": f, "ids": [f], "label": Labels.labels[f], "phrase": None, "word": words[peaks[f]]} for f in (1, 2, 3)]
    fit.check_fit([(entries, words, peaks)], encoder, Labels)
    music, cruze, family = entries
    assert music["label"] == "violin / cello / music" and music["fit"] == 1.0  # no other label fits better
    assert cruze["label"] is None and cruze["phrase"] is None and cruze["label_elsewhere"] == "chevrolet cruze / millbrae"
    assert cruze["fit"] == 0.0 and cruze["word"] == "violin" and cruze["id"] == 2  # still listed, by id and word
    assert "label_elsewhere" not in music
    fit.check_fit([(entries[:1], words, peaks)], encoder, Labels, threshold=1.01)  # nothing fits that well
    assert entries[0]["label"] is None


def test_entries_without_a_word_or_a_label_are_left_as_they_are(encoder):
    entries = [{"id": 9, "ids": [9], "label": "unknown feature", "phrase": None}, {"id": 1, "ids": [1], "label": None}]
    fit.check_fit([(entries, ["violin"], {1: 0})], encoder, Labels)
    assert entries == [{"id": 9, "ids": [9], "label": "unknown feature", "phrase": None},
                       {"id": 1, "ids": [1], "label": None}]


def test_the_reference_labels_are_an_even_sample_embedded_once_per_encoder(encoder, monkeypatch):
    names, vectors = fit.reference_vectors(encoder, Labels)
    assert len(names) == 3 and vectors.shape == (3, encoder.dim) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    monkeypatch.setattr(fit, "REFERENCE_LABELS", 2)  # every second label: features 1 and 3
    assert fit.reference_vectors(encoder, Labels)[0] == (Labels.labels[1], Labels.labels[3])
    monkeypatch.setattr(fit, "REFERENCE_LABELS", 512)
    monkeypatch.setattr(encoder, "encode_documents", lambda *a, **k: pytest.fail("embedded again"))
    assert fit.reference_vectors(encoder, Labels)[1] is vectors


def test_explained_hits_show_only_labels_that_fit(encoder):
    memory = SAEMemory(encoder)
    memory.add(CONVERSATION)
    hits = memory.search(QUESTION, k=3, words=True)
    listed = [f for h in hits for f in h.features + h.shared_features]
    assert listed and all("fit" in f for f in listed if f.get("word") and (f["label"] or f.get("label_elsewhere")))
    assert all(f["label"] is None for f in listed if f.get("fit", 1.0) < fit.LABEL_FIT)
    assert all(f["label"] for f in listed if f.get("label_elsewhere") is None and f.get("fit", 0.0) >= fit.LABEL_FIT)
    plain = memory.search(QUESTION, k=3)  # not read word by word: no word to check a label against
    assert all("fit" not in f for h in plain for f in h.features + h.shared_features)


class ManyLabels:
    name, sha256 = "stand-in-10", "01"
    labels = {i + 1: text for i, text in enumerate([
        "class / lesson / course", "chevrolet cruze / millbrae", "airport / flight / layover", "soup / bread / dinner",
        "football / goal / match", "bank / loan / money", "doctor / nurse / hospital", "rain / snow / weather",
        "phone / screen / battery", "garden / tomato / soil"])}


def test_a_label_that_fits_keeps_its_phrase_only_if_the_phrase_fits_too(encoder):
    words = "my daughter started violin lessons on tuesdays".split()
    entries = [{"id": 1, "ids": [1], "label": "class / lesson / course", "phrase": "chevrolet cruze millbrae",
                "word": "lessons"},
               {"id": 1, "ids": [1], "label": "class / lesson / course", "phrase": "music lessons", "word": "lessons"}]
    fit.check_fit([(entries, words, {1: 4})], encoder, ManyLabels)
    odd, good = entries
    assert odd["fit"] >= fit.LABEL_FIT and odd["label"] == "class / lesson / course"
    assert odd["phrase"] is None and odd["phrase_elsewhere"] == "chevrolet cruze millbrae"
    assert good["phrase"] == "music lessons" and "phrase_elsewhere" not in good


def test_the_page_says_a_withheld_label_was_read_elsewhere():
    from saememory.interpret.html import _feature_html

    shown = _feature_html({"id": 7, "ids": [7], "label": None, "phrase": None, "word": "vegan", "contribution": 0.01,
                           "label_elsewhere": "chevrolet <cruze>"}, {})
    assert "#7 at &#x27;vegan&#x27;" in shown and "Read elsewhere as &#x27;chevrolet &lt;cruze&gt;&#x27;" in shown


def test_a_few_labels_still_show_where_they_fit_and_all_hits_are_embedded_at_once(encoder, monkeypatch):
    """With four labels, the best one for its words fits fully: it is not compared with itself."""

    class Four:
        name, sha256 = "four", "02"
        labels = {1: "violin", 2: "daughter", 3: "tuesdays", 4: "maya"}

    words = "my daughter maya started violin lessons on tuesdays".split()
    first = [{"id": 1, "ids": [1], "label": "violin", "phrase": None, "word": "violin"}]
    second = [{"id": 3, "ids": [3], "label": "tuesdays", "phrase": None, "word": "tuesdays"}]
    fit.reference_vectors(encoder, Four)  # made once, before the calls are counted
    calls = []
    real = encoder.encode_documents
    monkeypatch.setattr(encoder, "encode_documents", lambda texts, **k: calls.append(len(texts)) or real(texts, **k))
    other = "choir practice moved to tuesdays".split()
    fit.check_fit([(first, words, {1: 4}), (second, other, {3: 4})], encoder, Four)
    assert len(calls) == 1  # both hits' contexts and labels in one call
    assert first[0]["label"] == "violin" and second[0]["label"] == "tuesdays"


def test_an_encoder_that_cannot_be_hashed_still_explains(encoder):
    from dataclasses import dataclass

    @dataclass
    class Wrapped:  # a dataclass is unhashable; a custom encoder may well be one
        inner: object

        def encode_documents(self, texts, **kwargs):
            return self.inner.encode_documents(texts, **kwargs)

    words = "my daughter started violin lessons".split()
    entries = [{"id": 1, "ids": [1], "label": "violin / cello / music", "phrase": None, "word": "violin"}]
    fit.check_fit([(entries, words, {1: 3})], Wrapped(encoder), Labels)
    assert entries[0]["label"] == "violin / cello / music" and entries[0]["fit"] == 1.0
