"""A LongMemEval agent: per question, a fresh interpretable memory of the haystack, then retrieval and an answer.

    python examples/longmemeval_agent.py ../shared/data/longmemeval/longmemeval_s_cleaned_dev30.json.gz --limit 3
    python examples/longmemeval_agent.py DATA --chat-model openai:gpt-4o-mini --out runs/lme.jsonl
    python examples/longmemeval_agent.py longmemeval_s_cleaned.json --hf      # download (needs network)
    python examples/longmemeval_agent.py DATA --limit 3 --milvus runs/lme.db  # the memory in milvus-lite

For each question: the haystack becomes an ``SAEMemory`` (turn ids ``{session_id}_{turn}`` as in the
official code), the question goes through the LangChain ``SAEMemoryRetriever``, and the hits become
a context of ``[date] role: content`` lines. With ``--chat-model provider:model`` (LangChain's
``init_chat_model``) the model answers from that context; without it the agent does retrieval only.
With ``--milvus URI`` (a milvus-lite ``.db`` file or a server URI) the memory lives in Milvus
instead: one collection, emptied before each question.

Writes one JSON line per question to ``--out`` (retrieved ids, scores, top shared SAE features, the
context, the answer and retrieval metrics against the gold turns) and, when it answered, a
hypothesis file (``question_id``, ``hypothesis``) next to it, as LongMemEval's evaluator reads.
Question ids already in ``--out`` are skipped, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from langchain_saememory import SAEMemoryRetriever
from saememory import DEFAULT_SAE, FUSIONS, Encoder, EncoderConfig, MilvusBackend, SAEMemory
from saememory.eval import longmemeval as lme

PROMPT = (
    "You are a chat assistant with a long-term memory of your past conversations with this user.\n"
    "Relevant excerpts of those conversations, as [date] role: message:\n\n{context}\n\n"
    "Current date: {date}\nAnswer the question using these memories. If they do not contain the "
    "answer, say that you do not know.\nQuestion: {question}\nAnswer:"
)
FEATURES_PER_HIT = 3


# --stack: (sparse preset, dense preset) of saememory.encoders.lm; "minilm" is the bundled default.
STACKS = {"minilm": None, "poster": ("gemma-2b-it-res-jb", "nomic-v1"), "gemma-scope": ("gemma-scope-2b-l12", "nomic-v1.5")}
# --ranking: SAEMemory settings; "poster" is sqrt(max(dense, 0)² + sparse²) on raw scores, no BM25,
# and none of the adjustments after fusion (what is current, a query's alternatives, words).
RANKINGS = {"default": {}, "poster": {"fusion": "sqrt", "normalization": "none", "dense_weight": 1.0, "sparse_weight": 1.0,
                                      "bm25_weight": 0.0, "asks_penalty": 0.0, "time_weight": 0.0,
                                      "supersede_depth": 0, "alternatives": False, "word_weight": 0.0}}

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="a LongMemEval .json or .json.gz file; with --hf, the file name in the HF dataset")
    parser.add_argument("--hf", action="store_true", help=f"download DATA from Hugging Face ({lme.HF_REPO}; needs network)")
    parser.add_argument("--chat-model", help="provider:model for langchain's init_chat_model; default: retrieval only")
    parser.add_argument("--ids", nargs="+", default=None, help="only these question ids (space or comma separated)")
    parser.add_argument("--types", nargs="+", default=None, choices=lme.QUESTION_TYPES, help="only these question types")
    parser.add_argument("--limit", type=int, default=None, help="at most this many questions (after filters)")
    parser.add_argument("--k", type=int, default=10, help="messages (or sessions) retrieved per question; default 10")
    parser.add_argument("--max-chars", type=int, default=None,
                        help="context budget: of the k best, keep those that fit in this many characters; default none")
    parser.add_argument("--granularity", choices=("turn", "session"), default="turn", help="index turns or whole sessions; default turn")
    parser.add_argument("--roles", choices=lme.ROLES, default="user", help="index user turns only (official) or all; default user")
    parser.add_argument("--ranking", choices=RANKINGS, default="default",
                        help="default: SAEMemory's own ranking; poster: the poster's raw sqrt(dense² + sparse²), no BM25")
    parser.add_argument("--fusion", choices=FUSIONS, default=None,
                        help="how the memory's signals combine, over --ranking's; default: --ranking's")
    parser.add_argument("--sae", default=DEFAULT_SAE, help=f"bundled SAE name, SAE directory, or 'none'; default {DEFAULT_SAE}")
    parser.add_argument("--pooling", choices=("max", "mean"), default=None,
                        help="token pooling; default max for minilm, the preset's (mean) for the Gemma stacks")
    parser.add_argument("--stack", choices=STACKS, default="minilm",
                        help="minilm: bundled MiniLM + --sae (CPU); poster: gemma-2b-it + gemma-2b-it-res-jb + Nomic v1, "
                             "as the poster ran it; gemma-scope: gemma-2-2b + Gemma Scope layer 12 + Nomic v1.5 (GPU advised)")
    parser.add_argument("--device", default="auto", help="Gemma stacks: auto, cuda, mps or cpu; default auto")
    parser.add_argument("--dtype", default="auto", help="Gemma stacks: auto (bfloat16 on cuda), bfloat16, float16, float32")
    parser.add_argument("--cache-dir", default=None, help="Gemma stacks: keep message codes across runs; default in memory")
    parser.add_argument("--milvus", metavar="URI", default=None,
                        help="store the memory in Milvus: a milvus-lite .db file or a server URI; default in-process")
    parser.add_argument("--milvus-collection", default="longmemeval", help="Milvus collection; default longmemeval")
    parser.add_argument("--out", default="runs/longmemeval_agent.jsonl", help="per-question JSONL; default runs/longmemeval_agent.jsonl")
    args = parser.parse_args(argv)
    if args.k <= 0:
        parser.error(f"--k must be a positive integer, got {args.k}.")
    if args.max_chars is not None and args.max_chars <= 0:
        parser.error(f"--max-chars must be a positive integer, got {args.max_chars}; leave it out for no budget.")
    if args.limit is not None and args.limit <= 0:
        parser.error(f"--limit must be a positive integer, got {args.limit}.")
    if args.ids:
        args.ids = [i for part in args.ids for i in part.split(",") if i]
    return args


def hypothesis_path(out: Path) -> Path:
    """Where the hypotheses go: ``runs/x.jsonl`` -> ``runs/x.hypotheses.jsonl``."""
    return out.with_name(out.stem + ".hypotheses.jsonl")


def select(questions: list[dict[str, Any]], args: argparse.Namespace, done: set[str]) -> list[dict[str, Any]]:
    """Questions passing --ids and --types, at most --limit, minus those already answered."""
    if args.ids:
        known = {q["question_id"] for q in questions}
        unknown = [i for i in args.ids if i not in known]
        if unknown:
            sys.exit(f"--ids names questions not in the file: {unknown[:5]}. Check the ids against the data file.")
        questions = [q for q in questions if q["question_id"] in set(args.ids)]
    if args.types:
        questions = [q for q in questions if q["question_type"] in args.types]
    if args.limit:
        questions = questions[: args.limit]
    return [q for q in questions if q["question_id"] not in done]


def chat_model(spec: str):
    """A LangChain chat model from ``provider:model``."""
    try:
        from langchain.chat_models import init_chat_model
    except ImportError:
        sys.exit("--chat-model needs the 'langchain' package and the provider's package (e.g. langchain-openai).")
    return init_chat_model(spec)


def corpus(question: dict[str, Any], granularity: str, roles: str) -> list[dict[str, Any]]:
    """The messages (turns) or session documents one question's memory indexes."""
    if granularity == "session":
        return lme.session_documents(question, roles)
    return lme.messages(question, roles)


def open_memory(encoder: Encoder, args: argparse.Namespace) -> SAEMemory:
    """An empty memory: in-process, or the ``--milvus`` collection emptied (of an earlier question or run)."""
    settings = {**RANKINGS[args.ranking], **({"fusion": args.fusion} if args.fusion else {})}
    if args.milvus is None:
        return SAEMemory(encoder, **settings)
    memory = SAEMemory(encoder, backend=MilvusBackend(args.milvus, args.milvus_collection), **settings)
    for user in memory.users():
        memory.delete_user(user)
    return memory


def run_question(question: dict[str, Any], encoder: Encoder, args: argparse.Namespace, model: Any = None) -> dict[str, Any]:
    """Indexes one haystack in a fresh memory, retrieves for the question, and answers if a model is given."""
    memory = open_memory(encoder, args)
    memory.add(corpus(question, args.granularity, args.roles))
    retriever = SAEMemoryRetriever.from_memory(memory, k=args.k, max_chars=args.max_chars)
    docs = retriever.invoke(question["question"], now=question["question_date"])  # time words count back from it
    context = lme.format_context(
        {"timestamp": d.metadata["timestamp"], "role": d.metadata["role"], "content": d.page_content} for d in docs
    )
    ids = [d.id for d in docs]
    gold_turns = lme.gold_turn_ids(question, args.roles)
    gold_sessions = list(dict.fromkeys(lme.session_of(t) for t in gold_turns))
    if args.granularity == "session":
        gold, ranked_sessions = gold_sessions, ids
    else:
        gold, ranked_sessions = gold_turns, lme.turns_to_sessions(ids)
    record = {
        "question_id": question["question_id"],
        "question_type": question["question_type"],
        "question": question["question"],
        "question_date": question["question_date"],
        "answer": str(question["answer"]),
        "retrieved_ids": ids,
        "scores": [
            {k: round(d.metadata[k], 6) for k in ("score", "dense_score", "sparse_score")} for d in docs
        ],
        "top_features": [
            [{"id": f["id"], "label": f["label"], "contribution": f["contribution"]}
             for f in d.metadata["shared_features"][:FEATURES_PER_HIT]]
            for d in docs
        ],
        "context": context,
        "context_chars": lme.context_chars(d.page_content for d in docs),
        "gold_ids": gold,
        "recall_all": lme.recall_all(ids, gold, args.k),
        "session_recall_all": lme.recall_all(ranked_sessions, gold_sessions, args.k),
        "answer_model": args.chat_model,
        "hypothesis": None,
    }
    if model is not None:
        prompt = PROMPT.format(context=context, date=question["question_date"], question=question["question"])
        record["hypothesis"] = model.invoke(prompt).text.strip()
    return record


def build_encoder(args: argparse.Namespace, sae: str | None) -> Any:
    """The encoder of ``--stack``, built once and shared by every question (so its cache works)."""
    if args.stack == "minilm":
        return Encoder(EncoderConfig(sae=sae, pooling=args.pooling or "max"))
    from saememory.encoders.lm import preset_encoder

    sparse, dense = STACKS[args.stack]
    extra = {"pooling": args.pooling} if args.pooling else {}
    return preset_encoder(sparse, dense, device=args.device, dtype=args.dtype, cache_dir=args.cache_dir, **extra)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    path = lme.hf_download(args.data) if args.hf else args.data
    questions = lme.load(path)
    out = Path(args.out)
    done = set()
    if out.is_file():
        with open(out, encoding="utf-8") as handle:
            done = {json.loads(line)["question_id"] for line in handle if line.strip()}
    todo = select(questions, args, done)
    model = chat_model(args.chat_model) if args.chat_model else None
    if model is None:
        print("No --chat-model given: retrieval only (no answers, no hypothesis file).")
    sae = None if args.sae.lower() == "none" else args.sae
    encoder = build_encoder(args, sae)
    print(f"{len(todo)} questions to run ({len(done)} already in {out}); k={args.k}, "
          f"granularity={args.granularity}, roles={args.roles}, ranking={args.ranking}, fusion={args.fusion or 'from ranking'}, sae={sae}, "
          f"storage={args.milvus or 'in-process'}.")
    out.parent.mkdir(parents=True, exist_ok=True)
    hits = []
    for question in tqdm(todo, desc="LongMemEval", unit="question"):
        record = run_question(question, encoder, args, model)
        with open(out, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        if model is not None:
            with open(hypothesis_path(out), "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"question_id": record["question_id"], "hypothesis": record["hypothesis"]},
                                        ensure_ascii=False) + "\n")
        if record["gold_ids"]:
            hits.append(record["recall_all"])
    if hits:
        print(f"recall_all@{args.k} ({args.granularity}, {args.roles} roles) over {len(hits)} new questions "
              f"with evidence: {sum(hits) / len(hits):.3f}")
    print(f"Wrote {out}" + (f" and {hypothesis_path(out)}" if model is not None else ""))


if __name__ == "__main__":
    main()
