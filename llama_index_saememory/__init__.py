"""LlamaIndex retriever over an ``SAEMemory``: ``SAEMemoryRetriever``."""

from llama_index_saememory.retriever import SAEMemoryRetriever, to_message_dicts

__all__ = ["SAEMemoryRetriever", "to_message_dicts"]
