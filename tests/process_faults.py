"""Helpers of the fault and concurrency tests: `python -m stitchcli` subprocesses that stop themselves at a chosen
write, so a test can kill them (or let them go on) at exactly that point instead of at a moment found by polling."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Installed as sitecustomize.py on the subprocess's PYTHONPATH, so the command line stays `python -m stitchcli ...`.
# stitchcli writes every safetensors file (embedding shards, entries, heads) under a temporary name and renames it
# into place with os.replace; this counts those renames and, at the N-th, sends the process SIGSTOP just before
# it: the file is written whole under its temporary name, not yet in place. "torn" first cuts the temporary
# file to half its size, as a kill in the middle of the write would leave it.
_HOOK = '''
import os
import signal

_spec = os.environ.get("STITCHCLI_TEST_STOP_AT_WRITE")
if _spec:
    _stop_at, _, _mode = _spec.partition(":")
    _real_replace = os.replace
    _renamed = [0]

    def _stop_before_the_nth_safetensors_rename(src, dst, **kwargs):
        if os.fspath(dst).endswith(".safetensors"):
            _renamed[0] += 1
            if _renamed[0] == int(_stop_at):
                if _mode == "torn":
                    os.truncate(src, os.path.getsize(src) // 2)
                os.kill(os.getpid(), signal.SIGSTOP)
        return _real_replace(src, dst, **kwargs)

    os.replace = _stop_before_the_nth_safetensors_rename
'''


def start_cli(
    *args: str,
    hook_dir: Path,
    stop_at_write: int | None = None,
    torn: bool = False,
    stderr: Any = subprocess.PIPE,
    **popen: Any,
) -> subprocess.Popen:
    """Start `python -m stitchcli ARGS`; with ``stop_at_write`` it stops itself (SIGSTOP) before that safetensors rename."""
    hook_dir.mkdir(parents=True, exist_ok=True)
    (hook_dir / "sitecustomize.py").write_text(_HOOK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(hook_dir), os.environ.get("PYTHONPATH")) if p)}
    if stop_at_write is not None:
        env["STITCHCLI_TEST_STOP_AT_WRITE"] = f"{stop_at_write}{':torn' if torn else ''}"
    return subprocess.Popen([sys.executable, "-m", "stitchcli", *args], stdout=subprocess.PIPE, stderr=stderr,
                            text=True, env=env, **popen)


def is_stopped(pid: int) -> bool:
    """Tell whether a process is stopped by a signal (its state in /proc is T)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except (OSError, IndexError):
        return False


def wait_until_stopped(*procs: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until every process has stopped itself; fail if one ends first or the time runs out."""
    deadline = time.monotonic() + timeout
    while not all(is_stopped(p.pid) for p in procs):
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"the process ended (exit {p.returncode}) before it stopped: {p.stderr.read() if p.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError("the process did not reach the write it was to stop at")
        time.sleep(0.01)


def kill_stopped(proc: subprocess.Popen) -> None:
    """SIGKILL a stopped process and reap it."""
    assert is_stopped(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def kill_at_write(*args: str, hook_dir: Path, stop_at_write: int) -> None:
    """Run `python -m stitchcli ARGS` until it stops itself half-way through that safetensors write (the
    temporary file torn), then SIGKILL it there: a kill that lands mid-write every time."""
    proc = start_cli(*args, hook_dir=hook_dir, stop_at_write=stop_at_write, torn=True)
    try:
        wait_until_stopped(proc)
        kill_stopped(proc)
    finally:
        proc.kill()
