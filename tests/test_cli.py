"""The command-line contract: help without heavy imports, JSON on stdout, one-line errors and exit codes, resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import run_cli
from stitchcli.cli import app

TINY = "test_vit"


def _heavy_modules_after(code: str) -> list[str]:
    probe = (
        "import sys\n"
        f"{code}\n"
        "print('HEAVY=' + ','.join(m for m in ('torch', 'timm', 'transformers', 'open_clip', 'datasets') if m in sys.modules), file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    line = [x for x in out.stderr.splitlines() if x.startswith("HEAVY=")][-1]
    return [m for m in line[len("HEAVY="):].split(",") if m]


@pytest.mark.parametrize("argv", [["--help"], ["embed", "--help"]])
def test_help_imports_no_heavy_library(argv):
    code = (
        "from stitchcli.cli import app\n"
        "try:\n"
        f"    app({argv!r})\n"
        "except SystemExit:\n"
        "    pass"
    )
    assert _heavy_modules_after(code) == []


def test_all_five_subcommands_are_listed():
    result = subprocess.run([sys.executable, "-m", "stitchcli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for name in ("embed", "anchor", "fit-head", "stitch", "eval"):
        assert name in result.stdout


def test_help_shows_the_defaults_that_are_written_in_the_text():
    """Every default reaches the screen (rich once read "[default: x]" as a markup tag and dropped it)."""
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run([sys.executable, "-m", "stitchcli", "stitch", "--help"], capture_output=True, text=True, env=env)
    assert result.returncode == 0
    for shown in ("[default: cosine,euclidean]", "[default: center]", "[default: absolute,translation,affine]", "[default: 0.1]", "[default: mlp-sum]"):
        assert shown in result.stdout, shown


@pytest.mark.parametrize(
    "argv, message",
    [
        (["stitch", "a", "b"], "--dataset"),
        (["fit-head", "--dataset", "x"], "--model"),
        (["eval"], "eval needs --dataset D and --models A,B"),
        (["eval", "--dataset", "x", "--models", "a,b", "--projection", "cosin"], "did you mean 'cosine'"),
        (["stitch", "a", "b", "--dataset", "x", "--seeds", "0,one"], "--seeds must be comma-separated integers"),
        (["fit-head", "-m", "a", "--dataset", "x", "--val-fraction", "1.5"], "--val-fraction must be between 0 and 1"),
    ],
)
@pytest.mark.slow
def test_stitching_commands_refuse_bad_options_with_one_line_and_exit_2(argv, message, cache_dir):
    result = run_cli(*argv)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.slow
def test_json_output_is_one_document_and_cache_hit_imports_no_torch(cache_dir, image_folder):
    args = ["embed", "-m", TINY, "--weights", "random", "-d", str(image_folder), "--split", "test", "--num-workers", "0", "--json"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    doc = json.loads(first.stdout)
    entry = doc["entries"][0]
    assert entry["rows"] == 9 and entry["dim"] == 64 and entry["cache_hit"] is False
    assert set(entry) >= {"model", "dataset", "split", "rows", "dim", "seconds", "rows_per_s", "cache_hit", "path"}
    # the second run: a cache hit that never imports torch (what keeps it well under a second)
    code = (
        "from stitchcli.cli import app\n"
        f"app({args!r})"
    )
    probe = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint('HEAVY=' + ','.join(m for m in ('torch','timm') if m in sys.modules), file=sys.stderr)"],
        capture_output=True, text=True, env=os.environ,
    )
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout)["entries"][0]["cache_hit"] is True
    assert "HEAVY=\n" in probe.stderr or probe.stderr.rstrip().endswith("HEAVY=")


@pytest.mark.slow
def test_table_output_lists_the_entry(cache_dir, image_folder):
    result = run_cli("embed", "-m", TINY, "--weights", "random", "-d", str(image_folder), "--split", "test", "--num-workers", "0")
    assert result.returncode == 0, result.stderr
    assert "test_vit" in result.stdout and "new" in result.stdout and " 9 " in result.stdout


def _assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    """The run failed with ``code``; its last stderr line is the only error line, naming every needle."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    assert len(errors) == 1 and errors[0] == lines[-1], result.stderr
    assert lines[-1].startswith("stitchcli: error: ")
    for needle in needles:
        assert needle in lines[-1], lines[-1]


@pytest.mark.slow
def test_unknown_model_suggests_close_names(cache_dir, image_folder):
    result = run_cli("embed", "-m", "vit_bsae_patch16_224", "-d", str(image_folder))
    _assert_one_line_error(result, 2, "vit_bsae_patch16_224", "vit_base_patch16_224")


def test_unknown_dataset(cache_dir):
    result = run_cli("embed", "-m", TINY, "--weights", "random", "-d", "cifar11")
    _assert_one_line_error(result, 2, "cifar11", "cifar10")


@pytest.mark.slow
def test_unknown_split(cache_dir, image_folder):
    result = run_cli("embed", "-m", TINY, "--weights", "random", "-d", str(image_folder), "--split", "validation")
    _assert_one_line_error(result, 2, "validation", "train", "test")


@pytest.mark.slow
def test_missing_column(cache_dir, text_table, tiny_bert):
    result = run_cli("embed", "-m", str(tiny_bert), "-d", str(text_table), "--input-column", "body")
    _assert_one_line_error(result, 2, "body", "text")


@pytest.mark.slow
def test_unreadable_weights_file(cache_dir, image_folder, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    result = run_cli("embed", "-m", f"timm:{TINY}", "--weights", str(bad), "-d", str(image_folder), "--split", "test")
    _assert_one_line_error(result, 2, str(bad))
    missing = run_cli("embed", "-m", f"timm:{TINY}", "--weights", str(tmp_path / "nope.pth"), "-d", str(image_folder))
    _assert_one_line_error(missing, 2, "nope.pth")


@pytest.mark.slow
def test_array_with_wrong_row_count(cache_dir, image_folder, tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((5, 3), np.float32))
    result = run_cli("embed", "-m", "mine", "--from-array", str(tmp_path / "a.npy"), "-d", str(image_folder), "--split", "test")
    _assert_one_line_error(result, 2, "5 rows", "9")


def test_bad_option_value_is_one_line(cache_dir, image_folder):
    result = run_cli("embed", "-m", TINY, "-d", str(image_folder), "--limit", "many")
    _assert_one_line_error(result, 2, "--limit")


@pytest.mark.slow
def test_hub_model_without_network_names_offline_alternatives(cache_dir, image_folder):
    result = run_cli("embed", "-m", "hf:google/vit-base-patch16-224-in21k", "-d", str(image_folder), "--split", "test",
                     env={"HF_HUB_OFFLINE": "1"})
    _assert_one_line_error(result, 1, "offline", "--weights", "--from-array")


@pytest.mark.slow
def test_hub_dataset_without_network_names_offline_alternatives(cache_dir):
    result = run_cli("embed", "-m", TINY, "--weights", "random", "-d", "cifar10", "--split", "test",
                     env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    _assert_one_line_error(result, 1, "cifar10", "offline")


@pytest.mark.slow
def test_errors_lose_nothing_already_cached(cache_dir, image_folder):
    ok = run_cli("embed", "-m", TINY, "--weights", "random", "-d", str(image_folder), "--split", "test", "--num-workers", "0", "--json")
    path = Path(json.loads(ok.stdout)["entries"][0]["path"])
    before = path.read_bytes()
    bad = run_cli("embed", "-m", TINY, "-m", "vit_bsae_patch16_224", "--weights", "random", "-d", str(image_folder), "--split", "test")
    assert bad.returncode == 2
    assert path.read_bytes() == before


@pytest.mark.slow
def test_sigkill_midway_then_rerun_matches_an_uninterrupted_run(cache_dir, tmp_path):
    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "many", per_class={"train": 64}, size=32)
    args = ["embed", "-m", "resnet18", "--weights", "random", "-d", str(data), "--split", "train",
            "--batch-size", "8", "--shard-rows", "16", "--num-workers", "0", "--json"]
    proc = subprocess.Popen([sys.executable, "-m", "stitchcli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "STITCHCLI_CACHE": str(cache_dir)})
    shards: list[Path] = []
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        shards = list(cache_dir.glob("embeddings/*/*/*.partial/shard-*.safetensors"))
        if len(shards) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed: make the dataset larger"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(cache_dir.glob("embeddings/*/*/*.partial/shard-*.safetensors"))
    assert 2 <= len(done) < 12
    mtimes = {p.name: p.stat().st_mtime_ns for p in done}
    assert not list(cache_dir.glob("embeddings/*/*/*.safetensors")), "no file may look complete after a kill"

    resumed = run_cli(*args, env={"STITCHCLI_CACHE": str(cache_dir)})
    assert resumed.returncode == 0, resumed.stderr
    entry = json.loads(resumed.stdout)["entries"][0]
    assert entry["resumed_rows"] >= 16 * len(done) - 16 and entry["rows"] == 192

    reference = run_cli(*args, env={"STITCHCLI_CACHE": str(tmp_path / "reference-cache")})
    assert reference.returncode == 0, reference.stderr
    from safetensors.numpy import load_file

    got = load_file(entry["path"])
    want = load_file(json.loads(reference.stdout)["entries"][0]["path"])
    np.testing.assert_array_equal(got["ids"], want["ids"])
    np.testing.assert_array_equal(got["labels"], want["labels"])
    np.testing.assert_allclose(got["embeddings"], want["embeddings"], rtol=0, atol=1e-6)
    # finished shards were reused as they were, not recomputed (they are gone now, joined into the entry)
    assert entry["resumed_rows"] == 16 * len(mtimes)


def _default_sigint() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume(cache_dir, tmp_path):
    from conftest import make_image_folder

    # enough work (600 images at 64 px) that the run is still going when the signal arrives, even on a loaded machine
    data = make_image_folder(tmp_path / "many", per_class={"train": 200}, size=64)
    proc = subprocess.Popen(
        [sys.executable, "-m", "stitchcli", "embed", "-m", "resnet18", "--weights", "random", "-d", str(data), "--split", "train",
         "--batch-size", "8", "--shard-rows", "16", "--num-workers", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "STITCHCLI_CACHE": str(cache_dir)},
        # A child inherits a blocked or ignored SIGINT (and Python then never sees it): start it as a shell would,
        # whatever the test process (or a library it loaded, e.g. multiprocessing's resource tracker) did to its own.
        preexec_fn=_default_sigint,
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not list(cache_dir.glob("embeddings/*/*/*.partial/shard-*")):
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    # Press Ctrl-C, and again if a press is lost, as a user would.
    stderr = ""
    for _ in range(5):
        proc.send_signal(signal.SIGINT)
        try:
            _, stderr = proc.communicate(timeout=30)
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        proc.kill()
        raise AssertionError("five SIGINTs did not stop the run")
    assert proc.returncode == 130
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("stitchcli: error: interrupted; finished work (embedding shards, heads) is kept")


@pytest.mark.slow
def test_offline_typo_of_a_known_text_model_suggests_it(cache_dir, text_table):
    result = run_cli("embed", "-m", "bert-base-cassed", "-d", str(text_table), "--split", "test", env={"HF_HUB_OFFLINE": "1"})
    _assert_one_line_error(result, 1, "bert-base-cassed", "did you mean bert-base-cased", "offline alternatives")


@pytest.mark.parametrize(
    ("name", "gpus", "needle"),
    [
        ("cuda:3", 2, "--device cuda:3 asked for, but 2 CUDA GPUs are visible (cuda:0 to cuda:1)"),
        ("cuda:1", 1, "--device cuda:1 asked for, but 1 CUDA GPU is visible (cuda:0 to cuda:0)"),
        ("cuda:3", 0, "--device cuda:3 asked for, but no CUDA GPU is visible"),
        ("cuda:x", 2, "unknown device 'cuda:x'"),
        ("cuda:01", 2, "unknown device 'cuda:01'"),  # torch refuses leading zeros
        ("cuda:\u00b2", 2, "unknown device 'cuda:\u00b2'"),  # str.isdigit() would take a superscript two
        ("cuda:\u0663", 2, "unknown device 'cuda:\u0663'"),  # an Arabic-Indic three
        ("cpu:0", 2, "unknown device 'cpu:0'"),
    ],
)
def test_a_device_that_is_not_there_is_refused_in_one_line(monkeypatch, name, gpus, needle):
    import torch

    from stitchcli.device import resolve_device
    from stitchcli.errors import UsageError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    with pytest.raises(UsageError, match="^" + re.escape(needle)):
        resolve_device(name)
    if gpus:
        assert resolve_device(f"cuda:{gpus - 1}") == torch.device(f"cuda:{gpus - 1}")  # the last visible GPU is fine


@pytest.mark.slow
def test_a_gpu_index_that_is_not_there_is_one_line_through_the_command_line(cache_dir, image_folder):
    # "but no CUDA GPU is visible" here, "but N CUDA GPUs are" on a GPU machine; nothing is written to the cache
    for device, needle in (("cuda:99", "--device cuda:99 asked for, but "), ("cuda:01", "unknown device 'cuda:01'")):
        result = run_cli("embed", "-m", "test_vit", "--weights", "random", "-d", str(image_folder), "--device", device)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("stitchcli: error: " + needle), line
    assert not list(cache_dir.glob("embeddings/**/*.safetensors"))


def _glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # no confstr, or no such name (macOS, musl)
        return False


_GLIBC = _glibc()
_PAGE_FAULTS = """
import resource, sys
import torch
from stitchcli.device import keep_freed_memory_for_reuse
if sys.argv[1] == "reuse" and not keep_freed_memory_for_reuse():
    print("refused")  # glibc before 2.35 takes no mmap threshold over 32 MiB
    sys.exit()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):  # the first blocks fault their pages in in every process (here the first 5 did)
    torch.empty(48 << 20, dtype=torch.uint8).fill_(1)
before = faults()
for _ in range(10):
    torch.empty(48 << 20, dtype=torch.uint8).fill_(1)  # 48 MB, over glibc's largest adaptive mmap threshold
print(faults() - before)
"""


@pytest.mark.slow
@pytest.mark.skipif(not _GLIBC, reason="sets glibc's malloc; other C libraries are left alone (tested below)")
def test_kept_memory_is_reused_without_faulting_its_pages_in_again():
    def faults(mode: str) -> str:
        mine = ("LD_PRELOAD", "GLIBC_TUNABLES")  # the user's own allocator settings, which it leaves alone
        done = subprocess.run([sys.executable, "-c", _PAGE_FAULTS, mode], capture_output=True, text=True, check=True,
                              env={k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in mine})
        return done.stdout.strip().splitlines()[-1]

    reused = faults("reuse")
    if reused == "refused":
        pytest.skip("this glibc takes no mmap threshold over 32 MiB")
    default = int(faults("default"))
    assert default >= 10  # each 48 MB block mapped anew: its pages (4 KiB or huge) faulted in every time
    assert int(reused) < default / 5


@pytest.mark.parametrize("name,value", [("MALLOC_MMAP_THRESHOLD_", "65536"), ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0"),
                                        ("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")])
def test_the_users_allocator_settings_are_left_alone(monkeypatch, name, value):
    from stitchcli.device import keep_freed_memory_for_reuse

    monkeypatch.setattr(os, "confstr", lambda name: pytest.fail("looked at the C library although the user chose"))
    monkeypatch.setenv(name, value)
    assert keep_freed_memory_for_reuse() is False


def test_thresholds_that_a_c_int_cannot_hold_are_refused():
    from stitchcli.device import keep_freed_memory_for_reuse

    for bad in ({"trim_threshold": 4 << 30}, {"mmap_threshold": -1}):
        with pytest.raises(ValueError, match="C ints"):
            keep_freed_memory_for_reuse(**bad)


def test_other_c_libraries_are_left_alone(monkeypatch):
    from stitchcli.device import keep_freed_memory_for_reuse

    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_", "GLIBC_TUNABLES", "LD_PRELOAD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "confstr", lambda name: "musl 1.2")
    assert keep_freed_memory_for_reuse() is False

    def unknown(name):
        raise ValueError("unrecognized configuration name")  # macOS

    monkeypatch.setattr(os, "confstr", unknown)
    assert keep_freed_memory_for_reuse() is False


def test_every_command_sets_the_allocator_before_its_work(monkeypatch, tmp_path):
    import stitchcli.cli as cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory_for_reuse", lambda: calls.append(1) or True)
    result = CliRunner().invoke(app, ["embed", "-m", TINY, "-d", str(tmp_path / "missing")])
    assert result.exit_code == 2 and calls == [1]


def test_help_shows_flags_without_types_and_the_positional_names_in_capitals():
    from typer.testing import CliRunner

    from stitchcli.cli import app

    for command in ([], ["stitch"], ["eval"], ["fit-head"], ["embed"], ["anchor"], ["similarity"], ["predict"], ["demo"]):
        result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0
        assert "<bool>" not in result.output and "{" not in result.output, command
    usage = CliRunner().invoke(app, ["stitch", "--help"], env={"COLUMNS": "200"}).output
    assert "ENCODER DECODER" in usage


@pytest.mark.parametrize("command", ["embed", "fit-head", "stitch", "eval", "similarity", "predict", "demo"])
def test_help_fills_a_narrow_terminal_instead_of_keeping_the_docstring_s_line_breaks(command):
    from typer.testing import CliRunner

    from stitchcli.cli import app

    output = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "80"}).output
    description = output.split("Usage:", 1)[1].split("╭", 1)[0].splitlines()[1:]
    paragraphs, current = [], []
    for line in description:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(current)
            current = []
    paragraphs.append(current)
    assert len([p for p in paragraphs if p]) >= 2, output
    for paragraph in paragraphs:
        # every line but a paragraph's last is filled (a ragged line ends well short of the 78 columns)
        assert all(len(line) > 55 for line in paragraph[:-1]), (command, paragraph)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where no file can be created")
def test_an_output_file_where_none_can_be_created_is_refused_before_any_work(tmp_path):
    """os.access says yes to root everywhere (/proc too): the check makes a file, as the write will, and removes it."""
    from stitchcli.cli.output import check_output_path
    from stitchcli.errors import UsageError

    with pytest.raises(UsageError, match="--csv /proc/rows.csv: no file can be created in /proc"):
        check_output_path("/proc/rows.csv", "--csv")
    check_output_path(tmp_path / "rows.csv", "--csv")
    check_output_path(tmp_path / "new" / "rows.csv", "--csv")  # folders on the way are made on writing
    assert list(tmp_path.iterdir()) == []  # the probe leaves nothing behind


def test_a_file_system_error_blames_the_cache_only_when_it_happened_in_the_cache(tmp_path, monkeypatch):
    import errno

    from stitchcli.cli import _describe_os_error
    from stitchcli.cli import output

    monkeypatch.setattr(output, "OPENED_CACHES", [(tmp_path / "parent" / "cache").resolve()])

    def said(error: type[OSError], code: int, path: Path) -> str:
        described = _describe_os_error(error(code, "failed", str(path)))
        assert described is not None and described[1] == 2
        return described[0]

    in_cache = said(PermissionError, errno.EACCES, tmp_path / "parent" / "cache" / "anchors" / "a.json")
    on_the_way = said(PermissionError, errno.EACCES, tmp_path / "parent")  # the folder the cache was to be made in
    elsewhere = said(PermissionError, errno.EACCES, tmp_path / "images" / "cat" / "1.png")  # an input, or an output
    read_only = said(OSError, errno.EROFS, tmp_path / "out" / "rows.csv")
    assert "choose a --cache-dir (or $STITCHCLI_CACHE) you can write to" in in_cache and "--cache-dir" in on_the_way
    assert "check its permissions, or choose another path" in elsewhere and "--cache-dir" not in elsewhere
    assert "read-only file system" in read_only and "--cache-dir" not in read_only
    # a cache folder that cannot be made at all (/proc/x/cache): one line, not a FileNotFoundError traceback
    cannot = said(FileNotFoundError, errno.ENOENT, tmp_path / "parent")
    assert "cannot make" in cannot and "choose another --cache-dir" in cannot
    assert _describe_os_error(FileNotFoundError(errno.ENOENT, "gone", str(tmp_path / "parent" / "cache" / "x.json"))) is None  # a bug


def test_square_brackets_in_help_are_shown_not_read_as_markup():
    """rich reads [mlp-sum] as a style tag and drops it: --save-row's help showed ('cosine+euclidean ')."""
    from typer.testing import CliRunner

    from stitchcli.cli import app

    result = CliRunner().invoke(app, ["stitch", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "('cosine+euclidean [mlp-sum]')" in result.output


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_the_version_is_printed_and_nothing_else_runs(flag):
    from typer.testing import CliRunner

    import stitchcli
    from stitchcli.cli import app

    result = CliRunner().invoke(app, [flag])
    assert result.exit_code == 0 and result.output.strip() == f"stitchcli {stitchcli.__version__}"
