"""Rendering: tables on stdout for people, one JSON document with --json, progress and logs on stderr."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

from rich.console import Console
from rich import box
from rich.table import Table
from rich.text import Text


def stdout_console() -> Console:
    """Give a console for results on stdout (plain text when stdout is not a terminal)."""
    return Console(file=sys.stdout)


def stderr_console() -> Console:
    """Give a console for progress and logs on stderr."""
    return Console(file=sys.stderr, soft_wrap=True)


def print_json(document: Any) -> None:
    """Write exactly one JSON document to stdout."""
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    sys.stdout.flush()


def print_table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    justify: dict[str, str] | None = None,
    trailing: str | None = None,
) -> None:
    """Print a table to stdout; numbers (right-justified columns) are never cut.

    Piped, the table is as wide as it needs and every cell stays on one line. On a terminal too narrow
    for it, the ``trailing`` column (a long path or a note) is printed after the table instead, one
    whole line per non-empty value so it can still be copied, and left-justified text cells wrap.
    A trailing column with no values is left out.
    """
    console = stdout_console()
    justify = justify or {}
    index = list(columns).index(trailing) if trailing is not None else -1
    if trailing is not None and all(row[index] in (None, "") for row in rows):
        columns = [c for c in columns if c != trailing]
        rows = [[v for i, v in enumerate(row) if i != index] for row in rows]
        trailing, index = None, -1

    def build(shown: Sequence[str], *, wrap: bool = False) -> Table:
        # Text, not str: names such as "cosine [mlp-sum]" or a model "x[1]" are not rich markup.
        table = Table(header_style="bold", box=box.SIMPLE_HEAD)
        for position, column in enumerate(columns):
            if column not in shown:
                continue
            numeric = justify.get(column) == "right"
            widest = max((len(str(row[position] or "")) for row in rows), default=0)
            table.add_column(
                column,
                justify=justify.get(column, "left"),  # type: ignore[arg-type]
                no_wrap=numeric or not wrap,
                overflow="fold",
                min_width=widest if numeric else None,
            )
        for row in rows:
            table.add_row(*(Text("" if v is None else str(v)) for c, v in zip(columns, row) if c in shown))
        return table

    table = build(columns)
    from rich.measure import Measurement

    needed = Measurement.get(console, console.options.update_width(10**5), table).maximum
    if not console.is_terminal:
        console.width = max(needed, len(title))  # piped: as wide as the table (or its title), no made-up width
    # The title on its own line(s), not as the table's title: a table title wraps at the table's width.
    console.print(Text(title, style="italic"), soft_wrap=not console.is_terminal)
    if needed <= console.width:
        console.print(table)
        return
    shown = [c for c in columns if c != trailing]
    console.print(build(shown, wrap=True))
    if trailing is not None:
        for row in rows:
            if row[index] not in (None, ""):
                console.print(f"{trailing}: {row[index]}", soft_wrap=True, highlight=False, markup=False)


@dataclass
class Progress:
    """A progress reporter on stderr: an animated bar on a terminal, a few plain lines otherwise."""

    quiet: bool = False
    console: Console = field(default_factory=stderr_console)

    def __post_init__(self) -> None:
        self._bar: Any = None
        self._task: Any = None
        self._label, self._unit = "", "rows"
        self._total = 0
        self._done = 0
        self._next_log = 0.0
        self._status = ""
        self._started = 0.0
        self._resumed = 0

    @property
    def animated(self) -> bool:
        """Tell whether the bar animates (stderr is a terminal and not --quiet)."""
        return not self.quiet and self.console.is_terminal

    def info(self, message: str) -> None:
        """Write one log line to stderr unless quiet."""
        if not self.quiet:
            self.console.print(message, highlight=False, markup=False)

    def warn(self, message: str) -> None:
        """Write a warning line to stderr (even when quiet: it concerns the result)."""
        self.console.print(f"warning: {message}", style="yellow", highlight=False, markup=False)

    def start(self, label: str, total: int, done: int, unit: str = "rows") -> None:
        """Begin a bar for ``total`` units of work (rows, epochs…), ``done`` of them already finished."""
        import time

        self._label, self._total, self._done, self._unit = label, total, done, unit
        self._started, self._resumed = time.perf_counter(), done
        self._status = ""
        self._next_log = 0.0  # an earlier bar's last line does not hold this one's first back
        if self.animated:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress as RichProgress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.table import Column

            # The counts, times and a bar always show: a long description is cut with an ellipsis instead.
            # The rest takes the bar, "done/total", the unit, two times of 7 and the spaces between columns.
            width = self.console.width
            bar_width = max(10, min(40, width - 90))
            rest = bar_width + 2 * len(str(total)) + 1 + len(unit) + 2 * 7 + 6
            self._bar = RichProgress(
                TextColumn("{task.description}", table_column=Column(no_wrap=True, overflow="ellipsis", max_width=max(12, width - rest))),
                BarColumn(bar_width=bar_width),
                MofNCompleteColumn(),
                TextColumn(unit),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(label, total=total, completed=done)
        else:
            self.info(f"{label}: {_count(total - done, unit)} to go")

    def advance(self, rows: int) -> None:
        """Count ``rows`` more units as done."""
        self._done += rows
        if self._bar is not None:
            self._bar.update(self._task, advance=rows)
        else:
            self._plain_line(say=self._done < self._total)

    def status(self, message: str) -> None:
        """Say what the current unit of work is doing: beside the bar on a terminal, else a line at most every 30 s."""
        self._status = message
        if self._bar is not None:
            self._bar.update(self._task, description=f"{self._label} · {message}")
        else:
            self._plain_line()

    def _plain_line(self, say: bool = True) -> None:
        """Off a terminal: the count and the status in a line, at most every 30 s, so CI logs show life without
        flooding (``say`` False: the 30 s start again, but with nothing to say)."""
        import time

        if self.quiet or time.perf_counter() < self._next_log:
            return
        self._next_log = time.perf_counter() + 30.0
        if say and self._total:
            self.info(f"{self._label}: {self._done}/{self._total} {self._unit}{self._status and '; ' + self._status}")
        elif say and self._status:  # work outside any counted stage (one head trained): what it does, no count
            self.info(self._status)

    def stop(self) -> None:
        """End the bar; without one, say in a last line that the work is done (when all of it is)."""
        import time

        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif not self.quiet and self._total and self._done >= self._total > self._resumed:
            # what this run did: rows resumed from an earlier run are not counted as done in this time
            self.info(f"{self._label}: {_count(self._total - self._resumed, self._unit)} done in {time.perf_counter() - self._started:.1f} s")
        self._total = self._done = self._resumed = 0


def _count(number: int, unit: str) -> str:
    """Give "1 row", "2 rows": the units are plurals ("rows", "cells", "heads")."""
    return f"{number} {unit[:-1] if number == 1 and unit.endswith('s') else unit}"


def check_output_path(path: Any, option: str, *, folder: bool = False) -> None:
    """Refuse, before any work, an output ``path`` that cannot be written (UsageError naming ``option``).

    Refused: a folder where a file is wanted (or a file where a folder is), and a path whose nearest
    existing ancestor is a file. Missing folders on the way are fine (they are created on writing).
    """
    import os
    from pathlib import Path

    from stitchcli.errors import UsageError

    if path is None:
        return
    target = Path(path).expanduser()
    if folder:
        if target.exists() and not target.is_dir():
            raise UsageError(f"{option} {path} is a file: give a folder")
    elif target.is_dir() or str(path).endswith(("/", os.sep)):
        raise UsageError(f"{option} {path} is a folder: give a file name such as {target / 'name'}")
    ancestor = target if folder else target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise UsageError(f"{option} {path} lies under {ancestor}, which is a file, not a folder: choose another {option}")
    if folder:  # a folder may be only read (a read-only cache holding what is asked for)
        return
    from stitchcli.store import is_written_through

    if not is_written_through(target):
        writable, where = os.access(ancestor, os.W_OK | os.X_OK), ancestor  # a new file is made beside it, then renamed
    else:  # a link, pipe or device is written through
        writable, where = os.access(target, os.W_OK), target
    if ancestor.exists() and not writable:
        raise UsageError(f"{option} {path}: {where} is not writable here (permission denied): choose another {option}")
    if ancestor.exists() and not is_written_through(target) and not _can_create_in(ancestor):
        # os.access says yes to root everywhere, and to folders where no file can be made (/proc, /sys, a full
        # or read-only file system): making one, as the write will, is the only sure test
        raise UsageError(f"{option} {path}: no file can be created in {ancestor}: choose another {option}")


def _can_create_in(folder: Any) -> bool:
    """Tell whether a file can be created (and removed) in ``folder``, by doing it."""
    import os
    import tempfile

    try:
        handle, name = tempfile.mkstemp(prefix=".stitchcli-probe-", dir=folder)
    except OSError:
        return False
    os.close(handle)
    os.unlink(name)
    return True


def make_output_folder(path: Any, option: str) -> None:
    """Create the output folder ``path`` (with its parents) before the work that fills it, or raise a UsageError.

    :func:`check_output_path` refuses what it can see (a file in the way); some folders can only be found
    unmakeable by trying (a path under /proc, a full or foreign file system), and the work must not run first.
    """
    import os
    from pathlib import Path

    from stitchcli.errors import UsageError

    if path is None:
        return
    target = Path(path).expanduser()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot create this folder ({exc.strerror or exc}): choose another {option}") from None
    if not os.access(target, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path} is not writable here (permission denied): choose another {option}")


OPENED_CACHES: list[Any] = []
"""The cache folders the running command opened (:func:`progress_and_store`; emptied as each command starts), so
that a file-system error is blamed on --cache-dir only when it happened in one (:func:`in_opened_cache`)."""


def on_the_way_to_a_cache(filename: Any) -> bool:
    """Tell whether ``filename`` is an opened cache's folder or one of the folders above it (where a failure to
    make it is the cache folder's, not a file's within)."""
    from pathlib import Path

    path = Path(str(filename)).expanduser().resolve()
    return any(root.is_relative_to(path) for root in OPENED_CACHES)


def in_opened_cache(filename: Any) -> bool:
    """Tell whether a file-system error on ``filename`` is the cache's: the file lies in a cache the command
    opened, or on the way to one (a folder the cache was to be made in); an unknown file counts as the cache's."""
    from pathlib import Path

    if filename is None:
        return True
    path = Path(str(filename)).expanduser().resolve()
    return on_the_way_to_a_cache(path) or any(path.is_relative_to(root) for root in OPENED_CACHES)


def progress_and_store(cache_dir: Any, quiet: bool) -> tuple[Progress, Any, Any]:
    """Give the (progress, EmbeddingStore, Reporter) a command works with, all reporting to stderr."""
    from stitchcli.progress import Reporter
    from stitchcli.store import EmbeddingStore

    progress = Progress(quiet=quiet)
    store = EmbeddingStore(cache_dir, warn=progress.warn)
    # Before any work (a model can take minutes to load): a cache "folder" that is, or lies under, a file.
    # A read-only cache is not refused here: reading its entries needs no writes.
    check_output_path(store.root, "--cache-dir", folder=True)
    OPENED_CACHES.append(store.root.expanduser().resolve())
    reporter = Reporter(warn=progress.warn, info=progress.info, start=progress.start, advance=progress.advance, stop=progress.stop,
                        status=progress.status)
    return progress, store, reporter
