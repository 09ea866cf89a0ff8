"""Do the SAE's labels name what its features detect? A Delphi-style detection score on held-out text.

    python benchmarks/label_detection.py --features 300

For a sample of labelled features (seeded), on held-out LongMemEval-S user turns (the report
split; vectors cached by ``benchmarks/longmemeval.py``): the turns where the feature fires most
(its top ``--top`` activations) against as many turns where it is silent, each of about the
length of a firing one (a longer turn is closer to any label). Each turn is scored
by the MiniLM cosine between the feature's label and the turn (Delphi's embedding scorer, with
MiniLM in place of its embedding model); the feature's AUROC is how well that score tells the
firing turns from the silent ones. Reported: the mean AUROC with a 95% bootstrap interval over
features, for all sampled features, for those the SAE's hygiene leaves visible, and with the
labels shuffled among the features (chance). Writes the ``label-detection`` section of
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import scipy.sparse as sp

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))
import longmemeval as bench  # noqa: E402
from common import bootstrap, commit, machine, publish  # noqa: E402

from saememory import Encoder, EncoderConfig  # noqa: E402
from saememory.eval import longmemeval as lme  # noqa: E402


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half."""
    diff = positive[:, None] - negative[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def matched_by_length(firing: np.ndarray, silent: np.ndarray, lengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each firing turn, a silent turn of about its length (drawn among the 5 closest): firing
    turns are longer than most, and a longer turn is closer to any label."""
    pool = list(rng.permutation(silent))
    out = []
    for i in firing:
        near = sorted(range(len(pool)), key=lambda j: abs(lengths[pool[j]] - lengths[i]))[:5]
        out.append(pool.pop(int(rng.choice(near))))
    return np.array(out)


def interval(values: np.ndarray) -> str:
    low, high = bootstrap(values)
    return f"{values.mean():.3f} [{low:.3f}, {high:.3f}]"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, default=300, help="labelled features sampled; default 300")
    parser.add_argument("--top", type=int, default=20, help="firing and silent turns per feature; default 20")
    parser.add_argument("--questions", type=int, default=60, help="held-out questions whose user turns are the text; default 60")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--md", type=Path, default=bench.ROOT / "BENCHMARKS.md")
    parser.add_argument("--sae", default=None, help="an SAE (bundled name or folder) instead of the default; its own section")
    parser.add_argument("--card", action="store_true",
                        help="also write the result as the '## Label detection' section of the SAE's model_card.md")
    args = parser.parse_args(argv)
    chosen = bench.declared_split(lme.load(bench.DEFAULT_DATA), "report")[: args.questions]
    texts = sorted({m["content"] for _, q in chosen for m in lme.messages(q, "user")})
    encoder = Encoder(EncoderConfig(pooling="max", **({"sae": args.sae} if args.sae else {})))
    caches = bench.Caches(bench.ROOT / "benchmarks" / ".cache", encoder)
    caches.fill(texts, [])
    dense, codes = caches.base.get([bench.text_key("doc", t) for t in texts], hygiene=False)  # every feature scored
    codes = sp.csc_matrix(codes)
    sae = encoder.sae
    lengths = np.array([len(t) for t in texts])
    rng = np.random.default_rng(args.seed)
    eligible = [f for f in sorted(sae.labels) if codes[:, f].nnz >= args.top and codes.shape[0] - codes[:, f].nnz >= args.top]
    sample = sorted(rng.choice(eligible, size=min(args.features, len(eligible)), replace=False).tolist())
    label_vectors = encoder.encode_documents([sae.labels[f] for f in sample]).dense
    shuffled = label_vectors[rng.permutation(len(sample))]
    phrased = [f for f in sample if sae.phrase(f)]  # the phrase read around the firing word, where one holds
    readings = {"phrase": [sae.phrase(f) for f in phrased],
                "phrase and label": [f"{sae.phrase(f)} ({sae.labels[f]})" for f in phrased]}
    phrase_vectors = {name: dict(zip(phrased, encoder.encode_documents(texts_).dense)) if phrased else {}
                      for name, texts_ in readings.items()}
    scores: dict[str, list[float]] = {"labels": [], "shuffled labels": [], "phrase": [], "phrase and label": [],
                                      "labels, phrased features": []}
    visible = []
    for i, f in enumerate(sample):
        column = codes[:, f].toarray().ravel()
        firing = np.argsort(-column, kind="stable")[: args.top]
        silent = matched_by_length(firing, np.flatnonzero(column == 0), lengths, rng)
        for name, vectors in (("labels", label_vectors), ("shuffled labels", shuffled)):
            sims = dense @ vectors[i]
            scores[name].append(auroc(sims[firing], sims[silent]))
        if f in phrase_vectors["phrase"]:
            scores["labels, phrased features"].append(scores["labels"][-1])
            for name, vectors in phrase_vectors.items():
                sims = dense @ vectors[f]
                scores[name].append(auroc(sims[firing], sims[silent]))
        visible.append(f not in sae.hidden)
    visible = np.array(visible)
    tag = f"-{Path(args.sae).name}" if args.sae else ""
    start, end = f"<!-- label-detection{tag}:start -->", f"<!-- label-detection{tag}:end -->"
    title = (f"### Label detection, SAE {args.sae}" if args.sae
             else "## Label detection: do the labels name what the features detect? (2026-11-30)")
    lines = [start, title, "",
             f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; commit {commit()}; machine: {machine()}",
             f"- Data: {len(texts)} user turns of {len(chosen)} held-out LongMemEval-S questions; {len(sample)} labelled "
             f"features sampled (seed {args.seed}) of {len(eligible)} firing on at least {args.top} turns and silent on as many; "
             f"SAE `{sae.name}`",
             f"- Command: `python benchmarks/label_detection.py --features {args.features}"
             + (f" --sae {args.sae}" if args.sae else "") + "`", "",
             "| labels scored | features | mean AUROC [95% CI] |", "|---|---:|---:|"]
    real, chance = np.array(scores["labels"]), np.array(scores["shuffled labels"])
    lines.append(f"| all sampled features | {len(real)} | {interval(real)} |")
    lines.append(f"| those shown to people (not hidden by hygiene) | {int(visible.sum())} | {interval(real[visible])} |")
    if (~visible).any():
        lines.append(f"| hidden by hygiene | {int((~visible).sum())} | {interval(real[~visible])} |")
    lines.append(f"| labels shuffled among the features (chance) | {len(chance)} | {interval(chance)} |")
    if phrased:
        for name, row in (("labels, phrased features", "features with a phrase: their word labels"),
                          ("phrase", "features with a phrase: the phrase"),
                          ("phrase and label", "features with a phrase: phrase (label), as a hit shows it")):
            values = np.array(scores[name])
            lines.append(f"| {row} | {len(values)} | {interval(values)} |")
        gain = np.array(scores["phrase and label"]) - np.array(scores["labels, phrased features"])
        lines += ["", f"Phrase (label) against the word label alone, paired over the {len(gain)} features: {interval(gain)}."]
    lines += ["", end]
    publish(args.md, lines, start, end)
    if args.card:
        command = f"python benchmarks/label_detection.py --features {args.features}" + (f" --sae {args.sae}" if args.sae else "")
        text = (f"Measured on held-out text (`{command}`, {datetime.now(timezone.utc):%Y-%m-%d}, commit {commit()}), "
                f"with a Delphi-style embedding scorer: the MiniLM cosine of a feature's label and a turn should separate "
                f"the {args.top} LongMemEval-S user turns where the feature fires most from {args.top} length-matched turns "
                f"where it is silent ({len(texts)} turns of {len(chosen)} held-out questions). Over {len(real)} sampled "
                f"labelled features, mean AUROC {interval(real)}; {interval(real[visible])} for the "
                f"{int(visible.sum())} that hygiene leaves visible"
                + (f", {interval(real[~visible])} for those it hides" if (~visible).any() else "")
                + f"; {interval(chance)} with the labels shuffled among the features (chance).")
        if phrased:
            text += (f" For the {len(gain)} sampled features with a phrase, the phrase with its label, as a hit shows it, "
                     f"scores {interval(np.array(scores['phrase and label']))}, the word label alone "
                     f"{interval(np.array(scores['labels, phrased features']))} (paired difference {interval(gain)}).")
        if encoder.layer is None:
            text += (" This SAE's features are directions of the very MiniLM embedding the scorer compares labels "
                     "with, which favours it: the score is not comparable with a residual SAE's.")
        card_section(model_card(encoder), "## Label detection", text)


def model_card(encoder: Encoder) -> Path:
    """The model card of the encoder's SAE (a bundled one or a folder)."""
    from saememory.encoders.sentence_transformer import BUNDLED_SAE_DIR

    folder = Path(encoder.config.sae) if Path(encoder.config.sae).is_dir() else BUNDLED_SAE_DIR / encoder.config.sae
    return folder / "model_card.md"


def card_section(path: Path, heading: str, text: str) -> None:
    """Sets a ``## ...`` section of a markdown file, up to the next ``## `` heading (added at the end if new)."""
    content = path.read_text(encoding="utf-8")
    block = f"{heading}\n\n{text}\n"
    if f"\n{heading}\n" in content:
        start = content.index(f"\n{heading}\n") + 1
        after = content.find("\n## ", start + len(heading))
        content = content[:start] + block + (content[after:] if after >= 0 else "")
    else:
        content = content.rstrip("\n") + "\n\n" + block
    path.write_text(content, encoding="utf-8")


if __name__ == "__main__":
    main()
