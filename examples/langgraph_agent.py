"""A LangGraph agent with long-term memory: recall, respond, remember.

    python examples/langgraph_agent.py                               # offline, fake chat model
    python examples/langgraph_agent.py --chat-model openai:gpt-4o-mini

Every turn runs three nodes: ``recall`` retrieves the relevant past turns of this user from the
memory (printed with their scores and SAE features), ``respond`` answers with them in the
prompt, and ``remember`` writes the user's turn and the reply to the memory, searchable at once.
The user id travels in the graph's config, so one compiled graph serves many users.
"""

from __future__ import annotations

import argparse
import sys
from typing import TypedDict

from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.runnables import ConfigurableField, RunnableConfig
from langgraph.graph import END, START, StateGraph

from langchain_saememory import SAEMemoryRetriever
from saememory import SAEMemory, format_hit

TURNS = [
    ("2024-05-01", "I'm allergic to shellfish, so keep that in mind for recipes."),
    ("2024-05-03", "My partner's birthday is on June 14th."),
    ("2024-05-09", "I've started running three times a week, mostly 5k."),
    ("2024-05-20", "Can you suggest a dinner for my partner's birthday?"),
    ("2024-05-21", "How far do I usually run?"),
]


class State(TypedDict):
    question: str
    date: str
    recalled: list
    answer: str


def build(retriever, memory: SAEMemory, model):
    """The recall → respond → remember graph."""

    def recall(state: State, config: RunnableConfig) -> dict:
        return {"recalled": retriever.invoke(state["question"], config=config)}

    def respond(state: State) -> dict:
        memories = "\n".join(f"[{d.metadata['timestamp']}] {d.page_content}" for d in state["recalled"])
        reply = model.invoke([SystemMessage(f"What you remember about the user:\n{memories}"),
                              HumanMessage(state["question"])])
        return {"answer": reply.content}

    def remember(state: State, config: RunnableConfig) -> dict:
        user = config["configurable"]["user_id"]
        memory.add([
            {"role": "user", "content": state["question"], "timestamp": state["date"], "user_id": user, "session_id": state["date"]},
            {"role": "assistant", "content": state["answer"], "timestamp": state["date"], "user_id": user, "session_id": state["date"]},
        ])
        return {}

    graph = StateGraph(State)
    graph.add_node("recall", recall)
    graph.add_node("respond", respond)
    graph.add_node("remember", remember)
    graph.add_edge(START, "recall")
    graph.add_edge("recall", "respond")
    graph.add_edge("respond", "remember")
    graph.add_edge("remember", END)
    return graph.compile()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chat-model", help="provider:model for langchain's init_chat_model; default: offline fake")
    args = parser.parse_args()
    if args.chat_model:
        try:
            from langchain.chat_models import init_chat_model
        except ImportError:
            sys.exit("--chat-model needs the 'langchain' package and the provider's package.")
        model = init_chat_model(args.chat_model)
    else:
        model = FakeListChatModel(responses=["(fake reply)"])
    memory = SAEMemory()
    retriever = SAEMemoryRetriever(memory=memory, k=2).configurable_fields(
        user_id=ConfigurableField(id="user_id", name="User", description="Whose memory to read.")
    )
    agent = build(retriever, memory, model)
    config = {"configurable": {"user_id": "sam"}}
    for date, question in TURNS:
        state = agent.invoke({"question": question, "date": date, "recalled": [], "answer": ""}, config=config)
        print(f"[{date}] user: {question}")
        for doc in state["recalled"]:
            print(format_hit(doc.page_content, doc.metadata))
        print(f"  agent: {state['answer']}\n")
    other = agent.invoke({"question": "What am I allergic to?", "date": "2024-05-22", "recalled": [], "answer": ""},
                         config={"configurable": {"user_id": "alex"}})
    print(f"Another user asks about allergies and recalls {len(other['recalled'])} memories of sam's.")


if __name__ == "__main__":
    main()
