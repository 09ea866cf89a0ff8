"""What every encoder is: the ``EncoderProtocol`` that ``SAEMemory`` uses, its output ``Encoded``,
and the registry that rebuilds a saved encoder from its config.

numpy and scipy only: the encoders themselves (torch, transformers, sentence-transformers) are
imported when a saved memory names one.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from saememory.sae import SparseAutoencoder

# How a message's token codes become one code (residual sources): element-wise max or mean.
POOLINGS = ("max", "mean")

# The "type" a saved encoder config carries -> (module, encoder class, config class).
ENCODER_TYPES: dict[str, tuple[str, str, str]] = {
    "sentence-transformer": ("saememory.encoders.sentence_transformer", "Encoder", "EncoderConfig"),
    "lm": ("saememory.encoders.lm", "LMEncoder", "LMEncoderConfig"),
}


@dataclass
class Encoded:
    """Encodings of a batch of texts, row-aligned.

    Attributes:
        dense: (n, dim) float32, L2-normalised.
        sparse: (n, d_sae) CSR float32, each row L2-normalised (or (n, 0) without an SAE).
        truncated: (n,) bool, True where the text exceeded the model's window.
    """

    dense: np.ndarray
    sparse: sp.csr_matrix
    truncated: np.ndarray


@runtime_checkable
class EncoderProtocol(Protocol):
    """The members ``SAEMemory`` uses of an encoder; this is the one list of them.

    ``Encoder`` (sentence-transformers, the default) and ``LMEncoder`` (a causal LM's residual
    stream) implement it; so can your own class. ``SAEMemory`` validates what it returns.
    ``steer`` is called only by a steered search and ``config`` only by ``encoder_config``, so a
    custom encoder without them works until those are needed (but is not an ``isinstance`` of
    this protocol).

    Attributes:
        dim: Width of the dense vectors.
        d_sae: Number of SAE features, 0 without an SAE.
        sae: The ``SparseAutoencoder`` behind the sparse codes (its labels and families explain
            hits), or None for dense only.
        config: Settings with ``to_dict()``; ``encoder_config`` saves them so that
            ``encoder_from_config`` can rebuild a registered encoder. A memory saved with any other
            encoder is loaded with ``SAEMemory.load(path, encoder=...)``.
    """

    dim: int
    d_sae: int
    sae: SparseAutoencoder | None
    config: Any

    def encode_documents(self, texts: list[str], show_progress: bool = False) -> Encoded:
        """Encodes messages, one row per text, in order."""
        ...

    def encode_query(self, text: str) -> Encoded:
        """Encodes one query (one row)."""
        ...

    def identity(self) -> dict[str, Any]:
        """What a saved memory records to recognise this encoder again (JSON values)."""
        ...

    def steer(self, query: Encoded, strengths: dict[int, float]) -> Encoded:
        """An encoded query with SAE features boosted or suppressed (``saememory.interpret.steering``)."""
        ...


def encoder_config(encoder: Any) -> dict[str, Any] | None:
    """The config to save for ``encoder``: its ``config.to_dict()`` plus its registered ``"type"``.

    Args:
        encoder: Any encoder.

    Returns:
        ``{"type": ..., **encoder.config.to_dict()}`` for an encoder of a type in
        ``ENCODER_TYPES`` (or a subclass of one); None for any other encoder, which cannot be
        rebuilt from a config.
    """
    for kind, (module, encoder_class, _) in ENCODER_TYPES.items():
        cls = getattr(sys.modules.get(module), encoder_class, None)  # not imported: not this type
        if cls is not None and isinstance(encoder, cls):
            return {"type": kind, **encoder.config.to_dict()}
    return None


def identity_hint(saved: dict[str, Any], now: dict[str, Any], saved_config: dict[str, Any] | None = None,
                  now_config: Any = None) -> str:
    """How to load a memory whose saved encoder identity differs from ``now`` (" ..." or "").

    Covers every setting a config can fix at once (``quantize``, ``split``, ``hygiene``), so one
    error names them all, and the SAE's ``hygiene.json`` changing or going missing.

    Args:
        saved, now: The saved and the current encoder identities.
        saved_config: The saved encoder config (``encoder_config``), if any.
        now_config: The current encoder's config (``EncoderConfig``), if any.
    """
    fixes: dict[str, Any] = {}
    notes: list[str] = []
    if saved.get("quantized") != now.get("quantized"):  # int8 or full precision: the one key that tells them apart
        fixes["quantize"] = saved.get("quantized") == "int8"
        notes.append("an int8 memory cannot move to runtime='torch' without adding its messages again")
    if saved.get("split") != now.get("split"):  # no key: whole messages, as saved before splitting existed
        fixes["split"] = saved.get("split", "none")
    rebuild = saved_config is not None
    was, hidden = saved.get("sae_hygiene"), now.get("sae_hygiene")
    if was != hidden:
        if was is not None and hidden is not None:
            notes.append("the SAE's hygiene.json hides other features than when the memory was saved; restore that "
                         "file, or add the messages again to a new memory")
            rebuild = False
        elif was is not None and getattr(now_config, "hygiene", False):
            notes.append("the SAE hides no feature now: its hygiene.json is missing or was not attached (see the "
                         "warning logged when it loaded); restore it")
            rebuild = False
        elif was is not None:
            fixes["hygiene"] = True
        else:
            fixes["hygiene"] = False
            # Saved with hygiene on while the SAE hid nothing: rebuilt now, it would hide features.
            rebuild = rebuild and not (saved_config or {}).get("hygiene", False)
    out = ""
    if fixes:
        settings = ", ".join(f"{k}={v!r}" for k, v in fixes.items())
        out += f" Pass encoder=EncoderConfig({settings}) with the rest of its settings"
        out += ", or no encoder at all to rebuild it from the save." if rebuild else "."
    return out + "".join(f" Note: {note}." for note in notes)


def encoder_from_config(config: dict[str, Any]) -> EncoderProtocol:
    """Builds the encoder a saved config describes (the inverse of ``encoder_config``).

    Args:
        config: A dict from ``encoder_config``. A config saved before the ``"type"`` key existed
            is read as an LM encoder if it has an ``"lm"`` key, else as the sentence-transformers
            ``Encoder``.

    Returns:
        A new encoder; its models and SAE are loaded.

    Raises:
        ValueError: If the type is not registered, or the settings are not that type's.
    """
    encoder_class, settings = saved_encoder_config(config)
    return encoder_class(settings)


def saved_encoder_config(config: dict[str, Any]) -> tuple[type, Any]:
    """The encoder class and its config object a saved config describes, with every default
    filled in, before any model is loaded (``encoder_from_config`` then builds it).

    Raises:
        ValueError: If the type is not registered, or the settings are not that type's.
    """
    settings = dict(config)
    kind = settings.pop("type", None) or ("lm" if "lm" in settings else "sentence-transformer")
    if kind not in ENCODER_TYPES:
        raise ValueError(
            f"Encoder type {kind!r} is not one of {sorted(ENCODER_TYPES)}; pass the encoder itself "
            "(e.g. SAEMemory.load(path, encoder=...))."
        )
    module_name, encoder_class, config_class = ENCODER_TYPES[kind]
    module = importlib.import_module(module_name)
    return getattr(module, encoder_class), getattr(module, config_class).from_dict(settings)


def check_encoded(encoded: Encoded, n: int, dim: int, d_sae: int, what: str = "messages") -> Encoded:
    """An encoder's output for ``n`` texts, checked before anything is stored or searched.

    Raises:
        ValueError: For vectors or codes of the wrong shape, NaN or infinite values, or
            truncated flags of the wrong shape, naming ``what`` was encoded.
    """
    consequence = "nothing was stored" if what == "messages" else "nothing was searched"
    dense = np.asarray(encoded.dense, dtype=np.float32)
    if dense.shape != (n, dim):
        raise ValueError(f"Encoder returned dense vectors of shape {dense.shape} for {what}, expected {(n, dim)}; "
                         f"{consequence}. A custom encoder must return one row per text.")
    sparse = sp.csr_matrix(encoded.sparse, dtype=np.float32)
    if sparse.shape != (n, d_sae):
        raise ValueError(f"Encoder returned sparse codes of shape {sparse.shape} for {what}, expected {(n, d_sae)}; "
                         f"{consequence}.")
    if not np.isfinite(dense).all() or not np.isfinite(sparse.data).all():
        raise ValueError(f"Encoder returned NaN or infinite values for {what}; {consequence}. "
                         "A custom encoder must return finite vectors.")
    truncated = np.asarray(getattr(encoded, "truncated", np.zeros(n, bool)), dtype=bool).reshape(-1)
    if truncated.shape != (n,):
        raise ValueError(f"Encoder returned truncated flags of shape {truncated.shape}, expected {(n,)}; "
                         f"{consequence}. A custom encoder must return one flag per text (or none).")
    return Encoded(dense=np.ascontiguousarray(dense), sparse=sparse, truncated=truncated)
