"""What the reordering by words (``SearchConfig.word_weight``) costs a warm query, in one run.

    python benchmarks/word_cost.py

The first 1,500 distinct user turns of LongMemEval-S as one user's memory, its questions 6 to 100
as queries (the first 5 warm up). Each query runs on the default memory and on one with
``word_weight=0``, interleaved; then each query twice in a row on the default, the second
timed: the word vectors its candidates had are kept (``ranking.WordCache``, per user). Prints
p50 / p95 in ms and the ratio of the p50s; BENCHMARKS.md quotes it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))
import speed  # noqa: E402  (its corpus)

from saememory import Encoder, SAEMemory  # noqa: E402
from saememory.ranking import WordCache  # noqa: E402


def main() -> None:
    texts, queries = speed.corpus(1500, 100)
    encoder = Encoder()
    messages = [{"id": str(i), "content": t, "user_id": "u"} for i, t in enumerate(texts)]
    words, plain = SAEMemory(encoder), SAEMemory(encoder, word_weight=0.0)
    words.add(messages)
    plain.add(messages)
    for q in queries[:5]:
        words.search(q, user_id="u")
        plain.search(q, user_id="u")
    words._words = WordCache()  # nothing kept from the warm-up: every candidate is read anew
    times: dict[str, list[float]] = {"words, candidates read anew": [], "word_weight=0": [], "words, read before": []}
    for q in queries[5:]:
        for name, memory in (("words, candidates read anew", words), ("word_weight=0", plain)):
            start = time.perf_counter()
            memory.search(q, user_id="u")
            times[name].append(time.perf_counter() - start)
    for q in queries[5:]:  # the same question again at once: its candidates' words are kept
        words.search(q, user_id="u")
        start = time.perf_counter()
        words.search(q, user_id="u")
        times["words, read before"].append(time.perf_counter() - start)
    p50 = {name: float(np.percentile(v, 50)) for name, v in times.items()}
    print(f"{len(texts)} messages, {len(queries) - 5} queries")
    for name, v in times.items():
        print(f"{name}: p50 {1000 * p50[name]:.1f} ms, p95 {1000 * float(np.percentile(v, 95)):.1f} ms, "
              f"{p50[name] / p50['word_weight=0']:.2f}x the p50 of word_weight=0")


if __name__ == "__main__":
    main()
