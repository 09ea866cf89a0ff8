"""saememory.encoders.lm: the right block, BOS dropped, sae-lens parity, the Hub path, labels, cache, memory.

Everything runs offline on a 3-block Gemma with random weights, a WordLevel tokenizer that adds
BOS the Gemma way, and random SAEs written by sae-lens' own ``save_model``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from saememory import DEFAULT_MODEL, Encoder, SAEMemory, SparseAutoencoder
from saememory.encoders import EncoderProtocol, encoder_config
from saememory.encoders import sentence_transformer as encoder_module
from saememory.backends import snapshot
from saememory.encoders import lm as lm_encoder
from saememory.encoders.lm import (
    DENSE_PRESETS,
    SPARSE_PRESETS,
    LMEncoder,
    LMEncoderConfig,
    LMResidualEncoder,
    gemma_scope_encoder,
    load_lm_sae,
    neuronpedia_labels,
    poster_encoder,
)
from tests.helpers import CONVERSATION, PLANTED, QUESTION, save_sae_lens_sae

HIDDEN, LAYERS, D_SAE = 32, 3, 64
TEXTS = ["My sister lives in Lisbon.", "I bought a new tennis racket yesterday and it arrived today!", "Hello"]
NP_ID = "tiny-gemma/1-res-test"


@pytest.fixture(scope="module")
def tokenizer():
    """A Gemma-like tokenizer built offline: BOS added by the post-processor, <pad> for padding."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    corpus = " ".join([*TEXTS, QUESTION, *(m["content"] for m in CONVERSATION)])
    words = sorted(set(re.findall(r"\w+|[^\w\s]", corpus.lower())))
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def lm(tokenizer):
    from transformers import GemmaConfig, GemmaForCausalLM

    config = GemmaConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=128,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    torch.manual_seed(0)
    model = GemmaForCausalLM(config).eval()
    with torch.no_grad():  # larger embeddings than the init, so states and codes vary visibly
        model.model.embed_tokens.weight.normal_(0, 1.0)
    return model


def make_sae(path: Path, hook: str, architecture: str = "standard", d_in: int = HIDDEN, seed: int = 0) -> Path:
    """A random sae-lens SAE (its own save_model) reading ``hook``, with a Neuronpedia id."""
    save_sae_lens_sae(path, architecture, d_in=d_in, d_sae=D_SAE, k=8, seed=seed)
    cfg = json.loads((path / "cfg.json").read_text())
    cfg["metadata"].update(hook_name=hook, neuronpedia_id=NP_ID)
    (path / "cfg.json").write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory) -> Path:
    return make_sae(tmp_path_factory.mktemp("sae") / "l1", "blocks.1.hook_resid_post")


def residual(lm, tokenizer, path: Path, **kwargs) -> LMResidualEncoder:
    return LMResidualEncoder(lm, tokenizer, SparseAutoencoder.from_disk(path), **kwargs)


def full_states(lm, tokenizer, text: str) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], list[torch.Tensor]]:
    """Ids with BOS, every hidden_states entry, and each block's raw output, from a full forward."""
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    outputs: list[torch.Tensor] = []
    handles = [b.register_forward_hook(lambda m, a, o: outputs.append(o[0] if isinstance(o, tuple) else o))
               for b in lm_encoder.decoder_layers(lm)]
    with torch.no_grad():
        hidden = lm(input_ids=ids, output_hidden_states=True).hidden_states
    for h in handles:
        h.remove()
    return ids, hidden, outputs


def encoder_for(lm, tokenizer, sae_path: Path, cache_dir: Path | None = None, **config) -> LMEncoder:
    cfg = LMEncoderConfig(lm="tiny-gemma", sae_release=None, sae_id=str(sae_path), dense_model=DEFAULT_MODEL,
                          trust_remote_code=False, device="cpu", **config)
    return LMEncoder(cfg, lm=lm, tokenizer=tokenizer, cache_dir=cache_dir)


# The right states --------------------------------------------------------------------------------


@pytest.mark.parametrize(("hook", "expected"), [("blocks.1.hook_resid_post", 2), ("blocks.1.hook_resid_pre", 1),
                                                ("blocks.0.hook_resid_pre", 0)])
def test_reads_the_hooked_block_and_runs_nothing_after(lm, tokenizer, tmp_path, hook, expected):
    """resid_post of block L is hidden_states[L+1], resid_pre is hidden_states[L]; later blocks never run."""
    enc = residual(lm, tokenizer, make_sae(tmp_path / "sae", hook))
    ids, hidden, _ = full_states(lm, tokenizer, TEXTS[1])
    calls = {i: 0 for i in range(LAYERS)}
    handles = [b.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
               for i, b in enumerate(lm.model.layers)]
    try:
        got = enc.states(ids, torch.ones_like(ids))
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(got, hidden[expected])
    ran = enc.layer + 1 if enc.position == "post" else enc.layer
    assert calls == {i: int(i < ran) for i in range(LAYERS)}


def tiny_family(name: str, vocab_size: int):
    """A random 3-block causal LM of another family, hidden size 32."""
    import transformers as tf

    common = {"vocab_size": vocab_size, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}
    if name == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=HIDDEN, n_layer=LAYERS, n_head=2, n_positions=128, **common))
    cls, config = {"gemma2": (tf.Gemma2ForCausalLM, tf.Gemma2Config), "llama": (tf.LlamaForCausalLM, tf.LlamaConfig)}[name]
    return cls(config(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=16, max_position_embeddings=128, **common))


@pytest.mark.parametrize("family", ["gemma2", "llama", "gpt2"])
def test_other_families_read_the_same_block_in_batches(tokenizer, sae_dir, family):
    torch.manual_seed(1)
    model = tiny_family(family, len(tokenizer)).eval()
    enc = residual(model, tokenizer, sae_dir, batch_size=3)
    ids, hidden, _ = full_states(model, tokenizer, TEXTS[1])
    torch.testing.assert_close(enc.states(ids, torch.ones_like(ids)), hidden[2])
    single = residual(model, tokenizer, sae_dir, batch_size=1).encode(TEXTS)[0].toarray()
    np.testing.assert_allclose(enc.encode(TEXTS)[0].toarray(), single, atol=1e-5)


def test_local_sae_path_never_imports_sae_lens(sae_dir):
    """sae_lens takes ~10 s to import: only the Hub path may import it."""
    code = (
        "import sys, torch, transformers as tf; from saememory.encoders.lm import LMResidualEncoder, load_lm_sae; "
        "m = tf.GemmaForCausalLM(tf.GemmaConfig(vocab_size=8, hidden_size=32, intermediate_size=8, "
        "num_hidden_layers=2, num_attention_heads=1, num_key_value_heads=1, head_dim=8)); "
        f"LMResidualEncoder(m, None, load_lm_sae(None, {str(sae_dir)!r})); assert 'sae_lens' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_last_block_reads_its_raw_output_not_the_final_norm(lm, tokenizer, tmp_path):
    """transformers' last hidden_states entry is normed; TransformerLens' resid_post is not."""
    enc = residual(lm, tokenizer, make_sae(tmp_path / "sae", f"blocks.{LAYERS - 1}.hook_resid_post"))
    ids, hidden, outputs = full_states(lm, tokenizer, TEXTS[1])
    got = enc.states(ids, torch.ones_like(ids))
    torch.testing.assert_close(got, outputs[LAYERS - 1])
    assert not torch.allclose(got, hidden[LAYERS])


@pytest.mark.parametrize("architecture", ["standard", "jumprelu", "topk"])
@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_codes_equal_sae_lens_on_real_tokens_bos_dropped(lm, tokenizer, tmp_path, architecture, pooling):
    from sae_lens import SAE

    path = make_sae(tmp_path / "sae", "blocks.1.hook_resid_post", architecture)
    enc = residual(lm, tokenizer, path, pooling=pooling)
    ids, hidden, _ = full_states(lm, tokenizer, TEXTS[1])
    assert ids[0, 0].item() == tokenizer.bos_token_id and enc.tokenize([TEXTS[1]])[0][0] == ids[0].tolist()
    with torch.no_grad():
        codes = SAE.load_from_disk(path).encode(hidden[2][0])
    pool = (lambda c: c.max(dim=0).values) if pooling == "max" else (lambda c: c.mean(dim=0))
    expected = torch.nn.functional.normalize(pool(codes[1:]), dim=-1).numpy()  # BOS dropped
    with_bos = torch.nn.functional.normalize(pool(codes), dim=-1).numpy()
    got = enc.encode([TEXTS[1]])[0].toarray()[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose(got, with_bos, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(got), 1.0, atol=1e-5)


def test_length_batches_pad_right_and_keep_order(lm, tokenizer, sae_dir):
    one = residual(lm, tokenizer, sae_dir, batch_size=1).encode(TEXTS)[0].toarray()
    batched, truncated = residual(lm, tokenizer, sae_dir, batch_size=3).encode(TEXTS)
    np.testing.assert_allclose(batched.toarray(), one, atol=1e-5)
    assert not truncated.any() and len({tuple(r) for r in one.round(4)}) == 3


def test_long_text_is_cut_and_flagged(lm, tokenizer, sae_dir):
    enc = residual(lm, tokenizer, sae_dir, max_tokens=4)
    codes, truncated = enc.encode([TEXTS[1], "my sister lives"])
    assert truncated.tolist() == [True, False]
    cut = residual(lm, tokenizer, sae_dir).encode(["I bought a"])[0]
    np.testing.assert_allclose(codes[0].toarray(), cut.toarray(), atol=1e-5)


# Clear errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("hook", ["blocks.3.hook_resid_post", "blocks.1.hook_mlp_out", "hidden_states.2", None])
def test_hook_that_is_not_a_residual_hook_of_the_model_is_refused(lm, tokenizer, tmp_path, hook):
    with pytest.raises(ValueError, match=r"resid_post.*L in 0\.\.2"):
        residual(lm, tokenizer, make_sae(tmp_path / "sae", hook))


def test_width_mismatch_is_refused(lm, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="reads 16-d states.*hidden size 32"):
        residual(lm, tokenizer, make_sae(tmp_path / "sae", "blocks.1.hook_resid_post", d_in=16))


def test_model_without_blocks_is_refused():
    with pytest.raises(ValueError, match="Cannot find the transformer blocks of Linear"):
        lm_encoder.decoder_layers(torch.nn.Linear(2, 2))


def test_config_is_validated_and_round_trips():
    cfg = LMEncoderConfig.preset("gemma-scope-2b-l12", "nomic-v1.5", pooling="max")
    assert LMEncoderConfig.from_dict(cfg.to_dict()) == cfg
    for bad in ({"pooling": "sum"}, {"device": "tpu"}, {"dtype": "int8"}, {"batch_size": 0}, {"max_tokens": 1}):
        with pytest.raises(ValueError, match=re.escape(repr(next(iter(bad.values()))))):
            LMEncoderConfig(**bad)
    with pytest.raises(ValueError, match="Unknown preset 'nomic'"):
        LMEncoderConfig.preset(dense="nomic")
    with pytest.raises(ValueError, match="Unknown LM encoder settings"):
        LMEncoderConfig.from_dict({"layer": 12})


# The Hub path and the presets ----------------------------------------------------------------------


def test_presets_match_sae_lens_directory():
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    for preset in SPARSE_PRESETS.values():
        release = directory[preset["sae_release"]]
        assert preset["sae_id"] in release.saes_map
        assert release.neuronpedia_id[preset["sae_id"]] == preset["neuronpedia_id"]
        assert preset["lm"] == f"google/{release.model}"
    poster = LMEncoderConfig.preset()
    assert (poster.lm, poster.sae_release, poster.sae_id, poster.pooling) == (
        "google/gemma-2b-it", "gemma-2b-it-res-jb", "blocks.12.hook_resid_post", "mean")
    assert DENSE_PRESETS["nomic-v1"]["query_prefix"] == DENSE_PRESETS["nomic-v1"]["document_prefix"] == ""


@pytest.fixture
def recorded(monkeypatch, lm, tokenizer, sae_dir):
    """Records what the loaders are asked for; answers with the tiny LM, SAE and MiniLM."""
    import sae_lens

    calls: dict[str, tuple] = {}
    original = encoder_module.load_sentence_transformer

    def from_pretrained(release, sae_id, device="cpu", **kwargs):
        calls["sae"] = (release, sae_id, device)
        return sae_lens.SAE.load_from_disk(sae_dir)

    def load_causal_lm(name, device="cpu", dtype=torch.float32):
        calls["lm"] = (name, device, dtype)
        return lm, tokenizer

    def load_sentence_transformer(model, device="cpu", trust_remote_code=False):
        calls["dense"] = (model, device, trust_remote_code)
        return original(DEFAULT_MODEL)

    monkeypatch.setattr(sae_lens.SAE, "from_pretrained", from_pretrained)
    monkeypatch.setattr(lm_encoder, "load_causal_lm", load_causal_lm)
    monkeypatch.setattr(encoder_module, "load_sentence_transformer", load_sentence_transformer)
    return calls


def test_hub_sae_is_asked_for_release_and_id_and_converted(recorded, sae_dir, lm, tokenizer):
    sae = load_lm_sae("gemma-2b-it-res-jb", "blocks.12.hook_resid_post")
    assert recorded["sae"] == ("gemma-2b-it-res-jb", "blocks.12.hook_resid_post", "cpu")
    assert sae.name == "gemma-2b-it-res-jb/blocks.12.hook_resid_post"
    on_disk = SparseAutoencoder.from_disk(sae_dir)
    assert sae.sha256 == on_disk.sha256 and sae.cfg.metadata["neuronpedia_id"] == NP_ID
    x = torch.randn(5, HIDDEN)
    torch.testing.assert_close(sae.encode(x), on_disk.encode(x))


def test_poster_encoder_asks_for_the_poster_stack(recorded):
    enc = poster_encoder(device="cpu", dtype="float32")
    assert recorded["lm"] == ("google/gemma-2b-it", "cpu", torch.float32)
    assert recorded["sae"][:2] == ("gemma-2b-it-res-jb", "blocks.12.hook_resid_post")
    assert recorded["dense"] == ("nomic-ai/nomic-embed-text-v1", "cpu", True)
    assert enc.config.pooling == "mean" and enc.config.query_prefix == enc.config.document_prefix == ""
    assert enc.identity()["dense"]["model"] == "nomic-ai/nomic-embed-text-v1"


def test_gemma_scope_encoder_uses_nomic_prefixes(recorded):
    enc = gemma_scope_encoder(device="cpu", dtype="bfloat16")
    assert recorded["lm"] == ("google/gemma-2-2b", "cpu", torch.bfloat16)
    assert recorded["sae"][:2] == ("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical")
    assert recorded["dense"] == ("nomic-ai/nomic-embed-text-v1.5", "cpu", True)
    minilm = Encoder(encoder_module.EncoderConfig(sae=None, quantize=False))
    np.testing.assert_allclose(enc.encode_query("sister").dense,
                               minilm.encode_documents(["search_query: sister"]).dense, atol=1e-5)
    np.testing.assert_allclose(enc.encode_documents(["sister"]).dense,
                               minilm.encode_documents(["search_document: sister"]).dense, atol=1e-5)


# Labels ------------------------------------------------------------------------------------------


def write_export(path: Path) -> Path:
    records = [
        {"modelId": "tiny-gemma", "layer": "1-res-test", "index": "5", "description": " family members "},
        {"modelId": "tiny-gemma", "layer": "1-res-test", "index": "5", "description": "a later explanation"},
        {"modelId": "tiny-gemma", "layer": "1-res-test", "index": "7", "description": "cities in Europe"},
        {"modelId": "tiny-gemma", "layer": "2-res-test", "index": "9", "description": "another layer"},
        {"modelId": "other-model", "layer": "1-res-test", "index": "11", "description": "another model"},
    ]
    path.write_text(json.dumps(records))
    return path


def test_neuronpedia_labels_keep_only_this_saes_records(tmp_path):
    export = write_export(tmp_path / "export.json")
    assert neuronpedia_labels(export, NP_ID) == {5: "family members", 7: "cities in Europe"}
    with pytest.raises(ValueError, match=r"no record of 'gemma-2b-it/12-res-jb'.*tiny-gemma/1-res-test"):
        neuronpedia_labels(export, "gemma-2b-it/12-res-jb")
    with pytest.raises(ValueError, match="several SAEs; set LMEncoderConfig.neuronpedia_id"):
        neuronpedia_labels(export, None)
    with pytest.raises(ValueError, match="not '<modelId>/<layer>'"):
        neuronpedia_labels(export, "gemma-2b-it")
    plain = tmp_path / "plain.json"  # saememory's own layout carries no model: read as it is
    plain.write_text(json.dumps({"labels": {"3": "weather"}}))
    assert neuronpedia_labels(plain, NP_ID) == {3: "weather"}


def test_labels_attach_by_the_saes_neuronpedia_id(lm, tokenizer, sae_dir, tmp_path):
    enc = encoder_for(lm, tokenizer, sae_dir, labels=str(write_export(tmp_path / "export.json")))
    assert enc.sae.label(5) == "family members" and enc.sae.label(9) is None and enc.sae.label(11) is None


# Cache, memory, steering ---------------------------------------------------------------------------


def count_rows(lm) -> tuple[dict[str, int], object]:
    seen = {"rows": 0}
    handle = lm.model.layers[0].register_forward_hook(lambda m, a, o: seen.__setitem__("rows", seen["rows"] + a[0].shape[0]))
    return seen, handle


def test_cache_encodes_each_message_once(lm, tokenizer, sae_dir, tmp_path):
    seen, handle = count_rows(lm)
    try:
        enc = encoder_for(lm, tokenizer, sae_dir, cache_dir=tmp_path / "cache")
        # The dense side encodes whole messages, as the LM's sparse side reads them and as LM
        # memories were saved before sentence splitting: their identity has no "split".
        assert enc.dense.config.split == "none" and "split" not in enc.identity()["dense"]
        first = enc.encode_documents([TEXTS[0], TEXTS[1], TEXTS[0]])
        assert seen["rows"] == 2  # the repeated message was encoded once
        again = enc.encode_documents([TEXTS[1], TEXTS[0]])
        assert seen["rows"] == 2
        reopened = encoder_for(lm, tokenizer, sae_dir, cache_dir=tmp_path / "cache").encode_documents(TEXTS[:2])
        assert seen["rows"] == 2  # read back from the .npz files
        other = encoder_for(lm, tokenizer, sae_dir, cache_dir=tmp_path / "cache", pooling="max")
        other.encode_documents(TEXTS[:2])
        assert seen["rows"] == 4  # another identity, other codes
    finally:
        handle.remove()
    np.testing.assert_allclose(again.sparse.toarray(), first.sparse.toarray()[[1, 0]])
    np.testing.assert_allclose(reopened.dense, first.dense[:2])
    np.testing.assert_allclose(reopened.sparse.toarray(), first.sparse.toarray()[:2])
    uncached = residual(lm, tokenizer, sae_dir).encode(TEXTS[:2])[0].toarray()
    np.testing.assert_allclose(reopened.sparse.toarray(), uncached, atol=1e-6)


def test_memory_add_search_save_load_and_steer(lm, tokenizer, sae_dir, tmp_path):
    export = [{"modelId": "tiny-gemma", "layer": "1-res-test", "index": str(i), "description": f"topic {i}"}
              for i in range(D_SAE)]
    (tmp_path / "export.json").write_text(json.dumps(export))
    enc = encoder_for(lm, tokenizer, sae_dir, labels=str(tmp_path / "export.json"))
    assert isinstance(enc, EncoderProtocol) and encoder_config(enc) == {"type": "lm", **enc.config.to_dict()}
    memory = SAEMemory(enc)
    memory.add(CONVERSATION)
    hits = memory.search(QUESTION, k=3)
    assert len(hits) == 3 and all(h.features and h.shared_features for h in hits)
    assert all(f["label"] == f"topic {f['id']}" for h in hits for f in h.features + h.shared_features)
    expected = enc.encode_query(QUESTION)
    minilm = Encoder(encoder_module.EncoderConfig(sae=None)).encode_query(QUESTION)
    np.testing.assert_allclose(expected.dense, minilm.dense, atol=1e-6)
    planted = memory.explain(QUESTION, "planted")
    assert planted.content == PLANTED
    stored = memory.backend.fetch("default", ["planted"])[0][1]  # the code as stored: int8 steps of a row scale
    by_hand = (expected.sparse @ stored.T).toarray()[0, 0]
    assert planted.sparse_score == pytest.approx(float(by_hand), abs=1e-5)
    as_encoded = (expected.sparse @ enc.encode_documents([PLANTED]).sparse.T).toarray()[0, 0]
    assert by_hand == pytest.approx(float(as_encoded), abs=5e-3)

    memory.save(tmp_path / "mem")
    _, manifest = snapshot.read_manifest(tmp_path / "mem")
    assert manifest["encoder_config"] == encoder_config(enc) and manifest["encoder_config"]["type"] == "lm"
    loaded = SAEMemory.load(tmp_path / "mem", encoder=enc)
    assert [h.id for h in loaded.search(QUESTION, k=3)] == [h.id for h in hits]
    with pytest.raises(ValueError, match="another encoder: pooling"):
        SAEMemory.load(tmp_path / "mem", encoder=encoder_for(lm, tokenizer, sae_dir, pooling="max"))

    feature = planted.shared_features[0]["id"]  # the feature that adds most to the planted match
    steered = enc.steer(expected, {feature: 0.0})
    code = steered.sparse.toarray()[0]
    assert code[feature] == 0 and np.linalg.norm(code) == pytest.approx(1.0)
    np.testing.assert_allclose(steered.dense, expected.dense)
    suppressed = {h.id: h for h in memory.search(QUESTION, k=len(memory), steer={feature: 0.0})}["planted"]
    assert suppressed.sparse_score < planted.sparse_score
    assert feature not in [f["id"] for f in suppressed.shared_features]
    with pytest.raises(ValueError, match="outside 0..63"):
        enc.steer(expected, {D_SAE: 1.0})


def _put_many(folder: str, rounds: int) -> None:
    import scipy.sparse as sp

    from saememory.encoders.lm import CodeCache

    cache = CodeCache(Path(folder))
    for i in range(rounds):
        cache.put(f"key{i % 3}", np.ones(4, dtype=np.float32), sp.csr_matrix(np.eye(1, 8, dtype=np.float32)), False)


def test_processes_sharing_a_code_cache_folder_write_the_same_keys(tmp_path):
    """Two processes writing one key: each writes its own temporary file, so neither fails."""
    import multiprocessing

    from saememory.encoders.lm import CodeCache

    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_put_many, args=(str(tmp_path), 300)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key0.npz", "key1.npz", "key2.npz"]
    dense, code, truncated = CodeCache(tmp_path).get("key1")
    assert dense.tolist() == [1.0] * 4 and code.nnz == 1 and not truncated
