"""A stateful property test: several users drive one memory through its whole public API.

Hypothesis runs random sequences of add, update, delete, delete_user, search, explain, get,
contains, save and load for three users (the default user, reached as None or "default", and
users named ``o"hara`` and ``back\\slash 'ü'``) that deliberately share message ids (``m0`` to
``m4``), plus invalid calls (an id the user already holds, an id the user does not hold, a
message naming another user, bad user ids). A plain dict, ``(owner, id) -> record`` in insertion
order, models the memory. After every step an invariant checks that the memory equals the model
(``messages()`` per user and per session, ``users()``, ``len()``); every call checks that it
returned, changed and revealed nothing of another user's, and that failed calls raised (the
invariant then proves they changed nothing). It runs on both backends: in-process (FAISS + CSR)
and a real milvus-lite engine (one collection per test, emptied before every example).

The CI budget is small: 16 examples in-process and 8 on Milvus of at most 20 steps, 15-80 s for
both on 2 cores depending on what else runs (a failure adds up to Hypothesis' 5 minutes of
shrinking per backend). A longer run, in-process only (5-10 minutes on 2 cores, about 30,000
steps), with the number of examples, steps and calls by kind and outcome printed at the end:

    HF_HUB_OFFLINE=1 SAEMEMORY_STATEFUL_EXAMPLES=800 SAEMEMORY_STATEFUL_STEPS=50 \\
        python -m pytest -q -s tests/test_stateful.py -k in-process

``SAEMEMORY_STATEFUL_EXAMPLES`` sets the examples per backend, ``SAEMEMORY_STATEFUL_STEPS`` the
most steps per example (and ``-k milvus`` runs the Milvus half).

Two bugs it found are fixed and stay checked: ``update()`` moved a message to the end of
``messages()``, and the in-process backend stored the caller's metadata objects and handed out
its own (mutating them changed the memory, and could make the next save fail).

Randomised, not derandomised: with ``deadline=None`` nothing here depends on time, so a run is
not flaky; every CI run tries new sequences. ``database=None``: no example database is kept
(``.hypothesis/`` holds only Hypothesis' constants cache, which git-ignores itself); a failure
prints the shrunk steps, the seed and a ``@reproduce_failure`` blob (``print_blob=True``) to replay it.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
import shutil
import uuid
from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test

from saememory import Message, SAEMemory
from saememory.times import instant, iso

# What a run costs: examples per backend (Milvus' round trips make its steps ~3x dearer).
DEFAULT_EXAMPLES = {"in-process": 16, "milvus": 8}
EXAMPLES = int(os.environ.get("SAEMEMORY_STATEFUL_EXAMPLES") or 0)
STEPS = int(os.environ.get("SAEMEMORY_STATEFUL_STEPS") or 20)

USER_ARGS = (None, "default", 'o"hara', "back\\slash 'ü'")  # None and "default" are the same user
OWNERS = ("default", 'o"hara', "back\\slash 'ü'")
IDS = ("m0", "m1", "m2", "m3", "m4")
MISSING = "m9"  # never stored: the reference for "answered exactly like a missing id"
TEXTS = (
    "My sister Ana lives in Lisbon.",
    "I am allergic to peanuts.",
    "Our meeting moved to Friday.",
    "I started learning the guitar.",
    "The printer only prints in black.",
    "Water the tomato plants on Thursday.",
)
QUERIES = ("Where does my sister live?", "What food should I avoid?", "guitar lessons")
SESSIONS = ("s1", "s2")
RECORD_KEYS = ("id", "content", "role", "session_id", "timestamp", "time", "user_id", "metadata", "truncated")

user_args = st.sampled_from(USER_ARGS)
texts = st.sampled_from(TEXTS)
roles = st.sampled_from([None, "user", "assistant"])
sessions = st.sampled_from([None, *SESSIONS])
timestamps = st.sampled_from([None, "2024-01-02", "2024-05-06T10:00:00Z"])
metadatas = st.sampled_from([None, {}, {"mood": "happy"}, {"n": 1, "ok": True, "none": None, "tags": ["a", "b"]},
                             {"nested": {"k": "v"}, "tags": []}])
extras = st.sampled_from([{}, {"topic": "family"}, {"topic": "food", "lang": "pt"}])


def _time(timestamp) -> str | None:
    """The UTC instant the memory stores for a timestamp; None: the time of adding, known only after."""
    return None if timestamp is None else iso(instant(timestamp))


def owner(user_arg: str | None) -> str:
    return "default" if user_arg is None else user_arg


def record_of_hit(hit) -> dict:
    return {key: getattr(hit, key) for key in RECORD_KEYS}


def mutate(metadata: dict) -> None:
    """Changes a metadata dict in place, top level and nested values, as a careless caller might."""
    for value in list(metadata.values()):
        if isinstance(value, dict):
            value["mutated"] = True
        elif isinstance(value, list):
            value.append("mutated")
    metadata["mutated"] = True


def machine_for(backend: str, encoder, folder, milvus_db: str | None, stats: Counter):
    """The state machine class, closed over the test's fixtures."""
    collection = f"stateful_{uuid.uuid4().hex[:12]}"  # one per test; emptied before every example

    def fresh_memory() -> SAEMemory:
        if backend == "in-process":
            return SAEMemory(encoder)
        from pymilvus import MilvusClient

        from saememory.backends.milvus import LITE_CONNECTION, MilvusBackend

        client = MilvusClient(milvus_db, **LITE_CONNECTION)  # no keepalive pings, which the engine refuses
        try:
            if client.has_collection(collection):
                client.delete(collection, filter='id != ""')
        finally:
            client.close()
        return SAEMemory(encoder, backend=MilvusBackend(milvus_db, collection, index="FLAT"))

    class MemoryMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            stats["examples"] += 1
            self.memory = fresh_memory()
            assert len(self.memory) == 0 and self.memory.users() == []
            self.model: dict[tuple[str, str], dict] = {}  # (owner, id) -> record, in insertion order
            self.saved: dict[tuple[str, str], dict] | None = None  # the model at the last save
            self.folder = folder / uuid.uuid4().hex[:12]

        def teardown(self) -> None:
            self.memory.close()
            shutil.rmtree(self.folder, ignore_errors=True)

        # Helpers --------------------------------------------------------------------------

        def count(self, kind: str, outcome: str = "ok") -> None:
            stats["steps"] += 1
            stats[f"{kind}:{outcome}"] += 1

        def ids(self, data, user: str) -> str:
            """An id the user holds (half the time, if any), else from the pool and all stored ids (auto ids too)."""
            held = sorted(i for u, i in self.model if u == user)
            everything = st.sampled_from(sorted(set(IDS) | {i for _, i in self.model}))
            return data.draw(st.sampled_from(held) | everything if held else everything, label="id")

        def user_records(self, user: str, session: str | None = None) -> list[dict]:
            return [r for (u, _), r in self.model.items() if u == user and session in (None, r["session_id"])]

        def held_by_another(self, user: str, message_id: str) -> bool:
            return any(u != user and i == message_id for u, i in self.model)

        def same_as_missing(self, err: BaseException, message_id: str, call) -> None:
            """The error for an id the user does not hold equals the one for an id nobody holds."""
            with pytest.raises(KeyError) as missing:
                call(MISSING)
            assert err.args[0] == missing.value.args[0].replace(repr(MISSING), repr(message_id))

        def draw_message(self, data, message_id: str | None, user_field=..., as_object: bool = False,
                         for_update: bool = False):
            """A message to add (all fields drawn) or an update (a drawn subset of the fields)."""
            fields = {"id": message_id}
            if for_update:
                chosen = data.draw(st.sets(st.sampled_from(["content", "role", "session_id", "timestamp", "metadata",
                                                            "extra"])), label="fields")
            else:
                chosen = {"content", "role", "session_id", "timestamp", "metadata", "extra"}
            draws = {"content": texts, "role": roles, "session_id": sessions, "timestamp": timestamps,
                     "metadata": metadatas}
            for name in chosen - {"extra"}:
                fields[name] = copy.deepcopy(data.draw(draws[name], label=name))
            if user_field is not ...:
                fields["user_id"] = user_field
            if as_object:
                return Message(**{"content": None, **fields})
            if "extra" in chosen:
                fields.update(copy.deepcopy(data.draw(extras, label="extra keys")))
            return fields

        def expected_record(self, message, user: str, message_id: str) -> dict:
            given = vars(message) if isinstance(message, Message) else message
            extra = {k: v for k, v in given.items() if k not in RECORD_KEYS}  # extra keys go into metadata
            return {
                "id": message_id, "content": given["content"], "role": given.get("role") or "user",
                "session_id": given.get("session_id") or "default", "timestamp": given.get("timestamp"),
                "time": _time(given.get("timestamp")), "user_id": user, "metadata": copy.deepcopy({**(given.get("metadata") or {}), **extra}),
                "truncated": False,
            }

        def merged(self, record: dict, change) -> dict:
            given = vars(change) if isinstance(change, Message) else change
            given = {k: v for k, v in given.items() if v is not None}
            new = dict(record)
            for key in ("content", "role", "session_id", "timestamp"):
                if key in given:
                    new[key] = given[key]
            if "timestamp" in given:
                new["time"] = _time(given["timestamp"])
            metadata = copy.deepcopy(given["metadata"]) if "metadata" in given else copy.deepcopy(record["metadata"])
            metadata.update(copy.deepcopy({k: v for k, v in given.items() if k not in RECORD_KEYS}))
            new["metadata"] = metadata
            return new

        def do_add(self, messages: list, owners: list[str], user_id=None, **kwargs) -> None:
            """Adds; the model says whether it must succeed (new ids for their users) or raise ValueError."""
            given_ids = [(o, m.id if isinstance(m, Message) else m.get("id")) for m, o in zip(messages, owners)]
            named = [key for key in given_ids if key[1] is not None]
            refused = len(set(named)) < len(named) or any(key in self.model for key in named)
            if refused:
                with pytest.raises(ValueError):
                    self.memory.add(messages, user_id=user_id, **kwargs)
                self.count("add", "refused")
                return
            started = iso(dt.datetime.now(dt.timezone.utc))
            returned = self.memory.add(messages, user_id=user_id, **kwargs)
            assert len(returned) == len(messages)
            for (user, given), got, message in zip(given_ids, returned, messages):
                assert got == given if given is not None else (isinstance(got, str) and (user, got) not in self.model)
                self.model[(user, got)] = self.expected_record(message, user, got)
                if self.model[(user, got)]["time"] is None:  # no timestamp: the time of adding, read back once
                    added = self.memory.get(got, user_id=user)["time"]
                    assert started <= added <= iso(dt.datetime.now(dt.timezone.utc))
                    self.model[(user, got)]["time"] = added
            self.count("add")
            for message in messages:  # what the caller does with its objects afterwards is its own business
                metadata = message.metadata if isinstance(message, Message) else message.get("metadata")
                if metadata is not None:
                    mutate(metadata)

        # Setup and writes -----------------------------------------------------------------

        @initialize(data=st.data())
        def seed(self, data) -> None:
            """Every user starts with a few messages from the shared id pool."""
            for user in OWNERS:
                ids = data.draw(st.lists(st.sampled_from(IDS), min_size=1, max_size=2, unique=True), label=f"{user} ids")
                self.do_add([self.draw_message(data, i) for i in ids], [user] * len(ids), user_id=user)

        # Every rule takes one argument, data, and draws the rest: Hypothesis sorts rules by their
        # number of arguments and picks the first ones more often, which starved the rules with many.

        @rule(data=st.data())
        def add(self, data) -> None:
            """Adds a batch: for one user (named by keyword, in the messages, or both), or mixed users."""
            user_arg = data.draw(user_args, label="user_id")
            style = data.draw(st.sampled_from(["kwarg", "field", "both", "object", "mixed"]), label="style")
            n = data.draw(st.integers(1, 3), label="n")
            ids = [data.draw(st.sampled_from([*IDS, None]), label="id") for _ in range(n)]  # None: a new UUID
            if style == "mixed":  # no user_id=: each message names its own user
                args = [data.draw(user_args, label="user") for _ in ids]
                messages = [self.draw_message(data, i, user_field=a) for i, a in zip(ids, args)]
                self.do_add(messages, [owner(a) for a in args])
            elif style == "field":
                messages = [self.draw_message(data, i, user_field=user_arg) for i in ids]
                self.do_add(messages, [owner(user_arg)] * n)
            else:
                field = owner(user_arg) if style == "both" else ...
                messages = [self.draw_message(data, i, user_field=field, as_object=style == "object") for i in ids]
                self.do_add(messages, [owner(user_arg)] * n, user_id=user_arg)

        @precondition(lambda self: self.model)
        @rule(data=st.data())
        def add_an_id_already_held(self, data) -> None:
            """A batch of new messages with one id the user already holds: refused as a whole."""
            user, held = data.draw(st.sampled_from(sorted(self.model)), label="held")
            free = [i for i in IDS if (user, i) not in self.model]
            messages = [self.draw_message(data, i) for i in free[:data.draw(st.integers(0, 2), label="new")]]
            messages.insert(data.draw(st.integers(0, len(messages)), label="at"), self.draw_message(data, held))
            user_arg = data.draw(st.sampled_from([user, None]) if user == "default" else st.just(user), label="user_id")
            with pytest.raises(ValueError, match="already stored"):
                self.memory.add(messages, user_id=user_arg)
            self.count("add_duplicate", "refused")

        @rule(data=st.data())
        def add_naming_another_user(self, data) -> None:
            """A batch for one user with a message naming another: refused as a whole."""
            user = data.draw(st.sampled_from(OWNERS), label="user_id")
            other = data.draw(st.sampled_from([u for u in OWNERS if u != user]), label="other")
            free = [i for i in IDS if (user, i) not in self.model]
            messages = [self.draw_message(data, i) for i in free[:data.draw(st.integers(0, 2), label="new")]]
            messages.insert(data.draw(st.integers(0, len(messages)), label="at"),
                            self.draw_message(data, data.draw(st.sampled_from([*IDS, None]), label="id"), user_field=other))
            with pytest.raises(ValueError, match="names user_id"):
                self.memory.add(messages, user_id=user)
            self.count("add_other_user", "refused")

        @rule(data=st.data())
        def update(self, data) -> None:
            """Changes a drawn subset of fields of one user's messages; a missing id or one repeated fails it all."""
            user_arg = data.draw(user_args, label="user_id")
            style = data.draw(st.sampled_from(["kwarg", "field", "object"]), label="style")
            n = data.draw(st.integers(1, 2), label="n")
            user = owner(user_arg)
            ids = [self.ids(data, user) for _ in range(n)]
            field = user_arg if style == "field" else ...
            changes = [self.draw_message(data, i, user_field=field, as_object=style == "object", for_update=True) for i in ids]
            kwargs = {} if style == "field" else {"user_id": user_arg}
            faults = set()
            if len(set(ids)) < len(ids):
                faults.add(ValueError)
            missing = [i for i in ids if (user, i) not in self.model]
            if missing:
                faults.add(KeyError)
            if faults:
                with pytest.raises(tuple(faults)) as raised:
                    self.memory.update(changes, **kwargs)
                if faults == {KeyError} and len(ids) == 1:
                    self.same_as_missing(raised.value, ids[0],
                                         lambda i: self.memory.update([{"id": i, "content": "x"}], user_id=user))
                self.count("update", "another user's id" if missing and self.held_by_another(user, missing[0])
                           else "refused")
                return
            assert self.memory.update(changes, **kwargs) == ids
            for i, change in zip(ids, changes):
                self.model[(user, i)] = self.merged(self.model[(user, i)], change)  # keeps its place
            self.count("update")
            for change in changes:
                metadata = change.metadata if isinstance(change, Message) else change.get("metadata")
                if metadata:
                    mutate(metadata)

        @rule(data=st.data())
        def update_naming_another_user(self, data) -> None:
            """An update for one user of a message naming another: refused, whoever holds the id."""
            user = data.draw(st.sampled_from(OWNERS), label="user_id")
            other = data.draw(st.sampled_from([u for u in OWNERS if u != user]), label="other")
            change = self.draw_message(data, self.ids(data, user), user_field=other, for_update=True)
            with pytest.raises(ValueError, match="names user_id"):
                self.memory.update([change], user_id=user)
            self.count("update_other_user", "refused")

        @rule(data=st.data())
        def delete(self, data) -> None:
            """Deletes by id within one user; any id the user does not hold fails it all."""
            user_arg = data.draw(user_args, label="user_id")
            as_str = data.draw(st.booleans(), label="one id as a str")
            n = 1 if as_str else data.draw(st.integers(1, 2), label="n")
            user = owner(user_arg)
            ids = [self.ids(data, user) for _ in range(1 if as_str else n)]
            missing = [i for i in ids if (user, i) not in self.model]
            if missing:
                with pytest.raises(KeyError) as raised:
                    self.memory.delete(ids[0] if as_str else ids, user_id=user_arg)
                if len(set(ids)) == 1:
                    self.same_as_missing(raised.value, ids[0], lambda i: self.memory.delete(i, user_id=user_arg))
                self.count("delete", "another user's id" if self.held_by_another(user, missing[0]) else "refused")
                return
            self.memory.delete(ids[0] if as_str else ids, user_id=user_arg)
            for i in set(ids):
                del self.model[(user, i)]
            self.count("delete")

        @rule(data=st.data())
        def delete_user(self, data) -> None:
            user_arg = data.draw(st.sampled_from([*USER_ARGS, "nobody"]), label="user_id")
            user = owner(user_arg)
            held = [key for key in self.model if key[0] == user]
            assert self.memory.delete_user(user_arg) == len(held)
            for key in held:
                del self.model[key]
            self.count("delete_user")

        # Reads ----------------------------------------------------------------------------

        @rule(data=st.data())
        def search(self, data) -> None:
            """Hits are the user's own messages, as stored, as many as asked for or the user has."""
            user_arg = data.draw(st.sampled_from([*USER_ARGS, "nobody"]), label="user_id")
            query = data.draw(st.sampled_from(QUERIES), label="query")
            k = data.draw(st.integers(1, 6), label="k")
            session = data.draw(st.sampled_from([None, *SESSIONS]), label="session_id")
            # Steering changes the order, never whose messages come back or how many.
            steer = data.draw(st.sampled_from([None, {"music": 1.0}, {"my sister": 2.0, "Lisbon": 0.0}]), label="steer")
            user = owner(user_arg)
            hits = self.memory.search(query, k=k, user_id=user_arg, session_id=session, steer=steer)
            assert len(hits) == min(k, len(self.user_records(user, session)))
            assert len({h.id for h in hits}) == len(hits)
            for rank, hit in enumerate(hits, start=1):
                assert hit.user_id == user and hit.rank == rank
                assert record_of_hit(hit) == self.model[(user, hit.id)]
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
            self.count("search")

        @rule(data=st.data())
        def explain(self, data) -> None:
            user_arg = data.draw(user_args, label="user_id")
            query = data.draw(st.sampled_from(QUERIES), label="query")
            user = owner(user_arg)
            message_id = self.ids(data, user)
            if (user, message_id) not in self.model:
                with pytest.raises(KeyError) as raised:
                    self.memory.explain(query, message_id, user_id=user_arg)
                self.same_as_missing(raised.value, message_id, lambda i: self.memory.explain(query, i, user_id=user_arg))
                self.count("explain", "another user's id" if self.held_by_another(user, message_id) else "missing")
                return
            hit = self.memory.explain(query, message_id, user_id=user_arg)
            assert record_of_hit(hit) == self.model[(user, message_id)]
            assert 1 <= hit.rank <= len(self.user_records(user))
            self.count("explain")

        @rule(data=st.data())
        def get(self, data) -> None:
            user_arg = data.draw(user_args, label="user_id")
            user = owner(user_arg)
            message_id = self.ids(data, user)
            if (user, message_id) not in self.model:
                with pytest.raises(KeyError) as raised:
                    self.memory.get(message_id, user_id=user_arg)
                self.same_as_missing(raised.value, message_id, lambda i: self.memory.get(i, user_id=user_arg))
                self.count("get", "another user's id" if self.held_by_another(user, message_id) else "missing")
                return
            assert self.memory.get(message_id, user_id=user_arg) == self.model[(user, message_id)]
            self.count("get")

        @rule(data=st.data())
        def contains(self, data) -> None:
            user_arg = data.draw(user_args, label="user_id")
            user = owner(user_arg)
            message_id = self.ids(data, user)
            assert self.memory.contains(message_id, user_id=user_arg) == ((user, message_id) in self.model)
            assert (message_id in self.memory) == (("default", message_id) in self.model)
            self.count("contains", "held" if (user, message_id) in self.model else "not held")

        @rule(data=st.data())
        def bad_user_id(self, data) -> None:
            """"" and non-strings are refused by every call (None is the default user)."""
            bad = data.draw(st.sampled_from(["", 0, b"default", ["default"]]), label="bad user_id")
            call = data.draw(st.sampled_from(["add", "add field", "update", "delete", "delete_user", "get", "contains",
                                              "explain", "search", "messages"]), label="call")
            memory = self.memory
            calls = {
                "add": lambda: memory.add([{"content": TEXTS[0], "id": "m0"}], user_id=bad),
                "add field": lambda: memory.add([{"content": TEXTS[0], "id": "m0", "user_id": bad}]),
                "update": lambda: memory.update([{"id": "m0", "content": TEXTS[1]}], user_id=bad),
                "delete": lambda: memory.delete("m0", user_id=bad),
                "delete_user": lambda: memory.delete_user(bad),
                "get": lambda: memory.get("m0", user_id=bad),
                "contains": lambda: memory.contains("m0", user_id=bad),
                "explain": lambda: memory.explain(QUERIES[0], "m0", user_id=bad),
                "search": lambda: memory.search(QUERIES[0], user_id=bad),
                "messages": lambda: memory.messages(bad),
            }
            with pytest.raises(ValueError if bad == "" else TypeError, match="user_id"):
                calls[call]()
            self.count("bad_user_id", "refused")

        @precondition(lambda self: self.model)
        @rule(data=st.data())
        def mutate_what_was_returned(self, data) -> None:
            """A caller changing a returned record's metadata must not change the memory."""
            via = data.draw(st.sampled_from(["get", "messages", "search"]), label="via")
            user, message_id = data.draw(st.sampled_from(sorted(self.model)), label="message")
            if via == "get":
                metadata = self.memory.get(message_id, user_id=user)["metadata"]
            elif via == "messages":
                metadata = self.memory.messages(user)[0]["metadata"]
            else:
                metadata = self.memory.search(QUERIES[0], k=1, user_id=user)[0].metadata
            mutate(metadata)
            self.count("mutate_returned", via)

        # Persistence ----------------------------------------------------------------------

        @rule(data=st.data())
        def persist(self, data) -> None:
            """Saves, loads the last save, or both. In-process a load brings back the memory as saved (later
            changes are gone); on Milvus it reconnects to the same collection, the live data."""
            action = data.draw(st.sampled_from(["save", "load", "save and load"] if self.saved is not None else ["save"]),
                               label="action")
            if "save" in action:
                self.memory.save(self.folder)
                self.saved = copy.deepcopy(self.model)
                self.count("save")
            if "load" not in action:
                return
            loaded = SAEMemory.load(self.folder, encoder=encoder)
            assert loaded.config == self.memory.config
            self.memory.close()
            self.memory = loaded
            if backend == "in-process":
                self.model = copy.deepcopy(self.saved)
            self.count("load")

        # After every step -----------------------------------------------------------------

        @invariant()
        def memory_equals_model(self) -> None:
            memory = self.memory
            for user in OWNERS:
                expected = self.user_records(user)
                args = [None, user] if user == "default" else [user]
                for arg in args:
                    assert memory.messages(arg) == expected, (arg, memory.messages(arg), expected)
                for session in SESSIONS:
                    assert memory.messages(user, session_id=session) == self.user_records(user, session)
            assert memory.messages("nobody") == []
            assert memory.users() == sorted({u for u, _ in self.model})
            assert len(memory) == len(self.model)

    return MemoryMachine


@pytest.mark.parametrize("backend", ["in-process", "milvus"])
def test_memory_matches_its_model(backend, encoder, tmp_path, request):
    milvus_db = request.getfixturevalue("milvus_db") if backend == "milvus" else None
    stats: Counter = Counter()
    machine = machine_for(backend, encoder, tmp_path, milvus_db, stats)
    try:
        run_state_machine_as_test(machine, settings=settings(
            max_examples=EXAMPLES or DEFAULT_EXAMPLES[backend], stateful_step_count=STEPS, deadline=None,
            database=None, print_blob=True))
    finally:
        steps = stats.pop("steps", 0)
        examples = stats.pop("examples", 0)
        print(f"\n[{backend}] {examples} examples, {steps} steps (after the seed):")
        for kind, n in sorted(stats.items()):
            print(f"  {kind:40s} {n}")
