"""Messages as they are stored: the ``Message`` type, owners, and the checks every write passes.

A stored record is plain JSON: ``id``, ``content``, ``role``, ``session_id``, ``timestamp`` (as
given, for display), ``time`` (its UTC instant, see ``saememory.times``), ``user_id`` and
``metadata``. Whatever passes these checks comes back unchanged from a save,
and a message is identified by its owner and its id together.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from saememory.times import stored_time

DEFAULT_USER = "default"
DEFAULT_SESSION = "default"
FIELDS = ("id", "content", "role", "session_id", "timestamp", "user_id")
# What every hit carries beside a message's metadata (``Hit``): a metadata key of the same name
# would be hidden by it in a LangChain document or LlamaIndex node, so it is refused.
RESULT_FIELDS = frozenset({*FIELDS, "time", "truncated", "score", "dense_score", "sparse_score", "bm25_score", "rank",
                           "calibrated_score", "signals", "features", "shared_features", "adjustments",
                           "explained_share", "matched_words", "words_share"}) - {"content"}


@dataclass
class Message:
    """One chat message.

    Args:
        content: The text.
        role: Who said it, e.g. ``"user"`` or ``"assistant"`` (LangChain's ``"human"`` and
            ``"ai"`` are stored as those). Defaults to None: ``"user"`` when added, the stored
            role when updated.
        id: An id, unique within the user's memory (two users may use the same id). Defaults
            to None: a new UUID when added.
        session_id: The conversation it belongs to. Defaults to None: ``"default"`` when added,
            the stored session when updated.
        timestamp: When it was said: ISO 8601 (with or without a zone; without, UTC), a
            ``datetime`` or ``date``, epoch seconds, or LongMemEval's ``2023/05/20 (Sat) 02:21``.
            Parsed when added; kept as given for display. Defaults to None: the time of adding.
        user_id: Whose memory it is. Defaults to None: the default user, ``"default"``.
        metadata: Extra fields, returned with every hit; JSON values with string keys, none
            named like a field of the hit (``score``, ``rank``, ``time`` ...: ``RESULT_FIELDS``).
            Defaults to None: empty when added, the stored metadata when updated.

    Every string given must be non-empty; None stands for "not given".
    """

    content: str
    role: str | None = None
    id: str | None = None
    session_id: str | None = None
    timestamp: Any = None
    user_id: str | None = None
    metadata: dict[str, Any] | None = None


def check_user(user_id: Any) -> str:
    """A valid owner: None is the default user; anything else must be a non-empty str.

    Raises:
        TypeError: If ``user_id`` is not a str (or None).
        ValueError: If it is empty, or not valid Unicode.
    """
    if user_id is None:
        return DEFAULT_USER
    return _check_key("user_id", user_id, f"None for the default user ({DEFAULT_USER!r})")


def check_session(session_id: Any) -> str | None:
    return None if session_id is None else _check_key("session_id", session_id, "None for all sessions")


def check_id(message_id: Any) -> str:
    return _check_key("message id", message_id, "the id the message was stored with")


def _check_key(name: str, value: Any, instead: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__} {value!r}; pass {instead}.")
    if not value:
        raise ValueError(f"{name} is an empty string; pass {instead}.")
    _check_unicode(name, value)
    return value


def _check_unicode(name: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{name} holds {value[err.start:err.end]!r}, which is not valid Unicode (a lone surrogate); "
                         "decode the text properly first.") from None


def check_text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}.")
    if not value.strip():
        raise ValueError(f"{name} is empty or whitespace; pass the text" + (" to search for." if name == "query" else "."))
    _check_unicode(name, value)
    return value


# LangChain's message types, as dicts often carry them, and LlamaIndex's other names for the assistant.
ROLE_ALIASES = {"human": "user", "ai": "assistant", "model": "assistant", "chatbot": "assistant"}


def role_name(role: str) -> str:
    """A role as stored: LangChain's ``"human"`` and ``"ai"`` are ``"user"`` and ``"assistant"``,
    as are LlamaIndex's ``"model"`` and ``"chatbot"`` (the adjustments for what is current read
    the roles by those names)."""
    return ROLE_ALIASES.get(role, role)


def role_names(roles: tuple[str, ...]) -> tuple[str, ...]:
    """The roles a filter reads: each with its alias, as saves before aliases hold ``"human"``."""
    out = []
    for role in roles:
        for name in (role, role_name(role), *(a for a, canonical in ROLE_ALIASES.items() if canonical == role_name(role))):
            if name not in out:
                out.append(name)
    return tuple(out)


def _message_fields(message: Message | Mapping[str, Any], position: int) -> dict[str, Any]:
    """The fields given (None counts as not given), with extra keys gathered into ``extra``."""
    if isinstance(message, Message):
        data = {f.name: getattr(message, f.name) for f in fields(Message)}
    elif isinstance(message, Mapping):
        data = dict(message)
    else:
        raise TypeError(
            f"Message {position} is a {type(message).__name__}; pass a saememory.Message or a dict "
            "with 'content' (and optionally role, id, session_id, timestamp, user_id, metadata)."
        )
    extra = {key: data.pop(key) for key in list(data) if key not in FIELDS and key != "metadata"}
    given = {key: value for key, value in data.items() if value is not None}
    where = f"Message {position}" + (f" ({given['id']!r})" if isinstance(given.get("id"), str) else "")
    if "content" in given:
        try:
            check_text("content", given["content"])
        except (TypeError, ValueError) as err:
            raise type(err)(f"{where}: {err}") from None
    for key in ("id", "role", "session_id", "user_id"):
        if key in given:
            try:
                _check_key(key, given[key], f"None for the default {key}" if key != "id" else "None for a new id")
            except (TypeError, ValueError) as err:
                raise type(err)(f"{where}: {err}") from None
    if "metadata" in given and not isinstance(given["metadata"], Mapping):
        raise TypeError(f"{where}: metadata must be a dict, got {type(given['metadata']).__name__}.")
    if "role" in given:
        given["role"] = role_name(given["role"])
    if "timestamp" in given:
        given["timestamp"], given["time"] = stored_time(given["timestamp"], f"{where}: timestamp")
    given["extra"] = extra
    given["where"] = where
    return given


def _owner(given: dict[str, Any], owner: str | None) -> str:
    user = given.get("user_id", owner or DEFAULT_USER)
    if owner is not None and user != owner:
        raise ValueError(f"{given['where']} names user_id {user!r}, but this call stores for user {owner!r} "
                         "(a retriever or block writes for the user it is bound to, the default user if none) and "
                         "never into another's. Drop the message's user_id, or store it for that user: a "
                         "retriever bound to them, or memory.add(messages, user_id=...).")
    return user


def new_record(message: Message | Mapping[str, Any], position: int, owner: str | None) -> dict[str, Any]:
    """Validates one message to add and turns it into the stored JSON record."""
    given = _message_fields(message, position)
    if "content" not in given:
        raise TypeError(f"{given['where']}: content must be a str, got NoneType.")
    record = {
        "id": given.get("id") or uuid.uuid4().hex,
        "content": given["content"],
        "role": given.get("role", "user"),
        "session_id": given.get("session_id", DEFAULT_SESSION),
        "timestamp": given.get("timestamp"),
        "time": given["time"] if "time" in given else stored_time(None)[1],
        "user_id": _owner(given, owner),
        "metadata": {**dict(given.get("metadata") or {}), **given["extra"]},  # extra keys travel as metadata
    }
    return _check_storable(record, given["where"])


def changes_of(message: Message | Mapping[str, Any], position: int, owner: str | None) -> dict[str, Any]:
    """The validated fields of one ``update`` message, with its owner."""
    given = _message_fields(message, position)
    if "id" not in given:
        raise KeyError(f"Message {position} has no id; update() changes stored messages by id.")
    given["user_id"] = _owner(given, owner)
    return given


def merged(record: dict[str, Any], change: dict[str, Any], position: int) -> dict[str, Any]:
    """The stored record with the given fields changed; owner and id stay."""
    merged = {key: change.get(key, record.get(key)) for key in ("content", "role", "session_id", "timestamp", "time")}
    metadata = dict(change["metadata"]) if "metadata" in change else dict(record.get("metadata") or {})
    metadata.update(change["extra"])
    merged = {"id": record["id"], **merged, "user_id": record["user_id"], "metadata": metadata}
    return _check_storable(merged, change["where"])


def _check_storable(record: dict[str, Any], where: str) -> dict[str, Any]:
    """Whatever is stored must come back from a save unchanged: plain JSON, valid Unicode.

    Returns:
        A deep copy of ``record``, so that the caller's objects never alias what is stored.
    """
    problem = _beyond_limits(record.get("metadata"), 1)
    if problem:
        raise ValueError(f"{where}: metadata {problem}; flatten it or store the value as a string.")
    try:
        text = json.dumps(record, ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")
    except (TypeError, ValueError) as err:  # UnicodeEncodeError is a ValueError
        raise ValueError(f"{where}: cannot be saved as JSON ({err}); metadata values must be str, int, float "
                         "(finite), bool, None, lists or dicts with str keys. Convert the value first, "
                         "e.g. a datetime with .isoformat().") from None
    taken = sorted(set(record.get("metadata") or ()) & RESULT_FIELDS)
    if taken:
        raise ValueError(f"{where}: metadata keys {taken} are names every search result already has (its own "
                         f"{', '.join(sorted(RESULT_FIELDS))}), so a hit would show the result's value, not yours; "
                         f"rename them, e.g. {'my_' + taken[0]!r}.")
    copy = json.loads(text)
    if copy != record:
        raise ValueError(f"{where}: metadata would not come back unchanged from a save (keys must be str, "
                         "sequences lists, not tuples); convert it to plain JSON first.")
    return compact(copy)


# Record fields whose values repeat across messages (a user's, a session's, a role's): one string each.
_SHARED_VALUES = frozenset({"user_id", "session_id", "role"})


def compact(record: dict[str, Any]) -> dict[str, Any]:
    """A stored record with its keys and repeated values interned: the same dict, ~600 B less per message.

    ``json.loads`` makes new key strings for every record it reads; a memory holds millions.
    """
    return {sys.intern(key): sys.intern(value) if key in _SHARED_VALUES and isinstance(value, str) else value
            for key, value in record.items()}


MAX_DEPTH = 32  # metadata nesting: deeper values are refused, not left to fail every later read
_INT64 = (-(2**63), 2**63 - 1)  # what every backend can store (Milvus' JSON keeps 64-bit integers)


def _beyond_limits(value: Any, depth: int) -> str | None:
    """Why ``value`` (metadata) is beyond what every backend stores and reads back, or None."""
    if isinstance(value, (dict, list)):
        if depth > MAX_DEPTH:
            return f"is nested deeper than {MAX_DEPTH} levels"
        for item in value.values() if isinstance(value, dict) else value:
            problem = _beyond_limits(item, depth + 1)
            if problem:
                return problem
    elif isinstance(value, int) and not isinstance(value, bool) and not _INT64[0] <= value <= _INT64[1]:
        return f"holds the integer {value}, outside the 64-bit range"
    return None


def ids_by_user(records: list[dict[str, Any]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for record in records:
        grouped.setdefault(record["user_id"], []).append(record["id"])
    return grouped


NOT_CONVERSATION = ("system", "developer", "tool", "function")  # roles whose messages a chat memory does not keep


def is_conversation(role: Any, content: Any, tool_call: bool = False) -> bool:
    """Whether the adapters store a framework message: not a system or developer prompt
    (instructions, or a memory block's own injected text), a tool result or an assistant's tool call without text
    (``tool_call``), none of which a user said or was told. Other messages, even empty ones, are
    stored (and an empty one refused, naming it)."""
    blank = not isinstance(content, str) or not content.strip()
    return role not in NOT_CONVERSATION and not (tool_call and blank)


def message_dict(content: Any, role: str, extras: Mapping[str, Any], session_id: str | None = None,
                 keys: tuple[str, ...] = ("id", "session_id", "timestamp", "user_id")) -> dict[str, Any]:
    """A framework message's parts as a saememory message dict (the adapters' one conversion).

    Args:
        content: The message's text.
        role: Its chat role (``"user"``, ``"assistant"``, ...).
        extras: The framework's extra fields (``additional_kwargs``); ``keys`` are taken from it.
        session_id: The session of a message that names none. Defaults to None.
        keys: Which extra fields travel. Defaults to id, session_id, timestamp and user_id.
    """
    data = {"content": content, "role": role, **{key: extras[key] for key in keys if key in extras}}
    return with_session(data, session_id)


def with_session(data: dict[str, Any], session_id: str | None) -> dict[str, Any]:
    """``data`` with ``session_id`` filled in where it names none (None: left as it is)."""
    if session_id is not None:
        data.setdefault("session_id", session_id)
    return data
