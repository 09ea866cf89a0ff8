"""saememory.kronsae: mAND, shapes, FLOPs, decoder init, and torch inference equals sae-lens'."""

from __future__ import annotations

import json

import pytest
import torch

from saememory.sae import SAEConfig, SparseAutoencoder, kron_latents, mand


def test_mand_on_hand_made_inputs():
    p = torch.tensor([4.0, 2.0, 0.0, -1.0, 3.0, -2.0])
    q = torch.tensor([9.0, 8.0, 5.0, 5.0, 0.0, -3.0])
    assert mand(p, q).tolist() == [6.0, 4.0, 0.0, 0.0, 0.0, 0.0]


def test_mand_gradients_are_finite_at_zero():
    p = torch.tensor([0.0, 1e-20, 4.0], requires_grad=True)
    q = torch.tensor([1.0, 1.0, 0.0], requires_grad=True)
    mand(p, q).sum().backward()
    assert torch.isfinite(p.grad).all() and torch.isfinite(q.grad).all()


def test_kron_latents_layout():
    h, m, n = 3, 2, 4
    pre = torch.randn(5, h * (m + n))
    z = kron_latents(pre, h, m, n)
    assert z.shape == (5, h * m * n)
    heads = pre.reshape(5, h, m + n).relu()
    for k, i, j in [(0, 0, 0), (1, 1, 3), (2, 0, 2)]:
        expected = (heads[:, k, i] * heads[:, k, m + j]).sqrt()
        assert torch.allclose(z[:, k * m * n + i * n + j], expected)


def test_flops_and_parameters():
    from saememory.kronsae import encoder_flops, parameter_count

    assert encoder_flops("topk", 384, 4096) == 384 * 4096
    assert encoder_flops("kronsae", 384, 4096, h=256, m=4, n=4) == 384 * 4096 // 2
    assert encoder_flops("kronsae", 384, 4096, h=64, m=8, n=8) == 384 * 4096 // 4
    assert parameter_count("topk", 384, 4096) == 2 * 384 * 4096 + 4096 + 384
    assert parameter_count("kronsae", 384, 4096, h=256, m=2, n=8) == 384 * 2560 + 2560 + 4096 * 384 + 384
    with pytest.raises(ValueError, match="d_sae"):
        encoder_flops("kronsae", 384, 4096, h=3, m=2, n=8)
    with pytest.raises(ValueError, match="'topk' or 'kronsae'"):
        encoder_flops("gated", 384, 4096)


def test_training_sae_shapes_and_decoder_init():
    from saememory.kronsae import KronSAETrainingConfig, KronTrainingSAE

    h, m, n, d = 4, 2, 3, 16
    sae = KronTrainingSAE(KronSAETrainingConfig(d_in=d, d_sae=h * m * n, k=5, h=h, m=m, n=n))
    assert sae.W_enc.shape == (d, h * (m + n)) and sae.b_enc.shape == (h * (m + n),)
    assert sae.W_dec.shape == (h * m * n, d)
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(h * m * n), atol=1e-5)
    rows = sae.W_enc.T.reshape(h, m + n, d)
    for k, i, j in [(0, 0, 0), (3, 1, 2), (2, 1, 0)]:
        expected = rows[k, i] + rows[k, m + j]
        assert torch.allclose(sae.W_dec[k * m * n + i * n + j], expected / expected.norm(), atol=1e-6)
    z = sae.encode(torch.randn(7, d))
    assert z.shape == (7, h * m * n) and int((z > 0).sum(-1).max()) <= 5


def test_config_rules():
    from saememory.kronsae import KronSAETrainingConfig

    with pytest.raises(ValueError, match="h \\* m \\* n"):
        KronSAETrainingConfig(d_in=8, d_sae=30, k=2, h=2, m=2, n=8)
    with pytest.raises(ValueError, match="positive integers"):
        SAEConfig(d_in=8, d_sae=16, architecture="kronsae", k=2)
    cfg = SAEConfig(d_in=8, d_sae=16, architecture="kronsae", k=2, h=2, m=2, n=4)
    assert cfg.encoder_width == 12 and SAEConfig.from_dict(cfg.to_dict()) == cfg


def test_torch_inference_equals_sae_lens_after_save_and_load(tmp_path):
    from sae_lens import SAE

    from saememory.kronsae import KronSAE, KronSAETrainingConfig, KronTrainingSAE

    torch.manual_seed(0)
    h, m, n, d = 8, 2, 4, 16
    sae = KronTrainingSAE(KronSAETrainingConfig(d_in=d, d_sae=h * m * n, k=6, h=h, m=m, n=n))
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.b_enc.normal_(std=0.3)
        sae.b_dec.normal_(std=0.3)
        sae.W_dec.mul_(torch.rand(h * m * n, 1) + 0.5)  # decoder norms away from 1: rescaling matters
    sae.cfg.metadata.hook_name = "sentence_embedding"
    sae.save_inference_model(tmp_path)
    assert json.loads((tmp_path / "cfg.json").read_text())["architecture"] == "kronsae"
    theirs = SAE.load_from_disk(str(tmp_path))
    ours = SparseAutoencoder.from_disk(tmp_path)
    assert isinstance(theirs, KronSAE)
    x = torch.randn(40, d)
    with torch.no_grad():
        expected = theirs.encode(x)
        assert torch.allclose(expected, sae.encode(x), atol=1e-5)
        assert torch.allclose(ours.encode(x), expected, atol=1e-5)
        assert torch.allclose(ours.decode(expected), theirs.decode(expected), atol=1e-5)
    assert int((expected > 0).sum(-1).min()) > 0  # not a comparison of zero tensors
