"""How commands, recipes and the library name a model: a name plus the embed options it is embedded with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from stitchcli.errors import UsageError

MODEL_OPTIONS = ("weights", "pooling", "max_length", "precision", "revision")
"""embed's options that decide how a model embeds (and so which cache entries it has)."""


@dataclass(frozen=True)
class ModelRef:
    """A model as commands and recipes name it: a model name plus the embed options it is embedded with.

    Attributes:
        name: anything ``embed --model`` accepts (a name saved with ``--name`` carries its own options).
        options: the non-None values of :data:`MODEL_OPTIONS`.
    """

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", {key: value for key, value in self.options.items() if value is not None})
        unknown = sorted(set(self.options) - set(MODEL_OPTIONS))
        if unknown:
            raise UsageError(f"model {self.name!r}: unknown option {', '.join(unknown)} (use some of {', '.join(MODEL_OPTIONS)})")

    @classmethod
    def of(cls, model: ModelRef | str) -> ModelRef:
        """Give ``model`` as a ModelRef (a bare name has no options)."""
        return model if isinstance(model, ModelRef) else cls(model)

    def option(self, name: str) -> Any:
        """Give one embed option (None when not set)."""
        return self.options.get(name)
