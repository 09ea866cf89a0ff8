"""saememory: interpretable long-term chat memory (dense + sparse-autoencoder retrieval).

The core is framework-free: ``SAEMemory`` indexes messages per user and returns ``Hit``s with
their dense, sparse and combined scores and the SAE features behind them. The LangChain and
LlamaIndex retrievers (``langchain_saememory``, ``llama_index_saememory``) wrap it.

Names are imported on first use, so ``import saememory.scoring`` (numpy only) loads neither
torch nor faiss.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "DEFAULT_MODEL": "saememory.encoder",
    "DEFAULT_SAE": "saememory.encoder",
    "Encoded": "saememory.encoder",
    "Encoder": "saememory.encoder",
    "EncoderConfig": "saememory.encoder",
    "list_bundled_saes": "saememory.encoder",
    "load_sae": "saememory.encoder",
    "DEFAULT_USER": "saememory.memory",
    "EXPLANATION_KEYS": "saememory.memory",
    "Hit": "saememory.memory",
    "Message": "saememory.memory",
    "SAEMemory": "saememory.memory",
    "check_user": "saememory.memory",
    "format_hit": "saememory.memory",
    "SAEConfig": "saememory.sae",
    "SparseAutoencoder": "saememory.sae",
    "load_labels": "saememory.sae",
    "FUSIONS": "saememory.scoring",
    "combine": "saememory.scoring",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time names load lazily
    from saememory.encoder import DEFAULT_MODEL, DEFAULT_SAE, Encoded, Encoder, EncoderConfig, list_bundled_saes, load_sae
    from saememory.memory import DEFAULT_USER, EXPLANATION_KEYS, Hit, Message, SAEMemory, check_user, format_hit
    from saememory.sae import SAEConfig, SparseAutoencoder, load_labels
    from saememory.scoring import FUSIONS, combine


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'saememory' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
