"""What is current: the adjustments made to a query's best candidates for time and for questions.

After fusion, the ``adjust_depth`` best of a user's messages for a query are adjusted. Each
adjustment is in calibrated units (standard deviations of the fused scores over the user's
messages for this query) and is recorded on the hit, so a ranking can always be read back:

- ``recency`` (off by default): the newest of these candidates gains ``recency_weight``, the
  oldest nothing, linearly in time between, so of two messages that match about equally the
  later one ranks first.
- ``asks``: a message that asks without telling loses ``asks_penalty``. It has a question (a
  sentence that ends in "?" and opens as an English question does) and tells nothing else: an
  assistant's message may add at most two words of its own, function words not counted ("Love
  the name. What breed is he?", "Good to have a doctor you trust. How often do you see
  them?"); the user's has no sentence besides its questions but courtesies ("Thanks."), and
  they add at most four words to the query's (the same question asked earlier and stored, or
  another short one: "Who is my doctor?", "Remind me, who is my doctor?"). A question that carries news ("Can you suggest a gift for my sister Ana, who turns
  40 in May?") keeps its score, and so does a statement with a question tagged on ("My dog is
  Luna, isn't she cute?").
- ``supersedes``: of two of the user's statements among the ``supersede_depth`` best that are
  about the same subject (dense cosine at least ``SAME_SUBJECT``, and ``SUBJECT_MARGIN`` above
  each one's background cosine to the other statements among them: a shared subject, not a
  shared style), said in different sessions,
  the later one is raised just above the earlier one if it scores at most ``SUPERSEDE_MARGIN``
  below it, or ``CHANGE_MARGIN`` if it says that something changed (``states_change``: "our
  new", "moved", "switched", "these days" ...): "We adopted a new dog and called her Olive"
  above "I have a dog named Rocky". Once per later session (``ONE_PER_SESSION``): not when a
  statement of the later one's session about the same subject already ranks above the earlier.
  When the query names a time, a statement said after it does not supersede one said within
  it: "Where did I work in January?" asks what was true then.
  When the query asks what was true before a change (``asks_before``: "before", "previous",
  "used to" ... in a question about the past), the earlier statement is raised above the later
  one instead.
- ``echoes``: among the same best candidates, a reply (any role but the user's) that repeats a
  statement the user made earlier in its session (dense cosine at least ``ECHO``) is lowered
  just below it: "Luna is such a cute name for a dog" below "We named our puppy Luna"; not when
  the query asks for the assistant's words (``speaker`` below), whose answer is such a reply.
- ``speaker``: when the query says who said what it asks for, that side's messages gain
  ``speaker_weight``: "What tips did you give me?" asks for the assistant's words, "What did I
  tell you about the race?" for the user's (``speaker``). A gain, not a loss for the other side:
  only the best candidates are adjusted, and a loss would let messages below them overtake.
- ``replies``: when the query asks for the assistant's words, the assistant's first reply to a
  user's message is raised just above that message (the user's latest earlier message of its
  session among the same candidates): "Any training advice for the 10K?" holds the query's
  words, the reply after it holds the advice asked for.
- ``time``: when the query names a time ("two weeks ago", "in March"; see
  ``saememory.times.query_window``), the messages said within it gain ``time_weight``.

Words are counted as BM25 counts them (``saememory.lexical.tokenize``: lowercase, English
stopwords dropped, stemmed with the memory's stemmer).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from saememory.backends.base import matches
from saememory.lexical import tokenize
from saememory.times import TimeWindow, iso, query_window

OWN_WORDS = 2  # words of its own an assistant's message that asks may state ("Love the name.")
NEW_QUESTION_WORDS = 4  # words a user's question that only asks may add to the query's
# What a user's message that only asks may say besides its question ("Thanks. Also, ...?"), and
# the words of a lead-in before a question ("Remind me, what ...?"): short lists, since any other
# word may tell something ("I'm vegan, what should I cook?").
_COURTESIES = frozenset("thanks thank great ok okay cool nice sure perfect awesome hi hello hey sorry please yes yeah "
                        "wow lol brilliant lovely".split())
SAME_SUBJECT = 0.4  # dense cosine from which two of the user's statements are about the same subject
SUBJECT_MARGIN = 0.1  # how far above each one's background cosine to the other statements that cosine must be
BACKGROUND = 5  # statements besides itself a background cosine needs (fewer: the cosine alone decides)
ECHO = 0.5  # dense cosine from which a reply repeats a user's statement of its session
SUPERSEDE_MARGIN = 1.0  # how far (calibrated units) below an earlier statement a later one may be and still supersede it
CHANGE_MARGIN = 3.0  # the same for a later statement that says something changed ("I moved to Oslo")
# A later session supersedes an earlier statement once: when one of its statements about the same
# subject already ranks above it, another of that session is not raised too (it would push down
# history the query may ask for: "How many days did it take me to finish the book?").
ONE_PER_SESSION = True
# Words that say a state changed. A later statement with one of them supersedes from further
# below: it is phrased as news, not in the question's words ("We just relocated to Lyon"
# against "Which city do I live in?"). Narrow on purpose: "new" only after "my", "our", "a" or
# "the" and in lower case ("our new puppy", not "New York" or "some new games"), "now" only
# next to its subject ("I'm now", "but now I"), not after a duration ("for a month now"). Only
# the sentences that state are read ("Can you recommend a new laptop?" asks), and a word of
# change just after a negation does not count ("I haven't switched banks").
_CHANGE = re.compile(
    r"\b(?:moved|relocated|switched|changed|replaced|upgraded|adopted|nowadays|anymore|instead|no\s+longer"
    r"|these\s+days)\b"
    r"|\b(?:my|our|a|the)\s+new\b"
    r"|\b(?:i'm|i\s+am|we're|we\s+are|i|we|is|are|it's)\s+now\b"
    r"|(?:^|[.!?:;,]\s+|\b(?:and|but|so)\s+)now,?\s+(?:i|we)\b",
    re.IGNORECASE)
_NEGATIONS = frozenset("not never no nor".split())

_SENTENCE = re.compile(r"[^.!?\n]*(?:[.!?]+|\n|$)")
_WORD = re.compile(r"[\w']+")
_QUESTION_OPENINGS = frozenset(
    "what which who whom whose where when why how do does did is are was were am can could should would will "
    "shall may might must have has had any anyone anything".split())
_OPENERS = frozenset("so and but also oh hey hi hello ok okay well um hmm btw then now quick question".split())
_LEAD_INS = _OPENERS | _COURTESIES | frozenset("remind me tell one more thing by the way again you".split())
# Not "the day before", "how many days before" (a time), nor "our previous chat" (a conversation);
# "when I was first diagnosed", "we first met", not "Was I first in line?" (a rank).
_BEFORE = re.compile(
    r"(?<!\bday\s)(?<!\bdays\s)(?<!\bweek\s)(?<!\bweeks\s)(?<!\bmonth\s)(?<!\bmonths\s)(?<!\byear\s)"
    r"(?<!\byears\s)(?<!\bnight\s)(?<!\bhours\s)(?<!\blong\s)\bbefore\b"
    r"|\bprevious(?:ly)?\b(?!\s+(?:chat|conversation|session|discussion|talk|message|exchange|question)s?\b)"
    r"|\b(?:used\s+to|former(?:ly)?|originally|at\s+first|prior\s+to)\b"
    r"|\bwhen\s+(?:i|we)\s+(?:was\s+|were\s+)?first\b|\b(?:i|we)\s+first\s+\w+ed\b", re.IGNORECASE)
_PAST = re.compile(r"\b(?:was|were|did|had|used)\b", re.IGNORECASE)  # "What do I eat before a race?" asks the present
# Who said what the query asks for: the assistant ("you gave me", "did you suggest", "your
# advice") or the user ("I told you", "did I mention"). Past tense only: "Can you tell me my
# dose?" asks the assistant now, and says nothing of who said the answer.
_SPEECH_PAST = ("said|told|gave|suggested|recommended|mentioned|proposed|advised|shared|wrote|listed|explained"
                "|showed|sent|offered|described|provided")
_SPEECH = "say|tell|give|suggest|recommend|mention|propose|advise|share|write|list|explain|show|send|offer|describe|provide"
_ASSISTANT_SAID = re.compile(  # "the doctor you recommended" names a doctor: the verb must be to me, or asked
    rf"\b(?:you\s+(?:just\s+|once\s+|already\s+)?(?:{_SPEECH_PAST})\s+(?:me|us)|did\s+you\s+(?:{_SPEECH})"
    r"|your\s+(?:advice|suggestions?|recommendations?|tips?|answer|reply))\b", re.IGNORECASE)
_USER_SAID = re.compile(r"\b(?:i\s+(?:\w+\s+)?(?:told|said|mentioned|wrote|shared)(?:\s+\w+)?\s+(?:to\s+)?you"
                        r"|did\s+i\s+(?:say|tell|mention|write|share))\b", re.IGNORECASE)


def adjustments(records: list[dict[str, Any]], calibrated: np.ndarray, query: str, now: dt.datetime, config: Any,
                vectors: Callable[[list[str]], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Each adjustment that applies, aligned with ``records``, in calibrated units.

    Args:
        records: The best candidates' stored records (``id``, ``content``, ``role``, ``time``),
            best first.
        calibrated: Their calibrated scores.
        query: The query text.
        now: The reference time the query's time words count back from (timezone-aware).
        config: The ``SearchConfig``: ``recency_weight``, ``asks_penalty``, ``time_weight``,
            ``supersede_depth`` (0 turns each off) and ``bm25_stemmer``.
        vectors: Gives the dense vectors of message ids (``Backend.vectors`` for the user).
    """
    out: dict[str, np.ndarray] = {}
    if not records:
        return out
    if config.recency_weight:
        out["recency"] = config.recency_weight * recency(records)
    asks = asks_without_telling(records, query, config.bm25_stemmer)
    if config.asks_penalty:
        out["asks"] = -config.asks_penalty * asks.astype(np.float64)
    who = speaker(query)
    if who is not None and config.speaker_weight:
        said = np.array([(r["role"] == "user") == (who == "user") for r in records], dtype=np.float64)
        out["speaker"] = config.speaker_weight * said
    # The time the query names: a gain with time_weight, and a bound on supersession either way.
    window = query_window(query, now) if config.time_weight or config.supersede_depth else None
    if window is not None and config.time_weight:
        out["time"] = config.time_weight * within(records, window).astype(np.float64)
    if config.supersede_depth:
        scores = calibrated + sum(out.values(), np.zeros(len(records)))
        top = [i for i in np.argsort(-scores, kind="stable")[:config.supersede_depth].tolist() if not asks[i]]
        found = vectors([records[i]["id"] for i in top])
        top = [i for i in top if records[i]["id"] in found and records[i].get("time") is not None]
        if len(top) > 1:
            raised, lowered = settle([records[i] for i in top], np.stack([found[records[i]["id"]] for i in top]),
                                     scores[top], window=window, echoes=who != "assistant",
                                     past=asks_before(query))
            out["supersedes"], out["echoes"] = np.zeros(len(records)), np.zeros(len(records))
            out["supersedes"][top], out["echoes"][top] = raised, lowered
    if who == "assistant" and config.speaker_weight:
        out["replies"] = answering(records, calibrated + sum(out.values(), np.zeros(len(records))))
    return {name: values for name, values in out.items() if values.any()}


def answering(records: list[dict[str, Any]], scores: np.ndarray) -> np.ndarray:
    """How far a reply (any role but the user's) is raised to just above the user's message it
    answers: the user's latest message of its session said before it, among ``records``. Only
    the first reply to each is raised; later ones keep their own scores."""
    raised = np.zeros(len(records))
    asked: dict[str, list[tuple[str, int]]] = {}
    for i, record in enumerate(records):
        if record["role"] == "user" and record.get("time") is not None:
            asked.setdefault(record["session_id"], []).append((record["time"], i))
    first: dict[int, tuple[str, int]] = {}  # per user message, its first reply among records
    for e, record in enumerate(records):
        if record["role"] == "user" or record.get("time") is None:
            continue
        before = [(time, u) for time, u in asked.get(record["session_id"], []) if time <= record["time"]]
        if before:
            u = max(before)[1]
            first[u] = min(first.get(u, (record["time"], e)), (record["time"], e))
    for u, (_, e) in first.items():
        if scores[u] >= scores[e]:
            raised[e] = scores[u] - scores[e] + 1e-3
    return raised


def asks_before(query: str) -> bool:
    """Whether the query asks what was true before something changed: a word of before
    ("before", "previous", "used to", "originally" ...) in a question about the past ("Where did
    I work before this job?", "What was my previous phone?"), not "What do I eat before a race?"."""
    query = query.replace("’", "'")
    return bool(_BEFORE.search(query) and _PAST.search(query))


def speaker(query: str) -> str | None:
    """``"assistant"`` or ``"user"`` when the query says who said what it asks for ("What did you
    recommend?", "What did I tell you about the race?"), else None (also when it says both)."""
    query = query.replace("’", "'")
    assistant, user = bool(_ASSISTANT_SAID.search(query)), bool(_USER_SAID.search(query))
    return "assistant" if assistant and not user else "user" if user and not assistant else None


def recency(records: list[dict[str, Any]]) -> np.ndarray:
    """Each record's place in time among ``records``: 1 for the newest, 0 for the oldest (and for
    a record with no time, as saved before times were parsed)."""
    times = np.array([_seconds(r.get("time")) for r in records], dtype=np.float64)
    known = np.isfinite(times)
    if known.sum() < 2:
        return np.zeros(len(records))
    low, high = times[known].min(), times[known].max()
    if high == low:
        return np.zeros(len(records))
    return np.where(known, (times - low) / (high - low), 0.0)


def asks_without_telling(records: list[dict[str, Any]], query: str, stemmer: str | None) -> np.ndarray:
    """Which records only ask (see the module doc), as a boolean array."""
    query_words = set(tokenize([query], stemmer)[0])
    out = np.zeros(len(records), dtype=bool)
    for i, record in enumerate(records):
        stated, asked, asks, courteous = _told_and_asked(record["content"], stemmer)
        if not asks:
            continue  # no question at all
        if record["role"] == "user":  # "Thanks." before the question tells nothing
            out[i] = courteous and len(asked - query_words) <= NEW_QUESTION_WORDS
        else:  # a reply's function words are not words of its own: "Good to have a doctor you trust."
            out[i] = len(stated - query_words - _function_words(stemmer)) <= OWN_WORDS
    return out


_FUNCTION_WORDS: dict[str | None, frozenset[str]] = {}


def _function_words(stemmer: str | None) -> frozenset[str]:
    """English function words (``interpret.labels.STOPWORDS``) as BM25 tokenises them with ``stemmer``."""
    found = _FUNCTION_WORDS.get(stemmer)
    if found is None:  # two threads may both fill it: with the same set
        from saememory.interpret.labels import STOPWORDS

        found = _FUNCTION_WORDS[stemmer] = frozenset(tokenize([" ".join(sorted(STOPWORDS))], stemmer)[0])
    return found


_TOLD_AND_ASKED: dict[tuple[bytes, str | None], tuple[frozenset[str], frozenset[str], bool, bool]] = {}
CACHED_MESSAGES = 16384  # the same candidates come back query after query: their words are kept, by digest
CACHED_CHARS = 4000  # longer messages are read each time, so the cache stays small
_CACHE_LOCK = threading.Lock()


def _told_and_asked(content: str, stemmer: str | None) -> tuple[frozenset[str], frozenset[str], bool, bool]:
    """The words a message states, the words it asks, whether it asks at all, and whether what it
    states besides its questions is only courtesies ("Thanks.", or nothing)."""
    key = (hashlib.blake2b(content.encode("utf-8", "surrogatepass"), digest_size=16).digest(), stemmer)
    found = _TOLD_AND_ASKED.get(key)
    if found is None:
        stated, asked = _sentences(content)
        words = tokenize([stated, asked], stemmer)
        courteous = set(_WORD.findall(stated.lower())) <= _COURTESIES
        found = (frozenset(words[0]), frozenset(words[1]), bool(asked), courteous)
        if len(content) <= CACHED_CHARS:
            with _CACHE_LOCK:  # searches run in threads (the adapters' async calls): evict and insert as one step
                if len(_TOLD_AND_ASKED) >= CACHED_MESSAGES:
                    _TOLD_AND_ASKED.pop(next(iter(_TOLD_AND_ASKED)))  # the oldest entry
                _TOLD_AND_ASKED[key] = found
    return found


def settle(records: list[dict[str, Any]], vectors: np.ndarray, scores: np.ndarray,
           window: TimeWindow | None = None, echoes: bool = True, past: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Later statements above the earlier ones they supersede, and echoes below what they echo.

    Args:
        records: Statements among the best candidates (none only asks), each with a ``time``.
        vectors: Their dense vectors (unit length), one row each.
        scores: Their scores so far (calibrated units).
        window: The time the query names, if it names one: a statement said after it does not
            supersede one said within it, since the query asks what was true then ("Where did I
            work in January?"). Two said after it still may: "In June I went to a BBQ" is often
            said in July. Defaults to None.
        echoes: Whether to lower echoes. Defaults to True; False when the query asks for the
            assistant's own words ("What tips did you give me?").
        past: The query asks what was true before a change ("Where did I work before?",
            ``asks_before``): the earlier statement rises above the later instead, from up to
            ``CHANGE_MARGIN`` below it (the query itself says that it changed). Defaults to False.

    Returns:
        ``(raised, lowered)``: how far each record is raised (a user's statement that supersedes
        an earlier one) and lowered (another role's message that echoes a user's statement of
        its session), in the units of ``scores``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    new = scores.copy()
    times = [r["time"] for r in records]
    inside = within(records, window) if window is not None else np.zeros(len(records), dtype=bool)
    end = iso(window.end) if window is not None else ""
    similar = vectors @ vectors.T
    users = [i for i, r in enumerate(records) if r["role"] == "user"]
    same = _same_subject(similar, users)
    if past:  # the earlier of two statements rises above the later: what was true before it changed
        for b in sorted(users, key=times.__getitem__, reverse=True):
            # The query says that something changed, so every later statement is one of change.
            later = [new[a] for a in users if times[a] > times[b] and same[a, b]
                     and records[a]["session_id"] != records[b]["session_id"] and new[a] - new[b] <= CHANGE_MARGIN]
            if later and max(later) >= new[b]:
                new[b] = max(later) + 1e-3
    for b in sorted(users, key=times.__getitem__) if not past else ():  # earliest first: a chain of changes carries
        margin = CHANGE_MARGIN if states_change(records[b]["content"]) else SUPERSEDE_MARGIN
        session = [c for c in users if c != b and records[c]["session_id"] == records[b]["session_id"]]
        earlier = [new[a] for a in users if times[a] < times[b] and same[a, b]
                   and not (window is not None and inside[a] and times[b] > end)
                   and records[a]["session_id"] != records[b]["session_id"] and new[a] - new[b] <= margin
                   and not (ONE_PER_SESSION and any(new[c] > new[a] and same[a, c] for c in session))]
        if earlier and max(earlier) >= new[b]:
            new[b] = max(earlier) + 1e-3
    raised = new - scores
    for e, record in enumerate(records):
        if record["role"] == "user" or not echoes:
            continue
        echoed = [new[u] for u in users if records[u]["session_id"] == record["session_id"]
                  and times[u] <= times[e] and similar[u, e] >= ECHO]
        if echoed and min(echoed) <= new[e]:
            new[e] = min(echoed) - 1e-3
    return raised, new - scores - raised


def _same_subject(similar: np.ndarray, users: list[int]) -> np.ndarray:
    """Which pairs of statements are about the same subject: a dense cosine of at least
    ``SAME_SUBJECT`` and ``SUBJECT_MARGIN`` above each one's background, the lower quartile of
    its cosines to the other statements (with at least ``BACKGROUND`` others; else no margin).

    The margin tells a shared subject from a shared style: long messages of one user ("I'm
    looking for ... I've been ... for 6 months now") are all alike, and without it a guitar
    practice note superseded the Fitbit message a question was about. A quartile, not the
    mean: three statements about one city must not raise each other's background.
    """
    base = np.full(len(similar), -np.inf)
    if len(users) > BACKGROUND:
        block = similar[np.ix_(users, users)]
        for row, i in enumerate(users):
            base[i] = np.quantile(np.delete(block[row], row), 0.25)
    return (similar >= SAME_SUBJECT) & (similar - np.maximum(base[:, None], base[None, :]) >= SUBJECT_MARGIN)


def states_change(text: str) -> bool:
    """Whether ``text`` says that something changed (``_CHANGE``, in its sentences that do not
    ask): "We adopted a new dog", "I moved to Oslo", "I work as a nurse these days", "I'm now a
    teacher"; not "I have never moved", "Can you suggest a new laptop?" or "the New York office"."""
    stated = _sentences(text.replace("’", "'"))[0]  # phone keyboards type "I’m"
    for match in _CHANGE.finditer(stated):
        if match.group(0)[-3:].lower() == "new" and match.group(0)[-3:] != "new":
            continue  # "the New York office", "THE NEW YORK TIMES": a name
        before = _WORD.findall(stated[max(0, match.start() - 40):match.start()].lower())[-3:]
        if not any(w in _NEGATIONS or w.endswith("n't") for w in before):
            return True
    return False


def within(records: list[dict[str, Any]], window: TimeWindow) -> np.ndarray:
    """Which records were said inside ``window`` (a record with no time is not)."""
    start, end = iso(window.start), iso(window.end)
    return np.array([matches(r, None, start, end, None) for r in records], dtype=bool)  # as since/until filter


def _sentences(text: str) -> tuple[str, str]:
    """``(stated, asked)``: the text's sentences that ask, and the others.

    A sentence asks when it ends in a question mark and opens as an English question does (a
    question word or an auxiliary, after any "so", "hey", "ok" ..., or after a lead-in such as
    "Remind me," or "Quick question,": "Remind me, what were the tips?"): "My dog is Luna, isn't
    she cute?", "I'm vegan, what should I cook?" and "I moved to Oslo, remember?" state.
    """
    stated, asked = [], []
    for sentence in _SENTENCE.findall(text):
        words = [w for w in _WORD.findall(sentence.lower()) if w not in _OPENERS]
        lead, comma, rest = sentence.partition(",")
        if comma and set(_WORD.findall(lead.lower())) <= _LEAD_INS:  # "Remind me, what ...?", not "I'm vegan, what ...?"
            after = _WORD.findall(rest.lower())
            words = after if after and after[0].split("'")[0] in _QUESTION_OPENINGS else words
        opens = bool(words) and words[0].split("'")[0] in _QUESTION_OPENINGS
        (asked if opens and sentence.rstrip().endswith("?") else stated).append(sentence)
    return " ".join(stated), " ".join(asked)


def _seconds(time: str | None) -> float:
    return dt.datetime.fromisoformat(time).timestamp() if time else float("nan")
