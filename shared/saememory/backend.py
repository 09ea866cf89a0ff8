"""The storage backend interface ``SAEMemory`` talks to, and the parts its implementations share.

Two implementations: ``saememory.index.MemoryIndex`` (in-process: FAISS + CSR, the default) and
``saememory.milvus.MilvusBackend`` (milvus-lite file or Milvus server). Messages are addressed
by their stable ids; the encoders, fusion, explanations and adapters sit above this interface
and work the same on either.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp

FORMAT_VERSION = 1
CURRENT = "CURRENT"


@runtime_checkable
class Backend(Protocol):
    """Stores messages' records, dense vectors and SAE codes, and scores one user's messages.

    Every read is restricted to one user (and optionally one session). Callers validate ids,
    vectors and codes before ``add``, and check that ids exist before ``delete``.
    """

    dim: int
    d_sae: int

    def __len__(self) -> int: ...

    def __contains__(self, message_id: object) -> bool: ...

    def users(self) -> list[str]:
        """Users with at least one message, sorted."""

    def stored(self, message_ids: list[str]) -> set[str]:
        """Which of these ids are stored (one round trip for an external engine)."""

    def validate(self, records: list[dict[str, Any]]) -> None:
        """Raises ValueError for records this backend cannot store, before anything changes."""

    def get(self, message_id: str) -> dict[str, Any] | None:
        """The stored record, or None."""

    def records(self, user_id: str, session_id: str | None = None) -> list[dict[str, Any]]:
        """One user's (and session's) records, in insertion order."""

    def add(self, records: list[dict[str, Any]], dense: np.ndarray, sparse: sp.csr_matrix) -> None:
        """Stores records with their (validated) vectors and codes."""

    def replace(self, records: list[dict[str, Any]], dense: np.ndarray, sparse: sp.csr_matrix) -> None:
        """Replaces stored messages with the same ids; a failure never leaves an id with no version."""

    def delete(self, message_ids: list[str]) -> None:
        """Removes stored messages by id."""

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
        """Candidate ids of one user (and session) and, aligned with them, per-signal scores.

        Signals are ``"dense"`` and ``"sparse"`` (and ``"bm25"`` when ``query_text`` is given).
        ``include`` names ids that must be among the candidates if they belong to the user.
        """

    def fetch(self, message_ids: list[str]) -> list[tuple[dict[str, Any], sp.csr_matrix]]:
        """Records and SAE codes (1 x d_sae CSR rows) of stored messages, in the given order."""

    def save(self, path: str | Path, manifest: dict[str, Any]) -> None:
        """Persists the memory (or, for an external engine, a manifest pointing at it)."""


def write_snapshot(path: str | Path, manifest: dict[str, Any], write_files=None) -> None:
    """Writes a new snapshot directory next to the old one, then atomically points ``CURRENT`` at it.

    A crash at any point leaves the previous snapshot readable.

    Args:
        path: The memory's directory.
        manifest: Written as ``manifest.json`` with ``format_version`` added.
        write_files: Called with the temporary snapshot directory to write the data files.
            Defaults to None (a manifest only).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    snapshot = f"snapshot-{uuid.uuid4().hex[:12]}"
    tmp = path / f".tmp-{snapshot}"
    tmp.mkdir()
    if write_files is not None:
        write_files(tmp)
    (tmp / "manifest.json").write_text(json.dumps({**manifest, "format_version": FORMAT_VERSION}, indent=2))
    _fsync_dir(tmp)
    os.replace(tmp, path / snapshot)
    pointer = path / f".{CURRENT}.tmp"
    pointer.write_text(snapshot)
    os.replace(pointer, path / CURRENT)  # the commit point
    _fsync_dir(path)
    for old in path.iterdir():
        if old.name != snapshot and (old.name.startswith("snapshot-") or old.name.startswith(".tmp-")):
            shutil.rmtree(old, ignore_errors=True)


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
