"""Storage backends at scale: in-process (FAISS + CSR) against Milvus (milvus-lite), in one run.

    nice -n 10 python benchmarks/backends.py --sizes 10000 100000 1000000

Per size n (synthetic messages spread over ``--users`` users): insert throughput, warm query
latency p50/p95, memory, and top-10 agreement of each backend with the exact in-process ranking,
for the Milvus ``candidates`` settings given. Then a quality check on real embeddings: LongMemEval
dev turns encoded with the default encoder, the same questions ranked on both backends. Writes the
``backends`` section of BENCHMARKS.md and the raw numbers to ``benchmarks/backends_results.json``.

Synthetic data: dense vectors are random unit 384-d vectors; SAE codes have the shipped default
SAE's sparsity (``--nnz`` active features of 4096 per message, the measured mean on dev turns,
drawn from a Zipf-like feature popularity, exponential activations); texts are 12 words from a
5,000-word vocabulary with Zipf-like frequencies. Each query is a stored message of the querying
user perturbed (dense: plus Gaussian noise, renormalised; code: half its features dropped and
eight random ones added; text: four of its words), so a query has a clear neighbourhood.

What is timed is the storage layer only: ``backend.add`` for inserts, and for a query
``backend.score`` (candidates and exact signals), the default fusion and ``backend.fetch`` of the
10 hits, all without the encoder (its cost is the same on both backends).
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from saememory.backends import FaissBackend  # noqa: E402
from saememory.scoring import top_k  # noqa: E402

DIM, D_SAE, WORDS_PER_MESSAGE, VOCAB = 384, 4096, 12, 5000
START, END = "<!-- backends:start -->", "<!-- backends:end -->"
DEV30 = common.ROOT.parent / "shared" / "data" / "longmemeval" / "longmemeval_s_cleaned_dev30.json.gz"


def rss() -> int:
    return psutil.Process().memory_info().rss


def disk(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def synthetic(n: int, users: int, nnz: int, seed: int) -> tuple[list[dict[str, Any]], np.ndarray, sp.csr_matrix, list[str]]:
    """n messages: records (round-robin over users), unit dense vectors, SAE codes, the vocabulary."""
    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((n, DIM), dtype=np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    popularity = 1.0 / np.arange(1, D_SAE + 1) ** 0.8
    popularity /= popularity.sum()
    indptr = np.arange(n + 1, dtype=np.int64) * nnz
    indices = np.empty(n * nnz, dtype=np.int32)
    for start in range(0, n, 2_000):  # distinct features per message, in chunks to bound memory
        stop = min(start + 2_000, n)
        keys = np.log(rng.random((stop - start, D_SAE))) / popularity  # weighted sampling without replacement
        chosen = np.sort(np.argpartition(-keys, nnz, axis=1)[:, :nnz], axis=1)
        indices[start * nnz: stop * nnz] = chosen.reshape(-1)
    data = rng.exponential(0.05, n * nnz).astype(np.float32) + 1e-3
    codes = sp.csr_matrix((data, indices, indptr), shape=(n, D_SAE))
    vocab = [f"w{i}" for i in range(VOCAB)]
    word_p = 1.0 / np.arange(1, VOCAB + 1)
    words = rng.choice(VOCAB, size=(n, WORDS_PER_MESSAGE), p=word_p / word_p.sum())
    records = [{"id": f"m{i}", "content": " ".join(vocab[w] for w in row), "role": "user", "session_id": f"s{i % 50}",
                "timestamp": None, "user_id": f"u{i % users}", "metadata": {}, "truncated": False}
               for i, row in enumerate(words)]
    return records, dense, codes, vocab


def queries(records, dense, codes, n_queries: int, seed: int):
    """Perturbed copies of random stored messages: (user, dense, code, text)."""
    rng = np.random.default_rng(seed + 1)
    out = []
    for i in rng.choice(len(records), n_queries, replace=False).tolist():
        q = dense[i] + rng.standard_normal(DIM).astype(np.float32) * 0.05
        code = codes[i]
        keep = rng.random(code.nnz) < 0.5
        cols = np.concatenate([code.indices[keep], rng.choice(D_SAE, 8)])
        vals = np.concatenate([code.data[keep], rng.exponential(0.05, 8).astype(np.float32)])
        q_code = sp.csr_matrix((vals, (np.zeros(cols.size, int), cols)), shape=(1, D_SAE))
        q_code.sum_duplicates()
        words = records[i]["content"].split()
        text = " ".join(rng.choice(words, 4, replace=False))
        out.append((records[i]["user_id"], q / np.linalg.norm(q), q_code, text))
    return out


def rank(backend, query, candidates: int, k: int = 10) -> tuple[list[str], float]:
    """SAEMemory.search's storage work for one query: the top-k ids and the seconds it took."""
    user, q_dense, q_code, text = query
    start = time.perf_counter()
    ids, signals = backend.score(user, None, q_dense, q_code, candidates, text)
    scores = common.default_scores(signals)
    chosen = top_k(scores, k).tolist()
    backend.fetch(user, [ids[p] for p in chosen])
    return [ids[p] for p in chosen], time.perf_counter() - start


def isolated(fn, *fn_args):
    """``fn(*fn_args)`` in a fresh Python process."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *fn_args).result()


def agreement(found: list[list[str]], exact: list[list[str]]) -> float:
    return float(np.mean([len(set(a) & set(b)) / max(len(b), 1) for a, b in zip(found, exact)]))


def timed_queries(backend, qs, candidates: int) -> tuple[list[list[str]], dict[str, float]]:
    for q in qs[:5]:  # warm up
        rank(backend, q, candidates)
    tops, times = [], []
    for q in qs:
        top, seconds = rank(backend, q, candidates)
        tops.append(top)
        times.append(seconds * 1000)
    return tops, {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95))}


def insert(backend, records, dense, codes, batch: int) -> float:
    start = time.perf_counter()
    for s in range(0, len(records), batch):
        backend.add(records[s:s + batch], dense[s:s + batch], codes[s:s + batch])
    if hasattr(backend, "flush"):
        backend.flush()  # Milvus: seal the bulk load into indexed segments (counted in the insert time)
    return len(records) / (time.perf_counter() - start)


def data(n: int, n_queries: int, args):
    """The synthetic messages and queries of one size (the same on every call: seeded)."""
    print(f"n={n}: generating", flush=True)
    records, dense, codes, _ = synthetic(n, args.users, args.nnz, args.seed)
    return records, dense, codes, queries(records, dense, codes, n_queries, args.seed)


def run_local(n: int, n_queries: int, args) -> tuple[dict[str, Any], list[list[str]]]:
    """The in-process backend (exact): its row and the exact top 10 of every query."""
    records, dense, codes, qs = data(n, n_queries, args)
    gc.collect()
    before = rss()
    local = FaissBackend()
    local.open(DIM, D_SAE, stemmer=common.library_defaults()["bm25_stemmer"])
    rate = insert(local, records, dense, codes, args.batch)
    grown = rss() - before
    exact, latency = timed_queries(local, qs, candidates=1)  # Flat: every message of the user is scored
    row = {"n": n, "queries": n_queries, "backend": "in-process (Flat, exact)", "candidates": "all", "insert_per_s": rate,
           **latency, "memory_mb": grown / 2**20, "disk_mb": None, "top10_agreement": 1.0}
    print(row, flush=True)
    return row, exact


def run_milvus(n: int, n_queries: int, exact: list[list[str]], args, workdir: Path) -> list[dict[str, Any]]:
    """Milvus with each dense index and candidates setting, against the exact top 10s.

    A fresh milvus-lite file per size, or, with ``--milvus-uri``, a collection per size and index
    on that Milvus, dropped afterwards.
    """
    from saememory.backends import MilvusBackend

    records, dense, codes, qs = data(n, n_queries, args)
    rows = []
    for index in args.milvus_index:
        uri = args.milvus_uri or str(workdir / f"n{n}_{index}.db")
        collection = f"saememory_bench_{n}_{index.lower()}" if args.milvus_uri else "bench"
        local_file = uri.endswith(".db")  # milvus-lite: its engine and files are this process' own
        gc.collect()
        before = rss()
        remote = MilvusBackend(uri, collection, index=index)
        remote.open(DIM, D_SAE, stemmer=common.library_defaults()["bm25_stemmer"])
        if len(remote):
            sys.exit(f"Collection {collection!r} on {uri} is not empty. Drop it, or point --milvus-uri at another Milvus.")
        rate = insert(remote, records, dense, codes, args.batch)
        grown = rss() - before
        for candidates in args.candidates:
            tops, latency = timed_queries(remote, qs, candidates)
            rows.append({"n": n, "queries": n_queries, "backend": f"{'milvus-lite' if local_file else 'Milvus'} ({index})",
                         "candidates": candidates, "insert_per_s": rate, **latency,
                         "memory_mb": grown / 2**20 if local_file else None,
                         "disk_mb": disk(Path(uri)) / 2**20 if local_file and Path(uri).exists() else None,
                         "top10_agreement": agreement(tops, exact)})
            print(rows[-1], flush=True)
        if args.milvus_uri:
            remote.client.drop_collection(collection)
        remote.close()
        if not args.milvus_uri:
            shutil.rmtree(uri, ignore_errors=True)
    return rows


def quality(args) -> list[dict[str, Any]]:
    """Real embeddings: LongMemEval dev turns, each question's haystack as one user, on both backends."""
    from saememory import Encoder, MilvusBackend, SAEMemory
    from saememory.eval import longmemeval as lme

    questions = lme.load(DEV30)[: args.real_questions]
    encoder = Encoder()
    local = SAEMemory(encoder)
    workdir = Path(tempfile.mkdtemp(prefix="saememory-quality-"))
    remotes = {c: SAEMemory(encoder, backend=MilvusBackend(str(workdir / "q.db"), f"c{c}"), candidates=c)
               for c in args.candidates}
    n = 0
    for question in questions:
        messages = [dict(m, user_id=question["question_id"], id=f"{question['question_id']}:{m['id']}")
                    for m in lme.messages(question, "user")]
        encoded = local._encode_records(messages, False)
        local.backend.add(messages, encoded.dense, encoded.sparse)
        for memory in remotes.values():
            memory.backend.add(messages, encoded.dense, encoded.sparse)
        n += len(messages)
    for memory in remotes.values():
        memory.backend.flush()
    rows = []
    exact = [[h.id for h in local.search(q["question"], k=10, user_id=q["question_id"])] for q in questions]
    for candidates, memory in remotes.items():
        found = [[h.id for h in memory.search(q["question"], k=10, user_id=q["question_id"])] for q in questions]
        rows.append({"messages": n, "questions": len(questions), "candidates": candidates,
                     "top10_agreement": agreement(found, exact),
                     "same_order": float(np.mean([a == b for a, b in zip(found, exact)]))})
        print(rows[-1], flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| n | queries | backend | candidates | insert (msg/s) | query p50 (ms) | query p95 (ms) | memory (MB) "
             "| on disk (MB) | top-10 agreement with exact |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        disk_mb = "–" if r["disk_mb"] is None else f"{r['disk_mb']:.0f}"
        memory_mb = "–" if r["memory_mb"] is None else f"{r['memory_mb']:.0f}"
        lines.append(f"| {r['n']:,} | {r['queries']} | {r['backend']} | {r['candidates']} | {r['insert_per_s']:,.0f} | {r['p50_ms']:.1f} "
                     f"| {r['p95_ms']:.1f} | {memory_mb} | {disk_mb} | {r['top10_agreement']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--users", type=int, default=10, help="users the messages are spread over; default 10")
    parser.add_argument("--nnz", type=int, default=600, help="active SAE features per message; default 600 (measured)")
    parser.add_argument("--queries", type=int, nargs="+", default=[100],
                        help="timed queries per setting, per size (the last repeats); default 100")
    parser.add_argument("--candidates", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--milvus-index", nargs="+", default=["FLAT"], choices=["FLAT", "HNSW"])
    parser.add_argument("--milvus-max", type=int, default=None,
                        help="run Milvus only up to this many messages (larger sizes: in-process only); default no limit")
    parser.add_argument("--milvus-uri", default=None,
                        help="benchmark this Milvus (a server URI such as http://host:19530, or a milvus-lite .db path) "
                             "instead of a fresh milvus-lite file per size; default none")
    parser.add_argument("--batch", type=int, default=1000, help="messages per add() call; default 1000")
    parser.add_argument("--real-questions", type=int, default=5, help="dev30 questions for the quality check; default 5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--not-run", default="", help="a sentence for BENCHMARKS.md on sizes not run, and why")
    parser.add_argument("--md", default=str(common.ROOT / "BENCHMARKS.md"))
    args = parser.parse_args(argv)
    shown = list(argv if argv is not None else sys.argv[1:])
    if "--not-run" in shown[:-1]:  # its text is printed below the tables, not inside the command
        shown[shown.index("--not-run") + 1] = "'<the notes below the tables>'"
    command = "nice -n 10 python benchmarks/backends.py " + " ".join(shown)
    workdir = Path(tempfile.mkdtemp(prefix="saememory-backends-"))
    rows = []
    # Each backend and size in a fresh process, so that RSS growth is that run's alone (milvus-lite
    # 3.x runs inside the client process and keeps its data until exit).
    for i, n in enumerate(args.sizes):
        n_queries = args.queries[min(i, len(args.queries) - 1)]
        row, exact = isolated(run_local, n, n_queries, args)
        rows.append(row)
        if args.milvus_max is None or n <= args.milvus_max:
            rows.extend(isolated(run_milvus, n, n_queries, exact, args, workdir))
        else:
            print(f"n={n}: Milvus not run (--milvus-max {args.milvus_max})", flush=True)
    real = quality(args) if args.real_questions else []
    shutil.rmtree(workdir, ignore_errors=True)
    results = {"date": date.today().isoformat(), "machine": common.machine(), "commit": common.commit(),
               "command": command, "synthetic": rows, "real": real, "args": vars(args)}
    (common.ROOT / "benchmarks" / "backends_results.json").write_text(json.dumps(results, indent=2))
    real_lines = "\n".join(
        f"| {r['messages']:,} | {r['questions']} | {r['candidates']} | {r['top10_agreement']:.3f} | {r['same_order']:.2f} |"
        for r in real)
    section = f"""{START}
## Storage backends: in-process against Milvus (milvus-lite)

Date {results['date']}; machine: {results['machine']}; commit {results['commit']}.
Command: `{command}` (raw numbers in `benchmarks/backends_results.json`).

Data: synthetic messages over {args.users} users (random unit {DIM}-d dense vectors; SAE codes with {args.nnz} active
features of {D_SAE}, the default SAE's measured mean on LongMemEval dev user turns; 12-word texts over a 5,000-word
Zipf vocabulary); queries (count per row) are perturbed copies of one of the querying user's messages.
Timed: the storage layer only — `add` in batches of {args.batch} (then, on Milvus, one `flush`), and per query `score` + the default fusion +
`fetch` of the 10 hits (no encoder). Latency is warm (5 queries first). Memory: growth of this process' RSS while
the backend was built, each backend and size in a fresh process (milvus-lite 3.x runs inside the client process
as Python threads, so this is its server's RSS too); on disk: the milvus-lite data directory. Agreement: mean share of the exact in-process top 10 that each
setting returns in its top 10.

{table(rows)}

Quality on real embeddings: the user turns of the first {args.real_questions} LongMemEval-S dev questions (each
haystack one user), encoded with the default encoder, searched with each question through `SAEMemory.search` on
both backends (BM25 included: on Milvus it is computed over the candidates, see README).

| messages | questions | candidates | top-10 agreement with exact in-process | same top-10 order |
|---|---|---|---|---|
{real_lines}

{args.not_run}
{END}
"""
    common.write_section(Path(args.md), section, START, END)
    print(f"Wrote {args.md}")


if __name__ == "__main__":
    main()
