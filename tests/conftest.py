"""Shared fixtures: the real bundled model and SAE, loaded once per test session."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests must never reach for the network

from saememory import Encoder, SAEMemory  # noqa: E402
from saememory.backends import FaissBackend  # noqa: E402

from tests.helpers import CONVERSATION  # noqa: E402


@pytest.fixture(scope="session")
def encoder() -> Encoder:
    """The default encoder: bundled all-MiniLM-L6-v2 with the default residual SAE."""
    return Encoder()


@pytest.fixture
def memory(encoder: Encoder) -> SAEMemory:
    """A fresh memory holding the small multi-session conversation of tests/helpers.py."""
    mem = SAEMemory(encoder)
    mem.add(CONVERSATION)
    return mem


BACKENDS = ["in-process", "milvus"]


@pytest.fixture(scope="session")
def milvus_db(tmp_path_factory) -> str:
    """One milvus-lite file per test session; each test empties the collections it uses."""
    return str(tmp_path_factory.mktemp("milvus") / "memory.db")


@pytest.fixture(params=BACKENDS)
def make(request, encoder):
    """Builds fresh, empty memories on the backend under test: ``make(encoder=None, **settings)``.

    On Milvus, the n-th memory of a test gets collection ``test_<n>_<encoder hash>``, emptied
    first (creating a collection costs pymilvus 1.5 s of index polling, so they are reused; a
    collection remembers its encoder and refuses another).
    """
    made = []

    def build(enc=None, index: str | None = None, **kwargs) -> SAEMemory:
        """``index`` is an approximate index for either backend ("HNSW32": FAISS' HNSW32, Milvus' HNSW)."""
        enc = enc or encoder
        if request.param == "milvus":
            from pymilvus import MilvusClient

            from saememory.backends.milvus import LITE_CONNECTION, MilvusBackend

            identity = hashlib.sha1(json.dumps(enc.identity(), sort_keys=True).encode()).hexdigest()[:12]
            db, name = request.getfixturevalue("milvus_db"), f"test_{len(made)}_{identity}_{index or 'flat'}"[:255]
            client = MilvusClient(db, **LITE_CONNECTION)  # no keepalive pings, which the engine refuses
            if client.has_collection(name):
                client.delete(name, filter='id != ""')
            client.close()
            backend = MilvusBackend(db, name, index="HNSW" if index else "FLAT")
        else:
            backend = FaissBackend(index or "Flat")
        memory = SAEMemory(enc, backend=backend, **kwargs)
        made.append(memory)
        assert len(memory) == 0
        return memory

    build.backend = request.param
    return build
