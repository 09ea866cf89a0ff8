"""A LlamaIndex ``BaseRetriever`` over ``saememory.SAEMemory``; all logic stays in the core."""

from __future__ import annotations

import asyncio
from typing import Any, Iterable, Mapping

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.callbacks import CallbackManager
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from saememory import EXPLANATION_KEYS, Hit, SAEMemory, SearchConfig, check_user
from saememory.backends import Backend
from saememory.messages import is_conversation, message_dict, with_session



def to_message_dicts(
    messages: Iterable[ChatMessage | Mapping[str, Any]],
    session_id: str | None = None,
) -> list[dict[str, Any]]:
    """Turns LlamaIndex ``ChatMessage``s (or dicts) into saememory message dicts.

    ``id``, ``session_id``, ``timestamp`` and ``user_id`` are read from a ``ChatMessage``'s
    ``additional_kwargs`` when present; ``session_id`` here fills in where a message has none.
    """
    out = []
    for message in messages:
        if not isinstance(message, ChatMessage):
            out.append(with_session(dict(message), session_id))
            continue
        out.append(message_dict(message.content, getattr(message.role, "value", message.role),
                                message.additional_kwargs, session_id))
    return out


def is_chat_turn(message: ChatMessage | Mapping[str, Any]) -> bool:
    """Whether a memory keeps the message (``saememory.messages.is_conversation``: no system
    prompt, tool result or tool call without text)."""
    if isinstance(message, ChatMessage):
        tool_call = bool(message.additional_kwargs.get("tool_calls")) or any(
            type(block).__name__ == "ToolCallBlock" for block in getattr(message, "blocks", None) or ())
        return is_conversation(getattr(message.role, "value", message.role), message.content, tool_call)
    return is_conversation(message.get("role"), message.get("content"), bool(message.get("tool_calls")))


def _conversation(messages: Iterable[ChatMessage | Mapping[str, Any]], session_id: str | None) -> list[dict[str, Any]]:
    """The messages a memory keeps (``is_chat_turn``), as message dicts."""
    return to_message_dicts([m for m in messages if is_chat_turn(m)], session_id)


def hit_to_node(hit: Hit) -> NodeWithScore:
    """A node whose id is the message id; scores and features are kept from the LLM and embedder."""
    metadata = hit.to_metadata()
    node = TextNode(
        id_=hit.id,
        text=hit.content,
        metadata=metadata,
        excluded_llm_metadata_keys=[k for k in metadata if k in EXPLANATION_KEYS or k in ("id", "user_id")],
        excluded_embed_metadata_keys=list(metadata),
    )
    return NodeWithScore(node=node, score=hit.score)


class SAEMemoryRetriever(BaseRetriever):
    """Retrieves past chat messages from an interpretable SAE memory.

    Node ids are the stable message ids; node metadata holds the same keys as the LangChain
    retriever's documents (``role``, ``session_id``, ``timestamp``, ``user_id``, ``score``,
    ``dense_score``, ``sparse_score``, ``rank``, ``truncated``, ``features``,
    ``shared_features``), of which the LLM sees role, session, timestamp, time and the message's
    own metadata (ids, scores and features are kept from it).

    Args:
        memory: The ``SAEMemory`` to search.
        similarity_top_k: Messages per query. Defaults to 10.
        user_id: Whose memories this retriever reads. Defaults to None, the default user.
        session_id: Restrict to one session. Defaults to None (all sessions of the user).
        since, until: Only messages said in this window (any timestamp form; see
            ``saememory.Message``). Defaults to None.
        roles: Only messages of these roles, e.g. ``"user"``. Defaults to None (all).
        now: The time queries are asked at, which their time words ("two weeks ago") count
            back from. Defaults to None: the present at each query.
        min_score: Drop hits with a lower combined score. Defaults to None.
        steer: SAE features to boost or suppress in every query (feature id or label text to
            strength; see ``SAEMemory.search``). Defaults to None.
        max_chars: A context budget in characters: of the ``similarity_top_k`` best, keep those
            that fit, skipping any that would overflow (see ``SAEMemory.search``). Defaults to
            None (no budget).
        words: Explain every hit word by word (``matched_words`` in the node metadata; see
            ``SAEMemory.search``). Defaults to False.
        callback_manager: LlamaIndex callback manager. Defaults to a new one.
    """

    def __init__(
        self,
        memory: SAEMemory,
        similarity_top_k: int = 10,
        user_id: str | None = None,
        session_id: str | None = None,
        since: Any = None,
        until: Any = None,
        roles: str | list[str] | None = None,
        now: Any = None,
        min_score: float | None = None,
        steer: dict[int | str, float] | None = None,
        max_chars: int | None = None,
        words: bool = False,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        self.memory = memory
        self.similarity_top_k = similarity_top_k
        self.user_id = user_id
        self.session_id = session_id
        self.since, self.until, self.roles, self.now = since, until, roles, now
        self.min_score = min_score
        self.steer = steer
        self.max_chars = max_chars
        self.words = words
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    @classmethod
    def from_messages(
        cls,
        messages: Iterable[ChatMessage | Mapping[str, Any]],
        similarity_top_k: int = 10,
        user_id: str | None = None,
        *,
        session_id: str | None = None,
        encoder: Any = None,
        backend: Backend | None = None,
        config: SearchConfig | None = None,
        show_progress: bool = False,
        **kwargs: Any,
    ) -> SAEMemoryRetriever:
        """Builds a memory from messages and a retriever over it.

        Args:
            messages: ``ChatMessage``s or dicts with ``role``/``content`` and optionally
                ``session_id``, ``timestamp``, ``user_id``, ``id``.
            similarity_top_k: Messages per query. Defaults to 10.
            user_id: Owner of every message (one naming another user is refused) and the user
                this retriever reads. Defaults to None: each message keeps its own ``user_id``
                (a multi-user import), and the retriever reads the default user.
            session_id: Session of messages that name none. Defaults to None ("default").
            encoder: An ``Encoder`` or ``EncoderConfig``. Defaults to the bundled MiniLM + SAE.
            backend: Where the messages live (``FaissBackend`` or ``MilvusBackend``). Defaults to
                None: in this process, exact.
            config: The ranking settings, a ``SearchConfig``. Defaults to None: the default ranking.
            show_progress: Progress bar while encoding. Defaults to False.
            **kwargs: Retriever arguments (``min_score``, ``steer``, ``max_chars``, ...).
        """
        memory = SAEMemory(encoder, backend=backend, config=config)
        memory.add(_conversation(messages, session_id), show_progress=show_progress, user_id=user_id)
        return cls(memory, similarity_top_k=similarity_top_k, user_id=user_id, **kwargs)

    @classmethod
    def from_memory(cls, memory: SAEMemory, similarity_top_k: int = 10, **kwargs: Any) -> SAEMemoryRetriever:
        """A retriever over an existing memory. ``similarity_top_k`` is LlamaIndex's name for LangChain's ``k``."""
        return cls(memory, similarity_top_k=similarity_top_k, **kwargs)

    def add_messages(self, messages: Iterable[ChatMessage | Mapping[str, Any]], session_id: str | None = None) -> list[str]:
        """Adds messages to the memory, owned by this retriever's user; searchable at once.

        Raises:
            ValueError: If a message names another user: a retriever writes only its own user's memory.
        """
        return self.memory.add(_conversation(messages, session_id or self.session_id), user_id=check_user(self.user_id))

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = self.memory.search(
            query_bundle.query_str,
            k=self.similarity_top_k,
            user_id=self.user_id,
            session_id=self.session_id,
            since=self.since,
            until=self.until,
            roles=self.roles,
            now=self.now,
            min_score=self.min_score,
            steer=self.steer,
            max_chars=self.max_chars,
            words=self.words,
        )
        if not hits:
            self.memory.warn_if_unseen(self.user_id)
        return [hit_to_node(hit) for hit in hits]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        # The default runs _retrieve on the event loop; encoding is CPU-bound, so use a thread.
        return await asyncio.to_thread(self._retrieve, query_bundle)
