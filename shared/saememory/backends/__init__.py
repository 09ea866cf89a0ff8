"""Where a memory's messages live: the ``Backend`` protocol and its two implementations.

- ``FaissBackend`` (``faiss.py``): in this process, dense vectors and SAE codes as int8 with a
  scale per row (``saememory.arrays``), FAISS only for approximate index types; saved as
  checksummed snapshot folders (``snapshot.py``). The default.
- ``MilvusBackend`` (``milvus.py``): a milvus-lite file or a Milvus server, for memories that
  outgrow one machine. Needs ``pip install "saememory[milvus]"``.
"""

from __future__ import annotations

from typing import Any

from saememory.backends.base import Backend
from saememory.backends.faiss import FaissBackend

NAMES = ("faiss", "milvus")


def backend_class(name: str) -> type:
    """The backend class a manifest names; ``MilvusBackend`` is imported only when asked for.

    Raises:
        ValueError: For another name.
    """
    if name == "faiss":
        return FaissBackend
    if name == "milvus":
        from saememory.backends.milvus import MilvusBackend

        return MilvusBackend
    raise ValueError(f"backend {name!r} is not one of {NAMES}.")


def __getattr__(name: str) -> Any:
    if name == "MilvusBackend":  # without importing pymilvus until it is used
        from saememory.backends.milvus import MilvusBackend

        return MilvusBackend
    raise AttributeError(f"module 'saememory.backends' has no attribute {name!r}")


__all__ = ["Backend", "FaissBackend", "MilvusBackend", "NAMES", "backend_class"]
