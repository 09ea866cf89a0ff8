"""Steering on LongMemEval dev questions: does boosting the evidence's SAE features raise it?

    python benchmarks/steering.py --split dev --every 5 --offset 0 --max-questions 20

For each strict question (cached by ``benchmarks/longmemeval.py`` or ``benchmarks/fusion.py
--fill``) and each evidence turn, the query is steered towards the turn's strongest SAE
features that the query does not already share (``saememory.interpret.steering.steer_code``, strength 1.0),
and the turn's rank under ``SAEMemory()``'s default ranking is compared before and
after. A second variant steers towards the features whose labels match the words of the gold
answer: the feature-search a person would do. Writes the steering section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import longmemeval as bench  # noqa: E402
from common import commit, default_scores, library_defaults, machine, write_section  # noqa: E402

from saememory import Encoder, EncoderConfig  # noqa: E402
from saememory.eval import longmemeval as lme  # noqa: E402
from saememory.interpret.labels import find_features  # noqa: E402
from saememory.interpret.steering import resolve_steering, steer_code  # noqa: E402
from saememory.lexical import LexicalIndex  # noqa: E402

ROOT = bench.ROOT
START, END = "<!-- steering:start -->", "<!-- steering:end -->"


def rank_of(row: int, dense: np.ndarray, sparse: np.ndarray, bm25: np.ndarray) -> int:
    scores = default_scores({"dense": dense, "sparse": sparse, "bm25": bm25})
    order = np.argsort(-scores, kind="stable")
    return int(np.where(order == row)[0][0]) + 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=("dev", "report", "all"), default="dev")
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--max-questions", type=int, default=20)
    parser.add_argument("--features", type=int, default=3, help="evidence features boosted; default 3")
    parser.add_argument("--md", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)

    questions = lme.load(bench.DEFAULT_DATA)
    dev = bench.dev_ids(questions, Path(bench.DEFAULT_DEV)) if args.split != "all" else set()
    chosen = bench.select(questions, args.split, dev, args.every, args.offset, args.max_questions)
    encoder = Encoder(EncoderConfig(pooling="max"))
    caches = bench.Caches(ROOT / "benchmarks" / ".cache", encoder)
    sae = encoder.sae
    evidence_rows, answer_rows, text_rows, suppress_rows, n_questions = [], [], [], [], 0
    for _, q in chosen:
        items = lme.messages(q, "user")
        gold = set(lme.gold_turn_ids(q, "user"))
        keys = [bench.text_key("doc", m["content"]) for m in items] + [bench.text_key("query", q["question"])]
        if not gold or caches.base.missing(keys):
            continue
        n_questions += 1
        corpus = bench.build_corpus(items, q["question"], caches)
        codes, q_code = corpus.sparse["res"], corpus.q_sparse["res"]
        dense = corpus.dense @ corpus.q_dense
        lexical = LexicalIndex(stemmer=library_defaults()["bm25_stemmer"])
        lexical.add(corpus.texts)
        bm25 = lexical.scores(q["question"], np.arange(len(items)))
        sparse = (codes @ q_code.T).toarray().ravel()
        answer_features = find_features(sae, str(q["answer"]), limit=args.features)
        as_text = resolve_steering(sae, {str(q["answer"]): 1.0}, lambda t: encoder.encode_query(t).sparse[0])
        for row, item in enumerate(items):
            if item["id"] not in gold:
                continue
            before = rank_of(row, dense, sparse, bm25)
            code = codes[row]
            shared = set(q_code.indices.tolist())
            own = [int(code.indices[i]) for i in np.argsort(-code.data) if int(code.indices[i]) not in shared][: args.features]
            steered = steer_code(q_code, dict.fromkeys(own, 1.0), sae.cfg.d_sae)
            after = rank_of(row, dense, (codes @ steered.T).toarray().ravel(), bm25)
            evidence_rows.append((before, after))
            if answer_features:
                steered = steer_code(q_code, dict.fromkeys(answer_features, 1.0), sae.cfg.d_sae)
                answer_rows.append((before, rank_of(row, dense, (codes @ steered.T).toarray().ravel(), bm25)))
            steered = steer_code(q_code, as_text, sae.cfg.d_sae)
            text_rows.append((before, rank_of(row, dense, (codes @ steered.T).toarray().ravel(), bm25)))
            lacking = [int(q_code.indices[i]) for i in np.argsort(-q_code.data) if code[0, int(q_code.indices[i])] == 0]
            steered = steer_code(q_code, dict.fromkeys(lacking[: args.features], 0.0), sae.cfg.d_sae)
            suppress_rows.append((before, rank_of(row, dense, (codes @ steered.T).toarray().ravel(), bm25)))
    lines = [START, "## Steering on LongMemEval dev questions", "",
             f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; commit `{commit()}`; machine: {machine()}",
             f"- data: split `{args.split}`, positions i % {args.every} == {args.offset}, strict questions with cached "
             f"embeddings: n = {n_questions} questions, {len(evidence_rows)} evidence turns; user turns indexed",
             f"- ranking: {bench.describe_default(library_defaults())}; SAE `{sae.name}` (sha256 {sae.sha256[:12]}), labels shipped with it",
             f"- command: `python {' '.join(shlex.quote(a) for a in ['benchmarks/steering.py'] + (argv if argv is not None else sys.argv[1:]))}`",
             "", "| steering towards | evidence turns | rank raised | unchanged | lowered | median rank before → after | in top 10 before → after |",
             "|---|---|---|---|---|---|---|"]
    for title, rows in ((f"the evidence turn's {args.features} strongest features not shared with the query", evidence_rows),
                        (f"the {args.features} features whose labels best match the gold answer's words", answer_rows),
                        ("the gold answer as a text, as `search(steer={answer: 1.0})` reads it (labels holding all its "
                         "words or a phrase that is it, else its own 8 strongest features)", text_rows),
                        (f"suppressed: the query's {args.features} strongest features the evidence turn lacks", suppress_rows)):
        if not rows:
            lines.append(f"| {title} | 0 | – | – | – | – | – |")
            continue
        before, after = np.array(rows).T
        lines.append(f"| {title} | {len(rows)} | {int((after < before).sum())} | {int((after == before).sum())} | "
                     f"{int((after > before).sum())} | {np.median(before):.0f} → {np.median(after):.0f} | "
                     f"{int((before <= 10).sum())} → {int((after <= 10).sum())} |")
    lines += ["", "The first and last rows are oracle demonstrations (the evidence is known); the second and third "
              "are what a person steering by words could do without it.", END]
    write_section(args.md, "\n".join(lines) + "\n", START, END)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
