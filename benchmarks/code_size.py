"""Memory per message: how many SAE features a stored code needs, and at what precision.

    python benchmarks/code_size.py --split dev

Until format 3 a stored code kept every active feature of a message (about 300 to 600 of 4,096) as
int32 index + float32 value. Here each message's code keeps only its ``N`` strongest features (then
L2-normalised again), optionally with float16 values, and the default fusion ranks LongMemEval-S
user turns with it (cached vectors from ``benchmarks/longmemeval.py``; queries keep their full
code). Values may be rounded to float16 or to 8 bits. Reported: turn R_all@10 and nDCG@10 beside
the full code, and the bytes per message of the code as it would be stored (uint16 index + value),
with the dense vector (float32 or float16; dense precision itself is not varied here). Groundwork for issue "Fast from the first second" (<= 2.5 KB per message at equal
quality). Last, the same ranking with each question's turns stored in a ``FaissBackend`` as it
stores them since format 3 (int8 dense vector and int8 code values with a float32 scale per row,
uint16 indices) and scored by it, with the bytes per message it reports
(``memory_per_message()["used"]``). Writes the ``code-size-<split>`` section.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import scipy.sparse as sp

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))
import fusion  # noqa: E402
import longmemeval as bench  # noqa: E402
from common import commit, default_scores, machine, publish  # noqa: E402

from saememory import Encoder, EncoderConfig  # noqa: E402
from saememory.backends import FaissBackend  # noqa: E402
from saememory.eval import longmemeval as lme  # noqa: E402

SIZES = (None, 256, 128, 64, 32)


def truncated(codes: sp.csr_matrix, n: int | None, precision: str) -> sp.csr_matrix:
    """Each row's ``n`` strongest entries (all if None), values rounded to ``precision`` ("float32",
    "float16", or "uint8": 255 steps of the row's largest value), L2-normalised."""
    rows = []
    for i in range(codes.shape[0]):
        row = codes[i]
        keep = np.argsort(-row.data, kind="stable")[:n] if n else np.arange(row.nnz)
        data = row.data[keep]
        if precision == "float16":
            data = data.astype(np.float16).astype(np.float32)
        elif precision == "uint8" and data.size:
            data = np.round(data / data.max() * 255) / 255 * data.max()
        norm = float(np.linalg.norm(data)) or 1.0
        rows.append(sp.csr_matrix((data / norm, (np.zeros(len(keep), int), row.indices[keep])), shape=(1, codes.shape[1])))
    return sp.vstack(rows, format="csr") if rows else codes


def stored_signals(corpus, codes: sp.csr_matrix, query: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, float]:
    """Dense and SAE scores of every turn as a ``FaissBackend`` stores and scores them, in corpus order,
    and the bytes per message it holds for vectors and codes."""
    backend = FaissBackend()
    backend.open(corpus.dense.shape[1], codes.shape[1])
    records = [{"id": str(i), "content": text, "role": "user", "session_id": "s", "timestamp": None, "user_id": "u",
                "metadata": {}} for i, text in enumerate(corpus.texts)]
    backend.add(records, corpus.dense, codes)
    ids, signals = backend.score("u", None, corpus.q_dense, query, candidates=len(records))
    order = np.argsort(np.array(ids, dtype=np.int64))
    return signals["dense"][order], signals["sparse"][order], backend.memory_per_message()["used"] / len(records)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=("dev", "report"), default="dev")
    parser.add_argument("--md", type=Path, default=bench.ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    chosen = bench.declared_split(lme.load(bench.DEFAULT_DATA), args.split)
    caches = bench.Caches(bench.ROOT / "benchmarks" / ".cache", Encoder(EncoderConfig(pooling="max")))
    settings = [(None, "float32"), (None, "float16"), (None, "uint8")] + [(n, "float16") for n in SIZES[1:]]
    rows: dict[tuple, list[tuple[float, float]]] = {setting: [] for setting in settings}
    nnz, stored, stored_bytes = [], [], []
    for _, q in chosen:
        data = fusion.question_signals(q, caches)
        if data is None or not data["gold"]:
            continue
        corpus = bench.build_corpus(lme.messages(q, "user"), q["question"], caches)
        codes, query = corpus.sparse["res"].tocsr(), corpus.q_sparse["res"].tocsr()
        nnz.extend(codes.getnnz(axis=1).tolist())
        for n, precision in settings:
            sparse = (truncated(codes, n, precision) @ query.T).toarray().ravel()
            fused = default_scores({"dense": data["signals"]["dense"], "sparse": sparse, "bm25": data["signals"]["stemmed bm25"]})
            ranked = [data["ids"][i] for i in np.argsort(-fused, kind="stable")[:10]]
            m = lme.retrieval_metrics(ranked, data["gold"], (10,))
            rows[(n, precision)].append((m["recall_all@10"], m["ndcg_any@10"]))
        dense, sparse, per_message = stored_signals(corpus, codes, query)
        fused = default_scores({"dense": dense, "sparse": sparse, "bm25": data["signals"]["stemmed bm25"]})
        m = lme.retrieval_metrics([data["ids"][i] for i in np.argsort(-fused, kind="stable")[:10]], data["gold"], (10,))
        stored.append((m["recall_all@10"], m["ndcg_any@10"]))
        stored_bytes.append(per_message)
    mean_nnz = float(np.mean(nnz))
    start, end = f"<!-- code-size-{args.split}:start -->", f"<!-- code-size-{args.split}:end -->"
    lines = [start, f"### Memory per message: SAE code size, {'the dev split' if args.split == 'dev' else 'held out'}", "",
             f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; commit {commit()}; machine: {machine()}",
             f"- Data: LongMemEval-S user turns, {len(next(iter(rows.values())))} strict questions; a stored code holds "
             f"{mean_nnz:.0f} features on average",
             f"- Command: `python benchmarks/code_size.py --split {args.split}`", "",
             "| code stored | turn R_all@10 | nDCG@10 | code bytes | + dense float32 (1,536 B) | + dense float16 (768 B) |",
             "|---|---:|---:|---:|---:|---:|"]
    value_bytes = {"float32": 4, "float16": 2, "uint8": 1}
    for (n, precision), values in rows.items():
        a = np.array(values)
        kept = min(n, mean_nnz) if n else mean_nnz
        shipped = n is None and precision == "float32"  # as stored before format 3
        code_bytes = kept * ((4 if shipped else 2) + value_bytes[precision])
        name = (f"{'all active' if n is None else f'top {n}'} features, {precision} values, "
                + ("int32 index (as stored before format 3)" if shipped else "uint16 index"))
        lines.append(f"| {name} | {a[:, 0].mean():.3f} | {a[:, 1].mean():.3f} | {code_bytes:,.0f} | "
                     f"{code_bytes + 1536:,.0f} | {code_bytes + 768:,.0f} |")
    a = np.array(stored)
    lines += ["", f"- As `FaissBackend` stores and scores them since format 3 (int8 dense vector and int8 code values, "
              f"a float32 scale per row each, uint16 indices): turn R_all@10 {a[:, 0].mean():.3f}, nDCG@10 "
              f"{a[:, 1].mean():.3f}, {np.mean(stored_bytes):,.0f} B per message for the vector and the code "
              "(`memory_per_message()[\"used\"]`; before: 1,536 B twice for the vector, plus the code)"]
    lines += ["", end]
    publish(args.md, lines, start, end)


if __name__ == "__main__":
    main()
