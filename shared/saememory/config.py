"""``to_dict`` / ``from_dict`` for the dataclass configs (encoder, LM encoder, training)."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, ClassVar, TypeVar

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
