"""The storage backend interface ``SAEMemory`` talks to.

Two implementations: ``saememory.backends.faiss.FaissBackend`` (in-process: int8 vectors and
codes, FAISS for approximate indexes; the default) and ``saememory.backends.milvus.MilvusBackend``
(a milvus-lite file or a Milvus server). A backend is made with its own options, opened by ``SAEMemory`` with the encoder's
widths, and closed with the memory. Messages are addressed by owner and id; the encoders,
ranking, explanations and adapters sit above this interface and work the same on either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp


@runtime_checkable
class Backend(Protocol):
    """Stores messages' records, dense vectors and SAE codes, and scores one user's messages.

    A message is identified by its owner and its id together: two users may hold the same id,
    and every id-based method acts within one user's messages only, so another user's message
    is answered exactly like a missing one. Callers validate records, vectors and codes before
    ``add``, and check that ids exist before ``replace`` and ``delete``.
    """

    name: ClassVar[str]  # recorded in the manifest, so ``load`` rebuilds the right backend
    dim: int
    d_sae: int

    def open(self, dim: int, d_sae: int, *, identity: dict[str, Any], stemmer: str | None) -> None:
        """Connects or allocates for an encoder of these widths; ``SAEMemory`` calls it once.

        Args:
            dim: Dense vector width.
            d_sae: SAE code width (0 for a dense-only encoder).
            identity: The encoder's identity (model, SAE hash, pooling); a backend that keeps
                data outside the save folder records it and refuses another.
            stemmer: BM25's Snowball language, or None.

        Raises:
            ValueError: If the options do not fit these widths or this encoder.
        """

    @classmethod
    def load(cls, path: str | Path, *, identity: dict[str, Any], stemmer: str | None) -> tuple[Backend, dict[str, Any]]:
        """The backend saved at ``path``, opened, and the manifest read with it (under one lock)."""

    def __len__(self) -> int:
        """All stored messages, of every user."""

    def users(self) -> list[str]:
        """Users with at least one message, sorted."""

    def stored(self, user_id: str, message_ids: list[str]) -> set[str]:
        """Which of these ids the user holds (one round trip for an external engine)."""

    def validate(self, records: list[dict[str, Any]]) -> None:
        """Raises ValueError for records this backend cannot store, before anything changes."""

    def get(self, user_id: str, message_id: str) -> dict[str, Any] | None:
        """The user's stored record with this id, or None."""

    def records(self, user_id: str, session_id: str | None = None) -> list[dict[str, Any]]:
        """One user's (and session's) records, in insertion order."""

    def add(self, records: list[dict[str, Any]], dense: np.ndarray, sparse: sp.csr_matrix) -> None:
        """Stores new records (each names its ``user_id``) with their validated vectors and codes."""

    def replace(self, records: list[dict[str, Any]], dense: np.ndarray, sparse: sp.csr_matrix) -> None:
        """Replaces stored messages with the same owner and id; a failure never leaves one with no version."""

    def delete(self, user_id: str, message_ids: list[str]) -> None:
        """Removes the user's messages with these ids."""

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
        """Candidate ids of one user's messages that pass the filters and, aligned with them, per-signal scores.

        Signals are ``"dense"`` and ``"sparse"`` (and ``"bm25"`` when ``query_text`` is given).
        ``include`` names ids that must be among the candidates if they belong to the user and
        pass the filters. The filters: ``session_id``; ``since``/``until``, UTC instants in
        ``saememory.times.iso`` form, both inclusive (a message with no known time passes neither);
        ``roles``, the roles to keep. None: no filter.
        """

    def fetch(self, user_id: str, message_ids: list[str], codes: bool = True) -> list[tuple[dict[str, Any], sp.csr_matrix | None]]:
        """Records and SAE codes (1 x d_sae CSR rows) of the user's messages among these ids, in order.

        Ids the user does not hold are skipped. With ``codes=False`` the codes are None (cheaper:
        ranking reads the records of many candidates and the codes of the few it returns).
        """

    def vectors(self, user_id: str, message_ids: list[str]) -> dict[str, np.ndarray]:
        """Dense vectors of the user's messages among these ids, by id; ids the user does not hold are skipped."""

    def save(self, path: str | Path, manifest: dict[str, Any], *, overwrite: bool = False) -> None:
        """Persists the memory (or, for an external engine, a manifest pointing at it). A backend
        whose data is in the folder refuses without ``overwrite`` (``SaveConflictError``) to
        replace a save another writer made after it read or wrote the folder; one whose data
        lives in an engine (Milvus) writes only a manifest and has nothing to undo."""

    def close(self) -> None:
        """Releases connections or files; the backend is not used afterwards."""




def matches(record: dict[str, Any], session_id: str | None, since: str | None, until: str | None,
            roles: tuple[str, ...] | None) -> bool:
    """Whether a record passes a search's filters (see ``Backend.score``); both backends check with it."""
    time = record.get("time")
    return ((session_id is None or record["session_id"] == session_id)
            and (since is None or (time is not None and time >= since))
            and (until is None or (time is not None and time <= until))
            and (roles is None or record["role"] in roles))
