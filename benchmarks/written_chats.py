"""A hand-written chat history, asked as its users would ask it. A development set, not a proof.

    python benchmarks/written_chats.py
    python benchmarks/written_chats.py --no-publish --set speaker_weight=1 --set SUBJECT_MARGIN=0.05   # a variant

``benchmarks/data/written_chats.json``: two users of a personal assistant, 10 sessions each over
8 to 9 months, 124 messages of both roles with real timestamps and zones, written as people and
chatbots write (the assistant echoes, asks back, gives advice in numbered lists). Facts change
(city, job, phone, diet, a medication dose, a car, a GP), and earlier questions are asked again
and stored as turns. 73 questions, each with the ids of the messages that answer it, decided
before any ranking was run. Kinds: ``fact``, ``now`` (what is X now), ``before`` (what X was
before it changed), ``when``, ``time`` (the query names a time), ``advice`` (what the assistant
said). Every user's questions are asked at one reference time (``now`` in the file).
``--set NAME=VALUE`` ranks with a ``SearchConfig`` setting or a constant of ``saememory.current``
changed, to try a variant without editing the code.

The peers are those of the real-use benchmark: LangChain's ``EnsembleRetriever`` and
LlamaIndex's ``QueryFusionRetriever``, over BM25 and dense. Unlike ``benchmarks/real_use.py``,
nothing here is made from templates; it is small (n = 73), so
it checks direction on text unlike LongMemEval's, not size. Reported per ranking (each through
``SAEMemory.search``; the adapters rank the same, as tests check): an answer in the top 1, top 3
and top 10, overall with Wilson intervals and per kind. Writes the ``written-chats`` section of
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))

from common import NO_ADJUSTMENTS, commit, machine, publish, variant, wilson  # noqa: E402

from saememory import SAEMemory  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data" / "written_chats.json"
KINDS = ("fact", "now", "before", "when", "time", "advice")


def load(path: Path = DATA) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def ranks(memory: SAEMemory, data: dict, **settings) -> list[int | None]:
    """Per question, the rank of its first answer in the top 10 (None if none is there)."""
    base = memory.config
    memory.config = base.replace(**settings)
    try:
        out = []
        for q in data["questions"]:
            ids = [h.id for h in memory.search(q["query"], k=10, user_id=q["user"], now=data["now"][q["user"]])]
            out.append(next((i + 1 for i, m in enumerate(ids) if m in set(q["answers"])), None))
        return out
    finally:
        memory.config = base


def peer_ranks(data: dict, name: str) -> list[int | None]:
    """The same, for LangChain's ``EnsembleRetriever`` (``"langchain"``) or LlamaIndex's
    ``QueryFusionRetriever`` (``"llama_index"``) over BM25 and MiniLM vectors of whole messages (as
    those frameworks embed them; cached as in ``benchmarks/real_use.py``), one user's messages each."""
    import longmemeval as bench

    from saememory import Encoder, EncoderConfig

    caches = bench.Caches(ROOT / "benchmarks" / ".cache", Encoder(EncoderConfig(pooling="max", split="none")))
    caches.fill([m["content"] for m in data["messages"]], [q["query"] for q in data["questions"]])
    retrieve = bench.langchain_ensemble(caches) if name == "langchain" else bench.llama_index_fusion(caches)
    out = []
    for q in data["questions"]:
        mine = [m for m in data["messages"] if m["user_id"] == q["user"]]
        ids = retrieve(bench.build_corpus(mine, q["query"], caches), 10)
        out.append(next((i + 1 for i, m in enumerate(ids[:10]) if m in set(q["answers"])), None))
    return out


def rankings() -> dict[str, dict | str]:
    return {"default (SearchConfig())": {}, "default without the adjustments for what is current": NO_ADJUSTMENTS,
            "default without the SAE": {"sparse_weight": 0.0},
            "LangChain EnsembleRetriever (BM25 + dense, RRF)": "langchain",
            "LlamaIndex QueryFusionRetriever (BM25 + dense, relative score)": "llama_index"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--md", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--data", type=Path, default=DATA,
                        help="another history in the same format (its own section, named after the file); "
                             "default: benchmarks/data/written_chats.json, the development set")
    parser.add_argument("--no-publish", action="store_true", help="print the table, leave BENCHMARKS.md as it is")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a SearchConfig setting (speaker_weight=1) or a saememory.current constant "
                             "(SUBJECT_MARGIN=0.05) for every ranking; implies --no-publish")
    args = parser.parse_args(argv)
    settings = variant(args.set)
    args.no_publish = args.no_publish or bool(args.set)
    data = load(args.data)
    memory = SAEMemory()
    memory.add(data["messages"])
    questions = data["questions"]
    header = ("| ranking | top 1 | top 3 | top 10 | " + " | ".join(
        f"{kind} (n={sum(q['kind'] == kind for q in questions)}): top 1 / top 3" for kind in KINDS) + " |")
    lines = [header, "|---|" + "---:|" * (3 + len(KINDS))]
    for name, extra in rankings().items():
        if isinstance(extra, str) and args.set:
            continue  # a variant changes saememory only
        found = peer_ranks(data, extra) if isinstance(extra, str) else ranks(memory, data, **{**settings, **extra})
        n = len(found)
        share = lambda hits, total: wilson(hits / total, total)  # noqa: E731
        row = [share(sum(r == 1 for r in found), n), share(sum(r is not None and r <= 3 for r in found), n),
               share(sum(r is not None for r in found), n)]
        for kind in KINDS:
            mine = [r for r, q in zip(found, questions) if q["kind"] == kind]
            row.append(f"{sum(r == 1 for r in mine)} / {sum(r is not None and r <= 3 for r in mine)}")
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    print((f"variant: {' '.join(args.set)}\n" if args.set else "") + "\n".join(lines))
    if args.no_publish:
        return
    own = args.data.resolve() == DATA.resolve()
    tag = "" if own else f"-{args.data.stem.replace('_', '-')}"
    start, end = f"<!-- written-chats{tag}:start -->", f"<!-- written-chats{tag}:end -->"
    users = sorted({q["user"] for q in questions})
    where = args.data.resolve().relative_to(ROOT) if args.data.resolve().is_relative_to(ROOT) else args.data
    publish(args.md, [
        start, "### Written chats, a development set" if own else f"### Written chats, held out: `{where}`", "",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; commit {commit()}; machine: {machine()}",
        f"- Data: `{where}`: {len(users)} users, {len(data['messages'])} messages "
        f"(both roles), {n} questions asked at each user's reference time",
        "- Command: `python benchmarks/written_chats.py" + ("" if own else f" --data {where}") + "`", "",
        "Answer in the top 1 / 3 / 10 (95% Wilson intervals), and per kind of question the number "
        "answered first / in the top 3.", "", *lines, "", end], start, end)


if __name__ == "__main__":
    main()
