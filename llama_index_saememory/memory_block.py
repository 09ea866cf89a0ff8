"""A LlamaIndex ``Memory`` block that recalls relevant past messages from an ``SAEMemory``."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import warnings
from typing import Any

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.memory.memory import BaseMemoryBlock
from pydantic import ConfigDict, Field, PrivateAttr, field_validator

from saememory import SAEMemory, check_user
from saememory.messages import new_record, role_name
from saememory.times import local_instant
from llama_index_saememory.retriever import is_chat_turn, to_message_dicts


def message_id(message: ChatMessage, session_id: str | None, user_id: str) -> str:
    """A stable id: the message's own ``additional_kwargs["id"]``, else a hash of user, session, role and text.

    Identical text said twice by the same role in one session of one user is stored once; two
    users who say the same thing each keep their own message.
    """
    given = message.additional_kwargs.get("id")
    if given:
        return str(given)
    role = getattr(message.role, "value", message.role)
    key = json.dumps([user_id, session_id, role, message.content])  # unambiguous, whatever the text holds
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class SAEMemoryBlock(BaseMemoryBlock[str]):
    """Indexes the conversation and injects the relevant past messages.

    LlamaIndex hands memory blocks only the messages flushed out of the short-term queue; this
    block also indexes every message it is shown when the memory is read, the newest (the
    question being answered) included; system messages are left out (they are instructions,
    not conversation). A message is searchable from the next turn on. It searches with the
    newest message, leaves out messages still in the short-term chat history (they are in the
    prompt already), and returns them as ``[timestamp] role: content`` lines. SAE features and
    scores stay out of the prompt.

    The reply to the last question of a conversation is shown to the block only by a later
    read of the same ``Memory`` or a flush. When a conversation ends, store the rest with
    ``block.index(memory.get_all(), session_id=memory.session_id)`` (or ``await
    block.aindex(...)``); messages already stored are skipped.

    Sessions: LlamaIndex's ``Memory`` gives every message it hands a block its own
    ``session_id``, so one ``Memory`` is one session; make one per conversation over the same
    ``SAEMemory`` (a later statement supersedes an earlier one only across sessions).

    Args:
        memory: The ``SAEMemory`` to write to and read from.
        k: Past messages injected per turn. Defaults to 5.
        user_id: Owner of every message this block stores and the user it reads; a message
            naming another user is refused. Defaults to None (the default user).
        min_score: Inject only hits with at least this combined score. Defaults to None.
        now: The time questions are asked at, which their time words ("two weeks ago") count
            back from (any timestamp form; see ``saememory.Message``). Defaults to None: the
            present at each read.
        name: Block name in the memory template. Defaults to ``"saememory"``.

    Identical text said twice by the same role in one conversation is stored once (a message
    without ``additional_kwargs["id"]`` is named by its user, session, role and text); give
    messages ids of their own to keep every one. A message the memory refuses (text that is not
    valid Unicode, an ``additional_kwargs`` timestamp that is no time) in a chat's turns is left
    out with a ``UserWarning`` that names it, once per block, and the chat goes on; ``index``
    raises instead.

    Raises:
        pydantic.ValidationError: On a setting this block does not have (a misspelt ``user_id``
            would otherwise read and write the default user), or a bad value, when the block is
            made or a setting changed: ``k`` not a whole number >= 1 (``True`` and ``2.0`` too), an empty ``user_id``, a
            ``min_score`` that is not finite, a ``now`` that is no time.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", validate_assignment=True)

    name: str = "saememory"
    description: str | None = "Relevant messages from earlier in the conversation."
    memory: SAEMemory = Field(exclude=True)
    k: int = 5
    user_id: str | None = None
    min_score: float | None = None
    now: Any = None
    _refused: set[tuple[str, str]] = PrivateAttr(default_factory=set)  # messages it could not store, warned of

    @field_validator("k", mode="before")
    @classmethod
    def _check_k_kind(cls, k: Any) -> Any:
        # Before pydantic's conversion, which would take True for 1 and 2.0 for 2; "5" (from a
        # setting's text) and numpy's integers are converted as usual, then checked below.
        if isinstance(k, (bool, float)):
            raise ValueError(f"k must be a whole number >= 1 (the past messages injected per turn), got {k!r}.")
        return k

    @field_validator("k")
    @classmethod
    def _check_k(cls, k: int) -> int:
        if k < 1:
            raise ValueError(f"k must be a whole number >= 1 (the past messages injected per turn), got {k!r}.")
        return k

    @field_validator("min_score")
    @classmethod
    def _check_min_score(cls, min_score: float | None) -> float | None:
        if min_score is not None and not math.isfinite(min_score):
            raise ValueError(f"min_score must be a finite number or None, got {min_score!r}.")
        return min_score

    @field_validator("user_id")
    @classmethod
    def _check_user(cls, user_id: str | None) -> str | None:
        check_user(user_id)  # now, not at the first turn of a chat
        return user_id

    @field_validator("now")
    @classmethod
    def _check_now(cls, now: Any) -> Any:
        if now is not None:
            local_instant(now, "now")
        return now

    def index(self, messages: list[ChatMessage], session_id: str) -> list[str]:
        """Stores the messages not stored yet (system messages, tool calls and empty turns left
        out), as this block's user; returns the ids of the ones kept, stored now or before.

        Args:
            messages: The conversation, e.g. ``memory.get_all()`` when it ends.
            session_id: Their session: ``memory.session_id``, the one the block's reads store
                them under, so a message read before is recognised and not stored twice.

        Raises:
            ValueError: If a message cannot be stored (named by its place); none is stored then.
                In a chat's turns the block leaves such a message out with a warning instead.
        """
        return sorted(self._index(list(messages), session_id, strict=True))

    async def aindex(self, messages: list[ChatMessage], session_id: str) -> list[str]:
        """``index`` off the event loop (encoding is CPU-bound)."""
        return await asyncio.to_thread(self.index, list(messages), session_id)

    def _index(self, messages: list[ChatMessage], session_id: str | None, strict: bool = False) -> set[str]:
        """Adds the messages not stored yet; returns the ids of all of them. A message the
        memory refuses raises if ``strict`` (``index``), else it is left out with a warning
        (a chat's turns)."""
        user = check_user(self.user_id)
        ids, new, pending = [], [], {}  # pending: id -> text, of the messages to add
        for position, message in enumerate(messages):
            if not is_chat_turn(message) or not isinstance(message.content, str) or not message.content.strip():
                continue  # instructions (and this block's own injected text), tools, empty turns: nothing to recall
            mid = message_id(message, session_id, user)
            ids.append(mid)
            try:
                stored = self.memory.get(mid, user_id=user)  # one lookup (a query, on Milvus) per message
            except KeyError:
                stored = None
            if stored is not None and stored["content"] != message.content:  # only an id the app gave can differ
                raise ValueError(f"Message id {mid!r} (additional_kwargs['id']) is already stored for user {user!r} "
                                 "with other text; ids must be unique per user, or the new message would be lost. "
                                 "Give each message its own id, or none (the block then makes one from its text).")
            if stored is None and mid in pending and pending[mid] != message.content:
                raise ValueError(f"Message id {mid!r} (additional_kwargs['id']) is given to two messages with other "
                                 "text in one conversation; the second would be lost. Give each message its own id, "
                                 "or none (the block then makes one from its text).")
            if stored is None and mid not in pending:
                (record,) = to_message_dicts([message], session_id)
                try:  # checked here, so that the error names the message in the conversation
                    new_record({**record, "id": mid}, position, user)
                except (TypeError, ValueError) as err:
                    where = (f"It is message {position} of the {len(messages)} the block was given "
                             f"({getattr(message.role, 'value', message.role)}: {message.content[:60]!r})")
                    if strict:
                        raise type(err)(f"{err} {where}; nothing of them was stored.") from None
                    # In a chat's turns, raising would fail every turn while the message stays in
                    # the window, and keep the newer ones out: it is left out, said once per block.
                    if (user, mid) not in self._refused:
                        self._refused.add((user, mid))
                        warnings.warn(f"{err} {where}; the block leaves it out of the memory and stores the others.",
                                      UserWarning, stacklevel=3)
                    ids.remove(mid)
                    continue
                new.append({**record, "id": mid})
                pending[mid] = message.content
        if new:
            try:
                self.memory.add(new, user_id=user)
            except ValueError:
                rest = [r for r in new if not self.memory.contains(r["id"], user_id=user)]
                if len(rest) == len(new):
                    raise  # nothing was stored meanwhile: the batch itself is refused, and none of it stored
                self.memory.add(rest, user_id=user)  # another task stored some of them meanwhile
        return set(ids)

    def _recall(self, messages: list[ChatMessage], session_id: str | None) -> str:
        if not messages:
            return ""
        query = messages[-1].content if isinstance(messages[-1].content, str) else ""
        in_prompt = self._index(messages, session_id)  # the question too: a chat app stores what was asked
        seen = {(role_name(getattr(m.role, "value", m.role)), m.content) for m in messages}  # as stored: "model" is "assistant"
        if not query.strip() or len(self.memory) == 0:
            return ""
        hits = self.memory.search(query, k=self.k + len(messages), user_id=self.user_id, min_score=self.min_score,
                                  now=self.now)
        lines = [
            f"[{h.timestamp or h.session_id}] {h.role}: {h.content}"
            for h in hits
            if h.id not in in_prompt and (h.role, h.content) not in seen
        ]
        return "\n".join(lines[: self.k])

    async def _aget(self, messages: list[ChatMessage] | None = None, **block_kwargs: Any) -> str:
        # Encoding is CPU-bound: keep it off the event loop.
        return await asyncio.to_thread(self._recall, list(messages or []), block_kwargs.get("session_id"))

    async def _aput(self, messages: list[ChatMessage]) -> None:
        session = messages[0].additional_kwargs.get("session_id") if messages else None
        await asyncio.to_thread(self._index, messages, session)
