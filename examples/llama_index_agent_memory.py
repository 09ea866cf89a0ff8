"""LlamaIndex agent memory: a ``Memory`` whose SAE block recalls relevant turns from long ago.

    python examples/llama_index_agent_memory.py      # offline, MockLLM

The short-term queue is kept tiny on purpose, so old turns leave the prompt quickly; the
``SAEMemoryBlock`` has indexed every turn and brings back the ones that matter for each new
message. Prints what the block injects at every turn.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.llms import MockLLM
from llama_index.core.memory import Memory

sys.path.insert(0, str(Path(__file__).parent))
from sample_conversation import QUESTIONS, SESSIONS  # noqa: E402

from llama_index_saememory import SAEMemoryBlock  # noqa: E402
from saememory import SAEMemory  # noqa: E402


async def main() -> None:
    block = SAEMemoryBlock(memory=SAEMemory(), k=2, user_id="maya-parent")
    memory = Memory.from_defaults(session_id="chat-1", token_limit=120, chat_history_token_ratio=0.5,
                                  token_flush_size=40, memory_blocks=[block])
    # Replay the earlier sessions into the agent's memory, as they happened.
    for turns in SESSIONS.values():
        await memory.aput_messages([ChatMessage(role=role, content=content) for role, content in turns])
    engine = SimpleChatEngine.from_defaults(llm=MockLLM(max_tokens=10), memory=memory)
    print(f"Indexed {len(block.memory)} messages; {len(await memory.aget_all())} turns in the chat store.\n")
    for question in QUESTIONS:
        recalled = await block.aget((await memory.aget()) + [ChatMessage(role="user", content=question)],
                                    session_id="chat-1")
        print(f"Q: {question}\nrecalled:\n{recalled}\n")
        await engine.achat(question)


if __name__ == "__main__":
    asyncio.run(main())
