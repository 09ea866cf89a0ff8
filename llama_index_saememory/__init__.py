"""LlamaIndex integration of saememory: ``SAEMemoryRetriever`` and the ``SAEMemoryBlock`` memory block."""

from llama_index_saememory.memory_block import SAEMemoryBlock
from llama_index_saememory.retriever import SAEMemoryRetriever, hit_to_node, to_message_dicts

__all__ = ["SAEMemoryBlock", "SAEMemoryRetriever", "hit_to_node", "to_message_dicts"]
