"""saememory.encoders.sentences and EncoderConfig(split=...): each sentence embedded on its own, combined per message."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from saememory import Encoder, EncoderConfig
from saememory.arrays import rows_by_group, unit_rows
from saememory.encoders.sentences import MAX_PIECES, MIN_WORDS, split_sentences
from saememory.interpret.hygiene import visible_codes

MESSAGE = ("Can you suggest some scenic bike routes near me? By the way, my road bike has been running great "
           "since the tune-up on March 3rd.")


@pytest.mark.parametrize("text, pieces", [
    (MESSAGE, ["Can you suggest some scenic bike routes near me?",
               "By the way, my road bike has been running great since the tune-up on March 3rd."]),
    ("Thanks!", ["Thanks!"]),
    ("Hi Sam. I moved to Oslo last month!", ["Hi Sam. I moved to Oslo last month!"]),  # a short piece joins
    ("Dr. Lee says my blood pressure is fine now. Good news.", ["Dr. Lee says my blood pressure is fine now. Good news."]),
    ("Pi is 3.14 and e is 2.71 in my notes. The ratio is 1.5x.", ["Pi is 3.14 and e is 2.71 in my notes.", "The ratio is 1.5x."]),
    ("My list for today:\n- buy milk and eggs\n- call my sister Ana\nOk",
     ["My list for today:", "- buy milk and eggs", "- call my sister Ana\nOk"]),
    ('She said "we are moving to Lisbon." Then we packed everything up.',
     ['She said "we are moving to Lisbon."', "Then we packed everything up."]),
    ("   ", ["   "]),
    ("", [""]),
])
def test_split_sentences(text, pieces):
    assert split_sentences(text) == pieces


def test_a_long_run_of_end_marks_is_one_piece():
    # Matched from the run's first mark only: linear in the run (it was quadratic: 40,000 dots took 12 s).
    text = "." * 50_000 + " Then a sentence of words. " + "!?" * 20_000
    assert split_sentences(text) == [text.strip()]  # the runs are one word each: too short to stand alone


def test_split_keeps_every_word_in_order_and_caps_the_pieces():
    text = " ".join(f"This is sentence number {i}." for i in range(MAX_PIECES + 10))
    pieces = split_sentences(text)
    assert len(pieces) == MAX_PIECES
    assert " ".join(pieces).split() == text.split()  # nothing lost, nothing repeated
    assert all(len(p.split()) >= MIN_WORDS for p in pieces)


def test_rows_by_group_takes_the_max_or_the_mean_per_group():
    rows = sp.csr_matrix(np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.5], [0.0, 0.0, 4.0]], dtype=np.float32))
    groups = np.array([0, 0, 2])
    np.testing.assert_array_equal(rows_by_group(rows, groups, 3, "max").toarray(), [[3, 2, 1], [0, 0, 0], [0, 0, 4]])
    np.testing.assert_allclose(rows_by_group(rows, groups, 3, "mean").toarray(), [[1.5, 1, 0.75], [0, 0, 0], [0, 0, 4]])
    with pytest.raises(ValueError, match="'max' or 'mean'"):
        rows_by_group(rows, groups, 3, "sum")
    unit = unit_rows(sp.csr_matrix(np.array([[3.0, 4.0], [0.0, 0.0]])))
    np.testing.assert_allclose(unit.toarray(), [[0.6, 0.8], [0, 0]])


def test_a_message_is_the_mean_of_its_sentences_and_its_code_their_max(encoder):
    # Every feature kept (hygiene=False): the code is the max itself; hygiene then drops features from it.
    whole = Encoder(EncoderConfig(split="none", hygiene=False), model=encoder.model, sae=encoder.sae)
    pieces = whole.encode_documents(split_sentences(MESSAGE))
    raw = Encoder(EncoderConfig(hygiene=False), model=encoder.model, sae=encoder.sae)
    got = raw.encode_documents([MESSAGE, "My sister lives in Lisbon."])
    np.testing.assert_allclose(encoder.encode_documents([MESSAGE]).sparse.toarray(),
                               visible_codes(got.sparse[0], encoder.sae.hidden).toarray(), atol=1e-6)
    mean = pieces.dense.mean(axis=0)
    np.testing.assert_allclose(got.dense[0], mean / np.linalg.norm(mean), atol=1e-6)
    top = pieces.sparse.toarray().max(axis=0)
    np.testing.assert_allclose(got.sparse[0].toarray()[0], top / np.linalg.norm(top), atol=1e-6)
    # One sentence: exactly the whole message's vectors.
    single = whole.encode_documents(["My sister lives in Lisbon."])
    np.testing.assert_allclose(got.dense[1], single.dense[0], atol=1e-6)
    np.testing.assert_allclose(got.sparse[1].toarray(), single.sparse.toarray(), atol=1e-6)
    # A query is encoded whole.
    np.testing.assert_allclose(encoder.encode_query(MESSAGE).dense, whole.encode_query(MESSAGE).dense, atol=1e-6)


def test_peak_words_follow_the_sentence_codes(encoder):
    (words, peaks), = encoder.peak_words([MESSAGE])
    raw = Encoder(EncoderConfig(hygiene=False), model=encoder.model, sae=encoder.sae)
    assert set(peaks) == set(raw.encode_documents([MESSAGE]).sparse[0].indices.tolist())  # hidden features too
    assert set(encoder.encode_documents([MESSAGE]).sparse[0].indices.tolist()) < set(peaks)
    assert words == [w for piece in split_sentences(MESSAGE) for w in encoder.peak_words([piece])[0][0]]
    # Each feature's word lies in the sentence where its unit code is highest.
    pieces = Encoder(EncoderConfig(split="none", hygiene=False), model=encoder.model, sae=encoder.sae).encode_documents(
        split_sentences(MESSAGE)).sparse.toarray()
    first = len(encoder.peak_words([split_sentences(MESSAGE)[0]])[0][0])
    for feature, word in peaks.items():
        assert (word >= first) == (pieces[1, feature] > pieces[0, feature])


def test_a_long_message_is_no_longer_cut(encoder):
    long = " ".join(["I walked the dog in the park this morning."] * 30) + " My sister Ana lives in Lisbon."
    assert len(split_sentences(long)) == 31 <= MAX_PIECES
    whole = Encoder(EncoderConfig(split="none"), model=encoder.model, sae=encoder.sae)
    assert whole.encode_documents([long]).truncated[0] and not encoder.encode_documents([long]).truncated[0]
    query = encoder.encode_query("Where does my sister live?").dense[0]
    assert encoder.encode_documents([long]).dense[0] @ query > whole.encode_documents([long]).dense[0] @ query


def test_split_is_part_of_the_config_and_the_identity(encoder):
    assert EncoderConfig().split == "sentences" and encoder.identity()["split"] == "sentences"
    whole = Encoder(EncoderConfig(split="none"), model=encoder.model, sae=encoder.sae)
    assert "split" not in whole.identity()  # as saved before splitting existed
    assert EncoderConfig.from_dict({k: v for k, v in EncoderConfig().to_dict().items() if k != "split"}).split == "none"
    assert EncoderConfig.from_dict(EncoderConfig().to_dict()).split == "sentences"
    with pytest.raises(ValueError, match="split='words' is not one of"):
        EncoderConfig(split="words")


def test_max_content_keeps_a_message_free_of_its_function_word_sentences(encoder):
    # A sentence without a content word falls back to every token only when its whole message has
    # none, as a message encoded whole does; otherwise it adds no feature to the code.
    content = Encoder(EncoderConfig(pooling="max-content", hygiene=False), model=encoder.model, sae=encoder.sae)
    first = "My sister Ana moved to Lisbon last year."
    both = content.encode_documents([first + " And that is what it is for all of us.", first])
    np.testing.assert_allclose(both.sparse[0].toarray(), both.sparse[1].toarray(), atol=1e-6)
    assert not np.allclose(both.dense[0], both.dense[1])  # the dense mean still reads every sentence
    (words, peaks), = content.peak_words([first + " And that is what it is for all of us."])
    assert set(peaks) == set(both.sparse[0].indices.tolist()) and max(peaks.values()) < len(first.split()) + 2
    empty = content.encode_documents(["And that is what it is. It is what it is for us."])  # no content word at all
    assert empty.sparse.nnz > 0


def test_embedding_sae_reads_the_combined_vector(encoder):
    emb = Encoder(EncoderConfig(sae="minilm-emb-topk4k"), model=encoder.model)
    out = emb.encode_documents([MESSAGE])
    direct = emb._runner.dense(out.dense)
    np.testing.assert_allclose(out.sparse.toarray()[0], direct[0] / np.linalg.norm(direct[0]), atol=1e-5)


def test_a_document_prefix_is_listed_once_among_the_words(encoder):
    prefixed = Encoder(EncoderConfig(document_prefix="search_document: ", hygiene=False), model=encoder.model,
                       sae=encoder.sae)
    (words, peaks), = prefixed.peak_words([MESSAGE])
    assert words[:4] == ["search", "_", "document", ":"] and words.count("document") == 1
    assert words[4:] == [w for piece in split_sentences(MESSAGE) for w in encoder.peak_words([piece])[0][0]]
    assert set(peaks) == set(prefixed.encode_documents([MESSAGE]).sparse[0].indices.tolist())
    assert all(0 <= i < len(words) for i in peaks.values())
