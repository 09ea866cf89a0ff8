"""saememory: interpretable long-term chat memory (dense + sparse-autoencoder retrieval).

The core is framework-free: ``SAEMemory`` indexes messages per user and returns ``Hit``s with
their dense, sparse and combined scores and the SAE features behind them. The LangChain and
LlamaIndex retrievers (``langchain_saememory``, ``llama_index_saememory``) wrap it.
"""

__version__ = "0.1.0"

from saememory.encoder import DEFAULT_MODEL, DEFAULT_SAE, Encoded, Encoder, EncoderConfig, list_bundled_saes, load_sae
from saememory.memory import DEFAULT_USER, EXPLANATION_KEYS, Hit, Message, SAEMemory, format_hit
from saememory.sae import SAEConfig, SparseAutoencoder, load_labels
from saememory.scoring import FUSIONS, combine

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_SAE",
    "DEFAULT_USER",
    "EXPLANATION_KEYS",
    "FUSIONS",
    "Encoded",
    "Encoder",
    "EncoderConfig",
    "Hit",
    "Message",
    "SAEConfig",
    "SAEMemory",
    "SparseAutoencoder",
    "combine",
    "format_hit",
    "list_bundled_saes",
    "load_labels",
    "load_sae",
]
