"""Label the features of the shipped SAEs offline, check the labels, and find feature families.

For each SAE directory the script rebuilds the SAE's own message split from its ``card.json``
(corpus, number of unique messages, held-out count, seed: the same de-duplicated, seeded sample
``saememory.train`` used), then

1. labels every feature that fires on the training messages (no LLM; see ``saememory.labels``) and
   keeps its top three example texts;
2. checks the labels on the SAE's held-out messages, which the labeller never saw;
3. builds feature families from message-level co-occurrence on the training messages;

and writes ``labels.json`` and ``families.json`` beside the weights, a ``labels`` key in
``card.json`` and a ``## Labels`` section in ``model_card.md`` (both replaced on a rerun, nothing
else touched). Token states come from ``saememory.train.collect``, so the activations cached
while training are reused (a cold run encodes the messages: about 20 texts/s on 2 busy cores).

Usage, from the repository root::

    HF_HUB_OFFLINE=1 nice -n 10 python benchmarks/label_saes.py
    HF_HUB_OFFLINE=1 nice -n 10 python benchmarks/label_saes.py --saes minilm-emb-topk4k --max-label-texts 20000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saememory.encoder import BUNDLED_SAE_DIR, list_bundled_saes, load_sae, load_sentence_transformer
from saememory.labels import (
    check_labels,
    cooccurrence,
    distinctive_terms,
    embedding_codes,
    feature_families,
    format_label,
    residual_codes,
    split_words,
    stopword_mask,
    top_examples,
    write_families,
    write_labels,
)
from saememory.sae import LABELS_FILENAME
from saememory.train import TrainConfig, collect, read_corpus, sample_texts

logger = logging.getLogger("label_saes")
SECTION = "## Labels"
METHOD = {
    "residual": (
        "Offline, no LLM. Each word occurrence of the SAE's training messages gets the maximum activation "
        "over its wordpieces; a feature's label is the (up to) 3 words most over-represented among its "
        "{n_top} top-activating occurrences, weighted by activation: score = share * log(share / corpus "
        "share), at least 2 supporting occurrences, later terms >= 10% of the best score. Stopwords and "
        "punctuation are kept: they are what token features read. Examples: the top-activating distinct "
        "messages, firing word in [brackets]."
    ),
    "embedding": (
        "Offline, no LLM. A feature's label is the (up to) 3 words most over-represented in its {n_top} "
        "top-activating training messages, weighted by activation, against their document frequency in "
        "the training messages: score = share * log(share / corpus share), at least 2 supporting "
        "messages, stopwords only if nothing else is over-represented, later terms >= 10% of the best "
        "score. Examples: the top-activating messages."
    ),
}
FAMILY_METHOD = (
    "O'Neill et al. 2024 (saerch): message-level co-occurrence on the training messages, normalised by "
    "the sparser feature's count (+1), edges below {threshold} dropped, maximum spanning forest, edges "
    "from the denser (parent) to the sparser (child) feature, one parent per feature (its strongest "
    "denser neighbour). Features firing on more than {max_density:.0%} of messages stay out (own root). "
    "'roots' lists the family root per level; level 2 rebuilds the forest without level 1's parents."
)


def split_messages(card: dict[str, Any], max_label_texts: int | None) -> tuple[list[str], list[str], list[str]]:
    """The SAE's training messages (all, and the labelling subset) and its held-out messages."""
    data = card["data"]
    texts = sample_texts(read_corpus(data["corpus"]), data["unique_messages"], card["training"]["seed"])
    n_eval = data["heldout_messages"]
    train_texts, eval_texts = texts[n_eval:], texts[:n_eval]
    if len(train_texts) != data["train_messages"]:
        raise ValueError(
            f"Rebuilt {len(train_texts)} training messages, but card.json says {data['train_messages']}: "
            "the corpus or saememory.train.sample_texts changed since training. Retrain or relabel by hand."
        )
    return train_texts, train_texts[:max_label_texts] if max_label_texts else train_texts, eval_texts


def states_for(cfg: TrainConfig, all_texts: list[str], texts: list[str]) -> tuple[torch.Tensor, np.ndarray]:
    """Token states and embeddings of ``texts``, a prefix of ``all_texts``, reusing the training cache."""
    # Same key as saememory.train.collect: a cache of all training messages serves any prefix.
    def cached(batch: list[str]) -> bool:
        key = hashlib.sha256(json.dumps([cfg.model, cfg.layer, batch]).encode()).hexdigest()[:16]
        return (Path(cfg.cache_dir) / f"{key}.safetensors").is_file()

    source = all_texts if cached(all_texts) else texts
    if not cached(source):
        logger.info("No cached activations for these messages: encoding %d of them (slow).", len(source))
    tokens, dense = collect(cfg, source)
    return tokens, dense[: len(texts)]


def label_one(sae_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Labels, checks and groups one SAE's features; writes its files; returns the card section."""
    started = time.time()
    card = json.loads((sae_dir / "card.json").read_text())
    sae = load_sae(sae_dir)
    source = "residual" if (sae.cfg.hook_name or "").startswith("hidden_states.") else "embedding"
    model = load_sentence_transformer(card["model"])
    tokenizer, max_length = model.tokenizer, int(model.max_seq_length)
    train_texts, texts, eval_texts = split_messages(card, args.max_label_texts)
    layer = card["layer"] if card.get("layer") is not None else TrainConfig.layer
    cfg = TrainConfig(corpus=card["data"]["corpus"], out=str(sae_dir), layer=layer, model=card["model"],
                      cache_dir=args.cache_dir)
    words = split_words(tokenizer, texts, max_length)
    eval_words = split_words(tokenizer, eval_texts, max_length, vocab=words.vocab)
    tokens, dense = states_for(cfg, train_texts, texts)
    eval_tokens, eval_dense = states_for(cfg, eval_texts, eval_texts)
    logger.info("%s: %d labelling and %d held-out messages", sae_dir.name, len(texts), len(eval_texts))
    if source == "residual":
        occurrences, messages = residual_codes(sae, tokens[: words.token_occurrence.size], words)
        eval_messages = residual_codes(sae, eval_tokens, eval_words)[1]
        terms = distinctive_terms(occurrences, words.occurrence_terms(), words.vocab, n_top=args.n_top)
        examples = top_examples(occurrences, words.message, texts, spans=words.span)
    else:
        messages = embedding_codes(sae, dense)
        eval_messages = embedding_codes(sae, eval_dense)
        terms = distinctive_terms(messages, words.message_terms(), words.vocab,
                                  avoid=stopword_mask(words.vocab), n_top=args.n_top)
        examples = top_examples(messages, np.arange(len(texts)), texts)
    del tokens
    labels = {f: format_label(t) for f, t in terms.items()}
    logger.info("%s: %d features labelled; checking on held-out messages", sae_dir.name, len(labels))
    check = check_labels(eval_messages, eval_words.message_terms(), words.vocab, labels,
                         n_features=args.n_check_features, seed=args.seed)
    families = feature_families(cooccurrence(messages), len(texts), threshold=args.threshold,
                                max_density=args.max_density)
    method = METHOD[source].format(n_top=args.n_top)
    family_method = FAMILY_METHOD.format(threshold=args.threshold, max_density=args.max_density)
    provenance = {"corpus": card["data"]["corpus"], "n_messages": len(texts),
                  "messages": "the SAE's training messages (saememory.train split of card.json), first n"}
    write_labels(sae_dir / LABELS_FILENAME, labels, examples, sae_sha256=sae.sha256, method=method,
                 source=source, data=provenance, check=check)
    write_families(sae_dir / "families.json", families, sae_sha256=sae.sha256, method=family_method,
                   threshold=args.threshold, max_density=args.max_density, data=provenance)
    sizes = {}
    for record in families.values():
        sizes[record["root"]] = sizes.get(record["root"], 0) + 1
    multi = sorted((size for size in sizes.values() if size > 1), reverse=True)
    section = {
        "method": "offline term contrast (saememory.labels), no LLM; see labels.json",
        "source": source,
        "labelling_messages": len(texts),
        "live_features": len(families),
        "labelled_features": len(labels),
        "check": check,
        "families": {
            "threshold": args.threshold,
            "max_density": args.max_density,
            "families_with_children": len(multi),
            "features_in_them": int(sum(multi)),
            "largest": multi[:5],
        },
        "seconds": round(time.time() - started, 1),
    }
    update_cards(sae_dir, card, section, labels, families)
    return section


def update_cards(sae_dir: Path, card: dict[str, Any], section: dict[str, Any], labels: dict[int, str],
                 families: dict[int, dict[str, Any]]) -> None:
    """Sets ``card.json``'s ``labels`` key and the ``## Labels`` section of ``model_card.md``."""
    card["labels"] = section
    (sae_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    check, fam = section["check"], section["families"]
    roots = sorted({r["root"] for r in families.values() if r["children"]},
                   key=lambda f: -sum(1 for r in families.values() if r["root"] == f))[:5]
    lines = [
        SECTION,
        "",
        f"Offline labels (no LLM) for {section['labelled_features']} of the {section['live_features']} features "
        f"that fire on {section['labelling_messages']} training messages (`labels.json`: label, top examples, method).",
        "",
        f"Check on {check['n_messages']} held-out messages, {check['n_features']} sampled features "
        f"(firing on >= {check['min_fires']} of them): the label's words are more frequent where the feature "
        f"fires strongly (top {1 - check['strong_quantile']:.0%} of its activations) than where it does not fire "
        f"for **{check['pass_rate']:.1%}** of features, mean lift {check['mean_lift']:.2f} (median "
        f"{check['median_lift']:.2f}). Same labels shuffled among the features: {check['baseline_pass_rate']:.1%}, "
        f"mean lift {check['baseline_mean_lift']:.2f}.",
        "",
        f"Feature families (`families.json`): {fam['families_with_children']} families with children holding "
        f"{fam['features_in_them']} features; largest: {fam['largest']}. Largest roots: "
        + ", ".join(f"#{f} {labels.get(f, '')!r}" for f in roots) + ".",
        "",
    ]
    path = sae_dir / "model_card.md"
    text = path.read_text()
    if SECTION in text:
        text = text[: text.index(SECTION)].rstrip("\n") + "\n"
    path.write_text(text + "\n" + "\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--saes", nargs="*", default=None, help="bundled names or directories; default: all bundled")
    parser.add_argument("--max-label-texts", type=int, default=None,
                        help="label from the first N training messages; default: all of them")
    parser.add_argument("--n-top", type=int, default=100, help="top-activating units read per feature")
    parser.add_argument("--n-check-features", type=int, default=200)
    parser.add_argument("--threshold", type=float, default=0.1, help="family edge threshold")
    parser.add_argument("--max-density", type=float, default=0.2, help="features denser than this stay out of families")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=".cache/activations")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    names = args.saes if args.saes else list_bundled_saes()
    for name in names:
        sae_dir = Path(name) if Path(name).is_dir() else BUNDLED_SAE_DIR / name
        section = label_one(sae_dir, args)
        print(json.dumps({"sae": sae_dir.name, **section}, indent=2))


if __name__ == "__main__":
    main()
