"""What every benchmark script shares: machine and commit stamps, SAEMemory's default ranking, and
its section of BENCHMARKS.md."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    """CPU count and model, OS, Python and torch versions."""
    import torch

    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs, {model}, {platform.system()} {platform.release()}, Python {platform.python_version()}, torch {torch.__version__}"


def commit() -> str:
    """The short HEAD hash, marked when the tracked tree has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_section(md_path: Path, section: str, start: str, end: str) -> None:
    """Replaces the part of ``md_path`` between the ``start`` and ``end`` markers (or appends ``section``).

    ``section`` itself begins with ``start`` and ends with ``end``; the rest of the file is untouched.
    """
    text = md_path.read_text() if md_path.is_file() else "# Benchmarks\n\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    md_path.write_text(text)


def publish(md_path: Path, lines: list[str], start: str, end: str) -> None:
    """Writes a benchmark's section (``lines``, from ``start`` to ``end``) into ``md_path`` and prints it."""
    text = "\n".join(lines)
    write_section(md_path, text + "\n", start, end)
    print(text)


def library_defaults() -> dict[str, Any]:
    """The ranking settings of ``SAEMemory()``: ``SearchConfig()``, what a user gets by default."""
    return dict(_defaults())


@functools.cache
def _defaults() -> tuple[tuple[str, Any], ...]:
    # Read once per process: default_scores runs inside timed loops.
    from saememory.ranking import SearchConfig

    return tuple(SearchConfig().to_dict().items())


# SearchConfig settings that turn off every adjustment after fusion (saememory.current's for what
# is current, the search of the alternatives a query names, and the reordering by words): the rankings scored on cached
# matrices (fusion.py, longmemeval.py) are fusion alone, and benchmarks/current.py measures the
# adjustments through SAEMemory itself.
NO_ADJUSTMENTS = {"recency_weight": 0.0, "asks_penalty": 0.0, "time_weight": 0.0, "speaker_weight": 0.0,
                  "supersede_depth": 0, "alternatives": False, "word_weight": 0.0}


def default_scores(signals: Mapping[str, np.ndarray]) -> np.ndarray:
    """Fused scores of the raw ``dense``, ``sparse`` and ``bm25`` signals, as ``SAEMemory()`` fuses them.

    This is the default fusion, before the adjustments for what is current (``NO_ADJUSTMENTS``).
    The ``bm25`` signal must come from a ``LexicalIndex`` with ``library_defaults()["bm25_stemmer"]``.
    """
    from saememory.scoring import SIGNALS, fuse

    d = dict(_defaults())
    weights = {s: d[f"{s}_weight"] for s in SIGNALS}
    return fuse(signals, weights, d["fusion"], d["normalization"], d["rrf_k"], d["normalize_top"])[0]


def bootstrap(diff: np.ndarray, n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of paired differences."""
    rng = np.random.default_rng(seed)
    means = np.asarray(diff)[rng.integers(0, len(diff), size=(n, len(diff)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def wilson(share: float, n: int, z: float = 1.96) -> str:
    """A share with its 95% Wilson interval, e.g. ``0.47 [0.32, 0.62]``."""
    if n == 0:
        return "–"
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((share * (1 - share) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return f"{share:.2f} [{max(0.0, centre - half):.2f}, {min(1.0, centre + half):.2f}]"


def variant(pairs: list[str]) -> dict[str, float]:
    """Applies ``NAME=VALUE`` pairs: ``saememory.current`` and ``saememory.ranking`` constants
    are set at once, the ``SearchConfig`` settings returned."""
    from saememory import SearchConfig, current, ranking

    settings = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name in SearchConfig.names() and isinstance(getattr(SearchConfig(), name), bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise SystemExit(f"--set {pair}: {name} is true or false, got {value!r}")
            settings[name] = value.lower() in ("true", "1")
        elif name in SearchConfig.names():
            settings[name] = float(value) if "." in value else int(value)
        elif name.isupper() and (hasattr(current, name) or hasattr(ranking, name)):
            module = current if hasattr(current, name) else ranking
            kind = type(getattr(module, name))
            if kind is bool and value.lower() not in ("true", "false", "1", "0"):
                raise SystemExit(f"--set {pair}: {name} is true or false, got {value!r}")
            setattr(module, name, value.lower() in ("true", "1") if kind is bool else kind(value))
        else:
            raise SystemExit(f"--set {pair}: {name!r} is neither a SearchConfig setting nor a constant of "
                             "saememory.current or saememory.ranking")
    return settings
