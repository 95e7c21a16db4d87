"""Rendering: tables on stdout for people, one JSON document with --json, progress and logs on stderr."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table


def stdout_console() -> Console:
    """Give a console for results on stdout (plain text when stdout is not a terminal)."""
    console = Console(file=sys.stdout)
    if not console.is_terminal:
        # Piped output is read by scripts and people alike: do not fold long paths into 80 columns.
        console = Console(file=sys.stdout, width=1000)
    return console


def stderr_console() -> Console:
    """Give a console for progress and logs on stderr."""
    return Console(file=sys.stderr, soft_wrap=True)


def print_json(document: Any) -> None:
    """Write exactly one JSON document to stdout."""
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    sys.stdout.flush()


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, justify: dict[str, str] | None = None) -> None:
    """Print a table to stdout; numbers right-aligned."""
    table = Table(title=title, title_justify="left", header_style="bold")
    justify = justify or {}
    for column in columns:
        table.add_column(column, justify=justify.get(column, "left"), overflow="fold")  # type: ignore[arg-type]
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    stdout_console().print(table)


@dataclass
class Progress:
    """A progress reporter on stderr: an animated bar on a terminal, a few plain lines otherwise."""

    quiet: bool = False
    console: Console = field(default_factory=stderr_console)

    def __post_init__(self) -> None:
        self._bar: Any = None
        self._task: Any = None
        self._label = ""
        self._total = 0
        self._done = 0
        self._next_log = 0.0

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

    def start(self, label: str, total: int, done: int) -> None:
        """Begin a bar for ``total`` rows, ``done`` of them already finished."""
        import time

        self._label, self._total, self._done = label, total, done
        self._started = time.perf_counter()
        if self.animated:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress as RichProgress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("rows"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(label, total=total, completed=done)
        else:
            self.info(f"{label}: {total - done} rows to encode")

    def advance(self, rows: int) -> None:
        """Count ``rows`` more rows as done."""
        import time

        self._done += rows
        if self._bar is not None:
            self._bar.update(self._task, advance=rows)
        elif not self.quiet and time.perf_counter() >= self._next_log:
            # A plain line at most every 30 s, so CI logs show life without flooding.
            self._next_log = time.perf_counter() + 30.0
            if self._done < self._total:
                self.info(f"{self._label}: {self._done}/{self._total} rows")

    def stop(self) -> None:
        """End the bar."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def progress_and_store(cache_dir: Any, quiet: bool) -> tuple[Progress, Any, Any]:
    """Give the (progress, EmbeddingStore, Reporter) a command works with, all reporting to stderr."""
    from stitchcli.embedding import Reporter
    from stitchcli.store import EmbeddingStore

    progress = Progress(quiet=quiet)
    store = EmbeddingStore(cache_dir, warn=progress.warn)
    reporter = Reporter(warn=progress.warn, info=progress.info, start=progress.start, advance=progress.advance, stop=progress.stop)
    return progress, store, reporter
