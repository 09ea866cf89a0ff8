"""A LlamaIndex chat engine whose context comes from an interpretable chat memory.

    python examples/llama_index_chat_engine.py      # offline, MockLLM

Indexes a small multi-session conversation, then chats through a ContextChatEngine; prints the
memories it used with their scores and SAE features.
"""

from __future__ import annotations

import sys
from pathlib import Path

from llama_index.core.chat_engine import ContextChatEngine
from llama_index.core.llms import MockLLM

sys.path.insert(0, str(Path(__file__).parent))
from sample_conversation import QUESTIONS, messages  # noqa: E402

from llama_index_saememory import SAEMemoryRetriever  # noqa: E402
from saememory import format_hit  # noqa: E402


def main() -> None:
    retriever = SAEMemoryRetriever.from_messages(messages(), similarity_top_k=3, words=True)  # explained word by word
    print(f"Indexed {len(retriever.memory)} messages.\n")
    # MockLLM keeps this offline; pass any LlamaIndex LLM as llm= for real answers.
    engine = ContextChatEngine.from_defaults(retriever=retriever, llm=MockLLM(max_tokens=20))
    for question in QUESTIONS:
        response = engine.chat(question)
        print(f"Q: {question}")
        for node in response.source_nodes:
            print(format_hit(node.node.get_content(), node.node.metadata))
        print(f"A (MockLLM): {str(response)[:80]!r}\n")


if __name__ == "__main__":
    main()
