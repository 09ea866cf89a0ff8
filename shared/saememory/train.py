"""Train a TopK SAE or a KronSAE for the encoder, with sae-lens, on your own messages.

Usage::

    python -m saememory.train --corpus chat.jsonl.gz --source residual --layer 4 --out my-sae
    python -m saememory.train --corpus chat.jsonl.gz --out my-kronsae --architecture kronsae --m 2 --n 8

The result is a directory in sae-lens' format (``cfg.json`` + ``sae_weights.safetensors``) with a
model card (``model_card.md`` and ``card.json``: data, layer, d_sae, k, held-out explained
variance, L0, dead and dense fractions, reconstruction cosine and, for the embedding source, how
well nearest neighbours survive the reconstruction); pass it as ``EncoderConfig(sae=...)``. The
shipped SAEs were made by ``benchmarks/train_default_saes.sh`` with this module.

Every ``--checkpoint-every`` steps the SAE, the Adam and learning-rate scheduler state and the
dead-latent counters are saved to ``<out>/checkpoint/<step>/`` (only the newest is kept);
``--resume`` continues from there with the same settings (checked) and the same batch order, so
an interrupted run ends with the weights an uninterrupted one would have had. The checkpoint is
removed once the SAE is saved.

sae_lens is imported only inside the training functions: it is slow to import and not needed
to encode.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import random
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np
import torch

from saememory.config import DictConfig
from saememory.encoders.sentence_transformer import DEFAULT_MODEL, Encoder, EncoderConfig
from saememory.eval import longmemeval
from saememory.sae import check_kron_shape

logger = logging.getLogger(__name__)
SOURCES = ("residual", "embedding")
ARCHITECTURES = ("topk", "kronsae")
B_DEC_INITS = ("mean", "median", "zeros")
CHECKPOINT_DIRNAME = "checkpoint"
CHECKPOINT_CONFIG = "train_config.json"
NEIGHBOURS = 10


@dataclass
class TrainConfig(DictConfig):
    """What to train and on what.

    Args:
        corpus: Paths of text files (one message per line), JSONL files of messages (``text`` or
            ``content`` field) or LongMemEval-style JSON; ``.gz`` is read transparently.
        out: Output directory.
        source: ``"residual"`` (token states of ``layer``) or ``"embedding"`` (pooled sentence
            embeddings). Defaults to ``"residual"``.
        layer: Transformer layer for the residual source (0 = embeddings). Defaults to 4.
        model: sentence-transformers model. Defaults to all-MiniLM-L6-v2 (bundled).
        architecture: ``"topk"`` or ``"kronsae"``. Defaults to ``"topk"``.
        d_sae: Dictionary size. Defaults to 4096.
        k: Active features per vector (TopK). Defaults to 32.
        h: KronSAE heads; None means ``d_sae // (m * n)``. Defaults to None.
        m: KronSAE rows of P per head. Defaults to 2 (the paper's guideline).
        n: KronSAE rows of Q per head. Defaults to 8.
        max_texts: Unique messages used, after de-duplication and a seeded shuffle. Defaults to 60000.
        holdout: Fraction of messages held out for evaluation. Defaults to 0.05.
        epochs: Passes over the training vectors. Defaults to 2.0.
        batch_size: Vectors per step. Defaults to 1024.
        lr: Peak Adam learning rate. Defaults to 4e-3.
        lr_end_fraction: The cosine decay ends at ``lr * lr_end_fraction``. Defaults to 0.1.
        warmup_fraction: Share of the steps spent warming the learning rate up. Defaults to 0.05.
        aux_loss_coefficient: Weight of sae-lens' TopK auxiliary loss, which makes dead latents
            predict the residual. Defaults to 1.0.
        dead_feature_window: Steps without firing after which a latent counts as dead for the
            auxiliary loss; None means ``max(50, steps // 10)``. Defaults to None.
        b_dec_init: Initial decoder bias (subtracted from inputs): ``"mean"`` or ``"median"``
            (per coordinate) of up to 100k training vectors, or ``"zeros"``. Defaults to ``"mean"``.
        seed: Seed for sampling, shuffling and initialisation. Defaults to 0.
        checkpoint_every: Steps between checkpoints; 0 disables them. Defaults to 200.
        resume: Continue from ``<out>/checkpoint/``. Defaults to False.
        cache_dir: Where collected activations are cached. Defaults to ``.cache/activations``.
        name: Name written into the model card. Defaults to the output directory's name.
        extra_card: Extra fields for ``card.json`` (``notes`` is also shown in the model card).
    """

    settings_name: ClassVar[str] = "training"

    corpus: list[str]
    out: str
    source: str = "residual"
    layer: int = 4
    model: str = DEFAULT_MODEL
    architecture: str = "topk"
    d_sae: int = 4096
    k: int = 32
    h: int | None = None
    m: int = 2
    n: int = 8
    max_texts: int = 60000
    holdout: float = 0.05
    epochs: float = 2.0
    batch_size: int = 1024
    lr: float = 4e-3
    lr_end_fraction: float = 0.1
    warmup_fraction: float = 0.05
    aux_loss_coefficient: float = 1.0
    dead_feature_window: int | None = None
    b_dec_init: str = "mean"
    seed: int = 0
    checkpoint_every: int = 200
    resume: bool = False
    cache_dir: str = ".cache/activations"
    name: str | None = None
    extra_card: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source={self.source!r} is not one of {SOURCES}.")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture={self.architecture!r} is not one of {ARCHITECTURES}.")
        if self.b_dec_init not in B_DEC_INITS:
            raise ValueError(f"b_dec_init={self.b_dec_init!r} is not one of {B_DEC_INITS}.")
        if not 0 < self.holdout < 0.5:
            raise ValueError(f"holdout must be in (0, 0.5), got {self.holdout}.")
        if not 0 < self.k <= self.d_sae:
            raise ValueError(f"Need 0 < k <= d_sae, got k={self.k}, d_sae={self.d_sae}.")
        for key in ("epochs", "lr", "batch_size"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)}.")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0 (0 disables), got {self.checkpoint_every}.")
        if self.architecture == "kronsae":
            if self.h is None and self.m > 0 and self.n > 0:
                self.h = self.d_sae // (self.m * self.n)  # a remainder fails the check below
            check_kron_shape(self.d_sae, self.h, self.m, self.n)


@dataclass
class Activations:
    """Training and held-out vectors for one SAE.

    Attributes:
        train: (n, d_in) training vectors.
        heldout: (n_eval, d_in) held-out vectors of the same source.
        heldout_dense: (messages, dim) held-out dense embeddings (for the retrieval measure).
        hook: The SAE's ``hook_name``.
        counts: Message counts for the model card.
        collect_seconds: Time spent collecting (or loading cached) activations.
    """

    train: torch.Tensor
    heldout: torch.Tensor
    heldout_dense: torch.Tensor
    hook: str
    counts: dict[str, int]
    collect_seconds: float


def read_corpus(paths: list[str]) -> list[str]:
    """Reads messages from text, JSONL or LongMemEval JSON files (gzipped or not).

    Args:
        paths: ``.txt`` (or any other name: one message per line), ``.jsonl`` (one message per
            line, its ``text`` or ``content``) or ``.json`` (LongMemEval: every turn of every
            haystack session, both roles, read by ``saememory.eval.longmemeval``), each
            optionally ``.gz``.

    Returns:
        The non-blank messages, in file order.
    """
    texts: list[str] = []
    for raw in paths:
        path = Path(raw)
        stem = path.name[:-3] if path.suffix == ".gz" else path.name
        if stem.endswith(".json"):
            texts.extend(m["content"] for q in longmemeval.load(path) for m in longmemeval.messages(q, roles="all"))
            continue
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as handle:
            if stem.endswith(".jsonl"):
                for line in handle:
                    if line.strip():
                        record = json.loads(line)
                        texts.append(str(record.get("text") or record.get("content") or ""))
            else:
                texts.extend(line.rstrip("\n") for line in handle)
    return [t for t in texts if t.strip()]


def sample_texts(texts: list[str], max_texts: int, seed: int) -> list[str]:
    """De-duplicates (chat corpora repeat "Thank you." thousands of times) and draws a seeded sample."""
    unique = sorted(set(t.strip() for t in texts))
    random.Random(seed).shuffle(unique)
    return unique[:max_texts]


def activation_cache(cfg: TrainConfig, texts: list[str]) -> Path:
    """The file ``collect`` caches the activations of ``texts`` in (model, layer and texts decide)."""
    precision = "int8" if EncoderConfig(model=cfg.model, sae=None).int8 else "float32"  # as the encoder runs it
    key = hashlib.sha256(json.dumps([cfg.model, cfg.layer, precision, texts]).encode()).hexdigest()[:16]
    return Path(cfg.cache_dir) / f"{key}.safetensors"


def collect(cfg: TrainConfig, texts: list[str]) -> tuple[torch.Tensor, np.ndarray]:
    """Token states of ``cfg.layer`` and dense embeddings of ``texts``, cached on disk."""
    from safetensors.torch import load_file, save_file

    path = activation_cache(cfg, texts)
    if path.is_file():
        cached = load_file(str(path))
        return cached["tokens"], cached["dense"].numpy()
    encoder = Encoder(EncoderConfig(model=cfg.model, sae=None, batch_size=64))
    from tqdm.auto import tqdm

    tokens, dense = [], []
    step = 2048
    for start in tqdm(range(0, len(texts), step), desc="Collecting activations", unit="chunk"):
        t, d = encoder.token_states(texts[start : start + step], cfg.layer)
        tokens.append(t)
        dense.append(torch.from_numpy(d))
    out = {"tokens": torch.cat(tokens).contiguous(), "dense": torch.cat(dense).contiguous()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path))
    return out["tokens"], out["dense"].numpy()


def load_activations(cfg: TrainConfig) -> Activations:
    """Reads the corpus, splits messages into train / held out and collects their vectors."""
    texts = sample_texts(read_corpus(cfg.corpus), cfg.max_texts, cfg.seed)
    if len(texts) < 100:
        raise ValueError(f"Only {len(texts)} unique messages in {cfg.corpus}; an SAE needs thousands.")
    n_eval = max(1, int(len(texts) * cfg.holdout))
    train_texts, eval_texts = texts[n_eval:], texts[:n_eval]
    started = time.time()
    train_tok, train_dense = collect(cfg, train_texts)
    eval_tok, eval_dense = collect(cfg, eval_texts)
    counts = {"unique_messages": len(texts), "train_messages": len(train_texts), "heldout_messages": len(eval_texts)}
    eval_dense_t = torch.from_numpy(eval_dense)
    if cfg.source == "residual":
        return Activations(train_tok, eval_tok, eval_dense_t, f"hidden_states.{cfg.layer}", counts, time.time() - started)
    return Activations(torch.from_numpy(train_dense), eval_dense_t, eval_dense_t, "sentence_embedding", counts,
                       time.time() - started)


def batches(data: torch.Tensor, batch_size: int, seed: int, skip: int = 0) -> Iterator[torch.Tensor]:
    """An endless stream of shuffled batches, as sae-lens' trainer wants.

    Args:
        data: (n, d_in) vectors.
        batch_size: Vectors per batch; the last partial batch of each epoch is dropped.
        seed: Seed of the shuffle.
        skip: Batches to skip first (a resumed run continues the same order). Defaults to 0.
    """
    generator = torch.Generator().manual_seed(seed)
    per_epoch = data.shape[0] // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch_size={batch_size} exceeds the {data.shape[0]} training vectors.")
    while True:
        perm = torch.randperm(data.shape[0], generator=generator)
        for i in range(per_epoch):
            if skip:
                skip -= 1
                continue
            yield data[perm[i * batch_size : (i + 1) * batch_size]]


def schedule(cfg: TrainConfig, n_vectors: int) -> dict[str, int]:
    """Batch size, steps, warm-up steps and dead-feature window for ``n_vectors`` training vectors."""
    batch = min(cfg.batch_size, n_vectors)
    steps = max(1, int(n_vectors * cfg.epochs) // batch)
    warmup = max(1, int(steps * cfg.warmup_fraction))
    window = cfg.dead_feature_window or max(50, steps // 10)
    return {"batch_size": batch, "steps": steps, "warmup_steps": min(warmup, steps - 1) or 1,
            "dead_feature_window": window}


def make_sae(cfg: TrainConfig, data: torch.Tensor, hook: str) -> Any:
    """A fresh sae-lens training SAE (TopK or KronSAE) with its decoder bias initialised from ``data``."""
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    from saememory.kronsae import KronSAETrainingConfig, KronTrainingSAE

    torch.manual_seed(cfg.seed)
    common = {
        "d_in": int(data.shape[1]),
        "d_sae": cfg.d_sae,
        "k": cfg.k,
        "dtype": "float32",
        "device": "cpu",
        "aux_loss_coefficient": cfg.aux_loss_coefficient,
        "metadata": SAEMetadata(model_name=cfg.model, hook_name=hook, dataset_path=",".join(cfg.corpus)),
    }
    if cfg.architecture == "kronsae":
        sae = KronTrainingSAE(KronSAETrainingConfig(h=cfg.h, m=cfg.m, n=cfg.n, **common))
    else:
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(**common))
    sample = data[:100_000]
    with torch.no_grad():
        if cfg.b_dec_init == "mean":
            sae.b_dec.copy_(sample.mean(0))
        elif cfg.b_dec_init == "median":
            sae.b_dec.copy_(sample.median(0).values)
    return sae


def fit(cfg: TrainConfig, sae: Any, data: torch.Tensor, checkpoint_dir: Path | None) -> dict[str, Any]:
    """Trains ``sae`` in place with sae-lens' ``SAETrainer``, checkpointing and resuming.

    Args:
        cfg: Training settings (``resume`` and ``checkpoint_every`` are read here).
        sae: A sae-lens training SAE from ``make_sae``.
        data: (n, d_in) training vectors.
        checkpoint_dir: Where checkpoints go; None disables checkpointing.

    Returns:
        The schedule plus ``resumed_from_step`` (None for a fresh run), ``train_seconds`` (wall)
        and ``train_cpu_seconds`` (this process's CPU time, all threads).

    Raises:
        FileNotFoundError: If ``cfg.resume`` is set but there is no checkpoint.
        ValueError: If the checkpoint was made with other settings.
    """
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer
    from tqdm.auto import tqdm

    plan = schedule(cfg, data.shape[0])
    batch, steps = plan["batch_size"], plan["steps"]
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * batch,
        train_batch_size_samples=batch,
        lr=cfg.lr,
        lr_end=cfg.lr * cfg.lr_end_fraction,
        lr_scheduler_name="cosineannealing",
        lr_warm_up_steps=plan["warmup_steps"],
        lr_decay_steps=steps - plan["warmup_steps"],
        dead_feature_window=plan["dead_feature_window"],
    )
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=iter(()))
    resumed = None
    if cfg.resume:
        resumed = _load_checkpoint(cfg, trainer, checkpoint_dir)
    stream = batches(data, batch, cfg.seed, skip=trainer.n_training_steps)
    started, started_cpu = time.time(), time.process_time()
    with tqdm(total=steps, initial=trainer.n_training_steps, desc="Training SAE", unit="step") as bar:
        while trainer.n_training_steps < steps:
            trainer.maybe_reset_sparsity()
            output = trainer.step(next(stream))
            trainer.n_training_steps += 1
            done = trainer.n_training_steps
            if checkpoint_dir is not None and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < steps:
                _save_checkpoint(cfg, trainer, checkpoint_dir)
            if done % 10 == 0 or done == steps:
                bar.set_postfix(mse=f"{output.losses['mse_loss'].item():.3f}")
            bar.update(1)
    trainer.set_final_sae_metadata()
    return {**plan, "resumed_from_step": resumed, "train_seconds": round(time.time() - started, 1),
            "train_cpu_seconds": round(time.process_time() - started_cpu, 1)}


def _checkpoint_settings(cfg: TrainConfig) -> dict[str, Any]:
    settings = cfg.to_dict()
    for key in ("resume", "extra_card", "name", "checkpoint_every", "cache_dir"):
        settings.pop(key)
    return settings


def _save_checkpoint(cfg: TrainConfig, trainer: Any, checkpoint_dir: Path) -> None:
    """Saves the trainer's state as ``<checkpoint_dir>/<step>/`` and removes older checkpoints."""
    step = trainer.n_training_steps
    trainer.save_checkpoint(checkpoint_name=str(step), base_path=checkpoint_dir)
    (checkpoint_dir / CHECKPOINT_CONFIG).write_text(json.dumps(_checkpoint_settings(cfg), indent=2))
    for old in checkpoint_dir.iterdir():
        if old.is_dir() and old.name.isdigit() and int(old.name) != step:
            shutil.rmtree(old)


def _load_checkpoint(cfg: TrainConfig, trainer: Any, checkpoint_dir: Path | None) -> int:
    """Restores weights and trainer state from the newest checkpoint; returns its step."""
    found = sorted(
        (int(p.name) for p in checkpoint_dir.iterdir() if p.is_dir() and p.name.isdigit())
        if checkpoint_dir is not None and checkpoint_dir.is_dir() else []
    )
    if not found:
        raise FileNotFoundError(
            f"resume=True but there is no checkpoint in {checkpoint_dir}. Train without --resume first "
            "(with --checkpoint-every > 0)."
        )
    saved = json.loads((checkpoint_dir / CHECKPOINT_CONFIG).read_text())
    current = json.loads(json.dumps(_checkpoint_settings(cfg)))
    changed = sorted(key for key in set(saved) | set(current) if saved.get(key) != current.get(key))
    if changed:
        raise ValueError(
            f"The checkpoint in {checkpoint_dir} was made with other settings for {changed} "
            f"(checkpoint: {[saved.get(k) for k in changed]}, now: {[current.get(k) for k in changed]}). "
            "Resume with the original settings or delete the checkpoint to start afresh."
        )
    path = checkpoint_dir / str(found[-1])
    trainer.sae.load_weights_from_checkpoint(path)
    trainer.load_trainer_state(path)
    logger.info("Resuming from %s (step %d).", path, found[-1])
    return found[-1]


@torch.no_grad()
def evaluate(sae: Any, data: torch.Tensor) -> dict[str, float]:
    """Explained variance, FVU, L0, dead and dense fractions and reconstruction cosine on held-out vectors.

    ``sae`` is anything with ``encode`` and ``decode`` (a sae-lens SAE or ours). Explained variance
    is ``1 - FVU``, FVU the summed squared error over the summed squared deviation from the
    held-out mean; a latent is dead if it never fires on the held-out vectors and dense if it fires
    on more than 10% of them; ``reconstruction_cosine`` is the mean cosine between each vector and
    its reconstruction.
    """
    fire_count = torch.zeros(sae.cfg.d_sae)
    sq_err, l0_sum, cos_sum = 0.0, 0.0, 0.0
    for start in range(0, data.shape[0], 8192):
        x = data[start : start + 8192]
        z = sae.encode(x)
        recon = sae.decode(z)
        sq_err += float(((recon - x) ** 2).sum())
        fire_count += (z > 0).float().sum(0)
        l0_sum += float((z > 0).float().sum())
        cos_sum += float(torch.nn.functional.cosine_similarity(recon, x, dim=-1).sum())
    total_var = float(((data - data.mean(0)) ** 2).sum())
    n = data.shape[0]
    fvu = sq_err / total_var
    return {
        "explained_variance": 1.0 - fvu,
        "fvu": fvu,
        "l0": l0_sum / n,
        "dead_fraction": float((fire_count == 0).float().mean()),
        "dense_fraction": float((fire_count / n > 0.1).float().mean()),
        "reconstruction_cosine": cos_sum / n,
        "n_eval_vectors": n,
    }


@torch.no_grad()
def neighbour_recall(sae: Any, dense: torch.Tensor, k: int = NEIGHBOURS) -> float:
    """How much of dense retrieval survives when every embedding is replaced by its reconstruction.

    Each held-out message queries the other held-out messages. Its true ``k`` nearest neighbours
    come from cosine on the original embeddings; the retrieved ones from cosine on the SAE
    reconstructions (queries and messages both reconstructed). The result is the mean share of the
    true ``k`` neighbours that are retrieved (recall@k; 1.0 means nothing is lost).

    Args:
        sae: An SAE with ``encode`` and ``decode`` that reads the dense embeddings.
        dense: (n, dim) held-out embeddings, n > k.
        k: Neighbours per query. Defaults to 10.
    """
    if dense.shape[0] <= k:
        raise ValueError(f"neighbour_recall needs more than k={k} held-out messages, got {dense.shape[0]}.")
    x = torch.nn.functional.normalize(dense.float(), dim=-1)
    recon = torch.nn.functional.normalize(sae.decode(sae.encode(x)), dim=-1)
    hits = 0
    for start in range(0, x.shape[0], 1024):
        rows = torch.arange(start, min(start + 1024, x.shape[0]))
        true_sim, recon_sim = x[rows] @ x.T, recon[rows] @ recon.T
        true_sim[torch.arange(len(rows)), rows] = -float("inf")
        recon_sim[torch.arange(len(rows)), rows] = -float("inf")
        truth, found = true_sim.topk(k).indices, recon_sim.topk(k).indices
        hits += int((truth.unsqueeze(-1) == found.unsqueeze(-2)).any(-1).sum())
    return hits / (x.shape[0] * k)


def train(cfg: TrainConfig) -> Path:
    """Trains, evaluates and saves one SAE; returns the output directory."""
    from saememory.kronsae import encoder_flops, parameter_count

    acts = load_activations(cfg)
    out = Path(cfg.out)
    checkpoint_dir = out / CHECKPOINT_DIRNAME if cfg.checkpoint_every or cfg.resume else None
    sae = make_sae(cfg, acts.train, acts.hook)
    run = fit(cfg, sae, acts.train, checkpoint_dir)
    sae.eval()
    metrics = evaluate(sae, acts.heldout)
    if cfg.source == "embedding":
        metrics[f"neighbour_recall_at_{NEIGHBOURS}"] = neighbour_recall(sae, acts.heldout_dense)
    sae.save_inference_model(out)
    if checkpoint_dir is not None and checkpoint_dir.is_dir():
        shutil.rmtree(checkpoint_dir)
    d_in = int(acts.train.shape[1])
    kron = {"h": cfg.h, "m": cfg.m, "n": cfg.n} if cfg.architecture == "kronsae" else {}
    card = {
        "name": cfg.name or out.name,
        "model": cfg.model,
        "source": cfg.source,
        "hook_name": acts.hook,
        "layer": cfg.layer if cfg.source == "residual" else None,
        "architecture": cfg.architecture,
        **({"kronsae": kron} if kron else {}),
        "d_in": d_in,
        "d_sae": cfg.d_sae,
        "k": cfg.k,
        "parameters": parameter_count(cfg.architecture, d_in, cfg.d_sae, **kron),
        "encoder_flops_per_vector": encoder_flops(cfg.architecture, d_in, cfg.d_sae, **kron),
        "weights_bytes": (out / "sae_weights.safetensors").stat().st_size,
        "data": {
            "corpus": cfg.corpus,
            **acts.counts,
            "train_vectors": int(acts.train.shape[0]),
            "training_samples_seen": run["steps"] * run["batch_size"],
        },
        "training": {
            **{key: run[key] for key in ("steps", "batch_size", "warmup_steps", "dead_feature_window")},
            "epochs": cfg.epochs,
            "lr": cfg.lr,
            "lr_end": cfg.lr * cfg.lr_end_fraction,
            "aux_loss_coefficient": cfg.aux_loss_coefficient,
            "b_dec_init": cfg.b_dec_init,
            "seed": cfg.seed,
            "resumed_from_step": run["resumed_from_step"],
            "collect_seconds": round(acts.collect_seconds, 1),
            "train_seconds": run["train_seconds"],
            "train_cpu_seconds": run["train_cpu_seconds"],
        },
        "heldout": metrics,
        **cfg.extra_card,
    }
    write_card(out, card)
    return out


MEASURES = (
    "Measures, all on held-out messages never seen in training: explained variance = 1 - FVU, "
    "FVU = summed squared reconstruction error / summed squared deviation from the held-out mean; "
    "L0 = mean active latents per vector; dead = never fires on the held-out vectors; dense = fires "
    "on more than 10% of them; reconstruction cosine = mean cosine between a vector and its "
    "reconstruction. For the embedding source, neighbour recall@10 = mean share of each held-out "
    "message's 10 nearest held-out neighbours (cosine of the original embeddings) that are still "
    "its 10 nearest when every embedding, query included, is replaced by its SAE reconstruction."
)


def write_card(out: Path, card: dict[str, Any]) -> None:
    """Writes ``card.json`` and a human-readable ``model_card.md``."""
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    held, run = card["heldout"], card["training"]
    if card["architecture"] == "kronsae":
        kron = card["kronsae"]
        kind = f"A KronSAE (h={kron['h']} heads of m={kron['m']} x n={kron['n']}, mAND, TopK)"
    else:
        kind = "A TopK"
    lines = [
        f"# {card['name']}",
        "",
        f"{kind} sparse autoencoder on {card['model']}, source `{card['source']}` (`{card['hook_name']}`).",
        "",
        "| field | value |",
        "|---|---|",
        f"| layer | {card['layer'] if card['layer'] is not None else 'pooled sentence embedding'} |",
        f"| d_in / d_sae / k | {card['d_in']} / {card['d_sae']} / {card['k']} |",
        f"| parameters / weights file | {card['parameters']:,} / {card['weights_bytes'] / 1e6:.1f} MB |",
        f"| data | {', '.join(card['data']['corpus'])} |",
        f"| messages (unique, train / held out) | {card['data']['train_messages']} / {card['data']['heldout_messages']} |",
        f"| training vectors / samples seen | {card['data']['train_vectors']} / {card['data']['training_samples_seen']} |",
        f"| training | {run['steps']} steps of {run['batch_size']}, Adam lr {run['lr']:g} (cosine to {run['lr_end']:g}, "
        f"{run['warmup_steps']} warm-up steps), aux loss {run['aux_loss_coefficient']:g}, dead window "
        f"{run['dead_feature_window']} steps, b_dec from the {run['b_dec_init']}, seed {run['seed']} |",
        f"| held-out explained variance (FVU) | {held['explained_variance']:.3f} ({held['fvu']:.3f}) |",
        f"| held-out L0 | {held['l0']:.1f} |",
        f"| dead fraction (never fires on held-out) | {held['dead_fraction']:.4f} |",
        f"| dense fraction (fires on >10% of held-out) | {held['dense_fraction']:.4f} |",
        f"| reconstruction cosine | {held['reconstruction_cosine']:.3f} |",
    ]
    if f"neighbour_recall_at_{NEIGHBOURS}" in held:
        lines.append(f"| neighbour recall@{NEIGHBOURS} with reconstructed embeddings | "
                     f"{held[f'neighbour_recall_at_{NEIGHBOURS}']:.3f} |")
    lines.append(f"| training time (collect + train, this CPU) | {run['collect_seconds']} s + {run['train_seconds']} s |")
    lines += ["", MEASURES]
    if card.get("notes"):
        lines += ["", card["notes"]]
    (out / "model_card.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    parser = argparse.ArgumentParser(prog="saememory-train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", nargs="+", required=True, help="text, JSONL or LongMemEval JSON files")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--source", choices=SOURCES, default=defaults["source"])
    parser.add_argument("--layer", type=int, default=defaults["layer"])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--architecture", choices=ARCHITECTURES, default=defaults["architecture"])
    parser.add_argument("--d-sae", type=int, default=defaults["d_sae"])
    parser.add_argument("--k", type=int, default=defaults["k"])
    parser.add_argument("--h", type=int, default=None, help="KronSAE heads (default d_sae / (m n))")
    parser.add_argument("--m", type=int, default=defaults["m"], help="KronSAE rows of P per head")
    parser.add_argument("--n", type=int, default=defaults["n"], help="KronSAE rows of Q per head")
    parser.add_argument("--max-texts", type=int, default=defaults["max_texts"])
    parser.add_argument("--epochs", type=float, default=defaults["epochs"])
    parser.add_argument("--batch-size", type=int, default=defaults["batch_size"])
    parser.add_argument("--lr", type=float, default=defaults["lr"])
    parser.add_argument("--lr-end-fraction", type=float, default=defaults["lr_end_fraction"])
    parser.add_argument("--warmup-fraction", type=float, default=defaults["warmup_fraction"])
    parser.add_argument("--aux-loss-coefficient", type=float, default=defaults["aux_loss_coefficient"])
    parser.add_argument("--dead-feature-window", type=int, default=None, help="steps (default max(50, steps/10))")
    parser.add_argument("--b-dec-init", choices=B_DEC_INITS, default=defaults["b_dec_init"])
    parser.add_argument("--seed", type=int, default=defaults["seed"])
    parser.add_argument("--checkpoint-every", type=int, default=defaults["checkpoint_every"], help="steps; 0 disables")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint/")
    parser.add_argument("--cache-dir", default=defaults["cache_dir"])
    parser.add_argument("--name", default=None, help="name in the model card (default: the out directory's)")
    parser.add_argument("--notes", default="", help="free text appended to the model card")
    args = vars(parser.parse_args(argv))
    notes = args.pop("notes")
    logging.basicConfig(level=logging.INFO)
    cfg = TrainConfig(**args, extra_card={"notes": notes} if notes else {})
    out = train(cfg)
    print((out / "model_card.md").read_text())


if __name__ == "__main__":
    main()
