"""Steering: boosting or suppressing SAE features of the query changes the ranking as asked."""

from __future__ import annotations

import copy

import pytest

from saememory import Encoder, EncoderConfig, SAEMemory
from saememory.interpret.steering import TEXT_FEATURES, resolve_steering
from tests.helpers import CONVERSATION, QUESTION

TARGET = "I started learning the guitar two weeks ago."


def rank_of(memory: SAEMemory, message_id: str, **kwargs) -> int:
    hits = memory.search(QUESTION, k=len(memory), **kwargs)
    return next(h.rank for h in hits if h.id == message_id)


def target_features(memory: SAEMemory, target_id: str, n: int = 3) -> list[int]:
    """The target's strongest features that the query does not already share."""
    hit = memory.explain(QUESTION, target_id)
    shared = {f["id"] for f in hit.shared_features}
    full = SAEMemory(memory.encoder, top_features=50)
    full.add([{"content": TARGET, "id": "t"}])
    return [f["id"] for f in full.search(TARGET, k=1)[0].features if f["id"] not in shared][:n]


@pytest.fixture
def target_id(memory) -> str:
    return next(m["id"] for m in memory.messages() if m["content"] == TARGET)


def test_boosting_the_targets_features_raises_it(memory, target_id):
    before = rank_of(memory, target_id)
    features = target_features(memory, target_id)
    after = rank_of(memory, target_id, steer={f: 1.0 for f in features})
    assert before > 1 and after < before


def test_suppressing_shared_features_lowers_the_sparse_score(memory):
    top = memory.search(QUESTION, k=1)[0]
    shared = {f["id"]: 0.0 for f in top.shared_features}
    hits = memory.search(QUESTION, k=len(memory), steer=shared)
    again = next(h for h in hits if h.id == top.id)
    assert again.sparse_score < top.sparse_score
    assert again.dense_score == pytest.approx(top.dense_score, abs=1e-6)  # residual: dense untouched


def test_steering_by_label(memory, target_id):
    features = target_features(memory, target_id, n=2)
    sae = copy.copy(memory.encoder.sae)
    sae.labels = {features[0]: "guitar / music lessons", features[1]: "learning an instrument"}
    labelled = SAEMemory(Encoder(memory.encoder.config, model=memory.encoder.model, sae=sae))
    labelled.add(CONVERSATION)
    target_id = next(m["id"] for m in labelled.messages() if m["content"] == TARGET)
    assert labelled.resolve_features({"GUITAR": 1.0}) == {features[0]: 1.0}
    before = rank_of(labelled, target_id)
    assert rank_of(labelled, target_id, steer={"guitar": 1.0, "instrument": 1.0}) < before
    # A text no label holds steers by its own strongest features, none of them hidden.
    own = labelled.resolve_features({"submarine": 1.0})
    assert 0 < len(own) <= TEXT_FEATURES and not set(own) & set(sae.hidden)
    assert labelled.search(QUESTION, steer={"submarine": 1.0})
    with pytest.raises(ValueError, match="No feature label"):  # and without an encoder it cannot be read
        resolve_steering(sae, {"submarine": 1.0})


def test_a_label_word_steers_every_feature_it_labels():
    class Labelled:
        labels = {f: "guitar / strings" for f in range(7)} | {7: "violin", 8: "electric guitar"}

    assert resolve_steering(Labelled(), {"Guitar": 1.0}) == {f: 1.0 for f in range(7)}  # no cap; a term, not a part
    assert resolve_steering(Labelled(), {"guitar strings": 0.0}) == {f: 0.0 for f in range(7)}

    class Phrased(Labelled):
        phrases = {7: "violin lessons", 8: "violin lessons", 9: "violin lessons"}  # 9 has no label
        hidden = {8: "function words"}  # hidden: never steered by text, even by its phrase

    assert resolve_steering(Phrased(), {"Violin  Lessons": 1.0}) == {7: 1.0}  # a phrase, case and spaces folded
    assert resolve_steering(Phrased(), {"violin": 1.0}) == {7: 1.0}


def test_the_readme_steering_example_runs(memory):
    readme_steer = {1834: 1.0, "violin": 1.0, 2231: 0.0}
    resolved = memory.resolve_features(readme_steer)
    assert resolved[1834] == 1.0 and resolved[2231] == 0.0 and len(resolved) > 2
    assert memory.search("What instrument is my daughter learning?", k=3, steer=readme_steer)


def test_embedding_source_moves_the_dense_query(encoder):
    emb = SAEMemory(Encoder(EncoderConfig(sae="minilm-emb-topk4k"), model=encoder.model))
    emb.add(CONVERSATION)
    target_id = next(m["id"] for m in emb.messages() if m["content"] == TARGET)
    before = emb.explain(QUESTION, target_id)
    features = target_features(emb, target_id)
    hits = emb.search(QUESTION, k=len(emb), steer={f: 2.0 for f in features})
    after = next(h for h in hits if h.id == target_id)
    assert after.dense_score > before.dense_score and after.rank < before.rank


def test_bad_steering(memory, encoder):
    unlabelled = copy.copy(memory.encoder.sae)
    unlabelled.labels = {}
    no_labels = SAEMemory(Encoder(memory.encoder.config, model=encoder.model, sae=unlabelled))
    no_labels.add(CONVERSATION[:2])
    assert no_labels.resolve_features({"guitar": 1.0})  # without labels, a text steers by its own features
    with pytest.raises(ValueError, match="from 0 \\(suppress\\) to 100"):
        memory.search(QUESTION, steer={3: -1.0})
    # Every key and strength is checked before any text is encoded.
    calls = []
    original = memory.encoder.encode_query
    memory.encoder.encode_query = lambda text: calls.append(text) or original(text)
    try:
        for spec, error in (({"music": -1.0}, "from 0"), ({"music": 1e30}, "to 100"), ({"\ud800music": 1.0}, "Unicode"),
                            ({"   ": 1.0}, "empty or whitespace"),
                            ({f"word{i}": 1.0 for i in range(65)}, "at most 64"), ({"music": 1.0, 3: float("nan")}, "finite")):
            with pytest.raises(ValueError, match=error):
                memory.search(QUESTION, steer=spec)
        assert calls == []
        with pytest.raises(TypeError, match="steer must be a dict"):
            memory.search(QUESTION, steer=0)  # falsy, still not a spec
    finally:
        memory.encoder.encode_query = original
    with pytest.raises(ValueError, match="outside"):
        memory.search(QUESTION, steer={10**6: 1.0})
    dense_only = SAEMemory(Encoder(EncoderConfig(sae=None), model=encoder.model))
    dense_only.add(CONVERSATION[:2])
    with pytest.raises(ValueError, match="needs an SAE"):
        dense_only.search(QUESTION, steer={1: 1.0})
    assert dense_only.search(QUESTION, steer={})  # an empty spec steers nothing (a retriever clears its steering)


def test_steering_through_both_adapters(memory, target_id):
    from langchain_saememory import SAEMemoryRetriever as LangChainRetriever
    from llama_index_saememory import SAEMemoryRetriever as LlamaIndexRetriever

    n = len(memory)
    steer = {f: 1.0 for f in target_features(memory, target_id)}
    expected = [(h.id, h.score) for h in memory.search(QUESTION, k=n, steer=steer)]
    lc = LangChainRetriever.from_memory(memory, k=n)
    assert [(d.id, d.metadata["score"]) for d in lc.invoke(QUESTION, steer=steer)] == expected
    assert [(d.id, d.metadata["score"]) for d in LangChainRetriever.from_memory(memory, k=n, steer=steer).invoke(QUESTION)] == expected
    li = LlamaIndexRetriever(memory, similarity_top_k=n, steer=steer)
    assert [(node.node.node_id, node.score) for node in li.retrieve(QUESTION)] == expected
    unsteered = [d.id for d in lc.invoke(QUESTION)]
    steered = [i for i, _ in expected]
    assert steered.index(target_id) < unsteered.index(target_id)  # steering through the adapter raised the target


def test_steer_dense_moves_the_query_towards_each_text_by_its_strength():
    import numpy as np

    from saememory.interpret.steering import steer_dense

    query, text = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    np.testing.assert_allclose(steer_dense(query, [(text, 1.0)]), [2 ** -0.5, 2 ** -0.5], atol=1e-6)
    np.testing.assert_allclose(steer_dense(query, [(text, 0.0)]), query)  # strength 0 leaves it
    np.testing.assert_allclose(steer_dense(query, [(text, 3.0)]), np.array([1.0, 3.0]) / 10 ** 0.5, atol=1e-6)
    assert np.isfinite(steer_dense(query, [(-query, 1.0)])).all()  # cancelled: zero, never NaN


def test_a_word_steers_a_vague_question_to_its_topic(memory):
    # Raising the word's features alone leaves the first hit of a vague question as it was; the
    # word also moves the dense query, so the message about it comes first.
    vague = "Tell me something about me."
    plain = [h.id for h in memory.search(vague, k=3)]
    by_features = [h.id for h in memory.search(vague, k=3, steer=dict.fromkeys(memory.resolve_features({"music": 1.0}), 1.0))]
    steered = memory.search(vague, k=3, steer={"music": 1.0})
    assert TARGET not in (memory.get(plain[0])["content"], memory.get(by_features[0])["content"])
    assert steered[0].content == TARGET
    # A word at strength 0 suppresses its features and leaves the dense query where it was.
    suppressed = memory.search(vague, k=len(memory), steer={"music": 0.0})
    assert {h.id: h.dense_score for h in suppressed} == {h.id: h.dense_score for h in memory.search(vague, k=len(memory))}


def test_a_text_is_encoded_once_and_explain_ranks_a_steered_search_as_search_does(memory):
    calls = []
    original = memory.encoder.encode_query
    memory.encoder.encode_query = lambda text: calls.append(text) or original(text)
    try:
        hits = memory.search("Tell me something about me.", k=3, steer={"my new hobby with strings": 1.0})
    finally:
        memory.encoder.encode_query = original
    assert calls.count("my new hobby with strings") == 1  # its features and its dense move share one encoding
    for hit in hits:
        explained = memory.explain("Tell me something about me.", hit.id, steer={"my new hobby with strings": 1.0})
        assert (explained.rank, explained.score, explained.dense_score) == (hit.rank, hit.score, hit.dense_score)


def test_an_embedding_sae_moves_the_dense_query_once(encoder):
    import numpy as np

    emb = SAEMemory(Encoder(EncoderConfig(sae="minilm-emb-topk4k"), model=encoder.model))
    emb.add(CONVERSATION)
    q = emb.encoder.encode_query(QUESTION)
    along_decoder = emb.encoder.steer(q, emb.resolve_features({"music": 1.0})).dense[0]
    hit = emb.search(QUESTION, k=1, steer={"music": 1.0})[0]
    vector = emb.backend.vectors("default", [hit.id])[hit.id]
    assert hit.dense_score == pytest.approx(float(np.dot(along_decoder, vector)), abs=2e-2)  # stored vectors are int8
