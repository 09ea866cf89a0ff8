"""Feature hygiene: which SAE features are never shown to a person as an explanation.

Some features read form, not meaning: they fire on function words, punctuation or digits, or on
nearly every message. A hit's ``features``, ``shared_features`` and ``matched_words`` leave them
out, because "matched on: `the`, `?`" explains nothing. By default (``EncoderConfig(hygiene=True)``)
they are also left out of every code (``visible_codes``), so the SAE score is made of the features
an explanation can show; with ``hygiene=False`` they still count in the score. A feature is hidden
when

- ``"function words"``: every term of its label is a stopword, punctuation, a number or a single
  character (``labels.STOPWORDS``), e.g. ``my / i``, ``?``, ``3 / 4``; or
- ``"fires on most messages"``: it is active in more than ``COMMON`` of a sample of messages.

``hygiene.json`` beside the SAE's weights records the hidden features with their reason, the
method and the sample; ``SparseAutoencoder.from_disk`` attaches it. The command computes it for
an SAE directory (it encodes the sample, so it needs torch)::

    python -m saememory.interpret.hygiene shared/saememory/saes/minilm-l4-res-topk4k \\
        --corpus ../shared/data/chat_corpus/sgd_topicalchat_turns.jsonl.gz --messages 3000
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from saememory.arrays import unit_rows
from saememory.interpret.labels import STOPWORDS, label_terms

HYGIENE_FILENAME = "hygiene.json"
HYGIENE_FORMAT = "saememory-hygiene/1"
COMMON = 0.5  # a feature active in more than half of the messages tells them apart from nothing
_FORM = re.compile(r"^(\W+|\d+(st|nd|rd|th)?|\w)$")


def function_label(label: str | None) -> bool:
    """Whether every term of a label is a stopword, punctuation, a number or one character."""
    terms = label_terms(label) if label else []
    return bool(terms) and all(t.lower() in STOPWORDS or _FORM.match(t.lower()) for t in terms)


def document_frequency(codes: sp.csr_matrix) -> np.ndarray:
    """The share of messages (rows) in which each feature is active."""
    codes = sp.csr_matrix(codes)
    if codes.shape[0] == 0:
        return np.zeros(codes.shape[1])
    return np.asarray((codes > 0).sum(axis=0)).ravel() / codes.shape[0]


def visible_codes(codes: sp.spmatrix, hidden: Mapping[int, Any] | Iterable[int]) -> sp.csr_matrix:
    """``codes`` without the ``hidden`` features (ids: a mapping's keys or a sequence), each row
    scaled to unit L2 norm again (float32 CSR; a row whose every active feature is hidden becomes
    zero, and scores 0 against any query).

    Raises:
        TypeError: If ``hidden`` holds something other than integer ids (a boolean mask, say).
    """
    codes = sp.csr_matrix(codes, dtype=np.float32, copy=True)
    ids = np.asarray(list(hidden)).ravel()
    if ids.size and (ids.dtype == bool or not np.issubdtype(ids.dtype, np.integer)):
        raise TypeError(f"hidden must hold feature ids (integers), got {ids.dtype} values.")
    ids = ids.astype(np.int64)
    codes.data[np.isin(codes.indices, ids)] = 0.0
    codes.eliminate_zeros()
    return unit_rows(codes)


def hidden_features(labels: Mapping[int, str], frequency: np.ndarray | None, common: float = COMMON) -> dict[int, str]:
    """Feature id to the reason it is hidden (see the module doc)."""
    hidden = {f: "function words" for f, label in labels.items() if function_label(label)}
    if frequency is not None:
        for f in np.flatnonzero(np.asarray(frequency) > common).tolist():
            hidden.setdefault(int(f), "fires on most messages")
    return dict(sorted(hidden.items()))


def write_hygiene(path: str | Path, hidden: Mapping[int, str], *, sae_sha256: str, source: dict[str, Any],
                  check: dict[str, Any]) -> None:
    """Writes ``hygiene.json``: the hidden features, their reasons, the method and the sample."""
    data = {"format": HYGIENE_FORMAT, "sae_sha256": sae_sha256,
            "method": (f"Hidden from explanations, and left out of the codes unless EncoderConfig(hygiene=False): "
                       f"features whose label is made only of stopwords, "
                       f"punctuation, numbers or single characters, and features active in more than {COMMON:.0%} "
                       f"of the sample's messages (max-pooled codes with every feature)."),
            "source": source, "check": check, "hidden": {str(f): reason for f, reason in hidden.items()}}
    Path(path).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def load_hygiene(path: str | Path, sae_sha256: str | None = None) -> dict[int, str]:
    """Reads ``hygiene.json``.

    Raises:
        ValueError: If the file is not a hygiene file, or was made for other weights.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} cannot be read as JSON: {err}") from None
    if not isinstance(data, dict) or data.get("format") != HYGIENE_FORMAT:
        raise ValueError(f"{path} is not a {HYGIENE_FORMAT} file.")
    if sae_sha256 is not None and data.get("sae_sha256") != sae_sha256:
        raise ValueError(f"{path} was made for other SAE weights (sha256 {data.get('sae_sha256')}); rerun "
                         f"python -m saememory.interpret.hygiene on the SAE directory.")
    hidden = data.get("hidden")
    if not isinstance(hidden, dict) or not all(isinstance(k, str) and k.isdigit() and isinstance(v, str)
                                               for k, v in hidden.items()):
        raise ValueError(f"{path}: 'hidden' must map feature ids (digit strings) to reasons (strings).")
    return {int(f): reason for f, reason in hidden.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Writes hygiene.json for an SAE directory (see the module doc).")
    parser.add_argument("sae_dir", type=Path)
    parser.add_argument("--corpus", type=Path, required=True, help="JSONL(.gz) of messages with a 'text' or 'content' field")
    parser.add_argument("--messages", type=int, default=3000, help="messages of the sample; default 3000")
    parser.add_argument("--seed", type=int, default=0, help="seed of the uniform sample; default 0")
    args = parser.parse_args(argv)
    import gzip

    from saememory import Encoder, EncoderConfig

    opener = gzip.open if args.corpus.suffix == ".gz" else open
    with opener(args.corpus, "rt", encoding="utf-8") as lines:
        rows = (json.loads(line) for line in lines)
        every = [t for row in rows if isinstance(t := row.get("text") or row.get("content"), str) and t.strip()]
    pick = np.random.default_rng(args.seed).choice(len(every), size=min(args.messages, len(every)), replace=False)
    texts = [every[i] for i in sorted(pick.tolist())]
    # Every feature in the codes: the frequencies decide what hygiene hides, so they must not follow it.
    encoder = Encoder(EncoderConfig(sae=str(args.sae_dir), pooling="max", hygiene=False))
    codes = encoder.encode_documents(texts, show_progress=True).sparse
    frequency = document_frequency(codes)
    hidden = hidden_features(encoder.sae.labels, frequency)
    reasons = {r: sum(v == r for v in hidden.values()) for r in sorted(set(hidden.values()))}
    write_hygiene(args.sae_dir / HYGIENE_FILENAME, hidden, sae_sha256=encoder.sae.sha256,
                  source={"corpus": args.corpus.name, "n_messages": len(texts),
                          "messages": f"uniform sample of the corpus' messages, seed {args.seed}"},
                  check={"d_sae": int(codes.shape[1]), "hidden": len(hidden), "by_reason": reasons,
                         "mean_active_per_message": float(codes.getnnz(axis=1).mean()) if codes.shape[0] else 0.0})
    print(f"{len(hidden)} of {codes.shape[1]} features hidden: {reasons}")


if __name__ == "__main__":
    main()
