"""The declared settings (stitchcli.settings) as typer options of ``fit-head``, ``stitch`` and ``eval``.

    @takes_settings(STITCH)
    def stitch_command(encoder: ..., dataset: opt.Dataset, ..., *, given: GivenSettings) -> None:
        settings = given.settings(dataset)

:func:`takes_settings` appends one option per setting the command takes to the command's signature (typer
reads the signature), and hands the command what the user gave as a :class:`GivenSettings`: the typed
values and which of them were given on the command line (click's parameter source), so that ``--head`` can
refuse what the user gave explicitly, whatever the value.
"""

from __future__ import annotations

import functools
import inspect
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Mapping, Optional

import typer

from stitchcli.errors import UsageError
from stitchcli.settings import Declared, StitchSettings, build_settings, by_name, settings_of, with_task_defaults


def split_list(value: str | None, option: str) -> tuple[str, ...] | None:
    """Give the comma-separated names of an option (None when not given); UsageError when empty."""
    if value is None:
        return None
    names = tuple(part.strip() for part in value.split(","))
    if not any(names):
        raise UsageError(f"{option} is empty: give comma-separated values")
    if not all(names):
        raise UsageError(f"{option} {value!r} has an empty value between commas")
    return names


def parse_integers(value: str, option: str) -> tuple[int, ...]:
    """Give the comma-separated integers of an option such as ``--seeds 0,1,2``."""
    try:
        return tuple(int(part) for part in split_list(value, option) or ())
    except ValueError:
        raise UsageError(f"{option} must be comma-separated integers like 0,1,2, not {value!r}") from None


@dataclass(frozen=True)
class GivenSettings:
    """What a command's settings options hold.

    Attributes:
        values: parameter name -> typed value, every declared setting of the command (defaults included).
        explicit: the names given on the command line (not defaults).
    """

    values: Mapping[str, Any]
    explicit: frozenset[str]

    def settings(self, dataset: str, **overrides: Any) -> StitchSettings:
        """Give the checked StitchSettings of these values, ``overrides`` (parameter names) applied on top."""
        settings = with_task_defaults(build_settings(dataset, {**self.values, **overrides}), self.explicit)
        settings.check()
        return settings


def cli_value(declared: Declared, value: Any) -> Any:
    """Give the typed setting of a command-line value (comma lists split, ``all``/``none`` expanded)."""
    if not declared.is_list or value is None:
        return value
    if declared.item_type is int:
        return parse_integers(value, declared.flag)
    return declared.expand(split_list(value, declared.flag) or ())


def _parameter(declared: Declared) -> inspect.Parameter:
    """Give the typer parameter of one declared setting."""
    option = declared.option
    if declared.is_list:
        cli_type: Any = str
        default: Any = ",".join(map(str, declared.default))
    else:
        cli_type = Optional[declared.item_type] if declared.optional else declared.item_type
        default = declared.default
    help_text = option.help
    if option.shown_default is not None:
        help_text += f" (default: {option.shown_default})"
    info = typer.Option(*option.flags, help=help_text, show_default=default is not None and cli_type is not bool, rich_help_panel=option.panel)
    return inspect.Parameter(declared.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[cli_type, info])


def declared_option(name: str) -> Any:
    """Give the ``Annotated`` typer option of one declared setting, for commands that take it alone (embed, anchor)."""
    return _parameter(by_name(name)).annotation


_OUTPUT_OPTIONS = ("cache_dir", "json_output", "quiet")


def takes_settings(command: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a decorator that adds ``command``'s declared settings as options and passes them as ``given``."""
    declared = settings_of(command)

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(function, include_extras=True)
        own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in inspect.signature(function).parameters.values() if p.name != "given"]
        taken = {p.name for p in own}
        clash = sorted(taken & {d.name for d in declared})
        if clash:
            raise TypeError(f"{function.__name__} declares {', '.join(clash)} itself, which are settings of stitchcli.settings")
        context = inspect.Parameter("_context", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)

        @functools.wraps(function)
        def command_with_settings(*args: Any, **kwargs: Any) -> Any:
            ctx = kwargs.pop("_context")
            values = {d.name: cli_value(d, kwargs.pop(d.name)) for d in declared}
            # typer vendors click: compare the source by name, not by the class of one click or the other
            explicit = frozenset(d.name for d in declared if ctx.get_parameter_source(d.name).name not in ("DEFAULT", "DEFAULT_MAP"))
            return function(*args, **kwargs, given=GivenSettings(values, explicit))

        # the command's own options, then the settings (grouped in panels), then the output options
        last = [p for p in own if p.name in _OUTPUT_OPTIONS]
        parameters = [*(p for p in own if p.name not in _OUTPUT_OPTIONS), *(_parameter(d) for d in declared), *last, context]
        # positional parameters first, then keyword-only ones (typer passes every value by name)
        parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in parameters]
        command_with_settings.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        command_with_settings.__annotations__ = {p.name: p.annotation for p in parameters}
        return command_with_settings

    return decorate
