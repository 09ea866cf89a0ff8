"""saememory.backends.faiss: the FAISS index types that serve per-user search, deletion and training; the
compact int8 storage of vectors and codes (saememory.arrays), its scores, saves and memory per message."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from saememory import SAEMemory, arrays
from saememory.arrays import Int8CSR, Int8Rows, as_stored
from saememory.backends import FaissBackend, snapshot
from saememory.backends.faiss import DENSE_FILES, SPARSE_FILES
from tests.helpers import ROOT, save_float32_format

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
    for mid in ("m1002", "m1050", "m1003"):  # removals one by one after training: IVF once aborted the interpreter
        index.delete("alice", [mid])
        assert mid not in _search(index, "alice", rng, candidates=1200)


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


# Compact storage: int8 vectors and codes, scored as stored -------------------------------------


def _records(user: str, ids: list[str]) -> list[dict]:
    return [{"id": i, "content": f"note {i} of {user}", "role": "user", "session_id": "s", "timestamp": None,
             "user_id": user, "metadata": {}} for i in ids]


def _unit(rng, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _codes(rng, n: int, width: int, nnz: int, signed: bool = False, empty: tuple[int, ...] = (),
           floor: float = 0.0) -> sp.csr_matrix:
    """SAE-like codes: ``nnz`` active features a row, activations ``floor`` + exponential (some negative if
    ``signed``), L2-normalised, with the rows in ``empty`` holding none."""
    rows = []
    for i in range(n):
        k = 0 if i in empty else nnz
        cols = np.sort(rng.choice(width, k, replace=False))
        values = (floor + rng.exponential(1.0, k)).astype(np.float32)
        if signed:
            values *= rng.choice([-1, 1], k)
        values /= np.linalg.norm(values) or 1.0
        rows.append(sp.csr_matrix((values, (np.zeros(k, int), cols)), shape=(1, width)))
    return sp.vstack(rows, format="csr").astype(np.float32)


def test_quantised_vectors_and_codes_stay_within_half_a_step():
    rng = np.random.default_rng(0)
    dense = _unit(rng, 300, 384)
    dense[7] = 0  # a zero vector stays zero
    rows = Int8Rows(384)
    rows.append(dense)
    decoded = rows.view
    assert rows.values.dtype == np.int8 and rows.scale.dtype == np.float32
    assert np.all(np.abs(decoded - dense) <= rows.scale[:, None] / 2 * (1 + 1e-5))
    cosine = (decoded * dense).sum(1)[np.arange(300) != 7] / np.linalg.norm(decoded, axis=1)[np.arange(300) != 7]
    assert (1 - cosine).max() < 0.01
    assert rows.scale[7] == 0 and not decoded[7].any()

    for signed in (False, True):  # SAE codes are >= 0; a custom encoder's may not be: every sign is kept
        codes = _codes(rng, 50, 4096, 600, signed=signed, empty=(0, 49))
        csr = Int8CSR(4096)
        csr.append(codes)
        assert csr.indices.dtype == np.uint16 and csr.values.dtype == np.int8
        step = csr.scale[:50]
        diff = np.abs(csr.view.toarray() - codes.toarray())
        assert np.all(diff <= step[:, None] / 2 * (1 + 1e-5))
        assert (csr.view.toarray() < 0).any() == signed
        assert csr.view.getnnz(axis=1)[[0, 49]].tolist() == [0, 0]
    wide = Int8CSR(70_000)  # wider than uint16 indices reach
    wide.append(sp.csr_matrix(([1.0, 0.5], ([0, 0], [3, 69_999])), shape=(1, 70_000), dtype=np.float32))
    assert wide.indices.dtype == np.int32 and wide.view.indices.tolist() == [3, 69_999]


def _interleaved(rng, users=("alice", "bob", "carol"), n=60, empty=()):
    """One batch whose rows alternate between users, and the float32 vectors and codes given."""
    owners = [users[i % len(users)] for i in range(n)]
    records = [_records(u, [f"m{i}"])[0] for i, u in enumerate(owners)]
    return records, _unit(rng, n, DIM * 4), _codes(rng, n, D_SAE * 8, 20, empty=empty)


@pytest.mark.parametrize("index_type", ["Flat", "HNSW32"])
def test_scores_are_the_decoded_dot_products_in_bounded_chunks(index_type, monkeypatch):
    monkeypatch.setattr(arrays, "DENSE_CHUNK", 7)  # chunks end inside a user's rows
    monkeypatch.setattr(arrays, "SPARSE_CHUNK", 50)
    rng = np.random.default_rng(1)
    index = FaissBackend(index_type)
    index.open(DIM * 4, D_SAE * 8)
    empty = tuple(range(0, 60, 7)) + (59,)  # the first, the last and others: no active feature
    records, dense, codes = _interleaved(rng, empty=empty)
    index.add(records, dense, codes)
    index.delete("bob", ["m1"])
    q_dense, q_code = _unit(rng, 1, DIM * 4)[0], _codes(rng, 1, D_SAE * 8, 40)
    for user in ("alice", "bob", "carol"):
        ids, signals = index.score(user, None, q_dense, q_code, candidates=100)
        assert sorted(ids) == sorted(r["id"] for r in records if r["user_id"] == user and r["id"] != "m1")
        vectors = index.vectors(user, ids)
        codes_by_id = {record["id"]: code for record, code in index.fetch(user, ids)}
        for position, mid in enumerate(ids):
            assert signals["dense"][position] == pytest.approx(float(vectors[mid] @ q_dense), abs=1e-6)
            code = codes_by_id[mid]
            # What an explanation adds up, feature by feature, is the sparse score.
            by_feature = sum(float(a) * float(q_code[0, f]) for f, a in zip(code.indices, code.data))
            assert signals["sparse"][position] == pytest.approx(by_feature, abs=1e-6)
            if int(mid[1:]) in empty:
                assert signals["sparse"][position] == 0 and code.nnz == 0
        stored_dense, stored_codes = as_stored(dense, codes)
        rows = [int(mid[1:]) for mid in ids]
        np.testing.assert_array_equal(np.stack([vectors[mid] for mid in ids]), stored_dense[rows])
        assert (stored_codes[rows] != sp.vstack([codes_by_id[mid] for mid in ids])).nnz == 0
    no_code = sp.csr_matrix((1, D_SAE * 8), dtype=np.float32)
    assert not index.score("alice", None, q_dense, no_code, 100)[1]["sparse"].any()


def test_a_user_whose_messages_have_no_active_feature():
    rng = np.random.default_rng(2)
    index = FaissBackend()
    index.open(DIM, D_SAE)
    index.add(_records("alice", ["a", "b", "c"]), _unit(rng, 3, DIM), sp.csr_matrix((3, D_SAE), dtype=np.float32))
    index.add(_records("bob", ["a"]), _unit(rng, 1, DIM), _codes(rng, 1, D_SAE, 4))
    ids, signals = index.score("alice", None, _unit(rng, 1, DIM)[0], _codes(rng, 1, D_SAE, 8), candidates=10)
    assert sorted(ids) == ["a", "b", "c"] and signals["sparse"].tolist() == [0.0, 0.0, 0.0]
    assert all(code.nnz == 0 and code.shape == (1, D_SAE) for _, code in index.fetch("alice", ids))


def test_users_stay_apart_when_their_rows_interleave():
    rng = np.random.default_rng(3)
    index = FaissBackend()
    index.open(DIM * 4, D_SAE * 8)
    records, dense, codes = _interleaved(rng)
    index.add(records, dense, codes)
    index.replace(_records("alice", ["m0"]), _unit(rng, 1, DIM * 4), _codes(rng, 1, D_SAE * 8, 20))
    index.delete("carol", ["m2", "m5"])
    q_dense, q_code = dense[4], codes[4]  # bob's message m4, asked for by everyone
    for user, deleted in (("alice", set()), ("bob", set()), ("carol", {"m2", "m5"})):
        mine = {r["id"] for r in records if r["user_id"] == user} - deleted
        ids, signals = index.score(user, None, q_dense, q_code, candidates=5, include=["m4", "m1", "m2"])
        assert set(ids) == mine and all(len(v) == len(ids) for v in signals.values())
        assert (user == "bob") == (ids[int(np.argmax(signals["dense"]))] == "m4")
        assert len(index.fetch(user, ["m4"])) == (user == "bob")
        assert set(index.vectors(user, ["m4", "m0", "m2"])) == {"m4", "m0", "m2"} & mine


def test_save_and_load_keep_the_stored_arrays_compact(tmp_path):
    rng = np.random.default_rng(4)
    index = FaissBackend()
    index.open(DIM * 4, D_SAE * 8)
    records, dense, codes = _interleaved(rng, empty=(0, 5))
    index.add(records, dense, codes)
    index.delete("bob", ["m1"])
    q_dense, q_code = _unit(rng, 1, DIM * 4)[0], _codes(rng, 1, D_SAE * 8, 40)
    before = {u: index.score(u, None, q_dense, q_code, 100) for u in ("alice", "bob", "carol")}
    index.save(tmp_path / "m", {"encoder": {}, "settings": {}})
    folder = tmp_path / "m" / (tmp_path / "m" / "CURRENT").read_text()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format_version"] == snapshot.FORMAT_VERSION == 3
    assert set(manifest["files"]) == {*DENSE_FILES, *SPARSE_FILES, "records.jsonl", "bm25_tf.npz", "bm25_lengths.npy",
                                      "bm25_vocab.json"}  # no FAISS index for exact search, no pickle
    dtypes = {name: np.load(folder / name, allow_pickle=False).dtype for name in DENSE_FILES + SPARSE_FILES}
    assert dtypes == {"dense_values.npy": np.int8, "dense_scale.npy": np.float32, "sparse_indptr.npy": np.int64,
                      "sparse_indices.npy": np.uint16, "sparse_values.npy": np.int8, "sparse_scale.npy": np.float32}
    loaded, _ = FaissBackend.load(tmp_path / "m")
    for user, (ids, signals) in before.items():
        again_ids, again = loaded.score(user, None, q_dense, q_code, 100)
        assert again_ids == ids
        for name in signals:
            np.testing.assert_array_equal(again[name], signals[name])
        assert [c.toarray().tolist() for _, c in loaded.fetch(user, ids)] == [
            c.toarray().tolist() for _, c in index.fetch(user, ids)]
    held = loaded.memory_per_message()
    assert held["messages"] == held["rows"] == 59 and held["total"] == held["used"]  # a load holds no spare capacity


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("index_type", ["Flat", "HNSW32"])
def test_saves_of_float32_formats_still_load(tmp_path, version, index_type):
    rng = np.random.default_rng(5)
    records, dense, codes = _interleaved(rng, empty=(3,))
    save_float32_format(tmp_path / "old", records, dense, codes, {"encoder": {}, "settings": {}},
                        index_type=index_type, version=version)
    loaded, manifest = FaissBackend.load(tmp_path / "old")
    assert manifest["format_version"] == version and len(loaded) == len(records)
    stored_dense, stored_codes = as_stored(dense, codes)
    np.testing.assert_array_equal(loaded._dense.view, stored_dense)  # quantised as they load
    assert (loaded._sparse.view != stored_codes).nnz == 0
    ids, signals = loaded.score("bob", None, dense[4], codes[4], candidates=100)
    assert ids[int(np.argmax(signals["dense"]))] == "m4" and set(ids) == {r["id"] for r in records if r["user_id"] == "bob"}
    loaded.save(tmp_path / "old", {"encoder": {}, "settings": {}})  # saved again: the compact format
    again, manifest = FaissBackend.load(tmp_path / "old")
    assert manifest["format_version"] == 3 and again.score("bob", None, dense[4], codes[4], 100)[0] == ids


def _corrupt(name: str, change):
    def edit(folder):
        array = np.load(folder / name, allow_pickle=False)
        np.save(folder / name, change(array.copy()), allow_pickle=False)
    return edit


def _set(index, value):
    def change(array):
        array[index] = value
        return array
    return change


@pytest.mark.parametrize("name,change,problem", [
    ("dense_values.npy", lambda a: a.astype(np.float32), "dense_values.npy holds float32 values; saememory saves int8"),
    ("dense_values.npy", lambda a: a[:-1], r"dense_values.npy has shape \(59, 32\), but the manifest says \(60, 32\)"),
    ("dense_scale.npy", _set(3, np.inf), r"dense_scale.npy holds NaN, infinite or negative scales \(first in row 3\)"),
    ("dense_scale.npy", _set(4, -1.0), r"dense_scale.npy holds NaN, infinite or negative scales \(first in row 4\)"),
    ("sparse_indptr.npy", _set(5, 0), "sparse_indptr.npy does not start at 0 and ascend"),
    ("sparse_indptr.npy", lambda a: a[:-1], r"sparse_indptr.npy has shape \(60,\), but the manifest says \(61,\)"),
    ("sparse_indices.npy", lambda a: a.astype(np.int32), "sparse_indices.npy holds int32 values; saememory saves uint16"),
    ("sparse_indices.npy", _set(0, D_SAE * 8), "sparse_indices.npy holds feature indices outside 0..127"),
    ("sparse_indices.npy", lambda a: a[::-1].copy(), "sparse_indices.npy holds a row whose feature indices are not"),
    ("sparse_values.npy", lambda a: a[:-1], r"sparse_values.npy has shape \(\d+,\), but the manifest says \(\d+,\)"),
    ("sparse_scale.npy", _set(0, np.nan), r"sparse_scale.npy holds NaN, infinite or negative scales \(first in row 0\)"),
])
def test_corrupt_compact_arrays_are_refused_naming_the_file(tmp_path, name, change, problem):
    rng = np.random.default_rng(6)
    index = FaissBackend()
    index.open(DIM * 4, D_SAE * 8)
    index.add(*_interleaved(rng))
    index.save(tmp_path / "m", {"encoder": {}, "settings": {}})
    folder = tmp_path / "m" / (tmp_path / "m" / "CURRENT").read_text()
    _corrupt(name, change)(folder)
    with pytest.raises(ValueError, match=f"corrupt: {name} does not match its checksum"):
        FaissBackend.load(tmp_path / "m")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()  # a buggy writer's save
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=f"Saved memory at .* is corrupt: {problem}"):
        FaissBackend.load(tmp_path / "m")


def test_a_message_takes_under_2500_bytes():
    # The default encoder's shape: 384-d vectors, ~600 active features of 4,096 (615 on the dev turns).
    rng = np.random.default_rng(7)
    index = FaissBackend()
    index.open(384, 4096)
    added, seen = 0, []
    while added < 1500:
        n = int(rng.integers(1, 40))  # batches of any size: every point of the arrays' growth is reached
        # TopK codes: the weakest active feature is at least 0.16 of the strongest on dev turns; so here
        codes = _codes(rng, n, 4096, 600, floor=0.5)
        index.add(_records("u", [f"m{added + i}" for i in range(n)]), _unit(rng, n, 384), codes)
        added += n
        if added >= 300:
            seen.append(index.memory_per_message())
    held = index.memory_per_message()
    assert held["messages"] == added and held["total"] == held["dense"] + held["codes"] == index.nbytes()
    assert max(s["per_message"] for s in seen) <= 2500
    assert held["used"] == added * (384 + 4 + 600 * 3 + 8 + 4) + 8  # 2,200 B as stored, against 6.5 KB as float32


def test_exact_search_never_imports_faiss(tmp_path):
    code = f"""
import sys
import numpy as np, scipy.sparse as sp
from saememory.backends.faiss import FaissBackend
b = FaissBackend()
b.open(4, 8)
rec = {{"id": "a", "content": "hello", "role": "user", "session_id": "s", "timestamp": None, "user_id": "u", "metadata": {{}}}}
b.add([rec], np.ones((1, 4), np.float32), sp.csr_matrix(np.ones((1, 8), np.float32)))
assert b.score("u", None, np.ones(4, np.float32), sp.csr_matrix(np.ones((1, 8), np.float32)), 10)[0] == ["a"]
b.save({str(tmp_path / "m")!r}, {{"encoder": {{}}, "settings": {{}}}})
FaissBackend.load({str(tmp_path / "m")!r})
assert "faiss" not in sys.modules, "faiss was imported"
"""
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "shared")})
