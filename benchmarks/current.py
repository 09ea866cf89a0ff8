"""What is current, on LongMemEval-S: recency, questions that only ask, and the query's time words.

    python benchmarks/current.py --split dev       # every setting of the grid and the fusion weights, on the dev split
    python benchmarks/current.py --split report    # the default against no adjustment, held out
    python benchmarks/current.py --split report --split-messages none   # the same, messages encoded whole

Each question's user turns go into an ``SAEMemory`` with their session dates as timestamps (cached
vectors from ``benchmarks/longmemeval.py``; run ``--fill`` to encode what is missing), and the
question is searched with ``now=`` its question date, through ``SAEMemory.search`` itself: the
adjustments of ``saememory.current`` run exactly as a user gets them. Official protocol: user
turns, ``_abs`` left out, strict questions. Reported: turn R_all@10 and nDCG@10, overall and per
question type, with paired bootstrap intervals against the same ranking without adjustments, and
the default against the default before sentences (its run over whole messages,
``--split-messages none``, in ``benchmarks/current_<split>_whole.json``). Writes the
``current-<split>`` section of BENCHMARKS.md and the numbers to ``benchmarks/current_<split>.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))
import longmemeval as bench  # noqa: E402  (the LongMemEval harness: caches and splits)
from common import NO_ADJUSTMENTS, bootstrap, commit, machine, publish, variant  # noqa: E402

from saememory import Encoder, EncoderConfig, SAEMemory  # noqa: E402
from saememory.eval import longmemeval as lme  # noqa: E402
from saememory.ranking import SearchConfig, alternatives  # noqa: E402
from saememory.times import instant, query_window  # noqa: E402

ROOT = bench.ROOT
# The speaker hint is left at its default here: with the user's turns only, every candidate is on
# one side, so "What did you suggest?" can move no ranking (its gain is the same for all). The
# search of a query's alternatives and the reordering by words are not adjustments for what is
# current: each has its own row below.
OFF = {name: value for name, value in NO_ADJUSTMENTS.items()
       if name not in ("speaker_weight", "alternatives", "word_weight")}
GRID = {"recency_weight": (0.0, 0.5), "asks_penalty": (0.0, 8.0), "time_weight": (0.0, 1.0, 2.0),
        "supersede_depth": (0, 10)}
# The fusion weights dense:SAE:BM25 tried on dev with the adjustments at their defaults (fusion.py's ten).
WEIGHTS = ((1, 1, 1), (1, 0.5, 1), (1, 1, 0.5), (0.5, 1, 1), (2, 1, 1), (1, 2, 1), (1, 1, 2), (2, 2, 1), (1, 2, 2), (2, 1, 2))
METRICS = ("recall_all@10", "ndcg_any@10")
# The default setting's row in runs written before the json named it: whole messages, weights 1:2:1.
PREVIOUS_DEFAULT = "recency 0, asks 8, time 2, supersede 10"


def settings_name(settings: dict[str, float]) -> str:
    return ", ".join(f"{k.split('_')[0]} {v:g}" for k, v in settings.items())


def run(chosen: list[tuple[int, dict[str, Any]]], caches: bench.Caches, grid: list[dict[str, float]]) -> dict[str, list[dict]]:
    """Per setting, one row per strict question: its type, whether its query names a time, and the metrics."""
    from tqdm.auto import tqdm

    encoder = bench.CachedEncoder(caches.base, caches.base_encoder, caches.base_encoder.sae)
    # The alternatives a question ends in are encoded as queries too (SearchConfig.alternatives).
    caches.fill([], [text for _, q in chosen for text in alternatives(q["question"])])
    rows: dict[str, list[dict]] = {settings_name(s): [] for s in grid}
    for _, q in tqdm(chosen, desc="questions", unit="question"):
        gold = lme.gold_turn_ids(q, "user")
        if not gold:
            continue
        items = lme.messages(q, "user")
        try:
            memory = SAEMemory(encoder)
            memory.add(items)
        except KeyError:  # not cached: counted as skipped
            continue
        when = {m["id"]: instant(m["timestamp"]) for m in items}
        dated = sorted((when[g], g) for g in gold)
        newest, oldest = dated[-1][1], dated[0][1]
        changed = q["question_type"] == "knowledge-update" and dated[0][0] < dated[-1][0]
        now = instant(q["question_date"])
        named = query_window(q["question"], now) is not None
        base = memory.config
        for settings in grid:
            memory.config = base.replace(**settings)
            ranked = [h.id for h in memory.search(q["question"], k=50, now=now)]
            metrics = lme.retrieval_metrics(ranked, gold, (10,))
            new_first = None
            if changed:  # a knowledge update: does the latest evidence turn rank above the earliest?
                place = {m: i for i, m in enumerate(ranked)}
                new_first = float(place.get(newest, 99) < place.get(oldest, 99))
            rows[settings_name(settings)].append({"id": q["question_id"], "type": q["question_type"], "time_words": named,
                                                  "new_first": new_first, **{m: metrics[m] for m in METRICS}})
        memory.close()
    return rows


def table(rows: dict[str, list[dict]], baseline: str, names: list[str]) -> list[str]:
    types = sorted({r["type"] for r in rows[baseline]})
    lines = ["| setting | turn R_all@10 | nDCG@10 | Δ R_all@10 vs none [95% CI] | Δ nDCG@10 vs none [95% CI] | "
             + " | ".join(f"{t} (n={sum(r['type'] == t for r in rows[baseline])})" for t in types)
             + f" | time words in query (n={sum(r['time_words'] for r in rows[baseline])})"
             + f" | knowledge updates: latest evidence above earliest (n={sum(r['new_first'] is not None for r in rows[baseline])}) |",
             "|---|---:|---:|---:|---:|" + "---:|" * (len(types) + 2)]
    for name in names:
        cells = [f"{np.mean([r[m] for r in rows[name]]):.3f}" for m in METRICS]
        for m in METRICS:
            diff = np.array([a[m] - b[m] for a, b in zip(rows[name], rows[baseline])])
            low, high = bootstrap(diff) if name != baseline else (0.0, 0.0)
            cells.append(f"{diff.mean():+.3f} [{low:+.3f}, {high:+.3f}]")
        for t in types:
            cells.append("{:.3f} / {:.3f}".format(*[np.mean([r[m] for r in rows[name] if r["type"] == t]) for m in METRICS]))
        timed = [r for r in rows[name] if r["time_words"]]
        cells.append("{:.3f} / {:.3f}".format(*[np.mean([r[m] for r in timed]) if timed else float("nan") for m in METRICS]))
        updates = [r["new_first"] for r in rows[name] if r["new_first"] is not None]
        cells.append(f"{np.mean(updates):.2f}" if updates else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=("dev", "report"), default="dev")
    parser.add_argument("--fill", action="store_true", help="encode (and cache) the user turns not cached yet")
    parser.add_argument("--md", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--sae", default=None,
                        help="an SAE (bundled name or folder) instead of the default; its own cache, json and section")
    parser.add_argument("--precision", choices=("int8", "float32"), default="int8",
                        help="the model's precision: int8 (the default encoder) or float32 (EncoderConfig(quantize=False)), "
                             "which has its own cache, json and section")
    parser.add_argument("--split-messages", choices=("sentences", "none"), default="sentences",
                        help="how messages are encoded (EncoderConfig(split=...)): each sentence on its own (the default) "
                             "or whole, which has its own cache, json and section")
    parser.add_argument("--pooling", choices=("max", "max-content"), default="max",
                        help="how token codes are pooled (EncoderConfig(pooling=...)); another than max has its own "
                             "cache, json and section")
    parser.add_argument("--hygiene", choices=("on", "off"), default="on",
                        help="leave the features the SAE's hygiene hides out of the codes (EncoderConfig(hygiene=...); "
                             "the default) or keep every feature, which has its own json and section")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="only print the default's metrics with a SearchConfig setting or a saememory.current "
                             "constant changed (SUBJECT_MARGIN=0.05), against the default; writes nothing")
    args = parser.parse_args(argv)

    chosen = bench.declared_split(lme.load(bench.DEFAULT_DATA), args.split)
    if args.set:
        return print_variant(chosen, args)
    full = args.precision == "float32"
    sae = {"sae": args.sae} if args.sae else {}
    caches = bench.Caches(ROOT / "benchmarks" / ".cache",
                          Encoder(EncoderConfig(pooling=args.pooling, quantize=not full, split=args.split_messages,
                                                hygiene=args.hygiene == "on", **sae)))
    tag = (args.split + ("-float32" if full else "") + (f"-{Path(args.sae).name}" if args.sae else "")
           + (f"-{args.pooling}" if args.pooling != "max" else "") + ("-whole" if args.split_messages == "none" else "")
           + ("-all-features" if args.hygiene == "off" else ""))
    if args.fill:
        for _, q in chosen:
            caches.fill([m["content"] for m in lme.messages(q, "user")], [q["question"]])
    default = {name: getattr(SearchConfig(), name) for name in OFF}
    weights = {f"{s}_weight": getattr(SearchConfig(), f"{s}_weight") for s in ("dense", "sparse", "bm25")}
    if args.split == "dev" and not full:  # the float32 model is compared at the chosen defaults only
        grid = [dict(zip(GRID, values)) for values in itertools.product(*GRID.values())]
        grid += [{**default, "dense_weight": float(d), "sparse_weight": float(w), "bm25_weight": float(b)}
                 for d, w, b in WEIGHTS if (d, w, b) != tuple(weights.values())]
    else:
        grid = [OFF, default] + [{**OFF, name: default[name]} for name in OFF if default[name]]
    grid.append({**default, "sparse_weight": 0.0})  # the SAE's own share: the default without it
    grid.append({**default, "alternatives": False})  # what searching a query's alternatives adds
    grid.append({**default, "word_weight": 0.0})  # what reordering the best candidates by words adds
    grid = list({settings_name(g): g for g in grid}.values())
    rows = run(chosen, caches, grid)
    baseline = settings_name(OFF)
    n = len(rows[baseline])
    mean = {name: float(np.mean([r[m] for r in rs for m in METRICS])) for name, rs in rows.items()}
    names = sorted(rows, key=lambda name: -mean[name]) if args.split == "dev" and not full else list(rows)

    (ROOT / "benchmarks" / f"current_{tag.replace('-', '_')}.json").write_text(
        json.dumps({**rows, "default": settings_name(default), "weights": weights}))
    start, end = f"<!-- current-{tag}:start -->", f"<!-- current-{tag}:end -->"
    split = ("the dev split (dev30 + strict questions at i % 5 in {0, 1}): what the defaults are chosen on"
             if args.split == "dev" else "held out (strict questions at i % 5 in {2, 3, 4}, dev30 left out)")
    model = ", encoded by the float32 model (`EncoderConfig(quantize=False)`)" if full else ""
    model += f", SAE {args.sae}" if args.sae else ""
    model += f", pooling {args.pooling}" if args.pooling != "max" else ""
    model += ", whole messages (`EncoderConfig(split=\"none\")`)" if args.split_messages == "none" else ""
    model += ", every feature in the codes (`EncoderConfig(hygiene=False)`)" if args.hygiene == "off" else ""
    lines = [start, f"### What is current on LongMemEval-S, {split}{model}", "",
             f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; commit {commit()}",
             f"- Data: `../shared/data/longmemeval/{bench.DEFAULT_DATA.name}`; "
             f"{n} strict questions ({len(chosen) - n} of {len(chosen)} skipped: not cached or no user-side evidence)",
             f"- Machine: {machine()}",
             f"- Command: `python benchmarks/current.py {shlex.join(argv if argv is not None else sys.argv[1:])}`",
             f"- Default: {settings_name(default)} (`SearchConfig()`); every row is `SAEMemory.search(question, k=10, now=question date)` "
             "over the question's user turns, with everything else at its default.", "",
             "Per type: turn R_all@10 / nDCG@10. \"time words in query\": the questions whose text names a time "
             "`saememory.times.query_window` reads.", ""]
    lines += table(rows, baseline, names)
    with_sae, without = rows[settings_name(default)], rows[settings_name({**default, "sparse_weight": 0.0})]
    share = []
    for m in METRICS:
        diff = np.array([a[m] - b[m] for a, b in zip(with_sae, without)])
        low, high = bootstrap(diff)
        share.append(f"{m} {diff.mean():+.3f} [{low:+.3f}, {high:+.3f}]")
    lines += ["", "The SAE's own share (the default against the same ranking without the SAE, paired, 95% bootstrap): "
              + "; ".join(share) + "."]
    shipped = ROOT / "benchmarks" / f"current_{args.split}.json"  # the shipped encoder's run of this split
    whole = ROOT / "benchmarks" / f"current_{args.split}_whole.json"  # the same, messages encoded whole
    kept = ROOT / "benchmarks" / f"current_{args.split}_all_features.json"  # the same, hygiene off
    if tag == args.split and kept.is_file():
        lines += ["", against_shipped(rows[settings_name(default)], json.loads(kept.read_text()).get(settings_name(default)),
                                      kept.name, "every feature in the codes (`hygiene=False`)")]
    if tag == args.split and whole.is_file():
        before = json.loads(whole.read_text())
        lines += ["", against_shipped(rows[settings_name(default)], before.get(before.get("default", PREVIOUS_DEFAULT)),
                                      whole.name, "the default before sentences (whole messages, dense + 2 × SAE + BM25, "
                                      "time 2)" if "default" not in before else "whole messages (`split=\"none\"`)")]
    # With hygiene off, the default's own section holds the paired comparison (its json is written after this one).
    if tag != args.split and args.hygiene == "on" and shipped.is_file():
        lines += ["", against_shipped(rows[settings_name(default)], json.loads(shipped.read_text()).get(settings_name(default)),
                                      shipped.name)]
    lines += ["", end]
    publish(args.md, lines, start, end)


def print_variant(chosen: list[tuple[int, dict[str, Any]]], args: argparse.Namespace) -> None:
    """The default and a variant of it (``--set``), paired, printed: a probe, nothing written."""
    caches = bench.Caches(ROOT / "benchmarks" / ".cache", Encoder(EncoderConfig()))
    base = run(chosen, caches, [{}])
    changed = variant(args.set)  # after the default's run: constants of saememory.current are set here
    other = run(chosen, caches, [changed])
    these, those = next(iter(base.values())), next(iter(other.values()))
    print(f"variant: {' '.join(args.set)}; {len(these)} questions of the {args.split} split")
    for m in METRICS:
        diff = np.array([b[m] - a[m] for a, b in zip(these, those)])
        low, high = bootstrap(diff)
        print(f"{m}: {np.mean([a[m] for a in these]):.3f} -> {np.mean([b[m] for b in those]):.3f}, "
              f"{diff.mean():+.3f} [{low:+.3f}, {high:+.3f}]")
    for rows, label in ((these, "default"), (those, "variant")):
        first = [r["new_first"] for r in rows if r["new_first"] is not None]
        print(f"{label}: knowledge updates, latest evidence above earliest: {np.mean(first):.2f} (n = {len(first)})")


def against_shipped(these: list[dict], shipped: list[dict] | None, source: str, what: str = "the shipped encoder") -> str:
    """A line comparing this encoder's default ranking with the shipped encoder's (or ``what``), paired by question."""
    by_id = {r["id"]: r for r in shipped or []}
    pairs = [(r, by_id[r["id"]]) for r in these if r["id"] in by_id]
    if not pairs:
        return f"No question in common with the run of this split with {what} (`benchmarks/{source}`)."
    parts = []
    for m in METRICS:
        diff = np.array([a[m] - b[m] for a, b in pairs])
        low, high = bootstrap(diff)
        parts.append(f"{m} {np.mean([b[m] for _, b in pairs]):.3f} → {np.mean([a[m] for a, _ in pairs]):.3f}, "
                     f"{diff.mean():+.3f} [{low:+.3f}, {high:+.3f}] ({int((diff > 0).sum())} questions up, "
                     f"{int((diff < 0).sum())} down)")
    return (f"Against {what} (its run in `benchmarks/{source}`), the default setting, paired over {len(pairs)} "
            "questions, 95% bootstrap: " + "; ".join(parts) + ".")


if __name__ == "__main__":
    main()
