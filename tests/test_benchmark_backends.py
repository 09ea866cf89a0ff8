"""The storage-backend benchmark script: Milvus rows against the exact in-process ranking."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.helpers import ROOT, load_script

pytest.importorskip("milvus_lite")


@pytest.fixture(scope="module")
def backends():
    return load_script(ROOT / "benchmarks" / "backends.py")


def test_milvus_rows_against_exact_on_a_given_uri(backends, tmp_path):
    from pymilvus import MilvusClient

    from saememory.backends.milvus import LITE_CONNECTION

    uri = str(tmp_path / "bench.db")
    args = SimpleNamespace(users=2, nnz=20, seed=0, milvus_index=["FLAT"], milvus_uri=uri, candidates=[500], batch=100)
    _, exact = backends.run_local(200, 6, args)
    rows = backends.run_milvus(200, 6, exact, args, tmp_path)
    # 500 candidates cover each user's 100 messages, so Milvus ranks exactly as in-process.
    assert [r["top10_agreement"] for r in rows] == [1.0]
    assert rows[0]["backend"] == "milvus-lite (FLAT)" and rows[0]["insert_per_s"] > 0
    client = MilvusClient(uri, **LITE_CONNECTION)
    assert client.list_collections() == []  # the benchmark's collection is dropped
    client.close()


def test_table_marks_what_a_server_does_not_show(backends):
    row = {"n": 1000, "queries": 5, "backend": "Milvus (HNSW)", "candidates": 200, "insert_per_s": 900.0, "p50_ms": 12.0,
           "p95_ms": 20.0, "memory_mb": None, "disk_mb": None, "top10_agreement": 0.9}
    assert backends.table([row]).splitlines()[-1] == "| 1,000 | 5 | Milvus (HNSW) | 200 | 900 | 12.0 | 20.0 | – | – | 0.900 |"
