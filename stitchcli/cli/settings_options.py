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
from typing import Annotated, Any, Callable, List, Mapping, Optional, Sequence

import typer

from stitchcli.errors import UsageError
from stitchcli.settings import DatasetOptions, Declared, StitchSettings, build_settings, by_name, settings_of, with_task_defaults


REPEATABLE = "May be repeated."
"""Said by the help of every comma-list option: ``--seeds 0 --seeds 1`` is ``--seeds 0,1``."""


def split_list(values: str | Sequence[str] | None, option: str, *, whole: Callable[[str], bool] | None = None) -> tuple[str, ...] | None:
    """Give the values of a comma-list option (None when not given); UsageError for an empty value.

    ``values`` is what the command line gave: one text, or every occurrence of a repeated option
    (``--seeds 0 --seeds 1,2``), each split at commas and joined in order, so that repeating the option is the
    same as one comma-separated list. ``whole`` says which occurrences are one value as written (an existing
    path with a comma in its name).
    """
    if values is None:
        return None
    names: list[str] = []
    for value in [values] if isinstance(values, str) else values:
        if whole is not None and whole(value):
            names.append(value)
            continue
        parts = [part.strip() for part in value.split(",")]
        if not any(parts):
            raise UsageError(f"{option} is empty: give comma-separated values")
        if not all(parts):
            raise UsageError(f"{option} {value!r} has an empty value between commas")
        names.extend(parts)
    return tuple(names)


def names_a_path(value: str) -> bool:
    """Whether a value of a model list (--model, --models), --split or --from-array names a file or folder that
    exists (or is NAME=PATH whose PATH exists), so that a comma in its name does not cut it into a list."""
    from pathlib import Path

    return any(part and Path(part).expanduser().exists() for part in (value, value.partition("=")[2]))


def joined_list(values: str | Sequence[str] | None, option: str) -> str | None:
    """Give the occurrences of a repeated comma-list option that is read as one text (``--input-column``) as
    that text: ``--input-column title --input-column body`` is ``--input-column title,body``."""
    names = split_list(values, option)
    return None if names is None else ",".join(names)


def given_dataset_options(input_column: str | Sequence[str] | None, label_column: str | None, dataset_revision: str | None) -> DatasetOptions:
    """Give the dataset options of a command that takes them alone (embed, anchor, similarity, predict), its
    --input-column occurrences joined (:func:`joined_list`)."""
    return DatasetOptions(joined_list(input_column, "--input-column"), label_column, dataset_revision)


def parse_integers(values: str | Sequence[str], option: str) -> tuple[int, ...]:
    """Give the comma-separated integers of an option such as ``--seeds 0,1,2`` (or ``--seeds 0 --seeds 1,2``)."""
    names = split_list(values, option) or ()
    try:
        return tuple(int(part) for part in names)
    except ValueError:
        given = values if isinstance(values, str) else ",".join(values)
        raise UsageError(f"{option} must be comma-separated integers like 0,1,2, not {given!r}") from None


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
    """Give the typed setting of a command-line value: comma lists split (every occurrence of a repeated option, in
    order), ``all``/``none`` expanded; a list not given is its default."""
    if declared.option.joined:
        return joined_list(value, declared.flag)
    if not declared.is_list:
        return value
    if value is None:
        return declared.default
    if declared.item_type is int:
        return parse_integers(value, declared.flag)
    return declared.expand(split_list(value, declared.flag) or ())


def _parameter(declared: Declared, help_text: str | None = None) -> inspect.Parameter:
    """Give the typer parameter of one declared setting (a comma list may be repeated: ``List[str]``); ``help_text``
    replaces the declaration's help where a command uses the setting otherwise (similarity trains no head)."""
    option = declared.option
    help_text = option.help if help_text is None else help_text
    if declared.repeatable:
        cli_type: Any = Optional[List[str]]
        default: Any = [",".join(map(str, declared.default))] if declared.is_list else None
        help_text += f" {REPEATABLE}"
    else:
        cli_type = Optional[declared.item_type] if declared.optional else declared.item_type
        default = declared.default
    if option.shown_default is not None:
        help_text += f" (default: {option.shown_default})"
    info = typer.Option(*option.flags, help=help_text, show_default=default is not None and cli_type is not bool, rich_help_panel=option.panel)
    return inspect.Parameter(declared.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[cli_type, info])


def declared_option(name: str, help_text: str | None = None) -> Any:
    """Give the ``Annotated`` typer option of one declared setting, for commands that take it alone (embed, anchor),
    with ``help_text`` in place of the declaration's help when given; the command reads a repeatable one's value
    with :func:`cli_value` (``--input-column``: :func:`joined_list`)."""
    return _parameter(by_name(name), help_text).annotation


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
