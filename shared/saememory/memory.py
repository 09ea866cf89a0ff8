"""``SAEMemory``: index a chat history, retrieve what matters, and say why.

    >>> memory = SAEMemory()
    >>> memory.add([{"role": "user", "content": "My sister Ana lives in Lisbon.", "session_id": "s1"}])
    >>> hit = memory.search("Where does my sister live?", k=1)[0]
    >>> hit.content, hit.score, hit.shared_features[0]["label"]

Every message belongs to one user (``"default"`` when none is given); every search reads one
user's messages only.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
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
        role: Who said it, e.g. ``"user"`` or ``"assistant"``. Defaults to ``"user"``.
        id: A stable, unique id. Defaults to a new UUID.
        session_id: The conversation it belongs to. Defaults to ``"default"``.
        timestamp: When it was said, any string (ISO 8601 recommended). Defaults to None.
        user_id: Whose memory it is. Defaults to ``"default"``.
        metadata: Extra JSON-serialisable fields, returned with every hit. Defaults to empty.
    """

    content: str
    role: str = "user"
    id: str | None = None
    session_id: str = DEFAULT_SESSION
    timestamp: str | None = None
    user_id: str = DEFAULT_USER
    metadata: dict[str, Any] = field(default_factory=dict)


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
                                       stemmer=bm25_stemmer)
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
        **kwargs: Any,
    ) -> tuple[SAEMemory, dict[str, Any]]:
        """A new memory holding ``messages``, built with the memory settings found in ``kwargs``.

        Returns:
            ``(memory, rest)``: the memory, and the keyword arguments that were not memory
            settings (for the caller, e.g. a retriever's own fields).
        """
        settings = {key: kwargs.pop(key) for key in list(kwargs) if key in SETTINGS}
        memory = cls(encoder, **settings)
        memory.add(messages, show_progress=show_progress)
        return memory, kwargs

    def __contains__(self, message_id: object) -> bool:
        with self._lock:
            return message_id in self.index

    def users(self) -> list[str]:
        """Users that have at least one message."""
        with self._lock:
            return self.index.users()

    def get(self, message_id: str) -> dict[str, Any]:
        """The stored record of one message.

        Raises:
            KeyError: If no message has this id.
        """
        with self._lock:
            record = self.index.get(message_id)
            if record is None:
                raise KeyError(f"No message with id {message_id!r}.")
            return dict(record)

    def messages(self, user_id: str | None = None, session_id: str | None = None) -> list[dict[str, Any]]:
        """The stored records of one user (and session), in insertion order."""
        with self._lock:
            return [dict(r) for r in self.index.records(user_id or DEFAULT_USER, session_id)]

    # Writing ---------------------------------------------------------------------------------

    def add(self, messages: Iterable[Message | Mapping[str, Any]], show_progress: bool = False) -> list[str]:
        """Adds messages; all are added or, on any error, none.

        Args:
            messages: ``Message`` objects or dicts with ``content`` and optionally ``role``,
                ``id``, ``session_id``, ``timestamp``, ``user_id`` and ``metadata``.
            show_progress: Show a progress bar while encoding. Defaults to False.

        Returns:
            The ids of the added messages, in order.

        Raises:
            TypeError: If a message or its content is of the wrong type.
            ValueError: If content is empty, an id is repeated or already stored (use
                ``update``), or the encoder returned vectors of the wrong shape or with NaN.
        """
        records = [_to_record(m, i) for i, m in enumerate(messages)]
        if not records:
            return []
        ids = [r["id"] for r in records]
        repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
        if repeated:
            raise ValueError(f"Message ids must be unique; repeated in this batch: {repeated[:5]}.")
        self.index.validate(records)
        with self._lock:
            self._refuse_stored(ids)  # fail before the costly encoding
        encoded = self._encode_records(records, show_progress)
        with self._lock:
            self._refuse_stored(ids)  # another thread may have added them meanwhile
            self.index.add(records, encoded.dense, encoded.sparse)
        return ids

    def _refuse_stored(self, ids: list[str]) -> None:
        found = self.index.stored(ids)
        stored = [i for i in ids if i in found]
        if stored:
            raise ValueError(f"Message ids already stored: {stored[:5]}. Use update() to replace them.")

    def _missing(self, ids: list[str]) -> list[str]:
        """The ids not stored, in the given order (one ``stored`` round trip)."""
        found = self.index.stored(ids)
        return [i for i in ids if i not in found]

    def delete(self, message_ids: str | Iterable[str]) -> None:
        """Deletes messages by id; all or, if any id is unknown, none.

        Raises:
            KeyError: Naming the ids that are not stored.
        """
        ids = [message_ids] if isinstance(message_ids, str) else list(message_ids)
        with self._lock:
            missing = self._missing(ids)
            if missing:
                raise KeyError(f"No messages with ids {missing[:5]}; nothing was deleted.")
            self.index.delete(list(dict.fromkeys(ids)))

    def update(self, messages: Iterable[Message | Mapping[str, Any]]) -> list[str]:
        """Replaces stored messages (matched by ``id``) with new content or metadata.

        The new versions are encoded first; the swap is atomic, so a failure leaves the old
        versions in place.

        Raises:
            KeyError: If a message has no id or its id is not stored.
        """
        messages = list(messages)
        for position, message in enumerate(messages):
            given = message.id if isinstance(message, Message) else message.get("id") if isinstance(message, Mapping) else 1
            if not given:
                raise KeyError(f"Message {position} has no id; update() replaces stored messages by id.")
        records = [_to_record(m, i) for i, m in enumerate(messages)]
        ids = [r["id"] for r in records]
        repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
        if repeated:
            raise ValueError(f"Each id may be updated once per call; repeated: {repeated[:5]}.")
        self.index.validate(records)  # a record the backend refuses must not cost the stored version
        encoded = self._encode_records(records, False)
        with self._lock:
            missing = self._missing(ids)
            if missing:
                raise KeyError(f"No messages with ids {missing[:5]} to update; add() them instead.")
            self.index.replace(records, encoded.dense, encoded.sparse)
        return ids

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
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}.")
        if not query.strip():
            raise ValueError("query is empty or whitespace; pass the text to search for.")
        k = _positive_int("k", k)
        max_chars = None if max_chars is None else _positive_int("max_chars", max_chars)
        settings = dict(self.settings, fusion=check_fusion(fusion) if fusion else self.settings["fusion"])
        q = self._encode_query(query)
        if steer:
            q = self._checked(self.encoder.steer(q, self.resolve_features(steer)), 1)
        q_dense, q_sparse = q.dense[0], q.sparse[0]
        q_acts = dict(zip(q_sparse.indices.tolist(), q_sparse.data.tolist()))  # once, not per hit
        weights = {name: settings[f"{name}_weight"] for name in SIGNALS}
        fusion = settings["fusion"]
        lexical = fusion == "bm25" or (fusion not in SIGNALS and weights["bm25"] > 0)
        with self._lock:
            ids, signals = self.index.score(
                user_id or DEFAULT_USER, session_id, q_dense, q_sparse, settings["candidates"],
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
            stored = self.index.fetch([ids[p] for p in chosen])  # one round trip for the k hits
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
        out: dict[int, float] = {}
        for key, strength in steer.items():
            features = self.encoder.sae.find_features(key) if isinstance(key, str) else [int(key)]
            out.update({f: float(strength) for f in features})
        return out

    def explain(self, query: str, message_id: str) -> Hit:
        """Scores and features of one stored message against ``query``, whatever its rank."""
        record = self.get(message_id)
        for hit in self._search(query, len(self), record["user_id"], record["session_id"], None, None, None,
                                include=message_id):
            if hit.id == message_id:
                return hit
        raise KeyError(f"Message {message_id!r} was deleted meanwhile.")

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
        return self._checked(self.encoder.encode_query(text), 1)

    def _checked(self, encoded: Encoded, n: int) -> Encoded:
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
            raise ValueError("Encoder returned NaN or infinite values; nothing was stored.")
        truncated = np.asarray(getattr(encoded, "truncated", np.zeros(n, bool)), dtype=bool).reshape(-1)
        if truncated.shape != (n,):
            truncated = np.zeros(n, dtype=bool)
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
        memory = cls(encoder, index_type=manifest["index_type"] or "Flat", **settings)
        mismatch = _identity_mismatch(manifest["encoder"], memory.encoder.identity())
        if mismatch:
            raise ValueError(f"{path} was saved with another encoder: {mismatch}. Load it with the encoder it was made with.")
        if milvus is None:
            memory.index, _ = MemoryIndex.load(path)
        else:  # reconnect: the data lives in Milvus
            from saememory.milvus import MilvusBackend

            memory.index = MilvusBackend(milvus["uri"], milvus["collection"], memory.encoder.dim, memory.encoder.d_sae,
                                         index=milvus["index"], stemmer=settings["bm25_stemmer"])
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


def _to_record(message: Message | Mapping[str, Any], position: int) -> dict[str, Any]:
    """Validates one message and turns it into the stored JSON record."""
    if isinstance(message, Message):
        data = asdict(message)
    elif isinstance(message, Mapping):
        data = dict(message)
    else:
        raise TypeError(
            f"Message {position} is a {type(message).__name__}; pass a saememory.Message or a dict "
            "with 'content' (and optionally role, id, session_id, timestamp, user_id, metadata)."
        )
    content = data.get("content")
    if not isinstance(content, str):
        raise TypeError(f"Message {position}: content must be a str, got {type(content).__name__}.")
    if not content.strip():
        raise ValueError(f"Message {position}: content is empty or whitespace; there is nothing to remember.")
    unknown = set(data) - set(_FIELDS) - {"metadata"}
    metadata = dict(data.get("metadata") or {})
    metadata.update({key: data[key] for key in unknown})  # extra keys travel as metadata
    record = {
        "id": data.get("id") or uuid.uuid4().hex,
        "content": content,
        "role": data.get("role") or "user",
        "session_id": data.get("session_id") or DEFAULT_SESSION,
        "timestamp": data.get("timestamp"),
        "user_id": data.get("user_id") or DEFAULT_USER,
        "metadata": metadata,
    }
    for key in ("id", "role", "session_id", "user_id"):
        if not isinstance(record[key], str):
            raise TypeError(f"Message {position}: {key} must be a str, got {type(record[key]).__name__}.")
    if record["timestamp"] is not None:
        record["timestamp"] = str(record["timestamp"])
    return record


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


__all__ = ["SAEMemory", "Message", "Hit", "FUSIONS", "DEFAULT_USER", "EXPLANATION_KEYS", "format_hit"]
