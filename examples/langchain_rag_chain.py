"""An LCEL RAG chain over an interpretable chat memory.

    python examples/langchain_rag_chain.py                          # offline, fake chat model
    python examples/langchain_rag_chain.py --chat-model openai:gpt-4o-mini   # any model init_chat_model knows

Indexes a small multi-session conversation, then for each question retrieves the relevant past
messages, prints each with its scores and SAE features, and answers from them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough

sys.path.insert(0, str(Path(__file__).parent))
from sample_conversation import QUESTIONS, messages  # noqa: E402

from langchain_saememory import SAEMemoryRetriever  # noqa: E402
from saememory import format_hit  # noqa: E402

PROMPT = ChatPromptTemplate.from_messages([
    ("system", "Answer the user's question from these memories of past conversations:\n{context}"),
    ("human", "{question}"),
])


def chat_model(spec: str | None):
    if spec is None:
        return FakeListChatModel(responses=["(fake chat model: pass --chat-model to get a real answer)"])
    try:
        from langchain.chat_models import init_chat_model
    except ImportError:
        sys.exit("--chat-model needs the 'langchain' package and the provider's package (e.g. langchain-openai).")
    return init_chat_model(spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chat-model", help="provider:model for langchain's init_chat_model; default: offline fake")
    parser.add_argument("--k", type=int, default=3)
    args = parser.parse_args()

    retriever = SAEMemoryRetriever.from_messages(messages(), k=args.k)
    print(f"Indexed {len(retriever.memory)} messages.\n")

    def context(docs):
        return "\n".join(f"[{d.metadata['timestamp']}] {d.metadata['role']}: {d.page_content}" for d in docs)

    chain = (
        {"context": retriever | context, "question": RunnablePassthrough()}
        | PROMPT
        | chat_model(args.chat_model)
        | StrOutputParser()
    )
    for question in QUESTIONS:
        print(f"Q: {question}")
        for doc in retriever.invoke(question, words=True):  # explained word by word
            print(format_hit(doc.page_content, doc.metadata))
        print(f"A: {chain.invoke(question)}\n")


if __name__ == "__main__":
    main()
