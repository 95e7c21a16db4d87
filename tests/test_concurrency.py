"""Concurrency: processes that embed the same cache entry take turns (one computes, the others wait and read it);
processes on different entries run side by side; the entry lock is re-entrant within a process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import make_image_folder
from process_faults import is_stopped, start_cli, wait_until_stopped
from stitchcli.models import ModelRef
from stitchcli.embedding import EmbedOptions, embed
from stitchcli.store import EmbeddingStore, file_lock

pytestmark = [pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the tests see a stopped process in /proc (Linux)"), pytest.mark.slow]

TINY = "test_vit"
WAITING = "waiting for another process building the same cache entry"


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Give an image folder with 24 train and 12 test images."""
    return make_image_folder(tmp_path / "images", per_class={"train": 8, "test": 4}, size=16)


def _embed_args(images: Path, split: str) -> list[str]:
    return ["embed", "-m", TINY, "--weights", "random", "-d", str(images), "-s", split,
            "--batch-size", "4", "--shard-rows", "4", "--num-workers", "0", "--json"]


def _finish(proc: subprocess.Popen, stderr_file: Path | None = None) -> tuple[dict, str]:
    """Give (the JSON document, stderr) of a process that must succeed."""
    out, err = proc.communicate(timeout=120)
    err = stderr_file.read_text() if stderr_file is not None else err
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    return json.loads(out), err


def _one_computes_while_the_other_waits(args: list[str], waiting: str, tmp_path: Path) -> tuple[dict, tuple[dict, str]]:
    """Start two processes with the same arguments. One takes the lock and computes (it stops itself before its
    first safetensors write, holding the lock); the other must say ``waiting`` while it is stopped. Then let the
    first go on. Give (the first's JSON document, (the second's JSON document, its stderr))."""
    logs = [tmp_path / "a.err", tmp_path / "b.err"]
    handles = [log.open("w") for log in logs]
    procs = [start_cli(*args, hook_dir=tmp_path / "hook", stop_at_write=1, stderr=handle) for handle in handles]
    try:
        deadline = time.monotonic() + 120
        while not any(is_stopped(p.pid) for p in procs):
            assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, "neither began computing"
            time.sleep(0.01)
        first = next(i for i, p in enumerate(procs) if is_stopped(p.pid))
        second = 1 - first
        while waiting not in logs[second].read_text():
            assert procs[second].poll() is None, logs[second].read_text()
            assert time.monotonic() < deadline, "the second process never said it waits"
            time.sleep(0.01)
        assert is_stopped(procs[first].pid)  # still holding the lock: the second one really waits for it
        os.kill(procs[first].pid, signal.SIGCONT)
        computed, _ = _finish(procs[first], logs[first])
        return computed, _finish(procs[second], logs[second])
    finally:
        for p in procs:
            p.kill()
        for handle in handles:
            handle.close()


def test_two_processes_on_the_same_entry_compute_it_once(cache_dir, tmp_path, images):
    """Started together: one computes, the other says it waits, then reads the first one's entry as a cache hit."""
    computed, (reused, waited) = _one_computes_while_the_other_waits(_embed_args(images, "train"), WAITING, tmp_path)
    (computed,), (reused,) = computed["entries"], reused["entries"]
    assert (computed["cache_hit"], computed["resumed_rows"], computed["rows"]) == (False, 0, 24)
    assert reused["cache_hit"] and reused["path"] == computed["path"]
    assert sum(WAITING in line for line in waited.splitlines()) == 1
    folder = Path(computed["path"]).parent
    assert sorted(p.name for p in folder.iterdir()) == sorted([Path(computed["path"]).name, Path(computed["path"]).with_suffix(".lock").name])

    single = embed([ModelRef(name, {"weights": "random"}) for name in [TINY]], str(images), ["train"], store=EmbeddingStore(tmp_path / "single-cache"),
                   options=EmbedOptions(batch_size=4, shard_rows=4, num_workers=0))[0]
    got, want = load_file(computed["path"]), load_file(single.path)
    np.testing.assert_array_equal(got["ids"], want["ids"])
    np.testing.assert_allclose(got["embeddings"], want["embeddings"], rtol=0, atol=1e-6)


def test_two_processes_training_the_same_head_train_it_once(cache_dir, tmp_path, images):
    """The embeddings are cached; two fit-head runs of the same head: one trains it, the other waits for the
    head's lock and reads the head the first one saved."""
    embed([ModelRef(name, {"weights": "random"}) for name in [TINY]], str(images), ["train", "test"], store=EmbeddingStore(cache_dir), register_as="tv",
          options=EmbedOptions(num_workers=0))
    waiting = "waiting for another process training the same head"
    args = ["fit-head", "-m", "tv", "-d", str(images), "--epochs", "2", "--json"]
    trained, (reused, waited) = _one_computes_while_the_other_waits(args, waiting, tmp_path)
    assert not trained["cached"] and reused["cached"]
    assert reused["path"] == trained["path"]
    assert sum(waiting in line for line in waited.splitlines()) == 1
    head = Path(trained["path"])
    assert sorted(p.name for p in head.parent.iterdir()) == sorted(
        [head.name, head.with_suffix(".json").name, head.with_suffix(".lock").name])


def test_two_processes_on_different_entries_run_side_by_side(cache_dir, tmp_path, images):
    """Each stops itself after its first shard, holding its own entry's lock: both are stopped at once, so
    neither waited for the other; let go, both finish their own entry."""
    procs = [start_cli(*_embed_args(images, split), hook_dir=tmp_path / "hook", stop_at_write=1) for split in ("train", "test")]
    try:
        wait_until_stopped(*procs)
        for p in procs:
            os.kill(p.pid, signal.SIGCONT)
        results = [(document["entries"][0], err) for document, err in map(_finish, procs)]
    finally:
        for p in procs:
            p.kill()
    assert [(entry["split"], entry["rows"], entry["cache_hit"]) for entry, _ in results] == [("train", 24, False), ("test", 12, False)]
    assert not any(WAITING in err for _, err in results)


def test_the_entry_lock_is_reentrant_in_a_thread_and_exclusive_across_threads_and_processes(tmp_path):
    lock = tmp_path / "entry.lock"
    probe = ("import fcntl, sys\nf = open(sys.argv[1], 'a')\n"
             "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    sys.exit(3)\n")

    def other_process_may_lock() -> bool:
        return subprocess.run([sys.executable, "-c", probe, str(lock)], timeout=60).returncode == 0

    seen: list[str] = []

    def nested() -> None:  # in a thread of its own, so a deadlock fails the test instead of hanging it
        with file_lock(lock):
            with file_lock(lock):  # flock through a second open() of the file would wait for itself forever
                seen.append(f"nested, other process may lock: {other_process_may_lock()}")
            seen.append(f"inner released, other process may lock: {other_process_may_lock()}")

    thread = threading.Thread(target=nested, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "nested file_lock deadlocked"
    assert seen == ["nested, other process may lock: False", "inner released, other process may lock: False"]
    assert other_process_may_lock()  # released with the outer block

    waits: list[str] = []

    def another_thread() -> None:
        with file_lock(lock, on_wait=lambda: waits.append("told")):
            waits.append("got it")

    with file_lock(lock):
        thread = threading.Thread(target=another_thread, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not waits and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        assert waits == ["told"]  # another thread of the same process waits too, and says so once
    thread.join(10)
    assert waits == ["told", "got it"]
