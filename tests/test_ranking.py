"""saememory.ranking: the alternatives a query names, searched each."""

from __future__ import annotations

import numpy as np
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
    ("Which did I visit first, Paris, Rome, or Berlin?", ["Paris", "Rome", "Berlin"]),  # a comma before "or"
    ("Which did I prefer, Google or Apple or Microsoft?", ["Google", "Apple", "Microsoft"]),
    ("Which is faster, the car or the bike? Thanks!", ["the car", "the bike"]),  # the question only
    ("Which came first， the wedding or the party？", ["the wedding", "the party"]),  # full-width marks
    ("Do you remember, was it Tuesday or Wednesday when I called mom?", []),  # not a list: a question
    ("Who did I call, mom, dad and/or sister?", []),
    ("Hey, is my flight to Lisbon booked or not yet?", []),  # "or not"
    ("So, what did I eat today or yesterday?", []),  # times: read as a time, not searched alone
    ("When is it, at 3pm or 4pm?", []),
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


def test_scores_fall_with_rank_and_options_beside_the_point_keep_the_answer_first(make):
    """A message that merely names an option rises halfway, not above the answer; and the
    scores of the hits fall with their rank, so min_score cuts the tail only."""
    memory = make()
    memory.add(CONVERSATION + EVENTS + [
        {"id": "paris", "content": "Julie moved to Paris for her new job last month.", "session_id": "j1"},
        {"id": "hot", "content": "Marseille is hot in August.", "session_id": "j2"},
        {"id": "food", "content": "Lyon has the best food markets.", "session_id": "j3"}])
    hits = memory.search("Which city did Julie move to, Lyon or Marseille?", k=3)
    assert hits[0].id == "paris" and {h.id for h in hits[1:]} == {"hot", "food"}
    for query in ("Which city did Julie move to, Lyon or Marseille?", QUERY):
        scores = [h.score for h in memory.search(query, k=8, now="2024-07-01")]
        assert scores == sorted(scores, reverse=True)
        cut = memory.search(query, k=8, now="2024-07-01", min_score=scores[2])
        assert [h.score for h in cut] == scores[:len(cut)] and len(cut) >= 3


# Everyday notes (id, text, date): many name a day, a food, a city or a time, as options do.
NOTES = [
    ('pz2', 'Pizza night last week with the team was fun.', '2024-06-04'),
    ('pa2', 'Made pasta carbonara two days ago.', '2024-06-09'),
    ('eat', 'For dinner tonight I had a big bowl of pho with extra basil, it was amazing.', '2024-06-10'),
    ('y1', 'Yesterday the train was late again and I missed my meeting.', '2024-06-09'),
    ('y2', 'I called my landlord yesterday about the broken heater.', '2024-06-08'),
    ('y3', 'Yesterday I finally finished the book about the Roman empire.', '2024-06-07'),
    ('y4', 'My boss said yesterday that the project deadline moved.', '2024-06-06'),
    ('sis', 'My sister Emma adores cats, she has three of them at her flat.', '2024-05-01'),
    ('d1', "Dogs are the best, I walked the neighbour's dog this morning.", '2024-05-02'),
    ('d2', "I'm thinking of adopting a dog from the shelter next month.", '2024-05-03'),
    ('d3', 'The dog park near my place was packed with dogs today.', '2024-05-04'),
    ('dent', 'My dentist appointment is on Friday at 3pm with Dr. Lee.', '2024-05-05'),
    ('p1', 'I have a call with the bank at 4pm tomorrow.', '2024-05-06'),
    ('p2', 'Yoga class moved to 4pm on Thursdays.', '2024-05-07'),
    ('p3', "The movie starts at 3pm, let's meet at the cinema.", '2024-05-08'),
    ('work', 'At work I got promoted to team lead last week.', '2024-05-09'),
    ('misc1', 'I bought a new pair of running shoes.', '2024-05-10'),
    ('misc2', 'We are planning a trip to Lisbon in September.', '2024-05-11'),
    ('tue', 'I called mom on Tuesday and she told me about her new garden.', '2024-05-12'),
    ('w1', 'Wednesday is my gym day, I never skip it.', '2024-05-13'),
    ('w2', 'On Wednesday I have a long meeting with the design team.', '2024-05-14'),
    ('w3', 'Every Wednesday I cook dinner for my roommates.', '2024-05-15'),
    ('ram', 'We went to Ichiran for ramen after the concert, best broth ever.', '2024-05-16'),
    ('r2', 'I tried to make ramen at home but the noodles were soggy.', '2024-05-17'),
    ('r3', 'Instant ramen is my emergency food when I work late.', '2024-05-18'),
    ('din', "Tonight's dinner was homemade lasagna with my roommates.", '2024-06-10'),
    ('y5', 'Yesterday it rained all day so I stayed home.', '2024-06-05'),
    ('y6', 'I slept badly yesterday because of the noise upstairs.', '2024-06-04'),
    ('lis', 'My flight to Lisbon is booked for the 12th of September.', '2024-05-20'),
    ('par1', 'Paris was lovely when I visited in 2019, the museums were great.', '2023-01-01'),
    ('par2', 'My friend Julie moved to Paris for a new job.', '2023-02-01'),
    ('par3', 'I watched a documentary about Paris last night.', '2023-03-01'),
    ('m1', 'Monday morning standup is at 9am.', '2024-05-21'),
    ('m2', 'I hate Mondays, traffic is terrible.', '2024-05-22'),
    ('pz', 'The pizza place downtown closed last month, such a shame.', '2024-04-10'),
    ('pa', 'I bought three kinds of pasta at the Italian market.', '2024-04-11'),
    ('ly', "Lyon has the best food markets I've ever seen, we went there in 2022.", '2024-04-12'),
    ('ma', 'Marseille was too hot when we visited in August.', '2024-04-13'),
    ('bus', 'I take the 42 bus to work every day.', '2024-04-14'),
]


def test_scores_fall_with_rank_when_alternatives_and_adjustments_both_move_messages(encoder):
    from saememory import SAEMemory

    memory = SAEMemory(encoder)
    records = [{"id": i, "content": text, "timestamp": day, "session_id": "s" + i} for i, text, day in NOTES]
    records += [{"id": "a_" + i, "content": "Sure! " + text.replace("I ", "you ").replace("My ", "Your "),  # replies
                 "timestamp": day, "session_id": "s" + i, "role": "assistant"} for i, text, day in NOTES[::3]]
    memory.add(records)
    for query in ("What did I have for dinner last week, pasta or pizza?", "Which did I eat two days ago, pasta or pizza?",
                  "What did I do yesterday, read or sleep?", "What happened in May, the bank call or the yoga class?",
                  "What did I say last week, dogs or cats?", "Where did Julie move, Lyon or Marseille?"):
        scores = [h.score for h in memory.search(query, k=len(records), now="2024-06-11")]
        assert scores == sorted(scores, reverse=True), query


# Word by word -----------------------------------------------------------------------------------

JEWELRY = [
    {"id": "necklace", "content": "Spent Saturday at the flea market and came home with a silver necklace.", "session_id": "j1"},
    {"id": "ring", "content": "My grandmother gave me her old ring, I had it resized this week.", "session_id": "j2"},
    {"id": "store", "content": "I went to the store to return a pair of shoes that did not fit.", "session_id": "j3"},
]


def test_words_reorder_the_best_candidates_and_explain_agrees(make):
    memory = make()
    memory.add(CONVERSATION + JEWELRY)
    query = "How many pieces of jewelry did I get?"
    hits = memory.search(query, k=5)
    assert {"necklace", "ring"} <= {h.id for h in hits[:3]}
    assert all("words" in h.adjustments for h in hits)
    assert hits[0].adjustments["words"] > 0 and min(h.adjustments["words"] for h in hits) < 0  # a z-score among them
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    hit = memory.explain(query, hits[1].id)  # explain ranks as search does
    assert (hit.rank, hit.adjustments) == (2, hits[1].adjustments) and hit.score == pytest.approx(hits[1].score)
    memory.config = memory.config.replace(word_weight=0.0)
    assert all("words" not in h.adjustments for h in memory.search(query, k=5))


def test_words_reorder_only_word_depth_candidates(make):
    memory = make(word_depth=3)
    memory.add(CONVERSATION + JEWELRY)
    hits = memory.search("How many pieces of jewelry did I get?", k=6)
    assert sum("words" in h.adjustments for h in hits) == 3


def test_no_words_adjustment_when_steering_or_the_query_names_only_a_time(memory):
    memory.add(JEWELRY)
    assert all("words" not in h.adjustments for h in memory.search("jewelry", k=3, steer={"necklace": 0.5}))
    assert all("words" not in h.adjustments for h in memory.search("What did I do last Saturday?", k=3))


class _NoWords:
    """An encoder without word_vectors (a custom EncoderProtocol): ranking goes on without the words adjustment."""

    def __init__(self, inner):
        self.inner, self.dim, self.d_sae, self.sae, self.config = inner, inner.dim, inner.d_sae, inner.sae, inner.config

    def encode_documents(self, texts, show_progress=False):
        return self.inner.encode_documents(texts, show_progress)

    def encode_query(self, text):
        return self.inner.encode_query(text)

    def identity(self):
        return self.inner.identity()


class _WrongWords(_NoWords):
    def word_vectors(self, texts, query=False):
        return [np.ones((1, self.dim), np.float32)] if query else []


def test_an_encoder_without_word_vectors_ranks_without_them_and_a_wrong_one_is_named(encoder):
    from saememory import SAEMemory

    plain = SAEMemory(_NoWords(encoder))
    plain.add(JEWELRY)
    assert all("words" not in h.adjustments for h in plain.search("jewelry", k=3))
    wrong = SAEMemory(_WrongWords(encoder))
    wrong.add(JEWELRY)
    with pytest.raises(ValueError, match="_WrongWords.word_vectors returned 0 results for 3 texts"):
        wrong.search("jewelry", k=3)


@pytest.mark.parametrize("setting, value, error", [
    ("word_weight", -1.0, "word_weight must be a finite number >= 0"),
    ("word_weight", float("nan"), "word_weight must be a finite number >= 0"),
    ("word_depth", 0, "word_depth must be > 0"),
    ("word_depth", 2.5, "word_depth must be an integer"),
])
def test_word_settings_are_checked(setting, value, error):
    with pytest.raises((ValueError, TypeError), match=error):
        SearchConfig(**{setting: value})


class _Counting:
    """Counts the texts an encoder's word_vectors reads."""

    def __init__(self):
        self.read = []

    def word_vectors(self, texts, query=False):
        self.read.extend(texts)
        return [np.full((len(t), 4), 0.5, np.float32) for t in texts]


def test_word_cache_is_per_user_and_bounded():
    from saememory.ranking import WordCache

    encoder, cache = _Counting(), WordCache(max_bytes=200)
    first = cache.read("alice", ["abcd", "xy"], encoder)
    assert [v.shape for v in first] == [(4, 4), (2, 4)] and first[0].dtype == np.float32
    cache.read("alice", ["abcd"], encoder)
    assert encoder.read == ["abcd", "xy"]  # alice's second read is kept
    cache.read("bob", ["abcd"], encoder)
    assert encoder.read == ["abcd", "xy", "abcd"]  # bob's read never comes from alice's
    cache.read("alice", ["z" * 30], encoder)  # 240 bytes of float16: past max_bytes, the oldest go
    cache.read("alice", ["xy"], encoder)
    assert encoder.read[-1] == "xy"


def test_one_users_reads_never_push_out_anothers_word_vectors():
    from saememory.ranking import WordCache

    cache = WordCache(max_bytes=200, max_users=2)
    cache.read("alice", ["ab"], _Counting())
    cache.read("bob", ["x" * 20, "y" * 20, "z" * 20], _Counting())  # past bob's budget: only bob's go
    assert cache.kept("alice") == 1 and cache.kept("bob") == 1
    cache.read("carol", ["ab"], _Counting())  # past max_users: the user who read least recently goes whole
    assert (cache.kept("alice"), cache.kept("bob"), cache.kept("carol")) == (0, 1, 1)


class _Forgetting(_Counting):
    """Calls forget while it reads, as a delete that lands during the model's read."""

    def __init__(self, cache):
        super().__init__()
        self.cache = cache

    def word_vectors(self, texts, query=False):
        self.cache.forget("alice")
        return super().word_vectors(texts, query)


def test_a_forget_during_a_read_keeps_nothing_it_read():
    from saememory.ranking import WordCache

    cache = WordCache()
    assert len(cache.read("alice", ["deleted meanwhile"], _Forgetting(cache))[0]) == 17  # the read is answered
    assert cache.kept("alice") == 0
    ticket = cache.start("alice")  # a read started where the texts were fetched ...
    cache.forget("alice")  # ... then the message was deleted, before the model ran
    cache.read("alice", ["deleted before the read"], _Counting(), ticket)
    assert cache.kept("alice") == 0
    cache.read("alice", ["kept"], _Counting())
    assert cache.kept("alice") == 1


def test_a_search_reads_words_without_holding_the_memory(encoder):
    """The model reads a search's candidates with the memory's lock released: another user's
    add finishes while it reads, and a delete of what it read leaves nothing in the cache."""
    import threading

    from saememory import SAEMemory

    reading, release = threading.Event(), threading.Event()

    class Slow(_NoWords):
        def word_vectors(self, texts, query=False):
            if not query:
                reading.set()
                assert release.wait(60)
            return encoder.word_vectors(texts, query=query)

    memory = SAEMemory(Slow(encoder))
    memory.add(JEWELRY, user_id="alice")
    found = []
    search = threading.Thread(target=lambda: found.extend(memory.search("jewelry", k=3, user_id="alice")))
    search.start()
    assert reading.wait(60)
    added = threading.Thread(target=memory.add, args=([{"content": "I adopted a cat."}],), kwargs={"user_id": "bob"})
    added.start()
    added.join(60)
    assert not added.is_alive() and len(memory.messages("bob")) == 1  # done while alice's search read
    memory.delete("ring", user_id="alice")
    release.set()
    search.join(60)
    assert [h.id for h in found if h.id == "ring"] == []  # deleted meanwhile: not returned
    assert found and memory._words.kept("alice") == 0  # and nothing read from it kept


def test_a_stored_copy_of_the_question_stays_below_its_answer_with_words(make):
    """A copy of the query meets every word of it; the words adjustment is capped (WORD_LIMIT),
    so the asks penalty still puts it below the answer, and a later statement still supersedes."""
    memory = make()
    memory.add(CONVERSATION + [
        {"id": "job", "content": "My job? I'm a nurse.", "session_id": "a", "timestamp": "2024-01-02"},
        {"id": "phone-old", "content": "My phone number is 555-0193.", "session_id": "b", "timestamp": "2024-02-01"},
        {"id": "phone-new", "content": "I got a new number: 555-0142.", "session_id": "c", "timestamp": "2024-05-01"},
        {"id": "asked", "content": "What do I do for work?", "session_id": "d", "timestamp": "2024-06-01"}])
    hits = memory.search("What do I do for work?", k=3, now="2024-06-02")
    assert hits[0].id == "job" and hits[0].adjustments["words"] > 0
    phone = memory.search("What is my phone number?", k=2, now="2024-06-02")
    assert [h.id for h in phone] == ["phone-new", "phone-old"]


def test_deleting_forgets_the_users_word_vectors(make):
    memory = make()
    memory.add(JEWELRY, user_id="alice")
    memory.add(JEWELRY, user_id="bob")
    for user in ("alice", "bob"):
        memory.search("How many pieces of jewelry did I get?", k=3, user_id=user)
    kept = memory._words.kept
    assert kept("alice") == 3 and kept("bob") == 3
    memory.update([{"id": "ring", "content": "My grandmother's ring is at the jeweller."}], user_id="alice")
    assert kept("alice") == 0 and kept("bob") == 3
    memory.search("How many pieces of jewelry did I get?", k=3, user_id="alice")
    memory.delete("ring", user_id="alice")
    assert kept("alice") == 0 and kept("bob") == 3
    memory.delete_user("bob")
    assert kept("bob") == 0
