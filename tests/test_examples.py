"""The examples run offline and show memories with their scores and features."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["langchain_rag_chain.py", "llama_index_chat_engine.py"])
def test_example_runs_offline(script):
    out = _run(script)
    assert "Indexed 13 messages." in out
    assert out.count("Q: ") == 3
    assert "score=" in out and "dense=" in out and "sparse=" in out
    assert "matched on: #" in out and "strongest: #" in out and "words: '" in out
    # The violin question retrieves the violin session first.
    violin = out.split("Q: What instrument")[1]
    assert "violin" in violin.split("\n")[2].lower()


def _run(script: str) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = subprocess.run([sys.executable, str(ROOT / "examples" / script)], capture_output=True,
                            text=True, timeout=300, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_langgraph_agent_recalls_and_remembers():
    out = _run("langgraph_agent.py")
    birthday = out.split("Can you suggest a dinner")[1]
    assert "My partner's birthday is on June 14th." in birthday.split("agent:")[0]
    running = out.split("How far do I usually run?")[1]
    assert "mostly 5k" in running.split("agent:")[0]
    assert "recalls 0 memories of sam's" in out


def test_llama_index_agent_memory_recalls_flushed_turns():
    out = _run("llama_index_agent_memory.py")
    assert "violin lessons on Tuesdays" in out.split("Q: What instrument")[1].split("Q: ")[0]
    assert "named Pepper" in out.split("Q: What's my dog's name?")[1]


def test_explain_view_writes_the_page(tmp_path):
    out = tmp_path / "view.html"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, str(ROOT / "examples" / "explain_view.py"), "--out", str(out)], check=True,
                   env=env, capture_output=True, text=True, timeout=600)
    page = out.read_text(encoding="utf-8")
    assert page.count("class='hit'") == 3 and "<mark title=" in page and "violin" in page
