"""Hostile input against every public call, several users, both backends: what held.

Each step picks a public call of ``SAEMemory`` and arguments drawn from valid and hostile values
(empty, non-string, NaN, lone surrogates, quotes and filter syntax, NUL and zero-width
characters, huge numbers, unserialisable metadata, other users' ids). After every step:

- the call either succeeded or raised ``TypeError``, ``ValueError`` or ``KeyError`` with a
  message (anything else is counted as ``unexpected``);
- the memory equals a plain model of it, updated only by calls that succeeded;
- every user's search returns only that user's messages.

    python benchmarks/reliability.py --steps 2000 --backend in-process milvus

Prints a markdown table (per call: steps, succeeded, refused, unexpected, invariant violations).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))

from saememory import Encoder, MilvusBackend, SAEMemory  # noqa: E402

USERS = ["alice", 'o"hara', "' OR 1=1 --", None]  # None: the default user
HOSTILE_USERS = ["", 0, 5, b"alice", ["alice"], "\x00", "\u200b", "bad\ud800", 'alice" || user_id != "x', "x" * 600]
IDS = ["m0", "m1", "m2", 'q"uote', "\u200bzw"]
HOSTILE_IDS = ["", 7, None, "nul\x00id", "\udc80", "x" * 600]
TEXTS = ["My sister Ana moved to Lisbon.", "I adopted a dog called Miso.", "My blood pressure was 130/85.",
         "I play the violin on Tuesdays.", "We moved to Porto in March."]
HOSTILE_TEXTS = ["", "   ", None, 42, b"bytes", "lone \ud800", "word " * 20_000, "\x00\x01\x02"]
HOSTILE_METADATA = [{"when": dt.datetime(2024, 1, 1)}, {"x": float("nan")}, {1: "a"}, {"t": (1, 2)}, ["list"],
                    {"s": {1, 2}}, {"o": object()}, {"deep": {"ok": [1, 2, {"fine": True}]}}]
HOSTILE_NUMBERS = [0, -1, 2.5, True, "3", None, float("nan"), float("inf"), 10**12]
CALLS = ["add", "add_for_user", "update", "delete", "get", "contains", "explain", "search", "messages"]
EXPECTED = (TypeError, ValueError, KeyError)


def pick(rng: random.Random, valid: list, hostile: list, p_hostile: float = 0.25):
    return rng.choice(hostile if rng.random() < p_hostile else valid)


def key(user) -> str:
    return "default" if user is None else user


class Run:
    """One backend's run: the memory, a plain model of it, and the counts."""

    def __init__(self, memory: SAEMemory, seed: int) -> None:
        self.memory, self.rng = memory, random.Random(seed)
        self.model: dict[tuple[str, str], str] = {}  # (user, id) -> content
        self.counts: dict[str, Counter] = defaultdict(Counter)

    def step(self) -> None:
        rng, call = self.rng, self.rng.choice(CALLS)
        user = pick(rng, USERS, HOSTILE_USERS, 0.15)
        mid = pick(rng, IDS, HOSTILE_IDS, 0.15)
        text = pick(rng, TEXTS, HOSTILE_TEXTS, 0.2)
        message = {"content": text, "id": mid, "session_id": pick(rng, ["s1", "s2", None], ["", 3, 'x"y'], 0.1)}
        if rng.random() < 0.2:
            message["metadata"] = rng.choice(HOSTILE_METADATA)
        if rng.random() < 0.3:
            message["user_id"] = pick(rng, USERS, HOSTILE_USERS, 0.3)
        effect = None
        try:
            if call == "add":
                (new_id,) = self.memory.add([message])  # id None: a new one
                effect = ("put", key(message.get("user_id")), new_id, text)
            elif call == "add_for_user":
                (new_id,) = self.memory.add([message], user_id=user)  # None: the message's own user
                effect = ("put", key(user if user is not None else message.get("user_id")), new_id, text)
            elif call == "update":
                change = {k: v for k, v in message.items() if k != "content" or rng.random() < 0.8}
                self.memory.update([change], user_id=user)
                owner = key(user if user is not None else change.get("user_id"))
                given = change.get("content")  # None means "not given": the stored content stays
                effect = ("put", owner, mid, self.model.get((owner, mid)) if given is None else given)
            elif call == "delete":
                self.memory.delete(mid, user_id=user)
                effect = ("del", key(user), mid, None)
            elif call == "get":
                record = self.memory.get(mid, user_id=user)
                assert self.model.get((key(user), mid)) == record["content"], "get returned another message"
            elif call == "contains":
                found = self.memory.contains(mid, user_id=user)
                assert found == ((key(user), mid) in self.model), "contains disagrees with the model"
            elif call == "explain":
                hit = self.memory.explain(pick(rng, TEXTS, HOSTILE_TEXTS, 0.2), mid, user_id=user)
                assert hit.user_id == key(user) and self.model.get((key(user), mid)) == hit.content
            elif call == "search":
                kwargs = {"k": pick(rng, [1, 3, 10], HOSTILE_NUMBERS, 0.2)}
                if rng.random() < 0.3:
                    kwargs["min_score"] = pick(rng, [-1.0, 0.0], HOSTILE_NUMBERS, 0.5)
                if rng.random() < 0.2:
                    kwargs["steer"] = rng.choice([{"music": 1.0}, {3: float("nan")}, {10**9: 1.0}, [3], {3: -1.0}])
                if rng.random() < 0.2:
                    kwargs["max_chars"] = pick(rng, [100], HOSTILE_NUMBERS, 0.6)
                if rng.random() < 0.1:
                    kwargs["session_id"] = pick(rng, ["s1"], ["", 0, 's1" || 1'], 0.5)
                for hit in self.memory.search(pick(rng, TEXTS, HOSTILE_TEXTS, 0.2), user_id=user, **kwargs):
                    assert hit.user_id == key(user) and self.model.get((key(user), hit.id)) == hit.content
            elif call == "messages":
                self.memory.messages(user)
            outcome = "succeeded"
        except AssertionError as err:
            outcome, effect = "violation", None
            self.counts[call]["violation"] += 1
            print(f"violation in {call}: {err}", file=sys.stderr)
        except EXPECTED as err:
            outcome, effect = "refused" if str(err) else "refused without a message", None
        except Exception as err:  # noqa: BLE001  (counting what escapes is the point)
            outcome, effect = "unexpected", None
            print(f"unexpected {type(err).__name__} in {call}: {str(err)[:200]}", file=sys.stderr)
        self.counts[call]["steps"] += 1
        if outcome != "violation":
            self.counts[call][outcome] += 1
        if effect is not None:
            kind, owner, mid, content = effect
            if kind == "put":
                self.model[(owner, mid)] = content
            else:
                self.model.pop((owner, mid), None)
        self.check()

    def check(self) -> None:
        """The memory equals the model, user by user."""
        stored = {(m["user_id"], m["id"]): m["content"] for u in self.memory.users() for m in self.memory.messages(u)}
        if stored != self.model or len(self.memory) != len(self.model):
            self.counts["(memory equals model)"]["violation"] += 1
            print("violation: the memory differs from the model", file=sys.stderr)
            self.model = stored  # go on from what is stored, so one fault is counted once


def run(backend: str, steps: int, seed: int, encoder: Encoder, folder: Path) -> dict[str, Counter]:
    if backend == "milvus":
        memory = SAEMemory(encoder, backend=MilvusBackend(str(folder / "reliability.db"), f"rel_{seed}"))
    else:
        memory = SAEMemory(encoder)
    job = Run(memory, seed)
    for i in range(steps):
        job.step()
        if backend == "in-process" and i % 250 == 249:  # a save and load round trip now and then
            memory.save(folder / "saved")
            job.memory = memory = SAEMemory.load(folder / "saved", encoder=encoder)
            job.check()
    memory.close()
    return job.counts


def table(results: dict[str, dict[str, Counter]]) -> str:
    columns = ["steps", "succeeded", "refused", "refused without a message", "unexpected", "violation"]
    lines = ["| backend | call | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for backend, counts in results.items():
        for call in sorted(counts):
            lines.append(f"| {backend} | {call} | " + " | ".join(str(counts[call][c]) for c in columns) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict[str, Counter]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="steps per backend (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", nargs="+", default=["in-process", "milvus"], choices=["in-process", "milvus"])
    args = parser.parse_args(argv)
    encoder = Encoder()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for backend in args.backend:
            start = time.time()
            results[backend] = run(backend, args.steps, args.seed, encoder, Path(folder))
            print(f"{backend}: {args.steps} steps in {time.time() - start:.0f} s", file=sys.stderr)
    print(table(results))
    return results


if __name__ == "__main__":
    main()
