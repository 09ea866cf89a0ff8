"""Steering on LongMemEval dev questions: does boosting the evidence's SAE features raise it?

    python benchmarks/steering.py --split dev --every 5 --offset 0 --max-questions 20

For each strict question (cached by ``benchmarks/longmemeval.py`` or ``benchmarks/fusion.py
--fill``) and each evidence turn, the query is steered towards the turn's strongest SAE
features that the query does not already share (``saememory.interpret.steering.steer_code``, strength 1.0),
and the turn's rank under ``SAEMemory()``'s default ranking is compared before and
after. A second variant steers towards the features whose labels match the words of the gold
answer: the feature-search a person would do. Writes the steering section of BENCHMARKS.md.

    python benchmarks/steering.py --topics --users 30

Steering by a topic word, as a person would use it: on the real-use development set
(``benchmarks/real_use.py``: 30 users, six facts each, both roles, questions not stored), each
user asks a vague question ("What do you remember about me?", "Tell me something about
myself.") steered by one word per fact ("city", "work", "dog", "band", "doctor", "phone"); a hit
is a user message stating that fact (its first or its changed value) in the top 3. Compared:
no steering, the word's features only (``search(steer={feature ids: 1.0})`` from
``resolve_features``), and ``search(steer={word: 1.0})``, which also moves the dense query
towards the word. Writes the ``steering-topics`` section of BENCHMARKS.md.
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
from saememory.interpret.steering import resolve_steering, steer_code, steer_dense  # noqa: E402
from saememory.lexical import LexicalIndex  # noqa: E402

ROOT = bench.ROOT
START, END = "<!-- steering:start -->", "<!-- steering:end -->"
TOPICS = {"city": "city", "job": "work", "pet": "dog", "band": "band", "doctor": "doctor", "phone": "phone"}
VAGUE = ("What do you remember about me?", "Tell me something about myself.")


def topics(users: int, seed: int, md: Path) -> None:
    """Steering by a topic word on the real-use set (see the module doc)."""
    import real_use
    from common import wilson

    from saememory import SAEMemory

    messages, questions = real_use.build(users, seed)
    caches = bench.Caches(ROOT / "benchmarks" / ".cache", Encoder(EncoderConfig()))
    caches.fill([m["content"] for m in messages], list(VAGUE) + list(TOPICS.values()))
    memory = SAEMemory(bench.CachedEncoder(caches.base, caches.base_encoder, caches.base_encoder.sae))
    memory.add(messages)
    statements = {(q.user, q.fact): {q.answer_id, q.old_id} - {None} for q in questions}
    found: dict[str, list[bool]] = {"no steering": [], "the word's features only": [], "the word (features and dense)": []}
    for (user, fact), ids in sorted(statements.items()):
        word = TOPICS[fact]
        features = memory.resolve_features({word: 1.0})
        for query in VAGUE:
            for name, steer in (("no steering", None), ("the word's features only", dict.fromkeys(features, 1.0)),
                                ("the word (features and dense)", {word: 1.0})):
                hits = memory.search(query, k=3, user_id=user, steer=steer)
                found[name].append(any(h.id in ids for h in hits))
    start, end = "<!-- steering-topics:start -->", "<!-- steering-topics:end -->"
    lines = [start, "### Steering by a topic word, the real-use set", "",
             f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; commit `{commit()}`; machine: {machine()}",
             f"- data: `benchmarks/real_use.py` messages, {users} users, seed {seed} ({len(messages)} messages, both roles); "
             f"{len(statements)} user-fact pairs × {len(VAGUE)} vague questions = {len(found['no steering'])} searches",
             f"- command: `python benchmarks/steering.py --topics --users {users} --seed {seed}`", "",
             "| steering | a statement of the fact in the top 3 |", "|---|---:|"]
    for name, hits in found.items():
        lines.append(f"| {name} | {wilson(float(np.mean(hits)), len(hits))} |")
    lines += ["", "Topic words: " + ", ".join(f"{fact} → {word!r}" for fact, word in TOPICS.items())
              + ". 95% Wilson intervals.", end]
    write_section(md, "\n".join(lines) + "\n", start, end)
    print("\n".join(lines))


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
    parser.add_argument("--topics", action="store_true", help="steer by topic words on the real-use set instead")
    parser.add_argument("--users", type=int, default=30, help="real-use users for --topics; default 30")
    parser.add_argument("--seed", type=int, default=0, help="real-use seed for --topics; default 0")
    args = parser.parse_args(argv)
    if args.topics:
        return topics(args.users, args.seed, args.md)

    questions = lme.load(bench.DEFAULT_DATA)
    dev = bench.dev_ids(questions, Path(bench.DEFAULT_DEV)) if args.split != "all" else set()
    chosen = bench.select(questions, args.split, dev, args.every, args.offset, args.max_questions)
    encoder = Encoder(EncoderConfig(pooling="max"))
    caches = bench.Caches(ROOT / "benchmarks" / ".cache", encoder)
    sae = encoder.sae
    evidence_rows, answer_rows, text_rows, moved_rows, suppress_rows, n_questions = [], [], [], [], [], 0
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
        # As search(steer={answer: 1.0}) also moves the dense query towards the text.
        moved_dense = corpus.dense @ steer_dense(corpus.q_dense, [(encoder.encode_query(str(q["answer"])).dense[0], 1.0)])
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
            moved_rows.append((before, rank_of(row, moved_dense, (codes @ steered.T).toarray().ravel(), bm25)))
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
                        ("the gold answer as a text, its features only (labels holding all its words or a phrase "
                         "that is it, else its own 8 strongest features), as `search(steer={answer: 1.0})` read it "
                         "before texts moved the dense query", text_rows),
                        ("the gold answer as a text, as `search(steer={answer: 1.0})` reads it: its features, and the "
                         "dense query moved towards it (`steer_dense`)", moved_rows),
                        (f"suppressed: the query's {args.features} strongest features the evidence turn lacks", suppress_rows)):
        if not rows:
            lines.append(f"| {title} | 0 | – | – | – | – | – |")
            continue
        before, after = np.array(rows).T
        lines.append(f"| {title} | {len(rows)} | {int((after < before).sum())} | {int((after == before).sum())} | "
                     f"{int((after > before).sum())} | {np.median(before):.0f} → {np.median(after):.0f} | "
                     f"{int((before <= 10).sum())} → {int((after <= 10).sum())} |")
    lines += ["", "The first and last rows are oracle demonstrations (the evidence is known); the second to fourth "
              "are what a person steering by words could do without it.", END]
    write_section(args.md, "\n".join(lines) + "\n", START, END)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
