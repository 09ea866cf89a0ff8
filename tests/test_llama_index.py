"""llama_index_saememory: a LlamaIndex retriever over the memory, sync and async."""

from __future__ import annotations

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.schema import MetadataMode, QueryBundle

from langchain_saememory import SAEMemoryRetriever as LangChainRetriever
from llama_index_saememory import SAEMemoryRetriever
from tests.helpers import CONVERSATION, PLANTED, QUESTION


def test_from_chat_messages(encoder):
    messages = [
        ChatMessage(role="user", content="I adopted a beagle named Biscuit.", additional_kwargs={"id": "m1", "session_id": "s9"}),
        ChatMessage(role="assistant", content="Congratulations on Biscuit!"),
        ChatMessage(role="user", content=PLANTED),
    ]
    retriever = SAEMemoryRetriever.from_messages(messages, similarity_top_k=2, encoder=encoder)
    nodes = retriever.retrieve("What is my dog called?")
    assert len(nodes) == 2 and nodes[0].node.node_id == "m1"
    assert nodes[0].node.metadata["session_id"] == "s9" and nodes[0].node.metadata["role"] == "user"


def test_nodes_have_message_ids_scores_and_hidden_features(encoder):
    retriever = SAEMemoryRetriever.from_messages(CONVERSATION, similarity_top_k=3, encoder=encoder)
    nodes = retriever.retrieve(QUESTION)
    top = nodes[0]
    assert top.node.node_id == "planted" and top.node.get_content() == PLANTED
    assert top.score == top.node.metadata["score"] and top.node.metadata["shared_features"]
    llm_view = top.node.get_content(metadata_mode=MetadataMode.LLM)
    assert "session_id" in llm_view and "features" not in llm_view and "dense_score" not in llm_view
    assert top.node.get_content(metadata_mode=MetadataMode.EMBED) == PLANTED


async def test_async_matches_sync(encoder):
    retriever = SAEMemoryRetriever.from_messages(CONVERSATION, similarity_top_k=3, encoder=encoder)
    sync = [(n.node.node_id, n.score) for n in retriever.retrieve(QUESTION)]
    nodes = await retriever.aretrieve(QueryBundle(QUESTION))
    assert [(n.node.node_id, n.score) for n in nodes] == sync


def test_same_ranking_as_langchain(encoder):
    lc = LangChainRetriever.from_messages(CONVERSATION, k=6, encoder=encoder)
    li = SAEMemoryRetriever(lc.memory, similarity_top_k=6)
    for query in [QUESTION, "guitar lessons", "insurance renewal"]:
        expected = [(d.id, d.metadata["score"]) for d in lc.invoke(query)]
        assert [(n.node.node_id, n.score) for n in li.retrieve(query)] == expected


def test_context_budget(encoder):
    lc = LangChainRetriever.from_messages(CONVERSATION, k=10, encoder=encoder)
    li = SAEMemoryRetriever(lc.memory, similarity_top_k=10, max_chars=300)
    nodes = li.retrieve(QUESTION)
    assert nodes and sum(len(n.node.get_content()) for n in nodes) <= 300
    assert [n.node.node_id for n in nodes] == [d.id for d in lc.invoke(QUESTION, max_chars=300)]


def test_user_scope(encoder):
    retriever = SAEMemoryRetriever.from_messages(CONVERSATION, user_id="alice", encoder=encoder)
    assert retriever.retrieve(QUESTION)[0].node.metadata["user_id"] == "alice"
    other = SAEMemoryRetriever(retriever.memory, user_id="mallory")
    assert other.retrieve(QUESTION) == []


# Inside LlamaIndex's own machinery --------------------------------------------------------------


def test_inside_query_fusion_retriever_and_postprocessors(encoder):
    from llama_index.core.llms import MockLLM
    from llama_index.core.postprocessor import SimilarityPostprocessor
    from llama_index.core.retrievers import QueryFusionRetriever

    ours = SAEMemoryRetriever.from_messages(CONVERSATION, similarity_top_k=4, encoder=encoder)
    fusion = QueryFusionRetriever([ours], llm=MockLLM(), num_queries=1, mode="relative_score",
                                  similarity_top_k=3, use_async=False)
    nodes = fusion.retrieve(QUESTION)
    assert nodes[0].node.node_id == "planted" and len(nodes) == 3
    assert len({n.node.node_id for n in nodes}) == 3  # ids are message ids, so de-duplication is right
    raw = ours.retrieve(QUESTION)
    cutoff = raw[1].score
    kept = SimilarityPostprocessor(similarity_cutoff=cutoff).postprocess_nodes(raw)
    assert [n.node.node_id for n in kept] == [n.node.node_id for n in raw[:2]]


async def test_memory_block_indexes_everything_and_recalls_old_turns(encoder):
    from llama_index.core.memory import Memory

    from llama_index_saememory import SAEMemoryBlock
    from llama_index_saememory.memory_block import message_id
    from saememory import SAEMemory

    block = SAEMemoryBlock(memory=SAEMemory(encoder), k=2)
    memory = Memory.from_defaults(session_id="s", token_limit=60, chat_history_token_ratio=0.5,
                                  token_flush_size=20, memory_blocks=[block])
    await memory.aput_messages([ChatMessage(role="user", content=PLANTED)])
    for text in ["I like tea.", "The weather is mild today.", "My laptop is slow.", "I bought new shoes."]:
        await memory.aput_messages([ChatMessage(role="user", content=text), ChatMessage(role="assistant", content="Noted.")])
    in_queue = await memory.aget()
    assert PLANTED not in [m.content for m in in_queue]  # flushed out of the short-term queue
    with_blocks = await memory.aget(input=QUESTION)
    injected = with_blocks[0].content
    assert PLANTED in injected and "features" not in injected
    # Every message was indexed, flushed or not, once each ("Noted." twice is one message), and
    # so was the question asked.
    assert len(block.memory) == 7 and block.memory.contains(message_id(ChatMessage(role="user", content=QUESTION),
                                                                        "s", "default"))
    # Messages still in the short-term queue are already in the prompt: not injected again.
    recalled = await block.aget(in_queue + [ChatMessage(role="user", content="I bought new shoes?")], session_id="s")
    assert "I bought new shoes." not in recalled and "I bought new shoes?" not in recalled and recalled
    assert len(block.memory) == 8


async def test_memory_block_stores_the_question_and_index_stores_a_conversation_end(encoder):
    from llama_index.core.memory import Memory

    from llama_index_saememory import SAEMemoryBlock
    from saememory import SAEMemory

    block = SAEMemoryBlock(memory=SAEMemory(encoder), k=2, user_id="alice")
    memory = Memory.from_defaults(session_id="s1", memory_blocks=[block])
    await memory.aput(ChatMessage(role="user", content="Which vet did I pick for Biscuit?"))
    await memory.aget()  # a turn's read: the question is stored, not only the messages before it
    assert len(block.memory) == 1
    await memory.aput(ChatMessage(role="assistant", content="You picked Dr. Lee at Elm Street Vets."))
    # The last reply reaches the block only through index(); stored messages are skipped.
    ids = await block.aindex(await memory.aget_all(), session_id=memory.session_id)
    assert len(ids) == 2 and len(block.memory) == 2
    assert block.index(memory.get_all(), session_id="s1") == ids and len(block.memory) == 2
    assert {m["role"] for m in block.memory.messages("alice")} == {"user", "assistant"}


def test_memory_block_reads_time_words_from_now_and_refuses_unknown_settings(encoder):
    import datetime as dt

    import pydantic
    import pytest

    from llama_index_saememory import SAEMemoryBlock
    from saememory import SAEMemory

    memory = SAEMemory(encoder)
    memory.add([{"content": "I ran a half marathon in Oslo.", "timestamp": "2025-03-08T12:00:00Z", "id": "march"},
                {"content": "I ran a half marathon in Bergen.", "timestamp": "2025-06-08T12:00:00Z", "id": "june"}])
    question = [ChatMessage(role="user", content="Which half marathon did I run in March?")]
    recalled = SAEMemoryBlock(memory=memory, k=1, now=dt.datetime(2025, 7, 1, tzinfo=dt.timezone.utc))._recall(question, "s")
    assert "Oslo" in recalled and "Bergen" not in recalled
    with pytest.raises(pydantic.ValidationError):
        SAEMemoryBlock(memory=memory, userid="alice")  # a misspelt setting, not the default user silently


def test_memory_block_refuses_bad_settings_and_an_id_stored_with_other_text(encoder):
    import pydantic
    import pytest

    from llama_index_saememory import SAEMemoryBlock
    from saememory import SAEMemory

    memory = SAEMemory(encoder)
    for bad in ({"k": 0}, {"k": -2}, {"k": True}, {"k": 2.0}, {"k": "0"}, {"user_id": ""}, {"now": "garbage"},
                {"min_score": float("nan")}, {"min_score": float("inf")}):
        with pytest.raises(pydantic.ValidationError):  # when the block is made, not at a chat's first turn
            SAEMemoryBlock(memory=memory, **bad)
    import numpy as np

    assert SAEMemoryBlock(memory=memory, k=np.int64(5)).k == 5 and SAEMemoryBlock(memory=memory, k="5").k == 5
    assert SAEMemoryBlock(memory=memory, priority=1.0).priority == 1  # LlamaIndex's own settings as LlamaIndex takes them
    block = SAEMemoryBlock(memory=memory, user_id="alice")
    for name, bad in (("k", 0), ("user_id", ""), ("min_score", float("nan"))):
        with pytest.raises(pydantic.ValidationError):  # nor when a setting is changed later
            setattr(block, name, bad)
    twice = [ChatMessage(role="user", content="My PIN is 1234.", additional_kwargs={"id": "x"}),
             ChatMessage(role="user", content="My sister moved to Oslo.", additional_kwargs={"id": "x"})]
    with pytest.raises(ValueError, match="'x'.*two messages with other text"):  # the second would be lost
        block.index(twice, session_id="c0")
    assert memory.messages("alice") == []
    said = ChatMessage(role="user", content="I live in Paris.", additional_kwargs={"id": "turn-1"})
    assert block.index([said], session_id="c1") == ["turn-1"]
    assert block.index([said], session_id="c1") == ["turn-1"]  # the same message again: skipped
    moved = ChatMessage(role="user", content="I moved to Berlin last week.", additional_kwargs={"id": "turn-1"})
    with pytest.raises(ValueError, match="turn-1.*already stored.*other text"):
        block.index([moved], session_id="c2")
    assert [m["content"] for m in memory.messages("alice")] == ["I live in Paris."]


def test_llama_index_roles_for_the_assistant_are_stored_as_assistant(encoder):
    from llama_index.core.base.llms.types import MessageRole

    from llama_index_saememory import SAEMemoryRetriever

    retriever = SAEMemoryRetriever.from_messages(
        [ChatMessage(role=MessageRole.USER, content="I adopted a beagle named Max."),
         ChatMessage(role=MessageRole.MODEL, content="Max is a great name for a beagle!"),
         ChatMessage(role=MessageRole.CHATBOT, content="Beagles love long walks.")], encoder=encoder)
    assert [m["role"] for m in retriever.memory.messages()] == ["user", "assistant", "assistant"]
    assert len(retriever.memory.search("beagle", roles="assistant")) == 2


def test_memory_block_names_a_bad_message_by_its_place_in_the_conversation(encoder):
    import pytest

    from llama_index_saememory import SAEMemoryBlock
    from saememory import SAEMemory

    block = SAEMemoryBlock(memory=SAEMemory(encoder), user_id="alice")
    chat = [ChatMessage(role="system", content="Be kind."), ChatMessage(role="user", content="I live in Oslo."),
            ChatMessage(role="assistant", content="Got it", additional_kwargs={"timestamp": "5 minutes ago"}),
            ChatMessage(role="tool", content="12 degrees")]
    with pytest.raises(ValueError, match="timestamp.*message 2 of the 4 the block was given \\(assistant: .Got it.\\); nothing"):
        block.index(chat, session_id="c1")
    assert block.memory.messages("alice") == []  # nothing of the batch stored
    assert block.index([chat[0], chat[1], chat[3]], session_id="c1") and [m["content"] for m in
                                                                         block.memory.messages("alice")] == ["I live in Oslo."]


def test_openai_style_tool_calls_and_developer_prompts_are_not_stored(encoder):
    from llama_index_saememory import SAEMemoryRetriever

    retriever = SAEMemoryRetriever.from_messages(
        [{"role": "developer", "content": "Answer in French."}, {"role": "user", "content": "What's the weather?", "id": "q"},
         {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "function": {"name": "weather"}}]},
         {"role": "tool", "content": "12 degrees"}, {"role": "assistant", "content": "It is 12 degrees.", "id": "a"}],
        encoder=encoder)
    assert [m["id"] for m in retriever.memory.messages()] == ["q", "a"]


def test_memory_block_does_not_inject_a_model_message_already_in_the_prompt(encoder):
    import asyncio

    from llama_index_saememory import SAEMemoryBlock
    from saememory import SAEMemory

    block = SAEMemoryBlock(memory=SAEMemory(encoder), user_id="alice", k=3)
    said = "Your beagle Biscuit needs his shots in May."
    block.index([ChatMessage(role="assistant", content=said)], session_id="old")
    chat = [ChatMessage(role="model", content=said), ChatMessage(role="user", content="When are Biscuit's shots?")]
    injected = asyncio.run(block._aget(chat, session_id="new"))
    assert said not in injected  # stored as "assistant", in the prompt as "model": the same message


async def test_memory_block_leaves_out_a_message_it_cannot_store_and_the_chat_goes_on(encoder):
    """A message the memory refuses must not fail every turn while it stays in the chat's window,
    nor keep the newer ones out: it is left out with one warning that names it."""
    import warnings

    import pytest
    from llama_index.core.memory import Memory

    from llama_index_saememory import SAEMemoryBlock
    from saememory import SAEMemory

    block = SAEMemoryBlock(memory=SAEMemory(encoder), k=2, user_id="alice")
    memory = Memory.from_defaults(session_id="s1", memory_blocks=[block])
    await memory.aput(ChatMessage(role="user", content="My sister Ana lives in Lisbon.",
                                  additional_kwargs={"timestamp": "5 minutes ago"}))  # no time it reads: refused
    with pytest.warns(UserWarning, match=r"'5 minutes ago'.*message 0 of .*leaves it out"):
        await memory.aget()
    await memory.aput(ChatMessage(role="assistant", content="Lisbon is lovely in spring."))
    await memory.aput(ChatMessage(role="user", content="I adopted a cat named Miso."))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, not at every turn
        await memory.aget()
    assert sorted(m["content"] for m in block.memory.messages("alice")) == [
        "I adopted a cat named Miso.", "Lisbon is lovely in spring."]
    await memory.aput(ChatMessage(role="user", content="Store me for bob.", additional_kwargs={"user_id": "bob"}))
    with pytest.warns(UserWarning, match="names user_id 'bob'"):
        await memory.aget()
    assert block.memory.messages("bob") == [] and len(block.memory.messages("alice")) == 2  # in nobody's memory
