"""``SAEMemory``: index a chat history, retrieve what matters, and say why.

    >>> memory = SAEMemory()
    >>> memory.add([{"role": "user", "content": "My sister Ana lives in Lisbon.", "session_id": "s1"}])
    >>> hit = memory.search("Where does my sister live?", k=1)[0]
    >>> hit.content, hit.score, hit.shared_features[0]["label"]

The facade over four parts: an encoder (``saememory.encoders``), a backend that stores and
scores (``saememory.backends``), the ranking (``saememory.ranking``) and the explanations
(``saememory.interpret.explain``). Every message belongs to one user; every call reads or
changes one user's messages only.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import threading
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping

import scipy.sparse as sp

from saememory.backends import Backend, FaissBackend, backend_class
from saememory.backends import snapshot
from saememory.config import finite, first_difference, positive_int
from saememory.encoders import Encoded, check_encoded, encoder_config
from saememory.encoders.base import identity_hint, saved_encoder_config
from saememory.encoders.sentence_transformer import Encoder, EncoderConfig
from saememory.interpret.explain import Hit, make_hit
from saememory.interpret.fit import check_fit
from saememory.interpret.steering import resolve_steering, steer_dense
from saememory.messages import (DEFAULT_USER, Message, changes_of, check_id, check_session, check_text, check_user,
                                ids_by_user, merged, new_record, role_names)
from saememory.ranking import Ranked, SearchConfig, WordCache, alternatives, rank, word_matcher
from saememory.times import instant, iso, local_instant


class SAEMemory:
    """An interpretable long-term chat memory.

    Args:
        encoder: An ``Encoder``, an ``EncoderConfig``, or None for the default (all-MiniLM-L6-v2
            with the bundled layer-4 residual SAE, fully offline). Any object that follows
            ``saememory.encoders.EncoderProtocol`` works; its output is validated.
        backend: Where messages live: a ``saememory.backends.FaissBackend`` (in this process)
            or ``MilvusBackend``, not yet opened. Defaults to None: ``FaissBackend()``, exact.
        config: The ranking settings, a ``SearchConfig``. Defaults to None: ``SearchConfig()``
            with any ``settings`` given.
        **settings: ``SearchConfig`` fields as keywords (e.g. ``fusion="rrf"``,
            ``sparse_weight=2.0``); not together with ``config``.

    Raises:
        ValueError: For an unknown or invalid setting, or a backend that does not fit the encoder.
    """

    def __init__(self, encoder: Any = None, *, backend: Backend | None = None, config: SearchConfig | None = None,
                 **settings: Any) -> None:
        self.encoder = Encoder(encoder) if encoder is None or isinstance(encoder, EncoderConfig) else encoder
        self.config = _config(config, settings)
        self.backend = FaissBackend() if backend is None else backend
        if getattr(self.backend, "_saememory_claimed", False):
            raise ValueError(f"{self.backend!r} already serves another SAEMemory; give each memory its own backend "
                             "object (two memories on one Milvus collection: one backend each, same encoder).")
        self.backend.open(self.encoder.dim, self.encoder.d_sae, identity=self.encoder.identity(),
                          stemmer=self.config.bm25_stemmer)
        self.backend._saememory_claimed = True
        # Encoding happens outside the lock; only backend calls take it, so one slow add never
        # blocks searches for long, and no search sees half of an add. A search takes it twice
        # (ranking.rank): the model reads its best candidates' words in between.
        self._lock = threading.RLock()
        self._words = WordCache()  # word vectors of messages read lately, per user (ranking)
        self._closed = False

    def __len__(self) -> int:
        return len(self.backend)

    def __repr__(self) -> str:
        if self._closed:
            return f"SAEMemory(closed, backend={self.backend!r})"
        users = self.users()  # counted, never named: a repr ends up in logs, and user ids can say who someone is
        sae = self.encoder.sae.name if self.encoder.sae is not None else None
        return (f"SAEMemory({len(self)} messages, {len(users)} users, "
                f"encoder={self.encoder.identity().get('model')!r} + SAE {sae!r}, backend={self.backend!r})")

    def __contains__(self, message_id: object) -> bool:
        """Whether the default user holds this id; ``contains(id, user_id=...)`` asks for any user."""
        return isinstance(message_id, str) and self.contains(message_id)

    def __reduce__(self) -> Any:
        raise TypeError("An SAEMemory holds a model and its index in this process and is not pickled or copied. "
                        "Share the object itself (it is thread-safe), or save(path) it and SAEMemory.load(path) "
                        "in another process.")

    def __deepcopy__(self, memo: dict) -> Any:
        return self.__reduce__()

    def __copy__(self) -> SAEMemory:
        """A second handle on the same memory (encoder, backend and lock shared), as before."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def contains(self, message_id: str, *, user_id: str | None = None) -> bool:
        """Whether ``user_id`` (None: the default user) holds a message with this id."""
        user = check_user(user_id)
        with self._lock:
            return bool(self.backend.stored(user, [check_id(message_id)]))

    def users(self) -> list[str]:
        """Users that have at least one message."""
        with self._lock:
            return self.backend.users()

    def get(self, message_id: str, *, user_id: str | None = None) -> dict[str, Any]:
        """The stored record of one of the user's (None: the default user's) messages.

        Raises:
            KeyError: If the user holds no message with this id (another user's message with
                the same id is not looked at).
        """
        user = check_user(user_id)
        with self._lock:
            record = self.backend.get(user, check_id(message_id))
        if record is None:
            raise KeyError(f"No message with id {message_id!r} for user {user!r}.")
        return copy.deepcopy(record)  # the caller's to change: never the stored one

    def messages(self, user_id: str | None = None, session_id: str | None = None) -> list[dict[str, Any]]:
        """The stored records of one user (None: the default user), and session, in insertion order."""
        user, session = check_user(user_id), check_session(session_id)
        with self._lock:
            return copy.deepcopy(self.backend.records(user, session))

    def warn_if_unseen(self, user_id: str | None = None) -> None:
        """Warns (``UserWarning``) with ``unseen``'s reason, if any: the adapters call it on an empty result."""
        reason = self.unseen(user_id)
        if reason:
            warnings.warn(reason, UserWarning, stacklevel=3)

    def unseen(self, user_id: str | None = None) -> str | None:
        """Why a search of the default user finds nothing although the memory is not empty, or None.

        For the adapters: a retriever left on the default user over a memory whose messages all
        name users returns nothing, and should say so. Other users are counted, never named; a
        named user with no messages is a new user and gets None.
        """
        user = check_user(user_id)
        if user != DEFAULT_USER:
            return None  # a named user with no messages yet is a new user, not a mistake
        with self._lock:
            users = self.backend.users()
        if user in users or not users:
            return None
        return (f"User {user!r} has no messages, so every search returns nothing; this memory holds messages of "
                f"{len(users)} other user(s). Pass user_id= to the retriever (or per call) to read one of them.")

    def export(self, path: str | Path, user_id: str | None = None) -> int:
        """Writes one user's messages to a JSON Lines file, one stored record a line; returns how many."""
        records = self.messages(user_id)
        with open(path, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        return len(records)

    def close(self) -> None:
        """Releases the backend's connections (Milvus); the memory is not used afterwards."""
        with self._lock:
            self.backend.close()
            self._closed = True

    # Writing ---------------------------------------------------------------------------------

    def add(self, messages: Iterable[Message | Mapping[str, Any]], show_progress: bool = False, *,
            user_id: str | None = None) -> list[str]:
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
        records = [new_record(m, i, owner) for i, m in enumerate(messages)]
        if not records:
            return []
        _refuse_repeats(records, "Message ids must be unique per user; repeated in this batch")
        self.backend.validate(records)
        with self._lock:
            self._refuse_stored(records)  # fail before the costly encoding
        encoded = self._encode_records(records, show_progress)
        with self._lock:
            self._refuse_stored(records)  # another thread may have added them meanwhile
            self.backend.add(records, encoded.dense, encoded.sparse)
        return [r["id"] for r in records]

    def update(self, messages: Iterable[Message | Mapping[str, Any]], *, user_id: str | None = None) -> list[str]:
        """Changes stored messages, matched by owner and ``id``; only the fields given change.

        The new versions are encoded first and the swap is atomic, so a failure leaves the old
        ones in place. The owner never changes: to move a message, delete it and add it there.

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
        changes = [changes_of(m, i, owner) for i, m in enumerate(messages)]
        _refuse_repeats(changes, "Each id may be updated once per call; repeated")
        with self._lock:
            stored = [self.backend.get(c["user_id"], c["id"]) for c in changes]
        missing = [f"{c['id']!r} (user {c['user_id']!r})" for c, record in zip(changes, stored) if record is None]
        if missing:
            raise KeyError(f"No messages with ids {', '.join(missing[:5])} to update; add() them instead.")
        records = [merged(record, change, i) for i, (record, change) in enumerate(zip(stored, changes))]
        self.backend.validate(records)  # a record the backend refuses must not cost the stored version
        encoded = self._encode_records(records, False)
        with self._lock:
            now = [self.backend.get(c["user_id"], c["id"]) for c in changes]
            changed = [c["id"] for c, before, after in zip(changes, stored, now) if before != after]
            if changed:  # deleted, re-added or updated by another call while this one encoded
                raise ValueError(f"Messages {changed[:5]} changed while this update was encoding; nothing was "
                                 "updated. Call update() again.")
            self.backend.replace(records, encoded.dense, encoded.sparse)
            for user in {r["user_id"] for r in records}:
                self._words.forget(user)  # what was read from the old texts goes with them
        return [r["id"] for r in records]

    def delete(self, message_ids: str | Iterable[str], *, user_id: str | None = None) -> None:
        """Deletes the user's (None: the default user's) messages by id; all or, if any id is unknown, none.

        Raises:
            KeyError: Naming the ids the user does not hold; nothing was deleted.
        """
        user = check_user(user_id)
        if isinstance(message_ids, (bytes, bytearray, Mapping)):  # a dict would delete its keys: a message, not ids
            raise TypeError(f"message_ids must be an id (str) or a list of ids, got {type(message_ids).__name__}.")
        ids = [message_ids] if isinstance(message_ids, str) else list(message_ids)
        ids = list(dict.fromkeys(check_id(i) for i in ids))
        with self._lock:
            missing = self._missing(user, ids)
            if missing:
                raise KeyError(f"No messages with ids {missing[:5]} for user {user!r}; nothing was deleted.")
            self.backend.delete(user, ids)
            self._words.forget(user)  # nothing read from a deleted message stays behind

    def delete_user(self, user_id: str | None) -> int:
        """Deletes every message of one user (None: the default user); returns how many."""
        user = check_user(user_id)
        with self._lock:
            ids = [r["id"] for r in self.backend.records(user)]
            if ids:
                self.backend.delete(user, ids)
            self._words.forget(user)
        return len(ids)

    def _refuse_stored(self, records: list[dict[str, Any]]) -> None:
        for user, ids in ids_by_user(records).items():
            missing = set(self._missing(user, ids))
            stored = [i for i in ids if i not in missing]
            if stored:
                raise ValueError(f"Message ids already stored for user {user!r}: {stored[:5]}. "
                                 "Use update() to replace them, or give new ids.")

    def _missing(self, user: str, ids: list[str]) -> list[str]:
        """The user's ids not stored, in the given order (one ``stored`` round trip)."""
        found = self.backend.stored(user, ids)
        return [i for i in ids if i not in found]

    # Reading ---------------------------------------------------------------------------------

    def search(self, query: str, k: int = 10, *, user_id: str | None = None, session_id: str | None = None,
               since: Any = None, until: Any = None, roles: str | Iterable[str] | None = None,
               now: Any = None, min_score: float | None = None, fusion: str | None = None,
               steer: Mapping[int | str, float] | None = None, max_chars: int | None = None,
               words: bool = False) -> list[Hit]:
        """The ``k`` messages of one user that best match ``query``, best first.

        Args:
            query: The question or text to match.
            k: How many messages at most. If the user has fewer, all are returned.
            user_id: Whose memory to search. Defaults to None, the default user. An unknown
                user has no messages, so the result is empty.
            session_id: Restrict to one session of that user. Defaults to all sessions.
            since: Only messages said at or after this time (any form a timestamp takes, see
                ``Message``; without a zone, UTC). Defaults to None.
            until: Only messages said at or before this time. Defaults to None.
            roles: Only messages of this role or these roles, e.g. ``"user"``. Defaults to all.
            now: The time the query is asked at, which its time words ("two weeks ago", "in
                March") count back from; any form a timestamp takes, and its time zone sets
                where days begin (none: UTC). Defaults to None: the present, in UTC. Messages
                said after it are not left out (pass ``until`` for that).
            min_score: Drop hits whose combined score is below this. Defaults to none.
            fusion: Override the memory's fusion for this call. Defaults to the memory's.
            steer: Features to boost or suppress in the query before ranking: feature id (or a
                text matched against feature labels) to strength from 0 to 100, where 1.0 makes
                the feature as strong as the query's strongest and 0 suppresses it; at most 64
                keys. A text with a strength above 0 also moves the dense query towards the
                text's embedding (``interpret.steering.steer_dense``: 1.0 adds it with the
                query's own weight, and several texts add up), except with an embedding-source
                SAE, whose steering moves the dense query along the features' decoder
                directions. Defaults to none.
            max_chars: A context budget: of the ``k`` best, keep those whose contents fit in this
                many characters together, in rank order, skipping a message that would overflow
                so that a shorter, lower-ranked one can still fit. Pass a larger ``k`` (e.g. 50)
                to give the budget room. Defaults to None (no budget).
            words: Explain each hit word by word (``Hit.matched_words``): the query and the hits
                are read again by the model, so it costs about one more encoding of the hits.
                Needs an ``Encoder`` (sentence-transformers) with a residual SAE; otherwise the
                pairs stay empty. Defaults to False (``explain`` always does it).

        Raises:
            TypeError: If ``query`` is not a string or ``k`` not an integer.
            ValueError: If ``query`` is empty, blank or not valid Unicode, ``k <= 0``,
                ``max_chars <= 0``, or another argument is out of its range; for a steering
                spec, see ``interpret.steering.resolve_steering``.
        """
        window = _window(since, until, roles, now)
        return self._search(query, k, user_id=user_id, session_id=session_id, min_score=min_score, fusion=fusion,
                            steer=steer, max_chars=max_chars, window=window, words=words)

    def explain(self, query: str, message_id: str, *, user_id: str | None = None, session_id: str | None = None,
                now: Any = None, steer: Mapping[int | str, float] | None = None) -> Hit:
        """Scores, rank, features and matched words of one of the user's messages for ``query``,
        as ``search`` ranks it.

        Args:
            query: The question.
            message_id: The message to explain.
            user_id: Whose message. Defaults to None, the default user.
            session_id: Rank within one session, as ``search(..., session_id=...)``. Defaults to
                None: among all of the user's messages, as ``search`` does by default.
            now: The time the query is asked at, as ``search``. Defaults to the present.
            steer: Steering, as ``search(..., steer=...)``, to explain a steered ranking.
                Defaults to None.

        Raises:
            KeyError: If the user (and session) holds no message with this id.
        """
        user = check_user(user_id)
        record = self.get(message_id, user_id=user)
        if session_id is not None and record["session_id"] != check_session(session_id):
            raise KeyError(f"Message {message_id!r} of user {user!r} is not in session {session_id!r}.")
        window = _window(None, None, None, now)
        ranked, q_sparse = self._rank(query, max(len(self), 1), user_id=user, session_id=session_id, include=message_id,
                                      window=window, steer=steer)
        for found in ranked:
            if found.record["id"] == message_id:
                return self._hits([found], query, q_sparse, words=True)[0]
        raise KeyError(f"Message {message_id!r} of user {user!r} was deleted meanwhile.")

    def resolve_features(self, steer: Mapping[int | str, float]) -> dict[int, float]:
        """Turns a steering spec with feature ids or label texts into feature ids (see ``interpret.steering``)."""
        return self._steering(steer)[0]

    def _steering(self, steer: Mapping[int | str, float]) -> tuple[dict[int, float], Any]:
        """The features a steering spec names, and the function that encodes its texts, each once."""
        read: dict[str, Encoded] = {}

        def encode(text: str) -> Encoded:
            if text not in read:
                read[text] = self._checked(self.encoder.encode_query(text), 1, f"the steering text {text[:40]!r}")
            return read[text]

        return resolve_steering(self.encoder.sae, steer, lambda t: encode(t).sparse[0]), encode

    def _search(self, query: str, k: int, *, words: bool = False, **options: Any) -> list[Hit]:
        if not isinstance(words, bool):
            raise TypeError(f"words must be True or False, got {words!r}.")
        ranked, q_sparse = self._rank(query, k, **options)
        return self._hits(ranked, query, q_sparse, words)

    def _hits(self, ranked: list[Ranked], query: str, q_sparse: sp.csr_matrix, words: bool) -> list[Hit]:
        """Hits of ranked messages, explained (word by word when asked and the encoder can)."""
        q_acts = dict(zip(q_sparse.indices.tolist(), q_sparse.data.tolist()))
        config = self.config
        pairs: list[Any] = [None] * len(ranked)
        if words and ranked and hasattr(self.encoder, "peak_words") and self.encoder.sae is not None:
            read = self.encoder.peak_words([query], query=True)[0]
            pairs = [(read, m) for m in self.encoder.peak_words([r.record["content"] for r in ranked])]
        hits = [make_hit(r, q_acts, self.encoder.sae, config.top_features, p) for r, p in zip(ranked, pairs)]
        # Read word by word: a label shows only where it fits (interpret.fit), all hits checked at once.
        check_fit([(h.features + h.shared_features + [f for pair in h.matched_words for f in pair["features"]], *p[1])
                   for h, p in zip(hits, pairs) if p is not None], self.encoder, self.encoder.sae)
        return hits

    def _rank(self, query: str, k: int, *, user_id: str | None, session_id: str | None,
              min_score: float | None = None, fusion: str | None = None, steer: Mapping[int | str, float] | None = None,
              max_chars: int | None = None, include: str | None = None,
              window: dict[str, Any] | None = None) -> tuple[list[Ranked], sp.csr_matrix]:
        """The ranked messages, and the query's (steered) code."""
        check_text("query", query)
        k = positive_int("k", k)
        user, session = check_user(user_id), check_session(session_id)
        max_chars = None if max_chars is None else positive_int("max_chars", max_chars)
        min_score = None if min_score is None else finite("min_score", min_score)
        config = self.config if fusion is None else self.config.replace(fusion=fusion)
        # An empty spec steers nothing (a retriever clears its steering with steer={}); any other is checked.
        empty = steer is None or (isinstance(steer, Mapping) and not steer)
        features, encode = ({}, None) if empty else self._steering(steer)
        q = self._checked(self.encoder.encode_query(query), 1, "the query")
        if features:
            if not callable(getattr(self.encoder, "steer", None)):
                raise TypeError(f"{type(self.encoder).__name__} has no steer(query, strengths) method, so it cannot "
                                "steer; search without steer=, or give the encoder one (see EncoderProtocol).")
            q = self._checked(self.encoder.steer(q, features), 1, "the steered query")
        texts = [] if empty else [(t, strength) for t, strength in steer.items() if isinstance(t, str) and strength > 0]
        # The SAE is one signal of three: a text moves the dense query too, unless the encoder's
        # steer moved it already (an embedding-source SAE, along the features' decoder directions).
        if texts and getattr(self.encoder, "source", None) != "embedding":
            moved = steer_dense(q.dense[0], [(encode(text).dense[0], strength) for text, strength in texts])
            q = self._checked(Encoded(dense=moved[None], sparse=q.sparse, truncated=q.truncated), 1, "the steered query")
        q_dense, q_sparse = q.dense[0], q.sparse[0]
        choices = []  # each alternative the query ends in, searched too (not while steering: it moves the query only)
        for text in alternatives(query, config.bm25_stemmer) if config.alternatives and empty else ():
            encoded = self._checked(self.encoder.encode_query(text), 1, "an alternative of the query")
            choices.append((text, encoded.dense[0], encoded.sparse[0]))
        # Word by word (not while steering: it reads the query's own words, which steering moves away from)
        word_match = word_matcher(self.encoder, query, user, self._words) if config.word_weight and empty else None
        ranked = rank(self.backend, config, query, q_dense, q_sparse, user, session, k, min_score, max_chars, include,
                      **(window or {}), choices=choices, word_match=word_match, lock=self._lock)
        return ranked, q_sparse

    # Encoding with validation ----------------------------------------------------------------

    def _encode_records(self, records: list[dict[str, Any]], show_progress: bool) -> Encoded:
        """Encodes the records' contents and marks each record truncated or not."""
        texts = [r["content"] for r in records]
        encoded = self._checked(self.encoder.encode_documents(texts, show_progress=show_progress), len(texts))
        for record, truncated in zip(records, encoded.truncated.tolist()):
            record["truncated"] = bool(truncated)
        return encoded

    def _checked(self, encoded: Encoded, n: int, what: str = "messages") -> Encoded:
        return check_encoded(encoded, n, self.encoder.dim, self.encoder.d_sae, what)

    # Persistence -----------------------------------------------------------------------------

    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Saves the memory to a folder, atomically: a crash leaves the previous save readable.

        No pickle: ``.npy`` arrays (and FAISS' own file for an approximate index), JSON records and a JSON manifest
        naming the format version, the backend, the encoder (model, SAE and its hash) and the
        ranking settings. With Milvus the data stays in Milvus; only the manifest is written,
        naming the URI and collection that ``load`` reconnects to (a server's only with
        ``load(path, backend=MilvusBackend(...))``).

        Args:
            path: The folder.
            overwrite: Replace the folder's save even if this memory never loaded it, or another
                writer (another process, or another memory) saved there after this memory loaded
                it or last saved there. Defaults to False: such a save is refused, since it would
                lose that save's messages or undo that writer's changes (messages it deleted
                would come back).

        Raises:
            saememory.SaveConflictError: If ``path`` holds a save this memory never loaded, or
                another writer saved there since this memory read or wrote it, and ``overwrite``
                is False. Load it (again) and add (or repeat) the changes.
        """
        manifest = {
            "saememory_version": _version(),
            "encoder": self.encoder.identity(),
            "encoder_config": encoder_config(self.encoder),  # None: a custom encoder, passed again to load
            "settings": self.config.to_dict(),
        }
        with self._lock:
            # Only when asked: a backend written before overwrite= existed still saves.
            self.backend.save(path, manifest, **({"overwrite": True} if overwrite else {}))

    @classmethod
    def load(cls, path: str | Path, encoder: Any = None, *, trust_remote_code: bool = False,
             backend: Any = None) -> SAEMemory:
        """Loads a saved memory, rebuilding the backend the manifest names.

        Args:
            path: The folder given to ``save``.
            encoder: The encoder to use. Defaults to the one recorded in the manifest.
            trust_remote_code: Let the manifest's encoder run its model's own Python code (its
                ``trust_remote_code=True``, as Nomic models need). Defaults to False: a folder is
                data, and a manifest edited to name a model with code would otherwise run it.
            backend: For a Milvus save, a new ``MilvusBackend`` to reconnect with: required for a
                server (with its ``token``), since a folder does not choose where messages are
                sent; optional for a milvus-lite file. Defaults to None.

        Raises:
            FileNotFoundError: If ``path`` holds no saved memory.
            ValueError: If it is corrupt, of another format version, or made with another model
                or SAE than ``encoder``; or if its encoder would run a model's code and
                ``trust_remote_code`` is False.
        """
        _, manifest = snapshot.read_manifest(path)
        if encoder is None:
            encoder = _saved_encoder(path, manifest, trust_remote_code)
        elif isinstance(encoder, EncoderConfig):
            encoder = Encoder(encoder)
        config = _saved_config(path, manifest)
        _check_identity(path, manifest, encoder)
        name = manifest.get("backend") or ("milvus" if manifest.get("milvus") else "faiss")  # older saves name none
        if backend is not None and name != "milvus":
            raise ValueError(f"{path} holds an in-process memory; backend= is only for reconnecting to a Milvus save.")
        given = {"backend": backend} if backend is not None else {}
        backend, manifest = backend_class(name).load(path, identity=encoder.identity(), stemmer=config.bm25_stemmer,
                                                     **given)
        _check_identity(path, manifest, encoder)  # the manifest read with the data, under one lock
        config = _saved_config(path, manifest)  # and its settings: a save may have come between the two reads
        return cls(encoder, backend=backend, config=config)


def _window(since: Any, until: Any, roles: str | Iterable[str] | None, now: Any = None) -> dict[str, Any]:
    """A search's time and role filters and reference time, validated: UTC instants and a tuple of roles."""
    window = {"since": None if since is None else iso(instant(since, "since")),
              "until": None if until is None else iso(_end_of_day(until)), "roles": None,
              "now": None if now is None else local_instant(now, "now")}
    if now is not None:
        instant(now, "now")  # within UTC's years too
    if window["since"] and window["until"] and window["since"] > window["until"]:
        raise ValueError(f"since={since!r} is after until={until!r}; no message can be in that window.")
    if roles is not None:
        given = (roles,) if isinstance(roles, str) else tuple(roles) if isinstance(roles, (list, tuple, set)) else ()
        if not given or not all(isinstance(r, str) and r for r in given):
            raise ValueError(f"roles must be a role or a list of roles (non-empty strings), got {roles!r}.")
        window["roles"] = role_names(given)  # "human" and "user" read each other's messages
    return window


def _end_of_day(until: Any) -> dt.datetime:
    """``until`` in UTC; a day without a time ("2025-03-08", "20250308", a ``date``) means its last moment, so
    that ``since=day, until=day`` holds that day's messages (both bounds are inclusive). A time of day in
    any form ("2025-03-08 10", "2025-03-08T10:00Z") is taken as it is."""
    moment = instant(until, "until")
    if (isinstance(until, dt.date) and not isinstance(until, dt.datetime)) or (isinstance(until, str) and _a_day(until)):
        try:
            return moment + dt.timedelta(days=1, microseconds=-1)
        except OverflowError:
            return moment.replace(hour=23, minute=59, second=59, microsecond=999999)
    return moment


def _a_day(text: str) -> bool:
    """Whether ``text`` names a day and nothing finer: an ISO 8601 date alone."""
    try:
        dt.date.fromisoformat(text.strip().removesuffix("Z").removesuffix("z"))  # "2025-03-08Z": a day in UTC
    except ValueError:
        return False
    return True


def _config(config: SearchConfig | None, settings: dict[str, Any]) -> SearchConfig:
    unknown = sorted(set(settings) - set(SearchConfig.names()))
    if unknown:
        raise TypeError(f"Unknown SAEMemory settings {unknown}; the ranking settings are {list(SearchConfig.names())} "
                        "and the storage is chosen with backend=FaissBackend(...) or MilvusBackend(...).")
    if config is not None and settings:
        raise TypeError(f"Pass either config= or settings as keywords, not both (got {sorted(settings)}); "
                        "e.g. config.replace(fusion='rrf').")
    return config if config is not None else SearchConfig(**settings)


def _refuse_repeats(records: list[dict[str, Any]], what: str) -> None:
    repeated = sorted(id_ for (_, id_), n in Counter((r["user_id"], r["id"]) for r in records).items() if n > 1)
    if repeated:
        raise ValueError(f"{what}: {repeated[:5]}.")


def _saved_encoder(path: str | Path, manifest: dict[str, Any], trust_remote_code: bool) -> Any:
    config = manifest.get("encoder_config")
    if config is None:
        raise ValueError(f"{path} was saved with a custom encoder; pass encoder= to load it.")
    encoder_class, settings = saved_encoder_config(config)  # defaults filled in: a key left out is not a "no"
    if getattr(settings, "trust_remote_code", False) is not False and trust_remote_code is not True:
        model = getattr(settings, "model", None) or getattr(settings, "dense_model", None)
        raise ValueError(f"{path} names an encoder that runs its model's own code (trust_remote_code=True, model "
                         f"{model!r}). Loading would run that code. If you trust the folder and the model, pass "
                         "trust_remote_code=True to SAEMemory.load (saememory explain: --trust-remote-code), or "
                         "pass the encoder yourself (encoder=).")
    return encoder_class(settings)


def _saved_config(path: str | Path, manifest: dict[str, Any]) -> SearchConfig:
    settings = {"bm25_stemmer": None, **manifest["settings"]}  # saved before stemming existed: none
    settings.pop("index_type", None)  # an old save's backend option, read from the manifest by the backend
    for old in ("milvus_uri", "milvus_collection", "milvus_index"):
        settings.pop(old, None)
    try:
        return SearchConfig.from_dict(settings)
    except (TypeError, ValueError) as err:
        raise ValueError(f"Saved memory at {path} has invalid settings: {err} It was written by another saememory "
                         "version or edited by hand.") from None


def _check_identity(path: str | Path, manifest: dict[str, Any], encoder: Any) -> None:
    identity = encoder.identity()
    found = first_difference(manifest["encoder"], identity, "")
    if found:
        key, saved, now = found
        hint = identity_hint(manifest["encoder"], identity, manifest.get("encoder_config"), getattr(encoder, "config", None))
        raise ValueError(f"{path} was saved with another encoder: {key} is {saved!r} in the saved memory but {now!r} "
                         "now. Load it with the encoder it was made with." + hint)


def _version() -> str:
    from saememory import __version__

    return __version__


__all__ = ["SAEMemory"]
