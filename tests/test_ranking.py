"""saememory.ranking: the alternatives a query names, searched each."""

from __future__ import annotations

import pytest

from saememory import SearchConfig
from saememory.ranking import alternatives
from tests.helpers import CONVERSATION


@pytest.mark.parametrize("query, found", [
    ("Which event happened first, my cousin's wedding or Michael's engagement party?",
     ["my cousin's wedding", "Michael's engagement party"]),
    ("Which mode of transport did I use most recently, a bus or a train?", ["a bus", "a train"]),
    ("Which did I visit first, Paris, Rome or Berlin?", ["Paris", "Rome", "Berlin"]),
    ("Which is older, my dog or my cat", ["my dog", "my cat"]),  # no question mark
    ("Do you like tea or coffee?", []),  # no list after a comma: the query is searched as it is
    ("Should I go, or should I stay?", []),  # an empty alternative
    ("What happened, or not?", []),  # "not" alone is no alternative
    ("I'm choosing between two laptops, the Dell or the Mac, which is better?", []),  # the list is not at the end
    ("Which came first, a, b, c, d or e?", []),  # more than MAX_ALTERNATIVES
])
def test_alternatives_reads_the_list_a_question_ends_in(query, found):
    assert alternatives(query) == found


EVENTS = [
    {"id": "wedding", "content": "Sofia and Tom got married in Porto yesterday; my cousin looked stunning in her dress.",
     "timestamp": "2024-05-03", "session_id": "e1"},
    {"id": "party", "content": "Michael finally proposed to Ana! We celebrated at their engagement party on Saturday.",
     "timestamp": "2024-06-15", "session_id": "e2"},
    # The question's frame ("which event happened first") matches these better than the wedding.
    {"content": "The first event of the season happened in March, a charity run by the lake.", "timestamp": "2024-03-20",
     "session_id": "e3"},
    {"content": "My first big event as a planner happened downtown and it went really well.", "timestamp": "2024-06-01",
     "session_id": "e4"},
    {"content": "What happened at the event first was a long speech by the mayor.", "timestamp": "2024-06-02",
     "session_id": "e5"},
    {"content": "I organised a small event for my team at work, the first one that happened on time.",
     "timestamp": "2024-04-02", "session_id": "e6"},
    {"content": "Which event happened first in the history of the town fair? The parade, I think.",
     "timestamp": "2024-04-09", "session_id": "e7"},
]
QUERY = "Which event happened first, my cousin's wedding or Michael's engagement party?"


def test_a_query_naming_alternatives_finds_each_on_both_backends(make):
    memory = make()
    memory.add(CONVERSATION + EVENTS)
    top = memory.search(QUERY, k=2, now="2024-07-01")
    assert {h.id for h in top} == {"wedding", "party"} and all(h.adjustments.get("alternatives", 0) > 0 for h in top)
    hit = memory.explain(QUERY, "wedding", now="2024-07-01")  # explain ranks as search does
    assert hit.rank == [h.id for h in top].index("wedding") + 1 and hit.adjustments == top[hit.rank - 1].adjustments
    memory.config = memory.config.replace(alternatives=False)  # the frame alone leaves the wedding out
    alone = memory.search(QUERY, k=2, now="2024-07-01")
    assert "wedding" not in {h.id for h in alone} and all("alternatives" not in h.adjustments for h in alone)


def test_steering_searches_the_query_alone(memory):
    memory.add(EVENTS)
    hits = memory.search(QUERY, k=3, now="2024-07-01", steer={"wedding": 0.5})
    assert all("alternatives" not in h.adjustments for h in hits)


def test_alternatives_is_a_switch():
    with pytest.raises(ValueError, match="alternatives must be True or False"):
        SearchConfig(alternatives="yes")
    assert SearchConfig.from_dict({}).alternatives and SearchConfig().to_dict()["alternatives"] is True
