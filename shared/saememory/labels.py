"""Offline feature labels, a check that they mean something, and feature families.

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

``check_labels`` tests labels on held-out messages: a label's terms should be more frequent in
messages where its feature fires strongly than in messages where it does not fire.

``feature_families`` follows O'Neill et al. (2024, arXiv 2408.00657) and their saerch code:
message-level co-occurrence counts, normalised by the sparser feature's count, thresholded,
maximum spanning forest, edges pointing from the denser (parent) to the sparser (child) feature;
then again with the parents of the first level removed.

``labels.json`` and ``families.json`` sit beside an SAE's weights; ``SparseAutoencoder.from_disk``
reads the labels and :func:`load_families` the families; :func:`describe_family` shapes one
feature's family for a hit and :func:`find_features` finds features by the terms of their labels.
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
import torch
from scipy.sparse.csgraph import minimum_spanning_tree

LABELS_FORMAT = "saememory-labels/1"
FAMILIES_FORMAT = "saememory-families/1"
FAMILIES_FILENAME = "families.json"
SOURCES = ("residual", "embedding")

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


@torch.inference_mode()
def residual_codes(
    sae: Any, states: torch.Tensor, words: Words, messages_per_chunk: int = 256
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Activations of a residual SAE per word occurrence and per message (maximum over tokens).

    The message codes are the encoder's max-pooled codes before L2 normalisation.

    Args:
        sae: Anything with ``encode`` (a ``SparseAutoencoder``).
        states: (n_real_tokens, d_in) token states, in the order of ``words.token_occurrence``
            (``Encoder.token_states`` gives this order).
        words: The words of the same texts, from :func:`split_words`.
        messages_per_chunk: Texts encoded at a time. Defaults to 256.

    Returns:
        ``(occurrences, messages)``: CSR matrices of shape (n_occurrences, d_sae) and
        (n_messages, d_sae).

    Raises:
        ValueError: If the states and the words disagree on the number of tokens.
    """
    if states.shape[0] != words.token_occurrence.size:
        raise ValueError(
            f"Got {states.shape[0]} token states but the tokenizer found {words.token_occurrence.size} "
            "real tokens in the texts; pass the states of exactly these texts, in order, with the "
            "same tokenizer and max_length."
        )
    token_message = words.message[words.token_occurrence]
    cuts = np.searchsorted(token_message, np.arange(0, words.n_messages + messages_per_chunk, messages_per_chunk))
    occurrence_blocks, message_blocks = [], []
    for start, end in zip(cuts[:-1], cuts[1:]):
        if start == end:
            continue
        codes = sae.encode(states[start:end]).float()
        occurrence = torch.from_numpy(words.token_occurrence[start:end])
        message = torch.from_numpy(token_message[start:end])
        occurrence_blocks.append(_group_max(codes, occurrence, int(occurrence[0])))
        message_blocks.append(_group_max(codes, message, int(message[0])))
    d_sae = sae.cfg.d_sae
    return (
        _stack(occurrence_blocks, words.term.size, d_sae),
        _stack(message_blocks, words.n_messages, d_sae),
    )


def _group_max(codes: torch.Tensor, group: torch.Tensor, first: int) -> tuple[int, sp.csr_matrix]:
    """Row-wise maximum of ``codes`` within each run of equal ``group`` ids; (first id, block)."""
    local = group - first
    out = torch.zeros(int(local[-1]) + 1, codes.shape[1], dtype=codes.dtype)
    out.scatter_reduce_(0, local[:, None].expand_as(codes), codes, reduce="amax", include_self=True)
    return first, sp.csr_matrix(out.numpy())


def _stack(blocks: list[tuple[int, sp.csr_matrix]], n_rows: int, d_sae: int) -> sp.csr_matrix:
    """Places row blocks at their offsets in an (n_rows, d_sae) CSR matrix."""
    coo = [block.tocoo() for _, block in blocks]
    rows = np.concatenate([c.row + first for (first, _), c in zip(blocks, coo)] or [np.zeros(0, int)])
    cols = np.concatenate([c.col for c in coo] or [np.zeros(0, int)])
    data = np.concatenate([c.data for c in coo] or [np.zeros(0, np.float32)])
    return sp.csr_matrix((data, (rows, cols)), shape=(n_rows, d_sae), dtype=np.float32)


@torch.inference_mode()
def embedding_codes(sae: Any, dense: np.ndarray, batch_size: int = 4096) -> sp.csr_matrix:
    """Activations of an embedding SAE on (n, d_in) normalised sentence embeddings, as CSR."""
    blocks = [
        sp.csr_matrix(sae.encode(torch.from_numpy(np.ascontiguousarray(dense[i : i + batch_size]))).numpy())
        for i in range(0, len(dense), batch_size)
    ]
    return sp.vstack(blocks, format="csr").astype(np.float32) if blocks else sp.csr_matrix((0, sae.cfg.d_sae))


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

    Returns:
        Feature id to its terms, best first, for every feature active on at least one unit.
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
        for keep in (
            (score > 0) & ~avoid[candidates] & (support >= min_support),
            (score > 0) & ~avoid[candidates],
            score > 0,
            np.ones_like(score, dtype=bool),
        ):
            chosen = [i for i in order if keep[i]]
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


def cooccurrence(codes: sp.spmatrix) -> np.ndarray:
    """(d_sae, d_sae) counts of messages where two features both fire; the diagonal counts each."""
    fired = sp.csr_matrix(codes, dtype=np.float32)
    fired.data = (fired.data > 0).astype(np.float32)
    fired.eliminate_zeros()
    return np.asarray((fired.T @ fired).toarray(), dtype=np.float64)


def family_parents(cooc: np.ndarray, active: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """Each active feature's parent in the maximum spanning forest of normalised co-occurrence.

    The weight of features ``i`` and ``j`` is ``C[i, j] / (min(C[i, i], C[j, j]) + 1)``, about the
    share of the sparser one's firings where the denser one fires too; weights below ``threshold``
    are dropped. In the maximum spanning forest of what remains, each edge points from the denser
    feature (the parent; ties go to the lower id) to the sparser; a feature with several denser
    neighbours keeps the one it is most strongly tied to, so the parent links form a forest.

    Args:
        cooc: (d_sae, d_sae) co-occurrence counts from :func:`cooccurrence`.
        active: (d_sae,) bool, the features taking part.
        threshold: Minimum normalised weight of an edge. Defaults to 0.1, as O'Neill et al.

    Returns:
        (d_sae,) int: the parent of each feature, -1 for roots and features not taking part.
    """
    counts = np.diag(cooc).astype(np.float64)
    ids = np.flatnonzero(active)
    parent = np.full(cooc.shape[0], -1, dtype=np.int64)
    if ids.size < 2:
        return parent
    n = counts[ids]
    weight = cooc[np.ix_(ids, ids)] / (np.minimum.outer(n, n) + 1.0)
    np.fill_diagonal(weight, 0.0)
    weight[weight < threshold] = 0.0
    # A minimum spanning forest of (2 - w) on the kept edges is a maximum spanning forest of w:
    # every spanning forest of a graph has the same number of edges.
    tree = minimum_spanning_tree(sp.csr_matrix(np.where(weight > 0, 2.0 - weight, 0.0))).tocoo()
    best = np.zeros(cooc.shape[0])
    for a, b in zip(tree.row, tree.col):
        i, j = ids[a], ids[b]
        if (counts[j], -j) > (counts[i], -i):
            i, j = j, i  # i is the denser: the parent
        w = weight[a, b]
        if w > best[j] or (w == best[j] and 0 <= i < parent[j]):
            parent[j], best[j] = i, w
    return parent


def feature_families(
    cooc: np.ndarray,
    n_messages: int,
    *,
    threshold: float = 0.1,
    max_density: float = 0.2,
    levels: int = 2,
) -> dict[int, dict[str, Any]]:
    """Feature families: trees of parent links, recomputed with the first level's parents removed.

    Args:
        cooc: (d_sae, d_sae) co-occurrence counts over ``n_messages`` messages.
        n_messages: Messages the counts come from.
        threshold: Minimum normalised co-occurrence of an edge. Defaults to 0.1.
        max_density: Features firing on a larger share of messages stay out of families (their own
            root), as the saerch code keeps only features below a density bound: a feature that
            fires almost everywhere co-occurs with everything. Defaults to 0.2.
        levels: Rounds; each round after the first drops the roots of the previous round's families
            with children and builds the forest again. Defaults to 2.

    Returns:
        For every feature that fires: ``parent`` (id or None), ``children`` (ids), ``root`` (the
        family's top feature), ``depth`` (0 for a root), ``density`` (share of messages) and
        ``roots``: its family's root at each level (None where the feature was itself removed).

    Raises:
        ValueError: If ``cooc`` is not square or the settings are out of range.
    """
    if cooc.ndim != 2 or cooc.shape[0] != cooc.shape[1]:
        raise ValueError(f"cooc must be a square (d_sae, d_sae) matrix, got shape {cooc.shape}.")
    if not 0 < threshold < 1 or not 0 < max_density <= 1 or levels < 1 or n_messages < 1:
        raise ValueError(
            f"Need 0 < threshold < 1, 0 < max_density <= 1, levels >= 1 and n_messages >= 1; got "
            f"threshold={threshold}, max_density={max_density}, levels={levels}, n_messages={n_messages}."
        )
    counts = np.diag(cooc)
    fires = counts > 0
    active = fires & (counts / n_messages <= max_density)
    out: dict[int, dict[str, Any]] = {
        int(f): {"parent": None, "children": [], "root": int(f), "depth": 0,
                 "density": round(float(counts[f] / n_messages), 6), "roots": []}
        for f in np.flatnonzero(fires)
    }
    for level in range(levels):
        parent = family_parents(cooc, active, threshold)
        for f, record in out.items():
            if not active[f]:
                record["roots"].append(None if level else f)
                continue
            root, depth = f, 0
            while parent[root] >= 0:
                root, depth = int(parent[root]), depth + 1
            record["roots"].append(root)
            if level == 0:
                record["root"], record["depth"] = root, depth
                record["parent"] = int(parent[f]) if parent[f] >= 0 else None
        if level == 0:
            for child in np.flatnonzero(parent >= 0):
                out[int(parent[child])]["children"].append(int(child))
        has_children = np.zeros_like(active)
        has_children[parent[parent >= 0]] = True
        active = active & ~(has_children & (parent < 0))
    return out


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
    data = {
        "format": LABELS_FORMAT,
        "sae_sha256": sae_sha256,
        "method": method,
        **extra,
        "labels": {str(f): labels[f] for f in sorted(labels)},
        "examples": {str(f): list(examples[f]) for f in sorted(examples)},
    }
    path = Path(path)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def write_families(
    path: str | Path, families: Mapping[int, dict[str, Any]], *, sae_sha256: str | None, method: str, **extra: Any
) -> Path:
    """Writes ``families.json``: one record per feature, as :func:`feature_families` returns them."""
    data = {
        "format": FAMILIES_FORMAT,
        "sae_sha256": sae_sha256,
        "method": method,
        **extra,
        "features": {str(f): families[f] for f in sorted(families)},
    }
    path = Path(path)
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")
    return path


def load_families(path: str | Path, sae_sha256: str | None = None) -> dict[int, dict[str, Any]]:
    """Reads ``families.json`` (or the one inside an SAE directory).

    Args:
        path: The file, or the SAE directory holding it.
        sae_sha256: If given, the file must have been made for the weights with this hash
            (``SparseAutoencoder.sha256``). Defaults to None (not checked).

    Returns:
        Feature id to ``parent``, ``children``, ``root``, ``depth``, ``density`` and ``roots``.

    Raises:
        FileNotFoundError: If there is no such file.
        ValueError: If the file is not a families file or was made for other weights.
    """
    path = Path(path)
    if path.is_dir():
        path = path / FAMILIES_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"No families file at {path}; make one with benchmarks/label_saes.py.")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != FAMILIES_FORMAT:
        raise ValueError(f"{path} is not a {FAMILIES_FORMAT!r} file (its format is {data.get('format')!r}).")
    if sae_sha256 is not None and data.get("sae_sha256") != sae_sha256:
        raise ValueError(
            f"{path} was made for SAE weights with sha256 {data.get('sae_sha256')}, not {sae_sha256}; "
            "rerun benchmarks/label_saes.py for these weights."
        )
    return {int(f): record for f, record in data["features"].items()}


def describe_family(
    families: Mapping[int, dict[str, Any]], feature: int, labels: Mapping[int, str] | None = None
) -> dict[str, Any] | None:
    """A feature's family in the shape a hit can carry.

    Args:
        families: From :func:`load_families`.
        feature: Feature id.
        labels: Feature id to label, to name the root and the parent. Defaults to None (no names).

    Returns:
        ``{"root", "root_label", "parent", "parent_label", "depth", "size"}``, or None if the feature
        has no family record (it never fired on the labelling messages).
    """
    record = families.get(int(feature))
    if record is None:
        return None
    labels = labels or {}
    root, parent = record["root"], record["parent"]
    return {
        "root": root,
        "root_label": labels.get(root),
        "parent": parent,
        "parent_label": labels.get(parent) if parent is not None else None,
        "depth": record["depth"],
        "size": sum(1 for other in families.values() if other["root"] == root),
    }


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
