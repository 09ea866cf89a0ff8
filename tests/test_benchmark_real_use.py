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
    for q in changed:  # the answer is the later statement of the fact
        assert by_id[q.answer_id]["timestamp"] > by_id[q.old_id]["timestamp"]
    echoes = {echo for _, _, echo, _ in real_use.FACTS.values()}
    assert any(m["content"] in echoes for m in messages)


def test_it_runs_and_reports_shares(encoder):
    real_use = load_script(ROOT / "benchmarks" / "real_use.py")
    messages, questions = real_use.build(users=1, seed=0)
    result = real_use.evaluate(encoder, messages, questions, {})
    assert result["n"] == len(real_use.FACTS) and 0.0 <= result["top3_stored"] <= 1.0
    assert real_use.wilson(0.5, 100) == "0.50 [0.40, 0.60]"
