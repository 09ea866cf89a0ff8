"""``SAEMemory``: index a chat history, retrieve what matters, and say why.

    >>> memory = SAEMemory()
    >>> memory.add([{"role": "user", "content": "My sister Ana lives in Lisbon.", "session_id": "s1"}])
    >>> hit = memory.search("Where does my sister live?", k=1)[0]
    >>> hit.content, hit.score, hit.shared_features[0]["label"]

Every message belongs to one user (``"default"`` when none is given); every search reads one
user's messages only.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import scipy.sparse as sp

from saememory import backend as backends
from saememory.backend import Backend
from saememory.encoder import Encoded, Encoder, EncoderConfig
from saememory.index import MemoryIndex
from saememory.lexical import check_stemmer
from saememory.scoring import FUSIONS, SIGNALS, calibrate, check_fusion, check_normalization, fit_budget, fuse, top_k

DEFAULT_USER = "default"
DEFAULT_SESSION = "default"
_FIELDS = ("id", "content", "role", "session_id", "timestamp", "user_id")
# Hit metadata an LLM prompt or an embedder should not see: scores and SAE explanations.
EXPLANATION_KEYS = ("score", "dense_score", "sparse_score", "bm25_score", "calibrated_score", "signals", "rank",
                    "truncated", "features", "shared_features")
SELECTIONS = ("topk", "adaptive")
# Keyword arguments of SAEMemory() besides the encoder.
SETTINGS = ("index_type", "fusion", "dense_weight", "sparse_weight", "bm25_weight", "normalization", "normalize_top",
            "bm25_stemmer", "rrf_k", "selection", "threshold", "candidates", "top_features", "milvus_uri", "milvus_collection",
            "milvus_index")


@dataclass
class Message:
    """One chat message.

    Args:
        content: The text.
        role: Who said it, e.g. ``"user"`` or ``"assistant"``. Defaults to None: ``"user"``
            when added, the stored role when updated.
        id: An id, unique within the user's memory (two users may use the same id). Defaults
            to None: a new UUID when added.
        session_id: The conversation it belongs to. Defaults to None: ``"default"`` when added,
            the stored session when updated.
        timestamp: When it was said, any string (ISO 8601 recommended). Defaults to None.
        user_id: Whose memory it is. Defaults to None: the default user, ``"default"``.
        metadata: Extra fields, returned with every hit; JSON values with string keys.
            Defaults to None: empty when added, the stored metadata when updated.

    Every string given must be non-empty; None stands for "not given".
    """

    content: str
    role: str | None = None
    id: str | None = None
    session_id: str | None = None
    timestamp: str | None = None
    user_id: str | None = None
    metadata: dict[str, Any] | None = None


@dataclass
class Hit:
    """A retrieved message with its scores and the SAE features behind them.

    Attributes:
        id, content, role, session_id, timestamp, user_id, metadata: The stored message.
        score: The combined score the ranking used.
        dense_score: Cosine similarity of the dense embeddings.
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
        features: The message's strongest SAE features: ``id``, ``activation``, ``label``.
        shared_features: Features active in both query and message, with ``contribution``: their
            share of ``sparse_score`` (the contributions of all shared features sum to it).
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

    def to_metadata(self) -> dict[str, Any]:
        """A flat dict for framework documents and nodes (``content`` excluded)."""
        data = asdict(self)
        data.pop("content")
        extra = data.pop("metadata")
        return {**extra, **data}


class SAEMemory:
    """An interpretable long-term chat memory.

    Args:
        encoder: An ``Encoder``, an ``EncoderConfig``, or None for the default (all-MiniLM-L6-v2
            with the bundled layer-4 residual SAE, fully offline). Any object with the same
            ``encode_documents``, ``encode_query``, ``identity``, ``dim``, ``d_sae`` and ``sae``
            members works; its output is validated.
        index_type: FAISS index over inner product, as an ``index_factory`` string. Defaults to
            ``"Flat"`` (exact).
        fusion: How the signals combine; see ``saememory.scoring``. Defaults to ``"weighted"``:
            with the default z-score normalisation and weights, ``dense + 2 * sparse + bm25``
            with each signal standardised over the user's messages for this query. This ranked
            best on the dev split of LongMemEval-S and was confirmed on a fresh held-out split
            (BENCHMARKS.md); ``"sqrt"`` is the poster's ``sqrt(dense² + sparse²)`` with negative
            dense clamped at 0.
        dense_weight: Weight of the dense signal. Defaults to 1.0.
        sparse_weight: Weight of the SAE signal. Defaults to 2.0, the best of ten weightings on
            the dev split.
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
        candidates: Candidates per signal with an approximate ``index_type`` or with Milvus:
            the union of each signal's top ``candidates`` is scored exactly. Defaults to 200.
        top_features: SAE features reported per hit (strongest and shared). Defaults to 5.
        milvus_uri: Store the memory in Milvus instead of in this process: a milvus-lite file
            path ending in ``.db`` (embedded, created if missing) or a server URI
            (``http://host:19530``, ``https://...``, ``tcp://...``). Needs
            ``pip install "saememory[milvus]"``. Defaults to None (in-process FAISS + CSR).
        milvus_collection: The Milvus collection; it is created on first use and reopened
            afterwards. Defaults to ``"saememory"``.
        milvus_index: Milvus' dense index: ``"FLAT"`` (exact), ``"HNSW"``, or ``"auto"``
            (``FLAT`` on a milvus-lite file, ``HNSW`` on a server). Defaults to ``"auto"``.
    """

    def __init__(
        self,
        encoder: Encoder | EncoderConfig | None = None,
        *,
        index_type: str = "Flat",
        fusion: str = "weighted",
        dense_weight: float = 1.0,
        sparse_weight: float = 2.0,
        bm25_weight: float = 1.0,
        normalization: str = "zscore",
        normalize_top: int | None = None,
        bm25_stemmer: str | None = "english",
        rrf_k: int = 60,
        selection: str = "topk",
        threshold: float = 2.0,
        candidates: int = 200,
        top_features: int = 5,
        milvus_uri: str | None = None,
        milvus_collection: str = "saememory",
        milvus_index: str = "auto",
    ) -> None:
        if encoder is None or isinstance(encoder, EncoderConfig):
            encoder = Encoder(encoder)
        self.encoder = encoder
        self.settings = {
            "fusion": check_fusion(fusion),
            "dense_weight": _weight("dense_weight", dense_weight),
            "sparse_weight": _weight("sparse_weight", sparse_weight),
            "bm25_weight": _weight("bm25_weight", bm25_weight),
            "normalization": check_normalization(normalization),
            "normalize_top": None if normalize_top is None else _positive_int("normalize_top", normalize_top),
            "bm25_stemmer": check_stemmer(bm25_stemmer),
            "rrf_k": _positive_int("rrf_k", rrf_k),
            "selection": _choice("selection", selection, SELECTIONS),
            "threshold": float(threshold),
            "candidates": _positive_int("candidates", candidates),
            "top_features": _non_negative_int("top_features", top_features),
        }
        if milvus_uri is None:
            self.index: Backend = MemoryIndex(encoder.dim, encoder.d_sae, index_type, stemmer=bm25_stemmer)
        else:
            if index_type != "Flat":
                raise ValueError(
                    f"index_type={index_type!r} sets the in-process FAISS index, but milvus_uri is given; "
                    "choose Milvus' dense index with milvus_index='FLAT' or 'HNSW' instead."
                )
            from saememory.milvus import MilvusBackend

            self.index = MilvusBackend(milvus_uri, milvus_collection, encoder.dim, encoder.d_sae, index=milvus_index,
                                       stemmer=bm25_stemmer, identity=encoder.identity())
        # Encoding happens outside the lock; only index mutation and reads take it, so one
        # slow add never blocks searches for long, and no search sees half of an add.
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def from_messages(
        cls,
        messages: Iterable[Message | Mapping[str, Any]],
        encoder: Encoder | EncoderConfig | None = None,
        show_progress: bool = False,
        user_id: str | None = None,
        **kwargs: Any,
    ) -> tuple[SAEMemory, dict[str, Any]]:
        """A new memory holding ``messages``, built with the memory settings found in ``kwargs``.

        ``user_id`` is passed to ``add``: given, every message is stored for that user and one
        naming another user is refused; None keeps each message's own user.

        Returns:
            ``(memory, rest)``: the memory, and the keyword arguments that were not memory
            settings (for the caller, e.g. a retriever's own fields).
        """
        settings = {key: kwargs.pop(key) for key in list(kwargs) if key in SETTINGS}
        memory = cls(encoder, **settings)
        memory.add(messages, show_progress=show_progress, user_id=user_id)
        return memory, kwargs

    def __contains__(self, message_id: object) -> bool:
        """Whether the default user holds this id; ``contains(id, user_id=...)`` asks for any user."""
        return isinstance(message_id, str) and self.contains(message_id)

    def contains(self, message_id: str, *, user_id: str | None = None) -> bool:
        """Whether ``user_id`` (None: the default user) holds a message with this id."""
        user = check_user(user_id)
        with self._lock:
            return bool(self.index.stored(user, [_check_id(message_id)]))

    def users(self) -> list[str]:
        """Users that have at least one message."""
        with self._lock:
            return self.index.users()

    def get(self, message_id: str, *, user_id: str | None = None) -> dict[str, Any]:
        """The stored record of one of the user's messages.

        Args:
            message_id: The message's id.
            user_id: Whose message. Defaults to None, the default user.

        Raises:
            KeyError: If the user holds no message with this id (another user's message with
                the same id is not looked at).
        """
        user = check_user(user_id)
        with self._lock:
            record = self.index.get(user, _check_id(message_id))
        if record is None:
            raise KeyError(f"No message with id {message_id!r} for user {user!r}.")
        return dict(record)

    def messages(self, user_id: str | None = None, session_id: str | None = None) -> list[dict[str, Any]]:
        """The stored records of one user (None: the default user), and session, in insertion order."""
        user, session = check_user(user_id), _check_session(session_id)
        with self._lock:
            return [dict(r) for r in self.index.records(user, session)]

    def close(self) -> None:
        """Releases the backend's connections (Milvus); the memory is not used afterwards."""
        with self._lock:
            self.index.close()

    # Writing ---------------------------------------------------------------------------------

    def add(
        self,
        messages: Iterable[Message | Mapping[str, Any]],
        show_progress: bool = False,
        *,
        user_id: str | None = None,
    ) -> list[str]:
        """Adds messages; all are added or, on any error, none.

        Args:
            messages: ``Message`` objects or dicts with ``content`` and optionally ``role``,
                ``id``, ``session_id``, ``timestamp``, ``user_id`` and ``metadata``.
            show_progress: Show a progress bar while encoding. Defaults to False.
            user_id: Store every message for this user; a message naming another user is
                refused. Defaults to None: each message's own ``user_id``, else the default user.

        Returns:
            The ids of the added messages, in order.

        Raises:
            TypeError: If a message or one of its fields is of the wrong type.
            ValueError: If content is empty, a field is an empty string, metadata is not plain
                JSON, an id is repeated or already stored for the same user (use ``update``),
                a message names another user than ``user_id``, or the encoder returned
                vectors of the wrong shape or with NaN.
        """
        owner = None if user_id is None else check_user(user_id)
        records = [_new_record(m, i, owner) for i, m in enumerate(messages)]
        if not records:
            return []
        keys = [(r["user_id"], r["id"]) for r in records]
        repeated = sorted(key[1] for key, n in Counter(keys).items() if n > 1)
        if repeated:
            raise ValueError(f"Message ids must be unique per user; repeated in this batch: {repeated[:5]}.")
        self.index.validate(records)
        with self._lock:
            self._refuse_stored(records)  # fail before the costly encoding
        encoded = self._encode_records(records, show_progress)
        with self._lock:
            self._refuse_stored(records)  # another thread may have added them meanwhile
            self.index.add(records, encoded.dense, encoded.sparse)
        return [r["id"] for r in records]

    def _refuse_stored(self, records: list[dict[str, Any]]) -> None:
        for user, ids in _ids_by_user(records).items():
            found = self.index.stored(user, ids)
            if found:
                stored = [i for i in ids if i in found]
                raise ValueError(f"Message ids already stored for user {user!r}: {stored[:5]}. "
                                 "Use update() to replace them, or give new ids.")

    def _missing(self, user: str, ids: list[str]) -> list[str]:
        """The user's ids not stored, in the given order (one ``stored`` round trip)."""
        found = self.index.stored(user, ids)
        return [i for i in ids if i not in found]

    def delete(self, message_ids: str | Iterable[str], *, user_id: str | None = None) -> None:
        """Deletes the user's messages by id; all or, if any id is unknown, none.

        Args:
            message_ids: One id or several.
            user_id: Whose messages. Defaults to None, the default user.

        Raises:
            KeyError: Naming the ids the user does not hold; nothing was deleted.
        """
        user = check_user(user_id)
        ids = [message_ids] if isinstance(message_ids, str) else list(message_ids)
        ids = list(dict.fromkeys(_check_id(i) for i in ids))
        with self._lock:
            missing = self._missing(user, ids)
            if missing:
                raise KeyError(f"No messages with ids {missing[:5]} for user {user!r}; nothing was deleted.")
            self.index.delete(user, ids)

    def delete_user(self, user_id: str | None) -> int:
        """Deletes every message of one user (None: the default user); returns how many."""
        user = check_user(user_id)
        with self._lock:
            ids = [r["id"] for r in self.index.records(user)]
            if ids:
                self.index.delete(user, ids)
        return len(ids)

    def update(self, messages: Iterable[Message | Mapping[str, Any]], *, user_id: str | None = None) -> list[str]:
        """Changes stored messages, matched by owner and ``id``; only the fields given change.

        A new ``content`` is encoded first and the swap is atomic, so a failure leaves the old
        versions in place. The owner never changes: to move a message to another user, delete
        it and add it there.

        Args:
            messages: ``Message`` objects or dicts with ``id`` and the fields to change
                (``content``, ``role``, ``session_id``, ``timestamp``, ``metadata``, extra keys).
                ``metadata`` replaces the stored metadata; extra keys are set in it.
            user_id: Whose messages. Defaults to None: each message's ``user_id``, else the
                default user. A message naming another user than ``user_id`` is refused.

        Raises:
            KeyError: If a message has no id or the user holds no message with that id.
            ValueError: For an invalid field, or an id given twice.
        """
        owner = None if user_id is None else check_user(user_id)
        changes = [_changes(m, i, owner) for i, m in enumerate(messages)]
        keys = [(c["user_id"], c["id"]) for c in changes]
        repeated = sorted(key[1] for key, n in Counter(keys).items() if n > 1)
        if repeated:
            raise ValueError(f"Each id may be updated once per call; repeated: {repeated[:5]}.")
        with self._lock:
            stored = [self.index.get(*key) for key in keys]
        missing = [f"{key[1]!r} (user {key[0]!r})" for key, record in zip(keys, stored) if record is None]
        if missing:
            raise KeyError(f"No messages with ids {', '.join(missing[:5])} to update; add() them instead.")
        records = [_merge(record, change, i) for i, (record, change) in enumerate(zip(stored, changes))]
        self.index.validate(records)  # a record the backend refuses must not cost the stored version
        encoded = self._encode_records(records, False)
        with self._lock:
            for user, ids in _ids_by_user(records).items():
                missing = self._missing(user, ids)
                if missing:
                    raise KeyError(f"Messages {missing[:5]} of user {user!r} were deleted meanwhile; nothing was updated.")
            self.index.replace(records, encoded.dense, encoded.sparse)
        return [r["id"] for r in records]

    # Reading ---------------------------------------------------------------------------------

    def search(
        self,
        query: str,
        k: int = 10,
        *,
        user_id: str | None = None,
        session_id: str | None = None,
        min_score: float | None = None,
        fusion: str | None = None,
        steer: Mapping[int | str, float] | None = None,
        max_chars: int | None = None,
    ) -> list[Hit]:
        """The ``k`` messages of one user that best match ``query``, best first.

        Args:
            query: The question or text to match.
            k: How many messages at most. If the user has fewer, all are returned.
            user_id: Whose memory to search. Defaults to ``"default"``. An unknown user has no
                messages, so the result is empty.
            session_id: Restrict to one session of that user. Defaults to all sessions.
            min_score: Drop hits whose combined score is below this. Defaults to none.
            fusion: Override the memory's fusion for this call. Defaults to the memory's.
            steer: Features to boost or suppress in the query before ranking: feature id (or a
                text matched against feature labels, up to 5 features) to strength, where 1.0
                makes the feature as strong as the query's strongest and 0 suppresses it.
                Defaults to none. See ``Encoder.steer``.
            max_chars: A context budget: of the ``k`` best, keep those whose contents fit in this
                many characters together, in rank order, skipping a message that would overflow
                so that a shorter, lower-ranked one can still fit. Pass a larger ``k`` (e.g. 50)
                to give the budget room. Defaults to None (no budget).

        Raises:
            TypeError: If ``query`` is not a string or ``k`` not an integer.
            ValueError: If ``query`` is empty or blank, ``k <= 0`` or ``max_chars <= 0``.
        """
        return self._search(query, k, user_id, session_id, min_score, fusion, steer, include=None, max_chars=max_chars)

    def _search(self, query, k, user_id, session_id, min_score, fusion, steer, include: str | None,
                max_chars: int | None = None) -> list[Hit]:
        """``search``, with ``include`` (a message id) always among the scored candidates."""
        _check_text("query", query)
        k = _positive_int("k", k)
        user, session = check_user(user_id), _check_session(session_id)
        max_chars = None if max_chars is None else _positive_int("max_chars", max_chars)
        min_score = None if min_score is None else _finite("min_score", min_score)
        settings = dict(self.settings, fusion=check_fusion(fusion) if fusion is not None else self.settings["fusion"])
        features = self.resolve_features(steer) if steer else None
        q = self._encode_query(query)
        if features:
            q = self._checked(self.encoder.steer(q, features), 1, "the steered query")
        q_dense, q_sparse = q.dense[0], q.sparse[0]
        q_acts = dict(zip(q_sparse.indices.tolist(), q_sparse.data.tolist()))  # once, not per hit
        weights = {name: settings[f"{name}_weight"] for name in SIGNALS}
        fusion = settings["fusion"]
        lexical = fusion == "bm25" or (fusion not in SIGNALS and weights["bm25"] > 0)
        with self._lock:
            ids, signals = self.index.score(
                user, session, q_dense, q_sparse, settings["candidates"],
                query_text=query if lexical else None, include=[include] if include else None,
            )
            if not ids:
                return []
            scores, normalized, shares = fuse(signals, weights, fusion, settings["normalization"], settings["rrf_k"],
                                              settings["normalize_top"])
            calibrated = calibrate(scores)
            if settings["selection"] == "adaptive":
                chosen = top_k(calibrated, k, settings["threshold"])
                chosen = chosen if chosen.size else top_k(scores, 1)
                chosen = chosen[scores[chosen] >= min_score] if min_score is not None else chosen
            else:
                chosen = top_k(scores, k, min_score)
            chosen = chosen.tolist()
            stored = self.index.fetch(user, [ids[p] for p in chosen])  # one round trip for the k hits
            if max_chars is not None:
                kept = fit_budget(np.arange(len(chosen)), np.array([len(r["content"]) for r, _ in stored]), max_chars)
                chosen, stored = [chosen[i] for i in kept], [stored[i] for i in kept]
            hits = []
            for rank, (p, (record, code)) in enumerate(zip(chosen, stored), start=1):
                explained = {
                    name: {"raw": float(signals[name][p]), "normalized": float(normalized[name][p]),
                           "share": float(shares[name][p])}
                    for name in normalized
                }
                hits.append(self._hit(record, code, rank, float(scores[p]), {n: float(v[p]) for n, v in signals.items()},
                                      float(calibrated[p]), explained, q_acts))
            return hits

    def resolve_features(self, steer: Mapping[int | str, float]) -> dict[int, float]:
        """Turns a steering spec with feature ids or label texts into feature ids."""
        if self.encoder.sae is None:
            raise ValueError("Steering needs an SAE; this memory's encoder is dense only.")
        if not isinstance(steer, Mapping):
            raise TypeError(f"steer must be a dict of feature id or label text to strength, got {type(steer).__name__}.")
        out: dict[int, float] = {}
        for key, strength in steer.items():
            strength = _finite(f"steer[{key!r}]", strength)
            if isinstance(key, str):
                features = self.encoder.sae.find_features(key)
            elif isinstance(key, (int, np.integer)) and not isinstance(key, bool):
                features = [int(key)]  # the encoder checks the range
            else:
                raise TypeError(f"steer key {key!r} is neither a label text nor a feature id (an int).")
            out.update({f: strength for f in features})
        return out

    def explain(self, query: str, message_id: str, *, user_id: str | None = None, session_id: str | None = None) -> Hit:
        """Scores, rank and features of one of the user's messages for ``query``, as ``search`` ranks it.

        Args:
            query: The question.
            message_id: The message to explain.
            user_id: Whose message. Defaults to None, the default user.
            session_id: Rank within one session, as ``search(..., session_id=...)``. Defaults to
                None: among all of the user's messages, as ``search`` does by default.

        Raises:
            KeyError: If the user (and session) holds no message with this id.
        """
        user = check_user(user_id)
        record = self.get(message_id, user_id=user)
        if session_id is not None and record["session_id"] != _check_session(session_id):
            raise KeyError(f"Message {message_id!r} of user {user!r} is not in session {session_id!r}.")
        for hit in self._search(query, max(len(self), 1), user, session_id, None, None, None, include=message_id):
            if hit.id == message_id:
                return hit
        raise KeyError(f"Message {message_id!r} of user {user!r} was deleted meanwhile.")

    def _hit(
        self,
        record: dict[str, Any],
        code: sp.csr_matrix,
        rank: int,
        score: float,
        raw: dict[str, float],
        calibrated: float,
        signals: dict[str, dict[str, float]],
        q_acts: dict[int, float],
    ) -> Hit:
        features, shared = self._features(code, q_acts)
        return Hit(
            id=record["id"],
            content=record["content"],
            role=record["role"],
            session_id=record["session_id"],
            timestamp=record["timestamp"],
            user_id=record["user_id"],
            score=score,
            dense_score=raw["dense"],
            sparse_score=raw["sparse"],
            bm25_score=raw.get("bm25", 0.0),
            calibrated_score=calibrated,
            signals=signals,
            rank=rank,
            truncated=record.get("truncated", False),
            features=features,
            shared_features=shared,
            metadata=dict(record.get("metadata") or {}),
        )

    def _features(self, code: sp.csr_matrix, q_acts: dict[int, float]) -> tuple[list[dict], list[dict]]:
        n = self.settings["top_features"]
        if n == 0 or code.nnz == 0:
            return [], []
        sae = self.encoder.sae
        label = sae.label if sae is not None else (lambda f: None)
        ids, acts = code.indices, code.data
        strongest = [
            {"id": int(ids[i]), "activation": round(float(acts[i]), 6), "label": label(int(ids[i]))}
            for i in np.argsort(-acts, kind="stable")[:n]
        ]
        families = sae is not None and getattr(sae, "families", None)
        both = [(int(f), float(a) * q_acts[int(f)]) for f, a in zip(ids, acts) if int(f) in q_acts]
        both.sort(key=lambda item: -item[1])
        shared = [
            {"id": f, "contribution": round(c, 6), "query_activation": round(q_acts[f], 6), "label": label(f)}
            for f, c in both[:n]
        ]
        if families:
            for feature in strongest + shared:
                feature["family"] = sae.family(feature["id"])
        return strongest, shared

    # Encoding with validation ----------------------------------------------------------------

    def _encode_records(self, records: list[dict[str, Any]], show_progress: bool) -> Encoded:
        """Encodes the records' contents and marks each record truncated or not."""
        texts = [r["content"] for r in records]
        encoded = self._checked(self.encoder.encode_documents(texts, show_progress=show_progress), len(texts))
        for record, truncated in zip(records, encoded.truncated.tolist()):
            record["truncated"] = bool(truncated)
        return encoded

    def _encode_query(self, text: str) -> Encoded:
        return self._checked(self.encoder.encode_query(text), 1, "the query")

    def _checked(self, encoded: Encoded, n: int, what: str = "messages") -> Encoded:
        """Rejects encoder output that would corrupt the index, before anything is stored."""
        dense = np.asarray(encoded.dense, dtype=np.float32)
        if dense.shape != (n, self.index.dim):
            raise ValueError(
                f"Encoder returned dense vectors of shape {dense.shape}, expected {(n, self.index.dim)}. "
                "A custom encoder must return one row per text of the memory's width."
            )
        sparse = sp.csr_matrix(encoded.sparse, dtype=np.float32)
        if sparse.shape != (n, self.index.d_sae):
            raise ValueError(f"Encoder returned sparse codes of shape {sparse.shape}, expected {(n, self.index.d_sae)}.")
        if not np.isfinite(dense).all() or not np.isfinite(sparse.data).all():
            consequence = "nothing was stored" if what == "messages" else "nothing was searched"
            raise ValueError(f"Encoder returned NaN or infinite values for {what}; {consequence}. "
                             "A custom encoder must return finite vectors.")
        truncated = np.asarray(getattr(encoded, "truncated", np.zeros(n, bool)), dtype=bool).reshape(-1)
        if truncated.shape != (n,):
            raise ValueError(f"Encoder returned truncated flags of shape {truncated.shape}, expected {(n,)}; "
                             "a custom encoder must return one flag per text (or none).")
        return Encoded(dense=np.ascontiguousarray(dense), sparse=sparse, truncated=truncated)

    # Persistence -----------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Saves the memory to a directory, atomically: a crash leaves the previous save readable.

        No pickle: FAISS' own format, ``.npy``/``.npz`` arrays, JSON records and a JSON manifest
        naming the format version, the encoder (model, SAE and its hash) and the settings. With
        Milvus the data stays in Milvus; only the manifest is written, naming the URI and
        collection that ``load`` reconnects to.
        """
        manifest = {
            "saememory_version": _version(),
            "encoder": self.encoder.identity(),
            "encoder_config": getattr(getattr(self.encoder, "config", None), "to_dict", lambda: None)(),
            "settings": self.settings,
        }
        with self._lock:
            self.index.save(path, manifest)

    @classmethod
    def load(cls, path: str | Path, encoder: Encoder | EncoderConfig | None = None) -> SAEMemory:
        """Loads a saved memory.

        Args:
            path: The directory given to ``save``.
            encoder: The encoder to use. Defaults to the one recorded in the manifest.

        Raises:
            FileNotFoundError: If ``path`` holds no saved memory.
            ValueError: If it is corrupt, of another format version, or made with another model
                or SAE than ``encoder``.
        """
        _, manifest = backends.read_manifest(path)
        index = None
        if manifest.get("milvus") is None:
            index, manifest = MemoryIndex.load(path)  # under one lock: the manifest that goes with this data
        if encoder is None:
            config = manifest.get("encoder_config")
            if config is None:
                raise ValueError(f"{path} was saved with a custom encoder; pass encoder= to load it.")
            if "lm" in config:  # saved with saememory.lm_encoder's LMEncoder
                from saememory.lm_encoder import LMEncoder, LMEncoderConfig

                encoder = LMEncoder(LMEncoderConfig.from_dict(config))
            else:
                encoder = EncoderConfig.from_dict(config)
        milvus = manifest.get("milvus")
        settings = {"bm25_stemmer": None, **manifest["settings"]}  # saved before stemming existed: none
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            raise ValueError(f"Saved memory at {path} has unknown settings {unknown}; it was written by another "
                             f"saememory version or edited by hand. Known settings: {sorted(SETTINGS)}.")
        try:
            memory = cls(encoder, index_type=manifest["index_type"] or "Flat", **settings)
        except (TypeError, ValueError) as err:
            raise ValueError(f"Saved memory at {path} has invalid settings: {err}") from None
        mismatch = _identity_mismatch(manifest["encoder"], memory.encoder.identity())
        if mismatch:
            raise ValueError(f"{path} was saved with another encoder: {mismatch}. Load it with the encoder it was made with.")
        if milvus is None:
            memory.index = index
        else:  # reconnect: the data lives in Milvus
            from saememory.milvus import MilvusBackend

            memory.index = MilvusBackend(milvus["uri"], milvus["collection"], memory.encoder.dim, memory.encoder.d_sae,
                                         index=milvus["index"], stemmer=settings["bm25_stemmer"],
                                         identity=memory.encoder.identity())
        return memory


def format_hit(content: str, metadata: Mapping[str, Any], width: int = 100) -> str:
    """A readable explanation of one retrieved message: scores, strongest and shared features.

    Works on ``Hit.to_metadata()`` and so on LangChain documents' and LlamaIndex nodes' metadata.
    """

    def name(feature: Mapping[str, Any]) -> str:
        return f"#{feature['id']}" + (f" {feature['label']!r}" if feature.get("label") else "")

    text = content if len(content) <= width else content[: width - 1] + "…"
    bm25 = f" bm25={metadata['bm25_score']:.2f}" if "bm25" in (metadata.get("signals") or {}) else ""
    lines = [
        f"[{metadata.get('rank', '?')}] score={metadata['score']:.3f} (z={metadata.get('calibrated_score', 0.0):.1f}) "
        f"dense={metadata['dense_score']:.3f} sparse={metadata['sparse_score']:.3f}{bm25}  "
        f"({metadata.get('session_id')}, {metadata.get('timestamp')}, {metadata.get('role')})"
        f"{' [truncated]' if metadata.get('truncated') else ''}",
        f"    {text}",
    ]
    if metadata.get("shared_features"):
        shared = ", ".join(f"{name(f)} +{f['contribution']:.3f}" for f in metadata["shared_features"])
        lines.append(f"    matched on: {shared}")
    if metadata.get("features"):
        lines.append("    strongest: " + ", ".join(f"{name(f)} {f['activation']:.2f}" for f in metadata["features"]))
    return "\n".join(lines)


def _identity_mismatch(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> str | None:
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _identity_mismatch(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{key} is {a!r} in the saved memory but {b!r} now"
    return None


def check_user(user_id: Any) -> str:
    """A valid owner: None is the default user; anything else must be a non-empty str.

    Raises:
        TypeError: If ``user_id`` is not a str (or None).
        ValueError: If it is empty, or not valid Unicode.
    """
    if user_id is None:
        return DEFAULT_USER
    return _check_key("user_id", user_id, f"None for the default user ({DEFAULT_USER!r})")


def _check_session(session_id: Any) -> str | None:
    return None if session_id is None else _check_key("session_id", session_id, "None for all sessions")


def _check_id(message_id: Any) -> str:
    return _check_key("message id", message_id, "the id the message was stored with")


def _check_key(name: str, value: Any, instead: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__} {value!r}; pass {instead}.")
    if not value:
        raise ValueError(f"{name} is an empty string; pass {instead}.")
    _check_unicode(name, value)
    return value


def _check_unicode(name: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{name} holds {value[err.start:err.end]!r}, which is not valid Unicode (a lone surrogate); "
                         "decode the text properly first.") from None


def _check_text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}.")
    if not value.strip():
        raise ValueError(f"{name} is empty or whitespace; pass the text" + (" to search for." if name == "query" else "."))
    _check_unicode(name, value)
    return value


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    return float(value)


def _message_fields(message: Message | Mapping[str, Any], position: int) -> dict[str, Any]:
    """The fields given (None counts as not given), with extra keys gathered into ``extra``."""
    if isinstance(message, Message):
        data = {f.name: getattr(message, f.name) for f in fields(Message)}
    elif isinstance(message, Mapping):
        data = dict(message)
    else:
        raise TypeError(
            f"Message {position} is a {type(message).__name__}; pass a saememory.Message or a dict "
            "with 'content' (and optionally role, id, session_id, timestamp, user_id, metadata)."
        )
    extra = {key: data.pop(key) for key in list(data) if key not in _FIELDS and key != "metadata"}
    given = {key: value for key, value in data.items() if value is not None}
    where = f"Message {position}" + (f" ({given['id']!r})" if isinstance(given.get("id"), str) else "")
    if "content" in given:
        try:
            _check_text("content", given["content"])
        except (TypeError, ValueError) as err:
            raise type(err)(f"{where}: {err}") from None
    for key in ("id", "role", "session_id", "user_id"):
        if key in given:
            try:
                _check_key(key, given[key], f"None for the default {key}" if key != "id" else "None for a new id")
            except (TypeError, ValueError) as err:
                raise type(err)(f"{where}: {err}") from None
    if "metadata" in given and not isinstance(given["metadata"], Mapping):
        raise TypeError(f"{where}: metadata must be a dict, got {type(given['metadata']).__name__}.")
    if "timestamp" in given:
        given["timestamp"] = str(given["timestamp"])
    given["extra"] = extra
    given["where"] = where
    return given


def _owner(given: dict[str, Any], owner: str | None) -> str:
    user = given.get("user_id", owner or DEFAULT_USER)
    if owner is not None and user != owner:
        raise ValueError(f"{given['where']} names user_id {user!r}, but this call stores for user {owner!r}; "
                         "a memory bound to one user never writes into another's. Drop the message's user_id, "
                         "or store it through that user's memory.")
    return user


def _new_record(message: Message | Mapping[str, Any], position: int, owner: str | None) -> dict[str, Any]:
    """Validates one message to add and turns it into the stored JSON record."""
    given = _message_fields(message, position)
    if "content" not in given:
        raise TypeError(f"{given['where']}: content must be a str, got NoneType.")
    record = {
        "id": given.get("id") or uuid.uuid4().hex,
        "content": given["content"],
        "role": given.get("role", "user"),
        "session_id": given.get("session_id", DEFAULT_SESSION),
        "timestamp": given.get("timestamp"),
        "user_id": _owner(given, owner),
        "metadata": {**dict(given.get("metadata") or {}), **given["extra"]},  # extra keys travel as metadata
    }
    _check_storable(record, given["where"])
    return record


def _changes(message: Message | Mapping[str, Any], position: int, owner: str | None) -> dict[str, Any]:
    """The validated fields of one ``update`` message, with its owner."""
    given = _message_fields(message, position)
    if "id" not in given:
        raise KeyError(f"Message {position} has no id; update() changes stored messages by id.")
    given["user_id"] = _owner(given, owner)
    return given


def _merge(record: dict[str, Any], change: dict[str, Any], position: int) -> dict[str, Any]:
    """The stored record with the given fields changed; owner and id stay."""
    merged = {key: change.get(key, record[key]) for key in ("content", "role", "session_id", "timestamp")}
    metadata = dict(change["metadata"]) if "metadata" in change else dict(record.get("metadata") or {})
    metadata.update(change["extra"])
    merged = {"id": record["id"], **merged, "user_id": record["user_id"], "metadata": metadata}
    _check_storable(merged, change["where"])
    return merged


def _check_storable(record: dict[str, Any], where: str) -> None:
    """Whatever is stored must come back from a save unchanged: plain JSON, valid Unicode."""
    try:
        text = json.dumps(record, ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")
    except (TypeError, ValueError) as err:  # UnicodeEncodeError is a ValueError
        raise ValueError(f"{where}: cannot be saved as JSON ({err}); metadata values must be str, int, float "
                         "(finite), bool, None, lists or dicts with str keys. Convert the value first, "
                         "e.g. a datetime with .isoformat().") from None
    if json.loads(text) != record:
        raise ValueError(f"{where}: metadata would not come back unchanged from a save (keys must be str, "
                         "sequences lists, not tuples); convert it to plain JSON first.")


def _ids_by_user(records: list[dict[str, Any]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for record in records:
        grouped.setdefault(record["user_id"], []).append(record["id"])
    return grouped


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}.")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}.")
    return int(value)


def _weight(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0 (0 leaves the signal out), got {value!r}.")
    return float(value)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {allowed}.")
    return value


def _non_negative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")
    return int(value)


def _version() -> str:
    from saememory import __version__

    return __version__


__all__ = ["SAEMemory", "Message", "Hit", "FUSIONS", "DEFAULT_USER", "EXPLANATION_KEYS", "check_user", "format_hit"]
