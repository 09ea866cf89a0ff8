"""The real-use benchmark script: its data is what its docstring says, and it runs end to end."""

from __future__ import annotations

from tests.helpers import ROOT, load_script


def test_the_data_has_changed_facts_echoes_and_both_roles():
    real_use = load_script(ROOT / "benchmarks" / "real_use.py")
    messages, questions = real_use.build(users=3, seed=1)
    assert {m["role"] for m in messages} == {"user", "assistant"} and len({m["user_id"] for m in messages}) == 3
    assert len(questions) == 3 * len(real_use.FACTS)
    changed = [q for q in questions if q.old_id is not None]
    assert len(changed) == 3 * real_use.CHANGED
    by_id = {m["id"]: m for m in messages}
    for q in changed:  # the answer is the later statement of the fact, by the user
        assert by_id[q.answer_id]["timestamp"] > by_id[q.old_id]["timestamp"]
        assert by_id[q.answer_id]["role"] == by_id[q.old_id]["role"] == "user"
    asked_back = {fact.ask_back for fact in real_use.FACTS.values()}
    assert any(m["content"] in asked_back for m in messages)
    assert any(q.stored != q.text for q in questions) and any(q.stored == q.text for q in questions)


def test_it_runs_and_reports_shares(encoder):
    real_use = load_script(ROOT / "benchmarks" / "real_use.py")
    messages, questions = real_use.build(users=1, seed=0)
    result = real_use.evaluate(real_use.memory_ranker({}, encoder), messages, questions)
    assert result["n"] == len(real_use.FACTS) and 0.0 <= result["top3_stored"] <= 1.0
    assert result["changed"] == real_use.CHANGED
    assert real_use.wilson(0.5, 100) == "0.50 [0.40, 0.60]"


def test_the_data_is_the_same_in_every_process():
    import os
    import subprocess
    import sys

    code = ("import hashlib, json, sys; sys.path.insert(0, 'benchmarks'); import real_use; "
            "m, q = real_use.build(4, 0); print(hashlib.sha1(json.dumps([m, [vars(x) for x in q]], default=str).encode()).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(digests) == 1
