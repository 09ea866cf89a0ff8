"""The poster's separability test: does a signal score a context closer to its question than to another?

    python benchmarks/separability.py --cases 100

SEP(C, R, NR) = SIM(C, R) - SIM(C, NR), for a context C (an evidence user turn of a LongMemEval-S
dev question: dev30 + strict questions at i % 5 in {0, 1}), its related question R and an
unrelated question NR (another dev question, drawn with a fixed seed). Per signal: dense (MiniLM
cosine), the SAE (cosine of the residual SAE's codes, max pooling as shipped and mean pooling as
the poster did, and max pooling with form features kept in the codes, ``hygiene=False``) and the
poster's combination sqrt(dense² + SAE²). Messages are encoded as the default encodes them
(sentence by sentence), questions whole. Reported: the mean SEP with a
95% bootstrap interval, and the share of cases where the related question is the closer one,
beside the poster's figures (REFERENCE §1: mean pooling ≈ 0.22, max pooling ≈ 0.17, dense ≈ 0.26,
with Gemma-2B + Nomic v1, not MiniLM). Writes the ``separability`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))
import longmemeval as bench  # noqa: E402
from common import bootstrap, commit, machine, publish  # noqa: E402

from saememory import Encoder, EncoderConfig  # noqa: E402
from saememory.eval import longmemeval as lme  # noqa: E402


def cases(n: int, seed: int) -> list[tuple[str, str, str]]:
    """``(context, related question, unrelated question)``: one evidence turn per dev question."""
    chosen = [q for _, q in bench.declared_split(lme.load(bench.DEFAULT_DATA), "dev")]
    rng = random.Random(seed)
    out = []
    for q in chosen:
        by_id = {m["id"]: m["content"] for m in lme.messages(q, "user")}
        gold = [g for g in lme.gold_turn_ids(q, "user") if g in by_id]
        if not gold:
            continue
        other = rng.choice([o for o in chosen if o["question_id"] != q["question_id"]])
        out.append((by_id[rng.choice(gold)], q["question"], other["question"]))
    rng.shuffle(out)
    return out[:n]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--md", type=Path, default=bench.ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    data = cases(args.cases, args.seed)
    contexts = [c for c, _, _ in data]
    related = [r for _, r, _ in data]
    unrelated = [u for _, _, u in data]
    max_encoder = Encoder(EncoderConfig(pooling="max"))
    mean_encoder = Encoder(EncoderConfig(pooling="mean"), model=max_encoder.model, sae=max_encoder.sae)
    every_encoder = Encoder(EncoderConfig(pooling="max", hygiene=False), model=max_encoder.model, sae=max_encoder.sae)
    sims: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, encoder in (("max", max_encoder), ("mean", mean_encoder), ("every", every_encoder)):
        c = encoder.encode_documents(contexts)
        r = [encoder.encode_query(t) for t in related]
        u = [encoder.encode_query(t) for t in unrelated]
        sparse_r = np.array([float(c.sparse[i].multiply(r[i].sparse[0]).sum()) for i in range(len(data))])
        sparse_u = np.array([float(c.sparse[i].multiply(u[i].sparse[0]).sum()) for i in range(len(data))])
        if name == "every":  # the shipped encoder with form features kept in the codes
            sims["SAE, max pooling, every feature in the codes (`hygiene=False`)"] = (sparse_r, sparse_u)
            continue
        dense_r = np.array([float(c.dense[i] @ r[i].dense[0]) for i in range(len(data))])
        dense_u = np.array([float(c.dense[i] @ u[i].dense[0]) for i in range(len(data))])
        sims["dense (MiniLM)"] = (dense_r, dense_u)
        sims[f"SAE, {name} pooling" + (" (shipped)" if name == "max" else " (the poster's)")] = (sparse_r, sparse_u)
        sims[f"sqrt(dense² + SAE²), {name} pooling"] = (np.sqrt(dense_r ** 2 + sparse_r ** 2), np.sqrt(dense_u ** 2 + sparse_u ** 2))
    start, end = "<!-- separability:start -->", "<!-- separability:end -->"
    lines = [start, "## The poster's separability test (2026-11-30)", "",
             f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; commit {commit()}; machine: {machine()}",
             f"- Data: {len(data)} cases from LongMemEval-S dev questions (one evidence user turn each; the unrelated "
             f"question is another dev question, seed {args.seed})",
             f"- Command: `python benchmarks/separability.py --cases {args.cases}`", "",
             "| signal | mean SEP [95% CI] | related closer | mean SIM(C, R) | mean SIM(C, NR) | poster (Gemma-2B SAE, Nomic) |",
             "|---|---:|---:|---:|---:|---:|"]
    poster = {"dense (MiniLM)": "≈ 0.26 (Nomic)", "SAE, mean pooling (the poster's)": "≈ 0.22",
              "SAE, max pooling (shipped)": "≈ 0.17"}
    for name, (r, u) in sims.items():
        sep = r - u
        low, high = bootstrap(sep)
        lines.append(f"| {name} | {sep.mean():.3f} [{low:.3f}, {high:.3f}] | {np.mean(sep > 0):.2f} | {r.mean():.3f} | "
                     f"{u.mean():.3f} | {poster.get(name, '–')} |")
    lines += ["", end]
    publish(args.md, lines, start, end)


if __name__ == "__main__":
    main()
