"""KronSAE (Kurochkin et al. 2025, arXiv 2505.22255) as a sae-lens architecture.

The encoder is factorised into ``h`` heads. Head ``k`` has ``P_k`` (m x d) and ``Q_k`` (n x d),
stored as one fused encoder matrix ``W_enc`` of width ``h * (m + n)`` plus a bias. With
``p = ReLU(P_k x)`` and ``q = ReLU(Q_k x)`` the latent ``z_{k,i,j} = mAND(p_i, q_j)`` is
``sqrt(p_i * q_j)`` when both are positive and 0 otherwise; the heads are concatenated
(``d_sae = h * m * n`` latents) and an ordinary TopK(k) keeps the largest. The decoder is an
ordinary dense ``d_sae x d`` matrix plus bias, initialised with row ``(k, i, j)`` equal to the
unit-normalised ``P_{k,i} + Q_{k,j}``.

The encoder costs ``d * h * (m + n)`` multiply-adds per vector instead of TopK's ``d * d_sae``.

Importing this module registers the architecture ``"kronsae"`` with sae-lens
(``register_sae_class`` / ``register_sae_training_class``), so ``SAETrainer`` trains it and
``SAE.load_from_disk`` reads it back. Encoding with saememory does not need this module (nor
sae_lens): ``saememory.sae.SparseAutoencoder`` reads KronSAE directories (numpy weights, encoded in torch).

Like sae-lens' TopK, training ranks latents after scaling them by their decoder row norms
(``rescale_acts_by_decoder_norm``); because the encoder is factorised, that scale cannot be
folded into it, so the saved ``cfg.json`` keeps the flag and inference applies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from sae_lens import register_sae_class, register_sae_training_class
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.sae import TrainingSAE
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
from torch import nn
from typing_extensions import override

from saememory.sae import check_kron_shape, kron_latents

ARCHITECTURE = "kronsae"


def encoder_flops(architecture: str, d_in: int, d_sae: int, h: int = 0, m: int = 0, n: int = 0) -> int:
    """Multiply-adds of the encoder matrix product per vector (biases, mAND and TopK excluded).

    Args:
        architecture: ``"topk"`` (``d_in * d_sae``) or ``"kronsae"`` (``d_in * h * (m + n)``).
        d_in: Input width.
        d_sae: Dictionary size.
        h: KronSAE heads. Defaults to 0 (unused for TopK).
        m: KronSAE rows of P per head. Defaults to 0.
        n: KronSAE rows of Q per head. Defaults to 0.

    Raises:
        ValueError: For another architecture, or KronSAE shapes with ``h * m * n != d_sae``.
    """
    if architecture == "topk":
        return d_in * d_sae
    if architecture == ARCHITECTURE:
        check_kron_shape(d_sae, h, m, n)
        return d_in * h * (m + n)
    raise ValueError(f"architecture must be 'topk' or 'kronsae', got {architecture!r}.")


def parameter_count(architecture: str, d_in: int, d_sae: int, h: int = 0, m: int = 0, n: int = 0) -> int:
    """Trainable parameters: encoder matrix and bias, decoder matrix and bias.

    Args:
        architecture: ``"topk"`` or ``"kronsae"``.
        d_in: Input width.
        d_sae: Dictionary size.
        h: KronSAE heads. Defaults to 0 (unused for TopK).
        m: KronSAE rows of P per head. Defaults to 0.
        n: KronSAE rows of Q per head. Defaults to 0.
    """
    width = encoder_flops(architecture, d_in, d_sae, h, m, n) // d_in
    return d_in * width + width + d_sae * d_in + d_in


@dataclass
class _KronShape:
    """``h``, ``m``, ``n`` and the ``d_sae == h * m * n`` check, shared by both KronSAE configs."""

    h: int = 1
    m: int = 2
    n: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()  # the sae-lens TopK config's own checks
        check_kron_shape(self.d_sae, self.h, self.m, self.n)

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


@dataclass
class KronSAEConfig(_KronShape, TopKSAEConfig):
    """Inference config of a KronSAE; ``d_sae`` must equal ``h * m * n``.

    Args:
        h: Heads. Defaults to 1.
        m: Rows of P per head (the paper's guideline: start at m = 2). Defaults to 2.
        n: Rows of Q per head. Defaults to 2.
        k: Latents kept by TopK (inherited). Defaults to 100.
    """


@dataclass
class KronSAETrainingConfig(_KronShape, TopKTrainingSAEConfig):
    """Training config of a KronSAE: sae-lens' TopK training config plus ``h``, ``m``, ``n``.

    Args:
        h: Heads. Defaults to 1.
        m: Rows of P per head. Defaults to 2.
        n: Rows of Q per head. Defaults to 2.
        decoder_init_norm: Norm of each encoder row (P and Q) at initialisation; decoder rows
            start at unit norm whatever it is. Defaults to 0.1 (inherited).
    """


def _kron_encode(sae: Any, x: torch.Tensor) -> torch.Tensor:
    """Latents before TopK, scaled by decoder norms when the config asks for it."""
    sae_in = sae.process_sae_in(x)
    pre = sae.hook_sae_acts_pre(sae_in @ sae.W_enc + sae.b_enc)
    hidden = kron_latents(pre, sae.cfg.h, sae.cfg.m, sae.cfg.n)
    if sae.cfg.rescale_acts_by_decoder_norm:
        hidden = hidden * sae.W_dec.norm(dim=-1)
    return hidden


def _init_kron_weights(sae: Any, encoder_row_norm: float) -> None:
    """Random P and Q rows of norm ``encoder_row_norm``; decoder rows = normalised P + Q sums."""
    cfg = sae.cfg
    width = cfg.h * (cfg.m + cfg.n)
    kwargs = {"dtype": sae.dtype, "device": sae.device}
    w_enc = torch.randn(cfg.d_in, width, **kwargs)
    if w_enc.device.type != "meta":
        w_enc = w_enc / w_enc.norm(dim=0, keepdim=True) * encoder_row_norm
    sae.W_enc = nn.Parameter(w_enc)
    sae.b_enc = nn.Parameter(torch.zeros(width, **kwargs))
    sae.b_dec = nn.Parameter(torch.zeros(cfg.d_in, **kwargs))
    sae.W_dec = nn.Parameter(kron_decoder_init(w_enc, cfg.h, cfg.m, cfg.n))


def kron_decoder_init(w_enc: torch.Tensor, h: int, m: int, n: int) -> torch.Tensor:
    """Decoder rows ``(k, i, j)`` = unit-normalised ``P_{k,i} + Q_{k,j}``, shape (h*m*n, d_in).

    Args:
        w_enc: (d_in, h * (m + n)) fused encoder, laid out as in ``kron_latents``.
        h: Heads.
        m: Rows of P per head.
        n: Rows of Q per head.
    """
    rows = w_enc.T.reshape(h, m + n, -1)
    p, q = rows[:, :m], rows[:, m:]
    sums = (p.unsqueeze(2) + q.unsqueeze(1)).reshape(h * m * n, -1)
    if sums.device.type == "meta":
        return sums
    return (sums / sums.norm(dim=-1, keepdim=True).clamp_min(1e-12)).contiguous()


class KronSAE(TopKSAE):
    """Inference-only KronSAE for sae-lens (``SAE.load_from_disk`` builds it from ``cfg.json``)."""

    cfg: KronSAEConfig  # type: ignore[assignment]

    @override
    def initialize_weights(self) -> None:
        _init_kron_weights(self, 0.1)

    @override
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_sae_acts_post(self.activation_fn(_kron_encode(self, x)))

    @override
    def fold_W_dec_norm(self) -> None:
        raise NotImplementedError("A KronSAE's factorised encoder cannot absorb decoder norms.")


class KronTrainingSAE(TopKTrainingSAE):
    """KronSAE for sae-lens' ``SAETrainer``: TopK training (with its dead-latent aux loss)."""

    cfg: KronSAETrainingConfig  # type: ignore[assignment]

    @override
    def initialize_weights(self) -> None:
        _init_kron_weights(self, self.cfg.decoder_init_norm or 0.1)

    @override
    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_pre = _kron_encode(self, x)
        return self.hook_sae_acts_post(self.activation_fn(hidden_pre)), hidden_pre

    @override
    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        # Skip TopK's norm folding: it would rescale W_enc columns that are not latents.
        TrainingSAE.process_state_dict_for_saving_inference(self, state_dict)

    @override
    def fold_W_dec_norm(self) -> None:
        raise NotImplementedError("A KronSAE's factorised encoder cannot absorb decoder norms.")


if ARCHITECTURE not in SAE_CLASS_REGISTRY:
    register_sae_class(ARCHITECTURE, KronSAE, KronSAEConfig)
if ARCHITECTURE not in SAE_TRAINING_CLASS_REGISTRY:
    register_sae_training_class(ARCHITECTURE, KronTrainingSAE, KronSAETrainingConfig)
