"""saememory.backends.faiss: the FAISS index types that serve per-user search, deletion and training."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from saememory import SAEMemory
from saememory.backends import FaissBackend

DIM, D_SAE = 8, 16
SUPPORTED = ["Flat", "HNSW32", "IVF4,Flat", "IVF4,SQ8", "IVF2,PQ2x4", "SQ8"]


def _batch(rng, user: str, start: int, n: int):
    records = [{"id": f"m{start + i}", "content": f"message {start + i}", "role": "user", "session_id": "s",
                "timestamp": None, "user_id": user, "metadata": {}} for i in range(n)]
    dense = rng.standard_normal((n, DIM)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    sparse = sp.random(n, D_SAE, density=0.3, format="csr", dtype=np.float32, random_state=start)
    return records, dense, sparse


def _search(index: FaissBackend, user: str, rng, candidates: int = 500) -> list[str]:
    q = rng.standard_normal(DIM).astype(np.float32)
    ids, signals = index.score(user, None, q, sp.csr_matrix((1, D_SAE), dtype=np.float32), candidates)
    assert all(len(v) == len(ids) for v in signals.values())
    return ids


@pytest.mark.parametrize("index_type", SUPPORTED)
def test_supported_types_select_delete_update_and_train_late(index_type):
    rng = np.random.default_rng(0)
    index = FaissBackend(index_type)
    index.open(DIM, D_SAE)
    # A first batch far too small to train an IVF or PQ index: searched exactly meanwhile.
    index.add(*_batch(rng, "alice", 0, 3))
    index.add(*_batch(rng, "bob", 100, 2))
    assert set(_search(index, "alice", rng)) == {"m0", "m1", "m2"}
    assert set(_search(index, "bob", rng)) == {"m100", "m101"}
    index.delete("alice", ["m1"])
    records, dense, sparse = _batch(rng, "alice", 2, 1)  # delete, then update: once aborted the interpreter
    index.replace(records, dense, sparse)
    assert set(_search(index, "alice", rng)) == {"m0", "m2"}
    # Enough messages to train: from then on FAISS gives candidates, still one user's only.
    for start in range(1000, 1000 + 1100, 100):
        index.add(*_batch(rng, "alice", start, 100))
    index.delete("alice", ["m1000", "m1001"])
    assert index._trained
    found = _search(index, "alice", rng, candidates=20)
    assert found and not {"m100", "m101", "m1", "m1000", "m1001"} & set(found)
    assert set(_search(index, "bob", rng, candidates=20)) == {"m100", "m101"}


@pytest.mark.parametrize("index_type", ["PQ4", "NSG32", "PCA4,Flat", "HNSW32_SQ8", "LSH", "not an index"])
def test_other_types_are_refused_at_construction(index_type, encoder):
    with pytest.raises(ValueError, match="index_type.*use one of"):
        SAEMemory(encoder, backend=FaissBackend(index_type))


@pytest.mark.parametrize("index_type", ["IVF4,Flat", "HNSW32"])
def test_a_memory_with_an_approximate_index_saves_and_loads_before_and_after_training(index_type, encoder, tmp_path):
    memory = SAEMemory(encoder, backend=FaissBackend(index_type))
    memory.add([{"content": "My sister Ana moved to Lisbon.", "id": "a"}, {"content": "I like tea.", "id": "b"}])
    memory.delete("b")
    memory.update([{"id": "a", "content": "My sister Ana moved to Porto."}])
    memory.save(tmp_path / "m")
    loaded = SAEMemory.load(tmp_path / "m")
    assert [h.id for h in loaded.search("Where does my sister live?")] == ["a"]
    loaded.add([{"content": f"Note number {i} about the weather.", "id": f"n{i}"} for i in range(160)])
    loaded.delete("n3")
    assert loaded.search("Where does my sister live?", k=1)[0].id == "a"
    loaded.save(tmp_path / "m")
    assert len(SAEMemory.load(tmp_path / "m")) == 160


@pytest.mark.parametrize("index_type", ["IVF2,RQ2x4", "IVF2,LSQ2x4"])
def test_ivf_kinds_without_id_selectors_are_refused(index_type, encoder):
    with pytest.raises(ValueError, match="ID selector"):
        SAEMemory(encoder, backend=FaissBackend(index_type))
