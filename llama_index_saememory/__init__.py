"""LlamaIndex integration of saememory: ``SAEMemoryRetriever`` and the ``SAEMemoryBlock`` memory block.

Needs ``saememory[llama-index]``.
"""

try:
    import llama_index.core  # noqa: F401
except ImportError:
    raise ImportError('llama_index_saememory needs llama-index-core: pip install "saememory[llama-index]"') from None

from llama_index_saememory.memory_block import SAEMemoryBlock
from llama_index_saememory.retriever import SAEMemoryRetriever, hit_to_node, to_message_dicts

__all__ = ["SAEMemoryBlock", "SAEMemoryRetriever", "hit_to_node", "to_message_dicts"]
