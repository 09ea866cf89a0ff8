"""LongMemEval: metrics on hand-made rankings, haystack parsing on the dev30 file, and smoke runs
of the example agent and the benchmark script on a trimmed two-question file."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from saememory import Encoder, EncoderConfig, SAEMemory, SearchConfig
from saememory.eval import longmemeval as lme

from tests.helpers import ROOT, load_script, save_sae_lens_sae

DEV30 = ROOT / ".." / "shared" / "data" / "longmemeval" / "longmemeval_s_cleaned_dev30.json.gz"
SMOKE_IDS = ("e47becba", "gpt4_59c863d7")  # single-session-user; multi-session evidence


@pytest.fixture(scope="module")
def dev30() -> list[dict]:
    return lme.load(DEV30)


@pytest.fixture(scope="module")
def trimmed(dev30, tmp_path_factory) -> Path:
    """Two dev30 questions, each haystack cut to its evidence sessions plus two others (fast to encode)."""
    out = []
    for q in dev30:
        if q["question_id"] not in SMOKE_IDS:
            continue
        keep = [i for i, sid in enumerate(q["haystack_session_ids"]) if sid in q["answer_session_ids"]]
        keep += [i for i, sid in enumerate(q["haystack_session_ids"]) if sid not in q["answer_session_ids"]][:2]
        keep.sort()
        q = dict(q)
        for key in ("haystack_session_ids", "haystack_dates", "haystack_sessions"):
            q[key] = [q[key][i] for i in keep]
        out.append(q)
    path = tmp_path_factory.mktemp("lme") / "trimmed.json.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        json.dump(out, handle)
    return path


@pytest.fixture(scope="module")
def saes(tmp_path_factory) -> dict[str, Path]:
    """Random sae-lens TopK SAEs on MiniLM: one reading layer 4, one reading the sentence embedding."""
    root = tmp_path_factory.mktemp("saes")
    emb = save_sae_lens_sae(root / "emb", "topk", d_in=384, d_sae=128, k=8, seed=1)
    res = save_sae_lens_sae(root / "res", "topk", d_in=384, d_sae=128, k=8, seed=2)
    cfg = json.loads((res / "cfg.json").read_text())
    cfg["metadata"]["hook_name"] = "hidden_states.4"
    (res / "cfg.json").write_text(json.dumps(cfg))
    return {"res": res, "emb": emb}


# Metrics -------------------------------------------------------------------------------------


def test_recall_any_vs_all():
    ranked = ["g1", "x", "y", "g2"]
    assert lme.recall_any(ranked, ["g1", "g2"], 3) == 1.0
    assert lme.recall_all(ranked, ["g1", "g2"], 3) == 0.0
    assert lme.recall_all(ranked, ["g1", "g2"], 4) == 1.0
    assert lme.recall_any(ranked, ["z"], 4) == 0.0
    # Without gold items the official code gives any 0 and all 1 (vacuous).
    assert lme.recall_any(ranked, [], 4) == 0.0 and lme.recall_all(ranked, [], 4) == 1.0


def test_ndcg_with_two_gold_items():
    ranked = ["x", "g1", "y", "g2", "z"]
    # DCG = 0 + 1/log2(2) + 0 + 1/log2(4) = 1.5; ideal = 1 + 1/log2(2) = 2.
    assert lme.ndcg_any(ranked, ["g1", "g2"], 5) == pytest.approx(0.75)
    # At k = 2 only g1 is in: DCG 1, ideal 2.
    assert lme.ndcg_any(ranked, ["g1", "g2"], 2) == pytest.approx(0.5)
    assert lme.ndcg_any(["g2", "g1", "x"], ["g1", "g2"], 3) == pytest.approx(1.0)
    # One gold item at rank 3 (0-based 2): 1 / log2(3).
    assert lme.ndcg_any(["x", "y", "g1"], ["g1"], 10) == pytest.approx(1 / math.log2(3))
    assert lme.ndcg_any(["x"], [], 10) == 0.0
    assert lme.dcg([1, 1, 1]) == pytest.approx(1 + 1 + 1 / math.log2(3))


def test_retrieval_metrics_keys_and_values():
    m = lme.retrieval_metrics(["g1", "x", "g2"], ["g1", "g2"], ks=(1, 3))
    assert set(m) == {f"{n}@{k}" for n in ("recall_any", "recall_all", "ndcg_any") for k in (1, 3)}
    assert m["recall_any@1"] == 1.0 and m["recall_all@1"] == 0.0 and m["recall_all@3"] == 1.0
    assert m["ndcg_any@1"] == 1.0


def test_turn_to_session_conversion():
    # Session ids may end in _<n> themselves; only the turn suffix is stripped.
    assert lme.session_of("07b7a667_1_3") == "07b7a667_1"
    ranked = ["s1_3", "s2_1", "s1_5", "07b7a667_1_3", "s3_1"]
    assert lme.turns_to_sessions(ranked) == ["s1", "s2", "07b7a667_1", "s3"]
    sessions = lme.turns_to_sessions(ranked)
    assert lme.recall_all(sessions, ["s1", "07b7a667_1"], 3) == 1.0
    assert lme.recall_all(ranked, ["s1_3", "07b7a667_1_3"], 3) == 0.0


def test_context_precision_chars_and_format():
    assert lme.context_precision(["a", "b", "c"], ["a", "c"]) == 1.0
    assert lme.context_precision(["a", "b"], ["a", "c"]) == 0.0
    assert lme.context_chars(["abc", "de"]) == 5
    text = lme.format_context([{"timestamp": "2023/05/30 (Tue) 17:27", "role": "user", "content": "hi"}])
    assert text == "[2023/05/30 (Tue) 17:27] user: hi"


def test_average_strict_and_no_abs():
    rows = [
        {"question_id": "a", "n_gold_turns": 1, "metrics": {"r": 1.0}},
        {"question_id": "b", "n_gold_turns": 0, "metrics": {"r": 1.0}},  # assistant-side evidence only
        {"question_id": "c", "n_gold_turns": 2, "metrics": {"r": 0.0}},
        {"question_id": "d_abs", "n_gold_turns": 0, "metrics": {"r": 0.0}},
    ]
    assert lme.average(rows, subset="strict") == {"r": 0.5, "n": 2}
    assert lme.average(rows, subset="no_abs") == {"r": pytest.approx(2 / 3), "n": 3}
    with pytest.raises(ValueError, match="subset"):
        lme.average(rows, subset="all")


# Haystack parsing ----------------------------------------------------------------------------


def test_haystack_parsing_on_dev30(dev30):
    q = dev30[0]
    assert q["question_id"] == "e47becba"
    users = lme.messages(q, "user")
    everything = lme.messages(q, "all")
    raw_users = sum(t["role"] == "user" and bool(t["content"].strip()) for s in q["haystack_sessions"] for t in s)
    assert len(users) == raw_users and all(m["role"] == "user" for m in users)
    assert len(everything) == sum(bool(t["content"].strip()) for s in q["haystack_sessions"] for t in s)
    by_session = dict(zip(q["haystack_session_ids"], q["haystack_sessions"]))
    dates = dict(zip(q["haystack_session_ids"], q["haystack_dates"]))
    for m in everything:
        # The suffix is the 1-based index over ALL turns of the session.
        index = int(m["id"].rsplit("_", 1)[1]) - 1
        turn = by_session[m["session_id"]][index]
        assert m["id"] == f"{m['session_id']}_{index + 1}"
        assert (turn["content"], turn["role"]) == (m["content"], m["role"])
        assert m["timestamp"] == dates[m["session_id"]]
    # User turns of a session that starts with the user get odd numbers: 1, 3, 5, ...
    sid = next(s for s, turns in by_session.items()
               if turns[0]["role"] == "user" and sum(t["role"] == "user" for t in turns) >= 2)
    assert [m["id"] for m in users if m["session_id"] == sid][:2] == [f"{sid}_1", f"{sid}_3"]
    assert lme.gold_turn_ids(q) == ["answer_280352e9_5"]
    assert lme.gold_session_ids(q) == ["answer_280352e9"]
    gold = next(m for m in users if m["id"] == "answer_280352e9_5")
    assert gold["metadata"]["has_answer"] is True and "Business Administration" in gold["content"]
    sessions = lme.session_documents(q)
    assert len(sessions) == len(set(q["haystack_session_ids"]))
    assert sessions[0]["content"] == " ".join(t["content"] for t in q["haystack_sessions"][0] if t["role"] == "user")


def test_gold_roles_and_repeated_sessions(dev30):
    by_id = {q["question_id"]: q for q in dev30}
    assistant_q = next(q for q in dev30 if q["question_type"] == "single-session-assistant")
    assert lme.gold_turn_ids(assistant_q, "all")  # evidence on the assistant side
    assert set(lme.gold_turn_ids(assistant_q, "user")) <= set(lme.gold_turn_ids(assistant_q, "all"))
    # 58bf7951 repeats an identical session id in its haystack: it is indexed once, ids stay unique.
    q = by_id["58bf7951"]
    assert len(q["haystack_session_ids"]) > len(set(q["haystack_session_ids"]))
    ids = [m["id"] for m in lme.messages(q, "all")]
    assert len(ids) == len(set(ids))


def test_load_errors_and_plain_json(tmp_path, dev30):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        lme.load(tmp_path / "missing.json")
    plain = tmp_path / "one.json"
    plain.write_text(json.dumps(dev30[:1]))
    assert lme.load(plain)[0]["question_id"] == "e47becba"
    (tmp_path / "bad.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(ValueError, match="not a LongMemEval file"):
        lme.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="roles='assistant'"):
        lme.messages(dev30[0], "assistant")


# Smoke runs -----------------------------------------------------------------------------------


def test_agent_retrieval_only(trimmed, saes, tmp_path, capsys):
    agent = load_script(ROOT / "examples" / "longmemeval_agent.py")
    out = tmp_path / "agent.jsonl"
    argv = [str(trimmed), "--sae", str(saes["res"]), "--k", "5", "--out", str(out)]
    agent.main(argv)
    printed = capsys.readouterr().out
    assert "retrieval only" in printed
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["question_id"] for r in records] == list(SMOKE_IDS)
    first = records[0]
    assert len(first["retrieved_ids"]) == 5 and first["hypothesis"] is None
    assert first["gold_ids"] == ["answer_280352e9_5"]
    assert first["context"].startswith("[") and "] user: " in first["context"]
    assert {"score", "dense_score", "sparse_score"} == set(first["scores"][0])
    assert not agent.hypothesis_path(out).exists()
    # Resume: a second run skips both questions.
    agent.main(argv)
    assert "0 questions to run (2 already in" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 2


def test_agent_context_budget(trimmed, saes, tmp_path):
    agent = load_script(ROOT / "examples" / "longmemeval_agent.py")
    out = tmp_path / "budget.jsonl"
    agent.main([str(trimmed), "--sae", str(saes["res"]), "--k", "20", "--max-chars", "600", "--out", str(out)])
    for record in (json.loads(line) for line in out.read_text().splitlines()):
        assert 0 < len(record["retrieved_ids"]) < 20
        assert 0 < record["context_chars"] <= 600
    with pytest.raises(SystemExit):
        agent.main([str(trimmed), "--max-chars", "0", "--out", str(out)])


def test_agent_poster_ranking_is_the_posters_formula(trimmed, saes, tmp_path, encoder):
    agent = load_script(ROOT / "examples" / "longmemeval_agent.py")
    out = tmp_path / "poster.jsonl"
    agent.main([str(trimmed), "--sae", str(saes["res"]), "--k", "5", "--ranking", "poster", "--out", str(out)])
    for record in (json.loads(line) for line in out.read_text().splitlines()):
        for s in record["scores"]:
            assert s["score"] == pytest.approx(math.sqrt(max(s["dense_score"], 0.0) ** 2 + s["sparse_score"] ** 2), abs=1e-6)
    # --fusion overrides the ranking's fusion only.
    args = agent.parse_args([str(trimmed), "--ranking", "poster", "--fusion", "rrf"])
    memory = agent.open_memory(encoder, args)
    assert memory.config.fusion == "rrf" and memory.config.bm25_weight == 0.0


def test_agent_runs_on_milvus(trimmed, saes, tmp_path):
    agent = load_script(ROOT / "examples" / "longmemeval_agent.py")
    runs = {}
    for name, extra in [("in-process", []), ("milvus", ["--milvus", str(tmp_path / "lme.db")])]:
        out = tmp_path / f"{name}.jsonl"
        agent.main([str(trimmed), "--sae", str(saes["res"]), "--k", "5", "--out", str(out), *extra])
        runs[name] = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["question_id"] for r in runs["milvus"]] == list(SMOKE_IDS)
    # The default candidates (200 per signal) cover these haystacks, so the same messages come
    # back. Their order may differ where supersession's thresholds meet Milvus' float32 vectors
    # against the in-process int8 ones (near-ties within 1e-3 of each other).
    assert [set(r["retrieved_ids"]) for r in runs["milvus"]] == [set(r["retrieved_ids"]) for r in runs["in-process"]]
    for a, b in zip(runs["milvus"], runs["in-process"]):
        assert a["recall_all"] == b["recall_all"]


def test_agent_hf_flag_forms_the_download(monkeypatch):
    import huggingface_hub

    calls = {}

    def fake_download(**kwargs):
        calls.update(kwargs)
        return "/nowhere/longmemeval_s_cleaned.json"

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert lme.hf_download() == "/nowhere/longmemeval_s_cleaned.json"
    assert calls == {"repo_id": "xiaowu0162/longmemeval-cleaned", "filename": "longmemeval_s_cleaned.json",
                     "repo_type": "dataset", "revision": lme.HF_REVISION}


def test_embedding_codes_from_cached_dense_match_the_encoder(saes):
    bench = load_script(ROOT / "benchmarks" / "longmemeval.py")
    encoder = Encoder(EncoderConfig(sae=str(saes["emb"])))
    texts = ["My sister moved to Lisbon.", "How long should I steep green tea?"]
    encoded = encoder.encode_documents(texts)
    derived = bench.embedding_sae_codes(encoder.sae, encoded.dense)
    assert isinstance(derived, sp.csr_matrix)
    np.testing.assert_allclose(derived.toarray(), encoded.sparse.toarray(), atol=1e-5)


def test_benchmark_smoke(trimmed, saes, tmp_path):
    bench = load_script(ROOT / "benchmarks" / "longmemeval.py")
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\nOther section.\n")
    argv = ["--data", str(trimmed), "--split", "all", "--sae-residual", str(saes["res"]),
            "--sae-embedding", str(saes["emb"]), "--cache", str(tmp_path / "cache"),
            "--out-dir", str(tmp_path), "--md", str(md), "--rows", str(tmp_path / "rows.jsonl")]
    result = bench.main(argv + ["--latency-questions", "1"])
    summary = result["summary"]
    strict = summary["official"]["strict"]
    names = list(strict)
    assert names[0] == "dense (MiniLM)" and len(names) == 18 and names[-1].startswith("saememory default (")
    assert all(strict[n]["n"] == 2 for n in names)
    for name in names:
        for key, value in strict[name].items():
            assert key == "n" or 0.0 <= value <= 1.0, (name, key, value)
    assert summary["latency"]["dense (MiniLM)"]["question_ratio"] == pytest.approx(1.0)
    # Through SAEMemory and through the numpy scoring, ours rank alike.
    assert min(min(v) for v in summary["agreement"].values()) >= 0.8
    text = md.read_text()
    assert "Other section." in text and text.count(bench.MD_START) == 1
    assert "LangChain EnsembleRetriever" in text and "(b) Poster's protocol" in text
    assert (tmp_path / "longmemeval_recall_vs_context.png").stat().st_size > 1000
    # A second run reads every vector from the cache and replaces the section in place.
    again = bench.main(argv + ["--latency-questions", "0"])
    assert again["meta"]["n_encoded"] == 0
    assert md.read_text().count(bench.MD_START) == 1
    assert again["summary"]["official"]["strict"] == strict


def test_agent_answers_and_writes_hypotheses(trimmed, tmp_path, monkeypatch, capsys):
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    agent = load_script(ROOT / "examples" / "longmemeval_agent.py")
    monkeypatch.setattr(agent, "chat_model", lambda spec: FakeListChatModel(responses=["Business Administration "]))
    out = tmp_path / "answered.jsonl"
    agent.main([str(trimmed), "--chat-model", "fake:model", "--sae", "none", "--limit", "1", "--out", str(out)])
    assert "retrieval only" not in capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["hypothesis"] == "Business Administration" and record["answer_model"] == "fake:model"
    hypotheses = [json.loads(line) for line in agent.hypothesis_path(out).read_text().splitlines()]
    assert hypotheses == [{"question_id": "e47becba", "hypothesis": "Business Administration"}]


@pytest.mark.parametrize("stack,expected", [
    ("poster", ("google/gemma-2b-it", "gemma-2b-it-res-jb", "blocks.12.hook_resid_post", "nomic-ai/nomic-embed-text-v1", "mean")),
    ("gemma-scope", ("google/gemma-2-2b", "gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical",
                     "nomic-ai/nomic-embed-text-v1.5", "mean")),
])
def test_agent_stack_presets_ask_for_the_gpu_stacks(monkeypatch, stack, expected):
    import saememory.encoders.lm as lm

    agent = load_script(ROOT / "examples" / "longmemeval_agent.py")
    built = {}
    monkeypatch.setattr(lm, "LMEncoder", lambda config, cache_dir=None: built.update(config=config, cache_dir=cache_dir) or "encoder")
    args = agent.parse_args(["data.json", "--stack", stack, "--device", "cuda", "--dtype", "bfloat16", "--cache-dir", "/tmp/codes"])
    assert agent.build_encoder(args, None) == "encoder"
    cfg = built["config"]
    assert (cfg.lm, cfg.sae_release, cfg.sae_id, cfg.dense_model, cfg.pooling) == expected
    assert (cfg.device, cfg.dtype, built["cache_dir"]) == ("cuda", "bfloat16", "/tmp/codes")


def test_fusion_benchmark_has_a_row_for_the_shipped_default():
    fusion = load_script(ROOT / "benchmarks" / "fusion.py")
    name, cfg = fusion.default_config()
    assert name in fusion.configurations(), "SAEMemory()'s ranking must be one of the ablation rows"
    defaults = SearchConfig()  # what SAEMemory() ranks with
    assert cfg["normalization"] == defaults.normalization and cfg["fusion"] == defaults.fusion
    lexical = "stemmed bm25" if defaults.bm25_stemmer else "bm25"
    assert cfg["weights"] == {"dense": defaults.dense_weight, "sparse": defaults.sparse_weight,
                              lexical: defaults.bm25_weight}
    low, high = fusion.bootstrap(np.array([0.0, 1.0, 0.0, 1.0]))
    assert 0.0 <= low <= 0.5 <= high <= 1.0


def test_fusion_benchmark_matches_thresholds_to_fixed_k():
    fusion = load_script(ROOT / "benchmarks" / "fusion.py")
    # Precision falls as the threshold rises; top k's precision rises with k.
    m = {f"cp@z{t}": 1.0 - t / 5 for t in fusion.THRESHOLDS}
    m.update({f"cp@{k}": min(1.0, 0.1 * k) for k in fusion.FIXED_K})
    # Top 3 (0.3) is reached up to z 3.5, top 5 (0.5) up to z 2.5; top 10 and 20 (1.0) never.
    assert fusion.matching_thresholds(m) == {1: 4.0, 3: 3.0, 5: 2.5, 10: None, 20: None}


def test_benchmarks_rank_as_the_shipped_default(encoder):
    from saememory.arrays import as_stored
    from saememory.lexical import LexicalIndex

    from tests.helpers import CONVERSATION, QUESTION

    common = load_script(ROOT / "benchmarks" / "common.py")
    memory = SAEMemory(encoder, **common.NO_ADJUSTMENTS)  # the benchmarks' numpy path is the fusion alone
    memory.add(CONVERSATION)
    hits = memory.search(QUESTION, k=len(CONVERSATION))
    texts = [m["content"] for m in CONVERSATION]
    docs, query = encoder.encode_documents(texts), encoder.encode_query(QUESTION)
    dense, codes = as_stored(docs.dense, docs.sparse)  # the int8 values SAEMemory's backend stores and scores
    lexical = LexicalIndex(stemmer=common.library_defaults()["bm25_stemmer"])
    lexical.add(texts)
    scores = common.default_scores({"dense": dense @ query.dense[0],
                                    "sparse": (codes @ query.sparse[0].T).toarray().ravel(),
                                    "bm25": lexical.scores(QUESTION, np.arange(len(texts)))})
    np.testing.assert_allclose(sorted(scores, reverse=True), [h.score for h in hits], atol=1e-5)
    assert [texts[i] for i in np.argsort(-scores, kind="stable")][:3] == [h.content for h in hits[:3]]
