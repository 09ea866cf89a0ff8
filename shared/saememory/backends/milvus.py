"""The Milvus backend: the same memory in milvus-lite (one embedded file) or a Milvus server.

One collection holds every user's messages: ``pk`` (the primary key, a hash of the owner and the
message id: ids are unique per user only), ``id``, ``user_id`` (the partition key, Milvus' own
multi-tenancy), ``session_id``, ``role``, ``timestamp``, ``seq`` (insertion order),
``text``, ``metadata``, ``truncated``, the dense embedding (``FLOAT_VECTOR``, inner product,
``FLAT`` or ``HNSW``), the SAE code (``SPARSE_FLOAT_VECTOR``, ``SPARSE_INVERTED_INDEX``, inner
product) and ``bm25``, a sparse vector Milvus derives from ``text`` with its built-in BM25
function. Every search, query and delete carries the filter ``user_id == "..."`` (and session),
and every returned entity is checked against it again before it leaves this module, so another
user's message is answered exactly like a missing one. The collection's properties record the
vector widths and the encoder's identity; reopening it with another encoder is refused. A
milvus-lite connection sends no keepalive pings, which its engine refuses (see ``LITE_CONNECTION``).

Ranking follows the in-process backend's approximate mode: candidates are the union of the
dense, SAE and BM25 searches' top ``candidates`` each; their dense and SAE similarities are then
computed exactly from the returned vectors, and ``SAEMemory`` fuses them as usual. The lexical
*score* is saememory's own BM25 (bm25s tokenisation and formula) over the candidates' texts, so
its IDF and average length come from the candidate set, not from all of the user's messages;
Milvus' BM25 (its analyzer, statistics over the whole collection) only picks lexical
candidates. With ``candidates`` at least the user's message count, every message is a candidate
and the ranking equals the in-process backend's exactly.

Milvus stores no empty sparse vector, so a message with an all-zero code (or a dense-only
encoder) stores a placeholder weight at index ``d_sae``, one past the SAE's last feature: no
query has that feature, so it never adds to a score, and it is dropped when codes are read back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from saememory.backends import snapshot
from saememory.backends.base import matches
from saememory.config import first_difference
from saememory.encoders.base import identity_hint
from saememory.messages import ids_by_user
from saememory.lexical import LexicalIndex, check_stemmer

INDEXES = ("auto", "FLAT", "HNSW")
SERVER_SCHEMES = ("http://", "https://", "tcp://")
MAX_KEY = 512  # bytes, for ids, user ids, session ids and roles
MAX_TEXT = 65_535  # bytes, Milvus' VARCHAR limit
MAX_TOPK = 16_384  # Milvus' largest search limit
BATCH = 1_000  # rows per insert call
MAX_IDENTITY = 65_535  # bytes of identity JSON: Milvus documents no limit on property values; its VARCHAR one
RECORD_FIELDS = ["id", "user_id", "session_id", "role", "timestamp", "time", "seq", "text", "metadata", "truncated"]
# Keepalive: milvus-lite's engine is a grpcio server with gRPC's default ping policy: without calls
# in flight it accepts one ping per 2 h (during calls one per 5 min), and at the third ping too soon
# it sends GOAWAY "too_many_pings" and drops the connection. pymilvus pings every 10 s, calls or
# not (keepalive_time_ms=10000, keepalive_permit_without_calls=True), so after ~30 s idle the next
# call can fail with "Too many pings", and pymilvus' reconnect, which waits at most 10 s, with
# "Fail connecting to server" on a busy machine. A server in this process needs no pings: they are
# off, on a dedicated connection (a shared one keeps the options of whichever client made it).
LITE_CONNECTION = {"dedicated": True, "grpc_options": {"grpc.keepalive_time_ms": 2**31 - 1,  # gRPC's "never"
                                                       "grpc.keepalive_permit_without_calls": 0}}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")


def _pymilvus():
    try:
        import pymilvus
    except ImportError:
        raise ImportError('Storing the memory in Milvus needs pymilvus and milvus-lite: pip install "saememory[milvus]"') from None
    return pymilvus


def literal(value: str) -> str:
    """A string as a Milvus filter-expression literal, escaped (quotes, backslashes, control characters)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    if any(ord(c) < 32 for c in escaped):
        raise ValueError(f"{value!r} holds a control character Milvus filters cannot express; use ids without them.")
    return f'"{escaped}"'


def check_uri(uri: Any) -> tuple[str, bool]:
    """Validates a Milvus URI; returns it (a milvus-lite path made absolute) and whether it is milvus-lite.

    Raises:
        ValueError: Naming the value, the rule and the fix.
    """
    rule = ("uri must be a milvus-lite file (a path ending in .db, e.g. 'memory.db') or a server URI "
            "starting with http://, https:// or tcp:// (e.g. 'http://localhost:19530')")
    if not isinstance(uri, (str, Path)):
        raise ValueError(f"uri={uri!r} is not a string; {rule}.")
    text = str(uri)
    if text.startswith(SERVER_SCHEMES):
        return text, False
    if not text.endswith(".db"):
        raise ValueError(f"uri={text!r} is neither; {rule}.")
    path = Path(text).expanduser().resolve()
    if not path.parent.is_dir():
        raise ValueError(f"uri={text!r}: the folder {path.parent} does not exist; create it or choose another path.")
    return str(path), True


class MilvusBackend:
    """Stores messages in one Milvus collection and scores one user's messages (a ``Backend``).

    ``SAEMemory(backend=MilvusBackend("memory.db"))``; ``SAEMemory`` opens it with the encoder's
    widths and identity.

    Args:
        uri: A milvus-lite file path ending in ``.db`` (started in-process by pymilvus) or a
            server URI (``http://``, ``https://``, ``tcp://``).
        collection: The collection; created if missing, else reopened and checked against the
            encoder's widths and identity. Defaults to ``"saememory"``.
        index: Dense index: ``"FLAT"`` (exact), ``"HNSW"`` or ``"auto"`` (``FLAT`` on
            milvus-lite, ``HNSW`` on a server). Defaults to ``"auto"``.
        token: Server credentials (``"user:password"`` or an API key). Defaults to None.

    Raises:
        ValueError: For a bad ``uri``, ``collection`` or ``index``; from ``open``, for a bad
            ``identity``, or a collection not made by this saememory, or made for other vector
            widths or another encoder.
        ImportError: Without pymilvus, from ``open``.
    """

    name = "milvus"

    def __init__(self, uri: str, collection: str = "saememory", index: str = "auto", token: str | None = None) -> None:
        self.uri, self.lite = check_uri(uri)
        if not isinstance(collection, str) or not _NAME.fullmatch(collection):
            raise ValueError(f"collection={collection!r} is not a Milvus collection name: letters, digits and "
                             "underscores, starting with a letter or underscore, at most 255; e.g. 'saememory'.")
        if index not in INDEXES:
            raise ValueError(f"index={index!r} is not one of {INDEXES}.")
        self.collection, self.token = collection, token
        self.index_type = ("FLAT" if self.lite else "HNSW") if index == "auto" else index
        self._client = None  # connected by open()
        self._saved: dict[str, str] = {}  # per folder read or written (real path), the snapshot it held then

    @property
    def client(self) -> Any:
        """The open pymilvus client; refuses clearly once closed (or before ``open``)."""
        if self._client is None:
            raise ValueError(f"{self!r} is closed (or was never opened); open a new SAEMemory on it.")
        return self._client

    def __repr__(self) -> str:
        return f"MilvusBackend({self.uri!r}, collection={self.collection!r}, index={self.index_type!r})"

    def open(self, dim: int, d_sae: int, *, identity: dict[str, Any] | None = None, stemmer: str | None = None,
             create: bool = True) -> None:
        """Connects, and creates the collection or checks the one there against these widths and ``identity``.

        ``identity`` (the encoder's, a JSON-serialisable dict) is recorded in a new collection
        and compared with the recorded one on reopening; None records and checks nothing. With
        ``create=False`` (a load) a missing collection is a ``ValueError``, not a new empty memory.
        """
        if self._client is not None:  # opened by load(): the same encoder, or refused
            if (self.dim, self.d_sae) != (dim, d_sae):
                raise ValueError(f"{self!r} is open for dim={self.dim}, d_sae={self.d_sae}, not dim={dim}, d_sae={d_sae}.")
            if identity is not None and self.identity is not None and json.loads(self.identity) != identity:
                raise ValueError(f"{self!r} is open for another encoder; use a new MilvusBackend for this one.")
            return
        self.dim, self.d_sae = int(dim), int(d_sae)
        self.stemmer = check_stemmer(stemmer)
        self.identity = None if identity is None else _identity_json(identity)
        pymilvus = _pymilvus()
        if not create and self.lite and not Path(self.uri).exists():  # connecting would create it (a file or a folder)
            raise ValueError(self._missing())
        self._client = pymilvus.MilvusClient(self.uri, **(LITE_CONNECTION if self.lite else {}),
                                            **({"token": self.token} if self.token else {}))
        try:
            if self.client.has_collection(self.collection):
                self._check_existing()
            elif not create:
                raise ValueError(self._missing())
            else:
                self._create(pymilvus)
            self.client.load_collection(self.collection)
        except BaseException:
            self.close()  # a refused collection leaves this backend unopened, not half open
            raise
        self._last_seq = 0

    def _missing(self) -> str:
        return (f"{self!r} holds no collection {self.collection!r}: the data a saved manifest names is gone (was the "
                ".db file moved or deleted, or is this another server?). Restore it, or load with "
                "backend=MilvusBackend(...) naming where it is now.")

    @classmethod
    def load(cls, path: str | Path, *, identity: dict[str, Any] | None = None, stemmer: str | None = None,
             backend: MilvusBackend | None = None) -> tuple[MilvusBackend, dict[str, Any]]:
        """Reconnects to the collection a saved manifest names (the data lives in Milvus).

        Args:
            backend: An unopened ``MilvusBackend`` to connect with (a server's ``token``, or the
                collection's new place; its collection must be the manifest's). Defaults to
                None: the manifest's milvus-lite file. A manifest naming a server is only
                followed with one: a folder is data, and an edited manifest must not choose
                where the memory's messages are sent.

        Raises:
            FileNotFoundError: If ``path`` holds no saved memory.
            ValueError: If the collection (or milvus-lite file) is not there (a load never
                creates one: the saved memory's data is gone, not absent), the manifest names a
                server and ``backend`` is None, or ``backend`` names another collection.
        """
        folder, manifest = snapshot.read_manifest(path)
        milvus = manifest.get("milvus")
        if milvus is None:
            raise ValueError(f"{path} holds an in-process memory, not a Milvus manifest; load it with SAEMemory.load(path).")
        snapshot.verify_files(path, folder, manifest)  # an in-process save's files under an edited manifest
        if backend is None:
            uri = str(milvus["uri"])
            if uri.startswith(SERVER_SCHEMES):
                raise ValueError(f"{path} names the Milvus server {uri!r}: a saved folder does not choose where "
                                 "messages go. Pass SAEMemory.load(path, backend=MilvusBackend("
                                 f"{uri!r}, collection={milvus['collection']!r}, token=...)).")
            if not Path(uri).expanduser().exists():  # before check_uri, whose advice is for a new file
                raise ValueError(f"{path} names the milvus-lite file {uri}, which is gone (moved or deleted?). "
                                 "Restore it, or load with backend=MilvusBackend(<where it is now>, "
                                 f"collection={milvus['collection']!r}).")
            backend = cls(uri, milvus["collection"], index=milvus["index"])
        elif not isinstance(backend, cls) or backend._client is not None:
            raise ValueError(f"backend={backend!r} must be a new, unopened MilvusBackend.")
        elif backend.collection != milvus["collection"]:  # its place may have moved; its name is the memory's
            raise ValueError(f"{path} names the collection {milvus['collection']!r}, not {backend.collection!r}; "
                             f"pass MilvusBackend(uri, collection={milvus['collection']!r}).")
        backend.open(manifest["dim"], manifest["d_sae"], identity=identity, stemmer=stemmer, create=False)
        backend._saved[os.path.realpath(path)] = folder.name
        return backend, manifest

    # Schema ---------------------------------------------------------------------------------

    def _create(self, pymilvus) -> None:
        DataType = pymilvus.DataType
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=64)  # see _pk
        schema.add_field("id", DataType.VARCHAR, max_length=MAX_KEY)
        schema.add_field("user_id", DataType.VARCHAR, max_length=MAX_KEY, is_partition_key=True)
        schema.add_field("session_id", DataType.VARCHAR, max_length=MAX_KEY)
        schema.add_field("role", DataType.VARCHAR, max_length=MAX_KEY)
        schema.add_field("timestamp", DataType.VARCHAR, max_length=MAX_KEY, nullable=True)
        schema.add_field("time", DataType.VARCHAR, max_length=32, nullable=True)  # saememory.times.iso: sorts as time
        schema.add_field("seq", DataType.INT64)
        schema.add_field("text", DataType.VARCHAR, max_length=MAX_TEXT, enable_analyzer=True)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("truncated", DataType.BOOL)
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=self.dim)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_field("bm25", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(pymilvus.Function(name="text_bm25", function_type=pymilvus.FunctionType.BM25,
                                              input_field_names=["text"], output_field_names=["bm25"]))
        params = self.client.prepare_index_params()
        if self.index_type == "HNSW":
            params.add_index("dense", index_type="HNSW", metric_type="IP", params={"M": 16, "efConstruction": 200})
        else:
            params.add_index("dense", index_type="FLAT", metric_type="IP")
        params.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
        params.add_index("bm25", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        properties = {"saememory.d_sae": str(self.d_sae)}
        if self.identity is not None:
            properties["saememory.identity"] = self.identity
        self.client.create_collection(self.collection, schema=schema, index_params=params, consistency_level="Strong",
                                      properties=properties)

    def _check_existing(self) -> None:
        info = self.client.describe_collection(self.collection)
        fields = {f["name"]: f for f in info["fields"]}
        properties = info.get("properties") or {}
        d_sae = properties.get("saememory.d_sae")
        dim = fields.get("dense", {}).get("params", {}).get("dim")
        where = f"Milvus collection {self.collection!r} at {self.uri}"
        if d_sae is None or {"id", "user_id", "text", "dense", "sparse"} - set(fields):
            raise ValueError(f"{where} was not made by saememory; choose another collection.")
        if "pk" not in fields or set(RECORD_FIELDS) - set(fields):
            raise ValueError(f"{where} was made by an older saememory (its primary key is the message id alone, or "
                             "it has no time field); this one keys messages by owner and id, as users may share "
                             "ids. Choose another collection (and add the messages again).")
        if int(dim) != self.dim or int(d_sae) != self.d_sae:
            raise ValueError(f"{where} holds dim={dim}, d_sae={d_sae}; this encoder gives dim={self.dim}, "
                             f"d_sae={self.d_sae}. Use the encoder it was made with or another collection.")
        saved = properties.get("saememory.identity")
        if self.identity is not None and saved is None:
            raise ValueError(f"{where} records no encoder identity, so it cannot show it was made with this encoder; "
                             "choose another collection.")
        if self.identity is not None and json.loads(saved) != json.loads(self.identity):
            key, was, now = first_difference(json.loads(saved), json.loads(self.identity))
            raise ValueError(f"{where} was made with another encoder: {key} is {was!r} there but {now!r} now. "
                             "Use the encoder it was made with or another collection."
                             + identity_hint(json.loads(saved), json.loads(self.identity)))
        index = self.client.describe_index(self.collection, "dense").get("index_type", self.index_type)
        self.index_type = index if index in INDEXES else self.index_type

    # Reading records ------------------------------------------------------------------------

    def __len__(self) -> int:
        """All stored messages, of every user."""
        return self._count("")

    def _count(self, expr: str) -> int:
        return int(self.client.query(self.collection, filter=expr, output_fields=["count(*)"])[0]["count(*)"])

    def stored(self, user_id: str, message_ids: list[str]) -> set[str]:
        """Which of these ids the user holds; another user's ids are not among them."""
        return set(self._by_id(user_id, message_ids, ["user_id", "id"]))

    def _by_id(self, user_id: str, message_ids: list[str], fields: list[str]) -> dict[str, dict[str, Any]]:
        """The user's stored entities with these ids, by id: filtered on owner and key, then re-checked."""
        if not (isinstance(user_id, str) and _storable_key(user_id)):
            return {}
        wanted = list(dict.fromkeys(m for m in message_ids if isinstance(m, str) and _storable_key(m)))
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(wanted), BATCH):
            batch = wanted[start:start + BATCH]
            asked = set(batch)
            for row in self.client.query(self.collection, filter=_keys_filter(user_id, batch), output_fields=fields,
                                         limit=len(batch)):
                if row["user_id"] == user_id and row["id"] in asked:  # defence in depth
                    found[row["id"]] = row
        return found

    def validate(self, records: list[dict[str, Any]]) -> None:
        """Refuses values Milvus cannot store or filter on: see ``MAX_KEY``, ``MAX_TEXT`` and ``literal``."""
        for record in records:
            _check_lengths(record)

    def get(self, user_id: str, message_id: str) -> dict[str, Any] | None:
        """The user's stored record with this id, or None (also when another user holds the id)."""
        row = next(iter(self._by_id(user_id, [message_id], RECORD_FIELDS).values()), None)
        return None if row is None else _record(row)

    def users(self) -> list[str]:
        """Users with at least one message, sorted."""
        return sorted({row["user_id"] for row in self._iterate("", ["user_id"])})

    def records(self, user_id: str, session_id: str | None = None) -> list[dict[str, Any]]:
        """One user's (and session's) records, in insertion order."""
        rows = self._iterate(self._filter(user_id, session_id), RECORD_FIELDS)
        rows = sorted((r for r in rows if r["user_id"] == user_id and matches(r, session_id, None, None, None)),
                      key=lambda r: r["seq"])
        return [_record(row) for row in rows]

    def fetch(self, user_id: str, message_ids: list[str], codes: bool = True) -> list[tuple[dict[str, Any], sp.csr_matrix | None]]:
        """Records and SAE codes of the user's stored messages among these ids, in the given order (codes None
        with ``codes=False``)."""
        found = self._by_id(user_id, message_ids, RECORD_FIELDS + (["sparse"] if codes else []))
        return [(_record(found[m]), self._code_rows([found[m]["sparse"]]) if codes else None)
                for m in message_ids if m in found]

    def vectors(self, user_id: str, message_ids: list[str]) -> dict[str, np.ndarray]:
        found = self._by_id(user_id, message_ids, ["id", "user_id", "dense"])
        return {m: np.asarray(found[m]["dense"], dtype=np.float32) for m in message_ids if m in found}

    def _iterate(self, expr: str, fields: list[str]) -> list[dict[str, Any]]:
        """Every entity matching ``expr``: one query when they fit in Milvus' result limit, else an iterator."""
        n = self._count(expr)
        if n == 0:
            return []
        if n <= MAX_TOPK:
            return list(self.client.query(self.collection, filter=expr, output_fields=fields, limit=n))
        iterator = self.client.query_iterator(self.collection, batch_size=BATCH, filter=expr, output_fields=fields)
        rows: list[dict[str, Any]] = []
        try:
            while batch := iterator.next():
                rows.extend(batch)
        finally:
            iterator.close()
        return rows

    @staticmethod
    def _filter(user_id: str, session_id: str | None, since: str | None = None, until: str | None = None,
                roles: tuple[str, ...] | None = None) -> str:
        """The filter expression of one user's messages that pass a search's filters; every value escaped."""
        parts = [f"user_id == {literal(user_id)}"]
        if session_id is not None:
            parts.append(f"session_id == {literal(session_id)}")
        if since is not None:
            parts.append(f"time >= {literal(since)}")
        if until is not None:
            parts.append(f"time <= {literal(until)}")
        if roles is not None:
            parts.append(f"role in [{', '.join(literal(r) for r in roles)}]")
        return " && ".join(parts)

    # Writing --------------------------------------------------------------------------------

    def add(self, records: list[dict[str, Any]], dense: np.ndarray, sparse: sp.csr_matrix) -> None:
        """Inserts records (each names its ``user_id``) in batches; if one fails, or the call is
        interrupted (Ctrl-C), the ones inserted are removed, the batch in flight too."""
        done: list[str] = []
        try:
            for rows in self._batches(records, dense, sparse):
                done.extend(row["pk"] for row in rows)  # before the insert: an interrupted one may have landed
                self.client.insert(self.collection, rows)
        except BaseException:
            for start in range(0, len(done), BATCH):
                self.client.delete(self.collection, filter=f"pk in [{', '.join(map(literal, done[start:start + BATCH]))}]")
            raise

    def replace(self, records: list[dict[str, Any]], dense: np.ndarray, sparse: sp.csr_matrix) -> None:
        """Replaces stored messages with the same owner and id by upsert: each holds its old or new version.

        A replaced message keeps its place in the insertion order (its ``seq``).
        """
        seq_of = {}
        for user, ids in ids_by_user(records).items():
            seq_of.update({(user, mid): row["seq"] for mid, row in self._by_id(user, ids, ["id", "user_id", "seq"]).items()})
        for rows in self._batches(records, dense, sparse, [seq_of.get((r["user_id"], r["id"])) for r in records]):
            self.client.upsert(self.collection, rows)

    def _batches(self, records: list[dict[str, Any]], dense: np.ndarray, sparse: sp.csr_matrix,
                 seqs: list[int | None] | None = None):
        """Validated entity rows, ``BATCH`` at a time; new ones get insertion-order numbers after the last ones."""
        self.validate(records)
        sparse = sp.csr_matrix(sparse)
        first = max(time.time_ns(), self._last_seq + 1)
        self._last_seq = first + len(records) - 1
        seqs = seqs or [None] * len(records)
        for start in range(0, len(records), BATCH):
            yield [self._row(records[i], dense[i], sparse, i, first + i if seqs[i] is None else seqs[i])
                   for i in range(start, min(start + BATCH, len(records)))]

    def _row(self, record: dict[str, Any], vector: np.ndarray, sparse: sp.csr_matrix, i: int, seq: int) -> dict[str, Any]:
        lo, hi = sparse.indptr[i], sparse.indptr[i + 1]
        code = {int(f): float(a) for f, a in zip(sparse.indices[lo:hi], sparse.data[lo:hi]) if a != 0}
        return {
            "pk": _pk(record["user_id"], record["id"]),
            "id": record["id"], "user_id": record["user_id"], "session_id": record["session_id"],
            "role": record["role"], "timestamp": record["timestamp"], "time": record.get("time"), "seq": seq,
            "text": record["content"],
            "metadata": record.get("metadata") or {}, "truncated": bool(record.get("truncated", False)),
            "dense": vector.tolist(), "sparse": code or {self.d_sae: 1.0},  # the placeholder: see the module doc
        }

    def delete(self, user_id: str, message_ids: list[str]) -> None:
        """Removes the user's messages with these ids; another user's messages with the same ids stay."""
        if not (isinstance(user_id, str) and _storable_key(user_id)):
            return
        ids = [m for m in message_ids if isinstance(m, str) and _storable_key(m)]  # others cannot be stored
        for start in range(0, len(ids), BATCH):
            self.client.delete(self.collection, filter=_keys_filter(user_id, ids[start:start + BATCH]))

    # Scoring --------------------------------------------------------------------------------

    def score(
        self,
        user_id: str,
        session_id: str | None,
        q_dense: np.ndarray,
        q_sparse: sp.csr_matrix,
        candidates: int,
        query_text: str | None = None,
        include: list[str] | None = None,
        *,
        since: str | None = None,
        until: str | None = None,
        roles: tuple[str, ...] | None = None,
    ) -> tuple[list[str], dict[str, np.ndarray]]:
        """Union of the dense, SAE and BM25 searches' top ``candidates``, scored exactly; see the module doc."""
        expr = self._filter(user_id, session_id, since, until, roles)
        limit = min(int(candidates), MAX_TOPK)
        fields = ["id", "user_id", "session_id", "role", "time", "seq", "dense", "sparse"] + (
            ["text"] if query_text is not None else [])
        dense_params = {"metric_type": "IP", **({"params": {"ef": max(limit, 64)}} if self.index_type == "HNSW" else {})}
        searches = [("dense", [np.asarray(q_dense, np.float32).reshape(-1).tolist()], dense_params)]
        q_code = sp.csr_matrix(q_sparse)
        if q_code.nnz:
            searches.append(("sparse", [dict(zip(q_code.indices.tolist(), q_code.data.tolist()))], {"metric_type": "IP"}))
        if query_text is not None:
            searches.append(("bm25", [query_text], {"metric_type": "BM25"}))
        found: dict[str, dict[str, Any]] = {}
        for field, data, params in searches:
            result = self.client.search(self.collection, data=data, anns_field=field, limit=limit, filter=expr,
                                        output_fields=fields, search_params=params)
            for hit in result[0]:
                found[_pk(hit["entity"]["user_id"], hit["entity"]["id"])] = hit["entity"]
        included = [m for m in include or [] if isinstance(m, str) and _storable_key(m)]
        for start in range(0, len(included), BATCH):
            batch = included[start:start + BATCH]
            for row in self.client.query(self.collection, filter=f"{expr} && {_keys_filter(user_id, batch)}",
                                         output_fields=fields, limit=len(batch)):
                found[_pk(row["user_id"], row["id"])] = row
        # Defence in depth: nothing outside this user's (and session's) messages may pass.
        rows = [r for r in found.values() if r["user_id"] == user_id and matches(r, session_id, since, until, roles)]
        if not rows:
            return [], {"dense": np.zeros(0, np.float32), "sparse": np.zeros(0, np.float32)}
        dense = np.asarray([r["dense"] for r in rows], dtype=np.float32) @ np.asarray(q_dense, np.float32).reshape(-1)
        # Best dense first, then insertion order: the in-process exact index's order, so ties
        # in the fused score (and rank-based fusions) resolve the same way on both backends.
        order = np.lexsort((np.asarray([r["seq"] for r in rows]), -dense))
        rows, dense = [rows[i] for i in order], dense[order]
        signals = {"dense": dense.astype(np.float32)}
        codes = self._code_rows([r["sparse"] for r in rows])
        if self.d_sae == 0 or q_code.nnz == 0:
            signals["sparse"] = np.zeros(len(rows), dtype=np.float32)
        else:
            signals["sparse"] = np.asarray((codes @ q_code.T).todense()).reshape(-1).astype(np.float32)
        if query_text is not None:
            lexical = LexicalIndex(stemmer=self.stemmer)
            lexical.add([r["text"] for r in rows])
            signals["bm25"] = lexical.scores(query_text, np.arange(len(rows)))
        return [r["id"] for r in rows], signals

    def _code_rows(self, codes: list[dict[int, float]]) -> sp.csr_matrix:
        """SAE codes as CSR rows, indices ascending, without the placeholder."""
        indptr, indices, data = [0], [], []
        for code in codes:
            items = sorted((int(f), a) for f, a in code.items() if int(f) < self.d_sae)
            indices.extend(f for f, _ in items)
            data.extend(a for _, a in items)
            indptr.append(len(indices))
        return sp.csr_matrix((np.asarray(data, np.float32), np.asarray(indices, np.int32), np.asarray(indptr)),
                             shape=(len(codes), self.d_sae))

    # Persistence ----------------------------------------------------------------------------

    def save(self, path: str | Path, manifest: dict[str, Any], *, overwrite: bool = False) -> None:
        """Writes a manifest naming the URI and collection (the data itself lives in Milvus).

        Writers of this collection cannot undo each other's changes through the folder, so a
        manifest of the same collection is replaced freely; any other save there (an in-process
        memory, another collection) only with ``overwrite``.

        Raises:
            saememory.SaveConflictError: As ``FaissBackend.save``, for a save of something else.
        """
        folder = os.path.realpath(path)
        expect = None if overwrite else self._saved.get(folder, "")
        if expect is not None:
            with contextlib.suppress(FileNotFoundError, ValueError):  # nothing there, or write_snapshot says what
                live, found = snapshot.read_manifest(path)
                named = found.get("milvus") or {}
                if (named.get("uri"), named.get("collection")) == (self.uri, self.collection):
                    expect = live.name  # this collection's manifest: replaced, unless another save comes first
        self._saved[folder] = snapshot.write_snapshot(path, {
            "backend": self.name,
            **manifest, "dim": self.dim, "d_sae": self.d_sae, "index_type": None, "n_messages": len(self),
            "milvus": {"uri": self.uri, "collection": self.collection, "index": self.index_type},
        }, expect=expect)

    def flush(self) -> None:
        """Seals inserted data into indexed segments; after a bulk load, searches get faster.

        milvus-lite 3.x searches unsealed rows by brute force in Python; a server flushes on its own.
        """
        self.client.flush(self.collection)

    def close(self) -> None:
        """Releases the connection (a milvus-lite one is closed); ``open`` may connect again."""
        if self._client is not None:
            self.client.close()
            self._client = None


def _storable_key(value: str) -> bool:
    try:
        literal(value)
    except ValueError:
        return False
    return True


def _pk(user_id: str, message_id: str) -> str:
    """The primary key of a user's message: sha256 (hex) of an unambiguous encoding of owner and id."""
    return hashlib.sha256(json.dumps([user_id, message_id]).encode()).hexdigest()


def _keys_filter(user_id: str, message_ids: list[str]) -> str:
    """The user's messages with these ids: by primary key and, in depth, by owner; every value escaped."""
    pks = ", ".join(literal(_pk(user_id, m)) for m in message_ids)
    return f"user_id == {literal(user_id)} && pk in [{pks}]"


def _identity_json(identity: Any) -> str:
    """The encoder identity as canonical JSON, as a collection property records it.

    Raises:
        ValueError: If it is not a JSON-serialisable dict or exceeds ``MAX_IDENTITY`` bytes.
    """
    try:
        text = json.dumps(identity, sort_keys=True) if isinstance(identity, dict) else None
    except (TypeError, ValueError) as err:
        raise ValueError(f"identity={identity!r} is not JSON-serialisable ({err}); the encoder's identity() must "
                         "return a dict of strings, numbers, booleans, None, lists and dicts.") from None
    if text is None:
        raise ValueError(f"identity={identity!r} is not a dict; pass the encoder's identity() or None.")
    if len(text.encode()) > MAX_IDENTITY:
        raise ValueError(f"The encoder identity is {len(text.encode())} bytes as JSON; a Milvus collection records "
                         f"at most {MAX_IDENTITY}. Shorten what identity() returns (e.g. hash long values).")
    return text


def _record(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "content": row["text"], "role": row["role"], "session_id": row["session_id"],
        "timestamp": row["timestamp"], "time": row.get("time"), "user_id": row["user_id"],
        "metadata": dict(row["metadata"] or {}),
        "truncated": bool(row["truncated"]),
    }


def _check_lengths(record: dict[str, Any]) -> None:
    for key in ("id", "user_id", "session_id"):
        literal(record[key])  # filters must be able to name it
    for key in ("id", "user_id", "session_id", "role", "timestamp"):
        value = record.get(key)
        if value is not None and len(value.encode()) > MAX_KEY:
            raise ValueError(f"{key}={value[:40]!r}... is {len(value.encode())} bytes; Milvus stores at most {MAX_KEY}. "
                             "Use a shorter value.")
    size = len(record["content"].encode())
    if size > MAX_TEXT:
        raise ValueError(f"Message {record['id']!r} is {size} bytes; a Milvus VARCHAR holds at most {MAX_TEXT}. "
                         "Split it into shorter messages.")
