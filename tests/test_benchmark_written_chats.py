"""The written-chats benchmark: its data is what its docstring says, and it ranks end to end."""

from __future__ import annotations

import pytest

from saememory import SAEMemory
from tests.helpers import ROOT, load_script


def test_the_data_holds_two_users_both_roles_and_answers_that_exist():
    written = load_script(ROOT / "benchmarks" / "written_chats.py")
    data = written.load()
    messages = {m["id"]: m for m in data["messages"]}
    assert len(messages) == len(data["messages"]) == 124 and len(data["questions"]) == 73
    assert {m["role"] for m in messages.values()} == {"user", "assistant"}
    assert set(data["now"]) == {m["user_id"] for m in messages.values()} == {"priya", "marcus"}
    for q in data["questions"]:  # every answer is a message of the user who asks
        assert q["kind"] in written.KINDS and q["answers"]
        assert all(messages[a]["user_id"] == q["user"] for a in q["answers"])


def test_it_ranks_every_question(encoder):
    written = load_script(ROOT / "benchmarks" / "written_chats.py")
    data = written.load()
    data["questions"] = data["questions"][:4]
    memory = SAEMemory(encoder)
    memory.add(data["messages"])
    found = written.ranks(memory, data)
    assert len(found) == 4 and all(r is None or 1 <= r <= 10 for r in found)
    assert written.ranks(memory, data, speaker_weight=0.0) and memory.config.speaker_weight == 2.0  # restored


@pytest.mark.parametrize("name", ["written_chats_held_out.json", "written_chats_held_out_2.json"])
def test_the_held_out_histories_are_consistent_too(name):
    written = load_script(ROOT / "benchmarks" / "written_chats.py")
    data = written.load(ROOT / "benchmarks" / "data" / name)
    messages = {m["id"]: m for m in data["messages"]}
    assert len(messages) == len(data["messages"]) and set(data["now"]) == {m["user_id"] for m in messages.values()}
    for q in data["questions"]:
        assert q["kind"] in written.KINDS and q["answers"]
        assert all(messages[a]["user_id"] == q["user"] for a in q["answers"])
