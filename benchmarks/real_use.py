"""A memory used as a chat app uses it: several users, months of sessions, both roles, facts that
change, and the user's questions stored as later turns. A development set, not a proof.

    python benchmarks/real_use.py --users 30 --seed 0

How it is made (deterministic from ``--seed``): each user gets six facts (city, job, dog, band,
doctor, phone), said by the user in the first four months in one of several phrasings; three of
them change in months 7 to 11, said again in another phrasing ("I moved to Oslo last month!").
Between them, sessions of everyday small talk. Every user message is followed by an assistant
reply: for a fact, one in three echoes it as a question ("Love the name. What breed is your
dog?"), one in three repeats it as a statement ("Oslo is a lovely place to live."), the rest
are generic. Then the user asks one question per fact. With "questions stored", each question
is first stored (as a chat app stores the turn) and then searched: half of the time with the
same words, half with other words for the same question; a short reply is stored after it.
The texts come from hand-written templates: far more regular than real users, so the numbers
check direction, not size.

Reported per ranking, over every question of every user: the user's message stating the current
value in the top 1 and top 3, with the questions not stored and stored, and the share of changed
facts whose new statement ranks above the old one. The peers are those of the LongMemEval
benchmark, on MiniLM vectors of whole messages, as those frameworks embed them (cached under
``benchmarks/.cache``): LangChain's ``EnsembleRetriever`` and LlamaIndex's
``QueryFusionRetriever``, each over BM25 and dense. "The default before sentences" is the default
of ``SAEMemory`` before messages were encoded sentence by sentence and before hygiene left form
features out of the SAE codes (whole messages, every feature, dense + 2 × SAE + BM25, time
weight 2); "every feature in the codes" is today's default with ``EncoderConfig(hygiene=False)``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))

from common import NO_ADJUSTMENTS, wilson  # noqa: E402

from saememory import SAEMemory  # noqa: E402


@dataclass(frozen=True)
class Fact:
    said: tuple[str, ...]  # first statements
    changed: tuple[str, ...]  # statements of a new value
    questions: tuple[str, ...]  # two wordings of the same question
    ask_back: str  # the assistant echoing it as a question
    say_back: str  # the assistant repeating it as a statement
    values: tuple[str, ...]


FACTS = {
    "city": Fact(("I live in {} now.", "Home for me is {} these days.", "I've been living in {} for a few years."),
                 ("I moved to {} last month!", "We just relocated to {}.", "I live in {} now."),
                 ("Which city do I live in?", "Where do I live these days?"),
                 "Nice! How do you like living there?", "{} is a lovely place to live.",
                 ("Lisbon", "Porto", "Madrid", "Oslo", "Dublin", "Vienna", "Krakow", "Lyon")),
    "job": Fact(("I work as a {} these days.", "My job? I'm a {}.", "I've been a {} since college."),
                ("I just started a new job as a {}.", "Big news: I'm now working as a {}.", "I work as a {} these days."),
                ("What is my job?", "What do I do for work?"),
                "Interesting! What do you do all day at work?", "Being a {} sounds rewarding.",
                ("nurse", "carpenter", "data analyst", "teacher", "pharmacist", "baker", "translator")),
    "pet": Fact(("My dog is called {}.", "We named our puppy {}.", "I have a dog named {}."),
                ("We adopted a new dog and called her {}.", "Our new puppy is named {}.", "My dog is called {}."),
                ("What is my dog's name?", "What did I name my dog?"),
                "Love the name. What breed is your dog?", "{} is such a cute name for a dog.",
                ("Miso", "Pepper", "Biscuit", "Luna", "Rocky", "Noodle", "Olive")),
    "band": Fact(("I play the {} in a band.", "In my band I'm on {}.", "I've played {} with my band for years."),
                 ("I switched to playing {} in the band.", "Now I'm the band's {} player.", "I play the {} in a band."),
                 ("Which instrument do I play in my band?", "What do I play in the band?"),
                 "How fun! What kind of music do you play?", "The {} is a great instrument for a band.",
                 ("violin", "drums", "bass guitar", "saxophone", "piano")),
    "doctor": Fact(("My doctor is Dr. {}.", "I see Dr. {} for checkups.", "Dr. {} has been my GP for ages."),
                   ("I changed doctors, I now see Dr. {}.", "My new GP is Dr. {}.", "My doctor is Dr. {}."),
                   ("What is my doctor's name?", "Who is my doctor?"),
                   "Good to have a doctor you trust. How often do you see them?", "Dr. {} sounds like a good doctor.",
                   ("Alvarez", "Okafor", "Lindqvist", "Moreau", "Tanaka", "Novak")),
    "phone": Fact(("My phone number is {}.", "You can reach me at {}.", "My number is {}."),
                  ("My new phone number is {}.", "I got a new number: {}.", "My phone number changed to {}."),
                  ("What is my phone number?", "What's my number?"),
                  "Got it. Should I remind you to update your contacts?", "Noted, {} is your number.",
                  ("555-0142", "555-0178", "555-0193", "555-0121", "555-0166")),
}
SMALL_TALK = [
    "Can you suggest a recipe for a quick weeknight pasta?", "What are some good stretches after a long run?",
    "My laptop keeps freezing when I open too many tabs.", "How long should I steep green tea?",
    "Do you know any good podcasts about history?", "Which houseplants survive in low light?",
    "I want to plan a weekend hiking trip.", "What's a good way to learn Spanish vocabulary?",
    "The weather has been so grey lately.", "Any tips for sleeping better?",
    "I finished a long fantasy novel last night.", "How do I fix a squeaky door hinge?",
]
REPLIES = ["Sure, here is an idea.", "Good question!", "Happy to help with that.", "That sounds great."]
CHANGED = 3  # facts per user that change


@dataclass
class Question:
    user: str
    fact: str
    text: str  # the wording searched
    stored: str  # the wording stored before it is searched (the same or the other one)
    answer_id: str  # the user's message stating the current value
    old_id: str | None  # the user's message stating the old value, if the fact changed
    date: dt.datetime


def build(users: int, seed: int) -> tuple[list[dict], list[Question]]:
    """The messages of every user, and the questions to ask afterwards."""
    rng = random.Random(seed)
    messages, questions = [], []
    start = dt.datetime(2024, 1, 1, 9, 0, tzinfo=dt.timezone.utc)
    for u in range(users):
        user, n = f"user{u}", 0
        changing = sorted(rng.sample(sorted(FACTS), CHANGED))  # sorted: a set would follow the per-process string hash
        first = {name: rng.choice(fact.values) for name, fact in FACTS.items()}
        second = {name: rng.choice([v for v in FACTS[name].values if v != first[name]]) for name in changing}
        events = [(rng.randint(0, 120), name, rng.choice(FACTS[name].said).format(first[name]), first[name])
                  for name in FACTS]  # days from the start
        events += [(rng.randint(200, 330), name, rng.choice(FACTS[name].changed).format(second[name]), second[name])
                   for name in changing]
        events += [(rng.randint(0, 360), None, rng.choice(SMALL_TALK), None) for _ in range(24)]
        stated: dict[str, list[str]] = {}
        for day, name, text, value in sorted(events, key=lambda e: e[0]):
            when = start + dt.timedelta(days=day, minutes=rng.randint(0, 600))
            session, mid = f"{user}-s{day}", f"{user}-m{n}"
            messages.append({"id": mid, "content": text, "role": "user", "session_id": session, "timestamp": when,
                             "user_id": user})
            reply = rng.choice(REPLIES)
            if name is not None:
                stated.setdefault(name, []).append(mid)
                kind = rng.randrange(3)
                reply = FACTS[name].ask_back if kind == 0 else FACTS[name].say_back.format(value) if kind == 1 else reply
            messages.append({"id": f"{mid}r", "content": reply, "role": "assistant", "session_id": session,
                             "timestamp": when + dt.timedelta(seconds=30), "user_id": user})
            n += 1
        asked = start + dt.timedelta(days=365)
        for i, name in enumerate(sorted(FACTS)):
            ids, wordings = stated[name], FACTS[name].questions
            same = rng.random() < 0.5
            text = rng.choice(wordings)
            stored = text if same else next(w for w in wordings if w != text)
            questions.append(Question(user, name, text, stored, ids[-1], ids[0] if len(ids) > 1 else None,
                                      asked + dt.timedelta(minutes=i)))
    return messages, questions


Ranker = Callable[[list[dict], Question], list[str]]


def memory_ranker(settings: dict[str, Any], encoder: Any) -> Callable[[list[dict]], Ranker]:
    """``SAEMemory`` with these settings, fed the messages once and each stored question as it comes."""

    def start(messages: list[dict]) -> Ranker:
        memory = SAEMemory(encoder, **settings)
        memory.add(messages)
        count = len(messages)

        def rank(current: list[dict], q: Question) -> list[str]:
            nonlocal count
            memory.add(current[count:])
            count = len(current)
            return [h.id for h in memory.search(q.text, k=50, user_id=q.user, now=q.date)]

        return rank

    return start


def peer_ranker(name: str, caches: Any) -> Callable[[list[dict]], Ranker]:
    """LangChain's or LlamaIndex's fusion retriever over one user's messages, built per question."""
    import longmemeval as bench

    retrieve = bench.langchain_ensemble(caches) if name == "langchain" else bench.llama_index_fusion(caches)

    def start(messages: list[dict]) -> Ranker:
        def rank(current: list[dict], q: Question) -> list[str]:
            mine = [m for m in current if m["user_id"] == q.user]
            return retrieve(bench.build_corpus(mine, q.text, caches), 50)

        return rank

    return start


def evaluate(start: Callable[[list[dict]], Ranker], messages: list[dict], questions: list[Question]) -> dict[str, float]:
    counts = {"top1": 0, "top3": 0, "top1_stored": 0, "top3_stored": 0, "new_above_old": 0, "changed": 0}
    current = list(messages)
    rank = start(current)
    for q in questions:  # questions not stored: every question sees only the history
        ranked = rank(current, q)
        counts["top1"] += ranked[:1] == [q.answer_id]
        counts["top3"] += q.answer_id in ranked[:3]
        if q.old_id is not None:
            counts["changed"] += 1
            counts["new_above_old"] += q.answer_id in ranked and (q.old_id not in ranked or
                                                                  ranked.index(q.answer_id) < ranked.index(q.old_id))
    for i, q in enumerate(questions):  # each question stored, then searched; a reply stored after it
        current.append({"id": f"{q.user}-q{i}", "content": q.stored, "role": "user", "session_id": f"{q.user}-questions",
                        "user_id": q.user, "timestamp": q.date})
        ranked = rank(current, q)
        counts["top1_stored"] += ranked[:1] == [q.answer_id]
        counts["top3_stored"] += q.answer_id in ranked[:3]
        current.append({"id": f"{q.user}-q{i}r", "content": "Let me check my notes.", "role": "assistant",
                        "session_id": f"{q.user}-questions", "user_id": q.user,
                        "timestamp": q.date + dt.timedelta(seconds=20)})
    n = len(questions)
    return {"top1": counts["top1"] / n, "top3": counts["top3"] / n, "top1_stored": counts["top1_stored"] / n,
            "top3_stored": counts["top3_stored"] / n,
            "new_first": counts["new_above_old"] / max(counts["changed"], 1), "n": n, "changed": counts["changed"]}


WHOLE = "whole messages"  # a ranking's key: over messages encoded whole (EncoderConfig(split="none"))
EVERY = "every feature"  # a ranking's key: with every SAE feature in the codes (EncoderConfig(hygiene=False))


def rankings(peers: bool) -> dict[str, dict[str, Any] | str]:
    """Our rankings (``SAEMemory`` settings over the defaults) and, by name, the framework peers."""
    off = NO_ADJUSTMENTS
    out: dict[str, dict[str, Any] | str] = {
        "default (SearchConfig())": {},
        "default without the adjustments for what is current": off,
        "default without the SAE": {"sparse_weight": 0.0},
        "default with every feature in the codes (hygiene=False)": {EVERY: True},
        "dense only": {"fusion": "dense", **off},
        "BM25 only": {"fusion": "bm25", **off},
        "the default before sentences (whole messages, every feature, dense + 2 × SAE + BM25)": {
            WHOLE: True, EVERY: True, "dense_weight": 1.0, "sparse_weight": 2.0, "time_weight": 2.0},
    }
    if peers:
        out["LangChain EnsembleRetriever (BM25 + dense, RRF)"] = "langchain"
        out["LlamaIndex QueryFusionRetriever (BM25 + dense, relative score)"] = "llama_index"
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-peers", action="store_true", help="leave out LangChain's and LlamaIndex's retrievers")
    args = parser.parse_args(argv)
    import longmemeval as bench

    from saememory import Encoder, EncoderConfig

    messages, questions = build(args.users, args.seed)
    # One cache per split (it holds every feature); a ranking reads it with or without hygiene.
    caches = {split: bench.Caches(bench.ROOT / "benchmarks" / ".cache", Encoder(EncoderConfig(pooling="max", split=split)))
              for split in ("sentences", "none")}
    for cache in caches.values():
        cache.fill([m["content"] for m in messages] + [q.stored for q in questions] + ["Let me check my notes."],
                   [q.text for q in questions])
    encoders = {(split, hygiene): bench.CachedEncoder(c.base, c.base_encoder if hygiene else c.raw_encoder,
                                                      c.base_encoder.sae, hygiene=hygiene)
                for split, c in caches.items() for hygiene in (True, False)}
    print(f"{args.users} users, {len(messages)} messages, {len(questions)} questions "
          f"({sum(q.old_id is not None for q in questions)} about changed facts)\n")
    print("| ranking | answer top 1 | top 3 | top 1, questions stored | top 3, questions stored | new fact above old |")
    print("|---|---|---|---|---|---|")
    for name, how in rankings(not args.no_peers).items():
        if isinstance(how, str):
            start = peer_ranker(how, caches["none"])
        else:
            settings = {k: v for k, v in how.items() if k not in (WHOLE, EVERY)}
            start = memory_ranker(settings, encoders["none" if how.get(WHOLE) else "sentences", not how.get(EVERY)])
        r = evaluate(start, messages, questions)
        cells = [wilson(r[key], r["n"]) for key in ("top1", "top3", "top1_stored", "top3_stored")]
        print(f"| {name} | {' | '.join(cells)} | {wilson(r['new_first'], r['changed'])} |", flush=True)


if __name__ == "__main__":
    main()
