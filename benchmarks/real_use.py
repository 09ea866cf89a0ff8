"""A memory used as a chat app uses it: several users, months of sessions, both roles, facts that
change, and the user's questions stored as later turns. A development set, not a proof.

    python benchmarks/real_use.py --users 6 --seed 0

How it is made (deterministic from ``--seed``): each user gets six facts (city, job, pet, band,
doctor, phone), said by the user in early sessions; three of them change months later (said
again with the new value). Between them, sessions of everyday small talk. Every user message is
followed by an assistant reply, and one reply in three echoes the subject back as a question
("Love the name. What kind of music do you play?"). Then the user asks one question per fact,
and each question (with a short reply) is stored as a later turn, as a chat app stores it, before
the next question is asked. The texts come from hand-written templates: they are far more
regular than real users, so treat the numbers as a check of direction, not of size.

Reported per ranking, over every question of every user: the current answer in the top 1 and
top 3 with the questions not stored and stored, and the share of changed facts whose new
statement ranks above the old one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))

from saememory import Encoder, SAEMemory  # noqa: E402

# fact -> (statement template, question, echo, values)
FACTS = {
    "city": ("I live in {} now.", "Which city do I live in?", "Nice! How do you like living there?",
             ["Lisbon", "Porto", "Madrid", "Oslo", "Dublin", "Vienna", "Krakow", "Lyon"]),
    "job": ("I work as a {} these days.", "What is my job?", "Interesting! What do you do all day at work?",
            ["nurse", "carpenter", "data analyst", "teacher", "pharmacist", "baker", "translator"]),
    "pet": ("My dog is called {}.", "What is my dog's name?", "Love the name. What breed is your dog?",
            ["Miso", "Pepper", "Biscuit", "Luna", "Rocky", "Noodle", "Olive"]),
    "band": ("I play the {} in a band.", "Which instrument do I play in my band?",
             "How fun! What kind of music do you play?", ["violin", "drums", "bass guitar", "saxophone", "piano"]),
    "doctor": ("My doctor is Dr. {}.", "What is my doctor's name?", "Good to have a doctor you trust. How often do you see them?",
               ["Alvarez", "Okafor", "Lindqvist", "Moreau", "Tanaka", "Novak"]),
    "phone": ("My new phone number is {}.", "What is my phone number?", "Got it. Should I remind you to update your contacts?",
              ["555-0142", "555-0178", "555-0193", "555-0121", "555-0166"]),
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
    text: str
    answer_id: str  # the message stating the current value
    old_id: str | None  # the message stating the old value, if the fact changed
    date: dt.datetime


def build(users: int, seed: int) -> tuple[list[dict], list[Question]]:
    """The messages of every user, and the questions to ask afterwards."""
    rng = random.Random(seed)
    messages, questions = [], []
    start = dt.datetime(2024, 1, 1, 9, 0, tzinfo=dt.timezone.utc)
    for u in range(users):
        user, n = f"user{u}", 0
        changing = set(rng.sample(sorted(FACTS), CHANGED))
        first = {fact: rng.choice(values) for fact, (_, _, _, values) in FACTS.items()}
        second = {fact: rng.choice([v for v in FACTS[fact][3] if v != first[fact]]) for fact in changing}
        events = [(rng.randint(0, 120), fact, first[fact]) for fact in FACTS]  # days from the start
        events += [(rng.randint(200, 330), fact, second[fact]) for fact in changing]
        events += [(rng.randint(0, 360), None, rng.choice(SMALL_TALK)) for _ in range(24)]
        stated: dict[str, list[str]] = {}
        for day, fact, value in sorted(events, key=lambda e: e[0]):
            when = start + dt.timedelta(days=day, minutes=rng.randint(0, 600))
            session = f"{user}-s{day}"
            text = FACTS[fact][0].format(value) if fact else value
            mid = f"{user}-m{n}"
            messages.append({"id": mid, "content": text, "role": "user", "session_id": session, "timestamp": when,
                             "user_id": user})
            if fact:
                stated.setdefault(fact, []).append(mid)
            reply = FACTS[fact][2] if fact and rng.random() < 1 / 3 else rng.choice(REPLIES)
            messages.append({"id": f"{user}-m{n}r", "content": reply, "role": "assistant", "session_id": session,
                             "timestamp": when + dt.timedelta(seconds=30), "user_id": user})
            n += 1
        asked = start + dt.timedelta(days=365)
        for i, fact in enumerate(sorted(FACTS)):
            ids = stated[fact]
            questions.append(Question(user, fact, FACTS[fact][1], ids[-1], ids[0] if len(ids) > 1 else None,
                                      asked + dt.timedelta(minutes=i)))
    return messages, questions


RANKINGS = {
    "default (dense + 2 SAE + BM25, z-score)": {},
    "dense + BM25, z-score (no SAE)": {"sparse_weight": 0.0},
    "dense only": {"fusion": "dense"},
    "BM25 only": {"fusion": "bm25"},
}


def evaluate(encoder: Encoder, messages: list[dict], questions: list[Question], settings: dict) -> dict[str, float]:
    counts = {"top1": 0, "top3": 0, "top1_stored": 0, "top3_stored": 0, "new_above_old": 0, "changed": 0}
    memory = SAEMemory(encoder, **settings)
    memory.add(messages)
    for q in questions:  # questions not stored: every question sees only the history
        ranked = [h.id for h in memory.search(q.text, k=50, user_id=q.user)]
        counts["top1"] += ranked[:1] == [q.answer_id]
        counts["top3"] += q.answer_id in ranked[:3]
        if q.old_id is not None:
            counts["changed"] += 1
            counts["new_above_old"] += ranked.index(q.answer_id) < ranked.index(q.old_id)
    for q in questions:  # the same questions, each stored with a reply before the next one is asked
        memory.add([{"content": q.text, "role": "user", "session_id": f"{q.user}-questions", "user_id": q.user,
                     "timestamp": q.date}])
        ranked = [h.id for h in memory.search(q.text, k=50, user_id=q.user)]
        counts["top1_stored"] += ranked[:1] == [q.answer_id]
        counts["top3_stored"] += q.answer_id in ranked[:3]
        memory.add([{"content": "Let me check my notes.", "role": "assistant", "session_id": f"{q.user}-questions",
                     "user_id": q.user, "timestamp": q.date + dt.timedelta(seconds=20)}])
    n = len(questions)
    return {"top1": counts["top1"] / n, "top3": counts["top3"] / n, "top1_stored": counts["top1_stored"] / n,
            "top3_stored": counts["top3_stored"] / n,
            "new_first": counts["new_above_old"] / max(counts["changed"], 1), "n": n, "changed": counts["changed"]}


def wilson(share: float, n: int, z: float = 1.96) -> str:
    """A share with its 95% Wilson interval, e.g. ``0.47 [0.32, 0.62]``."""
    if n == 0:
        return "–"
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((share * (1 - share) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return f"{share:.2f} [{max(0.0, centre - half):.2f}, {min(1.0, centre + half):.2f}]"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    messages, questions = build(args.users, args.seed)
    encoder = Encoder()
    print(f"{args.users} users, {len(messages)} messages, {len(questions)} questions "
          f"({sum(q.old_id is not None for q in questions)} about changed facts)\n")
    print("| ranking | answer top 1 | top 3 | top 1, questions stored | top 3, questions stored | new fact above old |")
    print("|---|---|---|---|---|---|")
    for name, settings in RANKINGS.items():
        r = evaluate(encoder, messages, questions, settings)
        cells = [wilson(r[key], r["n"]) for key in ("top1", "top3", "top1_stored", "top3_stored")]
        print(f"| {name} | {' | '.join(cells)} | {wilson(r['new_first'], r['changed'])} |", flush=True)


if __name__ == "__main__":
    main()
