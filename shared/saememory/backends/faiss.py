"""The in-process backend: dense vectors and SAE codes in compact arrays, metadata, per user.

Dense vectors are int8 with a float32 scale per row (``saememory.arrays.Int8Rows``), SAE codes a
compact CSR of uint16 feature indices and int8 values with a scale per row (``Int8CSR``): about
2.2 KB a message for 384-d vectors and ~600 active features of 4,096, against 6.5 KB as float32.
Scores are computed from exactly what is stored (decoded on the fly), and ``fetch``/``vectors``
return the decoded float32 values.

Exact search (``"Flat"``, the default) scores one user's rows straight from these arrays and
never imports FAISS. Approximate index types (HNSW, IVF, SQ8) keep a FAISS index for candidates,
which are then scored from the arrays. Rows are internal and append-only until the next save
compacts them; messages are addressed by their stable ids. Every search is restricted to the
rows of one user (optionally one session) twice over: only those rows are scored (FAISS only
scans those ids, through an ``IDSelectorBatch``), and every returned row is checked against the
user's own row set before it leaves the index.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from saememory.arrays import Int8CSR, Int8Rows, dequantize_rows, index_dtype, quantize_codes, quantize_rows
from saememory.backends import snapshot
from saememory.backends.base import matches
from saememory.lexical import LexicalIndex

if TYPE_CHECKING:
    import faiss

# The files of a save's vectors and codes (format 3 on), as Int8Rows and Int8CSR hold them.
DENSE_FILES = ("dense_values.npy", "dense_scale.npy")
SPARSE_FILES = ("sparse_indptr.npy", "sparse_indices.npy", "sparse_values.npy", "sparse_scale.npy")
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
    _faiss: faiss.Index | None  # None for exact search: nothing but the arrays is searched

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
        self._faiss = None if self.exact else self._new_faiss()
        self._dense = Int8Rows(dim)
        self._sparse = Int8CSR(d_sae)
        self.lexical = LexicalIndex(stemmer=stemmer)
        self._records: list[dict[str, Any] | None] = []  # None marks a deleted row
        self._seq: list[int] = []  # per row, its message's place in insertion order (kept by replace)
        self._next_seq = 0
        self.row_of: dict[tuple[str, str], int] = {}  # (user_id, message id) -> row: ids are unique per user
        self._user_rows: dict[str, set[int]] = {}
        self._sorted_rows: dict[str, np.ndarray] = {}  # per user, dropped when the user's rows change
        self._snapshots: dict[str, str] = {}  # per folder read or written (real path), the snapshot it held then

    def _new_faiss(self) -> faiss.Index:
        """A new, empty FAISS index of ``index_type``."""
        return _faiss_module().IndexIDMap2(self._factory())

    def _factory(self) -> faiss.Index:
        faiss = _faiss_module()
        try:
            base = faiss.index_factory(self.dim, self.index_type, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as err:
            raise ValueError(f"index_type={self.index_type!r} is not a FAISS index_factory string; use one of "
                             f"{SUPPORTED_INDEXES}: {err}") from None
        return base

    def _learn_kind(self) -> None:
        """How this index type trains, searches and removes; refuses types that cannot serve per-user search."""
        self._removable, self._min_train, self._nprobe = True, 0, 0
        if self.exact:  # scored from the arrays: no FAISS index, nothing to train
            self._trained = True
            return
        faiss = _faiss_module()
        base = self._factory()
        inner = faiss.downcast_index(base)
        if isinstance(inner, faiss.IndexFlat):
            pass
        elif isinstance(inner, faiss.IndexHNSW) and isinstance(faiss.downcast_index(inner.storage), faiss.IndexFlat):
            self._removable = False  # HNSW graphs cannot drop nodes: dead rows stay out of every selector instead
        elif isinstance(inner, _ivf_with_selectors(faiss)):
            ksub = 2 ** inner.pq.nbits if isinstance(inner, faiss.IndexIVFPQ) else 0
            self._min_train, self._nprobe = 39 * max(inner.nlist, ksub), min(inner.nlist, 16)
            # IDMap2 over IVF maps rows wrongly after a removal (and FAISS can abort): like HNSW, dead rows
            # stay in the index, outside every selector, until the next save rebuilds it.
            self._removable = False
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
        faiss = _faiss_module()
        selector = faiss.IDSelectorBatch(allowed)
        if self._nprobe:
            return faiss.SearchParametersIVF(sel=selector, nprobe=self._nprobe)
        return faiss.SearchParameters(sel=selector)

    def __len__(self) -> int:
        return len(self.row_of)

    def close(self) -> None:
        """Nothing to release: the index lives in this process."""

    def nbytes(self) -> int:
        """Bytes held for messages' dense vectors and SAE codes (allocated, spare capacity included).

        Records, BM25 and an approximate index type's own FAISS index are not counted; see
        ``memory_per_message`` for the parts.
        """
        return self._dense.nbytes()["held"] + self._sparse.nbytes()["held"]

    def memory_per_message(self) -> dict[str, Any]:
        """What ``nbytes`` counts, in parts and per message.

        Returns:
            ``{"messages", "rows", "dense", "codes", "total", "used", "per_message"}``: live
            messages; rows held (a deleted or replaced message's row stays until the memory is
            saved and loaded again); the bytes allocated for vectors and for codes (spare
            capacity included: arrays grow by ``saememory.arrays.GROWTH``) and their sum
            (``nbytes()``); the bytes of the rows themselves (no spare capacity); and
            ``total / messages`` (0 when empty). About 2,250 B a message are used for 384-d
            vectors and 615 active features of 4,096, and at most 1.1x that is held.
        """
        dense, codes = self._dense.nbytes(), self._sparse.nbytes()
        total, messages = dense["held"] + codes["held"], len(self.row_of)
        return {"messages": messages, "rows": self._dense.n, "dense": dense["held"], "codes": codes["held"],
                "total": total, "used": dense["used"] + codes["used"], "per_message": total / messages if messages else 0.0}

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

    def fetch(self, user_id: str, message_ids: list[str], codes: bool = True) -> list[tuple[dict[str, Any], sp.csr_matrix | None]]:
        """Records and decoded float32 SAE codes (exactly the values ``score`` uses); see ``Backend.fetch``."""
        rows = [self.row_of.get((user_id, mid)) for mid in message_ids]
        return [(self._records[r], self._sparse.row(r) if codes else None) for r in rows if r is not None]

    def vectors(self, user_id: str, message_ids: list[str]) -> dict[str, np.ndarray]:
        """Decoded float32 dense vectors (exactly the values ``score`` uses); see ``Backend.vectors``."""
        rows = {mid: self.row_of.get((user_id, mid)) for mid in message_ids}
        return {mid: self._dense.decode(r) for mid, r in rows.items() if r is not None}

    def add(self, records: list[dict[str, Any]], dense: np.ndarray, sparse: sp.csr_matrix,
            seq: list[int] | None = None) -> None:
        """Adds rows; the caller has validated ids, vectors and codes. ``seq``: their places in insertion order.

        Vectors and codes are quantised (``saememory.arrays``) before anything changes; an
        approximate index type's FAISS index gets the decoded vectors, as a save rebuilds it.
        """
        self._check_aligned()
        first = len(self._records)
        ids = np.arange(first, first + len(records), dtype=np.int64)
        dense_parts, sparse_parts = quantize_rows(dense), quantize_codes(sparse, self.d_sae)
        marks = (self._dense.n, self._sparse.rows, len(self.lexical), len(self.lexical.vocab), len(self._seq),
                 self._next_seq, self._trained,
                 {(r["user_id"], r["id"]): self.row_of.get((r["user_id"], r["id"])) for r in records})  # replace: old rows
        try:
            self._dense.append_quantized(*dense_parts)
            self._sparse.append_quantized(*sparse_parts)
            self.lexical.add([record["content"] for record in records])
            if seq is None:
                seq = range(self._next_seq, self._next_seq + len(records))
                self._next_seq += len(records)
            self._seq.extend(seq)
            if self._faiss is not None:
                decoded = dequantize_rows(*dense_parts)
                if self._trained:
                    self._faiss.add_with_ids(decoded, ids)
                elif len(self.row_of) + len(records) >= self._min_train:
                    # Enough messages at last: train on every live one, then index them all.
                    live = np.array(sorted(self.row_of.values()), dtype=np.int64)
                    vectors = np.concatenate([self._dense.decode(live), decoded])
                    self._faiss.train(vectors)
                    self._faiss.add_with_ids(vectors, np.concatenate([live, ids]))
                    self._trained = True
            for row, record in zip(ids.tolist(), records):
                self._records.append(record)
                self.row_of[(record["user_id"], record["id"])] = row
                self._user_rows.setdefault(record["user_id"], set()).add(row)
                self._sorted_rows.pop(record["user_id"], None)
        except BaseException:  # a Ctrl-C or MemoryError too: rows must stay aligned with records
            self._undo_add(first, records, ids, marks)
            raise

    def _check_aligned(self) -> None:
        """Refuses to go on when vectors, codes, BM25 rows and records are not one row each."""
        sizes = (len(self._records), self._dense.n, self._sparse.rows, len(self.lexical), len(self._seq))
        if len(set(sizes)) != 1:
            raise RuntimeError(f"This memory's rows are out of step (records, vectors, codes, BM25, order: {sizes}); "
                               "it cannot be added to or saved. Load the last save again.")

    def _undo_add(self, first: int, records: list[dict[str, Any]], ids: np.ndarray, marks: tuple) -> None:
        """Puts every structure back as it was before an ``add`` that stopped part-way.

        Vectors, codes and BM25 rows are row-aligned with the records; left longer than them,
        the next message would be scored (and explained) with the vectors of the one whose add
        stopped, possibly another user's.
        """
        dense_n, sparse_n, lexical_n, vocab_n, seq_n, next_seq, trained, previous = marks
        for row, record in zip(ids.tolist(), records):
            key = (record["user_id"], record["id"])
            if self.row_of.get(key) == row:
                if previous[key] is None:
                    del self.row_of[key]
                else:  # an update: its id addresses the old version again
                    self.row_of[key] = previous[key]
            self._user_rows.get(record["user_id"], set()).discard(row)
            self._sorted_rows.pop(record["user_id"], None)
        del self._records[first:]
        self._dense.truncate(dense_n)
        self._sparse.truncate(sparse_n)
        self.lexical.truncate(lexical_n, vocab_n)
        del self._seq[seq_n:]
        self._next_seq = next_seq
        if self._faiss is not None:
            if not trained and self._trained:  # trained by this add: a new untrained index, as before it
                self._faiss, self._trained = self._new_faiss(), False
            elif self._trained and self._removable:
                self._faiss.remove_ids(ids)
            # Otherwise (HNSW cannot remove) ids past the end stay in the graph: they only name
            # candidates, which are checked against the owner's rows and scored from the arrays.

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
        if self._faiss is not None and self._removable and self._trained:
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

        With an exact index every message of the user is a candidate, scored from the stored
        int8 vectors (an approximate index that is not trained yet does the same). Otherwise the
        candidates are the union of FAISS' top ``candidates`` and the top ``candidates`` of each
        other signal, and their dense scores too come from the stored vectors.

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
        q_dense = np.asarray(q_dense, dtype=np.float32).reshape(-1)
        others = {"sparse": self._sparse_scores(q_sparse, allowed)}
        if query_text is not None:
            others["bm25"] = self.lexical.scores(query_text, allowed)
        if self._faiss is None or not self._trained:  # exact, or not trained yet: every row of the user, best first
            scores = self._dense.dot(allowed, q_dense)
            order = np.lexsort((allowed, -scores))
            found, found_scores = allowed[order], scores[order]
        else:  # FAISS' candidates only: they are scored from the arrays below
            _, found = self._faiss.search(q_dense.reshape(1, -1), min(allowed.size, candidates),
                                          params=self._search_params(allowed))
            found, found_scores = found[0][found[0] >= 0], None
        # Defence in depth: nothing outside this user's (and session's) rows may pass.
        inside = np.isin(found, allowed)
        found = found[inside]
        if self.exact:
            rows, dense = found, found_scores[inside]
        else:
            tops = [allowed[np.argsort(-scores, kind="stable")[:candidates]] for scores in others.values()]
            extra = np.array([self.row_of[(user_id, i)] for i in include or () if (user_id, i) in self.row_of],
                             dtype=np.int64)
            rows = np.unique(np.concatenate([found, *tops, extra[np.isin(extra, allowed)]]))
            dense = self._dense.dot(rows, q_dense)
        position = np.searchsorted(allowed, rows)
        signals = {"dense": dense.astype(np.float32)}
        signals.update({name: scores[position].astype(np.float32) for name, scores in others.items()})
        return rows, signals

    def _sparse_scores(self, q_sparse: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
        if self.d_sae == 0 or q_sparse.nnz == 0:
            return np.zeros(rows.size, dtype=np.float32)
        return self._sparse.dot(rows, q_sparse)

    # Persistence -----------------------------------------------------------------------------

    def save(self, path: str | Path, manifest: dict[str, Any], *, overwrite: bool = False) -> None:
        """Writes a new snapshot next to the old one, then atomically points ``CURRENT`` at it.

        A crash at any point leaves the previous snapshot readable. Only live rows are written,
        as stored (format 3: ``DENSE_FILES`` and ``SPARSE_FILES``, ``.npy`` arrays without
        pickle), with ``faiss.index`` for an approximate index type only. Savers of one folder
        take turns (``snapshot.write_snapshot`` locks it).

        A folder this backend was loaded from or saved to must still hold that snapshot, and one
        it never read must hold no save: otherwise (another writer saved there since, or the
        folder holds a memory this one never loaded) the save is refused rather than losing
        messages, unless ``overwrite``.

        Raises:
            ValueError: If a message holds NaN or infinite values (a save ``load`` would refuse);
                the previous save is kept.
            snapshot.SaveConflictError: If another writer saved to the folder since this backend
                read or wrote it, or it holds a save this backend never read, and ``overwrite``
                is False.
        """
        self._check_aligned()
        live = np.array(sorted(self.row_of.values(), key=self._seq.__getitem__), dtype=np.int64)  # insertion order

        def write_files(tmp: Path) -> None:
            dense = (self._dense.values[live], self._dense.scale[live])
            sparse = self._sparse.parts(live)
            bad = ~np.isfinite(dense[1]) | ~np.isfinite(sparse[3])  # a NaN or infinity anywhere in a row gives these
            if bad.any():
                record = self._records[live[np.argmax(bad)]]
                raise ValueError(f"Not saved to {path}: message {record['id']!r} of user {record['user_id']!r} holds "
                                 "NaN or infinite values; delete it and add it again with finite vectors and codes.")
            for name, array in zip(DENSE_FILES + SPARSE_FILES, dense + sparse):
                np.save(tmp / name, array, allow_pickle=False)
            self.lexical.select(live).save(tmp)
            if not self.exact:
                faiss_index = self._new_faiss()
                if live.size and (faiss_index.is_trained or live.size >= self._min_train):
                    vectors = self._dense.decode(live)
                    if not faiss_index.is_trained:
                        faiss_index.train(vectors)
                    faiss_index.add_with_ids(vectors, np.arange(live.size, dtype=np.int64))
                _faiss_module().write_index(faiss_index, str(tmp / "faiss.index"))
            with open(tmp / "records.jsonl", "w", encoding="utf-8") as handle:
                for row in live.tolist():
                    handle.write(json.dumps(self._records[row], ensure_ascii=False) + "\n")

        full = {**manifest, "backend": self.name, "dim": self.dim, "d_sae": self.d_sae,
                "index_type": self.index_type, "n_messages": int(live.size)}
        folder = os.path.realpath(path)
        self._snapshots[folder] = snapshot.write_snapshot(
            path, full, write_files, expect=None if overwrite else self._snapshots.get(folder, ""))

    @classmethod
    def load(cls, path: str | Path, *, identity: dict[str, Any] | None = None,
             stemmer: str | None = None) -> tuple[FaissBackend, dict[str, Any]]:
        """Reads the live snapshot under a shared lock, refusing any file that fails a check.

        Every data file must match its sha256 in the manifest (saves of format 2 on), and hold
        what a save writes: int8 vectors and codes with finite scales and feature indices in
        range (format 3; saves of formats 1 and 2 hold finite float32 vectors and codes, which
        are quantised as they load), well-formed records with unique (user_id, id) pairs, and
        ``n_messages`` rows in every part. ``faiss.index`` is read for an approximate index type
        only (exact search needs no FAISS).

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
            if manifest["format_version"] >= 3:
                dense, sparse = _read_compact(path, folder, n, dim, d_sae)
            else:
                dense, sparse = _read_float32(path, folder, n, dim, d_sae)
            stored = None
            if not index.exact:
                faiss = _faiss_module()
                stored = snapshot.read_part(path, "faiss.index", lambda: faiss.read_index(str(folder / "faiss.index")))
                want = n if stored.is_trained else 0  # an untrained index holds nothing yet
                if (stored.ntotal, stored.d) != (want, dim):
                    raise snapshot.corrupt(path, "faiss.index", f"holds {stored.ntotal} vectors of width {stored.d}, "
                                           f"but should hold {want} of width {dim} (manifest: n_messages={n}, dim={dim})")
            lexical = snapshot.read_part(path, "the BM25 files (bm25_*)", lambda: LexicalIndex.load(folder))
            if len(lexical) != n:
                raise snapshot.corrupt(path, "bm25_lengths.npy", f"holds {len(lexical)} lengths, but the manifest "
                                       f"says n_messages={n}")
            snapshot.check_sparse(path, "bm25_tf.npz", lexical._tf.view, (n, len(lexical.vocab)))
            records = snapshot.read_records(path, folder / "records.jsonl", n)
        index.lexical = lexical
        if n:
            if stored is not None:
                index._faiss, index._trained = stored, stored.is_trained
            index._dense.append_quantized(*dense)  # allocated to fit: no spare capacity after a load
            index._sparse.append_quantized(*sparse)
        index._seq, index._next_seq = list(range(n)), n  # saved in insertion order
        for row, record in enumerate(records):
            index._records.append(record)
            index.row_of[(record["user_id"], record["id"])] = row
            index._user_rows.setdefault(record["user_id"], set()).add(row)
        index._snapshots[os.path.realpath(path)] = folder.name
        return index, manifest


def _read_compact(path: str | Path, folder: Path, n: int, dim: int, d_sae: int) -> tuple[tuple, tuple]:
    """A format 3 save's vectors and codes, checked: ``(Int8Rows parts, Int8CSR parts)``."""
    dense = tuple(snapshot.read_array(path, folder, name) for name in DENSE_FILES)
    snapshot.check_int8_rows(path, DENSE_FILES, *dense, (n, dim))
    sparse = tuple(snapshot.read_array(path, folder, name) for name in SPARSE_FILES)
    snapshot.check_int8_csr(path, SPARSE_FILES, sparse, (n, d_sae), index_dtype(d_sae))
    return dense, sparse


def _read_float32(path: str | Path, folder: Path, n: int, dim: int, d_sae: int) -> tuple[tuple, tuple]:
    """A format 1 or 2 save's float32 vectors (``dense.npy``) and codes (``sparse.npz``), checked, then quantised."""
    dense = snapshot.read_part(path, "dense.npy", lambda: np.load(folder / "dense.npy", allow_pickle=False))
    snapshot.check_dense(path, "dense.npy", dense, (n, dim))
    sparse = snapshot.read_part(path, "sparse.npz", lambda: sp.load_npz(folder / "sparse.npz"))
    snapshot.check_sparse(path, "sparse.npz", sparse, (n, d_sae))
    return quantize_rows(dense), quantize_codes(sparse, d_sae)


def _faiss_module() -> ModuleType:
    """FAISS, imported on first use: only approximate index types (and their saves) need it."""
    import faiss

    return faiss


def _ivf_with_selectors(faiss: ModuleType) -> tuple[type, ...]:
    """IVF kinds whose search takes an ID selector (the additive quantizers, RQ and LSQ, do not)."""
    return tuple(getattr(faiss, name) for name in ("IndexIVFFlat", "IndexIVFScalarQuantizer", "IndexIVFPQ",
                                                   "IndexIVFPQFastScan") if hasattr(faiss, name))
