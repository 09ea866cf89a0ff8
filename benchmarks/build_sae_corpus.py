"""Builds a broad message corpus for training saememory's sparse autoencoders.

    nice -n 10 python benchmarks/build_sae_corpus.py

The task dialogues and trivia chat that the SAEs were trained on say little about what people tell
a chat assistant about their lives (family, health, work, money, travel, pets, food, dates). This
script adds personal chat, phone conversations and opinionated everyday English. Everything is
read from ``../shared/data/`` (see the PROVENANCE.md files there):

* ``sgd``, ``topical_chat``: ``chat_corpus/sgd_topicalchat_turns.jsonl.gz``. SGD is CC BY-SA 4.0
  (Rastogi et al. 2020); Topical-Chat is CDLA-Sharing-1.0 (Gopalakrishnan et al. 2019).
* ``longmemeval``: user and assistant turns of LongMemEval-S haystack sessions (MIT, Wu et al.
  2025; the sessions come partly from ShareGPT and UltraChat), split into paragraphs.
* NLTK corpora, only those whose licence allows shipping derived weights commercially:
  ``switchboard`` (Open Content License), ``movie_reviews``, ``subjectivity``,
  ``sentence_polarity``, ``pros_cons``, ``product_reviews_1``, ``product_reviews_2`` (CC BY 4.0)
  and ``masc_tagged`` (MASC: "linguistic education, research, and development, including
  commercial development"; its ``spam`` category is skipped). Not used: nps_chat, brown and
  treebank (non-commercial), state_union and inaugural (speeches, not conversation).

Held-out rule (LongMemEval). A haystack session is used only if its id is in the haystack of some
question of the declared dev split (``longmemeval.declared_split(questions, "dev")``) and in the
haystack of no other question: not of the report split, nor of any question in neither split
(``_abs`` questions, dev30 questions outside positions i % 5 in {0, 1}, ...). The evidence
sessions (``answer_session_ids``) of every non-dev question are excluded too. Because the same
text recurs under different session ids (some held-out evidence turns reappear verbatim in dev-only
sessions), a session is also dropped if any of its turns of 40+ characters occurs verbatim in a
session of a non-dev question, and so is any paragraph whose text occurs in such a session.

Output: one gzip JSONL file, one ``{"text", "source"}`` message per line, whitespace-normalised,
de-duplicated on exact text, at most ``--max-per-source`` per source (a seeded sample), shuffled
with ``--seed`` and written atomically; plus ``<name>.manifest.json`` beside it with the counts,
sources, licences, held-out rule and the output's sha256.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import re
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))
import longmemeval as bench  # the LongMemEval harness: data paths and declared splits
from saememory.eval import longmemeval as lme

ROOT = bench.ROOT
DATA = ROOT / ".." / "shared" / "data"
CHAT = DATA / "chat_corpus" / "sgd_topicalchat_turns.jsonl.gz"
NLTK = DATA / "nltk_corpora"
DEFAULT_OUT = ROOT / "benchmarks" / ".cache" / "sae_corpus" / "broad_turns.jsonl.gz"
SHARED_TURN_CHARS = 40  # a turn this long found verbatim in a held-out session excludes its session
MASC_SKIP = {"spam"}  # MASC categories left out (phishing and advertising mail)

LICENCES = {
    "sgd": "CC BY-SA 4.0 (Schema-Guided Dialogue, Rastogi et al. 2020)",
    "topical_chat": "CDLA-Sharing-1.0 (Topical-Chat, Gopalakrishnan et al. 2019)",
    "longmemeval": "MIT (LongMemEval, Wu et al. 2025; sessions partly from ShareGPT and UltraChat)",
    "switchboard": "Open Content License (NLTK Switchboard sample)",
    "movie_reviews": "CC BY 4.0 (Pang & Lee)",
    "subjectivity": "CC BY 4.0 (Pang & Lee)",
    "sentence_polarity": "CC BY 4.0 (Pang & Lee)",
    "pros_cons": "CC BY 4.0 (Bing Liu)",
    "product_reviews_1": "CC BY 4.0 (Hu & Liu)",
    "product_reviews_2": "CC BY 4.0 (Bing Liu)",
    "masc_tagged": "MASC: education, research and development, including commercial development",
}
HELD_OUT_RULE = (
    "LongMemEval-S: a haystack session is used only if its id is in the haystack of a question of "
    "longmemeval.declared_split(questions, 'dev') and in the haystack of no other question (report "
    "split, _abs, or in neither split); evidence sessions of every non-dev question are excluded; a "
    "session is dropped if any of its turns of 40+ characters occurs verbatim (whitespace-normalised) in "
    "a session of a non-dev question, and so is any paragraph whose text occurs in such a session."
)


# Text clean-up -------------------------------------------------------------------------------


def normalise(text: str) -> str:
    """Whitespace collapsed to single spaces, ends stripped."""
    return " ".join(text.split())


_DETOK = [
    (re.compile(r" (n[’']t|[’'](?:s|re|ve|m|ll|d))\b", re.IGNORECASE), r"\1"),  # do n't -> don't, it 's -> it's
    (re.compile(r"\. \. \."), "..."),
    (re.compile(r" ([.,!?;:%)\]}])"), r"\1"),  # no space before closing punctuation
    (re.compile(r"([(\[{$]) "), r"\1"),  # nor after opening brackets
    (re.compile(r'" ([^"]*?) "'), r'"\1"'),  # " quoted " -> "quoted"
    (re.compile(r"`` ?| ?''"), '"'),
]


def detokenise(text: str) -> str:
    """Light inverse of Penn-style tokenisation on one sentence."""
    text = normalise(text)
    for pattern, repl in _DETOK:
        text = pattern.sub(repl, text)
    return text


def pieces(text: str, max_chars: int) -> Iterator[str]:
    """Paragraphs of ``text`` (split on blank lines), each normalised and cut at ``max_chars``
    (at the last space before the limit when there is one)."""
    for para in re.split(r"\n\s*\n", text):
        para = normalise(para)
        if len(para) > max_chars:
            cut = para.rfind(" ", 0, max_chars + 1)
            para = para[: cut if cut > max_chars // 2 else max_chars]
        if para:
            yield para


# Sources -------------------------------------------------------------------------------------


def chat_corpus() -> Iterator[tuple[str, str]]:
    """(source, text) of every SGD and Topical-Chat turn."""
    with gzip.open(CHAT, "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            yield row["source"], row["text"]


def digest(text: str) -> bytes:
    return hashlib.sha1(normalise(text).encode()).digest()


def longmemeval(max_chars: int, stats: dict) -> Iterator[tuple[str, str]]:
    """Paragraphs of the dev-only LongMemEval-S sessions (see the module docstring)."""
    questions = lme.load(bench.DEFAULT_DATA)
    dev = {q["question_id"] for _, q in bench.declared_split(questions, "dev")}
    held = [q for q in questions if q["question_id"] not in dev]
    banned = {sid for q in held for sid in q["haystack_session_ids"]}
    banned |= {sid for q in held for sid in q["answer_session_ids"]}
    held_sessions = [s for q in held for s in q["haystack_sessions"]]
    held_turns = {digest(t["content"]) for s in held_sessions for t in s if len(t["content"]) >= SHARED_TURN_CHARS}
    held_pieces = {digest(p) for s in held_sessions for t in s for p in pieces(t["content"], max_chars)}
    del held_sessions
    sessions: dict[str, list[dict]] = {}
    for q in questions:
        if q["question_id"] in dev:
            for sid, session in zip(q["haystack_session_ids"], q["haystack_sessions"]):
                if sid not in banned:
                    sessions.setdefault(sid, session)
    shared = [sid for sid, s in sessions.items() if any(digest(t["content"]) in held_turns for t in s)]
    stats.update(questions=len(questions), dev_questions=len(dev), non_dev_questions=len(held),
                 dev_only_session_ids=len(sessions), sessions_dropped_sharing_a_turn_with_held_out=len(shared))
    for sid in shared:
        del sessions[sid]
    stats.update(sessions=len(sessions), turns=sum(len(s) for s in sessions.values()),
                 user_turns=sum(t["role"] == "user" for s in sessions.values() for t in s),
                 paragraphs=0, paragraphs_dropped_as_held_out_text=0)
    for session in sessions.values():
        for turn in session:
            for p in pieces(turn["content"], max_chars):
                stats["paragraphs"] += 1
                if digest(p) in held_pieces:
                    stats["paragraphs_dropped_as_held_out_text"] += 1
                else:
                    yield "longmemeval", p


def zip_lines(name: str, member_filter=lambda member: True) -> Iterator[tuple[str, str]]:
    """(member, line) of the text files in ``nltk_corpora/<name>.zip``, README files skipped."""
    with zipfile.ZipFile(NLTK / f"{name}.zip") as z:
        for member in sorted(z.namelist()):
            if member.endswith("/") or "README" in member.upper() or not member_filter(member):
                continue
            text = z.read(member).decode("utf-8", errors="replace")
            for line in text.splitlines():
                yield member, line


def switchboard() -> Iterator[tuple[str, str]]:
    """Speaker turns (``A.12: text``); lines without a speaker prefix continue the previous turn."""
    turns: list[str] = []
    for _, line in zip_lines("switchboard", lambda m: m.endswith("/transcript")):
        if re.match(r"^[AB]\.\d+: ", line):
            turns.append(line.split(": ", 1)[1])
        elif line.strip() and turns:
            turns[-1] += " " + line
    for turn in turns:
        turn = re.sub(r"<[^>]*>|\{[A-Z]\b", " ", turn)  # <laughter>, {C-style annotation left-overs
        yield "switchboard", detokenise(re.sub(r"\s+-+\s*$", "", turn))


def one_per_line(name: str) -> Iterator[tuple[str, str]]:
    """movie_reviews, subjectivity, sentence_polarity: one tokenised sentence per line."""
    for _, line in zip_lines(name):
        yield name, detokenise(line)


def pros_cons() -> Iterator[tuple[str, str]]:
    for _, line in zip_lines("pros_cons"):
        yield "pros_cons", normalise(re.sub(r"</?(Pros|Cons)>", " ", line))


def product_reviews(name: str, tokenised: bool) -> Iterator[tuple[str, str]]:
    """``feature[+2]##sentence`` lines: the sentence; title ([t]) and header lines skipped.
    product_reviews_1 is tokenised lowercase text, product_reviews_2 is raw text."""
    clean = detokenise if tokenised else normalise
    for _, line in zip_lines(name):
        if "##" in line and not line.startswith(("[t]", "*")):
            yield name, clean(line.split("##", 1)[1])


def masc_tagged() -> Iterator[tuple[str, str]]:
    """One sentence per line of ``word_TAG`` tokens: tags stripped, detokenised."""
    with zipfile.ZipFile(NLTK / "masc_tagged.zip") as z:
        categories = dict(line.split() for line in z.read("masc_tagged/categories.txt").decode().splitlines()
                          if line.strip())

    def keep(member: str) -> bool:
        name = member.removeprefix("masc_tagged/")
        return name != "categories.txt" and categories.get(name) not in MASC_SKIP

    for _, line in zip_lines("masc_tagged", keep):
        words = [tok.rsplit("_", 1)[0] for tok in line.split()]
        yield "masc_tagged", detokenise(" ".join(words))


def all_sources(max_chars: int, stats: dict) -> Iterable[tuple[str, str]]:
    yield from chat_corpus()
    yield from longmemeval(max_chars, stats)
    yield from switchboard()
    for name in ("movie_reviews", "subjectivity", "sentence_polarity"):
        yield from one_per_line(name)
    yield from pros_cons()
    yield from product_reviews("product_reviews_1", tokenised=True)
    yield from product_reviews("product_reviews_2", tokenised=False)
    yield from masc_tagged()


# Build ---------------------------------------------------------------------------------------


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def build(args: argparse.Namespace) -> dict:
    lme_stats: dict = {}
    by_source: dict[str, list[str]] = {}
    seen: set[str] = set()
    for source, text in all_sources(args.max_chars, lme_stats):
        text = normalise(text)[: args.max_chars]
        if len(text) >= args.min_chars and text not in seen:
            seen.add(text)
            by_source.setdefault(source, []).append(text)
    rows = []
    for source, texts in by_source.items():
        if len(texts) > args.max_per_source:
            texts = random.Random(f"{args.seed}:{source}").sample(texts, args.max_per_source)
        rows += [{"text": t, "source": source} for t in texts]
    random.Random(args.seed).shuffle(rows)

    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, filename="") as gz:
        for row in rows:
            gz.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
    data = buffer.getvalue()
    atomic_write(args.out, data)

    counts = {s: sum(r["source"] == s for r in rows) for s in by_source}
    manifest = {
        "output": args.out.name, "sha256": hashlib.sha256(data).hexdigest(), "messages": len(rows),
        "counts": counts, "unique_before_cap": {s: len(t) for s, t in by_source.items()},
        "settings": {"seed": args.seed, "max_per_source": args.max_per_source,
                     "min_chars": args.min_chars, "max_chars": args.max_chars},
        "sources": {"chat_corpus": str(CHAT.relative_to(DATA)),
                    "longmemeval": str(bench.DEFAULT_DATA.relative_to(DATA)),
                    "nltk_corpora": [f"nltk_corpora/{s}.zip" for s in LICENCES if s not in
                                     ("sgd", "topical_chat", "longmemeval")],
                    "masc_categories_skipped": sorted(MASC_SKIP)},
        "licences": LICENCES, "held_out_rule": HELD_OUT_RULE, "longmemeval": lme_stats,
    }
    manifest_path = args.out.with_name(args.out.name.removesuffix(".jsonl.gz") + ".manifest.json")
    atomic_write(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .jsonl.gz (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the per-source caps and the shuffle")
    parser.add_argument("--max-per-source", type=int, default=40000, help="cap per source (seeded sample)")
    parser.add_argument("--min-chars", type=int, default=12, help="drop messages shorter than this")
    parser.add_argument("--max-chars", type=int, default=2000, help="cut messages (and paragraphs) at this")
    args = parser.parse_args()
    start = time.perf_counter()
    manifest = build(args)
    stats = manifest["longmemeval"]
    print(f"LongMemEval: {stats['dev_questions']} dev of {stats['questions']} questions; "
          f"{stats['dev_only_session_ids']} dev-only session ids, "
          f"{stats['sessions_dropped_sharing_a_turn_with_held_out']} dropped for a turn shared with held-out; "
          f"{stats['sessions']} sessions, {stats['turns']} turns ({stats['user_turns']} user), "
          f"{stats['paragraphs']} paragraphs, {stats['paragraphs_dropped_as_held_out_text']} dropped as held-out text")
    for source, n in manifest["counts"].items():
        print(f"{source:>18} {n:>7,} (of {manifest['unique_before_cap'][source]:,} unique)")
    print(f"{'total':>18} {manifest['messages']:>7,} -> {args.out} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
