"""saememory.times and the time filters: timestamps parsed when added, searched by window and role."""

from __future__ import annotations

import datetime as dt

import pytest
from langchain_core.messages import HumanMessage

import langchain_saememory
import llama_index_saememory
from saememory import Message, SAEMemory
from saememory.times import instant, iso, stored_time

UTC = dt.timezone.utc


@pytest.mark.parametrize("value,expected", [
    ("2024-04-12", dt.datetime(2024, 4, 12, tzinfo=UTC)),
    ("2024-04-12T09:30:00", dt.datetime(2024, 4, 12, 9, 30, tzinfo=UTC)),  # no zone: UTC
    ("2024-04-12T09:30:00+02:00", dt.datetime(2024, 4, 12, 7, 30, tzinfo=UTC)),
    ("2024-04-12T09:30:00Z", dt.datetime(2024, 4, 12, 9, 30, tzinfo=UTC)),
    ("2023/05/20 (Sat) 02:21", dt.datetime(2023, 5, 20, 2, 21, tzinfo=UTC)),  # LongMemEval
    (dt.datetime(2024, 1, 2, 3, 4, tzinfo=dt.timezone(dt.timedelta(hours=-5))), dt.datetime(2024, 1, 2, 8, 4, tzinfo=UTC)),
    (dt.date(2024, 1, 2), dt.datetime(2024, 1, 2, tzinfo=UTC)),
    (1_700_000_000, dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
    (1_700_000_000.5, dt.datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=UTC)),
])
def test_accepted_forms_become_utc_instants(value, expected):
    assert instant(value) == expected


@pytest.mark.parametrize("value", ["yesterday", "", "2024-13-01", b"2024-01-01", {"y": 2024}, float("nan"), True, 1e20])
def test_other_values_are_refused_naming_the_forms(value):
    with pytest.raises(ValueError, match="timestamp"):
        instant(value)


def test_the_stored_form_sorts_as_time_does():
    times = [iso(instant(v)) for v in ("2023/05/20 (Sat) 02:21", "2023-05-20T02:22:00", "2024-01-01", 1_800_000_000)]
    assert times == sorted(times) and len({len(t) for t in times}) == 1


def test_a_message_without_a_timestamp_gets_the_time_of_adding():
    before = iso(dt.datetime.now(UTC))
    display, time = stored_time(None)
    assert display is None and before <= time <= iso(dt.datetime.now(UTC))


HISTORY = [
    {"id": "old", "content": "I live in Lisbon.", "timestamp": "2023/05/20 (Sat) 02:21", "role": "user"},
    {"id": "new", "content": "I live in Porto now.", "timestamp": "2024-03-01T10:00:00+01:00", "role": "user"},
    {"id": "bot", "content": "Porto is lovely! Where do you live exactly?", "timestamp": dt.date(2024, 3, 2),
     "role": "assistant"},
]


def test_search_filters_by_window_and_role_on_both_backends(make):
    memory = make()
    memory.add(HISTORY, user_id="alice")
    ids = lambda **kw: {h.id for h in memory.search("Where do I live?", user_id="alice", **kw)}  # noqa: E731
    assert ids(since="2024-01-01") == {"new", "bot"}
    assert ids(until="2023-12-31") == {"old"}
    assert ids(since="2024-03-01T09:00:00Z", until="2024-03-01T09:00:00Z") == {"new"}  # inclusive, in UTC
    assert ids(roles="assistant") == {"bot"} and ids(roles=["user"]) == {"old", "new"}
    assert ids(since=dt.date(2025, 1, 1)) == set()
    # A day without a time as until means the whole day: since=day, until=day is that day.
    assert ids(since="2024-03-01", until="2024-03-01") == {"new"}
    assert ids(since="20240301", until="20240301") == {"new"}  # the basic ISO form too
    assert ids(since=dt.date(2024, 3, 2), until=dt.date(2024, 3, 2)) == {"bot"}
    assert ids(until="2024-03-01T00:00:00Z") == {"old"}  # an instant is taken as it is
    for hour in ("2024-03-01 09", "2024-03-01 0900", "2024-03-01 09Z", "2024-03-01 09+00"):  # ISO hours without ":"
        assert ids(since="2024-03-01", until=hour) == {"new"} and ids(since="2024-03-01", until=hour.replace("09", "08", 1)) == set()
    hit = memory.explain("Where do I live?", "new", user_id="alice")
    assert hit.timestamp == "2024-03-01T10:00:00+01:00" and hit.time == "2024-03-01T09:00:00.000000+00:00"


@pytest.mark.parametrize("kwargs,match", [
    ({"since": "soon"}, "since"), ({"until": object()}, "until"), ({"roles": []}, "roles"), ({"roles": [""]}, "roles"), ({"roles": 5}, "roles"),
    ({"since": "2024-02-01", "until": "2024-01-01"}, "after"),
])
def test_bad_filters_are_refused(make, kwargs, match):
    memory = make()
    memory.add(HISTORY)
    with pytest.raises(ValueError, match=match):
        memory.search("Where do I live?", **kwargs)


def test_times_survive_save_load_and_update(make, tmp_path):
    memory = make()
    memory.add(HISTORY, user_id="alice")
    memory.update([{"id": "old", "content": "I lived in Lisbon."}], user_id="alice")  # the time stays
    memory.update([Message(content="I live in Porto, near the river.", id="new", timestamp=1_709_290_000)],
                  user_id="alice")
    memory.save(tmp_path / "m")
    loaded = SAEMemory.load(tmp_path / "m", encoder=memory.encoder)
    assert loaded.get("old", user_id="alice")["time"] == "2023-05-20T02:21:00.000000+00:00"
    assert loaded.get("new", user_id="alice")["time"] == iso(instant(1_709_290_000))


def test_a_bad_timestamp_names_the_message_and_stores_nothing(make):
    memory = make()
    with pytest.raises(ValueError, match=r"Message 1 \('x'\): timestamp='next Tuesday'"):
        memory.add([{"content": "fine"}, {"content": "bad", "id": "x", "timestamp": "next Tuesday"}])
    assert len(memory) == 0


def test_adapters_filter_per_call_and_by_field(encoder):
    retriever = langchain_saememory.SAEMemoryRetriever.from_messages(HISTORY, user_id="alice", encoder=encoder)
    assert {d.id for d in retriever.invoke("Where do I live?", since="2024-01-01", roles="user")} == {"new"}
    retriever.add_messages([HumanMessage("I might move to Madrid.")])  # no timestamp: the time of adding
    assert {d.id for d in retriever.invoke("Madrid", since=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1))} \
        == {retriever.memory.messages("alice")[-1]["id"]}
    li = llama_index_saememory.SAEMemoryRetriever(retriever.memory, user_id="alice", until="2023-12-31")
    assert [n.node.node_id for n in li.retrieve("Where do I live?")] == ["old"]


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:00:00-05:00"])
def test_instants_outside_the_years_are_our_error(value):
    with pytest.raises(ValueError, match="outside the years"):
        instant(value)


def test_early_years_sort_before_late_ones():
    assert iso(instant("0999-06-01")) == "0999-06-01T00:00:00.000000+00:00" < iso(instant("2000-01-01"))
