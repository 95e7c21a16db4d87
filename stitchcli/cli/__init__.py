"""The `stitchcli` command line: one module per subcommand, joined here into one typer app.

The app turns the errors a user can cause into one line on stderr and exit code 2 (1 when the work
itself failed), so shell scripts can rely on the exit code and never see a traceback for bad input.
"""

from __future__ import annotations

import functools
import re
import sys
from typing import Any, Callable

import typer
from typer.core import TyperCommand, TyperGroup

from stitchcli import __version__
from stitchcli.device import keep_freed_memory_for_reuse
from stitchcli.errors import StitchError, out_of_space_errno, out_of_space_message


def _flags_without_types(params: list[Any]) -> list[Any]:
    """Give ``params`` with every flag's metavar blanked: typer shows ``--json <bool>``, as if the flag took a value."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class StitchGroup(TyperGroup):
    """The command group, whose errors end in one line on stderr and the documented exit code.

    Errors raised inside commands are reported by :func:`reports_errors`; this catches what happens
    around them (option parsing, an interrupt outside a command, a closed pipe). It is done here, in the
    group's ``main``, rather than in the app's ``__call__``, so that typer's CliRunner (which calls
    ``main``) sees what the shell sees.
    """

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_without_types(super().get_params(ctx))  # --version and --help

    def main(  # type: ignore[override]
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        click = _click_exceptions()
        try:
            result = super().main(args, prog_name or "stitchcli", complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":
                sys.exit(2)  # the help text was printed already
            command = exc.ctx.command_path if exc.ctx is not None else "stitchcli"
            _fail(f"{exc.format_message()} (see `{command} --help`)", 2)
        except typer.Exit as exc:
            sys.exit(exc.exit_code)
        except (typer.Abort, KeyboardInterrupt):
            _fail(INTERRUPTED, 130)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except BrokenPipeError:
            sys.exit(0)
        if isinstance(result, int):
            sys.exit(result)
        return result


class StitchCommand(TyperCommand):
    """A command whose help reads as people write usage: ``ENCODER DECODER`` (not typer's ``{ENCODER}``), and
    flags without a value type (typer shows ``--json <bool>``, as if the flag took a value)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_without_types(super().get_params(ctx))  # the command's, and --help

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = super().collect_usage_pieces(ctx)
        return [piece[1:-1] if piece.startswith("{") and piece.endswith("}") else piece for piece in pieces]


class StitchApp(typer.Typer):
    """A typer app whose group is a :class:`StitchGroup`, named ``stitchcli`` in messages."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("prog_name", "stitchcli")
        return super().__call__(*args, **kwargs)


def _click_exceptions() -> Any:
    """Give the click exceptions module typer uses (recent typer vendors click as typer._click)."""
    try:
        from typer._click import exceptions
    except ImportError:  # typer releases that depend on click itself
        from click import exceptions
    return exceptions


INTERRUPTED = "interrupted; finished work (embedding shards, heads) is kept in the cache: run the same command again to resume"


def _report(message: str) -> None:
    """Write the one error line on stderr (after whatever stdout holds)."""
    sys.stdout.flush()
    sys.stderr.write(f"stitchcli: error: {one_line(message)}\n")
    sys.stderr.flush()


def one_line(message: str) -> str:
    """Give an error message on one line.

    An error raised in a DataLoader worker comes back re-raised by torch with the worker's traceback in its
    message ("Caught UsageError in DataLoader worker process 0. Original Traceback ... UsageError: what"):
    its last line holds what the user needs. Any other message has its lines joined.
    """
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught ") and lines[1].startswith("Original Traceback"):
        return re.sub(r"^[A-Za-z_][\w.]*: ", "", lines[-1], count=1)
    return " ".join(lines)


def _fail(message: str, code: int) -> None:
    _report(message)
    sys.exit(code)


app = StitchApp(
    cls=StitchGroup,
    name="stitchcli",
    help="Zero-shot stitching of pretrained encoders with product-space relative representations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"stitchcli {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Zero-shot stitching of pretrained encoders with product-space relative representations."""


def _quiet_libraries() -> None:
    """Keep the libraries' own progress bars and log chatter off stderr: stitchcli reports progress itself."""
    import logging
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # open_clip logs to the root logger (e.g. "no pretrained weights loaded" for --weights random).
    logging.getLogger().setLevel(logging.CRITICAL)


def _describe_os_error(exc: OSError) -> tuple[str, int] | None:
    """Give (message, exit code) for file-system errors a user can fix, or None for the others (bugs)."""
    import errno

    where = f" {exc.filename!r}" if exc.filename else ""
    code = out_of_space_errno(exc)
    if code is not None:
        return out_of_space_message(code, exc.filename or "a file"), 1
    from stitchcli.cli.output import in_opened_cache, on_the_way_to_a_cache

    cache = in_opened_cache(exc.filename)  # else an output or input path the user named
    if isinstance(exc, PermissionError):
        fix = "choose a --cache-dir (or $STITCHCLI_CACHE) you can write to" if cache else "check its permissions, or choose another path"
        return f"permission denied on{where or ' a file'}: {fix}", 2
    if isinstance(exc, (NotADirectoryError, FileExistsError)):
        return f"{where.strip() or 'a path'} is a file where a folder is needed: choose another {'--cache-dir' if cache else 'path'}", 2
    if isinstance(exc, IsADirectoryError):
        target = f" {exc.filename2!r}" if exc.filename2 else where
        return f"{target.strip() or 'a path'} is a folder where a file is needed: give a file name instead", 2
    if isinstance(exc, FileNotFoundError) and exc.filename and on_the_way_to_a_cache(exc.filename):  # /proc/x/cache
        return f"cannot make{where} (no folder can be created there): choose another --cache-dir (or $STITCHCLI_CACHE)", 2
    if exc.errno == errno.EROFS:
        return f"read-only file system at{where}: choose {'a --cache-dir' if cache else 'a path'} on a writable file system", 2
    return None


def reports_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a command so the errors a user can cause end in one stderr line and their exit code.

    Done per command (not only in StitchApp.__call__) so that typer's CliRunner sees the same.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from stitchcli.cli.output import OPENED_CACHES

        OPENED_CACHES.clear()  # this command's caches only (CliRunner runs many commands in one process)
        _quiet_libraries()
        keep_freed_memory_for_reuse()  # every batch reuses the memory the last one freed (stitchcli.device)
        try:
            return command(*args, **kwargs)
        except StitchError as exc:
            message, code = str(exc), exc.exit_code
        except KeyboardInterrupt:
            message, code = INTERRUPTED, 130
        except OSError as exc:
            described = _describe_os_error(exc)
            if described is None:
                raise
            message, code = described
        _report(message)
        raise typer.Exit(code)

    return wrapper


def _register() -> None:
    from stitchcli.cli.anchor import anchor_command
    from stitchcli.cli.demo import demo_command
    from stitchcli.cli.embed import embed_command
    from stitchcli.cli.eval import eval_command
    from stitchcli.cli.fit_head import fit_head_command
    from stitchcli.cli.predict import predict_command
    from stitchcli.cli.similarity import similarity_command
    from stitchcli.cli.stitch import stitch_command

    for name, command in (
        ("embed", embed_command),
        ("anchor", anchor_command),
        ("fit-head", fit_head_command),
        ("stitch", stitch_command),
        ("eval", eval_command),
        ("similarity", similarity_command),
        ("predict", predict_command),
        ("demo", demo_command),
    ):
        app.command(name, cls=StitchCommand, help=paragraphs(command.__doc__ or ""))(reports_errors(command))


def paragraphs(doc: str) -> str:
    """Give a docstring as paragraphs of one line each, so that help fills the terminal's width: typer's rich
    help keeps a docstring's single line breaks, which leaves ragged lines on a terminal narrower than the source."""
    import inspect

    return "\n\n".join(" ".join(part.split()) for part in inspect.cleandoc(doc).split("\n\n") if part.strip())


_register()
