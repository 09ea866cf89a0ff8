"""``to_dict`` / ``from_dict`` for the dataclass configs (search, encoders, training), and value checks."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, ClassVar, TypeVar

import numpy as np

T = TypeVar("T", bound="DictConfig")


class DictConfig:
    """Mixin for a dataclass config: plain-dict round trip that refuses unknown keys.

    Attributes:
        settings_name: Names the config in errors, e.g. ``"encoder"``.
    """

    settings_name: ClassVar[str] = "config"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"Unknown {cls.settings_name} settings {sorted(unknown)}; known: {sorted(known)}.")
        return cls(**data)


# Value checks shared by configs and calls: each error names the value, the rule and the fix.


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}.")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}.")
    return int(value)


def non_negative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")
    return int(value)


def finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    return float(value)


def choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {allowed}.")
    return value


class _Absent:
    def __repr__(self) -> str:
        return "absent"


_ABSENT = _Absent()


def first_difference(saved: Any, current: Any, key: str = "identity") -> tuple[str, Any, Any] | None:
    """The first (dotted) key at which two nested dicts differ, with both values; None if equal.

    Used to say exactly how a saved encoder identity differs from the current one.
    """
    if isinstance(saved, dict) and isinstance(current, dict):
        for name in sorted(set(saved) | set(current)):
            found = first_difference(saved.get(name, _ABSENT), current.get(name, _ABSENT),
                                     f"{key}.{name}" if key else name)
            if found:
                return found
        return None
    return None if saved == current else (key, saved, current)
