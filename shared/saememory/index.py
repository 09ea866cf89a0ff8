"""The message index: dense vectors in FAISS, sparse SAE codes in CSR, metadata, per user.

Rows are internal and append-only until the next save compacts them; messages are addressed
by their stable ids. Every search is restricted to the rows of one user (optionally one
session) twice over: FAISS only scans those ids (an ``IDSelectorBatch``), and every returned
row is checked against the user's own row set before it leaves the index.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import scipy.sparse as sp

from saememory.arrays import GrowableCSR, GrowableMatrix
from saememory.lexical import LexicalIndex

FORMAT_VERSION = 1
CURRENT = "CURRENT"


class MemoryIndex:
    """Stores messages' vectors, codes and metadata, and scores one user's messages.

    Args:
        dim: Dense vector width.
        d_sae: Sparse code width (0 for dense only).
        index_type: A FAISS ``index_factory`` string over inner product. Defaults to ``"Flat"``
            (exact). Approximate types (e.g. ``"HNSW32"``) give candidates that are then scored
            exactly from the stored vectors.
    """

    def __init__(self, dim: int, d_sae: int, index_type: str = "Flat") -> None:
        self.dim, self.d_sae, self.index_type = dim, d_sae, index_type
        self._faiss = self._new_faiss()
        self._dense = GrowableMatrix(dim)
        self._sparse = GrowableCSR(d_sae)
        self.lexical = LexicalIndex()
        self.records: list[dict[str, Any] | None] = []  # None marks a deleted row
        self.row_of: dict[str, int] = {}
        self._user_rows: dict[str, set[int]] = {}

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

    def users(self) -> list[str]:
        return sorted(user for user, rows in self._user_rows.items() if rows)

    def add(self, records: list[dict[str, Any]], dense: np.ndarray, sparse: sp.csr_matrix) -> None:
        """Adds rows; the caller has validated ids, vectors and codes."""
        first = len(self.records)
        ids = np.arange(first, first + len(records), dtype=np.int64)
        if not self._faiss.is_trained:
            self._faiss.train(dense)
        self._faiss.add_with_ids(dense, ids)
        self._dense.append(dense)
        self._sparse.append(sparse)
        self.lexical.add([record["content"] for record in records])
        for row, record in zip(ids.tolist(), records):
            self.records.append(record)
            self.row_of[record["id"]] = row
            self._user_rows.setdefault(record["user_id"], set()).add(row)

    def delete(self, message_ids: list[str]) -> None:
        """Removes rows by message id; the caller has checked that every id exists."""
        rows = [self.row_of.pop(mid) for mid in message_ids]
        try:
            self._faiss.remove_ids(np.asarray(rows, dtype=np.int64))
        except RuntimeError:
            pass  # e.g. HNSW cannot remove; deleted rows are outside every search's selector anyway
        for row in rows:
            self._user_rows[self.records[row]["user_id"]].discard(row)
            self.records[row] = None

    def rows_for(self, user_id: str, session_id: str | None = None) -> np.ndarray:
        """The live rows of one user (and session), sorted."""
        rows = self._user_rows.get(user_id, set())
        if session_id is not None:
            rows = {r for r in rows if self.records[r]["session_id"] == session_id}
        return np.fromiter(sorted(rows), dtype=np.int64, count=len(rows))

    def score(
        self,
        user_id: str,
        session_id: str | None,
        q_dense: np.ndarray,
        q_sparse: sp.csr_matrix,
        candidates: int,
        query_text: str | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Similarities of the query to one user's candidate rows, per signal.

        With an exact index every row of the user is a candidate. Otherwise the candidates are
        the union of FAISS' top ``candidates`` and the top ``candidates`` of each other signal.

        Args:
            query_text: When given, BM25 scores are computed too.

        Returns:
            ``(rows, signals)``: the candidate rows and, aligned with them, ``"dense"`` and
            ``"sparse"`` (and ``"bm25"``) scores.
        """
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
            rows = np.unique(np.concatenate([found, *tops]))
            dense = self._dense.view[rows] @ q_dense.reshape(-1)
        position = np.searchsorted(allowed, rows)
        signals = {"dense": dense.astype(np.float32)}
        signals.update({name: scores[position].astype(np.float32) for name, scores in others.items()})
        return rows, signals

    def _sparse_scores(self, q_sparse: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
        if self.d_sae == 0 or q_sparse.nnz == 0:
            return np.zeros(rows.size, dtype=np.float32)
        return np.asarray((self._sparse.view[rows] @ q_sparse.T).todense()).reshape(-1)

    def code(self, row: int) -> sp.csr_matrix:
        return self._sparse.view[row]

    def vector(self, row: int) -> np.ndarray:
        return self._dense.view[row]

    # Persistence -----------------------------------------------------------------------------

    def save(self, path: str | Path, manifest: dict[str, Any]) -> None:
        """Writes a new snapshot next to the old one, then atomically points ``CURRENT`` at it.

        A crash at any point leaves the previous snapshot readable. Only live rows are written.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        live = np.array(sorted(self.row_of.values()), dtype=np.int64)
        snapshot = f"snapshot-{uuid.uuid4().hex[:12]}"
        tmp = path / f".tmp-{snapshot}"
        tmp.mkdir()
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
                handle.write(json.dumps(self.records[row], ensure_ascii=False) + "\n")
        full = {
            **manifest,
            "format_version": FORMAT_VERSION,
            "dim": self.dim,
            "d_sae": self.d_sae,
            "index_type": self.index_type,
            "n_messages": int(live.size),
        }
        (tmp / "manifest.json").write_text(json.dumps(full, indent=2))
        _fsync_dir(tmp)
        os.replace(tmp, path / snapshot)
        pointer = path / f".{CURRENT}.tmp"
        pointer.write_text(snapshot)
        os.replace(pointer, path / CURRENT)  # the commit point
        _fsync_dir(path)
        for old in path.iterdir():
            if old.name != snapshot and (old.name.startswith("snapshot-") or old.name.startswith(".tmp-")):
                shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def read_manifest(path: str | Path) -> tuple[Path, dict[str, Any]]:
        """Finds the live snapshot of a saved memory and reads its manifest.

        Raises:
            FileNotFoundError: If ``path`` holds no saved memory.
            ValueError: If the snapshot is corrupt or of another format version.
        """
        path = Path(path)
        pointer = path / CURRENT
        if not pointer.is_file():
            raise FileNotFoundError(f"{path} holds no saved memory (no {CURRENT} file); save one with memory.save(path).")
        snapshot = path / pointer.read_text().strip()
        try:
            manifest = json.loads((snapshot / "manifest.json").read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"Saved memory at {path} is corrupt: cannot read {snapshot.name}/manifest.json ({err}).") from None
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"Saved memory at {path} has format_version {manifest.get('format_version')!r}; "
                f"this saememory reads version {FORMAT_VERSION}."
            )
        return snapshot, manifest

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
                index.records.append(record)
                index.row_of[record["id"]] = row
                index._user_rows.setdefault(record["user_id"], set()).add(row)
        return index, manifest


def _fsync_dir(path: Path) -> None:
    """Flushes a directory's entries to disk where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
