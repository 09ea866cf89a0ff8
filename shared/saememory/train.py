"""Train a TopK SAE for the encoder, with sae-lens, on your own messages.

Usage::

    python -m saememory.train --corpus chat.jsonl.gz --source residual --layer 4 --out my-sae

The result is a directory in sae-lens' format (``cfg.json`` + ``sae_weights.safetensors``) with a
model card (``model_card.md`` and ``card.json``: data, layer, d_sae, k, explained variance, L0,
dead fraction); pass it as ``EncoderConfig(sae=...)``. The shipped SAEs were made by
``benchmarks/train_default_saes.sh`` with this module.

sae_lens is imported only here: it is slow to import and not needed to encode.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from saememory.encoder import DEFAULT_MODEL, Encoder, EncoderConfig

logger = logging.getLogger(__name__)
SOURCES = ("residual", "embedding")


@dataclass
class TrainConfig:
    """What to train and on what.

    Args:
        corpus: Paths of text files (one message per line), JSONL files of messages (``text`` or
            ``content`` field) or LongMemEval-style JSON; ``.gz`` is read transparently.
        out: Output directory.
        source: ``"residual"`` (token states of ``layer``) or ``"embedding"`` (pooled sentence
            embeddings). Defaults to ``"residual"``.
        layer: Transformer layer for the residual source (0 = embeddings). Defaults to 4.
        model: sentence-transformers model. Defaults to all-MiniLM-L6-v2 (bundled).
        d_sae: Dictionary size. Defaults to 4096.
        k: Active features per vector (TopK). Defaults to 32.
        max_texts: Unique messages used, after de-duplication and a seeded shuffle. Defaults to 60000.
        holdout: Fraction of messages held out for evaluation. Defaults to 0.05.
        epochs: Passes over the training vectors. Defaults to 2.0.
        batch_size: Vectors per step. Defaults to 4096.
        lr: Peak Adam learning rate (cosine decay to lr/10 after 5% warm-up). Defaults to 2e-3.
        seed: Seed for sampling, shuffling and initialisation. Defaults to 0.
        cache_dir: Where collected activations are cached. Defaults to ``.cache/activations``.
        name: Name written into the model card. Defaults to the output directory's name.
    """

    corpus: list[str]
    out: str
    source: str = "residual"
    layer: int = 4
    model: str = DEFAULT_MODEL
    d_sae: int = 4096
    k: int = 32
    max_texts: int = 60000
    holdout: float = 0.05
    epochs: float = 2.0
    batch_size: int = 4096
    lr: float = 2e-3
    seed: int = 0
    cache_dir: str = ".cache/activations"
    name: str | None = None
    extra_card: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source={self.source!r} is not one of {SOURCES}.")
        if not 0 < self.holdout < 0.5:
            raise ValueError(f"holdout must be in (0, 0.5), got {self.holdout}.")
        if not 0 < self.k <= self.d_sae:
            raise ValueError(f"Need 0 < k <= d_sae, got k={self.k}, d_sae={self.d_sae}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_corpus(paths: list[str]) -> list[str]:
    """Reads messages from text, JSONL or LongMemEval JSON files (gzipped or not)."""
    texts: list[str] = []
    for raw in paths:
        path = Path(raw)
        opener = gzip.open if path.suffix == ".gz" else open
        stem = path.name[:-3] if path.suffix == ".gz" else path.name
        with opener(path, "rt", encoding="utf-8") as handle:
            if stem.endswith(".jsonl"):
                for line in handle:
                    if line.strip():
                        record = json.loads(line)
                        texts.append(str(record.get("text") or record.get("content") or ""))
            elif stem.endswith(".json"):
                for item in json.load(handle):
                    for session in item.get("haystack_sessions", []):
                        texts.extend(str(turn.get("content", "")) for turn in session)
            else:
                texts.extend(line.rstrip("\n") for line in handle)
    return [t for t in texts if t.strip()]


def sample_texts(texts: list[str], max_texts: int, seed: int) -> list[str]:
    """De-duplicates (chat corpora repeat "Thank you." thousands of times) and draws a seeded sample."""
    unique = sorted(set(t.strip() for t in texts))
    random.Random(seed).shuffle(unique)
    return unique[:max_texts]


def collect(cfg: TrainConfig, texts: list[str]) -> tuple[torch.Tensor, np.ndarray]:
    """Token states of ``cfg.layer`` and dense embeddings of ``texts``, cached on disk."""
    from safetensors.torch import load_file, save_file

    key = hashlib.sha256(json.dumps([cfg.model, cfg.layer, texts]).encode()).hexdigest()[:16]
    path = Path(cfg.cache_dir) / f"{key}.safetensors"
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


def _batches(data: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """An endless stream of shuffled batches, as sae-lens' trainer wants."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(data.shape[0], generator=generator)
        for start in range(0, data.shape[0] - batch_size + 1, batch_size):
            yield data[perm[start : start + batch_size]]


def evaluate(sae: Any, data: torch.Tensor) -> dict[str, float]:
    """Explained variance, FVU, L0, dead and dense fractions of an SAE on held-out vectors.

    ``sae`` is anything with ``encode`` and ``decode`` (a sae-lens SAE or ours).
    """
    with torch.no_grad():
        codes, sq_err, l0_sum = [], 0.0, 0.0
        for start in range(0, data.shape[0], 8192):
            x = data[start : start + 8192]
            z = sae.encode(x)
            sq_err += float(((sae.decode(z) - x) ** 2).sum())
            codes.append((z > 0).float().sum(0))
            l0_sum += float((z > 0).float().sum())
        total_var = float(((data - data.mean(0)) ** 2).sum())
        fire_count = torch.stack(codes).sum(0)
    n = data.shape[0]
    fvu = sq_err / total_var
    return {
        "explained_variance": 1.0 - fvu,
        "fvu": fvu,
        "l0": l0_sum / n,
        "dead_fraction": float((fire_count == 0).float().mean()),
        "dense_fraction": float((fire_count / n > 0.1).float().mean()),
        "n_eval_vectors": n,
    }


def train(cfg: TrainConfig) -> Path:
    """Trains, evaluates and saves one SAE; returns the output directory."""
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(cfg.seed)
    texts = sample_texts(read_corpus(cfg.corpus), cfg.max_texts, cfg.seed)
    if len(texts) < 100:
        raise ValueError(f"Only {len(texts)} unique messages in {cfg.corpus}; an SAE needs thousands.")
    n_eval = max(1, int(len(texts) * cfg.holdout))
    train_texts, eval_texts = texts[n_eval:], texts[:n_eval]
    started = time.time()
    train_tok, train_dense = collect(cfg, train_texts)
    eval_tok, eval_dense = collect(cfg, eval_texts)
    collect_s = time.time() - started
    if cfg.source == "residual":
        data, held_out, hook = train_tok, eval_tok, f"hidden_states.{cfg.layer}"
    else:
        data, held_out, hook = torch.from_numpy(train_dense), torch.from_numpy(eval_dense), "sentence_embedding"
    batch = min(cfg.batch_size, data.shape[0])
    total = int(data.shape[0] * cfg.epochs) // batch * batch
    steps = total // batch
    sae_cfg = TopKTrainingSAEConfig(
        d_in=data.shape[1],
        d_sae=cfg.d_sae,
        k=cfg.k,
        dtype="float32",
        device="cpu",
        metadata=SAEMetadata(model_name=cfg.model, hook_name=hook, dataset_path=",".join(cfg.corpus)),
    )
    sae = TopKTrainingSAE(sae_cfg)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=total,
        train_batch_size_samples=batch,
        lr=cfg.lr,
        lr_end=cfg.lr / 10,
        lr_scheduler_name="cosineannealing",
        lr_warm_up_steps=max(1, steps // 20),
        lr_decay_steps=steps - max(1, steps // 20),
        dead_feature_window=max(50, steps // 4),
    )
    started = time.time()
    sae = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=_batches(data, batch, cfg.seed)).fit()
    train_s = time.time() - started
    sae.eval()
    metrics = evaluate(sae, held_out)
    out = Path(cfg.out)
    sae.save_inference_model(out)
    card = {
        "name": cfg.name or out.name,
        "model": cfg.model,
        "source": cfg.source,
        "hook_name": hook,
        "layer": cfg.layer if cfg.source == "residual" else None,
        "architecture": "topk",
        "d_in": int(data.shape[1]),
        "d_sae": cfg.d_sae,
        "k": cfg.k,
        "data": {
            "corpus": cfg.corpus,
            "unique_messages": len(texts),
            "train_messages": len(train_texts),
            "heldout_messages": len(eval_texts),
            "train_vectors": int(data.shape[0]),
            "training_samples_seen": total,
        },
        "training": {"steps": steps, "batch_size": batch, "lr": cfg.lr, "seed": cfg.seed,
                     "collect_seconds": round(collect_s, 1), "train_seconds": round(train_s, 1)},
        "heldout": metrics,
        **cfg.extra_card,
    }
    write_card(out, card)
    return out


def write_card(out: Path, card: dict[str, Any]) -> None:
    """Writes ``card.json`` and a human-readable ``model_card.md``."""
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    held = card["heldout"]
    lines = [
        f"# {card['name']}",
        "",
        f"A TopK sparse autoencoder on {card['model']}, source `{card['source']}` (`{card['hook_name']}`).",
        "",
        "| field | value |",
        "|---|---|",
        f"| layer | {card['layer'] if card['layer'] is not None else 'pooled sentence embedding'} |",
        f"| d_in / d_sae / k | {card['d_in']} / {card['d_sae']} / {card['k']} |",
        f"| data | {', '.join(card['data']['corpus'])} |",
        f"| messages (unique, train / held out) | {card['data']['train_messages']} / {card['data']['heldout_messages']} |",
        f"| training vectors / samples seen | {card['data']['train_vectors']} / {card['data']['training_samples_seen']} |",
        f"| held-out explained variance (FVU) | {held['explained_variance']:.3f} ({held['fvu']:.3f}) |",
        f"| held-out L0 | {held['l0']:.1f} |",
        f"| dead fraction (never fires on held-out) | {held['dead_fraction']:.4f} |",
        f"| dense fraction (fires on >10% of held-out) | {held['dense_fraction']:.4f} |",
        f"| training time (collect + train, this CPU) | {card['training']['collect_seconds']} s + {card['training']['train_seconds']} s |",
    ]
    if card.get("notes"):
        lines += ["", card["notes"]]
    (out / "model_card.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="saememory-train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", nargs="+", required=True, help="text, JSONL or LongMemEval JSON files")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--source", choices=SOURCES, default="residual")
    parser.add_argument("--layer", type=int, default=4)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--max-texts", type=int, default=60000)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=".cache/activations")
    parser.add_argument("--notes", default="", help="free text appended to the model card")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    cfg = TrainConfig(
        corpus=args.corpus, out=args.out, source=args.source, layer=args.layer, model=args.model,
        d_sae=args.d_sae, k=args.k, max_texts=args.max_texts, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, cache_dir=args.cache_dir,
        extra_card={"notes": args.notes} if args.notes else {},
    )
    out = train(cfg)
    print((out / "model_card.md").read_text())


if __name__ == "__main__":
    main()
