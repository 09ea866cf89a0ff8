"""No user can touch another's memories, and bad input never stores or loses anything.

Regression tests, one or more per failure found by an attack on the public API, on both
backends (``make`` runs each test in-process and on a real milvus-lite engine).
"""

from __future__ import annotations

import datetime as dt

import pytest
from langchain_core.messages import HumanMessage
from llama_index.core.base.llms.types import ChatMessage

import langchain_saememory
import llama_index_saememory
from llama_index_saememory.memory_block import SAEMemoryBlock, message_id
from saememory import Message, SAEMemory
from tests.helpers import QUESTION

ALICE = [
    {"id": "m1", "content": "My sister Ana moved to Lisbon last spring.", "session_id": "s1", "role": "user",
     "timestamp": "2024-04-12", "metadata": {"mood": "happy"}},
    {"id": "m2", "content": "I am allergic to peanuts.", "session_id": "s2"},
]
BOB = [{"id": "m1", "content": "My brother Tom lives in Oslo.", "session_id": "s1"}]


@pytest.fixture
def two_users(make) -> SAEMemory:
    memory = make()
    memory.add(ALICE, user_id="alice")
    memory.add(BOB, user_id="bob")
    return memory


# 1 and 3: ids are per user; id-based calls act within one user -------------------------------


def test_two_users_may_hold_the_same_id(two_users):
    assert two_users.get("m1", user_id="alice")["content"] == ALICE[0]["content"]
    assert two_users.get("m1", user_id="bob")["content"] == BOB[0]["content"]
    assert len(two_users) == 3


def test_another_users_id_is_answered_like_a_missing_one(two_users):
    def error(call) -> str:
        with pytest.raises(KeyError) as raised:
            call()
        return str(raised.value)

    assert error(lambda: two_users.get("m2", user_id="bob")) == error(lambda: two_users.get("nope", user_id="bob")).replace("nope", "m2")
    with pytest.raises(KeyError):
        two_users.explain(QUESTION, "m2", user_id="bob")
    with pytest.raises(KeyError):
        two_users.delete("m2", user_id="bob")
    with pytest.raises(KeyError):
        two_users.update([{"id": "m2", "content": "hijacked"}], user_id="bob")
    assert not two_users.contains("m2", user_id="bob") and two_users.contains("m2", user_id="alice")
    assert two_users.get("m2", user_id="alice")["content"] == ALICE[1]["content"]  # untouched
    # "already stored" speaks only of the caller's own ids: bob may add an id alice uses.
    two_users.add([{"id": "m2", "content": "Bob's own note."}], user_id="bob")
    assert two_users.get("m2", user_id="alice")["content"] == ALICE[1]["content"]


def test_explain_returns_only_the_callers_message(two_users):
    hit = two_users.explain("Where does my sibling live?", "m1", user_id="bob")
    assert hit.user_id == "bob" and hit.content == BOB[0]["content"]
    assert two_users.explain("Where does my sibling live?", "m1", user_id="alice").content == ALICE[0]["content"]


def test_delete_acts_within_one_user(two_users):
    two_users.delete("m1", user_id="bob")
    assert two_users.get("m1", user_id="alice")["content"] == ALICE[0]["content"]
    assert [h.id for h in two_users.search("Oslo", user_id="bob")] == []


def test_update_changes_only_the_fields_given_and_never_the_owner(two_users):
    two_users.update([{"id": "m1", "content": "My sister Ana moved to Porto."}], user_id="alice")
    stored = two_users.get("m1", user_id="alice")
    assert stored["content"] == "My sister Ana moved to Porto."
    assert {k: stored[k] for k in ("session_id", "role", "timestamp", "user_id", "metadata")} == {
        "session_id": "s1", "role": "user", "timestamp": "2024-04-12", "user_id": "alice", "metadata": {"mood": "happy"}}
    assert two_users.get("m1", user_id="bob")["content"] == BOB[0]["content"]
    assert two_users.search("Porto", k=1, user_id="alice")[0].content.endswith("Porto.")
    two_users.update([{"id": "m1", "metadata": {"mood": "calm"}, "topic": "family"}], user_id="alice")
    assert two_users.get("m1", user_id="alice")["metadata"] == {"mood": "calm", "topic": "family"}
    assert two_users.get("m1", user_id="alice")["content"] == "My sister Ana moved to Porto."


def test_update_cannot_move_a_message_to_another_user(two_users):
    with pytest.raises(ValueError, match="user_id 'bob'.*'alice'"):
        two_users.update([{"id": "m2", "content": "mine now", "user_id": "bob"}], user_id="alice")
    with pytest.raises(KeyError):  # bob holds no m2: the message is looked up as bob's, not moved
        two_users.update([{"id": "m2", "content": "mine now", "user_id": "bob"}])
    assert two_users.get("m2", user_id="alice")["content"] == ALICE[1]["content"]
    assert len(two_users.messages("bob")) == 1


def test_update_with_a_message_object_keeps_what_it_does_not_give(two_users):
    two_users.update([Message(content="I am allergic to peanuts and shellfish.", id="m2", user_id="alice")])
    stored = two_users.get("m2", user_id="alice")
    assert stored["session_id"] == "s2" and stored["content"].endswith("shellfish.")


# 2 and 4: adapters and the memory block write only their own user's memory -------------------


def test_langchain_retriever_writes_only_its_users_memory(two_users):
    alice = langchain_saememory.SAEMemoryRetriever(memory=two_users, user_id="alice")
    with pytest.raises(ValueError, match="'bob'"):
        alice.add_messages([HumanMessage("I live in Oslo now.", additional_kwargs={"user_id": "bob"})])
    with pytest.raises(ValueError, match="'bob'"):
        alice.add_messages([{"content": "sneaky", "user_id": "bob"}])
    assert len(two_users.messages("bob")) == 1
    alice.add_messages([HumanMessage("I live in Madrid now.")])
    assert [m["content"] for m in two_users.messages("alice")][-1] == "I live in Madrid now."


def test_langchain_retriever_takes_the_user_per_call(two_users):
    retriever = langchain_saememory.SAEMemoryRetriever(memory=two_users)
    docs = retriever.invoke("Where does my brother live?", user_id="bob", k=1)
    assert docs[0].metadata["user_id"] == "bob"


def test_llama_index_retriever_writes_only_its_users_memory(two_users):
    alice = llama_index_saememory.SAEMemoryRetriever(two_users, user_id="alice")
    with pytest.raises(ValueError, match="'bob'"):
        alice.add_messages([ChatMessage(role="user", content="x", additional_kwargs={"user_id": "bob"})])
    assert len(two_users.messages("bob")) == 1


def test_from_messages_bound_to_a_user_refuses_another_users_message(encoder):
    with pytest.raises(ValueError, match="'bob'"):
        langchain_saememory.SAEMemoryRetriever.from_messages(
            [{"content": "hi", "user_id": "bob"}], user_id="alice", encoder=encoder)


def test_memory_block_stores_under_its_user_and_ids_include_the_user(make):
    memory = make()
    said = ChatMessage(role="user", content="My cat is called Miso.")
    assert message_id(said, "chat", "alice") != message_id(said, "chat", "bob")
    for user in ("alice", "bob"):  # the same words in a same-named session, by two users
        SAEMemoryBlock(memory=memory, user_id=user)._index([said], "chat")
    assert [m["content"] for m in memory.messages("alice")] == [m["content"] for m in memory.messages("bob")] == [said.content]
    block = SAEMemoryBlock(memory=memory, user_id="alice")
    with pytest.raises(ValueError, match="'bob'"):
        block.index([ChatMessage(role="user", content="x", additional_kwargs={"user_id": "bob"})], "chat")
    with pytest.warns(UserWarning, match="'bob'"):  # in a chat's turns: left out, in nobody's memory
        block._index([ChatMessage(role="user", content="x", additional_kwargs={"user_id": "bob"})], "chat")
    assert len(memory.messages("alice")) == len(memory.messages("bob")) == 1


# 7: whatever add() accepts, save() can write ----------------------------------------------------


@pytest.mark.parametrize("message,match", [
    ({"content": "x", "metadata": {"when": dt.datetime(2024, 1, 1)}}, "datetime"),
    ({"content": "x", "metadata": {"score": float("nan")}}, "JSON"),
    ({"content": "x", "metadata": {1: "int key"}}, "unchanged"),
    ({"content": "x", "metadata": {"pair": (1, 2)}}, "unchanged"),
    ({"content": "x", "metadata": ["not", "a", "dict"]}, "metadata must be a dict"),
    ({"content": "x", "id": "bad\udc80id"}, "surrogate"),
    ({"content": "text with a lone \ud800 surrogate"}, "surrogate"),
    ({"content": "x", "session_id": "\udfff"}, "surrogate"),
])
def test_add_refuses_what_save_cannot_write(make, tmp_path, message, match):
    memory = make()
    memory.add([{"content": "Kept.", "id": "kept"}])
    with pytest.raises((TypeError, ValueError), match=match) as raised:
        memory.add([message])
    assert "Message 0" in str(raised.value)  # names the message
    assert len(memory) == 1
    memory.save(tmp_path / "m")  # and saving still works


def test_update_refuses_what_save_cannot_write(two_users):
    with pytest.raises(ValueError, match="datetime"):
        two_users.update([{"id": "m1", "metadata": {"when": dt.date(2024, 1, 1)}}], user_id="alice")
    assert two_users.get("m1", user_id="alice")["metadata"] == {"mood": "happy"}


# 10: user ids: None is the default user; "" and non-strings are refused ---------------------


@pytest.mark.parametrize("user_id,error", [("", ValueError), (0, TypeError), (5, TypeError), (b"alice", TypeError),
                                           (["alice"], TypeError)])
def test_bad_user_ids_are_refused_everywhere(two_users, user_id, error):
    calls = [
        lambda: two_users.search(QUESTION, user_id=user_id),
        lambda: two_users.get("m1", user_id=user_id),
        lambda: two_users.delete("m1", user_id=user_id),
        lambda: two_users.update([{"id": "m1", "content": "x"}], user_id=user_id),
        lambda: two_users.explain(QUESTION, "m1", user_id=user_id),
        lambda: two_users.messages(user_id),
        lambda: two_users.add([{"content": "x"}], user_id=user_id),
        lambda: two_users.add([{"content": "x", "user_id": user_id}]),
    ]
    for call in calls:
        with pytest.raises(error, match="user_id"):
            call()
    assert len(two_users) == 3


def test_none_means_the_default_user(make):
    memory = make()
    memory.add([{"content": "Default user's note.", "id": "d", "user_id": None}])
    assert memory.get("d")["user_id"] == "default" == memory.get("d", user_id=None)["user_id"]
    assert memory.users() == ["default"] and "d" in memory


@pytest.mark.parametrize("field", ["id", "session_id", "role"])
def test_empty_strings_are_refused_not_replaced(make, field):
    memory = make()
    with pytest.raises(ValueError, match=f"{field} is an empty string"):
        memory.add([{"content": "x", field: ""}])
    assert len(memory) == 0


# 12: our errors, not the libraries' ------------------------------------------------------------


@pytest.mark.parametrize("kwargs,error,match", [
    ({"min_score": "1"}, ValueError, "min_score must be a finite number"),
    ({"min_score": float("nan")}, ValueError, "min_score"),
    ({"steer": {"music": float("nan")}}, ValueError, "steer"),
    ({"steer": {3: "strong"}}, ValueError, "steer"),
    ({"steer": {(1, 2): 1.0}}, TypeError, "steer key"),
    ({"steer": [3, 4]}, TypeError, "steer must be a dict"),
    ({"session_id": ""}, ValueError, "session_id"),
    ({"fusion": "best"}, ValueError, "fusion"),
])
def test_bad_search_arguments_get_our_errors(two_users, kwargs, error, match):
    with pytest.raises(error, match=match):
        two_users.search(QUESTION, user_id="alice", **kwargs)


@pytest.mark.parametrize("query", ["lone \ud800 surrogate", "\udcff"])
def test_a_query_that_is_not_valid_unicode_is_refused_clearly(two_users, query):
    with pytest.raises(ValueError, match="query.*not valid Unicode"):
        two_users.search(query, user_id="alice")


# A user's memories as a whole: delete, export, and what repr tells ----------------------------


def test_delete_user_removes_only_that_user(two_users):
    assert two_users.delete_user("alice") == 2
    assert two_users.users() == ["bob"] and two_users.get("m1", user_id="bob")["content"] == BOB[0]["content"]
    assert two_users.delete_user("nobody") == 0


def test_a_deleted_users_words_are_not_saved_again(encoder, tmp_path):
    memory = SAEMemory(encoder)
    memory.add(ALICE, user_id="alice")
    memory.add(BOB, user_id="bob")
    memory.delete_user("alice")
    memory.save(tmp_path / "m")
    saved = "".join(p.read_text(errors="replace") for p in (tmp_path / "m").rglob("*") if p.is_file()
                    and p.suffix in (".json", ".jsonl"))
    assert "peanut" not in saved and "lisbon" not in saved.lower() and "oslo" in saved.lower()
    assert [h.id for h in SAEMemory.load(tmp_path / "m", encoder=encoder).search("Oslo", user_id="bob")] == ["m1"]


def test_export_writes_one_users_messages_as_json_lines(two_users, tmp_path):
    import json

    assert two_users.export(tmp_path / "alice.jsonl", user_id="alice") == 2
    lines = [json.loads(line) for line in (tmp_path / "alice.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in lines] == ["m1", "m2"] and {r["user_id"] for r in lines} == {"alice"}
    assert lines[0]["metadata"] == {"mood": "happy"}


def test_repr_tells_size_users_encoder_and_backend_and_names_no_user(two_users):
    text = repr(two_users)
    assert "3 messages" in text and "2 users" in text and "minilm" in text.lower() and "Backend" in text
    assert "alice" not in text and "bob" not in text  # a repr ends up in logs; a user id can say who someone is


def test_delete_refuses_a_message_dict_instead_of_ids(two_users):
    before = two_users.messages("alice")
    with pytest.raises(TypeError, match="list of ids"):
        two_users.delete({before[0]["id"]: "x", "content": "y"}, user_id="alice")
    assert two_users.messages("alice") == before


# Found by an adversarial review ------------------------------------------------------------------


def test_metadata_too_deep_or_with_huge_integers_is_refused_when_added(make):
    memory = make()
    deep: dict = {}
    cursor = deep
    for _ in range(600):
        cursor["x"] = {}
        cursor = cursor["x"]
    for metadata, match in [(deep, "nested deeper"), ({"v": 2**70}, "64-bit"), ({"v": [-(2**63) - 1]}, "64-bit")]:
        with pytest.raises(ValueError, match=match):
            memory.add([{"content": "hello", "metadata": metadata}])
    memory.add([{"content": "hello", "id": "ok", "metadata": {"v": 2**63 - 1, "d": {"e": {"f": [1]}}}}])
    assert memory.get("ok")["metadata"]["v"] == 2**63 - 1 and memory.search("hello")[0].id == "ok"


def test_one_backend_serves_one_memory(encoder):
    from saememory.backends import FaissBackend

    backend = FaissBackend()
    SAEMemory(encoder, backend=backend)
    with pytest.raises(ValueError, match="already serves another SAEMemory"):
        SAEMemory(encoder, backend=backend)


def test_an_update_racing_a_delete_and_re_add_changes_nothing(make, monkeypatch):
    memory = make()
    memory.add([{"id": "m", "content": "old", "session_id": "old-session", "metadata": {"secret": "old"}}])
    real, raced = memory._encode_records, []

    def encode_while_another_call_replaces_the_message(records, show_progress):
        if not raced:  # once: the add below encodes through here too
            raced.append(True)
            memory.delete("m")
            memory.add([{"id": "m", "content": "new", "role": "assistant", "session_id": "new", "metadata": {"s": "new"}}])
        return real(records, show_progress)

    monkeypatch.setattr(memory, "_encode_records", encode_while_another_call_replaces_the_message)
    with pytest.raises(ValueError, match="changed while this update was encoding"):
        memory.update([{"id": "m", "content": "updated"}])
    assert memory.get("m")["metadata"] == {"s": "new"} and memory.get("m")["role"] == "assistant"


def test_a_closed_milvus_memory_says_so(encoder, tmp_path):
    from saememory import MilvusBackend

    memory = SAEMemory(encoder, backend=MilvusBackend(str(tmp_path / "x.db")))
    memory.add([{"content": "hello"}])
    memory.close()
    assert "closed" in repr(memory)
    with pytest.raises(ValueError, match="closed"):
        memory.search("hello")


def test_save_never_deletes_a_folder_it_did_not_make(two_users, tmp_path):
    (tmp_path / "snapshot-2024-holiday-photos").mkdir()
    (tmp_path / ".tmp-drafts").mkdir()
    (tmp_path / "snapshot-2024").mkdir()
    two_users.save(tmp_path)
    two_users.save(tmp_path)
    assert {"snapshot-2024-holiday-photos", ".tmp-drafts", "snapshot-2024"} <= {p.name for p in tmp_path.iterdir()}


def test_the_memory_block_stores_none_of_a_refused_batch_given_to_index(make):
    memory = make()
    block = SAEMemoryBlock(memory=memory, user_id="alice")
    batch = [ChatMessage(role="user", content="first"),
             ChatMessage(role="user", content="x", additional_kwargs={"user_id": "bob"})]
    with pytest.raises(ValueError, match="'bob'"):
        block.index(batch, "chat")
    assert len(memory) == 0
    with pytest.warns(UserWarning, match="'bob'"):  # a chat's turn stores the others
        block._index(batch, "chat")
    assert [m["content"] for m in memory.messages("alice")] == ["first"] and memory.messages("bob") == []


def test_deleting_bytes_is_refused_clearly(two_users):
    with pytest.raises(TypeError, match="bytes"):
        two_users.delete(b"m1", user_id="alice")


def test_a_retriever_that_can_see_nothing_says_why_without_naming_users(two_users):
    lc = langchain_saememory.SAEMemoryRetriever(memory=two_users)  # the default user: no messages
    with pytest.warns(UserWarning, match="2 other user") as caught:
        assert lc.invoke("Where does my sister live?") == []
    assert "alice" not in str(caught[0].message) and "bob" not in str(caught[0].message)
    li = llama_index_saememory.SAEMemoryRetriever(two_users)
    with pytest.warns(UserWarning, match="user_id="):
        assert li.retrieve("Where does my sister live?") == []
    assert two_users.unseen("alice") is None and two_users.unseen("new-user") is None
    assert SAEMemory(two_users.encoder).unseen() is None


def test_explain_ranks_and_scores_as_search_does(make):
    memory = make()
    memory.add([{"content": t, "session_id": f"s{i % 3}"} for i, t in enumerate(
        ["My sister lives in Lisbon.", "I like tea.", "My brother moved to Oslo.", "Where is my sister now?",
         "The weather is nice.", "My sister Ana is a doctor."])])
    query = "Where does my sister live?"
    for hit in memory.search(query, k=10):
        explained = memory.explain(query, hit.id)
        assert (explained.rank, round(explained.score, 6)) == (hit.rank, round(hit.score, 6))


@pytest.mark.parametrize("index", ["Flat", "HNSW32", "IVF1,Flat"])
@pytest.mark.parametrize("step", ["lexical", "faiss", "records"])
def test_an_interrupted_add_leaves_no_row_behind(encoder, monkeypatch, tmp_path, index, step):
    """A Ctrl-C part-way through storing alice's message must not leave vectors that bob's next
    message would then be scored and explained with."""
    from saememory.backends import FaissBackend
    from saememory.backends import faiss as faiss_backend
    from saememory.lexical import LexicalIndex

    memory = SAEMemory(encoder, backend=FaissBackend(index))
    memory.add([{"content": f"Bob's note number {i} about the weather.", "user_id": "bob", "id": f"b{i}"}
                for i in range(3)])
    secret = "My bank PIN is 4821 and my password is hunter2."

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    if step == "lexical":
        monkeypatch.setattr(LexicalIndex, "add", interrupt)
    elif step == "faiss":
        if index == "Flat":
            pytest.skip("an exact index keeps no FAISS index")
        monkeypatch.setattr(faiss_backend.FaissBackend, "_min_train", 0, raising=False)
        memory.backend._min_train = 0  # train (IVF) or add (HNSW) during alice's add, then interrupt after it
        real = memory.backend._faiss.add_with_ids

        def add_then_interrupt(vectors, ids):
            real(vectors, ids)
            raise KeyboardInterrupt

        monkeypatch.setattr(memory.backend._faiss, "add_with_ids", add_then_interrupt)
    else:
        memory.backend._records = _InterruptingList(memory.backend._records)
    with pytest.raises(KeyboardInterrupt):
        memory.add([{"content": secret, "user_id": "alice", "id": "a1"}])
    monkeypatch.undo()
    assert memory.messages("alice") == [] and len(memory) == 3
    memory.add([{"content": "I like tomatoes.", "user_id": "bob", "id": "b9"}])
    stored = memory.backend.vectors("bob", ["b9"])["b9"]
    assert float(stored @ encoder.encode_documents(["I like tomatoes."]).dense[0]) > 0.99
    hit = memory.search("tomatoes", k=1, user_id="bob")[0]
    assert hit.id == "b9" and hit.bm25_score > 0
    memory.save(tmp_path / "m")
    again = SAEMemory.load(tmp_path / "m", encoder)
    assert again.messages("alice") == [] and [m["id"] for m in again.messages("bob")] == ["b0", "b1", "b2", "b9"]
    assert all(b"hunter2" not in f.read_bytes() for f in (tmp_path / "m").rglob("*") if f.is_file())


class _InterruptingList(list):
    """A record list whose first append is interrupted, as a Ctrl-C between two statements would be."""

    interrupted = False

    def append(self, item):
        if not self.interrupted:
            self.interrupted = True
            raise KeyboardInterrupt
        super().append(item)


def test_an_interrupted_update_keeps_the_old_version(encoder, tmp_path):
    memory = SAEMemory(encoder)
    memory.add([{"content": "I live in Lisbon.", "id": "city", "user_id": "alice"}])
    memory.backend._records = _InterruptingList(memory.backend._records)
    with pytest.raises(KeyboardInterrupt):
        memory.update([{"id": "city", "content": "I live in Porto."}], user_id="alice")
    assert memory.get("city", user_id="alice")["content"] == "I live in Lisbon." and len(memory) == 1
    assert [h.id for h in memory.search("Where do I live?", user_id="alice")] == ["city"]
    memory.save(tmp_path / "m")
    assert [m["content"] for m in SAEMemory.load(tmp_path / "m", encoder).messages("alice")] == ["I live in Lisbon."]


@pytest.mark.parametrize("message", [
    {"content": "x", "metadata": {"score": 1}},
    {"content": "x", "rank": 1},  # an extra key travels as metadata
    {"content": "x", "metadata": {"time": "noon", "mood": "ok"}},
])
def test_metadata_named_like_a_result_field_is_refused_and_nothing_is_lost(make, message):
    """A hit's fields would hide such a key in a document's or node's metadata: refused, with the fix."""
    memory = make()
    memory.add([{"id": "kept", "content": "I keep this.", "metadata": {"mood": "ok"}}])
    with pytest.raises(ValueError, match=r"names every search result already has .* rename them, e\.g\. 'my_"):
        memory.add([message])
    with pytest.raises(ValueError, match="rename them"):
        memory.update([{**message, "id": "kept"}])
    assert [m["metadata"] for m in memory.messages()] == [{"mood": "ok"}]


def test_result_fields_name_every_field_a_hit_carries():
    from dataclasses import fields

    from saememory.interpret.explain import Hit
    from saememory.messages import RESULT_FIELDS

    assert RESULT_FIELDS == {f.name for f in fields(Hit)} - {"content", "metadata"}
