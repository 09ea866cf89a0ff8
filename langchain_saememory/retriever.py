"""A LangChain ``BaseRetriever`` over ``saememory.SAEMemory``; all logic stays in the core."""

from __future__ import annotations

import asyncio
from typing import Any, Iterable, Mapping

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.messages import BaseMessage
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, field_serializer, field_validator

from saememory import SAEMemory, SearchConfig, check_user
from saememory.backends import Backend
from saememory.messages import is_conversation, message_dict, with_session

# LangChain message types to chat roles.
_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool", "function": "tool"}


def _role(message: BaseMessage) -> str:
    """A message's chat role: by its type, a chunk's as its message's, a ``ChatMessage``'s its own ``role``."""
    kind = message.type.removesuffix("MessageChunk").lower() if message.type.endswith("MessageChunk") else message.type
    if kind == "chat":
        return str(getattr(message, "role", kind))
    return _ROLES.get(kind, kind)


def to_message_dicts(
    messages: Iterable[BaseMessage | Mapping[str, Any]],
    session_id: str | None = None,
) -> list[dict[str, Any]]:
    """Turns LangChain messages (or dicts) into saememory message dicts.

    A ``BaseMessage`` gives ``role`` from its type, ``content`` from its text and ``id`` from its
    id; ``session_id``, ``timestamp`` and ``user_id`` are read from its ``additional_kwargs`` when
    present. ``session_id`` here fills in where a message has none; owners are the memory's to check.
    """
    out = []
    for message in messages:
        if not isinstance(message, BaseMessage):
            out.append(with_session(dict(message), session_id))
            continue
        text = message.text if isinstance(message.content, list) else message.content
        extras = {**({"id": message.id} if message.id else {}), **message.additional_kwargs}
        out.append(message_dict(text, _role(message), extras, session_id))
    return out


def _conversation(messages: Iterable[BaseMessage | Mapping[str, Any]], session_id: str | None) -> list[dict[str, Any]]:
    """The messages a memory keeps (``saememory.messages.is_conversation``: no system prompt, tool
    result or tool call without text), as message dicts."""
    messages = list(messages)
    return [d for m, d in zip(messages, to_message_dicts(messages, session_id))
            if is_conversation(d.get("role"), d.get("content"), _tool_call(m))]


def _tool_call(message: BaseMessage | Mapping[str, Any]) -> bool:
    """An assistant's tool call: ``AIMessage.tool_calls``, or a dict's ``tool_calls`` (OpenAI's form)."""
    return bool(getattr(message, "tool_calls", None) if isinstance(message, BaseMessage) else message.get("tool_calls"))


class SAEMemoryRetriever(BaseRetriever):
    """Retrieves past chat messages from an interpretable SAE memory.

    Each ``Document`` has ``id`` set to the message id and metadata holding the message's
    ``role``, ``session_id``, ``timestamp``, ``user_id``, ``truncated``, its ``score``,
    ``dense_score``, ``sparse_score`` and ``rank``, its strongest SAE ``features`` and the
    ``shared_features`` that made it match.

    Example:
        .. code-block:: python

            retriever = SAEMemoryRetriever.from_messages(
                [HumanMessage("My sister Ana lives in Lisbon.")], k=3
            )
            docs = retriever.invoke("Where does my sister live?", k=1)

    Args:
        memory: The ``SAEMemory`` to search.
        k: Messages per query. Defaults to 10; ``invoke(query, k=3)`` overrides it per call.
        user_id: Whose memories this retriever reads and ``add_messages`` writes. Defaults to
            None, the default user; ``invoke(query, user_id=...)`` reads another per call,
            unless ``lock_user``.
        lock_user: Refuse ``invoke(query, user_id=...)`` naming another user than ``user_id``
            (a ``ValueError``), for a retriever handed to code that must read one user only.
            Defaults to False. A ``user_id`` the application itself makes configurable
            (``configurable_fields``) builds a retriever for that user, as it asked.
        session_id: Restrict to one session. Defaults to None (all sessions of the user).
        since, until: Only messages said in this window (any timestamp form; see
            ``saememory.Message``). Defaults to None; ``invoke(q, since=...)`` sets it per call.
        roles: Only messages of these roles, e.g. ``"user"``. Defaults to None (all).
        now: The time queries are asked at, which their time words ("two weeks ago") count
            back from. Defaults to None: the present at each call; ``invoke(q, now=...)`` sets
            it per call.
        min_score: Drop hits with a lower combined score. Defaults to None.
        steer: SAE features to boost or suppress in every query (feature id or label text to
            strength; see ``SAEMemory.search``). Defaults to None; ``invoke(q, steer=...)``
            overrides it per call.
        max_chars: A context budget in characters: of the ``k`` best, keep those that fit,
            skipping any that would overflow (see ``SAEMemory.search``). Defaults to None (no
            budget); ``invoke(q, max_chars=...)`` overrides it per call.
        words: Explain every hit word by word (``matched_words`` in the metadata; see
            ``SAEMemory.search``). Defaults to False; ``invoke(q, words=True)`` per call.

    ``invoke(q, fusion="rrf")`` fuses the signals another way for one call (see ``SAEMemory.search``).
    """

    # A misspelt setting (user= for user_id=) is refused: ignored, it would read and write the default user.
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    memory: SAEMemory = Field(exclude=True)
    k: int = 10
    user_id: str | None = None
    session_id: str | None = None
    since: Any = None
    until: Any = None
    roles: str | list[str] | None = None
    now: Any = None
    min_score: float | None = None
    steer: dict[int | str, float] | None = None
    max_chars: int | None = None
    words: bool = False
    lock_user: bool = False

    # In JSON every key is a string, and a str key steers by text ("2019"), an int by feature id:
    # steering is written as [key, strength] pairs, so that feature 898 comes back as 898.
    @field_serializer("steer", when_used="json")
    def _steer_as_pairs(self, steer: dict[int | str, float] | None) -> list[list[Any]] | None:
        return None if steer is None else [[key, strength] for key, strength in steer.items()]

    @field_validator("steer", mode="before")
    @classmethod
    def _steer_from_pairs(cls, steer: Any) -> Any:
        if isinstance(steer, list) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in steer):
            return {key: strength for key, strength in steer}
        return steer

    @classmethod
    def from_messages(
        cls,
        messages: Iterable[BaseMessage | Mapping[str, Any]],
        k: int = 10,
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
            messages: LangChain messages or dicts with ``role``/``content`` and optionally
                ``session_id``, ``timestamp``, ``user_id``, ``id``. System prompts, tool results
                and tool calls without text are not stored.
            k: Messages per query. Defaults to 10.
            user_id: Owner of every message (one naming another user is refused) and the user
                this retriever reads. Defaults to None: each message keeps its own ``user_id``
                (a multi-user import), and the retriever reads the default user.
            session_id: Session of messages that name none. Defaults to None ("default").
            encoder: An ``Encoder`` or ``EncoderConfig``. Defaults to the bundled MiniLM + SAE.
            backend: Where the messages live (``FaissBackend`` or ``MilvusBackend``). Defaults to
                None: in this process, exact.
            config: The ranking settings, a ``SearchConfig``. Defaults to None: the default ranking.
            show_progress: Progress bar while encoding. Defaults to False.
            **kwargs: Retriever fields (``min_score``, ``steer``, ``max_chars``, ...).
        """
        memory = SAEMemory(encoder, backend=backend, config=config)
        memory.add(_conversation(messages, session_id), show_progress=show_progress, user_id=user_id)
        return cls(memory=memory, k=k, user_id=user_id, **kwargs)

    @classmethod
    def from_memory(cls, memory: SAEMemory, k: int = 10, **kwargs: Any) -> SAEMemoryRetriever:
        """A retriever over an existing memory."""
        return cls(memory=memory, k=k, **kwargs)

    def add_messages(self, messages: Iterable[BaseMessage | Mapping[str, Any]], session_id: str | None = None) -> list[str]:
        """Adds messages to the memory, owned by this retriever's user; searchable at once.
        System prompts, tool results and tool calls without text are not stored; returns the
        ids of the messages stored.

        Raises:
            ValueError: If a message names another user: a retriever writes only its own user's memory.
        """
        return self.memory.add(_conversation(messages, session_id or self.session_id), user_id=check_user(self.user_id))

    async def aadd_messages(
        self, messages: Iterable[BaseMessage | Mapping[str, Any]], session_id: str | None = None
    ) -> list[str]:
        """Async ``add_messages``; encoding runs in a worker thread."""
        return await asyncio.to_thread(self.add_messages, list(messages), session_id)

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
        since: Any = None,
        until: Any = None,
        roles: str | list[str] | None = None,
        now: Any = None,
        min_score: float | None = None,
        steer: dict[int | str, float] | None = None,
        max_chars: int | None = None,
        words: bool | None = None,
        fusion: str | None = None,
    ) -> list[Document]:
        if self.lock_user and user_id is not None and check_user(user_id) != check_user(self.user_id):
            raise ValueError(f"This retriever reads only user {check_user(self.user_id)!r} (lock_user=True); "
                             "it does not read another user per call. Use a retriever bound to that user.")
        hits = self.memory.search(
            query,
            k=self.k if k is None else k,
            user_id=user_id if user_id is not None else self.user_id,
            session_id=session_id if session_id is not None else self.session_id,
            since=since if since is not None else self.since,
            until=until if until is not None else self.until,
            roles=roles if roles is not None else self.roles,
            now=now if now is not None else self.now,
            min_score=min_score if min_score is not None else self.min_score,
            steer=steer if steer is not None else self.steer,
            max_chars=max_chars if max_chars is not None else self.max_chars,
            words=words if words is not None else self.words,
            fusion=fusion,
        )
        if not hits:
            self.memory.warn_if_unseen(user_id if user_id is not None else self.user_id)
        return [Document(id=hit.id, page_content=hit.content, metadata=hit.to_metadata()) for hit in hits]

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
        since: Any = None,
        until: Any = None,
        roles: str | list[str] | None = None,
        now: Any = None,
        min_score: float | None = None,
        steer: dict[int | str, float] | None = None,
        max_chars: int | None = None,
        words: bool | None = None,
        fusion: str | None = None,
    ) -> list[Document]:
        # Encoding is CPU-bound: run it off the event loop.
        return await asyncio.to_thread(
            self._get_relevant_documents,
            query,
            run_manager=run_manager.get_sync(),
            k=k,
            user_id=user_id,
            session_id=session_id,
            since=since,
            until=until,
            roles=roles,
            now=now,
            min_score=min_score,
            steer=steer,
            max_chars=max_chars,
            words=words,
            fusion=fusion,
        )
