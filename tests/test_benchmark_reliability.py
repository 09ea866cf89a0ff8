"""The hostile-input benchmark script: a short run must find nothing unexpected and no violation."""

from __future__ import annotations

from tests.helpers import ROOT, load_script


def test_a_short_hostile_run_holds(encoder, tmp_path):
    reliability = load_script(ROOT / "benchmarks" / "reliability.py")
    counts = reliability.run("in-process", 300, 1, encoder, tmp_path)  # includes one save and load
    assert sum(c["steps"] for c in counts.values()) == 300
    assert all(c["succeeded"] > 0 and c["refused"] > 0 for name, c in counts.items() if name != "messages")
    for name, c in counts.items():
        assert c["unexpected"] == c["violation"] == c["refused without a message"] == 0, (name, c)


def test_the_model_check_catches_a_memory_that_drifts(encoder, tmp_path):
    reliability = load_script(ROOT / "benchmarks" / "reliability.py")
    from saememory import SAEMemory

    job = reliability.Run(SAEMemory(encoder), 0)
    job.memory.add([{"content": "Stored behind the model's back.", "user_id": "alice"}])
    job.check()
    assert job.counts["(memory equals model)"]["violation"] == 1
