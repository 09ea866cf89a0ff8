"""Label an SAE's features offline, check the labels, and build its feature families.

Usage::

    python -m saememory.interpret.label                        # every SAE shipped in saememory/saes
    python -m saememory.interpret.label --saes path/to/my-sae  # an SAE made by saememory.train
    saememory-label --saes minilm-emb-topk4k --max-label-texts 20000

For each SAE directory the command rebuilds the SAE's own message split from its ``card.json``
(corpus, number of unique messages, held-out count, seed: the same de-duplicated, seeded sample
``saememory.train`` used), then

1. labels every feature that fires on the training messages (no LLM; see
   ``saememory.interpret.labels``) and keeps its top three example texts;
2. checks the labels on the SAE's held-out messages, which the labeller never saw;
3. builds feature families from message-level co-occurrence on the training messages
   (``saememory.interpret.families``);

and writes ``labels.json`` and ``families.json`` beside the weights, a ``labels`` key in
``card.json`` and a ``## Labels`` section in ``model_card.md`` (both replaced on a rerun, nothing
else touched). Token states come from ``saememory.train.collect``, so the activations cached
while training are reused (a cold run encodes the messages: about 20 texts/s on 2 busy cores).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from saememory.encoders.sentence_transformer import (
    BUNDLED_SAE_DIR,
    EncoderConfig,
    list_bundled_saes,
    load_sae,
    load_sentence_transformer,
)
from saememory.interpret.families import FAMILIES_FILENAME, cooccurrence, feature_families, write_families
from saememory.interpret.labels import (
    LABELS_FILENAME,
    STOPWORDS,
    Words,
    check_labels,
    distinctive_terms,
    format_label,
    split_words,
    stopword_mask,
    top_examples,
    write_labels,
    write_sae_file,
)
from saememory.train import TrainConfig, activation_cache, collect, read_corpus, sample_texts

logger = logging.getLogger(__name__)
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
PHRASE_METHOD = (
    "Phrases: for each word occurrence, the runs of 2 or 3 consecutive words of its message that hold "
    "it, read from the text; a feature's phrase is the run most over-represented among its {n_top} "
    "top-activating occurrences (the same score as the words), kept only if it is around at least "
    "{min_share:.0%} of them (activation-weighted); phrases of function words, numbers or ordinals only "
    "are used when nothing else qualifies."
)
PHRASE_MIN_SHARE = 0.2
FAMILY_METHOD = (
    "O'Neill et al. 2024 (saerch): message-level co-occurrence on the training messages, normalised by "
    "the sparser feature's count (+1), edges below {threshold} dropped, maximum spanning forest, edges "
    "from the denser (parent) to the sparser (child) feature, one parent per feature (its strongest "
    "denser neighbour). Features firing on more than {max_density:.0%} of messages stay out (own root). "
    "'roots' lists the family root per level; level 2 rebuilds the forest without level 1's parents."
)


@torch.inference_mode()
def residual_codes(
    sae: Any, states: torch.Tensor, words: Words, messages_per_chunk: int = 256
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Activations of a residual SAE per word occurrence and per message (maximum over tokens).

    The message codes are the encoder's max-pooled codes before L2 normalisation.

    Args:
        sae: Anything with ``encode`` (a ``SparseAutoencoder``).
        states: (n_real_tokens, d_in) token states, in the order of ``words.token_occurrence``
            (``Encoder.token_states`` gives this order).
        words: The words of the same texts, from ``saememory.interpret.labels.split_words``.
        messages_per_chunk: Texts encoded at a time. Defaults to 256.

    Returns:
        ``(occurrences, messages)``: CSR matrices of shape (n_occurrences, d_sae) and
        (n_messages, d_sae).

    Raises:
        ValueError: If the states and the words disagree on the number of tokens.
    """
    if states.shape[0] != words.token_occurrence.size:
        raise ValueError(
            f"Got {states.shape[0]} token states but the tokenizer found {words.token_occurrence.size} "
            "real tokens in the texts; pass the states of exactly these texts, in order, with the "
            "same tokenizer and max_length."
        )
    token_message = words.message[words.token_occurrence]
    cuts = np.searchsorted(token_message, np.arange(0, words.n_messages + messages_per_chunk, messages_per_chunk))
    occurrence_blocks, message_blocks = [], []
    for start, end in zip(cuts[:-1], cuts[1:]):
        if start == end:
            continue
        codes = sae.encode(states[start:end]).float()
        occurrence = torch.from_numpy(words.token_occurrence[start:end])
        message = torch.from_numpy(token_message[start:end])
        occurrence_blocks.append(_group_max(codes, occurrence, int(occurrence[0])))
        message_blocks.append(_group_max(codes, message, int(message[0])))
    d_sae = sae.cfg.d_sae
    return (
        _stack(occurrence_blocks, words.term.size, d_sae),
        _stack(message_blocks, words.n_messages, d_sae),
    )


def residual_phrases(occurrences: sp.spmatrix, words: Words, texts: list[str], *, n_top: int = 100,
                     min_share: float = PHRASE_MIN_SHARE) -> dict[int, str]:
    """Each feature's phrase: the run of 2-3 words most over-represented around its top occurrences.

    Args:
        occurrences: (n_occurrences, d_sae) activations per word occurrence (``residual_codes``).
        words: The words of ``texts`` (``split_words``).
        texts: The texts.
        n_top: Top-activating occurrences read per feature. Defaults to 100.
        min_share: The activation-weighted share of those occurrences the phrase must be around;
            a feature without such a phrase gets none. Defaults to ``PHRASE_MIN_SHARE`` (0.2).
    """
    matrix, vocab = words.occurrence_phrases(texts)
    # Only function words, numbers or ordinals: "the 14th" gives way to "march 14th".
    avoid = np.array([all(w in STOPWORDS or not w.isalpha() for w in re.findall(r"\w+", p)) for p in vocab], dtype=bool)
    found = distinctive_terms(occurrences, matrix, vocab, avoid=avoid, n_top=n_top, n_terms=1, min_share=min_share)
    return {f: terms[0] for f, terms in found.items()}


def _group_max(codes: torch.Tensor, group: torch.Tensor, first: int) -> tuple[int, sp.csr_matrix]:
    """Row-wise maximum of ``codes`` within each run of equal ``group`` ids; (first id, block)."""
    local = group - first
    out = torch.zeros(int(local[-1]) + 1, codes.shape[1], dtype=codes.dtype)
    out.scatter_reduce_(0, local[:, None].expand_as(codes), codes, reduce="amax", include_self=True)
    return first, sp.csr_matrix(out.numpy())


def _stack(blocks: list[tuple[int, sp.csr_matrix]], n_rows: int, d_sae: int) -> sp.csr_matrix:
    """Places row blocks at their offsets in an (n_rows, d_sae) CSR matrix."""
    coo = [block.tocoo() for _, block in blocks]
    rows = np.concatenate([c.row + first for (first, _), c in zip(blocks, coo)] or [np.zeros(0, int)])
    cols = np.concatenate([c.col for c in coo] or [np.zeros(0, int)])
    data = np.concatenate([c.data for c in coo] or [np.zeros(0, np.float32)])
    return sp.csr_matrix((data, (rows, cols)), shape=(n_rows, d_sae), dtype=np.float32)


@torch.inference_mode()
def embedding_codes(sae: Any, dense: np.ndarray, batch_size: int = 4096) -> sp.csr_matrix:
    """Activations of an embedding SAE on (n, d_in) normalised sentence embeddings, as CSR."""
    blocks = [
        sp.csr_matrix(sae.encode(torch.from_numpy(np.ascontiguousarray(dense[i : i + batch_size]))).numpy())
        for i in range(0, len(dense), batch_size)
    ]
    return sp.vstack(blocks, format="csr").astype(np.float32) if blocks else sp.csr_matrix((0, sae.cfg.d_sae))


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
    source = all_texts if activation_cache(cfg, all_texts).is_file() else texts  # a cache of all serves a prefix
    if not activation_cache(cfg, source).is_file():
        logger.info("No cached activations for these messages: encoding %d of them (slow).", len(source))
    tokens, dense = collect(cfg, source)
    return tokens, dense[: len(texts)]


def label_sae(
    sae_dir: str | Path,
    *,
    max_label_texts: int | None = None,
    n_top: int = 100,
    n_check_features: int = 200,
    threshold: float = 0.1,
    max_density: float = 0.2,
    seed: int = 0,
    cache_dir: str = ".cache/activations",
) -> dict[str, Any]:
    """Labels, checks and groups one SAE's features; writes its files and card sections.

    Args:
        sae_dir: An SAE directory with the ``card.json`` that ``saememory.train`` writes.
        max_label_texts: Label from the first N training messages. Defaults to None (all).
        n_top: Top-activating units (word occurrences or messages) read per feature. Defaults to 100.
        n_check_features: Features sampled for the held-out check. Defaults to 200.
        threshold: Minimum normalised co-occurrence of a family edge. Defaults to 0.1.
        max_density: Features firing on a larger share of messages stay out of families.
            Defaults to 0.2.
        seed: Seed of the check's sample. Defaults to 0.
        cache_dir: Where ``saememory.train`` cached activations. Defaults to ``".cache/activations"``.

    Returns:
        The ``labels`` section written into ``card.json``.

    Raises:
        FileNotFoundError: If the directory has no ``card.json``.
        ValueError: If the card's message split cannot be rebuilt from its corpus.
    """
    started = time.time()
    sae_dir = Path(sae_dir)
    if not (sae_dir / "card.json").is_file():
        raise FileNotFoundError(
            f"No card.json in {sae_dir}: labelling rebuilds the SAE's training split from the card "
            "that saememory.train writes. Label an SAE trained with python -m saememory.train."
        )
    card = json.loads((sae_dir / "card.json").read_text())
    sae = load_sae(sae_dir)
    source = "residual" if (sae.cfg.hook_name or "").startswith("hidden_states.") else "embedding"
    model = load_sentence_transformer(card["model"])
    tokenizer, max_length = model.tokenizer, int(model.max_seq_length)
    train_texts, texts, eval_texts = split_messages(card, max_label_texts)
    layer = card["layer"] if card.get("layer") is not None else TrainConfig.layer
    cfg = TrainConfig(corpus=card["data"]["corpus"], out=str(sae_dir), layer=layer, model=card["model"],
                      cache_dir=cache_dir)
    words = split_words(tokenizer, texts, max_length)
    eval_words = split_words(tokenizer, eval_texts, max_length, vocab=words.vocab)
    tokens, dense = states_for(cfg, train_texts, texts)
    eval_tokens, eval_dense = states_for(cfg, eval_texts, eval_texts)
    logger.info("%s: %d labelling and %d held-out messages", sae_dir.name, len(texts), len(eval_texts))
    if source == "residual":
        occurrences, messages = residual_codes(sae, tokens[: words.token_occurrence.size], words)
        eval_messages = residual_codes(sae, eval_tokens, eval_words)[1]
        terms = distinctive_terms(occurrences, words.occurrence_terms(), words.vocab, n_top=n_top)
        examples = top_examples(occurrences, words.message, texts, spans=words.span)
        phrases = residual_phrases(occurrences, words, texts, n_top=n_top)
    else:
        messages = embedding_codes(sae, dense)
        eval_messages = embedding_codes(sae, eval_dense)
        terms = distinctive_terms(messages, words.message_terms(), words.vocab,
                                  avoid=stopword_mask(words.vocab), n_top=n_top)
        examples = top_examples(messages, np.arange(len(texts)), texts)
        phrases = {}  # a message-level feature has no firing word to read a phrase around
    del tokens
    labels = {f: format_label(t) for f, t in terms.items()}
    logger.info("%s: %d features labelled; checking on held-out messages", sae_dir.name, len(labels))
    check = check_labels(eval_messages, eval_words.message_terms(), words.vocab, labels,
                         n_features=n_check_features, seed=seed)
    families = feature_families(cooccurrence(messages), len(texts), threshold=threshold, max_density=max_density)
    provenance = {"corpus": card["data"]["corpus"], "n_messages": len(texts),
                  "messages": "the SAE's training messages (saememory.train split of card.json), first n"}
    method = METHOD[source].format(n_top=n_top)
    if phrases:
        method += " " + PHRASE_METHOD.format(n_top=n_top, min_share=PHRASE_MIN_SHARE)
    write_labels(sae_dir / LABELS_FILENAME, labels, examples, sae_sha256=sae.sha256, method=method, source=source,
                 data=provenance, check=check, phrases={str(f): phrases[f] for f in sorted(phrases)})
    write_families(sae_dir / FAMILIES_FILENAME, families, sae_sha256=sae.sha256,
                   method=FAMILY_METHOD.format(threshold=threshold, max_density=max_density),
                   threshold=threshold, max_density=max_density, data=provenance)
    multi = sorted((size for size in Counter(r["root"] for r in families.values()).values() if size > 1), reverse=True)
    section = {
        "method": "offline term contrast (saememory.interpret.labels), no LLM; see labels.json",
        "source": source,
        "labelling_messages": len(texts),
        "live_features": len(families),
        "labelled_features": len(labels),
        "check": check,
        "families": {
            "threshold": threshold,
            "max_density": max_density,
            "families_with_children": len(multi),
            "features_in_them": int(sum(multi)),
            "largest": multi[:5],
        },
        "seconds": round(time.time() - started, 1),
    }
    update_cards(sae_dir, card, section, labels, families)
    return section


def add_phrases(sae_dir: str | Path, *, max_label_texts: int | None = None, n_top: int = 100,
                cache_dir: str = ".cache/activations") -> int:
    """Adds phrases to a residual SAE's ``labels.json`` and leaves its labels and examples as they are.

    For SAEs labelled before phrases existed: relabelling would also remake the labels (from the
    activations of the encoder as it runs now), and the hygiene and benchmarks read them.

    Returns:
        The number of features given a phrase.

    Raises:
        FileNotFoundError: Without ``card.json`` or ``labels.json``.
        ValueError: For an embedding-source SAE (no word to read a phrase around).
    """
    sae_dir = Path(sae_dir)
    if not (sae_dir / LABELS_FILENAME).is_file() or not (sae_dir / "card.json").is_file():
        raise FileNotFoundError(f"{sae_dir} needs card.json and {LABELS_FILENAME}; label it first with "
                                f"python -m saememory.interpret.label --saes {sae_dir}.")
    card = json.loads((sae_dir / "card.json").read_text())
    sae = load_sae(sae_dir)
    if not (sae.cfg.hook_name or "").startswith("hidden_states."):
        raise ValueError(f"{sae_dir.name} reads sentence embeddings: its features have no firing word to "
                         "read a phrase around. Phrases are for residual (token) SAEs.")
    data = json.loads((sae_dir / LABELS_FILENAME).read_text(encoding="utf-8"))
    if data.get("sae_sha256") != sae.sha256:
        raise ValueError(f"{sae_dir / LABELS_FILENAME} was made for other weights; relabel the SAE instead.")
    model = load_sentence_transformer(card["model"])
    train_texts, texts, _ = split_messages(card, max_label_texts)
    layer = card["layer"] if card.get("layer") is not None else TrainConfig.layer
    cfg = TrainConfig(corpus=card["data"]["corpus"], out=str(sae_dir), layer=layer, model=card["model"],
                      cache_dir=cache_dir)
    words = split_words(model.tokenizer, texts, int(model.max_seq_length))
    tokens, _ = states_for(cfg, train_texts, texts)
    occurrences, _ = residual_codes(sae, tokens[: words.token_occurrence.size], words)
    phrases = residual_phrases(occurrences, words, texts, n_top=n_top)
    phrases = {f: p for f, p in phrases.items() if str(f) in data["labels"]}  # beside the words a hit shows
    method = data["method"].split(" Phrases: ")[0] + " " + PHRASE_METHOD.format(n_top=n_top, min_share=PHRASE_MIN_SHARE)
    fields = {k: v for k, v in data.items() if k not in ("format", "sae_sha256", "method", "phrases")}
    fields["phrases"] = {str(f): phrases[f] for f in sorted(phrases)}
    fields["phrase_data"] = {"n_messages": len(texts), "precision": "int8" if EncoderConfig(model=card["model"], sae=None).int8
                             else "float32"}
    write_sae_file(sae_dir / LABELS_FILENAME, data["format"], sae_sha256=sae.sha256, method=method, fields=fields,
                   indent=1, ensure_ascii=False)
    return len(phrases)


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
        f"that fire on {section['labelling_messages']} training messages (`labels.json`: label, phrase, top examples, method).",
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
    rest = ""
    if SECTION in text:  # replace this section only, keep the sections after it
        after = text.find("\n## ", text.index(SECTION) + len(SECTION))
        rest = text[after:] if after >= 0 else ""
        text = text[: text.index(SECTION)].rstrip("\n") + "\n"
    path.write_text(text + "\n" + "\n".join(lines) + rest)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="saememory-label", description=__doc__.split("\n\n")[0])
    parser.add_argument("--saes", nargs="*", default=None, help="bundled names or directories; default: all bundled")
    parser.add_argument("--max-label-texts", type=int, default=None,
                        help="label from the first N training messages; default: all of them")
    parser.add_argument("--n-top", type=int, default=100, help="top-activating units read per feature")
    parser.add_argument("--n-check-features", type=int, default=200)
    parser.add_argument("--threshold", type=float, default=0.1, help="family edge threshold")
    parser.add_argument("--max-density", type=float, default=0.2, help="features denser than this stay out of families")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=".cache/activations")
    parser.add_argument("--phrases-only", action="store_true",
                        help="only add phrases to an existing labels.json (labels, examples, families untouched)")
    args = vars(parser.parse_args(argv))
    names = args.pop("saes") or list_bundled_saes()
    phrases_only = args.pop("phrases_only")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in names:
        sae_dir = Path(name) if Path(name).is_dir() else BUNDLED_SAE_DIR / name
        if phrases_only:
            if not (load_sae(sae_dir).cfg.hook_name or "").startswith("hidden_states."):
                logger.info("%s reads sentence embeddings: no phrases to read (skipped).", sae_dir.name)
                continue
            n = add_phrases(sae_dir, max_label_texts=args["max_label_texts"], n_top=args["n_top"],
                            cache_dir=args["cache_dir"])
            print(json.dumps({"sae": sae_dir.name, "phrases": n}))
            continue
        section = label_sae(sae_dir, **args)
        print(json.dumps({"sae": sae_dir.name, **section}, indent=2))


if __name__ == "__main__":
    main()
