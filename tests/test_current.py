"""What is current: time words in queries, questions that only ask, supersession and echoes."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from saememory import SAEMemory, SearchConfig
from tests.helpers import CONVERSATION
from saememory import current
from saememory.current import speaker, adjustments, asks_without_telling, recency, settle
from saememory.times import TimeWindow, instant, query_window

NOW = instant("2023-05-30T14:00:00")  # a Tuesday
OFF = {"recency_weight": 0.0, "asks_penalty": 0.0, "time_weight": 0.0, "speaker_weight": 0.0, "supersede_depth": 0,
       "word_weight": 0.0}


def day(text: str) -> dt.datetime:
    return instant(text)


@pytest.mark.parametrize("query, start, end", [
    ("What did I buy two weeks ago?", "2023-05-13T02:00:00", "2023-05-20T02:00:00"),  # 14 days, give or take 3.5
    ("What kitchen appliance did I buy 10 days ago?", "2023-05-19T14:00:00", "2023-05-21T14:00:00"),
    ("I cooked something a couple of days ago. What was it?", "2023-05-27T14:00:00", "2023-05-29T14:00:00"),
    ("Where did I go yesterday?", "2023-05-29", "2023-05-30"),
    ("What did I do last weekend?", "2023-05-27", "2023-05-29"),
    ("Who did I meet last Tuesday?", "2023-05-23", "2023-05-24"),
    ("What did I eat in March?", "2023-03-01", "2023-04-01"),
    ("What did I read in June?", "2022-06-01", "2022-07-01"),  # the latest June before now
    ("Which shoes did I clean last month?", "2023-04-01", "2023-05-15T14:00:00"),
    ("What trips did I take in the past three months?", "2023-02-28T14:00:00", "2023-05-30T14:00:00"),
    ("What have I read since January?", "2023-01-01", "2023-05-30T14:00:00"),
])
def test_query_window_reads_the_time_a_question_names(query, start, end):
    window = query_window(query, NOW)
    assert window is not None
    assert (window.start, window.end) == (day(start), day(end))
    assert window.phrase.lower() in query.lower()


@pytest.mark.parametrize("query", [
    "How many days ago did I start my new job?",  # asks for a duration, names no time
    "What did I do on the last day of my trip?",  # "the last day" of something is no span of time
    "What did I study in the last year of college?",
    "May I ask what my dog's name is?",  # the modal verb, not the month
    "Which city do I live in?",
    "What was the March 15th issue about?",  # a month without a preposition is not read
])
def test_query_window_names_no_time(query):
    assert query_window(query, NOW) is None


def test_query_window_counts_back_across_the_new_year():
    window = query_window("What did I do in December?", instant("2024-01-10"))
    assert (window.start, window.end) == (day("2023-12-01"), day("2024-01-01"))


def record(content: str, role: str = "user", time: str | None = "2024-01-01", session: str = "s", mid: str = "m") -> dict:
    from saememory.times import iso

    return {"id": mid, "content": content, "role": role, "session_id": session,
            "time": None if time is None else iso(instant(time))}


def test_asks_without_telling_tells_questions_from_news():
    query = "Which city do I live in?"
    records = [
        record("Which city do I live in?"),  # the same question, stored earlier
        record("Where do I live these days?"),  # the same question in other words
        record("Who is my doctor?"),  # another short question: it tells nothing either
        record("Can you suggest a birthday gift for my sister Ana, who turns 40 in May?"),  # a question with news
        record("I live in Oslo now."),
        record("My job? I'm a teacher."),  # the user's statement after a question
        record("Love the name. What breed is your dog?", role="assistant"),
        record("Oslo is a lovely place to live.", role="assistant"),
        record("Here is a recipe: boil the pasta, then toss it with garlic and oil. Want more?", role="assistant"),
        record("My dog is Luna, isn't she cute?"),  # statements with a question tagged on
        record("I moved to Oslo, remember?"),
        record("So, which city do I live in?"),  # the same question after an opener
    ]
    flags = asks_without_telling(records, query, "english").tolist()
    assert flags == [True, True, True, False, False, False, True, False, False, False, False, True]



@pytest.mark.parametrize("text, asks", [
    ("Thanks. Also, which city do I live in again?", True),  # a courtesy before the question tells nothing
    ("Remind me, which city do I live in?", True),  # a question after a short lead-in and a comma
    ("Quick question, which city do I live in now?", True),
    ("Great! Quick question, which city do I live in?", True),
    ("Sore but happy. Which city do I live in?", False),  # two words of its own: it may tell something
    ("We moved last week, which city do I live in now?", False),  # a lead-in that tells: a statement
    ("I just moved to Oslo. Which city do I live in now?", False),  # news before the question
    ("Lisbon, is that where I live?", False),  # a lead-in that names something
    ("I'm vegan, what should I cook tonight?", False),
    ("I'm vegan. Any dinner ideas?", False),  # one word of its own can be a fact
])
def test_a_users_question_after_a_lead_in_or_a_courtesy_still_only_asks(text, asks):
    assert asks_without_telling([record(text)], "Which city do I live in?", "english").tolist() == [asks]


@pytest.mark.parametrize("text, asks", [
    ("Good to have a doctor you trust. How often do you see them?", True),  # function words are not its own
    ("Love the name. What breed is your dog?", True),
    ("Your appointment with Dr. Alvarez is on Monday at nine, right?", False),  # it tells: a name, a day, a time
])
def test_a_reply_that_only_asks_back_is_told_from_one_that_tells(text, asks):
    assert asks_without_telling([record(text, role="assistant")], "Who is my doctor?", "english").tolist() == [asks]


def test_recency_places_each_record_in_time_and_leaves_unknown_times_at_zero():
    records = [record("a", time="2024-01-01"), record("b", time="2024-07-01"), record("c", time=None),
               record("d", time="2024-04-01")]
    values = recency(records)
    assert values[0] == 0.0 and values[1] == 1.0 and values[2] == 0.0 and 0.0 < values[3] < 1.0
    assert recency([record("a")]).tolist() == [0.0]


def unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float64)
    return v / np.linalg.norm(v)


def test_settle_raises_a_later_statement_and_lowers_an_echo():
    records = [record("I have a dog named Rocky.", time="2024-01-01", session="s1", mid="old"),
               record("Rocky is a great name.", role="assistant", time="2024-01-01T00:01", session="s1", mid="echo"),
               record("We adopted a new dog, Olive.", time="2024-06-01", session="s2", mid="new"),
               record("I play the violin.", time="2024-07-01", session="s3", mid="other")]
    vectors = np.stack([unit(1, 0.2, 0), unit(1, 0.3, 0), unit(1, 0, 0.5), unit(0, 0, 1)])
    scores = np.array([3.0, 3.5, 2.5, 1.0])
    raised, lowered = settle(records, vectors, scores)
    after = scores + raised + lowered
    assert after[2] > after[0] > after[1]  # the new statement first, the echo below what it echoes
    assert raised[3] == 0 and lowered[3] == 0  # another subject is left alone
    assert raised[0] == 0 and lowered[0] == 0


def test_settle_leaves_a_statement_far_below_and_one_of_the_same_session():
    records = [record("My phone number is 555-0142.", time="2024-01-01", session="s1", mid="a"),
               record("My phone number is 555-0193.", time="2024-02-01", session="s2", mid="b"),
               record("And my office number is 555-0100.", time="2024-01-01T00:05", session="s1", mid="c")]
    vectors = np.stack([unit(1, 0.1, 0), unit(1, 0.2, 0), unit(1, 0, 0.1)])
    raised, _ = settle(records, vectors, np.array([5.0, 0.0, 4.0]))  # b is 5 sd below a: not the same answer
    assert raised.tolist() == [0.0, 0.0, 0.0]  # and c, though later, shares a's session


def test_a_later_session_supersedes_an_earlier_statement_once(monkeypatch):
    """"How many days did it take me to finish the book?": the later session's statement that
    finished it already ranks above the start; another of that session about books must not climb
    over the start too, which the question needs."""
    from saememory import current

    records = [record("I just started The Nightingale today.", time="2024-01-10", session="s1", mid="start"),
               record("I just finished The Nightingale today.", time="2024-01-31", session="s2", mid="finish"),
               record("I'm reading The Song of Achilles now.", time="2024-01-31T00:01", session="s2", mid="next")]
    vectors = np.stack([unit(1, 0.1, 0), unit(1, 0.2, 0), unit(1, 0, 0.2)])
    scores = np.array([3.0, 3.5, 2.5])
    raised, _ = settle(records, vectors, scores)
    assert raised.tolist() == [0.0, 0.0, 0.0]
    monkeypatch.setattr(current, "ONE_PER_SESSION", False)
    assert settle(records, vectors, scores)[0][2] > 0  # without the rule, the second climbs over the start
    monkeypatch.setattr(current, "ONE_PER_SESSION", True)
    below = np.array([3.0, 2.8, 2.5])  # neither of s2 above the start yet: the first of it still supersedes
    raised, _ = settle(records, vectors, below)
    assert (below + raised)[1] > below[0] and raised[2] == 0


def test_a_statement_after_the_time_the_query_names_supersedes_nothing():
    records = [record("I work as a nurse at Rush.", time="2024-01-10T00:00:00+00:00", session="s1", mid="jan"),
               record("I accepted a new job at Denver Health.", time="2024-03-05T00:00:00+00:00", session="s2",
                      mid="mar")]
    vectors = np.stack([unit(1, 0.1, 0), unit(1, 0.2, 0)])
    scores = np.array([3.0, 2.5])
    def window(start: str, end: str) -> TimeWindow:
        return TimeWindow(instant(start), instant(end), "test")

    assert settle(records, vectors, scores)[0][1] > 0  # asked what is current: the new job first
    assert not settle(records, vectors, scores, window=window("2024-01-01", "2024-02-01"))[0].any()  # about January
    assert settle(records, vectors, scores, window=window("2024-01-01", "2024-06-30"))[0][1] > 0  # a window holding both
    # Both said after the window (as "In June I went to a BBQ" is said in July): the later still supersedes.
    assert settle(records, vectors, scores, window=window("2023-06-01", "2023-07-01"))[0][1] > 0
    # Asked what was true before the change: the earlier rises above the later instead (from within a margin).
    raised = settle(records, vectors, np.array([2.5, 3.0]), past=True)[0]
    assert raised[0] > 0.5 and raised[1] == 0
    # The query says it changed: the margin is CHANGE_MARGIN for any later statement; beyond it, nothing moves.
    assert not settle(records, vectors, np.array([2.5, 2.5 + current.CHANGE_MARGIN + 0.5]), past=True)[0].any()
    plain = [record("I work as a nurse at Rush.", time="2024-01-10T00:00:00+00:00", session="s1", mid="jan"),
             record("I work at Denver Health.", time="2024-03-05T00:00:00+00:00", session="s2", mid="mar")]
    assert settle(plain, vectors, np.array([2.5, 2.5 + current.SUPERSEDE_MARGIN + 1.0]), past=True)[0][0] > 0
    assert not settle(plain, vectors, np.array([2.5 + current.SUPERSEDE_MARGIN + 1.0, 2.5]))[0].any()  # forward: 1


@pytest.mark.parametrize("query, before", [
    ("Where did I work before my current job?", True),
    ("What was my previous phone?", True),
    ("What car did I drive before the Honda?", True),
    ("What do I eat before a race?", False),  # before, in a question about the present
    ("What did I use to unclog the sink?", False),
    ("How many days before the meeting did I go to the workshop?", False),  # a time, not a change
    ("What did I eat the day before my exam?", False),
    ("In our previous chat you suggested a book, what was it?", False),  # a conversation, not a change
    ("Which city did we live in prior to the move?", True),
    ("Where do I work now?", False),
    ("What was my metformin dose when I was first diagnosed?", True),
    ("Where did we live when we first met?", True),
    ("What car did I drive at first?", True),
    ("Which event happened first, the wedding or the party?", False),  # an order in time, not a change
    ("Was I first in line at the DMV?", False),  # a rank
    ("How old is my dog?", False),
    ("What did I say about the trip?", False),
])
def test_asks_before_reads_a_question_about_what_was_true_before_a_change(query, before):
    assert current.asks_before(query) == before


def test_search_about_a_past_month_keeps_what_was_true_then(encoder):
    memory = SAEMemory(encoder)
    other = ["My sister Ana lives in Lisbon.", "I adopted a cat named Miso last spring.", "I'm training for a half marathon.",
             "We are planning a trip to Japan in October.", "My favourite dish is mushroom risotto.",
             "I started learning the cello.", "My daughter Maya loves drawing dragons.", "I switched to a standing desk."]
    memory.add([{"content": text, "timestamp": f"2023-{i + 3:02d}-01", "session_id": f"o{i}"} for i, text in enumerate(other)])
    memory.add([{"content": "I work as a nurse at Rush Hospital in Chicago.", "timestamp": "2024-01-10",
                 "session_id": "jan"},
                {"content": "Big news: I accepted a new job at Denver Health, I start next month!",
                 "timestamp": "2024-03-05", "session_id": "mar"}])
    now = "2024-11-01"
    then = memory.search("Where was I working in January?", k=2, now=now)
    assert then[0].content.startswith("I work as a nurse") and "supersedes" not in then[1].adjustments
    current_job = memory.search("Where do I work?", k=2, now=now)
    assert current_job[0].content.startswith("Big news")
    memory.config = memory.config.replace(time_weight=0.0)  # no gain for the window, and still no rewrite of the past
    assert not any("supersedes" in h.adjustments for h in memory.search("Where was I working in January?", now=now))
    assert "supersedes" in memory.search("Where do I work?", k=1, now=now)[0].adjustments


def test_adjustments_with_every_weight_off_change_nothing():
    config = SearchConfig(**OFF)
    out = adjustments([record("Which city do I live in?")], np.zeros(1), "Which city do I live in?", NOW, config,
                      lambda ids: {})
    assert out == {} and not config.adjusts


@pytest.mark.parametrize("name", ["recency_weight", "asks_penalty", "time_weight", "speaker_weight"])
def test_search_config_refuses_a_bad_weight_naming_it(name):
    with pytest.raises(ValueError, match=name):
        SearchConfig(**{name: -1.0})
    with pytest.raises(ValueError, match=name):
        SearchConfig(**{name: float("nan")})


def test_search_config_refuses_a_bad_depth():
    with pytest.raises(ValueError, match="supersede_depth"):
        SearchConfig(supersede_depth=-1)
    with pytest.raises(ValueError, match="adjust_depth"):
        SearchConfig(adjust_depth=0)


CHAT = [
    {"id": "city-old", "content": "I live in Lisbon now.", "timestamp": "2024-01-05T10:00:00", "session_id": "jan"},
    {"id": "city-old-r", "content": "Nice! How do you like living there?", "role": "assistant",
     "timestamp": "2024-01-05T10:00:30", "session_id": "jan"},
    {"id": "dog", "content": "We named our puppy Luna.", "timestamp": "2024-02-10T09:00:00", "session_id": "feb"},
    {"id": "dog-r", "content": "Luna is such a cute name for a dog.", "role": "assistant",
     "timestamp": "2024-02-10T09:00:30", "session_id": "feb"},
    {"id": "tea", "content": "How long should I steep green tea?", "timestamp": "2024-03-01T08:00:00", "session_id": "mar"},
    {"id": "kettle", "content": "I bought a new electric kettle today.", "timestamp": "2024-11-26T08:00:00",
     "session_id": "nov"},
    {"id": "city-new", "content": "I moved to Oslo last month!", "timestamp": "2024-09-02T18:00:00", "session_id": "sep"},
    {"id": "hike", "content": "I want to plan a weekend hiking trip.", "timestamp": "2024-05-01T08:00:00", "session_id": "may"},
    {"id": "city-q", "content": "Which city do I live in?", "timestamp": "2024-12-01T09:00:00", "session_id": "dec"},
]
ASKED = "2024-12-01T09:01:00"


def test_the_current_answer_comes_first_on_both_backends(make):
    memory = make()
    memory.add(CHAT)
    hits = memory.search("Which city do I live in?", k=3, now=ASKED)
    assert hits[0].id == "city-new", [h.id for h in hits]
    assert hits[0].adjustments.get("supersedes", 0) > 0
    ranked = [h.id for h in memory.search("Which city do I live in?", k=9, now=ASKED)]
    assert ranked.index("city-q") > ranked.index("city-old")  # the stored question is below both answers
    dog = [h.id for h in memory.search("What is my dog's name?", k=2, now=ASKED)]
    assert dog == ["dog", "dog-r"]  # the user's fact above the assistant's echo of it
    kettle = memory.search("What did I buy last week?", k=1, now=ASKED)
    assert kettle[0].id == "kettle" and kettle[0].adjustments["time"] > 0


def test_adjustments_are_in_the_scores_and_explain_agrees(make):
    memory = make()
    memory.add(CHAT)
    hits = memory.search("Which city do I live in?", k=9, now=ASKED)
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    assert all(a.calibrated_score >= b.calibrated_score for a, b in zip(hits, hits[1:]))
    for hit in hits:
        explained = memory.explain("Which city do I live in?", hit.id, now=ASKED)
        assert (explained.rank, explained.adjustments) == (hit.rank, hit.adjustments)
        assert explained.score == pytest.approx(hit.score)
    plain = make(**OFF)
    plain.add(CHAT)
    assert all(h.adjustments == {} for h in plain.search("Which city do I live in?", k=9, now=ASKED))


def test_now_is_checked_and_a_window_counts_back_from_it(encoder):
    memory = SAEMemory(encoder)
    memory.add(CHAT)
    with pytest.raises(ValueError, match="now="):
        memory.search("What did I buy last week?", now="next tuesday")
    early = memory.search("What did I buy last week?", k=9, now="2024-03-05")  # the week before: the tea question
    assert "time" not in next(h for h in early if h.id == "kettle").adjustments
    assert early[0].id != "kettle" or early[0].adjustments.get("time") is None


def test_adapters_take_now_per_call(encoder):
    from langchain_saememory import SAEMemoryRetriever
    from llama_index_saememory import SAEMemoryRetriever as SAEMemoryLlamaRetriever

    memory = SAEMemory(encoder)
    memory.add(CHAT)
    docs = SAEMemoryRetriever(memory=memory, k=1).invoke("What did I buy last week?", now=ASKED)
    assert docs[0].id == "kettle" and docs[0].metadata["adjustments"]["time"] > 0
    nodes = SAEMemoryLlamaRetriever(memory, similarity_top_k=1, now=ASKED).retrieve("What did I buy last week?")
    assert nodes[0].node.node_id == "kettle"


@pytest.mark.parametrize("now, query", [
    ("0005-03-01", "What did I do 999 years ago?"),
    ("0001-01-03", "What did I do last month?"),
    ("9999-12-31T20:00:00", "What did I do 3 days ago?"),
    ("0001-01-01", "What did I do in December?"),
])
def test_query_window_at_the_edges_of_time_is_none_or_inside_them(now, query):
    window = query_window(query, instant(now))
    assert window is None or window.start <= window.end


def test_query_window_uses_the_first_phrase_and_the_askers_days():
    assert query_window("What did I buy last Saturday, three days ago?", NOW).phrase == "last Saturday"
    tokyo = dt.timezone(dt.timedelta(hours=9))
    for hour in (1, 8, 20):  # the same day in Tokyo, whatever the hour
        window = query_window("What did I do yesterday?", dt.datetime(2024, 6, 4, hour, tzinfo=tokyo))
        assert (window.start, window.end) == (dt.datetime(2024, 6, 3, tzinfo=tokyo), dt.datetime(2024, 6, 4, tzinfo=tokyo))


def test_query_window_on_the_first_of_the_month_and_at_the_weekend():
    window = query_window("What did I eat in March?", instant("2023-03-01T05:00:00"))
    assert window.start == day("2023-03-01")  # this March, not last year's
    saturday, sunday = instant("2023-06-03T12:00:00"), instant("2023-06-04T12:00:00")
    for now in (saturday, sunday):  # the weekend before this one, on either day of it
        window = query_window("What did I do last weekend?", now)
        assert (window.start, window.end) == (day("2023-05-27"), day("2023-05-29"))


def test_the_asker_zone_decides_which_messages_were_yesterday(encoder):
    memory = SAEMemory(encoder)
    memory.add([{"id": "dentist", "content": "I went to the dentist this afternoon.", "timestamp": "2024-06-03T15:00:00+09:00"},
                {"id": "park", "content": "I walked in the park.", "timestamp": "2024-06-01T10:00:00+09:00"}])
    for now in ("2024-06-04T08:00:00+09:00", "2024-06-04T20:00:00+09:00"):
        hit = memory.explain("What did I do yesterday?", "dentist", now=now)
        assert hit.adjustments.get("time", 0) > 0


def test_adjustments_with_equal_scores_order_but_do_not_move_scores(encoder):
    kettle = [{"id": "a", "content": "I bought a kettle.", "timestamp": "2024-11-26"}]
    memory, plain = SAEMemory(encoder), SAEMemory(encoder, **OFF)
    memory.add(kettle)
    plain.add(kettle)
    hit = memory.search("What did I buy last week?", now="2024-12-01")[0]
    assert hit.adjustments["time"] > 0
    assert hit.score == plain.search("What did I buy last week?", now="2024-12-01")[0].score
    assert memory.search("What did I buy last week?", now="2024-12-01", min_score=hit.score + 0.01) == []


def test_long_messages_are_not_kept_in_the_words_cache():
    from saememory import current

    current._TOLD_AND_ASKED.clear()
    records = [{"content": "word " * 2000 + "what is it?", "role": "user"}, {"content": "Is it blue?", "role": "user"}]
    assert current.asks_without_telling(records, "is it blue", None).tolist() == [False, True]
    assert len(current._TOLD_AND_ASKED) == 1  # the short one, by digest: no message text is kept
    assert all(isinstance(key[0], bytes) for key in current._TOLD_AND_ASKED)


@pytest.mark.parametrize("text, changed", [
    ("We just relocated to Lyon.", True), ("I moved to Oslo last month!", True),
    ("Our new puppy is named Miso.", True), ("I work as a nurse these days.", True),
    ("I no longer play the drums.", True), ("I switched to the cello.", True),
    ("My dog is called Rocky.", False), ("I have lived in Oslo for years.", False),
    ("Those days are over, no.", False), ("The newest phone is great.", False),
    ("I'm now working as a nurse.", True), ("Big news. Now I'm the band's drummer.", True),
    ("We drove to the New York office.", False), ("Can you suggest some new games?", False),
    ("I've been writing for about a month now.", False), ("Right now the weather is fine.", False),
    ("I’m now a teacher.", True), ("I used to rent, but now I own a flat.", True), ("Our\nnew flat is big.", True),
    ("Can you recommend a new laptop for work?", False), ("I have never moved house.", False),
    ("I haven't switched banks yet.", False), ("THE NEW YORK TIMES wrote about it.", False),
])
def test_states_change_reads_words_of_change(text, changed):
    assert current.states_change(text) is changed


def test_a_statement_of_change_supersedes_from_further_below():
    # "We just relocated to Lyon" scores 2 below "I live in Porto", the same subject: with a word
    # of change it is raised above (up to CHANGE_MARGIN); phrased plainly it is not (SUPERSEDE_MARGIN).
    vectors = np.eye(2, dtype=np.float32)[[0, 0]]
    for later, raised in (("We just relocated to Lyon.", True), ("Lyon is where I am based.", False)):
        records = [{"id": "a", "content": "I live in Porto.", "role": "user", "session_id": "s1",
                    "time": "2024-01-01T00:00:00+00:00"},
                   {"id": "b", "content": later, "role": "user", "session_id": "s2", "time": "2024-06-01T00:00:00+00:00"}]
        up, down = current.settle(records, vectors, np.array([4.0, 2.0]))
        assert bool(up[1] > 0) is raised and not down.any()
        assert 1.0 < 4.0 - 2.0 <= current.CHANGE_MARGIN and 4.0 - 2.0 > current.SUPERSEDE_MARGIN


@pytest.mark.parametrize("query, who", [
    ("What tips did you give me for centring clay?", "assistant"),
    ("What were the sleep tips you gave me?", "assistant"),
    ("What did you recommend for my knee?", "assistant"),
    ("What was your advice on the move?", "assistant"),
    ("What did I tell you last week about the race?", "user"),
    ("What did I mention about my sister?", "user"),
    ("I told you about my dog, what was its name?", "user"),
    ("Can you tell me my dose?", None),  # asks the assistant now: says nothing of who said the answer
    ("What is my job?", None),
    ("What did I buy last week?", None),
    ("I told you what you told me.", None),  # both sides: no hint
    ("What did the doctor you recommended say about my knee?", None),  # a relative clause names a doctor
])
def test_speaker_reads_who_said_what_the_query_asks_for(query, who):
    assert speaker(query) == who


ADVICE = [
    {"id": "ask", "content": "I've signed up for the Leeds 10K on 11 May. Any training advice for the 10K?",
     "timestamp": "2025-04-20T10:00:00", "session_id": "s1"},
    {"id": "tips", "content": "Great goal! Run three times a week, one easy run, one with intervals and one longer "
                              "run, and rest the two days before the race.", "role": "assistant",
     "timestamp": "2025-04-20T10:01:00", "session_id": "s1"},
    {"id": "ran", "content": "I ran the Leeds 10K on Sunday in 58 minutes!", "timestamp": "2025-05-13T10:00:00",
     "session_id": "s2"},
]


def test_a_query_for_the_assistants_words_ranks_them_first(encoder):
    memory = SAEMemory(encoder)
    memory.add(CONVERSATION + ADVICE)  # among other talk, as in a real history
    now = "2025-05-20T10:00:00"
    top = memory.search("What training advice did you give me for the 10K?", k=3, now=now)
    assert top[0].id == "tips" and top[0].adjustments.get("speaker") == 2.0
    assert all("speaker" not in h.adjustments for h in top if h.role == "user")
    assert memory.search("What did I tell you about the 10K?", k=1, now=now)[0].role == "user"
    memory.config = memory.config.replace(speaker_weight=0.0)
    assert all("speaker" not in h.adjustments for h in memory.search("What advice did you give me?", now=now))


def test_a_shared_style_is_not_a_shared_subject():
    """Seven long messages of one user, all alike (cosine 0.5): only the pair that is closer than
    the rest (0.75) is about the same subject; with few statements the cosine alone decides."""
    similar = np.full((7, 7), 0.5)
    np.fill_diagonal(similar, 1.0)
    similar[0, 1] = similar[1, 0] = 0.75
    same = current._same_subject(similar, list(range(7)))
    assert same[0, 1] and same[1, 0] and not same[0, 2] and not same[2, 3]
    # Three statements on one subject among them do not lift each other's background (a quartile, not a mean).
    similar[0, 2] = similar[2, 0] = similar[1, 2] = similar[2, 1] = 0.75
    assert current._same_subject(similar, list(range(7)))[0, 2]
    assert current._same_subject(similar[:4, :4], [0, 1, 2, 3])[0, 3]  # too few for a background
    assert not current._same_subject(np.array([[1.0, 0.3], [0.3, 1.0]]), [0, 1])[0, 1]  # below SAME_SUBJECT


def test_a_change_supersedes_even_when_the_old_fact_was_said_twice(encoder):
    """Three statements about one city must not raise each other's background cosine so far
    that the change no longer counts as the same subject."""
    memory = SAEMemory(encoder)
    memory.add(CONVERSATION)
    memory.add([{"content": "I live in Lisbon now.", "timestamp": "2024-01-05", "session_id": "a", "id": "l1"},
                {"content": "Lisbon has been my home for years.", "timestamp": "2024-02-05", "session_id": "b", "id": "l2"},
                {"content": "I moved to Oslo last month!", "timestamp": "2024-09-05", "session_id": "c", "id": "oslo"}])
    top = memory.search("Which city do I live in?", k=1, now="2024-10-01")[0]
    assert top.id == "oslo" and "supersedes" in top.adjustments


def test_only_the_first_reply_to_a_message_is_raised_above_it():
    records = [record("Any tips for sleeping better?", time="2024-01-01T10:00:00+00:00", session="s"),
               record("Keep a fixed wake-up time and no screens before bed.", role="assistant",
                      time="2024-01-01T10:01:00+00:00", session="s"),
               record("Anything else I can help with?", role="assistant", time="2024-01-01T10:05:00+00:00", session="s")]
    raised = current.answering(records, np.array([3.0, 1.0, 2.0]))
    assert raised[1] == pytest.approx(2.001) and raised[2] == 0 and raised[0] == 0

