"""What a person is shown as the reason for a hit: labels that read form, labels grounded in the text.

    python benchmarks/explanations.py --every 1                 # held out
    python benchmarks/explanations.py --split dev --every 1     # the dev split, where choices are made

For LongMemEval-S questions (held out, the report split: i % 5 in {2, 3, 4}, dev30 left out; or
the dev split; user turns; cached vectors from ``benchmarks/longmemeval.py``), the top 3 hits of
the default ranking are explained as ``SAEMemory`` explains them
(``interpret.explain.explain_features``: the 5 strongest and the 5 shared features;
``match_words``: the word pairs), in three conditions:

- *with hygiene* (the default): the features the SAE's ``hygiene.json`` hides (labels only of
  function words, punctuation or numbers, and features on most messages) are left out of the
  codes and never listed;
- *hygiene=False* (``EncoderConfig(hygiene=False)``): every feature in the codes, the hidden
  ones never listed;
- *without hygiene*: every feature in the codes, and every feature listed (as before hygiene);
- *labels that fit where they fired* (the default since 2026-12-01): with hygiene, and a label
  shown only where it fits the words around the one its feature fired on
  (``interpret.fit.check_fit``); *every label*: with hygiene, before that check.

Reported per condition:

- *function-word labels*: the share of labels shown made only of stopwords, punctuation or
  digits (with hygiene this is 0 by construction: it is the rule that hides them);
- *grounded*: the share of labels shown that are among the 10% of all the SAE's labels closest
  in meaning to the hit's text (MiniLM cosine of label and message; a random label scores 0.10);
  *as shown*: the same for what a hit shows, the phrase with its label where the feature has a
  phrase (``"looking for (looking / trying)"``), against all features' shown texts (where a
  phrase is withheld because it does not fit there, the label alone, against the labels);
- *with a word of the hit's text*: labels one of whose words (not a stopword) occurs in the hit,
  and how many of those are grounded: what the grounding measure gives labels that are literally
  in the text;
- *explained share*: the median share of the SAE score carried by the shared features shown;
- *on hidden features*: the median share of the SAE score carried by the features hygiene hides
  (0 with hygiene, which leaves them out of the codes);
- *word pairs*: the number of pairs shown (``Hit.matched_words``: the 5 query words that carry
  most, each with up to 3 message words; a pair joins the query word and the message word where
  a shared feature peaks, and all pairs together make up the score), the median share of the
  SAE score they carry, and the share of hits whose pairs shown carry at least half of it.

Writes the ``explanations`` section of BENCHMARKS.md (``explanations-dev`` for the dev split).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))
import fusion  # noqa: E402
import longmemeval as bench  # noqa: E402
from common import commit, default_scores, machine, publish, wilson  # noqa: E402

from saememory import Encoder, EncoderConfig  # noqa: E402
from saememory.eval import longmemeval as lme  # noqa: E402
from saememory.interpret.explain import explain_features, match_words  # noqa: E402
from saememory.interpret.fit import check_fit  # noqa: E402
from saememory.interpret.hygiene import function_label  # noqa: E402
from saememory.interpret.labels import STOPWORDS, label_terms  # noqa: E402

TOP_HITS, TOP_FEATURES = 3, 5


def in_text(label: str, words: set[str]) -> bool:
    """Does a word of the label, other than a stopword, occur in the text (its lower-cased words)?"""
    return any(term.lower() in words for term in label_terms(label) if term.lower() not in STOPWORDS)


def on_hidden(code, q_acts: dict[int, float], hidden: dict) -> float:
    """The share of the SAE score (query activation x message activation, summed) on hidden features."""
    contributions = [(f, a * q_acts[f]) for f, a in zip(code.indices.tolist(), code.data.tolist()) if f in q_acts]
    total = sum(c for _, c in contributions)
    return sum(c for f, c in contributions if f in hidden) / total if total > 0 else 0.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=("dev", "report"), default="report",
                        help="the dev split or the held-out questions (report, the default)")
    parser.add_argument("--every", type=int, default=1, help="keep the split's questions at i %% every == 0; default 1")
    parser.add_argument("--md", type=Path, default=bench.ROOT / "BENCHMARKS.md")
    parser.add_argument("--sae", default=None, help="an SAE (bundled name or folder) instead of the default; its own section")
    parser.add_argument("--tag", default=None, help="a name for the section, to keep a comparison run beside the main one")
    parser.add_argument("--pooling", choices=("max", "max-content"), default="max",
                        help="how token codes are pooled (EncoderConfig(pooling=...)); another than max has its own section")
    args = parser.parse_args(argv)
    chosen = bench.declared_split(lme.load(bench.DEFAULT_DATA), args.split)[::args.every]
    encoder = Encoder(EncoderConfig(pooling=args.pooling, **({"sae": args.sae} if args.sae else {})))
    sae = encoder.sae
    caches = bench.Caches(bench.ROOT / "benchmarks" / ".cache", encoder)
    labelled = sorted(sae.labels)
    label_vectors = encoder.encode_documents([sae.labels[f] for f in labelled]).dense  # one row per labelled feature
    column = {f: i for i, f in enumerate(labelled)}
    # What a hit shows for a feature: its phrase with its label where it has a phrase, else the label.
    shown_vectors = encoder.encode_documents([f"{sae.phrase(f)} ({sae.labels[f]})" if sae.phrase(f) else sae.labels[f]
                                              for f in labelled]).dense
    hidden = dict(sae.hidden)
    stats = {"without hygiene": [], "hygiene=False": [], "with hygiene, every label": [],
             "with hygiene, labels that fit where they fired (default)": []}
    n_hits = 0
    for _, q in chosen:
        data = fusion.question_signals(q, caches)
        if data is None:
            continue
        corpus = bench.build_corpus(lme.messages(q, "user"), q["question"], caches)
        signals = {"dense": data["signals"]["dense"], "sparse": data["signals"]["sparse"],
                   "bm25": data["signals"]["stemmed bm25"]}
        top = np.argsort(-default_scores(signals), kind="stable")[:TOP_HITS]
        # With hygiene, the codes as the default stores them; without, every feature (as cached).
        every = (caches.base.get([bench.text_key("doc", t) for t in corpus.texts], hygiene=False)[1],
                 caches.base.get([bench.text_key("query", q["question"])], hygiene=False)[1])
        hygienic = (corpus.sparse["res"], corpus.q_sparse["res"])
        codes = {"with hygiene, every label": hygienic, "with hygiene, labels that fit where they fired (default)": hygienic,
                 "hygiene=False": every, "without hygiene": every}
        q_words = encoder.peak_words([q["question"]], query=True)[0]
        m_words = encoder.peak_words([corpus.texts[row] for row in top.tolist()])
        for row, read in zip(top.tolist(), m_words):
            n_hits += 1
            closeness = label_vectors @ corpus.dense[row]  # every label against this message
            cutoff = np.quantile(closeness, 0.9)
            words = set(re.findall(r"\w+", corpus.texts[row].lower()))
            shown_closeness = shown_vectors @ corpus.dense[row]
            shown_cutoff = np.quantile(shown_closeness, 0.9)
            for name in stats:
                sae.hidden = {} if name == "without hygiene" else hidden
                code, q_code = codes[name][0][row], codes[name][1]
                q_acts = dict(zip(q_code.indices.tolist(), q_code.data.tolist()))
                strongest, shared, explained = explain_features(code, q_acts, sae, TOP_FEATURES)
                if name.endswith("(default)"):  # as SAEMemory shows a hit read word by word
                    check_fit([(strongest + shared, *read)], encoder, sae)
                entries = [f for f in strongest + shared if f["label"]]
                shown = [f["id"] for f in entries]
                pairs, pairs_share = match_words(code, q_acts, q_words, read, sae, TOP_FEATURES)
                stats[name].append({"function": [function_label(sae.labels[f]) for f in shown],
                                    "grounded": [bool(closeness[column[f]] >= cutoff) for f in shown],
                                    # A phrase withheld (it does not fit there): the label is what is shown.
                                    "grounded_shown": [bool(shown_closeness[column[f["id"]]] >= shown_cutoff)
                                                       if f["phrase"] or not sae.phrase(f["id"])
                                                       else bool(closeness[column[f["id"]]] >= cutoff) for f in entries],
                                    "in_text": [in_text(sae.labels[f], words) for f in shown],
                                    "explained": explained, "unlabelled": sum(not f["label"] for f in strongest + shared),
                                    "pairs": pairs_share, "n_pairs": len(pairs),
                                    "on_hidden": on_hidden(code, q_acts, hidden)})
    sae.hidden = hidden
    tag = ("-dev" if args.split == "dev" else "") + (f"-{Path(args.sae).name}" if args.sae else "")
    tag += f"-{args.pooling}" if args.pooling != "max" else ""
    tag += f"-{args.tag}" if args.tag else ""
    start, end = f"<!-- explanations{tag}:start -->", f"<!-- explanations{tag}:end -->"
    title = ("## Explanations: what a person is shown (2026-11-30)" if not args.sae and args.pooling == "max" else
             "### Explanations with" + (f" the SAE {args.sae}" if args.sae else "")
             + (" and" if args.sae and args.pooling != "max" else "")
             + (f" pooling {args.pooling}" if args.pooling != "max" else ""))
    if args.split == "dev":
        title = "### Explanations, the dev split" + (f", SAE {args.sae}" if args.sae else "") + (
            f", pooling {args.pooling}" if args.pooling != "max" else "")
    if args.tag:
        title = f"### Explanations, {args.tag}" + (f", SAE {args.sae}" if args.sae else "") + (
            f", pooling {args.pooling}" if args.pooling != "max" else "")
    lines = [start, title, "",
             f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; commit {commit()}; machine: {machine()}",
             f"- Data: LongMemEval-S, {'the dev split' if args.split == 'dev' else 'held out (report split)'}, every "
             f"{args.every}, {len(chosen)} questions, "
             f"the top {TOP_HITS} hits of the default fusion: {n_hits} hits; SAE `{sae.name}`, "
             f"{len(hidden)} of {sae.cfg.d_sae} features hidden by its `hygiene.json`",
             f"- Command: `python benchmarks/explanations.py" + (" --split dev" if args.split == "dev" else "")
             + f" --every {args.every}" + (f" --sae {args.sae}" if args.sae else "")
             + (f" --pooling {args.pooling}" if args.pooling != "max" else "") + (f" --tag {args.tag}" if args.tag else "")
             + "`", "",
             "| condition | labels shown per hit | function-word labels shown | grounded labels shown (random: 0.10) "
             "| grounded as shown: phrase (label) where a phrase holds "
             "| labels shown with a word of the hit's text | grounded among those "
             "| median share of the SAE score carried by the shared features shown | unlabelled features shown per hit "
             "| word pairs shown per hit | median share carried by the word pairs shown | hits whose word pairs shown carry ≥ 50% "
             "| median share of the SAE score on features hygiene hides |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, rows in stats.items():
        function = [x for r in rows for x in r["function"]]
        grounded = [x for r in rows for x in r["grounded"]]
        lines.append(f"| {name} | {len(function) / max(len(rows), 1):.1f} | "
                     f"{wilson(float(np.mean(function)) if function else 0.0, len(function))} | "
                     f"{wilson(float(np.mean(grounded)) if grounded else 0.0, len(grounded))} | "
                     f"{wilson(float(np.mean(shown)) if (shown := [x for r in rows for x in r['grounded_shown']]) else 0.0, len(shown))} | "
                     f"{wilson(float(np.mean(lexical)) if (lexical := [x for r in rows for x in r['in_text']]) else 0.0, len(lexical))} | "
                     f"{wilson(float(np.mean(inside)) if (inside := [g for r in rows for g, t in zip(r['grounded'], r['in_text']) if t]) else 0.0, len(inside))} | "
                     f"{np.median([r['explained'] for r in rows]):.3f} | {np.mean([r['unlabelled'] for r in rows]):.1f} | "
                     f"{np.mean([r['n_pairs'] for r in rows]):.1f} | {np.median([r['pairs'] for r in rows]):.3f} | "
                     f"{wilson(float(np.mean([r['pairs'] >= 0.5 for r in rows])), len(rows))} | "
                     f"{np.median([r['on_hidden'] for r in rows]):.3f} |")
    lines += ["", end]
    publish(args.md, lines, start, end)


if __name__ == "__main__":
    main()
