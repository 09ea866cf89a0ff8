"""Does a feature's label fit where it fired? Labels are read from other text; a hit shows only those that fit.

A label is the words a feature fired on most in the SAE's training text. On a memory's own
text the same feature also fires on words that text never had: on "vegan" a feature labelled
"cruze / bastille / millbrae", on "thursdays" one labelled "pats / mystics / whitecaps". Shown
as the reason for a match, such a label is noise that looks like meaning.

So each listed feature of an explained hit (one read word by word: ``search(..., words=True)``,
``explain``) is checked in place, as Delphi's embedding scorer checks a label on the text where
its feature fires: the words around the one where it fired (``CONTEXT_WORDS`` on each side) are
embedded with the memory's own encoder, and ``fit`` is the share of the SAE's other labels (an
even sample of ``REFERENCE_LABELS``) that are less similar to them than this feature's label is
(1: none fits better). A label whose ``fit`` is below ``LABEL_FIT`` is withheld: the entry
keeps its ids, contribution and ``word``, its ``label`` and ``phrase`` become None, and
``label_elsewhere`` (and ``phrase_elsewhere``) keep what it was read as. A label that fits keeps its phrase only if the
phrase fits as well, by the same measure against the labels ("class" at "lessons" fits,
"economy class" does not). Its share of the score is unchanged: the feature still matched; only
its name is not shown.

The sample's embeddings are computed once per encoder and SAE in a process (about half a second
on a CPU), at the first explanation that needs them; each explanation then embeds its contexts
and the labels and phrases it lists.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import numpy as np

LABEL_FIT = 0.8  # chosen on LongMemEval-S's dev split (BENCHMARKS.md, "Labels that fit where they fired")
CONTEXT_WORDS = 5  # words on each side of the one where a feature fired
REFERENCE_LABELS = 512  # labels a fit is measured against: an even sample, embedded once (all 4,000 took 3 s)
MAX_LABEL_CHARS = 200  # of a label or phrase embedded to check it (a user's own labels file may hold more)

# Per encoder (by id, dropped with it), per SAE: the reference labels' texts and unit vectors.
_VECTORS: dict[int, dict[tuple[Any, ...], tuple[tuple[str, ...], np.ndarray]]] = {}
_LOCK = threading.Lock()


def reference_vectors(encoder: Any, sae: Any) -> tuple[tuple[str, ...], np.ndarray]:
    """An even sample of ``REFERENCE_LABELS`` of the SAE's labels (every n-th by feature id) and
    their unit vectors, embedded by ``encoder`` once per process (per call, for an encoder that
    cannot be weakly referenced)."""
    features = sorted(sae.labels)
    chosen = tuple(sae.labels[f][:MAX_LABEL_CHARS] for f in features[::max(1, -(-len(features) // REFERENCE_LABELS))])
    key = (getattr(sae, "name", None), getattr(sae, "sha256", None), chosen)
    with _LOCK:
        found = _VECTORS.get(id(encoder), {}).get(key)
    if found is None:
        found = (chosen, _unit(np.asarray(encoder.encode_documents(list(chosen)).dense, dtype=np.float32)))
        with _LOCK:  # two threads may both compute it: the same vectors
            if id(encoder) not in _VECTORS:
                try:  # an encoder's id may be reused once it is gone: its entry goes with it
                    weakref.finalize(encoder, _VECTORS.pop, id(encoder), None)
                except TypeError:  # cannot be weakly referenced: not kept
                    return found
                _VECTORS[id(encoder)] = {}
            _VECTORS[id(encoder)][key] = found
    return found


def check_fit(hits: list[tuple[list[dict[str, Any]], list[str], dict[int, int]]], encoder: Any, sae: Any,
              threshold: float = LABEL_FIT) -> None:
    """Sets ``fit`` on each labelled entry whose feature fired at a known word, and withholds
    the labels that do not fit there (see the module doc). Changes the entries in place.

    Args:
        hits: Per hit, ``(entries, words, peaks)``: its listed features (``Hit.features``,
            ``shared_features`` and the features of its ``matched_words``), each with ``id`` and
            ``label``; and its ``Encoder.peak_words``: its words, and the word where each
            feature fired. All hits' texts are embedded in one call.
        threshold: The lowest ``fit`` whose label is shown. Defaults to ``LABEL_FIT`` (0.8).
    """
    todo = [(e, _context(words, peaks[e["id"]])) for entries, words, peaks in hits for e in entries
            if e.get("label") and e["id"] in peaks]
    if not todo or not getattr(sae, "labels", None):
        return
    names, reference = reference_vectors(encoder, sae)
    contexts = sorted({context for _, context in todo})
    texts = sorted({e[key][:MAX_LABEL_CHARS] for e, _ in todo for key in ("label", "phrase") if e.get(key)})
    found = _unit(np.asarray(encoder.encode_documents(contexts + texts).dense, dtype=np.float32))
    at, vector = dict(zip(contexts, found[:len(contexts)])), dict(zip(texts, found[len(contexts):]))
    similar = {context: reference @ at[context] for context in contexts}

    def fits(text: str, context: str) -> float:
        """The share of the reference labels, other than this one, less similar to the context."""
        text = text[:MAX_LABEL_CHARS]
        others = np.array([name != text for name in names])
        if not others.any():
            return 1.0
        return float((similar[context][others] < float(at[context] @ vector[text])).mean())

    for entry, context in todo:
        entry["fit"] = round(fits(entry["label"], context), 4)
        if entry["fit"] < threshold:
            entry["label_elsewhere"], entry["phrase_elsewhere"] = entry["label"], entry.get("phrase")
            entry["label"] = entry["phrase"] = None
        elif entry.get("phrase") and fits(entry["phrase"], context) < threshold:
            # The words fit, their phrase from the training text does not ("economy class" at "lessons"): the words alone.
            entry["phrase_elsewhere"], entry["phrase"] = entry["phrase"], None


def _context(words: list[str], at: int) -> str:
    return " ".join(words[max(0, at - CONTEXT_WORDS): at + CONTEXT_WORDS + 1])


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)
