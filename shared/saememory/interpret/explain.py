"""What a hit says and why: the ``Hit`` a search returns, its SAE features, and a readable view.

A hit's ``features`` are the strongest entries of its L2-normalised code; its
``shared_features`` are the features active in both the query and the message, each with its
``contribution`` (query activation x message activation), so that the contributions of all
shared features, listed or hidden by the SAE's hygiene, sum to the hit's ``sparse_score``.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np
import scipy.sparse as sp

from saememory.interpret.labels import STOPWORDS

STRONGEST_READ = 4  # a hit's n strongest entries are formed from its STRONGEST_READ * n strongest features
SIGNAL_NAMES = {"dense": "dense", "sparse": "SAE", "bm25": "BM25"}  # as format_hit names each signal's share
WORDS_PER_QUERY_WORD = 3  # message words shown for each query word in a hit's matched_words
# Hit metadata an LLM prompt or an embedder should not see: scores and SAE explanations.
EXPLANATION_KEYS = ("score", "dense_score", "sparse_score", "bm25_score", "calibrated_score", "signals", "rank",
                    "truncated", "features", "shared_features", "adjustments", "explained_share", "matched_words",
                    "words_share")


@dataclass
class Hit:
    """A retrieved message with its scores and the SAE features behind them.

    Attributes:
        id, content, role, session_id, timestamp, user_id, metadata: The stored message.
        time: When it was said, as a UTC instant (ISO 8601); None for a message saved before
            saememory parsed times.
        score: The combined score the ranking used.
        dense_score: Cosine similarity of the dense embeddings (to the query as steered, when
            a text steers it: ``SAEMemory.search(..., steer=...)``).
        sparse_score: Cosine similarity of the SAE codes.
        bm25_score: BM25 score of the message among the user's messages (0.0 when the lexical
            signal is off).
        calibrated_score: How far the combined score stands above the user's other messages for
            this query, in standard deviations; comparable across queries.
        signals: Per signal used in the ranking: ``raw`` and ``normalized`` score and ``share``
            of the combined score (of the magnitudes of the weighted terms: a z-scored signal
            below the user's average pulls the score down and still has a share).
        rank: 1-based position in the results.
        truncated: True if the message was longer than the model's window and was encoded
            truncated.
        features: The message's strongest SAE features: ``id``, ``activation``, ``label`` (the
            words it reads) and ``phrase`` (those words in context, e.g. "looking for"; None
            where its top activations share no phrase). Features that read the same are one
            entry: ``ids`` names them (among the message's 4 x ``top_features`` strongest),
            ``id`` the strongest; to steer by an entry, steer by all of its ``ids``. With words read
            (``matched_words``), ``word`` is the message word where ``id`` fired: a label is
            read from other text, and the word says what the feature meant here; ``fit`` says
            how well the label fits the words around it (the share of the SAE's labels that fit
            them less), and a label below ``interpret.fit.LABEL_FIT`` is withheld (``label``
            and ``phrase`` None, ``label_elsewhere`` what it was read as).
        shared_features: Features active in both query and message, with ``contribution``: their
            share of ``sparse_score`` (the contributions of all shared features, listed or not,
            sum to it); features that read the same are one entry (``ids``), their
            contributions summed (``query_activation`` and ``family`` are the first's);
            ``word`` as in ``features``.
            Features that read form, not meaning (function words, punctuation, features on
            most messages; ``saememory.interpret.hygiene``) are never listed, in either list.
        explained_share: The share of ``sparse_score`` that the listed ``shared_features``
            carry; the rest is spread over many small features (and, with
            ``EncoderConfig(hygiene=False)``, hidden ones).
        matched_words: Which word of the query matched which word of the message, through which
            features, with contributions: the ``SearchConfig.top_features`` (5) query words that
            carry most, each with up to 3 message words (see ``match_words``); filled by ``explain`` and by
            ``search(..., words=True)`` with an ``Encoder`` and a residual SAE, else empty.
        words_share: The share of ``sparse_score`` the ``matched_words`` shown carry.
        adjustments: What moved the message after fusion, in calibrated units: ``words``
            (its words meet the query's better or worse than the other best candidates';
            ``SearchConfig.word_weight``), ``alternatives`` (it matches one of the alternatives the query ends in better than
            the query; ``saememory.ranking.alternatives``) and, for what is current
            (``saememory.current``), ``supersedes`` (a later statement raised above an earlier
            one), ``echoes`` (negative: a reply repeating the user), ``asks`` (negative: it only
            asks), ``speaker`` (the query asks for the words of this message's side),
            ``replies`` (the assistant's reply to a user's message that matches), ``time``
            (said within the time the query names) and ``recency``. Only those
            that apply; already in ``score`` and ``calibrated_score``.
    """

    id: str
    content: str
    role: str
    session_id: str
    timestamp: str | None
    user_id: str
    score: float
    dense_score: float
    sparse_score: float
    rank: int
    bm25_score: float = 0.0
    calibrated_score: float = 0.0
    signals: dict[str, dict[str, float]] = field(default_factory=dict)
    truncated: bool = False
    features: list[dict[str, Any]] = field(default_factory=list)
    shared_features: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    time: str | None = None
    adjustments: dict[str, float] = field(default_factory=dict)
    explained_share: float = 0.0
    matched_words: list[dict[str, Any]] = field(default_factory=list)
    words_share: float = 0.0

    def to_metadata(self) -> dict[str, Any]:
        """A flat dict for framework documents and nodes (``content`` excluded)."""
        data = asdict(self)
        data.pop("content")
        extra = data.pop("metadata")
        return {**extra, **data}


def make_hit(ranked: Any, q_acts: dict[int, float], sae: Any, top_features: int,
             words: tuple[tuple[list[str], dict[int, int]], tuple[list[str], dict[int, int]]] | None = None) -> Hit:
    """The ``Hit`` of one ``saememory.ranking.Ranked`` message, with its features explained.

    Args:
        words: The query's and the message's ``Encoder.peak_words``, to explain the match word
            by word. Defaults to None (no ``matched_words``).
    """
    record = ranked.record
    features, shared, explained = explain_features(ranked.code, q_acts, sae, top_features)
    pairs, pairs_share = match_words(ranked.code, q_acts, *words, sae, top_features) if words else ([], 0.0)
    if words:
        # Where each listed feature fired: a label read from other text ("pats / mystics") is
        # often not what the feature meant here ("violin").
        m_words, m_peaks = words[1]
        for feature in features + shared:
            if feature["id"] in m_peaks:
                feature["word"] = m_words[m_peaks[feature["id"]]]
    return Hit(
        id=record["id"], content=record["content"], role=record["role"], session_id=record["session_id"],
        timestamp=record["timestamp"], user_id=record["user_id"], score=ranked.score,
        dense_score=ranked.raw["dense"], sparse_score=ranked.raw["sparse"], bm25_score=ranked.raw.get("bm25", 0.0),
        calibrated_score=ranked.calibrated, signals=ranked.signals, rank=ranked.rank,
        truncated=record.get("truncated", False), features=features, shared_features=shared,
        metadata=copy.deepcopy(record.get("metadata") or {}),  # never the stored object
        time=record.get("time"), adjustments=dict(ranked.adjustments), explained_share=round(explained, 6),
        matched_words=pairs, words_share=round(pairs_share, 6),
    )


def explain_features(code: sp.csr_matrix, q_acts: dict[int, float], sae: Any, n: int) -> tuple[list[dict], list[dict], float]:
    """A message's ``n`` strongest features, the ``n`` features it shares with the query that add
    most, and the share of the SAE score those shared features carry.

    Features that read the same (the same phrase, or without one the same label: a token SAE
    often has several features for one word, "table") are listed once, as one entry whose
    ``ids`` name them (in the strongest list, those among the ``STRONGEST_READ`` x n strongest),
    with the label and phrase of the first, the largest ``activation`` among them, or the sum
    of their ``contribution``. Five entries then give five different reasons, not "table" five
    times.

    Features the SAE's hygiene hides (``sae.hidden``: function words, punctuation, features on
    most messages; see ``saememory.interpret.hygiene``) are never listed. By default the encoder
    leaves them out of the codes too (``EncoderConfig(hygiene=True)``); kept there
    (``hygiene=False``), they count in the score and in the share's denominator.
    """
    if n == 0 or code.nnz == 0:
        return [], [], 0.0
    name = feature_names(sae)
    hidden = getattr(sae, "hidden", None) or {}
    ids, acts = code.indices, code.data
    # The strongest few times n are read, not all of a code's hundreds of features: features that
    # read the same fire on the same word, so their activations are close.
    order = np.argsort(-acts, kind="stable").tolist()
    scan = [(int(ids[i]), float(acts[i])) for i in order[:STRONGEST_READ * n]]
    groups = _by_reading(scan, hidden, name)
    if len(groups) < n:  # many hidden or same-reading features at the top: read on
        groups = _by_reading(((int(ids[i]), float(acts[i])) for i in order), hidden, name)
    strongest = [_entry(reading, group, activation=round(group[0][1], 6)) for reading, group in groups[:n]]
    query_ids = np.fromiter(q_acts, dtype=np.int64, count=len(q_acts))
    query_values = np.fromiter(q_acts.values(), dtype=np.float64, count=len(q_acts))
    order = np.argsort(query_ids)
    position = np.clip(np.searchsorted(query_ids[order], ids), 0, max(len(order) - 1, 0))
    inside = (query_ids[order][position] == ids) if len(order) else np.zeros(ids.size, dtype=bool)
    contributions = acts[inside].astype(np.float64) * query_values[order][position[inside]]
    total = float(contributions.sum())
    both = sorted(zip(ids[inside].tolist(), contributions.tolist()), key=lambda item: -item[1])
    groups = _most_carried(_by_reading(both, hidden, name))[:n]
    shared = [_entry(reading, group, contribution=round(sum(c for _, c in group), 6),
                     query_activation=round(q_acts[group[0][0]], 6)) for reading, group in groups]
    if sae is not None and getattr(sae, "families", None):
        for feature in strongest + shared:
            feature["family"] = sae.family(feature["id"])
    carried = sum(c for _, group in groups for _, c in group)  # not the rounded contributions: a share stays <= 1
    return strongest, shared, (min(1.0, carried / total) if total > 0 else 0.0)


def _entry(reading: dict, group: list[tuple[int, float]], **values: float) -> dict[str, Any]:
    """One listed entry: its first feature's ``id``, every feature's ``ids``, ``values``, then the reading."""
    return {"id": group[0][0], "ids": [f for f, _ in group], **values, **reading}


def _most_carried(groups: list[tuple[Any, list[tuple[int, float]]]]) -> list[tuple[Any, list[tuple[int, float]]]]:
    """``(key, [(feature, value), ...])`` groups, the largest summed value first."""
    return sorted(groups, key=lambda item: -sum(value for _, value in item[1]))


def _by_reading(items: Any, hidden: Mapping[int, str], name: Any) -> list[tuple[dict, list[tuple[int, float]]]]:
    """``(feature, value)`` pairs, largest first, grouped by what a person reads first (the phrase,
    else the label; an unlabelled feature is its own group), hidden features left out. Groups come
    in the order of their first (largest) member, whose label and phrase they show."""
    groups: dict[Any, tuple[dict, list[tuple[int, float]]]] = {}
    for feature, value in items:
        if feature in hidden:
            continue
        reading = name(feature)
        key = reading["phrase"] or reading["label"] or feature  # what a person reads first
        groups.setdefault(key, (reading, []))[1].append((int(feature), float(value)))
    return list(groups.values())


def match_words(code: sp.csr_matrix, q_acts: dict[int, float], query: tuple[list[str], dict[int, int]],
                message: tuple[list[str], dict[int, int]], sae: Any, n: int,
                per_word: int = WORDS_PER_QUERY_WORD) -> tuple[list[dict], float]:
    """Which words of the message matched which words of the query, and the share of the SAE
    score the pairs shown carry.

    Each shared feature joins the query word and the message word where it peaks (``peaks`` of
    ``Encoder.peak_words``); a pair's contribution is the sum of its features' contributions, so
    all pairs together make up ``sparse_score``. A feature that steering put into the query has
    no query word: its query side is ``"(steered)"``. Shown: the ``n`` query words whose pairs
    carry most, each with the (up to) ``per_word`` message words it matched that carry most
    (a query word is usually matched by several: "apartment" by "flat" and "rent"); pairs with a
    function word or punctuation on either side, and pairs carried only by features the SAE's
    hygiene hides, are left out.

    Args:
        n: Query words shown.
        per_word: Message words shown per query word. Defaults to 3.

    Returns:
        ``(pairs, share)``: dicts with ``query_word``, ``message_word``, ``contribution`` and
        ``features`` (``id``, ``label``, ``contribution``), grouped by query word, the query word
        that carries most first and, within it, the pair that carries most first; and the
        share of the score the pairs shown carry.
    """
    if n < 0 or per_word < 0:
        raise ValueError(f"match_words shows n >= 0 query words and per_word >= 0 message words each, got n={n}, "
                         f"per_word={per_word}.")
    (q_words, q_peaks), (m_words, m_peaks) = query, message
    if not m_words:  # nothing read word by word (an embedding-source SAE, or an empty reading)
        return [], 0.0
    hidden = getattr(sae, "hidden", None) or {}
    name = feature_names(sae)
    pairs: dict[tuple[str, str], list[tuple[int, float]]] = {}
    total = 0.0
    for f, a in zip(code.indices.tolist(), code.data.tolist()):
        if f not in q_acts:
            continue
        c = a * q_acts[f]
        total += c
        words = (q_words[q_peaks[f]] if f in q_peaks else "(steered)", m_words[m_peaks[f]] if f in m_peaks else "(unread)")
        pairs.setdefault(words, []).append((f, c))
    by_query_word: dict[str, list[tuple[tuple[str, str], list[tuple[int, float]]]]] = {}
    for words, feats in pairs.items():
        if not any(_function_word(w) for w in words) and any(f not in hidden for f, _ in feats):
            by_query_word.setdefault(words[0], []).append((words, feats))
    carries = {w: sum(c for _, feats in group for _, c in feats) for w, group in by_query_word.items()}
    shown = [pair for w in sorted(carries, key=lambda w: -carries[w])[:n]
             for pair in _most_carried(by_query_word[w])[:per_word]]
    out = [{"query_word": qw, "message_word": mw, "contribution": round(sum(c for _, c in feats), 6),
            "features": [_entry(reading, group, contribution=round(sum(c for _, c in group), 6))
                         for reading, group in _most_carried(_by_reading(sorted(feats, key=lambda x: -x[1]), hidden,
                                                                         name))[:3]]}
           for (qw, mw), feats in shown]
    carried = sum(c for _, feats in shown for _, c in feats)
    return out, (min(1.0, carried / total) if total > 0 else 0.0)


def feature_names(sae: Any) -> Any:
    """A function giving a feature's ``label`` (its words) and ``phrase`` (the words around it in
    context, ``SparseAutoencoder.phrase``), each None where the SAE has none."""
    label = sae.label if sae is not None else (lambda f: None)
    phrase = getattr(sae, "phrase", None) or (lambda f: None)
    return lambda f: {"label": label(f), "phrase": phrase(f)}


def feature_text(feature: Mapping[str, Any]) -> str:
    """How a person reads a listed feature: ``"#12 'looking for' ('looking / trying')"``, the phrase
    first where there is one, else ``"#12 'looking / trying'"``, else ``"#12"``; an entry of
    several features that read the same names up to three: ``"#12 #40 #77 'table'"``, then
    ``"#12 #40 #77 (+2) 'table'"``; where the word it fired on is known, ``"... at 'desk'"``."""
    ids = list(feature.get("ids") or [feature["id"]])
    text = " ".join(f"#{f}" for f in ids[:3]) + (f" (+{len(ids) - 3})" if len(ids) > 3 else "")
    # repr below: a label from a user's own SAE files may hold newlines or escapes
    if feature.get("phrase"):
        text += f" {feature['phrase']!r}" + (f" ({feature['label']!r})" if feature.get("label") else "")
    elif feature.get("label"):
        text += f" {feature['label']!r}"
    return text + (f" at {feature['word']!r}" if feature.get("word") else "")


def _function_word(word: str) -> bool:
    return word.lower() in STOPWORDS or not any(ch.isalnum() for ch in word)


def format_hit(content: str, metadata: Mapping[str, Any], width: int = 100) -> str:
    """A readable explanation of one retrieved message: scores, strongest and shared features.

    Works on ``Hit.to_metadata()`` and so on LangChain documents' and LlamaIndex nodes' metadata.
    """

    name = feature_text
    text = "".join(ch if ch.isprintable() else " " for ch in content)  # one line; no terminal escapes
    text = text if len(text) <= width else text[: width - 1] + "…"
    signals = metadata.get("signals") or {}
    bm25 = f" bm25={metadata['bm25_score']:.2f}" if "bm25" in signals else ""
    # How much each signal weighs in this hit's score (the SAE is one of up to three); minus: it
    # scores below the user's average for this query, so it pulls the score down.
    shares = " · ".join(f"{SIGNAL_NAMES.get(s, s)} {'-' if v.get('normalized', 0.0) < 0 else ''}{v['share']:.0%}"
                        for s, v in signals.items() if isinstance(v, Mapping) and "share" in v)
    lines = [
        f"[{metadata.get('rank', '?')}] score={metadata['score']:.3f} (z={metadata.get('calibrated_score', 0.0):.1f}) "
        f"dense={metadata['dense_score']:.3f} sparse={metadata['sparse_score']:.3f}{bm25}"
        f"{f' [{shares}]' if shares else ''}  "
        f"({metadata.get('session_id')}, {metadata.get('timestamp')}, {metadata.get('role')})"
        f"{' [truncated]' if metadata.get('truncated') else ''}",
        f"    {text}",
    ]
    if metadata.get("matched_words"):  # first: the pairs carry most of the SAE score, in the hit's own words
        groups: dict[str, list[str]] = {}  # query word -> its message words, in the order shown
        for p in metadata["matched_words"]:
            groups.setdefault(p["query_word"], []).append(f"{p['message_word']!r} +{p['contribution']:.3f}")
        pairs = "; ".join(f"{word!r} ~ " + ", ".join(matched) for word, matched in groups.items())
        lines.append(f"    words: {pairs} ({metadata.get('words_share', 0.0):.0%} of the SAE score)")
    if metadata.get("shared_features"):
        shared = ", ".join(f"{name(f)} +{f['contribution']:.3f}" for f in metadata["shared_features"])
        carried = f" ({metadata['explained_share']:.0%} of the SAE score)" if "explained_share" in metadata else ""
        lines.append(f"    matched on: {shared}{carried}")
    if metadata.get("adjustments"):
        lines.append("    adjusted: " + ", ".join(f"{k} {v:+.2f}" for k, v in metadata["adjustments"].items()))
    if metadata.get("features"):
        lines.append("    strongest: " + ", ".join(f"{name(f)} {f['activation']:.2f}" for f in metadata["features"]))
    return "\n".join(lines)
