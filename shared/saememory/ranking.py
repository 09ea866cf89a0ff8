"""How one user's messages are ranked for a query: the settings, declared once, and the pipeline.

``SearchConfig`` holds every ranking setting (validated, ``to_dict``/``from_dict``, saved in the
manifest). ``rank`` runs the pipeline over a backend: candidates and their signals from the
backend, normalisation and fusion (``saememory.scoring``), calibration, the alternatives the
query names (``alternatives``: "Which came first, the wedding or the party?" searches each too),
the adjustments for what is current (``saememory.current``: supersession, echoes, questions
that only ask, the query's time words, recency), selection (top k or adaptive), then a context
budget.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import threading
from collections import OrderedDict
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, ClassVar

import numpy as np
import scipy.sparse as sp

from saememory.backends.base import Backend
from saememory.config import DictConfig, choice, finite, non_negative_int, positive_int
from saememory.current import adjustments
from saememory.lexical import check_stemmer, tokenize
from saememory.scoring import SIGNALS, calibrate, check_fusion, check_normalization, fit_budget, fuse, top_k
from saememory.times import TIME_WORDS

SELECTIONS = ("topk", "adaptive")
MAX_ALTERNATIVES = 4  # a longer list is not a choice between things the user told about
MAX_ALTERNATIVE_WORDS = 12
# How far toward an alternative's score a message rises: half. The whole way ranked the 11 dev
# questions as well, but raised any message that names an alternative ("Marseille is hot in
# August") above the answer of a question whose options were beside the point ("Which city did
# Julie move to, Lyon or Marseille?": Paris). BENCHMARKS.md, "Alternatives".
ALTERNATIVE_SHARE = 0.5
# How many standard deviations of word match count at most: a stored copy of the question meets
# every word of it, and must not climb past what the other adjustments decide (asks, supersedes).
WORD_LIMIT = 1.0
_OR = re.compile(r"\bor\b", re.IGNORECASE)
_WORDS = re.compile(r"[\w']+")


@dataclass(frozen=True)
class SearchConfig(DictConfig):
    """The ranking settings of a memory: ``SAEMemory(fusion="rrf")`` or ``SAEMemory(config=SearchConfig(...))``.

    Attributes:
        fusion: How the signals combine; see ``saememory.scoring``. Defaults to ``"weighted"``:
            with the default z-score normalisation and weights, ``2 * dense + sparse + bm25``
            with each signal standardised over the user's messages for this query. This ranked
            best on the dev split of LongMemEval-S with messages encoded sentence by sentence
            (``EncoderConfig(split="sentences")``; whole messages ranked best with
            ``dense + 2 * sparse + bm25``, confirmed on a fresh held-out split; BENCHMARKS.md);
            ``"sqrt"`` is the poster's ``sqrt(dense² + sparse²)`` with negative dense clamped at 0.
        dense_weight: Weight of the dense signal. Defaults to 2.0, the best of ten weightings on
            the dev split.
        sparse_weight: Weight of the SAE signal. Defaults to 1.0.
        bm25_weight: Weight of the lexical BM25 signal (per user, always in step with adds and
            deletes); 0 leaves it out. Defaults to 1.0.
        normalization: Per-query normalisation of each signal before fusion: ``"none"``,
            ``"minmax"``, ``"zscore"`` or ``"rank"``. Defaults to ``"zscore"``.
        normalize_top: Normalise each signal over its own ``normalize_top`` best messages only,
            the rest scoring 0 (as LlamaIndex's relative-score fusion of top lists). Defaults to
            None: over all of the user's messages, which did better on the dev split.
        bm25_stemmer: Snowball language (PyStemmer) that BM25 stems words with, so "lessons"
            matches "lesson"; None for no stemming. Defaults to ``"english"``, which did better on
            the dev split (BENCHMARKS.md).
        rrf_k: Constant for ``fusion="rrf"``. Defaults to 60.
        selection: ``"topk"`` returns the ``k`` best; ``"adaptive"`` returns, up to ``k``, the
            messages whose calibrated score reaches ``threshold`` (at least the best one), so
            fewer come back when few stand out. Defaults to ``"topk"``.
        threshold: Calibrated-score cut-off for ``selection="adaptive"``. Defaults to 2.0: on
            the dev split it came closest to top-10's context precision with less context.
        candidates: Candidates per signal with an approximate index or with Milvus: the union
            of each signal's top ``candidates`` is scored exactly. Defaults to 200.
        top_features: SAE features reported per hit (strongest and shared), and query words in
            its ``matched_words`` (each with up to 3 message words). Defaults to 5.
        recency_weight: What the newest of the best ``adjust_depth`` candidates gains over the
            oldest, in calibrated units (see ``saememory.current``); 0 turns recency off.
            Defaults to 0.0: on the dev split of LongMemEval-S it lowered nDCG@10, and
            supersession does better for what is current (BENCHMARKS.md).
        asks_penalty: What a message that asks without telling loses (a question stored
            earlier, an assistant's "What breed is your dog?"), in calibrated units; 0 turns it
            off. Defaults to 8.0: below every message that matches at all. With the other
            adjustments, the answer was in the top 3 for 0.97 of the real-use dev questions with
            the questions stored, against 0.65 without any (BENCHMARKS.md); on LongMemEval's dev
            split it changed little.
        time_weight: What a message said within the time the query names ("two weeks ago",
            "in March") gains, in calibrated units; 0 turns it off. Defaults to 1.0, the best of
            0, 1 and 2 on the dev split of LongMemEval-S by the mean of turn R_all@10 and
            nDCG@10, with the other defaults (a narrow lead: BENCHMARKS.md).
        speaker_weight: What the messages of one side gain when the query says that side said
            what it asks for ("What tips did you give me?": the assistant's messages; "What did
            I tell you about the race?": the user's), in calibrated units; 0 turns it off.
            Defaults to 2.0 (BENCHMARKS.md, "Written chats").
        supersede_depth: Among how many of the best candidates a later statement of the user's
            on the same subject is raised above an earlier one (see ``saememory.current``); 0
            turns it off (and the lowering of echoes with it). Defaults to 10, so supersession
            only reorders the top 10: on LongMemEval's dev split the latest evidence of a
            knowledge update ranked above the earliest in 0.79 of questions instead of 0.57.
        adjust_depth: How many of the best candidates are adjusted. Defaults to 50.
        alternatives: Whether a query that ends in alternatives ("Which came first, my
            cousin's wedding or Michael's party?") also searches each alternative: a message
            that scores higher for one than for the query rises halfway to that score (the
            ``alternatives`` adjustment of a hit: its gain, in calibrated units). Each
            alternative is encoded once more; not while steering. Defaults to True: on
            LongMemEval-S's dev split it found every evidence turn of the 11 such questions
            (R_all@10 0.82 before; BENCHMARKS.md).
        word_weight: How far the ``word_depth`` best candidates are reordered by how well each
            query word meets its best match among a message's words (the model's last-layer
            token vectors, late interaction as ColBERT: ``Encoder.word_vectors``), in standard
            deviations of those candidates' own scores per standard deviation of the match (the
            ``words`` adjustment of a hit), the match counting for at most ``WORD_LIMIT``
            standard deviations either way; 0 turns it off. The candidates are read by the
            model once more at query time (``SAEMemory`` keeps the last ones it read, per user);
            not while steering, and not with an encoder without ``word_vectors``. Defaults to
            1.0: on LongMemEval-S's dev split turn R_all@10 / nDCG@10 went from 0.863 / 0.807
            to 0.875 / 0.816, and on the real-use dev set the answer came first with the
            questions stored for 0.95 against 0.93 (BENCHMARKS.md).
        word_depth: How many of the best candidates ``word_weight`` reorders. Defaults to 20
            (on the dev split, as good as 50 and faster).
    """

    settings_name: ClassVar[str] = "search"

    fusion: str = "weighted"
    dense_weight: float = 2.0
    sparse_weight: float = 1.0
    bm25_weight: float = 1.0
    normalization: str = "zscore"
    normalize_top: int | None = None
    bm25_stemmer: str | None = "english"
    rrf_k: int = 60
    selection: str = "topk"
    threshold: float = 2.0
    candidates: int = 200
    top_features: int = 5
    recency_weight: float = 0.0
    asks_penalty: float = 8.0
    time_weight: float = 1.0
    speaker_weight: float = 2.0
    supersede_depth: int = 10
    adjust_depth: int = 50
    alternatives: bool = True
    word_weight: float = 1.0
    word_depth: int = 20

    def __post_init__(self) -> None:
        check_fusion(self.fusion)
        if not isinstance(self.alternatives, bool):
            raise ValueError(f"alternatives must be True or False, got {self.alternatives!r}.")
        for name in ("dense_weight", "sparse_weight", "bm25_weight", "recency_weight", "asks_penalty", "time_weight",
                     "speaker_weight", "word_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
                raise ValueError(f"{name} must be a finite number >= 0 (0 turns it off), got {value!r}.")
            object.__setattr__(self, name, float(value))
        check_normalization(self.normalization)
        if self.normalize_top is not None:
            positive_int("normalize_top", self.normalize_top)
        check_stemmer(self.bm25_stemmer)
        positive_int("rrf_k", self.rrf_k)
        choice("selection", self.selection, SELECTIONS)
        object.__setattr__(self, "threshold", finite("threshold", self.threshold))
        positive_int("candidates", self.candidates)
        non_negative_int("top_features", self.top_features)
        non_negative_int("supersede_depth", self.supersede_depth)
        positive_int("adjust_depth", self.adjust_depth)
        positive_int("word_depth", self.word_depth)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The settings' names, e.g. to tell them from other keyword arguments."""
        return tuple(f.name for f in fields(cls))

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.names()}

    def replace(self, **changes: Any) -> SearchConfig:
        """A copy with some settings changed, validated again."""
        return replace(self, **changes)

    @property
    def weights(self) -> dict[str, float]:
        return {name: getattr(self, f"{name}_weight") for name in SIGNALS}

    @property
    def adjusts(self) -> bool:
        """Whether any adjustment for what is current is on."""
        return bool(self.recency_weight or self.asks_penalty or self.time_weight or self.speaker_weight
                    or self.supersede_depth)

    @property
    def lexical(self) -> bool:
        """Whether BM25 takes part, so the backend must compute it."""
        return self.fusion == "bm25" or (self.fusion not in SIGNALS and self.bm25_weight > 0)


@dataclass
class Ranked:
    """One selected message: its stored record and code, and every number behind its rank."""

    record: dict[str, Any]
    code: sp.csr_matrix
    rank: int
    score: float
    calibrated: float
    raw: dict[str, float]
    signals: dict[str, dict[str, float]]  # per signal used: raw, normalized, share
    adjustments: dict[str, float]  # the non-zero adjustments after fusion (alternatives, what is current), calibrated units


def alternatives(query: str, stemmer: str | None = "english") -> list[str]:
    """The alternatives a question ends in, each to be searched too, or ``[]``.

    A list after the question's last comma, joined by "or": "Which event happened first, my
    cousin's wedding or Michael's engagement party?" gives ``["my cousin's wedding", "Michael's
    engagement party"]``; "..., Paris, Rome, or Berlin?" and "..., Paris or Rome or Berlin?"
    three. Only the question is read (up to its last "?": not a "Thanks!" after it). None of
    them (else ``[]``) may open as a question ("Do you remember, was it Tuesday or Wednesday
    when I called?"), be a "not" ("Is it booked, or not yet?"), hold only function words or
    only times and numbers ("today or yesterday", "at 3pm or 4pm": the query's time words are
    read as a time, see ``saememory.times``), or have more than ``MAX_ALTERNATIVE_WORDS`` words;
    and there are at most ``MAX_ALTERNATIVES``. "Should I go, or should I stay?" and "... mom,
    dad and/or sister?" give ``[]``.
    """
    from saememory.current import _QUESTION_OPENINGS, _function_words

    text = query.replace("’", "'").replace("，", ",").replace("？", "?").strip()
    text = (text[:text.rindex("?")] if "?" in text else text).rstrip("?!. ")
    last = None
    for last in _OR.finditer(text):
        pass
    if last is None or "," in text[last.end():] or text[:last.start()].rstrip().endswith("/"):
        return []
    items = text[:last.start()].split(",")
    listed = [item.strip() for item in items[1:]]
    if listed and not listed[-1]:
        listed.pop()  # a comma before the "or": "Paris, Rome, or Berlin"
    found = [part.strip() for item in listed + [text[last.end():]] for part in _OR.split(item)]
    if len(items) < 2 or not 2 <= len(found) <= MAX_ALTERNATIVES:
        return []
    ignored = _function_words(stemmer)
    for item in found:
        words = _WORDS.findall(item.lower())
        content = [w for w in words if any(t not in ignored for t in tokenize([w], stemmer)[0])]
        if (not content or words[0].split("'")[0] in _QUESTION_OPENINGS or words[0] == "not"
                or all(w in TIME_WORDS or any(ch.isdigit() for ch in w) for w in content)
                or len(words) > MAX_ALTERNATIVE_WORDS):
            return []
    return found


def rank(
    backend: Backend,
    config: SearchConfig,
    query: str,
    q_dense: np.ndarray,
    q_sparse: sp.csr_matrix,
    user_id: str,
    session_id: str | None,
    k: int,
    min_score: float | None = None,
    max_chars: int | None = None,
    include: str | None = None,
    since: str | None = None,
    until: str | None = None,
    roles: tuple[str, ...] | None = None,
    now: dt.datetime | None = None,
    choices: list[tuple[str, np.ndarray, sp.csr_matrix]] | None = None,
    word_match: Callable[[list[str]], np.ndarray] | None = None,
    lock: AbstractContextManager[Any] = nullcontext(),
) -> list[Ranked]:
    """The best of one user's (and session's) messages for an encoded query, best first.

    Args:
        include: A message id that must be among the scored candidates (for ``explain``).
            Defaults to None.
        since, until, roles: Filters, validated (see ``Backend.score``).
        now: The reference time for the query's time words (timezone-aware). Defaults to None:
            the present.
        choices: The query's ``alternatives``, each ``(text, dense, code)`` encoded as a query;
            a message whose calibrated score is higher for one rises ``ALTERNATIVE_SHARE`` of the
            way to it. Defaults to None.
        word_match: Scores message texts by how well the query's words meet theirs (see
            ``SearchConfig.word_weight`` and ``word_matcher``). Defaults to None: no reordering
            by words.
        lock: Held while the backend is read, released while ``word_match``'s read runs the
            model. Defaults to none (the caller holds what it needs).
        Others: As ``SAEMemory.search``; arguments are already validated.
    """
    with lock:
        ids, signals = backend.score(user_id, session_id, q_dense, q_sparse, config.candidates,
                                     query_text=query if config.lexical else None,
                                     include=[include] if include else None, since=since, until=until, roles=roles)
        if not ids:
            return []
        scored = _Scored.fuse(ids, signals, config)
        if choices:
            scored.shift({"alternatives": _alternatives_gain(backend, config, ids, scored.calibrated, choices, user_id,
                                                             session_id, since, until, roles)})
        head, texts = (_word_head(backend, config, ids, scored.calibrated, user_id) if word_match is not None
                       and config.word_weight else (np.zeros(0, dtype=np.int64), []))
        reading = word_match(texts) if texts else None
    # The model reads the candidates' words with the lock released: another user's add, delete
    # or search does not wait for it. A message deleted meanwhile is left out by the fetches below.
    match = np.asarray(reading(), dtype=np.float64) if reading is not None else None
    with lock:
        if match is not None:
            scored.shift({"words": _words_gain(config, scored.calibrated, head, match)})
        if config.adjusts:
            pool = top_k(scored.scores, config.adjust_depth)
            found = {record["id"]: record
                     for record, _ in backend.fetch(user_id, [ids[p] for p in pool.tolist()], codes=False)}
            pool = np.array([p for p in pool.tolist() if ids[p] in found], dtype=np.int64)
            parts = adjustments([found[ids[p]] for p in pool.tolist()], scored.calibrated[pool], query,
                                now or dt.datetime.now(dt.timezone.utc), config,
                                lambda wanted: backend.vectors(user_id, wanted))
            current = {}
            for name, values in parts.items():
                current[name] = np.zeros(len(ids))
                current[name][pool] = values
            scored.shift(current)
        return _select(backend, config, user_id, k, min_score, max_chars, include, scored)


@dataclass
class _Scored:
    """One query's candidates while they are ranked: the signals, their fusion, and the
    adjustments so far, each in calibrated units (``adjusted``)."""

    ids: list[str]
    signals: dict[str, np.ndarray]
    normalized: dict[str, np.ndarray]
    shares: dict[str, np.ndarray]
    scores: np.ndarray
    calibrated: np.ndarray
    sd: float  # of the fused scores, before any adjustment
    adjusted: dict[str, np.ndarray]

    @classmethod
    def fuse(cls, ids: list[str], signals: dict[str, np.ndarray], config: SearchConfig) -> _Scored:
        scores, normalized, shares = fuse(signals, config.weights, config.fusion, config.normalization,
                                          config.rrf_k, config.normalize_top)
        return cls(ids, signals, normalized, shares, scores, calibrate(scores),
                   float(np.std(scores)) if len(ids) > 1 else 0.0, {})

    def shift(self, gains: dict[str, np.ndarray]) -> None:
        """Adds adjustments in calibrated units, and to the fused scores in their own units
        with one standard deviation taken before any, so scores fall with rank as calibrated
        ones do (with all scores equal, sd 0, they only order)."""
        gains = {name: gain for name, gain in gains.items() if gain.any()}
        if gains:
            self.adjusted.update(gains)
            total = sum(gains.values(), np.zeros(len(self.ids)))
            self.scores, self.calibrated = self.scores + total * self.sd, self.calibrated + total


def _select(backend: Backend, config: SearchConfig, user_id: str, k: int, min_score: float | None,
            max_chars: int | None, include: str | None, scored: _Scored) -> list[Ranked]:
    """The chosen: top k (or adaptive), above ``min_score``, still stored, within ``max_chars``."""
    ids, scores, calibrated = scored.ids, scored.scores, scored.calibrated
    # calibrated orders as scores do (an increasing function of them, plus the adjustments)
    if config.selection == "adaptive" and include is None:  # explain ranks every message, even below the cut
        chosen = top_k(calibrated, k, config.threshold)
        chosen = chosen if chosen.size else top_k(calibrated, 1)
    else:
        chosen = top_k(calibrated, k)
    chosen = chosen[scores[chosen] >= min_score] if min_score is not None else chosen
    found = {record["id"]: (record, code) for record, code in backend.fetch(user_id, [ids[p] for p in chosen.tolist()])}
    chosen = [p for p in chosen.tolist() if ids[p] in found]  # another process may have deleted one meanwhile
    stored = [found[ids[p]] for p in chosen]
    if max_chars is not None:
        kept = fit_budget(np.arange(len(chosen)), np.array([len(r["content"]) for r, _ in stored]), max_chars)
        chosen, stored = [chosen[i] for i in kept], [stored[i] for i in kept]
    return [
        Ranked(record=record, code=code, rank=position, score=float(scores[p]), calibrated=float(calibrated[p]),
               raw={name: float(values[p]) for name, values in scored.signals.items()},
               signals={name: {"raw": float(scored.signals[name][p]), "normalized": float(scored.normalized[name][p]),
                               "share": float(scored.shares[name][p])} for name in scored.normalized},
               adjustments={name: float(values[p]) for name, values in scored.adjusted.items() if values[p]})
        for position, (p, (record, code)) in enumerate(zip(chosen, stored), start=1)
    ]


def _alternatives_gain(backend: Backend, config: SearchConfig, ids: list[str], calibrated: np.ndarray,
                       choices: list[tuple[str, np.ndarray, sp.csr_matrix]], user_id: str, session_id: str | None,
                       since: str | None, until: str | None, roles: tuple[str, ...] | None) -> np.ndarray:
    """How far each of ``ids`` rises toward its best calibrated score for one of the query's
    alternatives (``ALTERNATIVE_SHARE`` of the way; 0 where the query's own is higher): "the
    start of my Spanish classes" finds its message though the query's frame ("Which event
    happened first") matched others."""
    where = {message: i for i, message in enumerate(ids)}
    gain = np.zeros(len(ids))
    for text, dense, code in choices:
        found, signals = backend.score(user_id, session_id, dense, code, config.candidates,
                                       query_text=text if config.lexical else None, since=since, until=until,
                                       roles=roles)
        if not found:
            continue
        theirs = calibrate(fuse(signals, config.weights, config.fusion, config.normalization, config.rrf_k,
                                config.normalize_top)[0])
        for message, z in zip(found, theirs.tolist()):
            i = where.get(message)  # with Milvus, only the query's own candidates are ranked
            if i is not None and ALTERNATIVE_SHARE * (z - calibrated[i]) > gain[i]:
                gain[i] = ALTERNATIVE_SHARE * (z - calibrated[i])
    return gain


def _word_head(backend: Backend, config: SearchConfig, ids: list[str], calibrated: np.ndarray,
               user_id: str) -> tuple[np.ndarray, list[str]]:
    """The ``word_depth`` best candidates still stored and their texts; none if fewer than two."""
    head = top_k(calibrated, config.word_depth)
    found = {record["id"]: record for record, _ in backend.fetch(user_id, [ids[p] for p in head.tolist()], codes=False)}
    head = np.array([p for p in head.tolist() if ids[p] in found], dtype=np.int64)
    return (head, [found[ids[p]]["content"] for p in head.tolist()]) if head.size >= 2 else (head[:0], [])


def _words_gain(config: SearchConfig, calibrated: np.ndarray, head: np.ndarray, match: np.ndarray) -> np.ndarray:
    """What each of the ``head`` candidates gains (or loses) by how well the query's words meet
    its words (``match``): ``word_weight`` times the z-score of that match among them, clipped
    at ``WORD_LIMIT``, in standard deviations of their own calibrated scores. A whole-message
    embedding can miss the one word that answers ("jewelry" met by "necklace" in a message
    about a weekend); a word-by-word match finds it among messages that already rank near the top."""
    gain = np.zeros(len(calibrated))
    spread = float(np.std(calibrated[head]))
    if match.std() > 0 and spread > 0:
        gain[head] = config.word_weight * spread * np.clip((match - match.mean()) / match.std(), -WORD_LIMIT, WORD_LIMIT)
    return gain


class WordCache:
    """The word vectors of the messages read lately, float16, kept per user: a message that
    comes back among the best candidates of the next query is not read by the model again.

    Each user has a budget of their own, keyed by a hash of the text, so one user's reads never
    make another's faster nor push another's out (a timing signal of what others store or
    ask); past ``max_bytes`` a user's oldest go first. Past ``max_users`` users, the one who
    searched least recently is dropped whole, so a user can learn at most that many others
    searched since.

    Args:
        max_bytes: How much to keep per user. Defaults to 2 MiB: about 150 chat messages of
            200 characters (14 kB each), the candidates of several queries.
        max_users: How many users to keep. Defaults to 32 (at most 64 MiB in all).
    """

    def __init__(self, max_bytes: int = 2 << 20, max_users: int = 32) -> None:
        self.max_bytes, self.max_users = max_bytes, max_users
        self._kept: OrderedDict[str, OrderedDict[str, np.ndarray]] = OrderedDict()
        self._reading: dict[str, set[object]] = {}  # reads under way, per user; forget() voids them
        self._lock = threading.Lock()

    def kept(self, user_id: str) -> int:
        """How many texts are kept for ``user_id``."""
        with self._lock:
            return len(self._kept.get(user_id, ()))

    def forget(self, user_id: str) -> None:
        """Drops what is kept for ``user_id`` (their messages were deleted or changed), and
        what a read under way for them would have kept."""
        with self._lock:
            self._kept.pop(user_id, None)
            self._reading.pop(user_id, None)

    def start(self, user_id: str) -> object:
        """Begins a read for ``user_id``: a ``forget(user_id)`` from now on voids what it would
        keep. Call it where the texts are fetched, under the lock that deletes take."""
        ticket = object()
        with self._lock:
            self._reading.setdefault(user_id, set()).add(ticket)
        return ticket

    def read(self, user_id: str, texts: list[str], encoder: Any, ticket: object | None = None) -> list[np.ndarray]:
        """``encoder.word_vectors(texts)``, from what is kept where it can.

        The model runs without this cache's lock; what it read is kept only if no
        ``forget(user_id)`` came since ``ticket`` (from ``start``; defaults to None: now), so
        a message deleted during the read leaves nothing behind.
        """
        ticket = self.start(user_id) if ticket is None else ticket
        keys = [hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest() for text in texts]
        with self._lock:
            mine = self._kept.get(user_id, {})
            found = {key: mine[key] for key in keys if key in mine}
            for key in found:
                mine.move_to_end(key)
        missing = {key: text for key, text in zip(keys, texts) if key not in found}
        try:
            read = encoder.word_vectors(list(missing.values())) if missing else []
            if read is None or len(read) != len(missing):
                raise ValueError(f"{type(encoder).__name__}.word_vectors returned "
                                 f"{0 if read is None else len(read)} results for {len(missing)} texts; it must "
                                 "return one array per text.")
            new = {key: np.asarray(vectors, dtype=np.float16) for key, vectors in zip(missing, read)}
        except BaseException:
            with self._lock:
                self._end(user_id, ticket)
            raise
        with self._lock:
            if self._end(user_id, ticket) and new:
                self._keep(user_id, new)
        found.update(new)
        return [found[key].astype(np.float32) for key in keys]

    def _end(self, user_id: str, ticket: object) -> bool:
        """Ends a read (the lock is held); False if a ``forget(user_id)`` voided it."""
        reading = self._reading.get(user_id)
        if reading is None or ticket not in reading:
            return False
        reading.discard(ticket)
        if not reading:
            del self._reading[user_id]
        return True

    def _keep(self, user_id: str, new: dict[str, np.ndarray]) -> None:
        """Keeps ``new`` for ``user_id`` within the budgets (the lock is held)."""
        mine = self._kept.setdefault(user_id, OrderedDict())
        self._kept.move_to_end(user_id)
        mine.update(new)
        size = sum(vectors.nbytes for vectors in mine.values())
        while size > self.max_bytes and mine:
            size -= mine.popitem(last=False)[1].nbytes
        while len(self._kept) > self.max_users:
            self._kept.popitem(last=False)


def word_matcher(encoder: Any, query: str, user_id: str,
                 cache: WordCache | None = None) -> Callable[[list[str]], Callable[[], np.ndarray]] | None:
    """A scorer of ``user_id``'s message texts by how well each of ``query``'s words meets its
    best match among theirs: the mean over the query's words of the best cosine of their
    ``word_vectors``, read through ``cache`` if given. None if the encoder has no word vectors
    or the query no words to match (only stopwords and time words).

    Called with the texts, under the lock that deletes take, it starts the read and returns it;
    the read runs the model and may run without that lock (see ``WordCache.start``).
    """
    read = getattr(encoder, "word_vectors", None)
    found = read([query], query=True) if callable(read) else None
    if not found or not len(found[0]):
        return None
    asked = np.asarray(found[0], dtype=np.float32)
    cache = cache if cache is not None else WordCache(0)

    def start(texts: list[str]) -> Callable[[], np.ndarray]:
        ticket = cache.start(user_id)

        def match() -> np.ndarray:
            vectors = cache.read(user_id, texts, encoder, ticket)
            return np.array([float((asked @ v.T).max(axis=1).mean()) if len(v) else 0.0 for v in vectors])

        return match

    return start
