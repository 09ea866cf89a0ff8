"""langchain_saememory: a LangChain retriever over the memory, sync and async."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from langchain_saememory import SAEMemoryRetriever, to_message_dicts
from tests.helpers import CONVERSATION, PLANTED, QUESTION

METADATA_KEYS = {"id", "role", "session_id", "timestamp", "user_id", "score", "dense_score", "sparse_score",
                 "rank", "truncated", "features", "shared_features"}


@pytest.fixture
def retriever(encoder) -> SAEMemoryRetriever:
    return SAEMemoryRetriever.from_messages(CONVERSATION, k=4, encoder=encoder)


def test_from_langchain_messages(encoder):
    messages = [
        SystemMessage("You are a helpful assistant."),
        HumanMessage("I adopted a beagle named Biscuit.", id="m1", additional_kwargs={"session_id": "s9", "timestamp": "2024-01-02"}),
        AIMessage("Congratulations on Biscuit!"),
        HumanMessage(PLANTED),
    ]
    retriever = SAEMemoryRetriever.from_messages(messages, k=2, encoder=encoder)
    docs = retriever.invoke("What is my dog called?")
    assert len(docs) == 2 and docs[0].id == "m1"
    assert docs[0].metadata["session_id"] == "s9" and docs[0].metadata["timestamp"] == "2024-01-02"
    roles = {d["role"] for d in to_message_dicts(messages)}
    assert roles == {"system", "user", "assistant"}


def test_documents_carry_ids_scores_and_features(retriever):
    docs = retriever.invoke(QUESTION)
    assert len(docs) == 4 and all(isinstance(d, Document) for d in docs)
    top = docs[0]
    assert top.id == "planted" and top.page_content == PLANTED
    assert set(top.metadata) >= METADATA_KEYS
    assert top.metadata["rank"] == 1 and top.metadata["features"] and top.metadata["shared_features"]
    scores = [d.metadata["score"] for d in docs]
    assert scores == sorted(scores, reverse=True)


def test_k_per_call(retriever):
    assert len(retriever.invoke(QUESTION, k=1)) == 1
    assert len(retriever.invoke(QUESTION)) == 4
    assert len(retriever.invoke(QUESTION, k=100)) == len(CONVERSATION)


def test_context_budget_per_call_and_as_a_field(retriever):
    budget = sum(len(d.page_content) for d in retriever.invoke(QUESTION, k=2))
    docs = retriever.invoke(QUESTION, k=10, max_chars=budget)
    assert docs and sum(len(d.page_content) for d in docs) <= budget
    full = [d.id for d in retriever.invoke(QUESTION, k=10)]
    assert [d.id for d in docs] == [i for i in full if i in {d.id for d in docs}]  # rank order kept
    capped = SAEMemoryRetriever.from_memory(retriever.memory, k=10, max_chars=budget)
    assert [d.id for d in capped.invoke(QUESTION)] == [d.id for d in docs]


def test_session_per_call(retriever):
    docs = retriever.invoke(QUESTION, session_id="s3", k=50)
    assert docs and {d.metadata["session_id"] for d in docs} == {"s3"}


async def test_async_matches_sync(retriever):
    sync = [(d.id, d.metadata["score"]) for d in retriever.invoke(QUESTION, k=3)]
    docs = await retriever.ainvoke(QUESTION, k=3)
    assert [(d.id, d.metadata["score"]) for d in docs] == sync


async def test_async_does_not_block_the_event_loop(retriever, monkeypatch):
    import time

    search = retriever.memory.search

    def slow_search(*args, **kwargs):  # a search long enough that a blocked loop could not tick meanwhile
        time.sleep(0.1)
        return search(*args, **kwargs)

    monkeypatch.setattr(retriever.memory, "search", slow_search)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # the ticker starts
    await asyncio.gather(*(retriever.ainvoke(QUESTION) for _ in range(4)))
    task.cancel()
    assert ticks > 10


def test_per_user_retrievers_are_isolated(encoder):
    alice = SAEMemoryRetriever.from_messages([HumanMessage("Alice's locker code is 1234.")], user_id="alice", encoder=encoder)
    bob = SAEMemoryRetriever.from_memory(alice.memory, user_id="bob")
    bob.add_messages([HumanMessage("Bob plays the cello.")])
    assert [d.metadata["user_id"] for d in bob.invoke("locker code", k=10)] == ["bob"]
    assert [d.metadata["user_id"] for d in alice.invoke("locker code", k=10)] == ["alice"]


async def test_added_messages_are_searchable_at_once(retriever):
    retriever.add_messages([HumanMessage("I just booked flights to Tokyo for November.", id="tokyo")], session_id="s4")
    assert retriever.invoke("When am I flying to Japan?", k=1)[0].id == "tokyo"
    await retriever.aadd_messages([{"role": "user", "content": "My favourite tea is genmaicha.", "id": "tea"}])
    # The haystack already holds a message on steeping green tea: the question names the fact asked.
    assert (await retriever.ainvoke("What is my favourite tea?", k=1))[0].id == "tea"


def test_bad_query_is_a_clear_error(retriever):
    with pytest.raises(ValueError, match="empty"):
        retriever.invoke("  ")


# LangChain's own standard suite, unmodified ---------------------------------------------------

from functools import lru_cache  # noqa: E402

from langchain_tests.integration_tests import RetrieversIntegrationTests  # noqa: E402

from saememory import SAEMemory  # noqa: E402


@lru_cache(maxsize=1)
def _standard_memory() -> SAEMemory:
    memory = SAEMemory()
    memory.add(CONVERSATION)
    return memory


class TestStandardRetrieverSuite(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[SAEMemoryRetriever]:
        return SAEMemoryRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"memory": _standard_memory()}

    @property
    def retriever_query_example(self) -> str:
        return QUESTION


def test_user_is_configurable_per_call(encoder):
    from langchain_core.runnables import ConfigurableField

    retriever = SAEMemoryRetriever.from_messages(
        [{"content": "Alice's bike is red.", "user_id": "alice"}, {"content": "Bob's bike is blue.", "user_id": "bob"}],
        encoder=encoder,
    ).configurable_fields(user_id=ConfigurableField(id="user_id"), session_id=ConfigurableField(id="session_id"))
    for user in ("alice", "bob"):
        docs = retriever.invoke("What colour is my bike?", config={"configurable": {"user_id": user}})
        assert [d.metadata["user_id"] for d in docs] == [user]
    assert retriever.invoke("What colour is my bike?") == []  # the default user owns nothing


async def test_concurrent_async_writers_and_readers(encoder):
    retriever = SAEMemoryRetriever.from_messages(CONVERSATION[:3], k=5, encoder=encoder)

    async def writer(n: int) -> None:
        for i in range(4):
            await retriever.aadd_messages([{"role": "user", "content": f"Note {n}-{i}: I like colour {n * 10 + i}.", "id": f"w{n}-{i}"}])

    async def reader() -> None:
        for _ in range(6):
            for doc in await retriever.ainvoke("Which colour do I like?"):
                stored = retriever.memory.get(doc.id)
                assert stored["content"] == doc.page_content  # never a half-written message

    await asyncio.gather(*(writer(n) for n in range(4)), *(reader() for _ in range(3)))
    assert len(retriever.memory) == 3 + 16
    assert all(f"w{n}-{i}" in retriever.memory for n in range(4) for i in range(4))


def test_a_misspelt_setting_is_refused_not_ignored(encoder):
    import pydantic

    from saememory import SAEMemory

    memory = SAEMemory(encoder)
    with pytest.raises(pydantic.ValidationError, match="user"):  # ignored, it would read and write the default user
        SAEMemoryRetriever(memory=memory, user="carol")
    with pytest.raises(pydantic.ValidationError, match="session"):
        SAEMemoryRetriever.from_memory(memory, session="s1")


def test_roles_of_chunks_and_chat_messages_are_the_chat_roles():
    from langchain_core.messages import AIMessageChunk, ChatMessage, HumanMessageChunk

    dicts = to_message_dicts([AIMessageChunk(content="Sure."), HumanMessageChunk(content="Hi."),
                              ChatMessage(role="user", content="I live in Lisbon."), SystemMessage("Be brief.")])
    assert [d["role"] for d in dicts] == ["assistant", "user", "user", "system"]


def test_steering_survives_a_json_round_trip_as_ids_and_texts(retriever):
    steered = retriever.model_copy(update={"steer": {898: 3.0, "violin": 1.0}})
    again = SAEMemoryRetriever.model_validate({**__import__("json").loads(steered.model_dump_json()), "memory": retriever.memory})
    assert again.steer == {898: 3.0, "violin": 1.0} and isinstance(next(iter(again.steer)), int)


def test_a_memory_is_not_pickled_or_copied_but_says_what_to_do(retriever):
    import copy
    import pickle

    for attempt in (lambda: pickle.dumps(retriever.memory), lambda: copy.deepcopy(retriever.memory),
                    lambda: retriever.model_copy(deep=True)):
        with pytest.raises(TypeError, match="save\\(path\\).*SAEMemory.load"):
            attempt()
    handle = copy.copy(retriever.memory)  # a shallow copy is a second handle on the same memory
    assert handle.backend is retriever.memory.backend and len(handle) == len(retriever.memory)


def test_system_prompts_tool_calls_and_tool_results_are_not_stored(encoder):
    from langchain_core.messages import ToolMessage

    history = [SystemMessage("You are a helpful assistant."), HumanMessage("What's the weather in Oslo?", id="q"),
               AIMessage("", tool_calls=[{"name": "weather", "args": {"city": "Oslo"}, "id": "c1"}]),
               ToolMessage("12 degrees, rain", tool_call_id="c1"), AIMessage("It is 12 degrees and raining.", id="a")]
    retriever = SAEMemoryRetriever.from_messages(history, encoder=encoder)
    assert [m["id"] for m in retriever.memory.messages()] == ["q", "a"]
    assert retriever.add_messages([SystemMessage("Be brief."), HumanMessage("I live in Oslo.", id="h")]) == ["h"]
    with pytest.raises(ValueError, match="content"):  # an empty turn that is no tool call is still refused
        retriever.add_messages([HumanMessage("")])


def test_fusion_per_call(retriever):
    fused = retriever.invoke(QUESTION, fusion="rrf")
    assert fused and fused[0].metadata["score"] < 1.0  # reciprocal ranks, not z-scores
    with pytest.raises(ValueError, match="fusion"):
        retriever.invoke(QUESTION, fusion="nonsense")


def test_a_locked_retriever_reads_only_its_user(encoder):
    from saememory import SAEMemory

    memory = SAEMemory(encoder)
    memory.add([{"content": "Alice's PIN is 1111.", "id": "a"}], user_id="alice")
    memory.add([{"content": "Bob's PIN is 2222.", "id": "b"}], user_id="bob")
    locked = SAEMemoryRetriever(memory=memory, user_id="alice", lock_user=True)
    assert [d.id for d in locked.invoke("What is my PIN?")] == ["a"]
    assert [d.id for d in locked.invoke("What is my PIN?", user_id="alice")] == ["a"]
    with pytest.raises(ValueError, match="reads only user 'alice'"):
        locked.invoke("What is my PIN?", user_id="bob")
    with pytest.raises(ValueError, match="reads only user 'alice'"):
        asyncio.run(locked.ainvoke("What is my PIN?", user_id="bob"))
    assert [d.id for d in SAEMemoryRetriever(memory=memory, user_id="alice").invoke("PIN?", user_id="bob")] == ["b"]
