"""Named plug-ins: one small registry shared by the transforms, the aggregations and the decoder architectures.

    TRANSFORMS: Registry[TransformFitter] = Registry("transform")

    @TRANSFORMS.register("centering")
    def fit_centering(anchors): ...

    TRANSFORMS.get("centring")      # UsageError: unknown transform 'centring' (did you mean 'centering'?): ...

Registries whose entries carry more than a name (projections, bridges, similarity measures) keep their own
record types but raise the same error through :func:`stitchcli.errors.unknown_name`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from stitchcli.errors import unknown_name

T = TypeVar("T")


class Registry(Generic[T]):
    """Names of one kind of plug-in, in registration order, each registered once."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Give a decorator that registers what it decorates under ``name`` and gives it back unchanged."""

        def decorator(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = entry
            return entry

        return decorator

    def names(self) -> list[str]:
        """Give the registered names, in registration order."""
        return list(self._entries)

    def get(self, name: str) -> T:
        """Give the entry ``name``; UsageError naming the close match and every known name otherwise."""
        if name not in self._entries:
            raise unknown_name(self.kind, name, self.names())
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries
