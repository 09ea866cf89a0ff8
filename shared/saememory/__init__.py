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
    "DEFAULT_MODEL": "saememory.encoders.sentence_transformer",
    "DEFAULT_SAE": "saememory.encoders.sentence_transformer",
    "Encoded": "saememory.encoders.base",
    "EncoderProtocol": "saememory.encoders.base",
    "Encoder": "saememory.encoders.sentence_transformer",
    "EncoderConfig": "saememory.encoders.sentence_transformer",
    "list_bundled_saes": "saememory.encoders.sentence_transformer",
    "load_sae": "saememory.encoders.sentence_transformer",
    "DEFAULT_USER": "saememory.messages",
    "Message": "saememory.messages",
    "check_user": "saememory.messages",
    "EXPLANATION_KEYS": "saememory.interpret.explain",
    "Hit": "saememory.interpret.explain",
    "format_hit": "saememory.interpret.explain",
    "SAEMemory": "saememory.memory",
    "SearchConfig": "saememory.ranking",
    "Backend": "saememory.backends",
    "FaissBackend": "saememory.backends",
    "MilvusBackend": "saememory.backends",
    "SaveConflictError": "saememory.backends.snapshot",
    "SAEConfig": "saememory.sae",
    "SparseAutoencoder": "saememory.sae",
    "load_labels": "saememory.interpret.labels",
    "FUSIONS": "saememory.scoring",
    "combine": "saememory.scoring",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time names load lazily
    from saememory.encoders.base import Encoded, EncoderProtocol
    from saememory.encoders.sentence_transformer import DEFAULT_MODEL, DEFAULT_SAE, Encoder, EncoderConfig, list_bundled_saes, load_sae
    from saememory.backends import Backend, FaissBackend, MilvusBackend
    from saememory.backends.snapshot import SaveConflictError
    from saememory.interpret.explain import EXPLANATION_KEYS, Hit, format_hit
    from saememory.memory import SAEMemory
    from saememory.messages import DEFAULT_USER, Message, check_user
    from saememory.ranking import SearchConfig
    from saememory.interpret.labels import load_labels
    from saememory.sae import SAEConfig, SparseAutoencoder
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
