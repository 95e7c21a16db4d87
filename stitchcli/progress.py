"""Where long work reports progress: callbacks the command line wires to rich, no-ops for library use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass
class Reporter:
    """Progress and log callbacks: the command line wires them to rich on stderr; the defaults do nothing."""

    warn: Callable[[str], None] = lambda message: None
    info: Callable[[str], None] = lambda message: None
    start: Callable[..., None] = lambda label, total, done, unit="rows": None
    advance: Callable[[int], None] = lambda rows: None
    stop: Callable[[], None] = lambda: None
    status: Callable[[str], None] = lambda message: None
    """What the current unit of work is doing (``training lite2's head: epoch 12/40``), between two advances."""
