"""TopK against KronSAE on the same activations with the same training budget.

    nice -n 10 python benchmarks/sae_training.py

Data: the cached layer-4 token states of all-MiniLM-L6-v2 over the chat corpus that the shipped
residual SAE was trained on (``saememory.train.load_activations``; collected and cached on the
first run). A fixed, seeded subsample of ``--train-tokens`` training tokens, and the first
``--eval-tokens`` tokens of the held-out messages for evaluation.

Every SAE sees the same number of samples with the same optimiser settings (those of
``saememory.train.TrainConfig`` unless overridden: batch, lr, warm-up, cosine decay, aux loss,
b_dec from the mean). Reported per SAE: held-out explained variance, dead fraction, L0, parameter
count, encoder multiply-adds per token, training wall time per sample, and encode time per 1,000
tokens through saememory's own torch inference (``SparseAutoencoder.encode``, median of repeats).
Times are CPU time of this process with one torch thread (``--threads``), which other jobs on a
shared machine disturb less than wall time; compare them within one run, not across runs.

Writes the ``sae_training`` section of ``BENCHMARKS.md`` and, with ``--json``, the raw rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import commit, machine, write_section  # noqa: E402

from saememory.sae import SparseAutoencoder  # noqa: E402
from saememory.train import TrainConfig, evaluate, fit, load_activations, make_sae  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = ROOT / ".." / "shared" / "data" / "chat_corpus" / "sgd_topicalchat_turns.jsonl.gz"
MD_START, MD_END = "<!-- sae_training:start -->", "<!-- sae_training:end -->"
# (architecture, d_sae, h, m, n): TopK at the KronSAE dictionary size and at the KronSAE encoder widths.
DEFAULT_SETTINGS = ["topk:4096", "topk:2048", "kronsae:4096:512:2:4", "kronsae:4096:256:4:4", "kronsae:4096:256:2:8"]


def parse_setting(text: str) -> dict[str, Any]:
    """``topk:<d_sae>`` or ``kronsae:<d_sae>:<h>:<m>:<n>``."""
    parts = text.split(":")
    if parts[0] == "topk" and len(parts) == 2:
        return {"architecture": "topk", "d_sae": int(parts[1])}
    if parts[0] == "kronsae" and len(parts) == 5:
        d_sae, h, m, n = map(int, parts[1:])
        return {"architecture": "kronsae", "d_sae": d_sae, "h": h, "m": m, "n": n}
    raise ValueError(f"Setting {text!r} is not 'topk:<d_sae>' or 'kronsae:<d_sae>:<h>:<m>:<n>'.")


def encode_ms_per_1k(sae_dir: Path, tokens: torch.Tensor, repeats: int) -> float:
    """Median CPU milliseconds to encode 1,000 token vectors with saememory's torch inference.

    CPU time of this process (``time.process_time``) rather than wall time, so that other jobs on
    a shared machine inflate it less; run with one torch thread.
    """
    sae = SparseAutoencoder.from_disk(sae_dir)
    x = tokens[:1000]
    sae.encode(x)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.process_time()
        sae.encode(x)
        times.append(time.process_time() - started)
    return 1000 * statistics.median(times)


def run_one(setting: dict[str, Any], base: dict[str, Any], train: torch.Tensor, heldout: torch.Tensor,
            hook: str, repeats: int) -> dict[str, Any]:
    from saememory.kronsae import encoder_flops, parameter_count

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(**{**base, **setting, "out": tmp, "checkpoint_every": 0})
        sae = make_sae(cfg, train, hook)
        run = fit(cfg, sae, train, None)
        sae.eval()
        metrics = evaluate(sae, heldout)
        sae.save_inference_model(tmp)
        encode_ms = encode_ms_per_1k(Path(tmp), heldout, repeats)
    shape = {key: setting[key] for key in ("h", "m", "n") if key in setting}
    d_in = int(train.shape[1])
    samples = run["steps"] * run["batch_size"]
    return {
        **setting,
        "k": cfg.k,
        "parameters": parameter_count(cfg.architecture, d_in, cfg.d_sae, **shape),
        "encoder_flops_per_token": encoder_flops(cfg.architecture, d_in, cfg.d_sae, **shape),
        "samples_seen": samples,
        "steps": run["steps"],
        "train_seconds": run["train_seconds"],
        "train_cpu_seconds": run["train_cpu_seconds"],
        "train_cpu_us_per_sample": 1e6 * run["train_cpu_seconds"] / samples,
        "encode_ms_per_1k_tokens": encode_ms,
        **{key: metrics[key] for key in ("explained_variance", "fvu", "l0", "dead_fraction", "dense_fraction")},
    }


def render(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    ref = next((r for r in rows if r["architecture"] == "topk" and r["d_sae"] == max(x["d_sae"] for x in rows)), rows[0])
    lines = [
        MD_START,
        "## SAE training: TopK vs KronSAE (layer-4 token states)",
        "",
        f"Date {info['date']}; commit {info['commit']}; machine: {info['machine']}.",
        "",
        f"Command: `{info['command']}`",
        "",
        f"Data: layer-4 token states of all-MiniLM-L6-v2 over `{info['corpus']}` (special tokens dropped): "
        f"{info['train_tokens']:,} training tokens drawn with seed {info['seed']} from {info['available_tokens']:,} "
        f"cached ones; evaluated on {info['eval_tokens']:,} tokens of held-out messages. Every SAE: k = {info['k']}, "
        f"{info['samples']:,} samples seen in batches of {info['batch_size']}, Adam lr {info['lr']:g} (cosine to "
        f"{info['lr'] * info['lr_end_fraction']:g}), TopK auxiliary loss {info['aux_loss_coefficient']:g}, b_dec "
        f"from the {info['b_dec_init']}. Encoder FLOPs are the multiply-adds of the encoder matrix per token "
        "(TopK d·F, KronSAE d·h(m+n)); times are CPU time of the benchmark process (one torch thread) on a "
        "shared 2-core machine with other jobs running: training per sample seen, and encoding 1,000 held-out "
        "tokens with saememory's torch `SparseAutoencoder.encode` (median of repeats). Compare them within "
        "this table only.",
        "",
        "| SAE | F (latents) | h × (m, n) | encoder FLOPs/token (vs TopK F) | parameters | explained variance | "
        "dead fraction | L0 | train CPU µs/sample | encode CPU ms/1k tokens |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        shape = f"{r['h']} × ({r['m']}, {r['n']})" if r["architecture"] == "kronsae" else "–"
        lines.append(
            f"| {r['architecture']} | {r['d_sae']:,} | {shape} | {r['encoder_flops_per_token']:,} "
            f"({r['encoder_flops_per_token'] / ref['encoder_flops_per_token']:.3f}) | {r['parameters']:,} | "
            f"{r['explained_variance']:.3f} | {r['dead_fraction']:.4f} | {r['l0']:.1f} | "
            f"{r['train_cpu_us_per_sample']:.0f} | {r['encode_ms_per_1k_tokens']:.1f} |"
        )
    lines += ["", *comparisons(rows), "", MD_END, ""]
    return "\n".join(lines)


def comparisons(rows: list[dict[str, Any]]) -> list[str]:
    """One line per KronSAE: its explained variance against TopK at equal F and at equal encoder FLOPs."""
    lines = []
    for kron in (r for r in rows if r["architecture"] == "kronsae"):
        name = f"KronSAE {kron['h']} × ({kron['m']}, {kron['n']})"
        for label, key in (("equal dictionary size", "d_sae"), ("equal encoder FLOPs", "encoder_flops_per_token")):
            peer = next((r for r in rows if r["architecture"] == "topk" and r[key] == kron[key]), None)
            if peer is not None:
                lines.append(
                    f"- {name} vs TopK F = {peer['d_sae']:,} ({label}): explained variance "
                    f"{kron['explained_variance']:.3f} vs {peer['explained_variance']:.3f} "
                    f"({kron['explained_variance'] - peer['explained_variance']:+.3f}), dead fraction "
                    f"{kron['dead_fraction']:.3f} vs {peer['dead_fraction']:.3f}, encode CPU time "
                    f"{kron['encode_ms_per_1k_tokens'] / peer['encode_ms_per_1k_tokens']:.2f}× TopK's."
                )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    parser.add_argument("--cache-dir", default=str(ROOT / ".cache" / "activations"))
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS,
                        help="topk:<d_sae> or kronsae:<d_sae>:<h>:<m>:<n>")
    parser.add_argument("--train-tokens", type=int, default=300_000)
    parser.add_argument("--eval-tokens", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=300_000, help="samples seen by every SAE")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=20, help="timing repeats of the encode measurement")
    parser.add_argument("--md", default=str(ROOT / "BENCHMARKS.md"), help="'none' to skip")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (timings are per-process CPU time)")
    args = parser.parse_args(argv)
    settings = [parse_setting(s) for s in args.settings]
    torch.set_num_threads(args.threads)

    corpus = os.path.relpath(args.corpus, ROOT)
    acts = load_activations(TrainConfig(corpus=[corpus], out="unused", cache_dir=args.cache_dir, seed=0))
    generator = torch.Generator().manual_seed(args.seed)
    pick = torch.randperm(acts.train.shape[0], generator=generator)[: args.train_tokens].sort().values
    train = acts.train[pick].contiguous()
    heldout = acts.heldout[: args.eval_tokens].contiguous()
    available = int(acts.train.shape[0])
    del acts
    base = {"corpus": [corpus], "k": args.k, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
            "epochs": args.samples / train.shape[0], "cache_dir": args.cache_dir}
    rows = []
    for setting in settings:
        row = run_one(setting, base, train, heldout, "hidden_states.4", args.repeats)
        print(json.dumps(row), flush=True)
        rows.append(row)
    defaults = TrainConfig(corpus=[corpus], out="unused")
    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(),
        "machine": machine(),
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
        "corpus": corpus,
        "train_tokens": int(train.shape[0]),
        "available_tokens": available,
        "eval_tokens": int(heldout.shape[0]),
        "seed": args.seed,
        "k": args.k,
        "samples": rows[0]["samples_seen"],
        "batch_size": args.batch_size,
        "lr": args.lr,
        "lr_end_fraction": defaults.lr_end_fraction,
        "aux_loss_coefficient": defaults.aux_loss_coefficient,
        "b_dec_init": defaults.b_dec_init,
    }
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "rows": rows}, indent=2) + "\n")
    if args.md.lower() != "none":
        write_section(Path(args.md), render(rows, info), MD_START, MD_END)
    print(render(rows, info))


if __name__ == "__main__":
    main()
