"""LangChain retriever over an ``SAEMemory``: ``SAEMemoryRetriever``. Needs ``saememory[langchain]``."""

try:
    import langchain_core  # noqa: F401
except ImportError:
    raise ImportError('langchain_saememory needs langchain-core: pip install "saememory[langchain]"') from None

from langchain_saememory.retriever import SAEMemoryRetriever, to_message_dicts

__all__ = ["SAEMemoryRetriever", "to_message_dicts"]
