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

from saememory import backend
from saememory.arrays import GrowableCSR, GrowableMatrix
from saememory.backend import CURRENT, FORMAT_VERSION  # noqa: F401  (re-exported)
from saememory.lexical import LexicalIndex


class MemoryIndex:
    """Stores messages' vectors, codes and metadata, and scores one user's messages (a ``Backend``).

    Args:
        dim: Dense vector width.
        d_sae: Sparse code width (0 for dense only).
        index_type: A FAISS ``index_factory`` string over inner product. Defaults to ``"Flat"``
            (exact). Approximate types (e.g. ``"HNSW32"``) give candidates that are then scored
            exactly from the stored vectors.
        stemmer: BM25's Snowball stemmer language, or None. Defaults to None.
    """

    def __init__(self, dim: int, d_sae: int, index_type: str = "Flat", stemmer: str | None = None) -> None:
        self.dim, self.d_sae, self.index_type = dim, d_sae, index_type
        self._faiss = self._new_faiss()
        self._dense = GrowableMatrix(dim)
        self._sparse = GrowableCSR(d_sae)
        self.lexical = LexicalIndex(stemmer=stemmer)
        self._records: list[dict[str, Any] | None] = []  # None marks a deleted row
        self.row_of: dict[str, int] = {}
        self._user_rows: dict[str, set[int]] = {}
        self._sorted_rows: dict[str, np.ndarray] = {}  # per user, dropped when the user's rows change

    def _new_faiss(self) -> faiss.Index:
        try:
            base = faiss.index_factory(self.dim, self.index_type, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as err:
            raise ValueError(
                f"index_type={self.index_type!r} is not a FAISS index_factory string "
                f"(try 'Flat' or 'HNSW32'): {err}"
            ) from None
        return faiss.IndexIDMap2(base)

    @property
    def exact(self) -> bool:
        return self.index_type == "Flat"

    def __len__(self) -> int:
        return len(self.row_of)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self.row_of

    def users(self) -> list[str]:
        return sorted(user for user, rows in self._user_rows.items() if rows)

    def stored(self, message_ids: list[str]) -> set[str]:
        return {mid for mid in message_ids if mid in self.row_of}

    def validate(self, records: list[dict[str, Any]]) -> None:
        """Every record ``SAEMemory`` validated can be stored here."""

    def get(self, message_id: str) -> dict[str, Any] | None:
        row = self.row_of.get(message_id)
        return None if row is None else self._records[row]

    def records(self, user_id: str, session_id: str | None = None) -> list[dict[str, Any]]:
        """One user's (and session's) records, in insertion order."""
        return [self._records[r] for r in self.rows_for(user_id, session_id).tolist()]

    def fetch(self, message_ids: list[str]) -> list[tuple[dict[str, Any], sp.csr_matrix]]:
        rows = [self.row_of[mid] for mid in message_ids]
        return [(self._records[r], self._sparse.view[r]) for r in rows]

    def add(self, records: list[dict[str, Any]], dense: np.ndarray, sparse: sp.csr_matrix) -> None:
        """Adds rows; the caller has validated ids, vectors and codes."""
        first = len(self._records)
        ids = np.arange(first, first + len(records), dtype=np.int64)
        if not self._faiss.is_trained:
            self._faiss.train(dense)
        self._faiss.add_with_ids(dense, ids)
        self._dense.append(dense)
        self._sparse.append(sparse)
        self.lexical.add([record["content"] for record in records])
        for row, record in zip(ids.tolist(), records):
            self._records.append(record)
            self.row_of[record["id"]] = row
            self._user_rows.setdefault(record["user_id"], set()).add(row)
            self._sorted_rows.pop(record["user_id"], None)

    def replace(self, records: list[dict[str, Any]], dense: np.ndarray, sparse: sp.csr_matrix) -> None:
        """Replaces stored messages (same ids): the new rows go in first, then the old rows go.

        If adding fails, the old versions are untouched and still addressed by their ids.
        """
        old = [self.row_of[record["id"]] for record in records]
        self.add(records, dense, sparse)  # points row_of at the new rows only once they exist
        self._drop_rows(old)

    def delete(self, message_ids: list[str]) -> None:
        """Removes rows by message id; the caller has checked that every id exists."""
        self._drop_rows([self.row_of.pop(mid) for mid in message_ids])

    def _drop_rows(self, rows: list[int]) -> None:
        try:
            self._faiss.remove_ids(np.asarray(rows, dtype=np.int64))
        except RuntimeError:
            pass  # e.g. HNSW cannot remove; deleted rows are outside every search's selector anyway
        for row in rows:
            user = self._records[row]["user_id"]
            self._user_rows[user].discard(row)
            self._sorted_rows.pop(user, None)
            self._records[row] = None

    def rows_for(self, user_id: str, session_id: str | None = None) -> np.ndarray:
        """The live rows of one user (and session), sorted (cached until the user's rows change)."""
        rows = self._sorted_rows.get(user_id)
        if rows is None:
            found = self._user_rows.get(user_id, set())
            rows = np.fromiter(sorted(found), dtype=np.int64, count=len(found))
            self._sorted_rows[user_id] = rows
        if session_id is not None:
            rows = rows[np.fromiter((self._records[r]["session_id"] == session_id for r in rows.tolist()),
                                    dtype=bool, count=rows.size)]
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
        rows, signals = self._score_rows(user_id, session_id, q_dense, q_sparse, candidates, query_text, include)
        return [self._records[r]["id"] for r in rows.tolist()], signals

    def _score_rows(self, user_id, session_id, q_dense, q_sparse, candidates, query_text, include):
        allowed = self.rows_for(user_id, session_id)
        if allowed.size == 0:
            return allowed, {"dense": np.zeros(0, np.float32), "sparse": np.zeros(0, np.float32)}
        others = {"sparse": self._sparse_scores(q_sparse, allowed)}
        if query_text is not None:
            others["bm25"] = self.lexical.scores(query_text, allowed)
        n_faiss = allowed.size if self.exact else min(allowed.size, candidates)
        params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
        found_scores, found = self._faiss.search(q_dense.reshape(1, -1), n_faiss, params=params)
        keep = found[0] >= 0
        found, found_scores = found[0][keep], found_scores[0][keep]
        # Defence in depth: nothing outside this user's (and session's) rows may pass.
        inside = np.isin(found, allowed)
        found, found_scores = found[inside], found_scores[inside]
        if self.exact:
            rows, dense = found, found_scores
        else:
            tops = [allowed[np.argsort(-scores, kind="stable")[:candidates]] for scores in others.values()]
            extra = np.array([self.row_of[i] for i in include or () if i in self.row_of], dtype=np.int64)
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

    def vector(self, row: int) -> np.ndarray:
        return self._dense.view[row]

    # Persistence -----------------------------------------------------------------------------

    def save(self, path: str | Path, manifest: dict[str, Any]) -> None:
        """Writes a new snapshot next to the old one, then atomically points ``CURRENT`` at it.

        A crash at any point leaves the previous snapshot readable. Only live rows are written.
        """
        live = np.array(sorted(self.row_of.values()), dtype=np.int64)

        def write_files(tmp: Path) -> None:
            dense = self._dense.view[live] if live.size else np.zeros((0, self.dim), np.float32)
            sparse = self._sparse.view[live] if live.size else sp.csr_matrix((0, self.d_sae), dtype=np.float32)
            faiss_index = self._new_faiss()
            if live.size:
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

        full = {**manifest, "dim": self.dim, "d_sae": self.d_sae, "index_type": self.index_type,
                "n_messages": int(live.size)}
        backend.write_snapshot(path, full, write_files)

    read_manifest = staticmethod(backend.read_manifest)

    @classmethod
    def load(cls, path: str | Path) -> tuple[MemoryIndex, dict[str, Any]]:
        """Reads the live snapshot; checks that its parts agree with each other and the manifest."""
        snapshot, manifest = cls.read_manifest(path)
        index = cls(manifest["dim"], manifest["d_sae"], manifest["index_type"])
        try:
            dense = np.load(snapshot / "dense.npy", allow_pickle=False)
            sparse = sp.load_npz(snapshot / "sparse.npz").tocsr()
            stored = faiss.read_index(str(snapshot / "faiss.index"))
            lexical = LexicalIndex.load(snapshot)
            with open(snapshot / "records.jsonl", encoding="utf-8") as handle:
                records = [json.loads(line) for line in handle if line.strip()]
        except Exception as err:  # numpy, scipy, faiss and json each raise their own kinds
            raise ValueError(f"Saved memory at {path} is corrupt: {type(err).__name__}: {err}") from None
        n = manifest["n_messages"]
        shapes = {
            "dense.npy": (dense.shape, (n, manifest["dim"])),
            "sparse.npz": (sparse.shape, (n, manifest["d_sae"])),
            "faiss.index": ((stored.ntotal, stored.d), (n, manifest["dim"])),
            "records.jsonl": ((len(records),), (n,)),
            "bm25_tf.npz": ((len(lexical),), (n,)),
        }
        for name, (got, want) in shapes.items():
            if tuple(got) != tuple(want):
                raise ValueError(f"Saved memory at {path} is corrupt: {name} has shape {got}, manifest says {want}.")
        index.lexical = lexical
        if n:
            index._faiss = stored
            index._dense.append(dense.astype(np.float32))
            index._sparse.append(sparse.astype(np.float32))
            for row, record in enumerate(records):
                index._records.append(record)
                index.row_of[record["id"]] = row
                index._user_rows.setdefault(record["user_id"], set()).add(row)
        return index, manifest

