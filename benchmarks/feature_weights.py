"""Feature weights for the SAE signal: does down-weighting common features make the SAE earn its place?

    python benchmarks/feature_weights.py --split dev      # chosen here
    python benchmarks/feature_weights.py --split report   # held out, only to report

On LongMemEval-S user turns (official protocol, strict questions, cached vectors from
``benchmarks/longmemeval.py``), the default fusion (z-score, dense + w x SAE + stemmed BM25) with
the SAE cosine replaced by a weighted one: each feature f weighted by a per-user IDF over the
user's messages, as BM25 weighs words (``idf``: BM25's; ``idf-smooth``: ``log((n + 1) / (df + 1))
+ 1``), or dropped when it is active in more than half or a quarter of them. Other readings of the same
codes: square-rooted activations (``sqrt``), active or not (``binary``), only the query's 64 or
128 strongest features (``query top k``), and the cosine with its linear trend in log message
length removed over the user's messages (``length-residual``: longer messages hold more
features). Reported: turn
R_all@10 and nDCG@10 per variant and SAE weight, beside the default and the default without the
SAE. Writes the ``feature-weights-<split>`` section of BENCHMARKS.md.
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
import fusion  # noqa: E402  (question_signals: the cached signals of one question)
import longmemeval as bench  # noqa: E402
from common import commit, machine, publish  # noqa: E402

from saememory import Encoder, EncoderConfig  # noqa: E402
from saememory.eval import longmemeval as lme  # noqa: E402
from saememory.scoring import fuse  # noqa: E402


def feature_weights(codes: sp.csr_matrix) -> dict[str, np.ndarray]:
    """Per-feature weights of each variant, from one user's message codes."""
    n = codes.shape[0]
    df = np.asarray((codes > 0).sum(axis=0)).ravel()
    return {"idf": np.log(1 + (n - df + 0.5) / (df + 0.5)), "idf-smooth": np.log((n + 1) / (df + 1)) + 1,
            "drop > 50%": (df <= 0.5 * n).astype(float), "drop > 25%": (df <= 0.25 * n).astype(float)}


def code_readings(codes: sp.csr_matrix, query: sp.csr_matrix, lengths: np.ndarray) -> dict[str, np.ndarray]:
    """The SAE score of every message under other readings of the codes (see the module doc)."""
    ones = np.ones(codes.shape[1])
    out = {}
    for name, fn in (("sqrt", np.sqrt), ("binary", np.sign)):
        d, q = codes.copy(), query.copy()
        d.data, q.data = fn(d.data), fn(q.data)
        out[name] = weighted_cosine(d, q, ones)
    for k in (64, 128):
        q = query.copy()
        q.data[np.argsort(-q.data)[k:]] = 0.0
        q.eliminate_zeros()
        out[f"query top {k}"] = weighted_cosine(codes, q, ones)
    plain = weighted_cosine(codes, query, ones)
    trend = np.stack([np.ones(len(lengths)), np.log1p(lengths)], axis=1)
    out["length-residual"] = plain - trend @ np.linalg.lstsq(trend, plain, rcond=None)[0]
    return out


def weighted_cosine(codes: sp.csr_matrix, query: sp.csr_matrix, weight: np.ndarray) -> np.ndarray:
    """``sum_f w_f d_f q_f / (sqrt(sum_f w_f d_f^2) sqrt(sum_f w_f q_f^2))`` for every message."""
    w = sp.diags(weight)
    num = ((codes @ w) @ query.T).toarray().ravel()
    norms = np.sqrt(np.asarray((codes @ w).multiply(codes).sum(axis=1)).ravel()) + 1e-9
    return num / norms / (np.sqrt(float((query @ w).multiply(query).sum())) + 1e-9)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=("dev", "report"), default="dev")
    parser.add_argument("--md", type=Path, default=bench.ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    chosen = bench.declared_split(lme.load(bench.DEFAULT_DATA), args.split)
    caches = bench.Caches(bench.ROOT / "benchmarks" / ".cache", Encoder(EncoderConfig(pooling="max")))
    rows: dict[str, list[tuple[float, float]]] = {}
    for _, q in chosen:
        data = fusion.question_signals(q, caches)
        if data is None or not data["gold"]:
            continue
        corpus = bench.build_corpus(lme.messages(q, "user"), q["question"], caches)
        codes, query = corpus.sparse["res"].tocsr(), corpus.q_sparse["res"].tocsr()
        base = {"dense": data["signals"]["dense"], "bm25": data["signals"]["stemmed bm25"]}
        variants = {"default (SAE cosine)": [(2.0, data["signals"]["sparse"])], "without the SAE": [(0.0, None)]}
        for name, weight in feature_weights(codes).items():
            scores = weighted_cosine(codes, query, weight)
            variants[name] = [(w, scores) for w in (1.0, 2.0, 3.0)]
        lengths = np.array([len(t) for t in corpus.texts], dtype=np.float64)
        for name, scores in code_readings(codes.astype(np.float64), query.astype(np.float64), lengths).items():
            variants[name] = [(w, scores) for w in (1.0, 2.0, 3.0)]
        for name, settings in variants.items():
            for w, sparse in settings:
                signals = base if sparse is None else {**base, "sparse": sparse}
                fused = fuse(signals, {"dense": 1.0, "sparse": w, "bm25": 1.0}, "weighted", "zscore")[0]
                ranked = [data["ids"][i] for i in np.argsort(-fused, kind="stable")[:10]]
                m = lme.retrieval_metrics(ranked, data["gold"], (10,))
                label = name if sparse is None or name.startswith("default") else f"{name}, SAE weight {w:g}"
                rows.setdefault(label, []).append((m["recall_all@10"], m["ndcg_any@10"]))
    n = len(next(iter(rows.values())))
    start, end = f"<!-- feature-weights-{args.split}:start -->", f"<!-- feature-weights-{args.split}:end -->"
    lines = [start, f"### SAE feature weights and other readings of the codes, {'the dev split' if args.split == 'dev' else 'held out'}", "",
             f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; commit {commit()}; machine: {machine()}",
             f"- Data: LongMemEval-S user turns, {n} strict questions "
             f"({'dev30 + i % 5 in {0, 1}' if args.split == 'dev' else 'i % 5 in {2, 3, 4}, dev30 left out'})",
             f"- Command: `python benchmarks/feature_weights.py --split {args.split}`", "",
             "| SAE signal | turn R_all@10 | nDCG@10 |", "|---|---:|---:|"]
    for label, values in rows.items():
        a = np.array(values)
        lines.append(f"| {label} | {a[:, 0].mean():.3f} | {a[:, 1].mean():.3f} |")
    lines += ["", end]
    publish(args.md, lines, start, end)


if __name__ == "__main__":
    main()
