"""saememory.encoders.onnx: the ONNX runtime gives sentence-transformers' vectors and codes, starts lean,
and its cache of exported models survives kills, races and damage."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from saememory import Encoder, EncoderConfig, SparseAutoencoder
from saememory.encoders import onnx
from saememory.encoders.onnx import SAERunner, pool
from saememory.encoders.sentence_transformer import (
    OnnxModel,
    load_onnx_model,
    load_sentence_transformer,
)
from saememory.sae import SAEConfig

from tests.helpers import save_sae_lens_sae

TEXTS = ["I adopted a dog named Max last week.", "hi", "", "My sister lives in Denver; she's a nurse.",
         "word " * 400, "What breed is your dog? \u00e9t\u00e9 \U0001f436 [UNK]"]


@pytest.fixture(scope="module")
def torch_model():
    return load_sentence_transformer("sentence-transformers/all-MiniLM-L6-v2")


def test_default_encoder_runs_int8_on_onnx(encoder):
    assert isinstance(encoder.model, OnnxModel) and encoder.config.uses_onnx and encoder.config.int8
    assert encoder.model.quantize and encoder.identity()["quantized"] == "int8"


@pytest.mark.parametrize("sae", ["minilm-l4-res-topk4k", "minilm-emb-topk4k", None])
@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_both_runtimes_give_the_same_vectors_and_codes(torch_model, sae, pooling):
    config = EncoderConfig(sae=sae, pooling=pooling, quantize=False)
    lean = Encoder(config, model=load_onnx_model(1, False))
    full = Encoder(EncoderConfig(sae=sae, pooling=pooling, runtime="torch"), model=torch_model)
    a, b = lean.encode_documents(TEXTS), full.encode_documents(TEXTS)
    np.testing.assert_allclose(a.dense, b.dense, atol=1e-5)
    np.testing.assert_allclose(a.sparse.toarray(), b.sparse.toarray(), atol=1e-5)
    assert a.truncated.tolist() == b.truncated.tolist() == [False, False, False, False, True, False]
    assert lean.identity() == full.identity()  # a memory saved by one loads with the other
    if sae == "minilm-l4-res-topk4k" and pooling == "max":
        assert lean.peak_words(TEXTS) == full.peak_words(TEXTS)


@pytest.mark.parametrize("architecture", ["topk", "standard", "jumprelu"])
def test_sae_runner_equals_the_torch_encode(tmp_path, architecture):
    sae = SparseAutoencoder.from_disk(save_sae_lens_sae(tmp_path / architecture, architecture))
    x = np.random.default_rng(0).normal(size=(50, sae.cfg.d_in)).astype(np.float32)
    expected = sae.encode(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(SAERunner(sae).dense(x), expected, atol=1e-5)
    assert SAERunner(sae).dense(x[:0]).shape == (0, sae.cfg.d_sae)


def test_sae_runner_takes_kronsae_through_torch():
    cfg = SAEConfig(d_in=8, d_sae=12, architecture="kronsae", k=3, h=1, m=3, n=4)
    generator = torch.Generator().manual_seed(0)
    weights = {"W_enc": torch.randn(8, 7, generator=generator), "b_enc": torch.zeros(7),
               "W_dec": torch.randn(12, 8, generator=generator), "b_dec": torch.zeros(8)}
    sae = SparseAutoencoder(cfg, weights)
    x = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)
    np.testing.assert_allclose(SAERunner(sae).dense(x), sae.encode(torch.from_numpy(x)).numpy(), atol=1e-6)


def test_pool_matches_a_dense_reduction():
    rng = np.random.default_rng(2)
    values = rng.random((7, 3)).astype(np.float32)
    indices = np.array([rng.choice(10, 3, replace=False) for _ in range(7)])
    owner = np.array([0, 0, 0, 2, 2, 3, 3])  # text 1 has no token
    dense = np.zeros((7, 10), np.float32)
    np.put_along_axis(dense, indices, values, axis=1)
    for pooling, reduce in (("max", np.max), ("mean", np.mean)):
        expected = np.zeros((4, 10), np.float32)
        for text in (0, 2, 3):
            expected[text] = reduce(dense[owner == text], axis=0)
        np.testing.assert_allclose(pool(values, indices, owner, 4, 10, pooling), expected, atol=1e-6)
        np.testing.assert_allclose(pool(dense, None, owner, 4, 10, pooling), expected, atol=1e-6)


def test_a_fresh_process_never_imports_torch_or_sentence_transformers():
    script = (
        "import sys\n"
        "from saememory import SAEMemory\n"
        "memory = SAEMemory()\n"
        "memory.add([{'id': 'a', 'content': 'My dog is called Max.', 'user_id': 'u'}])\n"
        "assert memory.search('dog name', user_id='u')\n"
        "print(sorted(m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_config_rules():
    with pytest.raises(ValueError, match="runtime"):
        EncoderConfig(runtime="tensorflow")
    with pytest.raises(ValueError, match="threads"):
        EncoderConfig(threads=0)
    with pytest.raises(ValueError, match="threads"):
        EncoderConfig(threads=True)
    with pytest.raises(ValueError, match="bundled"):
        EncoderConfig(model="nomic-ai/nomic-embed-text-v1.5", runtime="onnx")
    with pytest.raises(ValueError, match="quantize"):
        EncoderConfig(runtime="torch", quantize=True)
    with pytest.raises(ValueError, match="quantize"):
        EncoderConfig(quantize="yes")
    with pytest.raises(ValueError, match="quantize"):
        EncoderConfig(quantize=np.True_)  # would not save as JSON
    with pytest.raises(ValueError, match="threads"):
        EncoderConfig(threads=10**6)
    with pytest.raises(ValueError, match="CPU"):
        EncoderConfig(runtime="onnx", device="cuda")
    assert not EncoderConfig(model="some/other-model").uses_onnx and not EncoderConfig(model="some/other-model").int8
    assert not EncoderConfig(device="cuda").uses_onnx and not EncoderConfig(runtime="torch").int8
    assert EncoderConfig().int8 and not EncoderConfig(quantize=False).int8
    assert EncoderConfig.from_dict(EncoderConfig().to_dict()) == EncoderConfig()
    old = {key: value for key, value in EncoderConfig().to_dict().items() if key not in ("runtime", "threads", "quantize")}
    restored = EncoderConfig.from_dict(old)  # saved before the runtimes existed: ONNX, full precision as then
    assert restored.uses_onnx and not restored.int8


def tiny_export(path, out):
    """A stand-in for the real export: a one-matmul ONNX model, quick to write and to quantise."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])], [weight])
    Path(out).write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


@pytest.fixture
def model_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(onnx.CACHE_ENV, str(tmp_path / "cache"))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "config.json").write_text("{}")
    return folder


def test_export_is_atomic_and_cached(model_folder, monkeypatch, tmp_path):
    calls = []

    def failing(path, out):
        Path(out).write_bytes(b"half a model")
        raise KeyboardInterrupt  # killed mid-export

    monkeypatch.setattr(onnx, "_export", failing)
    with pytest.raises(KeyboardInterrupt):
        onnx.exported(model_folder)
    assert [p.name for p in (tmp_path / "cache" / "onnx").iterdir()] == [".lock"]  # nothing half-written is left

    def working(path, out):
        calls.append(path)
        Path(out).write_bytes(b"a model")

    monkeypatch.setattr(onnx, "_export", working)
    first = onnx.exported(model_folder)
    assert first.read_bytes() == b"a model" and onnx.exported(model_folder) == first and len(calls) == 1
    onnx._check_sha256(first)
    (model_folder / "config.json").write_text('{"num_hidden_layers": 3}')
    assert onnx.exported(model_folder) != first and len(calls) == 2  # another model, another file


def test_processes_exporting_at_once_take_turns(model_folder, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    calls = []

    def slow(path, out):
        calls.append(path)
        time.sleep(0.3)
        tiny_export(path, out)

    monkeypatch.setattr(onnx, "_export", slow)
    with ThreadPoolExecutor(4) as pool:  # separate lock handles, as separate processes have
        paths = list(pool.map(lambda quantize: onnx.exported(model_folder, quantize), [True, True, False, True]))
    assert len(calls) == 1 and len({p for p in paths if p.name.endswith("-int8.onnx")}) == 1
    for path in set(paths):
        onnx._check_sha256(path)
    leftovers = [p.name for p in paths[0].parent.iterdir() if p.suffix not in (".onnx", ".sha256") and p.name != ".lock"]
    assert leftovers == []


def test_cached_models_are_readable_by_others(model_folder, monkeypatch):
    monkeypatch.setattr(onnx, "_export", tiny_export)
    old = os.umask(0o022)
    try:
        path = onnx.exported(model_folder)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_changed_cached_model_is_refused(model_folder, monkeypatch):
    monkeypatch.setattr(onnx, "_export", tiny_export)
    path = onnx.exported(model_folder)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # a flipped byte in a weight still parses, and would drift every vector
    path.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="does not match its sha256"):
        onnx._check_sha256(path)


def test_an_unwritable_cache_names_the_setting(tmp_path, monkeypatch, model_folder):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(onnx.CACHE_ENV, str(blocker))
    with pytest.raises(OSError, match="SAEMEMORY_CACHE"):
        onnx.exported(model_folder)


def test_a_damaged_cached_model_says_which_file_to_delete(tmp_path, monkeypatch, encoder):
    monkeypatch.setenv(onnx.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(onnx, "_export", lambda path, out: Path(out).write_bytes(b"not an onnx model"))
    with pytest.raises(RuntimeError, match="Delete the file") as info:
        OnnxModel(encoder.model.path, quantize=False)
    assert str(tmp_path) in str(info.value)


def test_a_model_of_another_shape_is_refused(tmp_path):
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(json.dumps([{"type": "sentence_transformers.models.Transformer"},
                                                       {"type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    with pytest.raises(ValueError, match="runtime='torch'"):
        OnnxModel(tmp_path)


def test_a_model_and_config_that_disagree_are_refused(encoder):
    with pytest.raises(ValueError, match="quantize"):
        Encoder(EncoderConfig(quantize=False), model=encoder.model, sae=encoder.sae)


def test_quantised_model_is_close_and_says_so(encoder):
    full = Encoder(EncoderConfig(quantize=False), sae=encoder.sae)
    a, b = encoder.encode_documents(TEXTS[:4]), full.encode_documents(TEXTS[:4])
    cosines = (a.dense * b.dense).sum(axis=1)
    assert cosines.min() > 0.95 and not np.allclose(a.dense, b.dense, atol=1e-4)
    assert encoder.identity()["quantized"] == "int8" and "quantized" not in full.identity()


def test_a_memory_saved_at_full_precision_loads_at_full_precision(tmp_path, encoder):
    from saememory import SAEMemory

    old = SAEMemory(Encoder(EncoderConfig(quantize=False), sae=encoder.sae))
    old.add([{"id": "a", "content": "My dog is called Max.", "user_id": "u"}])
    old.save(tmp_path / "memory")
    manifest = json.loads(next((tmp_path / "memory").rglob("manifest.json")).read_text())
    manifest["encoder_config"].pop("quantize")  # as a save from before int8 existed
    assert EncoderConfig.from_dict({k: v for k, v in manifest["encoder_config"].items() if k != "type"}).int8 is False
    loaded = SAEMemory.load(tmp_path / "memory")
    assert not loaded.encoder.config.int8 and loaded.search("dog", user_id="u")[0].id == "a"


def test_a_memory_on_sentence_transformers_ranks_as_the_onnx_one_does(torch_model):
    from saememory import SAEMemory
    from tests.helpers import CONVERSATION, QUESTION

    lean = SAEMemory(Encoder(EncoderConfig(quantize=False)))
    full = SAEMemory(Encoder(EncoderConfig(runtime="torch"), model=torch_model))
    for memory in (lean, full):
        memory.add(CONVERSATION)
    a, b = lean.search(QUESTION, k=5), full.search(QUESTION, k=5)
    assert [h.content for h in a] == [h.content for h in b]  # ids are drawn at random where none is given
    assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)


def test_a_sentence_transformers_model_needs_the_torch_runtime_in_its_config(encoder, torch_model):
    with pytest.raises(ValueError, match="runtime='torch'"):
        Encoder(EncoderConfig(), model=torch_model, sae=encoder.sae)


def test_loading_with_the_other_precision_says_how(tmp_path, encoder):
    from saememory import SAEMemory

    memory = SAEMemory(encoder)
    memory.add([{"id": "a", "content": "My dog is called Max.", "user_id": "u"}])
    memory.save(tmp_path / "memory")
    with pytest.raises(ValueError, match=r"quantize=True"):
        SAEMemory.load(tmp_path / "memory", encoder=Encoder(EncoderConfig(quantize=False), sae=encoder.sae))
    assert SAEMemory.load(tmp_path / "memory").search("dog", user_id="u")[0].id == "a"
