"""Fusion ablations on LongMemEval-S: which signals, normalisation and selection rank best.

    python benchmarks/fusion.py --split report --every 5 --offset 2

Runs on the embeddings cached by ``benchmarks/longmemeval.py`` (same questions, same vectors;
questions not cached yet are skipped and counted), user turns only, ``_abs`` left out,
strict questions (with user-side evidence). All scoring goes through saememory's own
``scoring.fuse`` and ``lexical.LexicalIndex`` (BM25 with bm25s parity). Writes the fusion
section of BENCHMARKS.md and a selection plot (context precision against context length).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import longmemeval as bench  # noqa: E402  (the LongMemEval harness: caches and splits)
from common import bootstrap, commit, default_scores, library_defaults, machine, write_section  # noqa: E402

from saememory import Encoder, EncoderConfig  # noqa: E402
from saememory.eval import longmemeval as lme  # noqa: E402
from saememory.lexical import LexicalIndex  # noqa: E402
from saememory.scoring import calibrate, fuse  # noqa: E402

ROOT = bench.ROOT
KS = (5, 10)
FIXED_K = (1, 3, 5, 10, 20)
THRESHOLDS = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0)
ADAPTIVE_CAP = 20
PEERS = (  # the strongest simple peers: REFERENCE §5's, and LlamaIndex QueryFusionRetriever's rule
    "minmax: dense + bm25",
    "minmax top-50: dense + stemmed bm25",
)
WEIGHTS = ((1, 1, 1), (1, 0.5, 1), (1, 1, 0.5), (0.5, 1, 1), (2, 1, 1), (1, 2, 1), (1, 1, 2), (2, 2, 1), (1, 2, 2), (2, 1, 2))


def default_config() -> tuple[str, dict[str, Any]]:
    """The configuration ``SAEMemory()`` ranks with, read from its signature's defaults."""
    defaults = library_defaults()
    weights = {s: float(defaults[f"{s}_weight"]) for s in ("dense", "sparse", "bm25") if defaults[f"{s}_weight"]}
    if defaults.get("bm25_stemmer") and "bm25" in weights:
        weights["stemmed bm25"] = weights.pop("bm25")
    cfg = {"weights": weights, "fusion": defaults["fusion"], "normalization": defaults["normalization"],
           "top": defaults["normalize_top"]}
    for name, known in configurations().items():
        if {**known, "top": known.get("top")} == cfg:
            return name, known
    return "default", cfg


def configurations() -> dict[str, dict[str, Any]]:
    """Every ablation: signal subsets x normalisations, the poster's formula, RRF, stemming, weights."""
    out: dict[str, dict[str, Any]] = {}
    for signal in ("dense", "sparse", "bm25", "stemmed bm25"):
        out[signal] = {"weights": {signal: 1.0}, "fusion": "weighted", "normalization": "none"}
    for size in (2, 3):
        for subset in combinations(("dense", "sparse", "bm25"), size):
            for norm in ("minmax", "zscore", "rank"):
                name = f"{norm}: {' + '.join(subset)}"
                out[name] = {"weights": dict.fromkeys(subset, 1.0), "fusion": "weighted", "normalization": norm}
            out[f"rrf: {' + '.join(subset)}"] = {"weights": dict.fromkeys(subset, 1.0), "fusion": "rrf", "normalization": "none"}
    out["poster sqrt (raw, clamped): dense + sparse"] = {"weights": {"dense": 1.0, "sparse": 1.0}, "fusion": "sqrt", "normalization": "none"}
    out["poster sqrt (raw, unclamped): dense + sparse"] = {"weights": {"dense": 1.0, "sparse": 1.0}, "fusion": "sqrt_unclamped", "normalization": "none"}
    out["poster sqrt (minmax): dense + sparse"] = {"weights": {"dense": 1.0, "sparse": 1.0}, "fusion": "sqrt", "normalization": "minmax"}
    out["poster sqrt (minmax): dense + sparse + bm25"] = {"weights": dict.fromkeys(("dense", "sparse", "bm25"), 1.0), "fusion": "sqrt", "normalization": "minmax"}
    out["minmax 2:1: dense + bm25"] = {"weights": {"dense": 2.0, "bm25": 1.0}, "fusion": "weighted", "normalization": "minmax"}
    for lexical in ("bm25", "stemmed bm25"):
        for subset in (("dense", lexical), ("dense", "sparse"), ("dense", "sparse", lexical)):
            for top in (20, 50):
                out[f"minmax top-{top}: {' + '.join(subset)}"] = {"weights": dict.fromkeys(subset, 1.0), "fusion": "weighted",
                                                                "normalization": "minmax", "top": top}
    for norm in ("minmax", "zscore", "rank"):
        out[f"{norm}: dense + stemmed bm25"] = {"weights": {"dense": 1.0, "stemmed bm25": 1.0}, "fusion": "weighted", "normalization": norm}
    out["rrf: dense + sparse + stemmed bm25"] = {"weights": dict.fromkeys(("dense", "sparse", "stemmed bm25"), 1.0), "fusion": "rrf",
                                                 "normalization": "none"}
    for lexical in ("bm25", "stemmed bm25"):
        for norm in ("minmax", "zscore"):
            for w in WEIGHTS:
                tag = "" if w == (1, 1, 1) else f" {w[0]:g}:{w[1]:g}:{w[2]:g}"
                out[f"{norm}{tag}: dense + sparse + {lexical}"] = {
                    "weights": dict(zip(("dense", "sparse", lexical), map(float, w))), "fusion": "weighted", "normalization": norm}
    return out


def question_signals(q: dict[str, Any], caches: bench.Caches) -> dict[str, Any] | None:
    """Cached dense and residual-SAE similarities and BM25 of one question's user turns."""
    items = lme.messages(q, "user")
    corpus = bench.build_corpus(items, q["question"], caches) if not caches.base.missing(
        [bench.text_key("doc", m["content"]) for m in items] + [bench.text_key("query", q["question"])]) else None
    if corpus is None:
        return None
    lexical, stemmed = LexicalIndex(), LexicalIndex(stemmer="english")
    lexical.add(corpus.texts)
    stemmed.add(corpus.texts)
    rows = np.arange(len(items))
    return {
        "ids": corpus.ids,
        "lengths": np.array([len(t) for t in corpus.texts]),
        "gold": lme.gold_turn_ids(q, "user"),
        "gold_sessions": lme.gold_session_ids(q),
        "type": q["question_type"],
        "signals": {
            "dense": corpus.dense @ corpus.q_dense,
            "sparse": (corpus.sparse["res"] @ corpus.q_sparse["res"].T).toarray().ravel(),
            "bm25": lexical.scores(q["question"], rows),
            "stemmed bm25": stemmed.scores(q["question"], rows),
        },
    }


def evaluate(data: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    scores, _, _ = fuse(data["signals"], cfg["weights"], cfg["fusion"], cfg["normalization"], top=cfg.get("top"))
    order = np.argsort(-scores, kind="stable")
    ranked = [data["ids"][i] for i in order[:50]]
    metrics = lme.retrieval_metrics(ranked, data["gold"], KS)
    sessions = lme.retrieval_metrics(lme.turns_to_sessions(ranked), data["gold_sessions"], KS)
    out = {f"turn/{k}": v for k, v in metrics.items()}
    out.update({f"session/{k}": v for k, v in sessions.items()})
    chars = np.cumsum(data["lengths"][order])
    for k in FIXED_K:
        out[f"cp@{k}"] = lme.context_precision(ranked[:k], data["gold"])
        out[f"chars@{k}"] = float(chars[min(k, len(order)) - 1])
    z = calibrate(scores)[order]
    for t in THRESHOLDS:
        n = int(max(1, min(ADAPTIVE_CAP, (z >= t).sum())))
        out[f"cp@z{t}"] = lme.context_precision(ranked[:n], data["gold"])
        out[f"chars@z{t}"] = float(chars[n - 1])
        out[f"n@z{t}"] = n
    return out


def length_bucket(data: dict[str, Any]) -> str:
    gold = set(data["gold"])
    longest = max(int(l) for i, l in zip(data["ids"], data["lengths"]) if i in gold)
    return "evidence < 500 chars" if longest < 500 else ("500-1000" if longest <= 1000 else "> 1000")


def truncation(chosen: list[tuple[int, dict[str, Any]]], encoder: Encoder, roles: str) -> tuple[float, float]:
    """Shares of haystack turns, and of evidence turns, longer than the encoder's window."""
    seen: dict[str, bool] = {}
    cut = gold_cut = gold_n = total = 0
    for _, q in chosen:
        items, gold = lme.messages(q, roles), set(lme.gold_turn_ids(q, roles))
        total += len(items)
        todo = [m["content"] for m in items if m["content"] not in seen]
        if todo:
            seen.update(zip(todo, encoder._truncated(todo).tolist()))  # the encoder's own rule
        for m in items:
            cut += seen[m["content"]]
            if m["id"] in gold:
                gold_n += 1
                gold_cut += seen[m["content"]]
    return cut / max(total, 1), gold_cut / max(gold_n, 1)


def signal_costs(texts: list[str], queries: list[str]) -> dict[str, float]:
    """Per-signal cost on real haystack turns, measured here: indexing, query and memory.

    Query cost is split into encoding the query (dense only, or dense + residual SAE in the
    same forward pass) and scoring it against all ``texts`` with each signal, plus fusion.
    """
    base = Encoder(EncoderConfig(sae=None))
    res = Encoder(EncoderConfig(), model=base.model)
    base.encode_documents(texts[:8])  # warm-up
    costs: dict[str, float] = {}
    docs = {}
    for name, enc in (("dense", base), ("dense + residual SAE", res)):
        start = time.perf_counter()
        docs[name] = enc.encode_documents(texts)
        costs[f"index: {name} s/message"] = (time.perf_counter() - start) / len(texts)
    start = time.perf_counter()
    lexical = LexicalIndex(stemmer=library_defaults()["bm25_stemmer"])  # as SAEMemory() indexes
    lexical.add(texts)
    costs["index: bm25 s/message"] = (time.perf_counter() - start) / len(texts)

    def per_query(fn) -> float:
        fn(queries[0])  # warm-up
        start = time.perf_counter()
        for q in queries:
            fn(q)
        return (time.perf_counter() - start) / len(queries) * 1000

    encoded = {q: res.encode_query(q) for q in queries}
    dense, sparse = docs["dense + residual SAE"].dense, docs["dense + residual SAE"].sparse.tocsr()
    rows = np.arange(len(texts))
    costs["query: encode dense ms"] = per_query(base.encode_query)
    costs["query: encode dense + residual SAE ms"] = per_query(res.encode_query)
    costs["query: score dense ms"] = per_query(lambda q: dense @ encoded[q].dense[0])
    costs["query: score sparse ms"] = per_query(lambda q: (sparse @ encoded[q].sparse[0].T).toarray())
    costs["query: score bm25 ms"] = per_query(lambda q: lexical.scores(q, rows))
    signals = {q: {"dense": dense @ encoded[q].dense[0], "sparse": (sparse @ encoded[q].sparse[0].T).toarray().ravel(),
                   "bm25": lexical.scores(q, rows)} for q in queries}
    costs["query: default fusion of 3 signals ms"] = per_query(lambda q: default_scores(signals[q]))
    costs["memory: dense B/message"] = dense.shape[1] * 4
    costs["memory: sparse B/message"] = (sparse.nnz * 8 + (sparse.shape[0] + 1) * 8) / len(texts)
    tf = lexical._tf.view
    costs["memory: bm25 B/message"] = (tf.nnz * 8 + (tf.shape[0] + 1) * 8 + len(texts) * 4) / len(texts)
    costs["sparse nnz/message"] = sparse.nnz / len(texts)
    costs["bm25 nnz/message"] = tf.nnz / len(texts)
    return costs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=("report", "dev", "all"), default="report")
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--offset", type=int, nargs="+", default=[2], help="one or more positions i %% every; default 2")
    parser.add_argument("--max-questions", type=int, default=None, help="at most this many selected questions; default all")
    parser.add_argument("--fill", action="store_true", help="encode (and cache) the user turns of questions not cached yet")
    parser.add_argument("--cost-messages", type=int, default=200, help="haystack turns timed for the cost table; default 200")
    parser.add_argument("--name", default=None, help="BENCHMARKS.md section fusion-<name> (and output files); default the split")
    parser.add_argument("--md", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--plot", type=Path, default=None, help="default benchmarks/fusion_selection_<split>.png")
    args = parser.parse_args(argv)
    args.name = args.name or args.split
    args.plot = args.plot or ROOT / "benchmarks" / f"fusion_selection_{args.name}.png"

    questions = lme.load(bench.DEFAULT_DATA)
    dev = bench.dev_ids(questions, Path(bench.DEFAULT_DEV)) if args.split != "all" else set()
    if not all(0 <= o < args.every for o in args.offset):
        parser.error(f"--offset values must lie in [0, --every), got {args.offset} with --every {args.every}.")
    chosen = bench.select(questions, args.split, dev, args.every, tuple(args.offset), args.max_questions)
    base = Encoder(EncoderConfig(pooling="max"))
    caches = bench.Caches(Path(ROOT / "benchmarks" / ".cache"), base)
    if args.fill:
        from tqdm.auto import tqdm

        for _, q in tqdm(chosen, desc="Encoding user turns (cached)", unit="question"):
            caches.fill([m["content"] for m in lme.messages(q, "user")], [q["question"]])
    signals = [question_signals(q, caches) for _, q in chosen]
    data = [d for d in signals if d is not None and d["gold"]]
    uncached = sum(d is None for d in signals)
    if not data:
        sys.exit("No cached strict questions: run benchmarks/longmemeval.py on the same selection first.")
    cfgs = configurations()
    default, cfgs[default] = default_config()
    results = {name: [evaluate(d, cfg) for d in data] for name, cfg in cfgs.items()}
    mean = {name: {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} for name, rows in results.items()}

    start, end = f"<!-- fusion-{args.name}:start -->", f"<!-- fusion-{args.name}:end -->"
    purpose = {"dev": "the dev split: what the defaults were chosen on",
               "confirm": "the confirmation split: first scored to apply the switch rule declared in the summary"}.get(
        args.name, "held-out questions: all of them outside the dev split")
    lines = [start, f"## Fusion ablations, {purpose} (LongMemEval-S, turn level, user turns)", ""]
    lines += [
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; commit `{commit()}`; machine: {machine()}",
        f"- data: `{os.path.relpath(bench.DEFAULT_DATA, ROOT)}`, split `{args.split}`, positions i % {args.every} in {{{', '.join(map(str, args.offset))}}}, "
        f"strict questions with cached embeddings: n = {len(data)} of {len(chosen)} selected ({uncached} skipped as not cached, "
        f"{len(chosen) - len(data) - uncached} as having no user-side evidence)",
        f"- encoder: all-MiniLM-L6-v2 + `{base.sae.name}` (sha256 {base.sae.sha256[:12]}), max pooling; BM25: saememory's per-user "
        "index (bm25s parity), English stopwords",
        f"- command: `python {' '.join(shlex.quote(a) for a in ['benchmarks/fusion.py'] + (argv if argv is not None else sys.argv[1:]))}`",
        f"- `SAEMemory()`'s default ranking is **{default}**; "
        + ("the defaults were chosen on this split" if args.split == "dev" else
           "the defaults were chosen on the dev split (section above); BENCHMARKS.md's summary says which held-out "
           "splits were looked at before the last change of default"),
        "- `stemmed bm25` is the same BM25 with PyStemmer's English Snowball stemmer (as LlamaIndex's BM25 retriever); "
        "`minmax top-50` min-max normalises each signal over its own 50 best turns, the rest scoring 0 (the relative-score "
        "rule of LlamaIndex's QueryFusionRetriever); `a:b:c` are dense:sparse:bm25 weights (1:1:1 when not shown)",
        "",
        "| configuration | turn R_all@5 | turn R_all@10 | turn nDCG@10 | session R_all@5 | session nDCG@10 |",
        "|---|---|---|---|---|---|",
    ]
    for name in sorted(mean, key=lambda n: -mean[n]["turn/recall_all@10"]):
        m = mean[name]
        lines.append(f"| {name} | {m['turn/recall_all@5']:.3f} | {m['turn/recall_all@10']:.3f} | {m['turn/ndcg_any@10']:.3f} | "
                     f"{m['session/recall_all@5']:.3f} | {m['session/ndcg_any@10']:.3f} |")

    best = max((n for n in mean if n not in PEERS), key=lambda n: mean[n]["turn/recall_all@10"] + mean[n]["turn/ndcg_any@10"])
    lines += ["", "Paired against each peer (10,000 bootstrap resamples of questions; a positive difference favours the row):", "",
              "| configuration | peer | metric | mean diff | 95% interval | wins / losses / ties |", "|---|---|---|---|---|---|"]
    for name in dict.fromkeys([default, best, "minmax: dense + sparse + bm25", "poster sqrt (raw, clamped): dense + sparse", "dense"]):
        for peer in PEERS:
            for metric in ("turn/recall_all@10", "turn/ndcg_any@10"):
                diff = np.array([a[metric] - b[metric] for a, b in zip(results[name], results[peer])])
                low, high = bootstrap(diff)
                lines.append(f"| {name} | {peer} | {metric} | {diff.mean():+.3f} | [{low:+.3f}, {high:+.3f}] | "
                             f"{int((diff > 0).sum())} / {int((diff < 0).sum())} / {int((diff == 0).sum())} |")

    if best != default:
        lines += ["", f"The default against this split's best configuration by turn R_all@10 + nDCG@10, `{best}`:", "",
                  "| metric | default minus best | 95% interval | wins / losses / ties |", "|---|---|---|---|"]
        for metric in ("turn/recall_all@10", "turn/ndcg_any@10"):
            diff = np.array([a[metric] - b[metric] for a, b in zip(results[default], results[best])])
            low, high = bootstrap(diff)
            lines.append(f"| {metric} | {diff.mean():+.3f} | [{low:+.3f}, {high:+.3f}] | "
                         f"{int((diff > 0).sum())} / {int((diff < 0).sum())} / {int((diff == 0).sum())} |")

    focus = list(dict.fromkeys([*PEERS, default, "minmax: dense + sparse + bm25", "minmax: dense + sparse", "dense", "bm25", "sparse"]))
    for title, key_of in (("question type", lambda d: d["type"]), ("length of the longest evidence turn", length_bucket)):
        groups: dict[str, list[int]] = {}
        for i, d in enumerate(data):
            groups.setdefault(key_of(d), []).append(i)
        lines += ["", f"turn R_all@10 by {title}:", "", "| group | n | " + " | ".join(focus) + " |", "|---|---|" + "---|" * len(focus)]
        for group, idx in sorted(groups.items()):
            cells = [f"{np.mean([results[n][i]['turn/recall_all@10'] for i in idx]):.3f}" for n in focus]
            lines.append(f"| {group} | {len(idx)} | " + " | ".join(cells) + " |")

    lines += ["", "Selection: context precision (all evidence turns selected) against context length, for fixed k and for "
              f"the adaptive mode (calibrated z-score >= threshold, at least 1, at most {ADAPTIVE_CAP}):", "",
              "| configuration | selection | context precision | mean chars | mean messages |", "|---|---|---|---|---|"]
    for name in (default, *PEERS):
        for k in FIXED_K:
            lines.append(f"| {name} | top {k} | {mean[name][f'cp@{k}']:.3f} | {mean[name][f'chars@{k}']:.0f} | {k} |")
        for t in THRESHOLDS:
            lines.append(f"| {name} | z >= {t} | {mean[name][f'cp@z{t}']:.3f} | {mean[name][f'chars@z{t}']:.0f} | "
                         f"{mean[name][f'n@z{t}']:.1f} |")
    lines += ["", "The default's adaptive mode against each fixed k: the highest threshold whose context precision "
              "reaches top k's, and the context it needs (a ratio below 1 is context saved at equal precision):", "",
              "| fixed k | top-k precision | top-k chars | threshold | its precision | its chars | chars ratio |",
              "|---|---|---|---|---|---|---|"]
    m = mean[default]
    for k, t in matching_thresholds(m).items():
        cells = (f"z >= {t} | {m[f'cp@z{t}']:.3f} | {m[f'chars@z{t}']:.0f} | {m[f'chars@z{t}'] / m[f'chars@{k}']:.2f}"
                 if t is not None else "none | – | – | –")
        lines.append(f"| {k} | {m[f'cp@{k}']:.3f} | {m[f'chars@{k}']:.0f} | {cells} |")
    plot_selection(mean, args.plot, [default, *PEERS])
    lines += ["", f"![selection]({os.path.relpath(args.plot, args.md.resolve().parent)})"]

    lines += ["", f"Messages longer than the encoder's window ({base.max_tokens} tokens, cut when encoded), over all "
              f"{len(chosen)} selected questions' haystacks:", "",
              "| messages indexed | share of all turns cut | share of evidence turns cut |", "|---|---|---|"]
    for roles, label in (("user", "user turns (official protocol)"), ("all", "both roles (poster's protocol)")):
        cut, gold_cut = truncation(chosen, base, roles)
        lines.append(f"| {label} | {cut:.3f} | {gold_cut:.3f} |")

    texts = [m["content"] for _, q in chosen[:3] for m in lme.messages(q, "user")][: args.cost_messages]
    queries = [q["question"] for _, q in chosen[:20]]
    costs = signal_costs(texts, queries)
    lines += ["", f"Cost of each signal, measured on {len(texts)} haystack user turns and {len(queries)} questions "
              "(one process, this machine, other work running). Query scoring is over all the turns; memory is the "
              "in-process storage (float32 values and int32 indices, int64 row pointers):", "",
              "| measure | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in costs.items()]
    lines.append(end)
    write_section(args.md, "\n".join(lines) + "\n", start, end)
    (ROOT / "benchmarks" / f"fusion_results_{args.name}.json").write_text(json.dumps({"mean": mean, "n": len(data), "costs": costs, "default": default,
                                                                  "per_question": {n: [r["turn/recall_all@10"] for r in rows] for n, rows in results.items()}}, indent=1))
    print("\n".join(lines[:40]))


def matching_thresholds(m: dict[str, float]) -> dict[int, float | None]:
    """For each fixed k, the highest threshold (least context) whose context precision reaches top k's."""
    return {k: max((t for t in THRESHOLDS if m[f"cp@z{t}"] >= m[f"cp@{k}"]), default=None) for k in FIXED_K}


def plot_selection(mean: dict[str, dict[str, float]], path: Path, names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, style in zip(names, ("-", "--", ":")):
        ax.plot([mean[name][f"chars@{k}"] for k in FIXED_K], [mean[name][f"cp@{k}"] for k in FIXED_K], "o" + style, label=f"{name}, top k")
        ax.plot([mean[name][f"chars@z{t}"] for t in THRESHOLDS], [mean[name][f"cp@z{t}"] for t in THRESHOLDS], "s" + style,
                label=f"{name}, adaptive")
    ax.set_xlabel("mean context length (chars)")
    ax.set_ylabel("context precision (all evidence retrieved)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
