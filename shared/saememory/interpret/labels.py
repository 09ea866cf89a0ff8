"""Feature labels: made offline from word statistics, checked on held-out text, written, read, searched.

No language model is involved. A feature's label is the few terms most over-represented where it
fires most, against their frequency in the whole corpus:

- *residual* SAEs (token states) are read per word: a word occurrence's activation is the maximum
  over its wordpieces, and the terms are the words themselves (stopwords and punctuation included:
  a feature that fires on "?" is labelled "?").
- *embedding* SAEs (one vector per message) are read per message: the terms are the message's
  words, stopwords left out unless nothing else is over-represented.

For feature ``f`` and term ``w``, ``share`` is the activation-weighted fraction of ``f``'s top
units (word occurrences or messages) that hold ``w`` and ``background`` the fraction of all units
that do; the score is ``share * log(share / background)``, one term of a KL divergence, which
rewards terms that are both common among the top units and rare elsewhere.

:func:`check_labels` tests labels on held-out messages: a label's terms should be more frequent in
messages where its feature fires strongly than in messages where it does not fire.

``labels.json`` sits beside an SAE's weights: :func:`write_labels` writes it,
:func:`load_labels` reads it (or a Neuronpedia export) and ``SparseAutoencoder.from_disk``
attaches it; :func:`find_features` finds features by the terms of their labels. The command
``python -m saememory.interpret.label`` runs the whole labelling of an SAE (it also computes the
activations, with torch); feature families are in ``saememory.interpret.families``.

numpy and scipy only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

LABELS_FILENAME = "labels.json"
LABELS_FORMAT = "saememory-labels/1"

# A conventional English stopword list; chat fillers ("yeah", "okay") are left in on purpose.
STOPWORDS = frozenset(
    """a about above after again against all am an and any are aren as at be because been before
    being below between both but by can cannot could couldn did didn do does doesn doing don down
    during each few for from further had hadn has hasn have haven having he her here hers herself
    him himself his how i if in into is isn it its itself just ll me more most mustn my myself no
    nor not now of off on once only or other ought our ours ourselves out over own re s same shan
    she should shouldn so some such t than that the their theirs them themselves then there these
    they this those through to too under until up ve very was wasn we were weren what when where
    which while who whom why will with won would wouldn you your yours yourself yourselves d m o y
    also would could may might must shall us""".split()
)


@dataclass
class Words:
    """The words of some texts as the model's tokenizer splits them, aligned with its real tokens.

    "Real" tokens are those the encoder feeds a residual SAE: no special tokens (``[CLS]``,
    ``[SEP]``, padding, ``[UNK]``), within the model's window.

    Attributes:
        vocab: Term strings (lower-cased words); a term's id is its position.
        term: (n_occurrences,) term id of each word occurrence, -1 for a word outside ``vocab``.
        message: (n_occurrences,) index of the text each occurrence is in.
        span: (n_occurrences, 2) character offsets of each occurrence in its text.
        token_occurrence: (n_real_tokens,) the occurrence each real token belongs to.
        n_messages: Number of texts.
    """

    vocab: list[str]
    term: np.ndarray
    message: np.ndarray
    span: np.ndarray
    token_occurrence: np.ndarray
    n_messages: int

    def message_terms(self) -> sp.csr_matrix:
        """(n_messages, len(vocab)) 0/1: which terms each message holds."""
        known = self.term >= 0
        matrix = sp.csr_matrix(
            (np.ones(int(known.sum()), dtype=np.float32), (self.message[known], self.term[known])),
            shape=(self.n_messages, len(self.vocab)),
        )
        matrix.data[:] = 1.0  # duplicates were summed
        return matrix

    def occurrence_phrases(self, texts: Sequence[str], sizes: Sequence[int] = (2, 3)) -> tuple[sp.csr_matrix, list[str]]:
        """The phrases around each word occurrence: every run of ``sizes`` consecutive words of
        its text that holds it, read from the text itself ("thank you", "i'm", "my dog"), lower-cased.

        Left out: runs that start or end with a word without a letter or digit ("dog .") or
        inside a contraction or number ("m going" of "i'm going", "3 stars" of "4.3 stars"),
        runs across a sentence end ("am. the", "wait… then") or a line break, and runs over text
        that is not a word (an emoji the tokenizer does not know), so a run reads as the words it
        counts. Every "." ends a sentence, so abbreviations ("d.c.") are in no phrase.

        Returns:
            ``(matrix, vocab)``: (n_occurrences, len(vocab)) 0/1 and the phrase strings.
        """
        index: dict[str, int] = {}
        rows, cols = [], []
        n = self.term.size
        opens, closes = [False] * n, [False] * n  # a run may start / end at word i
        joins = [False] * n  # word i and word i + 1 are adjacent words of one sentence and line
        for i in range(n):
            text = texts[self.message[i]]
            start, end = self.span[i]
            alnum = any(ch.isalnum() for ch in text[start:end])
            before, after = text[max(start - 2, 0) : start], text[end : end + 2]
            # Not inside a word: "m going" of "i'm going", "t know" of "don't know", "3" of "4.3".
            # An apostrophe or a point between two letters or digits joins; a quote mark does not.
            opens[i] = alnum and not (before[-1:].isalnum() or (before[-1:] in ("'", "’", ".", ",")
                                                                  and before[:1].isalnum() and len(before) == 2))
            closes[i] = alnum and not (after[:1].isalnum() or (after[:1] in ("'", "’", ".", ",") and after[1:].isalnum()))
            word = text[start:end]
            quote = word in ("'", "’", '"', "“", "”") and not (before[-1:].isalnum() and after[:1].isalnum())
            if i + 1 < n and self.message[i + 1] == self.message[i]:
                gap = text[end : self.span[i + 1][0]]
                joins[i] = not gap.strip() and "\n" not in gap and word not in (".", "!", "?", "…") and not quote
            if quote and i > 0:
                joins[i - 1] = False  # a quote mark ends a run on both sides
        for size in sizes:
            for first in range(n - size + 1):
                last = first + size - 1
                if not (opens[first] and closes[last] and all(joins[first:last])):
                    continue
                text = texts[self.message[first]]
                phrase = " ".join(text[self.span[first][0] : self.span[last][1]].lower().split())
                column = index.setdefault(phrase, len(index))
                rows.extend(range(first, last + 1))
                cols.extend([column] * size)
        matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n, len(index)))
        matrix.data[:] = 1.0  # a phrase twice around one occurrence counts once
        return matrix, list(index)

    def occurrence_terms(self) -> sp.csr_matrix:
        """(n_occurrences, len(vocab)) 0/1: the term of each word occurrence."""
        known = self.term >= 0
        rows = np.flatnonzero(known)
        return sp.csr_matrix(
            (np.ones(rows.size, dtype=np.float32), (rows, self.term[known])),
            shape=(self.term.size, len(self.vocab)),
        )


def split_words(
    tokenizer: Any, texts: Sequence[str], max_length: int, vocab: Sequence[str] | None = None
) -> Words:
    """Splits texts into words with a fast tokenizer, keeping the link from tokens to words.

    Args:
        tokenizer: A Hugging Face fast tokenizer (``Encoder.tokenizer``); its pre-tokenizer decides
            what a word is (BERT: whitespace and punctuation).
        texts: The texts.
        max_length: Tokens per text, special tokens included (``Encoder.max_tokens``); longer texts
            are truncated as the encoder truncates them.
        vocab: A fixed vocabulary; words outside it get term id -1. Defaults to None: the
            vocabulary is built from ``texts``.

    Returns:
        The words, their occurrences and the token-to-occurrence map.
    """
    special = set(tokenizer.all_special_ids)
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, return_offsets_mapping=True)
    index: dict[str, int] = {} if vocab is None else {term: i for i, term in enumerate(vocab)}
    terms, messages, spans, token_occurrence = [], [], [], []
    for m, text in enumerate(texts):
        last_word = None
        for token_id, (start, end), word in zip(
            encoded["input_ids"][m], encoded["offset_mapping"][m], encoded.word_ids(m)
        ):
            if token_id in special:
                continue
            if word != last_word:
                messages.append(m)
                spans.append([start, end])
                last_word = word
            spans[-1][1] = end
            token_occurrence.append(len(spans) - 1)
    for (start, end), m in zip(spans, messages):
        word = texts[m][start:end].lower()
        if vocab is None and word not in index:
            index[word] = len(index)
        terms.append(index.get(word, -1))
    return Words(
        vocab=list(index) if vocab is None else list(vocab),
        term=np.asarray(terms, dtype=np.int64),
        message=np.asarray(messages, dtype=np.int64),
        span=np.asarray(spans, dtype=np.int64).reshape(-1, 2),
        token_occurrence=np.asarray(token_occurrence, dtype=np.int64),
        n_messages=len(texts),
    )


def stopword_mask(vocab: Sequence[str]) -> np.ndarray:
    """True for terms an embedding label should avoid: stopwords, and terms without a letter."""
    return np.array([term in STOPWORDS or not re.search(r"[^\W\d_]", term) for term in vocab], dtype=bool)


def distinctive_terms(
    acts: sp.spmatrix,
    unit_terms: sp.spmatrix,
    vocab: Sequence[str],
    *,
    avoid: np.ndarray | None = None,
    n_top: int = 100,
    n_terms: int = 3,
    min_support: int = 2,
    min_relative: float = 0.1,
    min_share: float = 0.0,
) -> dict[int, list[str]]:
    """The terms most over-represented among each feature's top-activating units.

    Args:
        acts: (n_units, d_sae) activations; a unit is a word occurrence or a message.
        unit_terms: (n_units, len(vocab)) 0/1, the terms each unit holds.
        vocab: Term strings.
        avoid: (len(vocab),) True for terms used only when no other term scores above zero.
            Defaults to None (every term allowed).
        n_top: Units per feature, by activation, that the label is read from. Defaults to 100.
        n_terms: Terms per label at most. Defaults to 3.
        min_support: A term must occur in at least this many of the top units, unless no term
            does. Defaults to 2.
        min_relative: Terms after the first must score at least this fraction of the best.
            Defaults to 0.1.
        min_share: A term must be held by at least this activation-weighted share of the top
            units; a feature none of whose terms is gets no label. Defaults to 0.0 (no floor).

    Returns:
        Feature id to its terms, best first, for every feature active on at least one unit (and,
        with ``min_share``, holding a term that common).
    """
    acts = sp.csc_matrix(acts)
    holds = sp.csr_matrix(unit_terms, dtype=np.float32)
    holds.data[:] = 1.0
    background = np.asarray(holds.sum(axis=0)).ravel() / max(holds.shape[0], 1)
    avoid = np.zeros(len(vocab), dtype=bool) if avoid is None else np.asarray(avoid, dtype=bool)
    out: dict[int, list[str]] = {}
    for feature in range(acts.shape[1]):
        rows = acts.indices[acts.indptr[feature] : acts.indptr[feature + 1]]
        values = acts.data[acts.indptr[feature] : acts.indptr[feature + 1]]
        rows, values = rows[values > 0], values[values > 0]
        if rows.size == 0:
            continue
        top = np.argsort(-values, kind="stable")[:n_top]
        sub = holds[rows[top]].tocoo()
        if sub.nnz == 0:
            continue
        candidates, inverse = np.unique(sub.col, return_inverse=True)
        weights = values[top][sub.row]
        share = np.bincount(inverse, weights=weights) / values[top].sum()
        support = np.bincount(inverse)
        score = share * np.log(share / background[candidates])
        order = np.lexsort((candidates, -score))
        if min_share > 0:
            order = order[share[order] >= min_share]
            if order.size == 0:
                continue
        for keep in (
            (score > 0) & ~avoid[candidates] & (support >= min_support),
            (score > 0) & ~avoid[candidates],
            score > 0,
            np.ones_like(score, dtype=bool),
        ):
            chosen = [int(i) for i in order if keep[i]]
            if chosen:
                break
        best = score[chosen[0]]
        picked = [chosen[0]] + [i for i in chosen[1:] if best > 0 and score[i] >= min_relative * best]
        out[feature] = [vocab[candidates[i]] for i in picked[:n_terms]]
    return out


def format_label(terms: Sequence[str]) -> str:
    """A label string from its terms: ``"flight / airline / depart"``."""
    return " / ".join(terms)


def label_terms(label: str) -> list[str]:
    """The terms of a label made by :func:`format_label`."""
    return [term.strip() for term in label.split(" / ") if term.strip()]


def top_examples(
    acts: sp.spmatrix,
    unit_message: np.ndarray,
    texts: Sequence[str],
    *,
    spans: np.ndarray | None = None,
    n_examples: int = 3,
    width: int = 120,
) -> dict[int, list[str]]:
    """Each feature's top-activating texts, distinct, truncated; the firing word in ``[...]``.

    Args:
        acts: (n_units, d_sae) activations.
        unit_message: (n_units,) the text each unit belongs to.
        texts: The texts.
        spans: (n_units, 2) character span of each unit's word, marked in the example. Defaults to
            None (units are whole messages).
        n_examples: Examples per feature. Defaults to 3.
        width: Characters kept per example, centred on the marked word. Defaults to 120.
    """
    acts = sp.csc_matrix(acts)
    out: dict[int, list[str]] = {}
    for feature in range(acts.shape[1]):
        rows = acts.indices[acts.indptr[feature] : acts.indptr[feature + 1]]
        values = acts.data[acts.indptr[feature] : acts.indptr[feature + 1]]
        seen: set[int] = set()
        examples: list[str] = []
        for row in rows[np.argsort(-values, kind="stable")]:
            message = int(unit_message[row])
            if message in seen:
                continue
            seen.add(message)
            examples.append(_excerpt(texts[message], None if spans is None else spans[row], width))
            if len(examples) == n_examples:
                break
        if examples:
            out[feature] = examples
    return out


def _excerpt(text: str, span: np.ndarray | None, width: int) -> str:
    text = " ".join(text.split()) if span is None else text
    if span is None:
        return text if len(text) <= width else text[: width - 1].rstrip() + "…"
    start, end = int(span[0]), int(span[1])
    marked = f"{text[:start]}[{text[start:end]}]{text[end:]}"
    if len(marked) <= width:
        return " ".join(marked.split())
    left = max(0, min(start - width // 2, len(marked) - width))
    piece = marked[left : left + width]
    return ("…" if left > 0 else "") + " ".join(piece.split()) + ("…" if left + width < len(marked) else "")


def check_labels(
    acts: sp.spmatrix,
    message_terms: sp.spmatrix,
    vocab: Sequence[str],
    labels: Mapping[int, str],
    *,
    n_features: int = 200,
    min_fires: int = 5,
    strong_quantile: float = 0.5,
    seed: int = 0,
) -> dict[str, Any]:
    """Do a label's terms occur more where its feature fires? Measured on held-out messages.

    For each sampled feature, "strong" messages are those where it fires at or above the
    ``strong_quantile`` of its non-zero activations, "quiet" ones those where it does not fire;
    a message "has the label" if it holds any of the label's terms. The feature passes if the
    rate is higher among strong messages. The lift is the ratio of the two rates, each
    Laplace-smoothed ((hits + 1) / (n + 2)) so a zero quiet rate stays finite. The same is computed
    with the sampled labels shuffled among the sampled features, as a chance baseline.

    Args:
        acts: (n_messages, d_sae) message-level activations of held-out messages.
        message_terms: (n_messages, len(vocab)) 0/1, the terms each message holds.
        vocab: Term strings of ``message_terms``.
        labels: Feature id to label (made by :func:`format_label`).
        n_features: Features sampled among those labelled and firing on at least ``min_fires``
            messages. Defaults to 200.
        min_fires: Firing messages a feature needs to be sampled. Defaults to 5.
        strong_quantile: Quantile of a feature's non-zero activations above which it fires
            "strongly". Defaults to 0.5.
        seed: Seed of the sample and of the shuffle. Defaults to 0.

    Returns:
        ``pass_rate``, ``mean_lift``, ``median_lift``, the same for ``baseline_*`` (shuffled labels),
        and the counts and settings used.

    Raises:
        ValueError: If no labelled feature fires often enough to be checked.
    """
    acts = sp.csc_matrix(acts)
    holds = sp.csc_matrix(message_terms)
    index = {term: i for i, term in enumerate(vocab)}
    fires = np.diff(acts.indptr)
    eligible = [f for f in sorted(labels) if f < acts.shape[1] and fires[f] >= min_fires]
    if not eligible:
        raise ValueError(
            f"No labelled feature fires on at least min_fires={min_fires} of the {acts.shape[0]} "
            "held-out messages; use more held-out messages or a lower min_fires."
        )
    rng = np.random.default_rng(seed)
    sample = sorted(rng.choice(eligible, size=min(n_features, len(eligible)), replace=False).tolist())
    shuffled = [sample[i] for i in np.roll(rng.permutation(len(sample)), 1)] if len(sample) > 1 else sample

    def score(feature: int, label: str) -> tuple[bool, float]:
        column = acts[:, feature].toarray().ravel()
        fired = column > 0
        strong = column >= np.quantile(column[fired], strong_quantile)
        strong &= fired
        quiet = ~fired
        ids = [index[t] for t in label_terms(label) if t in index]
        has = np.asarray(holds[:, ids].sum(axis=1)).ravel() > 0 if ids else np.zeros(acts.shape[0], bool)
        hit_strong, hit_quiet = int(has[strong].sum()), int(has[quiet].sum())
        n_strong, n_quiet = int(strong.sum()), int(quiet.sum())
        passed = n_quiet > 0 and hit_strong * n_quiet > hit_quiet * n_strong  # rates, without division
        lift = ((hit_strong + 1) / (n_strong + 2)) / ((hit_quiet + 1) / (n_quiet + 2))
        return passed, lift

    real = [score(f, labels[f]) for f in sample]
    base = [score(f, labels[g]) for f, g in zip(sample, shuffled)]
    return {
        "n_messages": int(acts.shape[0]),
        "n_eligible": len(eligible),
        "n_features": len(sample),
        "pass_rate": float(np.mean([p for p, _ in real])),
        "mean_lift": float(np.mean([lift for _, lift in real])),
        "median_lift": float(np.median([lift for _, lift in real])),
        "baseline_pass_rate": float(np.mean([p for p, _ in base])),
        "baseline_mean_lift": float(np.mean([lift for _, lift in base])),
        "baseline_median_lift": float(np.median([lift for _, lift in base])),
        "min_fires": min_fires,
        "strong_quantile": strong_quantile,
        "seed": seed,
    }


def write_labels(
    path: str | Path,
    labels: Mapping[int, str],
    examples: Mapping[int, list[str]],
    *,
    sae_sha256: str | None,
    method: str,
    **extra: Any,
) -> Path:
    """Writes ``labels.json`` in saememory's layout (``load_labels`` reads its ``labels``)."""
    fields = {
        **extra,
        "labels": {str(f): labels[f] for f in sorted(labels)},
        "examples": {str(f): list(examples[f]) for f in sorted(examples)},
    }
    return write_sae_file(path, LABELS_FORMAT, sae_sha256=sae_sha256, method=method, fields=fields,
                          indent=1, ensure_ascii=False)


def write_sae_file(
    path: str | Path, file_format: str, *, sae_sha256: str | None, method: str, fields: Mapping[str, Any], **dump: Any
) -> Path:
    """Writes a JSON file that explains an SAE: its format, the weights' sha256 and the method, then ``fields``.

    Args:
        path: The file.
        file_format: E.g. ``LABELS_FORMAT``.
        sae_sha256: ``SparseAutoencoder.sha256`` of the weights it was made for.
        method: How it was made, in words.
        fields: The rest of the file.
        **dump: Passed to ``json.dumps`` (indentation, separators).
    """
    data = {"format": file_format, "sae_sha256": sae_sha256, "method": method, **fields}
    path = Path(path)
    path.write_text(json.dumps(data, **dump) + "\n", encoding="utf-8")
    return path


def load_labels(path: str | Path, neuronpedia_id: str | None = None) -> dict[int, str]:
    """Reads feature labels from a JSON file.

    Two layouts are accepted: saememory's ``{"labels": {"<id>": "<label>", ...}}`` (or the bare
    mapping) and a Neuronpedia explanations export, a list of records with ``index`` and
    ``description``. When a feature has several explanations the first one wins.

    Args:
        path: The JSON file.
        neuronpedia_id: ``"<modelId>/<layer>"`` (e.g. ``"gemma-2b-it/12-res-jb"``). When given and
            the export's records carry ``modelId``, only records of that SAE are kept. Defaults
            to None (all records).

    Raises:
        ValueError: If the file is in neither layout, the id is malformed, or no record matches it.
    """
    return labels_from_data(json.loads(Path(path).read_text(encoding="utf-8")), path, neuronpedia_id)


def labels_from_data(data: Any, path: str | Path, neuronpedia_id: str | None = None) -> dict[int, str]:
    """``load_labels`` of a file already parsed (``data``); ``path`` names it in errors."""
    if isinstance(data, dict) and isinstance(data.get("labels"), dict):
        data = data["labels"]
    labels: dict[int, str] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, dict):
                value = value.get("label") or value.get("description")
            if value:
                labels[int(key)] = str(value)
        return labels
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a mapping of feature id to label or a list of records.")
    for record in data:
        if not isinstance(record, dict) or "index" not in record:
            raise ValueError(
                f"{path}: a list of labels must hold records with 'index' and 'description' "
                f"(a Neuronpedia export); got {str(record)[:80]!r}."
            )
    if neuronpedia_id is not None and any("modelId" in r for r in data):
        model_id, _, layer = neuronpedia_id.partition("/")
        if not model_id or not layer:
            raise ValueError(f"neuronpedia_id={neuronpedia_id!r} is not '<modelId>/<layer>', e.g. 'gemma-2b-it/12-res-jb'.")
        kept = [r for r in data if r.get("modelId") == model_id and str(r.get("layer")) == layer]
        if not kept:
            found = sorted({f"{r.get('modelId')}/{r.get('layer')}" for r in data})
            raise ValueError(f"{path} has no record of {neuronpedia_id!r}; it holds {found[:5]}. Export this SAE's explanations.")
        data = kept
    for record in data:
        description = str(record.get("description") or "").strip()
        if description:
            labels.setdefault(int(record["index"]), description)
    return labels


def find_features(labels: Any, query: str, limit: int = 10) -> list[int]:
    """Features whose label holds the query's words, best match first.

    A feature scores one point per query word that is one of its label's terms (exact, case
    folded), and half a point per query word found inside a term; ties go to the feature whose
    matching term comes first in its label, then to the lower id.

    Args:
        labels: A ``SparseAutoencoder`` (its ``labels``) or a mapping of feature id to label.
        query: Words to look for, e.g. ``"flight airline"``.
        limit: Features returned at most. Defaults to 10.

    Returns:
        Matching feature ids; empty if none matches.
    """
    mapping: Mapping[int, str] = getattr(labels, "labels", labels)
    words = re.findall(r"\w+", query.lower())
    scored = []
    for feature, label in mapping.items():
        terms = [term.lower() for term in label_terms(label)]
        points, first = 0.0, len(terms)
        for word in words:
            exact = [i for i, term in enumerate(terms) if term == word]
            partial = [i for i, term in enumerate(terms) if word in term]
            if exact or partial:
                points += 1.0 if exact else 0.5
                first = min(first, (exact or partial)[0])
        if points:
            scored.append((-points, first, int(feature)))
    return [feature for _, _, feature in sorted(scored)[:limit]]
