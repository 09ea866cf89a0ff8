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
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = subprocess.run([sys.executable, str(ROOT / "examples" / script)], capture_output=True,
                            text=True, timeout=300, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "Indexed 13 messages." in out
    assert out.count("Q: ") == 3
    assert "score=" in out and "dense=" in out and "sparse=" in out
    assert "matched on: #" in out and "strongest: #" in out
    # The violin question retrieves the violin session first.
    violin = out.split("Q: What instrument")[1]
    assert "violin" in violin.split("\n")[2].lower()
