"""The command line's progress reporter: plain lines off a terminal, a bar that fits on one."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from stitchcli.cli.output import Progress


def _plain(quiet: bool = False) -> tuple[Progress, io.StringIO]:
    out = io.StringIO()
    return Progress(quiet=quiet, console=Console(file=out, force_terminal=False, width=200)), out


def test_off_a_terminal_it_says_how_much_is_left_what_runs_and_when_it_is_done() -> None:
    progress, out = _plain()
    progress.start("similarity", 10, 0, unit="cells")
    progress.status("absolute: cross")
    progress._next_log = 0.0  # the 30-second spacing of the lines, let go for the test
    progress.advance(4)
    progress.advance(6)
    progress.stop()
    lines = out.getvalue().splitlines()
    assert lines[0] == "similarity: 10 cells to go"
    assert "similarity: 4/10 cells; absolute: cross" in lines
    assert lines[-1].startswith("similarity: 10 cells done in ") and lines[-1].endswith(" s")


def test_one_unit_is_counted_in_the_singular() -> None:
    progress, out = _plain()
    progress.start("similarity", 1, 0, unit="cells")
    progress.advance(1)
    progress.stop()
    lines = out.getvalue().splitlines()
    assert lines[0] == "similarity: 1 cell to go" and lines[-1].startswith("similarity: 1 cell done in "), lines


def test_work_cut_short_gets_no_done_line_and_quiet_gets_none_at_all() -> None:
    progress, out = _plain()
    progress.start("embedding", 10, 0)
    progress.advance(3)
    progress.stop()  # an error stopped the work: no line may claim it is done
    assert "done" not in out.getvalue()
    quiet, silent = _plain(quiet=True)
    quiet.start("embedding", 2, 0)
    quiet.advance(2)
    quiet.stop()
    assert silent.getvalue() == ""


LONG_STATUS = "absolute: neighbours: mutual-knn, cknna, jaccard against efficientnet-lite2-imagenet-pretrained"


def _last_frame(width: int, total: int, done: int) -> str:
    """Give the last frame a bar of ``total`` cells draws on a terminal ``width`` columns wide, after ``done``."""
    out = io.StringIO()
    progress = Progress(console=Console(file=out, force_terminal=True, color_system=None, width=width))
    progress.start("similarity", total, 0, unit="cells")
    progress.status(LONG_STATUS)
    progress.advance(done)
    progress._bar.refresh()
    progress.stop()
    return [frame for chunk in out.getvalue().split("\r") for frame in chunk.splitlines() if "cells" in frame][-1]


def test_on_a_narrow_terminal_a_long_description_is_cut_and_the_counts_stay() -> None:
    last = _last_frame(80, 310, 155)
    assert "155/310 cells" in last and "…" in last  # the count shows; the description was cut with an ellipsis
    assert "jaccard against" not in last


def test_the_done_line_counts_only_what_this_run_did_and_a_new_bar_logs_at_once() -> None:
    progress, out = _plain()
    progress.start("lite0", 10_000, 9_000)  # 9,000 rows resumed from an earlier run
    progress.advance(1_000)
    progress.stop()
    assert out.getvalue().splitlines()[-1].startswith("lite0: 1000 rows done in ")
    progress.start("cached", 5, 5)  # nothing left to do: no line may claim work done
    progress.stop()
    assert "cached: 5 rows done" not in out.getvalue()
    progress.start("similarity", 4, 0, unit="cells")
    progress.status("absolute: cross")  # the first status of a new bar is not held back by the last bar's line
    assert out.getvalue().splitlines()[-1] == "similarity: 0/4 cells; absolute: cross"


@pytest.mark.parametrize("width", [80, 100, 120, 160, 200])
def test_a_seven_digit_count_shows_whole_at_any_width(width: int) -> None:
    assert "12/4799040 cells" in _last_frame(width, 4_799_040, 12)


def test_a_status_outside_any_counted_stage_is_said_without_an_empty_count() -> None:
    """fit-head trains one head with no bar started: its status line was ': 0/0 rows; training …'."""
    progress, out = _plain()
    progress.status("training lite2's cosine head, seed 0: epoch 1/40")
    assert out.getvalue().splitlines() == ["training lite2's cosine head, seed 0: epoch 1/40"]
