"""Faults: `embed`, `fit-head` and `eval` killed midway (SIGKILL) and rerun, and writes that run out of room.

Each killed run stops itself at a chosen write (tests/process_faults.py) and is killed there, so the kill lands
midway every time: after some shards or heads are finished and while the next one is half written.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from conftest import run_cli
from process_faults import kill_at_write
from stitchcli.models import ModelRef
from stitchcli.cli import app
from stitchcli.embedding import EmbedOptions, embed
from stitchcli.errors import out_of_space_errno, out_of_space_message
from stitchcli.store import EmbeddingStore

pytestmark = [pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the tests see a stopped process in /proc (Linux)"), pytest.mark.slow]

TINY = "test_vit"
EMBED = ["--batch-size", "4", "--shard-rows", "4", "--num-workers", "0"]
HEAD = ["--epochs", "5"]


def _noise_images(root: Path, *, train: int, test: int, classes: int = 3, size: int = 16) -> Path:
    """Write an image folder of pure noise (so heads reach accuracies other than 1.0), and give its root."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Give (a cache holding the embeddings of two random ViTs saved as `tv` and `tw`, their noise dataset)."""
    root = tmp_path_factory.mktemp("faults")
    data = _noise_images(root / "noise", train=12, test=6)
    store = EmbeddingStore(root / "cache")
    for name, seed in (("tv", 0), ("tw", 1)):
        embed([ModelRef(name, {"weights": "random"}) for name in [TINY]], str(data), ["train", "test"], store=store, register_as=name,
              options=EmbedOptions(num_workers=0, seed=seed))
    return store.root, data


def _copy_cache(prepared: tuple[Path, Path], to: Path) -> Path:
    shutil.copytree(prepared[0], to)
    return to


def _only_error_line(stderr: str) -> str:
    """Give the one `stitchcli: error:` line of a failed run, checking there is no traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("stitchcli: error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def _leftovers(folder: Path) -> list[str]:
    """Give the temporary files (and shard folders) under a folder."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.endswith((".tmp", ".partial")))


def _reference_embeddings(tmp_path: Path, data: Path) -> dict[str, np.ndarray]:
    store = EmbeddingStore(tmp_path / "reference-cache")
    result = embed([ModelRef(name, {"weights": "random"}) for name in [TINY]], str(data), ["train"], store=store,
                   options=EmbedOptions(batch_size=4, shard_rows=4, num_workers=0))[0]
    return load_file(result.path)


def _assert_same_entry(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(got["ids"], want["ids"])
    np.testing.assert_array_equal(got["labels"], want["labels"])
    np.testing.assert_allclose(got["embeddings"], want["embeddings"], rtol=0, atol=1e-6)


def _limit_file_size(limit: int) -> Callable[[], None]:
    """Give a preexec_fn under which any write past ``limit`` bytes of a file fails with EFBIG (as on a full disk)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process instead of failing the write
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _run_cli_limited(args: list[str], *, limit: int) -> subprocess.CompletedProcess[str]:
    """Run `python -m stitchcli ARGS` where no file may grow past ``limit`` bytes."""
    return subprocess.run([sys.executable, "-m", "stitchcli", *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ), preexec_fn=_limit_file_size(limit))


@pytest.mark.parametrize(
    ("stop_at", "finished"),
    [(3, 2), (9, 8)],
    ids=["writing-the-third-shard", "joining-the-shards-into-the-entry"],
)
def test_embed_killed_midway_resumes_to_the_uninterrupted_entry(cache_dir, tmp_path, stop_at, finished):
    data = _noise_images(tmp_path / "noise", train=8, test=0, classes=4)  # 32 rows: 8 shards of 4, then the entry
    args = ["embed", "-m", TINY, "--weights", "random", "-d", str(data), "-s", "train", *EMBED, "--json"]
    kill_at_write(*args, hook_dir=tmp_path / "hook", stop_at_write=stop_at)
    # killed midway: some shards finished, the next file half written under its temporary name, no entry
    (partial,) = cache_dir.glob("embeddings/*/*/train-*.partial")
    assert sorted(p.name for p in partial.glob("shard-*")) == [f"shard-{i:06d}.safetensors" for i in range(finished)]
    assert len(_leftovers(partial.parent)) == 2  # the partial folder and one temporary file
    assert not list(cache_dir.glob("embeddings/*/*/*.safetensors")), "no file may look complete after a kill"

    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    (entry,) = json.loads(rerun.stdout)["entries"]
    assert (entry["rows"], entry["resumed_rows"], entry["cache_hit"]) == (32, 4 * finished, False)  # the shards reused
    assert _leftovers(cache_dir) == []  # the shards and the torn temporary file are gone
    _assert_same_entry(load_file(entry["path"]), _reference_embeddings(tmp_path, data))


def test_fit_head_killed_midway_trains_again_to_the_same_head(prepared, cache_dir, tmp_path):
    # fit-head keeps no state of its own while training: its embeddings and anchors are cached, the head is not
    # until it is written whole, so the rerun trains it again from the start.
    _copy_cache(prepared, cache_dir)
    data = prepared[1]
    args = ["fit-head", "-m", "tv", "-d", str(data), *HEAD, "--json"]
    kill_at_write(*args, "--out", str(tmp_path / "head"), hook_dir=tmp_path / "hook", stop_at_write=1)
    heads = cache_dir / "heads"
    assert len(list(heads.rglob(".relative-*.safetensors.*.tmp"))) == 1  # killed while writing the head
    assert not list(heads.rglob("*.safetensors")) and not list(heads.rglob("*.json"))
    assert not list(tmp_path.glob("head*"))
    assert len(list(cache_dir.glob("anchors/*.json"))) == 1  # the anchors were saved whole before training

    rerun = run_cli(*args, "--out", str(tmp_path / "head"))
    assert rerun.returncode == 0, rerun.stderr
    document = json.loads(rerun.stdout)
    assert not document["cached"]
    assert not _leftovers(heads)  # the killed write's temporary file was removed under the head's lock
    written = Path(document["out"])

    reference_cache = _copy_cache(prepared, tmp_path / "reference-cache")
    reference = CliRunner().invoke(app, [*args, "--cache-dir", str(reference_cache), "--out", str(tmp_path / "reference-head")])
    assert reference.exit_code == 0, reference.output
    want = load_file(json.loads(reference.stdout)["out"])
    for got in (load_file(str(written)), load_file(document["path"])):
        assert got.keys() == want.keys()
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    trained, reference_trained = (
        {**json.loads(path.read_text())["training"], "seconds": None}
        for path in (written.with_suffix(".json"), tmp_path / "reference-head.json")
    )
    assert trained == reference_trained  # the same epochs, best epoch and accuracies


def test_eval_killed_midway_keeps_the_finished_heads_and_gives_the_same_numbers(prepared, cache_dir, tmp_path):
    _copy_cache(prepared, cache_dir)
    data = prepared[1]
    # two models, cosine, euclidean and their product, one seed: 6 heads; the run is killed writing the third
    args = ["eval", "-d", str(data), "--models", "tv,tw", "--seeds", "0", "--baselines", "none", "--bridge", "none", *HEAD, "--json"]
    kill_at_write(*args, hook_dir=tmp_path / "hook", stop_at_write=3)
    heads = cache_dir / "heads"
    finished = {p.relative_to(heads): p.read_bytes() for p in heads.rglob("*.safetensors")}
    assert len(finished) == 2 and len(list(heads.rglob(".*.safetensors.*.tmp"))) == 1

    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert "4 head(s) trained, 2 read from the cache" in rerun.stderr
    assert not _leftovers(heads)
    for name, content in finished.items():
        assert (heads / name).read_bytes() == content  # the finished heads were read, not trained again
    got = json.loads(rerun.stdout)

    reference_cache = _copy_cache(prepared, tmp_path / "reference-cache")
    reference = CliRunner().invoke(app, [*args, "--cache-dir", str(reference_cache)])
    assert reference.exit_code == 0, reference.output
    want = json.loads(reference.stdout)
    for part in ("rows", "summary", "similarity"):
        assert got[part] == want[part], part
    assert len({row["accuracy"] for row in got["rows"]}) > 1  # numbers worth comparing, not all 1.0
    reference_heads = reference_cache / "heads"
    assert sorted(p.relative_to(heads) for p in heads.rglob("*.safetensors")) == sorted(
        p.relative_to(reference_heads) for p in reference_heads.rglob("*.safetensors"))
    for path in heads.rglob("*.safetensors"):
        want_tensors = load_file(str(reference_heads / path.relative_to(heads)))
        for name, tensor in load_file(str(path)).items():
            np.testing.assert_array_equal(tensor, want_tensors[name], err_msg=f"{path.name}: {name}")


def test_embed_out_of_room_says_so_in_one_line_and_keeps_the_shards(cache_dir, tmp_path):
    data = _noise_images(tmp_path / "noise", train=8, test=0, classes=4)  # shards of 1.2 kB, an entry of 12 kB
    args = ["embed", "-m", TINY, "--weights", "random", "-d", str(data), "-s", "train", *EMBED, "--json"]
    full = _run_cli_limited(args, limit=8192)
    assert full.returncode == 1
    line = _only_error_line(full.stderr)
    assert line.startswith("stitchcli: error: file too large") and "--cache-dir" in line and "run the same command again" in line
    (partial,) = cache_dir.glob("embeddings/*/*/train-*.partial")
    assert f"writing {str(partial).replace('.partial', '.safetensors')} (a file-size limit" in line  # the entry it could not write
    assert len(list(partial.glob("shard-*.safetensors"))) == 8  # every shard was finished and is kept
    assert not list(cache_dir.glob("embeddings/*/*/*.safetensors")) and not list(cache_dir.rglob("*.tmp"))

    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    (entry,) = json.loads(rerun.stdout)["entries"]
    assert entry["resumed_rows"] == entry["rows"] == 32  # nothing computed again
    _assert_same_entry(load_file(entry["path"]), _reference_embeddings(tmp_path, data))


def test_fit_head_out_of_room_says_so_in_one_line_and_leaves_no_head(prepared, cache_dir, tmp_path):
    _copy_cache(prepared, cache_dir)
    # the head (36 anchors x 512 hidden floats, 80 kB) cannot be written; the anchors (1 kB) can
    full = _run_cli_limited(["fit-head", "-m", "tv", "-d", str(prepared[1]), *HEAD, "--out", str(tmp_path / "head")], limit=32768)
    assert full.returncode == 1
    line = _only_error_line(full.stderr)
    assert line.startswith("stitchcli: error: file too large writing ") and f"{cache_dir / 'heads'}" in line
    assert "--cache-dir" in line
    assert [p.suffix for p in cache_dir.glob("heads/**/*") if p.is_file()] == [".lock"]  # the head's (empty) lock file alone
    assert not list(cache_dir.rglob("*.tmp")) and not list(tmp_path.glob("head*"))


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), errno.ENOSPC),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), errno.EDQUOT),
        (RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"), errno.ENOSPC),
        (OSError(errno.EACCES, "Permission denied"), None),
        (RuntimeError("Error while serializing: (os error 13)"), None),
    ],
)
def test_out_of_room_is_recognised_also_through_safetensors(error, code):
    assert out_of_space_errno(error) == code
    if code is not None:
        message = out_of_space_message(code, "/cache/x.safetensors")
        assert "/cache/x.safetensors" in message and "\n" not in message and "--cache-dir" in message
