"""The in-process backend: dense vectors in FAISS, sparse SAE codes in CSR, metadata, per user.

Rows are internal and append-only until the next save compacts them; messages are addressed
by their stable ids. Every search is restricted to the rows of one user (optionally one
session) twice over: FAISS only scans those ids (an ``IDSelectorBatch``), and every returned
row is checked against the user's own row set before it leaves the index.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import scipy.sparse as sp

from saememory.arrays import GrowableCSR, GrowableMatrix
from saememory.backends import snapshot
from saememory.backends.base import matches
from saememory.lexical import LexicalIndex


# IVF kinds whose search takes an ID selector (the additive quantizers, RQ and LSQ, do not).
_IVF_WITH_SELECTORS = tuple(getattr(faiss, name) for name in ("IndexIVFFlat", "IndexIVFScalarQuantizer", "IndexIVFPQ",
                                                                "IndexIVFPQFastScan") if hasattr(faiss, name))
SUPPORTED_INDEXES = "'Flat' (exact), 'HNSW32', 'IVF<n>,Flat', 'IVF<n>,SQ8', 'IVF<n>,PQ<m>' or 'SQ8'"


class FaissBackend:
    """Stores messages' vectors, codes and metadata in this process, and scores one user's messages.

    A ``Backend``: ``SAEMemory(backend=FaissBackend("HNSW32"))``; the default is exact search.

    Args:
        index_type: A FAISS ``index_factory`` string over inner product, of a type that can
            search one user's rows through an ID selector: ``"Flat"`` (exact), ``"HNSW<M>"``,
            ``"IVF<n>,Flat"``, ``"IVF<n>,SQ8"``, ``"IVF<n>,PQ<m>"`` or ``"SQ8"``; others are
            refused. Defaults to ``"Flat"``. Approximate types give candidates that are then
            scored exactly from the stored vectors. Types that need training search exactly
            until the memory holds enough messages to train them (FAISS' 39 per centroid).

    Raises:
        ValueError: From ``open``, for a string that is no FAISS index or a type that is refused.
    """

    name = "faiss"

    def __init__(self, index_type: str = "Flat") -> None:
        if not isinstance(index_type, str):
            raise TypeError(f"index_type must be a FAISS index_factory string, got {index_type!r}; "
                            f"use one of {SUPPORTED_INDEXES}.")
        self.index_type = index_type
        self.dim: int | None = None  # set by open()

    def __repr__(self) -> str:
        return f"FaissBackend({self.index_type!r})"

    def open(self, dim: int, d_sae: int, *, identity: dict[str, Any] | None = None, stemmer: str | None = None) -> None:
        """Allocates for an encoder of these widths; the index type is checked here (it needs ``dim``)."""
        if self.dim is not None:
            if (self.dim, self.d_sae) != (dim, d_sae):
                raise ValueError(f"This FaissBackend holds dim={self.dim}, d_sae={self.d_sae}; the encoder gives "
                                 f"dim={dim}, d_sae={d_sae}. Use a new FaissBackend, or the encoder it was made with.")
            return
        self.dim, self.d_sae = dim, d_sae
        self._learn_kind()
        self._faiss = self._new_faiss()
        self._dense = GrowableMatrix(dim)
        self._sparse = GrowableCSR(d_sae)
        self.lexical = LexicalIndex(stemmer=stemmer)
        self._records: list[dict[str, Any] | None] = []  # None marks a deleted row
        self._seq: list[int] = []  # per row, its message's place in insertion order (kept by replace)
        self._next_seq = 0
        self.row_of: dict[tuple[str, str], int] = {}  # (user_id, message id) -> row: ids are unique per user
        self._user_rows: dict[str, set[int]] = {}
        self._sorted_rows: dict[str, np.ndarray] = {}  # per user, dropped when the user's rows change

    def _new_faiss(self) -> faiss.Index:
        """A new, empty FAISS index of ``index_type``."""
        return faiss.IndexIDMap2(self._factory())

    def _factory(self) -> faiss.Index:
        try:
            base = faiss.index_factory(self.dim, self.index_type, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as err:
            raise ValueError(f"index_type={self.index_type!r} is not a FAISS index_factory string; use one of "
                             f"{SUPPORTED_INDEXES}: {err}") from None
        return base

    def _learn_kind(self) -> None:
        """How this index type trains, searches and removes; refuses types that cannot serve per-user search."""
        base = self._factory()
        inner = faiss.downcast_index(base)
        self._removable, self._min_train, self._nprobe = True, 0, 0
        if isinstance(inner, faiss.IndexFlat):
            pass
        elif isinstance(inner, faiss.IndexHNSW) and isinstance(faiss.downcast_index(inner.storage), faiss.IndexFlat):
            self._removable = False  # HNSW graphs cannot drop nodes: dead rows stay out of every selector instead
        elif isinstance(inner, _IVF_WITH_SELECTORS):
            ksub = 2 ** inner.pq.nbits if isinstance(inner, faiss.IndexIVFPQ) else 0
            self._min_train, self._nprobe = 39 * max(inner.nlist, ksub), min(inner.nlist, 16)
        elif isinstance(inner, faiss.IndexScalarQuantizer):
            self._min_train = 1000  # per-dimension ranges: one message trains them badly
        else:
            raise ValueError(f"index_type={self.index_type!r} builds a FAISS {type(inner).__name__}, which cannot "
                             f"search one user's messages through an ID selector; use one of {SUPPORTED_INDEXES}.")
        self._trained = base.is_trained

    @property
    def exact(self) -> bool:
        return self.index_type == "Flat"

    def _search_params(self, allowed: np.ndarray) -> faiss.SearchParameters:
        selector = faiss.IDSelectorBatch(allowed)
        if self._nprobe:
            return faiss.SearchParametersIVF(sel=selector, nprobe=self._nprobe)
        return faiss.SearchParameters(sel=selector)

    def __len__(self) -> int:
        return len(self.row_of)

    def close(self) -> None:
        """Nothing to release: the index lives in this process."""

    def users(self) -> list[str]:
        return sorted(user for user, rows in self._user_rows.items() if rows)

    def stored(self, user_id: str, message_ids: list[str]) -> set[str]:
        return {mid for mid in message_ids if (user_id, mid) in self.row_of}

    def validate(self, records: list[dict[str, Any]]) -> None:
        """Every record ``SAEMemory`` validated can be stored here."""

    def get(self, user_id: str, message_id: str) -> dict[str, Any] | None:
        row = self.row_of.get((user_id, message_id))
        return None if row is None else self._records[row]

    def records(self, user_id: str, session_id: str | None = None) -> list[dict[str, Any]]:
        """One user's (and session's) records, in insertion order (an updated message keeps its place)."""
        return [self._records[r] for r in sorted(self.rows_for(user_id, session_id).tolist(), key=self._seq.__getitem__)]

    def fetch(self, user_id: str, message_ids: list[str]) -> list[tuple[dict[str, Any], sp.csr_matrix]]:
        rows = [self.row_of.get((user_id, mid)) for mid in message_ids]
        return [(self._records[r], self._sparse.view[r]) for r in rows if r is not None]

    def vectors(self, user_id: str, message_ids: list[str]) -> dict[str, np.ndarray]:
        rows = {mid: self.row_of.get((user_id, mid)) for mid in message_ids}
        return {mid: self._dense.view[r].copy() for mid, r in rows.items() if r is not None}

    def add(self, records: list[dict[str, Any]], dense: np.ndarray, sparse: sp.csr_matrix,
            seq: list[int] | None = None) -> None:
        """Adds rows; the caller has validated ids, vectors and codes. ``seq``: their places in insertion order."""
        first = len(self._records)
        ids = np.arange(first, first + len(records), dtype=np.int64)
        if self._trained:
            self._faiss.add_with_ids(dense, ids)
        elif len(self.row_of) + len(records) >= self._min_train:
            # Enough messages at last: train on every live one, then index them all.
            live = np.array(sorted(self.row_of.values()), dtype=np.int64)
            vectors = np.concatenate([self._dense.view[live], dense])
            self._faiss.train(vectors)
            self._faiss.add_with_ids(vectors, np.concatenate([live, ids]))
            self._trained = True
        self._dense.append(dense)
        self._sparse.append(sparse)
        self.lexical.add([record["content"] for record in records])
        if seq is None:
            seq = range(self._next_seq, self._next_seq + len(records))
            self._next_seq += len(records)
        self._seq.extend(seq)
        for row, record in zip(ids.tolist(), records):
            self._records.append(record)
            self.row_of[(record["user_id"], record["id"])] = row
            self._user_rows.setdefault(record["user_id"], set()).add(row)
            self._sorted_rows.pop(record["user_id"], None)

    def replace(self, records: list[dict[str, Any]], dense: np.ndarray, sparse: sp.csr_matrix) -> None:
        """Replaces stored messages (same ids): the new rows go in first, then the old rows go.

        If adding fails, the old versions are untouched and still addressed by their ids.
        """
        old = [self.row_of[(record["user_id"], record["id"])] for record in records]
        self.add(records, dense, sparse, [self._seq[row] for row in old])  # row_of moves only once the rows exist
        self._drop_rows(old)

    def delete(self, user_id: str, message_ids: list[str]) -> None:
        """Removes the user's rows by message id; the caller has checked that every id exists."""
        self._drop_rows([self.row_of.pop((user_id, mid)) for mid in message_ids])

    def _drop_rows(self, rows: list[int]) -> None:
        if self._removable and self._trained:
            self._faiss.remove_ids(np.asarray(rows, dtype=np.int64))
        for row in rows:
            user = self._records[row]["user_id"]
            self._user_rows[user].discard(row)
            self._sorted_rows.pop(user, None)
            self._records[row] = None

    def rows_for(self, user_id: str, session_id: str | None = None, since: str | None = None,
                 until: str | None = None, roles: tuple[str, ...] | None = None) -> np.ndarray:
        """The live rows of one user (and session, time window, roles), sorted; see ``Backend.score``."""
        rows = self._sorted_rows.get(user_id)
        if rows is None:
            found = self._user_rows.get(user_id, set())
            rows = np.fromiter(sorted(found), dtype=np.int64, count=len(found))
            self._sorted_rows[user_id] = rows
        if session_id is not None or since is not None or until is not None or roles is not None:
            keep = [matches(self._records[r], session_id, since, until, roles) for r in rows.tolist()]
            rows = rows[np.asarray(keep, dtype=bool).reshape(-1)]
        return rows

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
        """Similarities of the query to one user's candidate messages, per signal.

        With an exact index every message of the user is a candidate. Otherwise the candidates
        are the union of FAISS' top ``candidates`` and the top ``candidates`` of each other signal.

        Args:
            query_text: When given, BM25 scores are computed too. Defaults to None.
            include: Ids that must be candidates if they are the user's (and session's).
                Defaults to None.

        Returns:
            ``(ids, signals)``: the candidate ids and, aligned with them, ``"dense"`` and
            ``"sparse"`` (and ``"bm25"``) scores.
        """
        allowed = self.rows_for(user_id, session_id, since, until, roles)
        rows, signals = self._score_rows(user_id, allowed, q_dense, q_sparse, candidates, query_text, include)
        return [self._records[r]["id"] for r in rows.tolist()], signals

    def _score_rows(self, user_id, allowed, q_dense, q_sparse, candidates, query_text, include):
        if allowed.size == 0:
            return allowed, {"dense": np.zeros(0, np.float32), "sparse": np.zeros(0, np.float32)}
        others = {"sparse": self._sparse_scores(q_sparse, allowed)}
        if query_text is not None:
            others["bm25"] = self.lexical.scores(query_text, allowed)
        if self._trained:
            n_faiss = allowed.size if self.exact else min(allowed.size, candidates)
            found_scores, found = self._faiss.search(q_dense.reshape(1, -1), n_faiss, params=self._search_params(allowed))
            keep = found[0] >= 0
            found, found_scores = found[0][keep], found_scores[0][keep]
        else:  # not trained yet: every one of the user's messages is scored exactly
            scores = self._dense.view[allowed] @ q_dense.reshape(-1)
            order = np.lexsort((allowed, -scores))
            found, found_scores = allowed[order], scores[order]
        # Defence in depth: nothing outside this user's (and session's) rows may pass.
        inside = np.isin(found, allowed)
        found, found_scores = found[inside], found_scores[inside]
        if self.exact:
            rows, dense = found, found_scores
        else:
            tops = [allowed[np.argsort(-scores, kind="stable")[:candidates]] for scores in others.values()]
            extra = np.array([self.row_of[(user_id, i)] for i in include or () if (user_id, i) in self.row_of],
                             dtype=np.int64)
            rows = np.unique(np.concatenate([found, *tops, extra[np.isin(extra, allowed)]]))
            dense = self._dense.view[rows] @ q_dense.reshape(-1)
        position = np.searchsorted(allowed, rows)
        signals = {"dense": dense.astype(np.float32)}
        signals.update({name: scores[position].astype(np.float32) for name, scores in others.items()})
        return rows, signals

    def _sparse_scores(self, q_sparse: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
        if self.d_sae == 0 or q_sparse.nnz == 0:
            return np.zeros(rows.size, dtype=np.float32)
        return np.asarray((self._sparse.view[rows] @ q_sparse.T).todense()).reshape(-1)

    # Persistence -----------------------------------------------------------------------------

    def save(self, path: str | Path, manifest: dict[str, Any]) -> None:
        """Writes a new snapshot next to the old one, then atomically points ``CURRENT`` at it.

        A crash at any point leaves the previous snapshot readable. Only live rows are written.
        Savers of one folder take turns (``snapshot.write_snapshot`` locks it).

        Raises:
            ValueError: If a message holds NaN or infinite values (a save ``load`` would refuse);
                the previous save is kept.
        """
        live = np.array(sorted(self.row_of.values(), key=self._seq.__getitem__), dtype=np.int64)  # insertion order

        def write_files(tmp: Path) -> None:
            dense = self._dense.view[live] if live.size else np.zeros((0, self.dim), np.float32)
            sparse = self._sparse.view[live] if live.size else sp.csr_matrix((0, self.d_sae), dtype=np.float32)
            bad = ~np.isfinite(dense).all(axis=1)
            bad[np.repeat(np.arange(live.size), np.diff(sparse.indptr))[~np.isfinite(sparse.data)]] = True
            if bad.any():
                record = self._records[live[np.argmax(bad)]]
                raise ValueError(f"Not saved to {path}: message {record['id']!r} of user {record['user_id']!r} holds "
                                 "NaN or infinite values; delete it and add it again with finite vectors and codes.")
            faiss_index = self._new_faiss()
            if live.size and (faiss_index.is_trained or live.size >= self._min_train):
                if not faiss_index.is_trained:
                    faiss_index.train(dense)
                faiss_index.add_with_ids(dense, np.arange(live.size, dtype=np.int64))
            np.save(tmp / "dense.npy", dense, allow_pickle=False)
            sp.save_npz(tmp / "sparse.npz", sp.csr_matrix(sparse, dtype=np.float32))
            self.lexical.select(live).save(tmp)
            faiss.write_index(faiss_index, str(tmp / "faiss.index"))
            with open(tmp / "records.jsonl", "w", encoding="utf-8") as handle:
                for row in live.tolist():
                    handle.write(json.dumps(self._records[row], ensure_ascii=False) + "\n")

        full = {**manifest, "backend": self.name, "dim": self.dim, "d_sae": self.d_sae,
                "index_type": self.index_type, "n_messages": int(live.size)}
        snapshot.write_snapshot(path, full, write_files)

    @classmethod
    def load(cls, path: str | Path, *, identity: dict[str, Any] | None = None,
             stemmer: str | None = None) -> tuple[FaissBackend, dict[str, Any]]:
        """Reads the live snapshot under a shared lock, refusing any file that fails a check.

        Every data file must match its sha256 in the manifest (saves of format 2 on), and hold
        what a save writes: finite float32 vectors and codes with indices in range, well-formed
        records with unique (user_id, id) pairs, and ``n_messages`` rows in every part.

        Raises:
            FileNotFoundError: If ``path`` holds no saved memory.
            ValueError: If the save is corrupt (naming the file and the problem), of another
                format version, or a Milvus memory's manifest. ``identity`` is checked by
                ``SAEMemory.load`` against the manifest's; BM25's stemmer is read from the save.
            TimeoutError: If another process holds the folder's lock for over ``snapshot.LOCK_TIMEOUT`` s.
        """
        with snapshot.reading(path) as (folder, manifest):
            snapshot.verify_files(path, folder, manifest)
            if manifest["index_type"] is None:
                raise ValueError(f"{path} holds the manifest of a Milvus memory (its data lives in Milvus); "
                                 "load it with SAEMemory.load(path).")
            n, dim, d_sae = manifest["n_messages"], manifest["dim"], manifest["d_sae"]
            try:
                index = cls(manifest["index_type"])
                index.open(dim, d_sae)
            except (TypeError, ValueError) as err:
                raise ValueError(f"Saved memory at {path} cannot be loaded: {err}") from None
            read = snapshot.read_part
            dense = read(path, "dense.npy", lambda: np.load(folder / "dense.npy", allow_pickle=False))
            snapshot.check_dense(path, "dense.npy", dense, (n, dim))
            sparse = read(path, "sparse.npz", lambda: sp.load_npz(folder / "sparse.npz"))
            snapshot.check_sparse(path, "sparse.npz", sparse, (n, d_sae))
            stored = read(path, "faiss.index", lambda: faiss.read_index(str(folder / "faiss.index")))
            want = n if stored.is_trained else 0  # an untrained index holds nothing yet
            if (stored.ntotal, stored.d) != (want, dim):
                raise snapshot.corrupt(path, "faiss.index", f"holds {stored.ntotal} vectors of width {stored.d}, "
                                      f"but should hold {want} of width {dim} (manifest: n_messages={n}, dim={dim})")
            lexical = read(path, "the BM25 files (bm25_*)", lambda: LexicalIndex.load(folder))
            if len(lexical) != n:
                raise snapshot.corrupt(path, "bm25_lengths.npy", f"holds {len(lexical)} lengths, but the manifest "
                                      f"says n_messages={n}")
            snapshot.check_sparse(path, "bm25_tf.npz", lexical._tf.view, (n, len(lexical.vocab)))
            records = snapshot.read_records(path, folder / "records.jsonl", n)
        index.lexical = lexical
        if n:
            index._faiss, index._trained = stored, stored.is_trained
            index._dense.append(dense)
            index._sparse.append(sparse)
        index._seq, index._next_seq = list(range(n)), n  # saved in insertion order
        for row, record in enumerate(records):
            index._records.append(record)
            index.row_of[(record["user_id"], record["id"])] = row
            index._user_rows.setdefault(record["user_id"], set()).add(row)
        return index, manifest

