"""Does a feature's label fit where it fired? Labels are read from other text; a hit shows only those that fit.

A label is the words a feature fired on most in the SAE's training text. On a memory's own
text the same feature also fires on words that text never had: on "vegan" a feature labelled
"cruze / bastille / millbrae", on "thursdays" one labelled "pats / mystics / whitecaps". Shown
as the reason for a match, such a label is noise that looks like meaning.

So each listed feature of an explained hit (one read word by word: ``search(..., words=True)``,
``explain``) is checked in place, as Delphi's embedding scorer checks a label on the text where
its feature fires: the words around the one where it fired (``CONTEXT_WORDS`` on each side) are
embedded with the memory's own encoder, and ``fit`` is the share of the SAE's labels that are
less similar to them than this feature's label is (near 1: hardly a label fits better). A
label whose ``fit`` is below ``LABEL_FIT`` is withheld: the entry keeps its ids, contribution
and ``word``, its ``label`` and ``phrase`` become None, and ``label_elsewhere`` (and
``phrase_elsewhere``) keep what it was read as. A label that fits keeps its phrase only if the
phrase fits as well, by the same measure against the labels ("class" at "lessons" fits,
"economy class" does not). Its share of the score is unchanged: the feature still matched; only
its name is not shown.

The labels' embeddings are computed once per encoder and SAE in a process (a few seconds for
4,000 labels on a CPU), at the first explanation that needs them.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import numpy as np

LABEL_FIT = 0.8  # chosen on LongMemEval-S's dev split (BENCHMARKS.md, "Labels that fit where they fired")
CONTEXT_WORDS = 5  # words on each side of the one where a feature fired

# Per encoder (dropped with it), per SAE: the labels' rows and vectors.
_VECTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def label_vectors(encoder: Any, sae: Any) -> tuple[dict[int, int], np.ndarray]:
    """``(row of each labelled feature, unit vectors of the labels)``, embedded by ``encoder`` once per process."""
    key = (getattr(sae, "name", None), getattr(sae, "sha256", None), tuple(sorted(sae.labels.items())))
    with _LOCK:
        found = _VECTORS.get(encoder, {}).get(key)
    if found is None:
        features = sorted(sae.labels)
        vectors = _unit(np.asarray(encoder.encode_documents([sae.labels[f] for f in features]).dense, dtype=np.float32))
        found = ({f: i for i, f in enumerate(features)}, vectors)
        with _LOCK:  # two threads may both compute it: the same vectors
            _VECTORS.setdefault(encoder, {})[key] = found
    return found


def check_fit(entries: list[dict[str, Any]], words: list[str], peaks: dict[int, int], encoder: Any, sae: Any,
              threshold: float = LABEL_FIT) -> None:
    """Sets ``fit`` on each labelled entry whose feature fired at a known word, and withholds
    the labels that do not fit there (see the module doc). Changes ``entries`` in place.

    Args:
        entries: Listed features of one hit (``Hit.features``, ``shared_features`` and the
            features of its ``matched_words``), each with ``id`` and ``label``.
        words, peaks: The hit's ``Encoder.peak_words``: its words, and the word where each
            feature fired.
        threshold: The lowest ``fit`` whose label is shown. Defaults to ``LABEL_FIT`` (0.8).
    """
    todo = [e for e in entries if e.get("label") and e["id"] in peaks]
    if not todo or not getattr(sae, "labels", None):
        return
    rows, vectors = label_vectors(encoder, sae)
    contexts = sorted({_context(words, peaks[e["id"]]) for e in todo})
    phrases = sorted({e["phrase"] for e in todo if e.get("phrase")})
    found = _unit(np.asarray(encoder.encode_documents(contexts + phrases).dense, dtype=np.float32))
    at = dict(zip(contexts, found[:len(contexts)]))
    similar = dict(zip(contexts, found[:len(contexts)] @ vectors.T))
    phrase_vectors = dict(zip(phrases, found[len(contexts):]))
    for entry in todo:
        row = rows.get(entry["id"])
        if row is None:  # a label given after the vectors were made (a user's own labels file): unchecked
            continue
        context = _context(words, peaks[entry["id"]])
        cosines = similar[context]
        entry["fit"] = round(float((cosines < cosines[row]).mean()), 4)
        if entry["fit"] < threshold:
            entry["label_elsewhere"], entry["phrase_elsewhere"] = entry["label"], entry.get("phrase")
            entry["label"] = entry["phrase"] = None
        elif entry.get("phrase") and float((cosines < float(at[context] @ phrase_vectors[entry["phrase"]])).mean()) < threshold:
            # The words fit, their phrase from the training text does not ("economy class" at "lessons"): the words alone.
            entry["phrase_elsewhere"], entry["phrase"] = entry["phrase"], None


def _context(words: list[str], at: int) -> str:
    return " ".join(words[max(0, at - CONTEXT_WORDS): at + CONTEXT_WORDS + 1])


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)
