"""LongMemEval (Wu et al., ICLR 2025) data and retrieval metrics, following the official protocol.

Stdlib and numpy only. The official retrieval code (``src/retrieval/run_retrieval.py`` and
``eval_utils.py`` of github.com/xiaowu0162/LongMemEval) was read for the protocol; nothing was
copied. What it defines, and this module reproduces:

- One flat index per question over **user turns only**. A turn's id is
  ``{session_id}_{i}``, where ``i`` is the 1-based position of the turn among **all** turns of its
  session (user and assistant), so user turns get ids like ``s_1, s_3, s_5``.
- Gold turns: user turns with ``has_answer: true`` in evidence sessions (``answer_session_ids``).
  Gold sessions: evidence sessions with at least one such user turn.
- recall_any@k (any gold item in the top k), recall_all@k (all of them; the paper's "Recall@k") and
  ndcg_any@k (binary relevance, ``DCG = rel[0] + sum_{i>=1} rel[i] / log2(i + 1)``, divided by
  the ideal DCG). A question without gold items scores recall_any 0, recall_all 1 and ndcg 0,
  as in the official code.
- ``_abs`` (abstention) questions are left out.

Two averages are reported: **strict**, over questions with at least one gold (user) turn, and
**no-abs**, over all non-abstention questions (the official printout, where questions whose
evidence is only on the assistant side count with the values above).

Two departures, both forced by the data and both harmless to the scores: turns with blank
content are dropped (a memory cannot index them; none is evidence in the S file), and a session id
repeated within one haystack (13 questions of the S file repeat an identical, non-evidence
session) is indexed once, so message ids stay unique.

Session-level metrics from a turn ranking strip the turn suffix and keep each session's first
appearance (the official ``evaluate_retrieval_turn2session`` instead grows k over the turn list,
which counts a session's repeated turns in its ndcg).
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

ROLES = ("user", "all")
DEFAULT_KS = (1, 5, 10)
QUESTION_TYPES = (
    "single-session-user",
    "single-session-assistant",
    "single-session-preference",
    "multi-session",
    "temporal-reasoning",
    "knowledge-update",
)
HF_REPO = "xiaowu0162/longmemeval-cleaned"
HF_REVISION = "98d7416c24c778c2fee6e6f3006e7a073259d48f"


def load(path: str | Path) -> list[dict[str, Any]]:
    """Loads a LongMemEval file (a JSON array of questions), plain or gzip-compressed.

    Args:
        path: A ``.json`` or ``.json.gz`` file.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not a JSON array of question records.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LongMemEval file {str(path)!r} does not exist; pass the path of a .json or .json.gz file.")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, list) or (data and not {"question_id", "haystack_sessions"} <= set(data[0])):
        raise ValueError(
            f"{path} is not a LongMemEval file: expected a JSON array of records with "
            "'question_id' and 'haystack_sessions'."
        )
    return data


def is_abstention(question: dict[str, Any]) -> bool:
    """True for abstention questions (ids ending in ``_abs``), which retrieval metrics skip."""
    return question["question_id"].endswith("_abs")


def turn_id(session_id: str, index: int) -> str:
    """The official id of the turn at 0-based position ``index`` (over all turns) of a session."""
    return f"{session_id}_{index + 1}"


def session_of(message_id: str) -> str:
    """The session id of a turn id (the turn suffix stripped)."""
    return message_id.rsplit("_", 1)[0]


def _check_roles(roles: str) -> str:
    if roles not in ROLES:
        raise ValueError(f"roles={roles!r} is not one of {ROLES}: 'user' is the official protocol, 'all' the poster's.")
    return roles


def _sessions(question: dict[str, Any]) -> Iterable[tuple[str, str, list[dict[str, Any]]]]:
    """``(session_id, date, turns)`` of the haystack, each session id once (first occurrence)."""
    seen: set[str] = set()
    for sid, date, turns in zip(question["haystack_session_ids"], question["haystack_dates"], question["haystack_sessions"]):
        if sid not in seen:
            seen.add(sid)
            yield sid, date, turns


def messages(question: dict[str, Any], roles: str = "user") -> list[dict[str, Any]]:
    """One question's haystack as saememory message dicts, in haystack order.

    Args:
        question: A LongMemEval record.
        roles: ``"user"`` for user turns only (the official protocol) or ``"all"`` for both roles
            (the poster's). Defaults to ``"user"``.

    Returns:
        Dicts with ``id`` (``{session_id}_{1-based index over all turns}``), ``content``, ``role``,
        ``session_id``, ``timestamp`` (the haystack date) and ``metadata`` (``has_answer``).
        Blank turns are left out.
    """
    _check_roles(roles)
    out = []
    for sid, date, turns in _sessions(question):
        for index, turn in enumerate(turns):
            if (roles == "user" and turn["role"] != "user") or not turn["content"].strip():
                continue
            out.append({
                "id": turn_id(sid, index),
                "content": turn["content"],
                "role": turn["role"],
                "session_id": sid,
                "timestamp": date,
                "metadata": {"has_answer": bool(turn.get("has_answer", False))},
            })
    return out


def session_documents(question: dict[str, Any], roles: str = "user") -> list[dict[str, Any]]:
    """One document per haystack session: its turns joined with spaces.

    Args:
        question: A LongMemEval record.
        roles: ``"user"`` joins the user turns (the official session key) and ``"all"`` joins
            every turn. Defaults to ``"user"``.

    Returns:
        Dicts with ``id`` (the session id), ``content``, ``role`` (``"user"`` or ``"session"``),
        ``session_id`` and ``timestamp``. Sessions without text are left out.
    """
    _check_roles(roles)
    out = []
    for sid, date, turns in _sessions(question):
        text = " ".join(t["content"] for t in turns if roles == "all" or t["role"] == "user")
        if text.strip():
            role = "user" if roles == "user" else "session"
            out.append({"id": sid, "content": text, "role": role, "session_id": sid, "timestamp": date})
    return out


def gold_turn_ids(question: dict[str, Any], roles: str = "user") -> list[str]:
    """Evidence turn ids: turns with ``has_answer: true`` in evidence sessions.

    Args:
        question: A LongMemEval record.
        roles: ``"user"`` counts user turns only (official); ``"all"`` counts both roles (the
            poster's context precision). Defaults to ``"user"``.
    """
    _check_roles(roles)
    evidence = set(question["answer_session_ids"])
    return [
        turn_id(sid, index)
        for sid, _, turns in _sessions(question)
        if sid in evidence
        for index, turn in enumerate(turns)
        if turn.get("has_answer") and (roles == "all" or turn["role"] == "user") and turn["content"].strip()
    ]


def gold_session_ids(question: dict[str, Any]) -> list[str]:
    """Evidence sessions holding at least one gold user turn (official session-level gold)."""
    return list(dict.fromkeys(session_of(t) for t in gold_turn_ids(question, "user")))


def turns_to_sessions(ranked_turn_ids: Sequence[str]) -> list[str]:
    """A session ranking from a turn ranking: suffixes stripped, each session's first place kept."""
    return list(dict.fromkeys(session_of(t) for t in ranked_turn_ids))


# Metrics ------------------------------------------------------------------------------------


def recall_any(ranked: Sequence[str], gold: Iterable[str], k: int) -> float:
    """1.0 if any gold id is in the top ``k`` of ``ranked``, else 0.0 (0.0 without gold)."""
    top = set(ranked[:k])
    return float(any(g in top for g in gold))


def recall_all(ranked: Sequence[str], gold: Iterable[str], k: int) -> float:
    """1.0 if every gold id is in the top ``k`` of ``ranked``, else 0.0 (1.0 without gold)."""
    top = set(ranked[:k])
    return float(all(g in top for g in gold))


def dcg(relevances: Sequence[float]) -> float:
    """``rel[0] + sum_{i>=1} rel[i] / log2(i + 1)`` (0-based i), the official discount."""
    return sum(r if i == 0 else r / math.log2(i + 1) for i, r in enumerate(relevances))


def ndcg_any(ranked: Sequence[str], gold: Iterable[str], k: int) -> float:
    """Binary-relevance nDCG@k; the ideal ranks every gold id first (0.0 without gold)."""
    gold = set(gold)
    ideal = dcg([1.0] * min(len(gold), k))
    if ideal == 0:
        return 0.0
    return dcg([1.0 if r in gold else 0.0 for r in ranked[:k]]) / ideal


def retrieval_metrics(ranked: Sequence[str], gold: Iterable[str], ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """``recall_any@k``, ``recall_all@k`` and ``ndcg_any@k`` for each k.

    Args:
        ranked: Retrieved ids, best first (at least max(ks) of them, or the whole corpus).
        gold: The gold ids.
        ks: Cut-offs. Defaults to ``(1, 5, 10)``.
    """
    gold = list(gold)
    out = {}
    for k in ks:
        out[f"recall_any@{k}"] = recall_any(ranked, gold, k)
        out[f"recall_all@{k}"] = recall_all(ranked, gold, k)
        out[f"ndcg_any@{k}"] = ndcg_any(ranked, gold, k)
    return out


def context_precision(retrieved: Iterable[str], gold: Iterable[str]) -> float:
    """The poster's context precision: 1.0 if the retrieved set holds ALL gold ids, else 0.0.

    This is recall_all over the whole retrieved set; with no gold ids it is 1.0 (vacuous), so
    average it over questions that have evidence.
    """
    retrieved = set(retrieved)
    return float(all(g in retrieved for g in gold))


def context_chars(contents: Iterable[str]) -> int:
    """Context length in characters: the summed length of the retrieved messages."""
    return sum(len(c) for c in contents)


def format_context(items: Iterable[dict[str, Any]]) -> str:
    """Retrieved messages as prompt context, one ``[date] role: content`` line each.

    Args:
        items: Dicts (or ``Hit.to_metadata()``-like mappings plus ``content``) with ``timestamp``,
            ``role`` and ``content``.
    """
    return "\n".join(f"[{m.get('timestamp') or ''}] {m.get('role', 'user')}: {m['content']}" for m in items)


def average(rows: Sequence[dict[str, Any]], key: str = "metrics", subset: str = "strict") -> dict[str, float]:
    """Means of per-question metric dicts over a subset of questions.

    Args:
        rows: Per-question results, each with ``question_id``, ``n_gold_turns`` and a dict of
            metrics under ``key``.
        key: The field holding the metric dict. Defaults to ``"metrics"``.
        subset: ``"strict"`` (questions with at least one gold user turn) or ``"no_abs"`` (every
            non-abstention question, as the official printout). Defaults to ``"strict"``.

    Returns:
        Metric name to mean, plus ``n``, the number of questions averaged.
    """
    if subset not in ("strict", "no_abs"):
        raise ValueError(f"subset={subset!r} is not 'strict' or 'no_abs'.")
    chosen = [
        r for r in rows
        if not r["question_id"].endswith("_abs") and (subset == "no_abs" or r["n_gold_turns"] > 0)
    ]
    if not chosen:
        return {"n": 0}
    names = chosen[0][key].keys()
    out: dict[str, float] = {name: float(np.mean([r[key][name] for r in chosen])) for name in names}
    out["n"] = len(chosen)
    return out


def hf_download(filename: str = "longmemeval_s_cleaned.json", revision: str = HF_REVISION) -> str:
    """Downloads a LongMemEval file from Hugging Face (needs network and ``huggingface_hub``).

    Args:
        filename: One of ``longmemeval_s_cleaned.json``, ``longmemeval_m_cleaned.json``,
            ``longmemeval_oracle.json``. Defaults to ``"longmemeval_s_cleaned.json"``.
        revision: The dataset commit. Defaults to the revision PROVENANCE.md records.

    Returns:
        The local path of the downloaded file.
    """
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id=HF_REPO, filename=filename, repo_type="dataset", revision=revision)
