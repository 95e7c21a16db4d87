"""Scaling `embed` out: torchrun ranks and array jobs (--num-shards/--shard-index) build the same entry as one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from conftest import make_image_folder, run_cli
from stitchcli.cli import app
from stitchcli.distributed import start_workers
from stitchcli.embedding import EmbedOptions, embed, entry_key, load_embeddings, resolve_model_spec
from stitchcli.embedding.batching import rows_per_shard
from stitchcli.models import ModelRef
from stitchcli.errors import UsageError
from stitchcli.data import resolve_dataset
from stitchcli.store import EmbeddingStore, ShardPlan, read_safetensors_header

pytestmark = pytest.mark.slow  # starts processes: torchrun ranks, array jobs, killed runs

TINY = "test_vit"


@pytest.fixture
def two_hundred_images(tmp_path: Path) -> Path:
    """Give an image folder whose test split holds 200 images in two classes."""
    return make_image_folder(tmp_path / "images", per_class={"train": 4, "test": 100}, classes=("cat", "dog"))


def _single_process(tmp_path: Path, dataset: Path, model: str = TINY, **kwargs) -> dict[str, np.ndarray]:
    """Give the tensors of the test entry one process builds in its own cache."""
    store = EmbeddingStore(tmp_path / "single-cache")
    result = embed([ModelRef(name, {"weights": "random"}) for name in [model]], str(dataset), ["test"], store=store, options=EmbedOptions(device="cpu", **kwargs))[0]
    return load_file(result.path)


def _torchrun(*args: str, nproc: int = 2, **popen) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "stitchcli", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _assert_same_entry(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert len(np.unique(got["ids"])) == len(got["ids"]) == len(want["ids"])  # no row missing or repeated
    np.testing.assert_array_equal(got["ids"], want["ids"])
    np.testing.assert_array_equal(got["labels"], want["labels"])
    np.testing.assert_allclose(got["embeddings"], want["embeddings"], rtol=0, atol=1e-6)


def test_job_shards_cover_every_shard_once():
    for rows in (1, 7, 200, 1000, 4097):
        for shard_rows in (1, 8, 32, 1024):
            for jobs in (1, 2, 3, 5, 8):
                plan = ShardPlan(rows=rows, shard_rows=shard_rows, done=[], jobs=jobs)
                owned = [i for j in range(jobs) for i in plan.job_shards(j)]
                assert owned == list(range(plan.num_shards))
                assert plan.missing_jobs == [j for j in range(jobs) if plan.job_shards(j)]


def test_several_jobs_get_even_whole_batch_shards():
    options = EmbedOptions(shard_rows=1024)
    assert rows_per_shard(options, 32, 200, 1) == 1024
    shard_rows = rows_per_shard(options, 32, 200, 3)
    assert shard_rows % 32 == 0
    plan = ShardPlan(rows=200, shard_rows=shard_rows, done=[], jobs=3)
    sizes = [sum(min(plan.bounds(i)[1], 200) - plan.bounds(i)[0] for i in plan.job_shards(j)) for j in range(3)]
    assert sum(sizes) == 200 and min(sizes) > 0 and max(sizes) - min(sizes) <= 32
    assert rows_per_shard(options, 32, 1_000_000, 8) == 1024  # large splits keep the usual shard size


def test_torchrun_two_ranks_equal_one_process(cache_dir, tmp_path, two_hundred_images):
    proc = _torchrun("embed", "-m", TINY, "--weights", "random", "-d", str(two_hundred_images), "-s", "test", "--device", "cpu", "--json")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    report = json.loads(out)  # rank 0 alone prints, one JSON document
    (entry,) = report["entries"]
    assert entry["complete"] and entry["rows"] == 200 and entry["num_shards"] == 2 and entry["shard_index"] == 0
    got = load_file(entry["path"])
    _assert_same_entry(got, _single_process(tmp_path, two_hundred_images))
    meta, _, _ = read_safetensors_header(Path(entry["path"]))
    assert [job["job"] for job in meta["jobs"]] == [0, 1] and sum(job["rows"] for job in meta["jobs"]) == 200
    assert not Path(entry["path"].replace(".safetensors", ".partial")).exists()
    assert "Traceback" not in err


def test_array_jobs_report_the_missing_shard_then_join(cache_dir, tmp_path, two_hundred_images):
    data = str(two_hundred_images)
    # a short name for the random model, so `stitch` (which takes no --weights) can use it
    assert run_cli("embed", "-m", TINY, "--weights", "random", "--name", "tv", "-d", data, "-s", "train").returncode == 0
    assert run_cli("embed", "-m", TINY, "--weights", "random", "--seed", "1", "--name", "tw", "-d", data).returncode == 0
    job = ["embed", "-m", "tv", "-d", data, "-s", "test", "--num-shards", "3", "--json"]
    for index in ("0", "2"):
        done = run_cli(*job, "--shard-index", index)
        assert done.returncode == 0, done.stderr
        (pending,) = json.loads(done.stdout)["entries"]
        assert not pending["complete"] and pending["shard_index"] == int(index) and 1 in pending["waiting_for_shards"]

    for consumer in (["stitch", "tw", "tv", "-d", data], ["embed", "-m", "tv", "-d", data, "-s", "test"],
                     ["embed", "-m", "tv", "-d", data, "-s", "test", "--merge"]):
        refused = run_cli(*consumer)
        assert refused.returncode == 2, (consumer, refused.stderr)
        errors = refused.stderr.strip().splitlines()
        assert len(errors) == 1 and errors[0].startswith("stitchcli: error:"), refused.stderr
        assert "shard 1 of 3 not done" in errors[0] and "--shard-index 1" in errors[0]

    last = run_cli(*job, "--shard-index", "1")
    assert last.returncode == 0, last.stderr
    (entry,) = json.loads(last.stdout)["entries"]
    assert entry["complete"] and entry["rows"] == 200  # the last job to finish joined the shards
    meta, _, _ = read_safetensors_header(Path(entry["path"]))
    assert [j["job"] for j in meta["jobs"]] == [0, 1, 2] and [j["resumed_rows"] for j in meta["jobs"]] == [0, 0, 0]
    assert sum(j["rows"] for j in meta["jobs"]) == 200 and meta["jobs"][1]["rows"] < 100  # job 1 did its own rows only
    _assert_same_entry(load_file(entry["path"]), _single_process(tmp_path, two_hundred_images))

    merged = run_cli("embed", "-m", "tv", "-d", data, "-s", "test", "--merge", "--json")
    assert merged.returncode == 0 and json.loads(merged.stdout)["entries"][0]["cache_hit"]
    # the joined entry feeds stitch (one short head: what is tested is that the entry reads, not the training)
    stitched = run_cli("stitch", "tw", "tv", "-d", data, "--seeds", "0", "--epochs", "2", "--baselines", "none", "--json")
    assert stitched.returncode == 0, stitched.stderr


def test_merge_with_nothing_to_merge_says_so(cache_dir, image_folder):
    refused = run_cli("embed", "-m", TINY, "--weights", "random", "-d", str(image_folder), "-s", "test", "--merge")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "nothing to merge" in refused.stderr and "--num-shards" in refused.stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_shards": 3}, "needs --shard-index"),
        ({"num_shards": 3, "shard_index": 3}, "between 0 and 2"),
        ({"num_shards": 0}, "must be 1 or more"),
        ({"shard_index": 1}, "between 0 and 0"),
        ({"merge": True, "force": True}, "--merge joins"),
    ],
)
def test_bad_shard_options_fail_before_any_work(cache_dir, image_folder, monkeypatch, options, message):
    monkeypatch.setattr("stitchcli.embedding.pipeline._build", lambda *a, **k: pytest.fail("a model was built"))
    register_as = options.pop("register_as", None)
    with pytest.raises(UsageError, match=message):
        embed([ModelRef(name, {"weights": "random"}) for name in [TINY]], str(image_folder), ["test"], store=EmbeddingStore(cache_dir),
              register_as=register_as, options=EmbedOptions(**options))
    assert not (cache_dir / "embeddings").exists()


@pytest.mark.slow
def test_array_jobs_may_each_save_the_same_name(cache_dir, image_folder):
    """Issue 18: an array-job script names the model once; every job saves the same spec, and the name finds the entry."""
    data = str(image_folder)
    job = ["embed", "-m", TINY, "--weights", "random", "--name", "tvjob", "-d", data, "-s", "test", "--num-shards", "2",
           "--num-workers", "0", "--json"]
    runs = [CliRunner().invoke(app, [*job, "--shard-index", index]) for index in ("1", "0")]
    assert [r.exit_code for r in runs] == [0, 0], [r.output for r in runs]
    waiting, joined = (json.loads(r.stdout)["entries"][0] for r in runs)
    assert not waiting["complete"] and joined["complete"] and joined["model"] == "tvjob"
    store = EmbeddingStore(cache_dir)
    assert load_embeddings(store, "tvjob", data, "test").path == Path(joined["path"])
    for model, weights in (("tvjob", None), (TINY, "random")):  # the name and the full spec: one entry
        (hit,) = embed([ModelRef(name, {"weights": weights}) for name in [model]], data, ["test"], store=store)
        assert hit.cache_hit and hit.path == joined["path"]
    other_seed = CliRunner().invoke(app, [*job, "--seed", "1", "--shard-index", "0"])
    assert other_seed.exit_code == 2 and "already saved" in other_seed.stderr


def test_array_options_are_refused_under_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(UsageError, match="under torchrun the ranks are the shards"):
        start_workers(3, 0, "cpu")


def test_a_job_count_change_keeps_finished_shards_unless_forced(cache_dir, two_hundred_images):
    store = EmbeddingStore(cache_dir)
    embed([ModelRef(name, {"weights": "random"}) for name in [TINY]], str(two_hundred_images), ["test"], store=store,
          options=EmbedOptions(num_workers=0, num_shards=2, shard_index=0))
    with pytest.raises(UsageError, match="made by 2 jobs, not 3"):
        embed([ModelRef(name, {"weights": "random"}) for name in [TINY]], str(two_hundred_images), ["test"], store=store,
              options=EmbedOptions(num_workers=0, num_shards=3, shard_index=0))
    spec = resolve_model_spec(store, ModelRef(TINY, {"weights": "random"}))
    data = resolve_dataset(str(two_hundred_images))
    key = entry_key(spec, data, "test", limit=None, seed=0)
    partial = store.partial_dir(spec.storage_name, key)
    assert len(list(partial.glob("shard-*"))) > 0  # still there
    embed([ModelRef(name, {"weights": "random"}) for name in [TINY]], str(two_hundred_images), ["test"], store=store,
          options=EmbedOptions(num_workers=0, num_shards=3, shard_index=0, force=True))
    assert json.loads((partial / "plan.json").read_text())["jobs"] == 3  # --force started over with 3 jobs


def _rank_pid(torchrun_pid: int, rank: int) -> int | None:
    """Give the pid of the worker process torchrun started for ``rank`` (a direct child holding RANK=rank)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == torchrun_pid and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finding torchrun's rank processes reads /proc (Linux)")
def test_killed_rank_resumes_without_recomputing_finished_shards(cache_dir, tmp_path):
    """A rank SIGKILLed midway fails the torchrun job; the rerun computes only the shards that were missing."""
    images = make_image_folder(tmp_path / "images", per_class={"test": 48}, classes=("cat", "dog"))
    model = "vit_small_patch16_224"  # slow enough on a CPU (about 1 s per 8-row shard) to be caught midway
    args = ["embed", "-m", model, "--weights", "random", "-d", str(images), "-s", "test", "--batch-size", "8",
            "--shard-rows", "8", "--num-workers", "0", "--device", "cpu", "--json"]
    plan = ShardPlan(rows=96, shard_rows=8, done=[], jobs=2)
    rank1_shards = {f"shard-{i:06d}.safetensors" for i in plan.job_shards(1)}
    proc = _torchrun(*args)
    try:
        deadline = time.monotonic() + 240
        partial = None
        while time.monotonic() < deadline and proc.poll() is None:
            partial = next((cache_dir / "embeddings").glob("*/*/test-*.partial"), None) if (cache_dir / "embeddings").exists() else None
            if partial is not None and {p.name for p in partial.glob("shard-*.safetensors")} & rank1_shards:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before rank 1 could be killed midway"
        pid = _rank_pid(proc.pid, 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "SIGKILL" in err
    assert partial is not None
    kept = {p.name for p in partial.glob("shard-*.safetensors")}
    assert kept & rank1_shards and not rank1_shards <= kept  # killed midway: some of rank 1's shards done

    rerun = _torchrun(*args)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    (entry,) = json.loads(out)["entries"]
    assert entry["resumed_rows"] == 8 * len(kept)  # every finished shard was reused, none recomputed
    meta, _, _ = read_safetensors_header(Path(entry["path"]))
    assert meta["resumed_rows"] == 8 * len(kept)
    _assert_same_entry(load_file(entry["path"]), _single_process(tmp_path, images, model, num_workers=0, batch_size=8))


def test_text_array_jobs_equal_one_process(cache_dir, tmp_path, tiny_bert):
    """Texts are length-sorted within each job's smaller shards: the joined entry equals one process's to 1e-6."""
    from conftest import make_text_table

    table = make_text_table(tmp_path / "texts", rows_per_class=30)
    store = EmbeddingStore(cache_dir)
    results = [
        embed([str(tiny_bert)], str(table), ["train"], store=store, options=EmbedOptions(num_workers=0, num_shards=2, shard_index=i))[0]
        for i in (1, 0)
    ]
    assert not results[0].complete and results[0].waiting_for_shards == [0] and results[1].complete
    single = embed([str(tiny_bert)], str(table), ["train"], store=EmbeddingStore(tmp_path / "single"), options=EmbedOptions(num_workers=0))[0]
    _assert_same_entry(load_file(results[1].path), load_file(single.path))


def test_one_process_never_discards_array_jobs_shards_and_forced_jobs_join_again(cache_dir, two_hundred_images):
    store = EmbeddingStore(cache_dir)
    spec = resolve_model_spec(store, ModelRef(TINY, {"weights": "random"}))
    key = entry_key(spec, resolve_dataset(str(two_hundred_images)), "test", limit=None, seed=0)
    job = lambda i, **kw: embed([ModelRef(name, {"weights": "random"}) for name in [TINY]], str(two_hundred_images), ["test"], store=store,
                                options=EmbedOptions(num_workers=0, num_shards=2, shard_index=i, **kw))[0]
    job(0)
    plan = store.read_plan(spec.storage_name, key, None)
    assert plan is not None and plan.jobs == 2 and plan.done
    # a one-process build that raced past the check still may not replace the jobs' plan
    with pytest.raises(UsageError, match="made by 2 jobs, not one process"):
        store.plan(spec.storage_name, key, np.arange(plan.rows), plan.shard_rows)
    first = job(1)
    assert first.complete
    before = Path(first.path).stat().st_mtime_ns
    job(0, force=True)
    again = job(1, force=True)
    assert again.complete and Path(again.path).stat().st_mtime_ns != before  # joined again, not the old entry
    assert not store.partial_dir(spec.storage_name, key).exists()
