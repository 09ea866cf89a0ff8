"""saememory.encoders.onnx: the ONNX runtime gives sentence-transformers' vectors and codes, starts lean,
and its cache of exported models survives kills, races and damage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from saememory import Encoder, EncoderConfig, SparseAutoencoder
from saememory.encoders import onnx
from saememory.encoders.onnx import SAERunner, pool
from saememory.encoders.sentence_transformer import OnnxModel, load_sentence_transformer
from saememory.sae import SAEConfig
from tests.helpers import save_sae_lens_sae

TEXTS = ["I adopted a dog named Max last week.", "hi", "", "My sister lives in Denver; she's a nurse.",
         "word " * 400, "What breed is your dog? \u00e9t\u00e9 \U0001f436 [UNK]"]


@pytest.fixture(scope="module")
def torch_model():
    return load_sentence_transformer("sentence-transformers/all-MiniLM-L6-v2")


def test_default_encoder_runs_on_onnx(encoder):
    assert isinstance(encoder.model, OnnxModel) and encoder.config.uses_onnx


@pytest.mark.parametrize("sae", ["minilm-l4-res-topk4k", "minilm-emb-topk4k", None])
@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_both_runtimes_give_the_same_vectors_and_codes(encoder, torch_model, sae, pooling):
    config = EncoderConfig(sae=sae, pooling=pooling)
    lean = Encoder(config, model=encoder.model)
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
    assert not EncoderConfig(model="some/other-model").uses_onnx
    assert not EncoderConfig(device="cuda").uses_onnx
    old = {key: value for key, value in EncoderConfig().to_dict().items() if key not in ("runtime", "threads", "quantize")}
    assert EncoderConfig.from_dict(old).uses_onnx  # configs saved before the runtimes existed load on ONNX


def test_export_is_atomic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv(onnx.CACHE_ENV, str(tmp_path / "cache"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    calls = []

    def failing(path, out):
        Path(out).write_bytes(b"half a model")
        raise KeyboardInterrupt  # killed mid-export

    monkeypatch.setattr(onnx, "_export", failing)
    with pytest.raises(KeyboardInterrupt):
        onnx.exported(model)
    assert list((tmp_path / "cache" / "onnx").iterdir()) == []  # nothing half-written is left behind

    def working(path, out):
        calls.append(path)
        Path(out).write_bytes(b"a model")

    monkeypatch.setattr(onnx, "_export", working)
    first = onnx.exported(model)
    assert first.read_bytes() == b"a model" and onnx.exported(model) == first and len(calls) == 1
    (model / "model.safetensors").write_bytes(b"other weights")
    assert onnx.exported(model) != first and len(calls) == 2  # other weights, another file


def test_a_damaged_cached_model_says_which_file_to_delete(tmp_path, monkeypatch, encoder):
    monkeypatch.setenv(onnx.CACHE_ENV, str(tmp_path))
    source = encoder.model.path
    digest = onnx._sha256(source / "model.safetensors")[:16]
    damaged = tmp_path / "onnx" / f"{digest}-v{onnx.EXPORT_VERSION}.onnx"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"not an onnx model")
    with pytest.raises(RuntimeError, match="Delete the file") as info:
        OnnxModel(source)
    assert str(damaged) in str(info.value)


def test_a_model_of_another_shape_is_refused(tmp_path):
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(json.dumps([{"type": "sentence_transformers.models.Transformer"},
                                                       {"type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    with pytest.raises(ValueError, match="runtime='torch'"):
        OnnxModel(tmp_path)


def test_quantised_model_is_close_and_says_so(encoder):
    quantised = Encoder(EncoderConfig(quantize=True), sae=encoder.sae)
    a, b = quantised.encode_documents(TEXTS[:4]), encoder.encode_documents(TEXTS[:4])
    cosines = (a.dense * b.dense).sum(axis=1)
    assert cosines.min() > 0.95 and not np.allclose(a.dense, b.dense, atol=1e-4)
    assert quantised.identity()["quantized"] == "int8" and "quantized" not in encoder.identity()
