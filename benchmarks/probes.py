"""Probes on LongMemEval-S's dev split that chose what to build: rerankers, session diversity, sentence vectors.

    python benchmarks/probes.py rerank       # pseudo-relevance feedback, neighbour and session bonuses
    python benchmarks/probes.py sentences    # sentence vectors: alone, as the dense signal, or a fourth signal
    python benchmarks/probes.py diversity    # at most a few turns per session in the top 10 (MMR by session)

Both score cached matrices of the dev split's user turns (whole messages, ``EncoderConfig(split="none")``,
from ``benchmarks/longmemeval.py``'s cache; ``--fill`` encodes what is missing) against the fusion
that was the default before sentences: z-scored ``dense + 2 × SAE + stemmed BM25``, with no
adjustment for what is current. ``sentences`` also encodes every sentence of those turns
(``saememory.encoders.sentences.split_sentences``) on its own ("naive") and pools the whole turn's
last-layer token states over each sentence's tokens ("late chunking"), cached under
``benchmarks/.cache/probes``. Prints turn R_all@10 and nDCG@10 with paired bootstrap intervals;
BENCHMARKS.md ("Sentence by sentence") quotes them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))
import longmemeval as bench  # noqa: E402
from common import bootstrap  # noqa: E402

from saememory import Encoder, EncoderConfig  # noqa: E402
from saememory.arrays import unit_rows  # noqa: E402
from saememory.encoders.sentences import split_sentences  # noqa: E402
from saememory.eval import longmemeval as lme  # noqa: E402
from saememory.lexical import LexicalIndex, tokenize  # noqa: E402
from saememory.scoring import fuse  # noqa: E402

BEFORE = {"dense": 1.0, "sparse": 2.0, "bm25": 1.0}  # the default fusion over whole messages


def fused(dense: np.ndarray, sparse: np.ndarray, bm25: np.ndarray, weights: dict[str, float] = BEFORE) -> np.ndarray:
    return fuse({"dense": dense, "sparse": sparse, "bm25": bm25}, weights, "weighted", "zscore")[0]


def z(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return (x - x.mean()) / x.std() if x.std() > 0 else np.zeros_like(x)


def questions(caches: bench.Caches) -> list[dict]:
    """Per strict dev question: its turns, gold, and the three signals over whole messages (as stored)."""
    out = []
    for _, q in bench.declared_split(lme.load(bench.DEFAULT_DATA), "dev"):
        gold = lme.gold_turn_ids(q, "user")
        items = lme.messages(q, "user")
        try:
            c = bench.as_stored_corpus(bench.build_corpus(items, q["question"], caches))
        except KeyError:
            continue
        if not gold:
            continue
        lexical = LexicalIndex(stemmer="english")
        lexical.add(c.texts)
        codes, q_code = unit_rows(c.sparse["res"]), unit_rows(c.q_sparse["res"])
        out.append({"q": q, "gold": gold, "ids": c.ids, "texts": c.texts, "sessions": [m["session_id"] for m in items],
                    "D": c.dense, "qd": c.q_dense, "S": codes, "qs": q_code,
                    "dense": c.dense @ c.q_dense, "sparse": (codes @ q_code.T).toarray().ravel(),
                    "bm25": lexical.scores(q["question"], np.arange(len(c.texts)))})
    return out


def score(data: list[dict], rank, label: str, base: list[tuple[float, float]] | None = None) -> list[tuple[float, float]]:
    rows = []
    for d in data:
        top = [d["ids"][i] for i in np.argsort(-rank(d), kind="stable")[:10]]
        m = lme.retrieval_metrics(top, d["gold"], (10,))
        rows.append((m["recall_all@10"], m["ndcg_any@10"]))
    a = np.array(rows)
    line = f"| {label} | {a[:, 0].mean():.3f} | {a[:, 1].mean():.3f} |"
    if base is not None:
        diff = a - np.array(base)
        for col in (0, 1):
            low, high = bootstrap(diff[:, col])
            line += f" {diff[:, col].mean():+.3f} [{low:+.3f}, {high:+.3f}] |"
    print(line, flush=True)
    return rows


def rerank(data: list[dict]) -> None:
    def rocchio(d: dict, m: int, beta: float, which: str) -> np.ndarray:
        top = np.argsort(-fused(d["dense"], d["sparse"], d["bm25"]), kind="stable")[:m]
        dense, sparse = d["dense"], d["sparse"]
        if which in ("both", "dense"):
            q = d["qd"] + beta * d["D"][top].mean(0)
            dense = d["D"] @ (q / np.linalg.norm(q))
        if which in ("both", "sae"):
            q = d["qs"].toarray().ravel() + beta * np.asarray(d["S"][top].mean(0)).ravel()
            sparse = d["S"] @ (q / np.linalg.norm(q))
        return fused(dense, sparse, d["bm25"])

    def expanded_bm25(d: dict, m: int) -> np.ndarray:
        top = np.argsort(-fused(d["dense"], d["sparse"], d["bm25"]), kind="stable")[:m]
        counts: dict[str, int] = {}
        for i in top:
            for word in set(tokenize([d["texts"][i]], None)[0]):
                counts[word] = counts.get(word, 0) + 1
        extra = [w for w, c in sorted(counts.items(), key=lambda x: -x[1]) if c >= 2][:10]
        lexical = LexicalIndex(stemmer="english")
        lexical.add(d["texts"])
        again = lexical.scores(d["q"]["question"] + " " + " ".join(extra), np.arange(len(d["texts"])))
        return fused(d["dense"], d["sparse"], 0.5 * d["bm25"] + 0.5 * again)

    def neighbours(d: dict, gamma: float, whole_session: bool) -> np.ndarray:
        base, sessions = fused(d["dense"], d["sparse"], d["bm25"]), d["sessions"]
        if whole_session:
            best: dict[str, float] = {}
            for s, v in zip(sessions, base):
                best[s] = max(best.get(s, -np.inf), v)
            return z(base) + gamma * z(np.array([best[s] for s in sessions]))
        near = np.array([max([base[j] for j in (i - 1, i + 1) if 0 <= j < len(base) and sessions[j] == sessions[i]],
                             default=base.min()) for i in range(len(base))])
        return z(base) + gamma * z(near)

    print("| ranking | turn R_all@10 | nDCG@10 | Δ R_all@10 [95% CI] | Δ nDCG@10 [95% CI] |\n|---|---:|---:|---:|---:|")
    base = score(data, lambda d: fused(d["dense"], d["sparse"], d["bm25"]), "dense + 2 × SAE + BM25 (before)")
    for m in (3, 5, 10):
        for beta in (0.25, 0.5, 1.0):
            for which in ("both", "dense", "sae"):
                score(data, lambda d, m=m, b=beta, w=which: rocchio(d, m, b, w), f"Rocchio ({which}) from the top {m}, β {beta}",
                      base)
    for m in (3, 5):
        score(data, lambda d, m=m: expanded_bm25(d, m), f"BM25 with words of the top {m}", base)
    for gamma in (0.1, 0.25, 0.5):
        score(data, lambda d, g=gamma: neighbours(d, g, False), f"bonus from the neighbouring turns, {gamma}", base)
        score(data, lambda d, g=gamma: neighbours(d, g, True), f"bonus from the session's best turn, {gamma}", base)


def diversity(data: list[dict]) -> None:
    """Greedy top 10 in which each turn loses ``lam`` (z units) for every turn of its session already
    picked: multi-session questions need evidence from several sessions in the top 10."""
    def diverse(d: dict, lam: float) -> np.ndarray:
        base = z(fused(d["dense"], d["sparse"], d["bm25"]))
        pool, picked, count = set(np.argsort(-base, kind="stable")[:50].tolist()), [], {}
        while pool and len(picked) < 10:
            best = max(pool, key=lambda i: (base[i] - lam * count.get(d["sessions"][i], 0), -i))
            picked.append(best)
            pool.remove(best)
            count[d["sessions"][best]] = count.get(d["sessions"][best], 0) + 1
        out = np.full(len(base), -np.inf)
        out[picked] = -np.arange(len(picked), dtype=np.float64)  # the greedy order
        return out

    print("| ranking | turn R_all@10 | nDCG@10 | Δ R_all@10 [95% CI] | Δ nDCG@10 [95% CI] |\n|---|---:|---:|---:|---:|")
    base = score(data, lambda d: fused(d["dense"], d["sparse"], d["bm25"]), "dense + 2 × SAE + BM25 (before)")
    for lam in (0.25, 0.5, 1.0):
        score(data, lambda d, lam=lam: diverse(d, lam), f"session diversity, {lam} per turn of the session already in", base)


def sentence_vectors(data: list[dict], cache: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per turn text: its sentences' unit vectors, naive (each encoded alone) and late (pooled from the whole turn)."""
    from tqdm.auto import tqdm

    from saememory.encoders.sentence_transformer import load_onnx_model

    path, keys_path = cache / "sentences-dev.npz", cache / "sentences-dev.json"
    texts = sorted({t for d in data for t in d["texts"]})
    keys = [hashlib.sha1(t.encode("utf-8", "surrogatepass")).hexdigest() for t in texts]
    if path.is_file() and keys_path.is_file() and json.loads(keys_path.read_text()) == keys:
        saved = np.load(path, allow_pickle=False)
        naive, late, starts = saved["naive"], saved["late"], saved["starts"]
    else:
        model = load_onnx_model(threads=1, quantize=True)  # the default encoder's int8 model
        naive, late, starts = [], [], [0]
        for text in tqdm(texts, desc="sentences", unit="turn"):
            pieces = split_sentences(text)
            whole = model.forward([text])
            offsets = model._tokenizer.encode(text).offsets
            at = 0
            for piece in pieces:  # each piece's characters in the text, in order
                begin = text.index(piece, at)
                at = begin + len(piece)
                tokens = [i for i, (a, _) in enumerate(offsets) if whole.real[0, i] and begin <= a < at]
                v = whole.states[-1][0][tokens].mean(0) if tokens else whole.embedding[0]
                late.append(v / max(np.linalg.norm(v), 1e-12))
            naive.extend(model.forward(pieces).embedding)
            starts.append(starts[-1] + len(pieces))
        naive, late, starts = np.array(naive, np.float32), np.array(late, np.float32), np.array(starts)
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, starts=starts, naive=naive, late=late)
        keys_path.write_text(json.dumps(keys))  # last: vectors without keys are not trusted
    return {t: (naive[starts[i]:starts[i + 1]], late[starts[i]:starts[i + 1]]) for i, t in enumerate(texts)}


def sentences(data: list[dict], cache: Path) -> None:
    vectors = sentence_vectors(data, cache)
    for d in data:
        per_turn = [vectors[t] for t in d["texts"]]
        d["max_naive"] = np.array([(n @ d["qd"]).max() for n, _ in per_turn])
        d["max_late"] = np.array([(late @ d["qd"]).max() for _, late in per_turn])
        mean = np.array([n.mean(0) / np.linalg.norm(n.mean(0)) for n, _ in per_turn])
        d["mean_naive"] = mean @ d["qd"]
    print("| ranking | turn R_all@10 | nDCG@10 | Δ R_all@10 [95% CI] | Δ nDCG@10 [95% CI] |\n|---|---:|---:|---:|---:|")
    base = score(data, lambda d: fused(d["dense"], d["sparse"], d["bm25"]), "dense + 2 × SAE + BM25 (before)")
    score(data, lambda d: d["dense"], "dense alone, whole turns", base)
    for name, label in (("max_naive", "best sentence, each encoded alone"), ("max_late", "best sentence, late chunking"),
                        ("mean_naive", "mean of sentence vectors")):
        score(data, lambda d, n=name: d[n], f"dense alone: {label}", base)
        score(data, lambda d, n=name: fused(d[n], d["sparse"], d["bm25"]), f"fusion with {label} as the dense signal", base)
        score(data, lambda d, n=name: fused(d["dense"], d["sparse"], d["bm25"]) + z(d[n]),
              f"fusion + a fourth signal: {label}", base)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("probe", choices=("rerank", "sentences", "diversity"))
    parser.add_argument("--fill", action="store_true", help="encode (and cache) the turns not cached yet")
    args = parser.parse_args(argv)
    caches = bench.Caches(bench.ROOT / "benchmarks" / ".cache", Encoder(EncoderConfig(split="none")))
    if args.fill:
        for _, q in bench.declared_split(lme.load(bench.DEFAULT_DATA), "dev"):
            caches.fill([m["content"] for m in lme.messages(q, "user")], [q["question"]])
    data = questions(caches)
    print(f"{len(data)} strict dev questions\n")
    probes = {"rerank": rerank, "diversity": diversity,
              "sentences": lambda d: sentences(d, bench.ROOT / "benchmarks" / ".cache" / "probes")}
    probes[args.probe](data)


if __name__ == "__main__":
    main()
