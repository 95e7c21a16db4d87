"""Bad input through the real command line (`python -m stitchcli ...` in subprocesses), for all five subcommands.

Every case asserts what a shell script sees: the exit code (2 bad input, 1 the work failed), exactly one
`stitchcli: error:` line on stderr (its last line) that says what to do, no traceback, nothing on stdout, and
a cache that is unchanged or still valid (every file that was there is there with the same bytes; every
entry, head and manifest left in it still reads). A few inputs are decided to work, and are asserted to:
empty and overlong texts (embedded; overlong ones truncated to the model's limit), a test class the training
split lacks (a warning), and a cache hit in a read-only cache.

Each case is its own test and runs its own process, in its own copy of one prepared cache (`-k ID` runs one).
With STITCHCLI_BAD_INPUT_TABLE=FILE the module also writes the markdown table of the cases it ran and the lines
users see (docs/RELIABILITY.md).
"""

from __future__ import annotations

from stitchcli.models import ModelRef
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from conftest import make_image_folder, make_text_table

ERROR = "stitchcli: error: "
MEMO = "resolved.json"  # the cache's memo of name resolutions: a run may add to it
V = ("--weights", "random")  # the tiny timm ViT with seeded random weights: no download
FAST_HEAD = ("--epochs", "1", "--seeds", "0", "--baselines", "none")


@dataclass(frozen=True)
class Case:
    """One bad input: the command (``{name}`` fields are paths of the prepared world) and what it must give.

    ``needles`` must all appear in the error line (code 1 or 2) or on stderr (code 0); ``check`` looks at
    a successful run's stdout; ``read_only`` runs it on a read-only copy of the cache.
    """

    id: str
    argv: tuple[str, ...]
    code: int
    needles: tuple[str, ...]
    read_only: bool = False
    needs_no_gpu: bool = False
    check: Callable[[str], None] | None = field(default=None, compare=False)
    note: str = ""  # what a successful run gives, for the table


def _rows(expected: dict[str, int]) -> Callable[[str], None]:
    def check(stdout: str) -> None:
        entries = json.loads(stdout)["entries"]
        assert {e["split"]: e["rows"] for e in entries} == expected

    return check


CASES = [
    # ---- embed ------------------------------------------------------------------------------------------
    Case("embed: unknown model name (a typo)", ("embed", "-m", "test_vitt", *V, "-d", "{img}"), 2,
         ("unknown model 'test_vitt'", "did you mean", "test_vit")),
    Case("embed: unknown dataset alias", ("embed", "-m", "test_vit", *V, "-d", "cifar11"), 2,
         ("unknown dataset 'cifar11'", "did you mean cifar10")),
    Case("embed: dataset path that does not exist", ("embed", "-m", "test_vit", *V, "-d", "{root}/no-such-folder"), 2,
         ("no-such-folder does not exist", "check the path")),
    Case("embed: unknown split", ("embed", "-m", "test_vit", *V, "-d", "{img}", "--split", "validation"), 2,
         ("has no split 'validation'", "available splits: test, train")),
    Case("embed: unknown input column", ("embed", "-m", "{bert}", "-d", "{txt}", "--input-column", "body"), 2,
         ("no column 'body'", "columns: text, label", "--input-column")),
    Case("embed: unknown label column", ("embed", "-m", "{bert}", "-d", "{txt}", "--label-column", "stars"), 2,
         ("no column 'stars'", "--label-column")),
    Case("embed: empty dataset (header only)", ("embed", "-m", "{bert}", "-d", "{empty}"), 2,
         ("split 'train' has no rows", "give a split that holds data")),
    Case("embed: a split with no rows", ("embed", "-m", "{bert}", "-d", "{emptytest}", "--split", "test"), 2,
         ("split 'test' has no rows",)),
    Case("embed: label column with empty values (NaN)", ("embed", "-m", "{bert}", "-d", "{nanlabel}"), 2,
         ("label column 'label'", "has empty values", "fill them in or pass another --label-column")),
    Case("embed: image that fails to decode", ("embed", "-m", "test_vit", *V, "-d", "{broken}", "--split", "test", "--num-workers", "0"), 2,
         ("cannot decode image file", "test/cat/0000.png", "not an image format Pillow reads", "fix or remove it")),
    Case("embed: zero-byte image, read in a loader worker", ("embed", "-m", "test_vit", *V, "-d", "{broken}", "--split", "train", "--num-workers", "1"), 2,
         ("cannot decode image file", "train/cat/0000.png", "it is empty", "fix or remove it")),
    Case("embed: empty text (embedded as an empty string)", ("embed", "-m", "{bert}", "-d", "{emptytext}", "--split", "train", "--num-workers", "0", "--json"), 0,
         (), check=_rows({"train": 5}), note="all 5 rows embedded (the empty one as [CLS] [SEP])"),
    Case("embed: text longer than the model's limit (truncated)", ("embed", "-m", "{bert}", "-d", "{longtext}", "--split", "train", "--num-workers", "0", "--json"), 0,
         (), check=_rows({"train": 5}), note="all 5 rows embedded, the 1,600-word one truncated to the model's 64 tokens"),
    Case("embed: --max-length beyond the model's position embeddings", ("embed", "-m", "{bert}", "-d", "{txt}", "--max-length", "1000"), 2,
         ("--max-length 1000", "give --max-length 64 or less")),
    Case("embed: negative --batch-size", ("embed", "-m", "test_vit", *V, "-d", "{img}", "--batch-size", "-1"), 2,
         ("--batch-size must be positive, not -1",)),
    Case("embed: --batch-size that is not a number", ("embed", "-m", "test_vit", *V, "-d", "{img}", "--batch-size", "lots"), 2,
         ("Invalid value for '--batch-size'", "valid integer", "stitchcli embed --help")),
    Case("embed: unknown --precision", ("embed", "-m", "test_vit", *V, "-d", "{img}", "--precision", "fp64"), 2,
         ("unknown precision 'fp64'", "fp32, bf16, fp16")),
    Case("embed: unknown --device", ("embed", "-m", "test_vit", *V, "-d", "{img}", "--device", "tpu"), 2,
         ("unknown device 'tpu'", "auto, cpu, cuda, mps")),
    Case("embed: --device cuda on a machine without a GPU", ("embed", "-m", "test_vit", *V, "-d", "{img}", "--split", "test", "--device", "cuda", "--force"), 2,
         ("no CUDA GPU is visible", "--device cpu"), needs_no_gpu=True),
    Case("fit-head: --device cuda:3 on a machine without a GPU", ("fit-head", "-m", "arra", "-d", "{img}", "--device", "cuda:3"), 2,
         ("--device cuda:3 asked for, but no CUDA GPU is visible", "--device cpu"), needs_no_gpu=True),
    Case("embed: --limit 0", ("embed", "-m", "test_vit", *V, "-d", "{img}", "--limit", "0"), 2,
         ("--limit must be a positive number of rows, not 0",)),
    Case("embed: unknown --pooling", ("embed", "-m", "{bert}", "-d", "{txt}", "--pooling", "max"), 2,
         ("unknown pooling 'max'", "cls, mean")),
    Case("embed: --shard-index out of range", ("embed", "-m", "test_vit", *V, "-d", "{img}", "--num-shards", "2", "--shard-index", "5"), 2,
         ("--shard-index must be between 0 and 1",)),
    Case("embed: --from-array file that does not exist", ("embed", "-m", "mine", "--from-array", "{root}/no-such.npy", "-d", "{img}", "--split", "test"), 2,
         ("no-such.npy", ".npy or .safetensors")),
    Case("embed: cache folder under a file", ("embed", "-m", "test_vit", *V, "-d", "{img}", "--cache-dir", "{afile}/cache"), 2,
         ("which is a file, not a folder", "choose another --cache-dir")),
    Case("embed: image model on a text dataset", ("embed", "-m", "test_vit", *V, "-d", "{txt}", "--split", "test"), 2,
         ("encodes image, not text data", "pick a model for this dataset")),
    Case("embed: unknown option", ("embed", "-m", "test_vit", "-d", "{img}", "--frobnicate"), 2,
         ("No such option: --frobnicate", "stitchcli embed --help")),
    # ---- anchor -----------------------------------------------------------------------------------------
    Case("anchor: --num 0", ("anchor", "-d", "{img}", "--num", "0"), 2,
         ("number of anchors must be positive, not 0",)),
    Case("anchor: more anchors than the split's rows", ("anchor", "-d", "{img}", "--num", "500"), 2,
         ("500 anchors asked for", "holds 12 rows", "ask for at most 12 anchors")),
    Case("anchor: unknown --strategy", ("anchor", "-d", "{img}", "--strategy", "random"), 2,
         ("unknown anchor strategy 'random'", "uniform, class-balanced, fps, kmeans")),
    Case("anchor: anchors from the test split", ("anchor", "-d", "{img}", "--split", "test"), 2,
         ("must come from the training split", "--split")),
    Case("anchor: fps without --model", ("anchor", "-d", "{img}", "--strategy", "fps", "--num", "3"), 2,
         ("pass --model M",)),
    Case("anchor: kmeans with a model not embedded on the dataset", ("anchor", "-d", "{txt}", "--strategy", "kmeans", "--num", "3", "-m", "arra"), 2,
         ("needs arra's cached embeddings", "run `stitchcli embed --model arra")),
    Case("anchor: --out is a folder", ("anchor", "-d", "{img}", "--num", "3", "--out", "{root}"), 2,
         ("is a folder: give a file name",)),
    Case("anchor: --out under a file", ("anchor", "-d", "{img}", "--num", "3", "--out", "{afile}/anchors.json"), 2,
         ("which is a file, not a folder", "choose another --out")),
    Case("anchor: --name with a path in it", ("anchor", "-d", "{img}", "--num", "3", "--name", "../../etc/x"), 2,
         ("anchor name '../../etc/x' is not valid", "use letters, digits")),
    Case("anchor: read-only cache folder", ("anchor", "-d", "{img}", "--num", "3"), 2,
         ("permission denied", "choose a --cache-dir", "you can write to"), read_only=True),
    Case("embed: cache hit in a read-only cache (works)", ("embed", "-m", "test_vit", *V, "-d", "{img}", "--split", "test", "--json"), 0,
         (), read_only=True, check=_rows({"test": 6}), note="the cached entry is read; nothing is written"),
    Case("embed: the same --from-array again in a read-only cache (works)",
         ("embed", "-m", "arra", "-d", "{img}", "-s", "train", "--from-array", "train={root}/arra-train.npy", "--json"), 0,
         (), read_only=True, check=_rows({"train": 12}), note="the same array is a cache hit; nothing is written"),
    Case("anchor: the same choice again in a read-only cache (works)", ("anchor", "-d", "{txt}", "--num", "4", "--name", "txt-anchors"), 0,
         (), read_only=True, note="the saved manifest is kept as it is; nothing is written"),
    # ---- fit-head ---------------------------------------------------------------------------------------
    Case("fit-head: unknown --projection", ("fit-head", "-m", "arra", "-d", "{img}", "--projection", "cosinus"), 2,
         ("unknown projection 'cosinus'", "did you mean 'cosine'")),
    Case("fit-head: unknown --aggregation", ("fit-head", "-m", "arra", "-d", "{img}", "--aggregation", "max"), 2,
         ("unknown aggregation 'max'", "concat, sum, mlp-sum, self-attention")),
    Case("fit-head: --epochs 0", ("fit-head", "-m", "arra", "-d", "{img}", "--epochs", "0"), 2,
         ("--epochs must be at least 1, not 0",)),
    Case("fit-head: --dropout out of range", ("fit-head", "-m", "arra", "-d", "{img}", "--dropout", "1.5"), 2,
         ("--dropout must be in [0, 1), not 1.5",)),
    Case("fit-head: unknown --anchors", ("fit-head", "-m", "arra", "-d", "{img}", "--anchors", "no-such-anchors"), 2,
         ("unknown anchors 'no-such-anchors'", "saved anchors: ")),
    Case("fit-head: anchors of another dataset", ("fit-head", "-m", "arra", "-d", "{img}", "--anchors", "txt-anchors"), 2,
         ("are rows of", "choose anchors of this dataset")),
    Case("fit-head: one-class dataset", ("fit-head", "-m", "arre", "-d", "{oneclass}", "--epochs", "1"), 2,
         ("of one class", "two or more classes")),
    Case("fit-head: --out under a file", ("fit-head", "-m", "arra", "-d", "{img}", "--out", "{afile}/head"), 2,
         ("which is a file, not a folder", "choose another --out")),
    Case("fit-head: more anchors than training rows", ("fit-head", "-m", "arra", "-d", "{img}", "--num-anchors", "500"), 2,
         ("--num-anchors 500 is more than the 12 rows", "ask for at most 12")),
    Case("fit-head: unknown --transform", ("fit-head", "-m", "arra", "-d", "{img}", "--transform", "whiten"), 2,
         ("unknown transform 'whiten'", "none, center, standardize, l2")),
    Case("fit-head: unknown --device", ("fit-head", "-m", "arra", "-d", "{img}", "--device", "gpu"), 2,
         ("unknown device 'gpu'",)),
    # ---- stitch -----------------------------------------------------------------------------------------
    Case("stitch: --head file that does not exist", ("stitch", "arra", "arrb", "-d", "{img}", "--head", "{root}/no-head.safetensors"), 2,
         ("does not exist", "stitchcli fit-head --out FILE")),
    Case("stitch: --head file that is not a head", ("stitch", "arra", "arrb", "-d", "{img}", "--head", "{garbage_head}"), 2,
         ("cannot read head", "garbage.safetensors")),
    Case("stitch: head of another model as DECODER's", ("stitch", "arrb", "arra", "-d", "{img}", "--head", "{arrb_head}"), 2,
         ("was trained on the latents of 'arrb'", "pass arrb as the decoder")),
    Case("stitch: head of another dataset (other anchors and classes)", ("stitch", "arra", "arrb", "-d", "{img}", "--head", "{arrd_head}"), 2,
         ("was trained on dataset", "train one on this dataset")),
    Case("stitch: empty --seeds", ("stitch", "arra", "arrb", "-d", "{img}", "--seeds", ""), 2,
         ("--seeds is empty",)),
    Case("stitch: unknown --baselines", ("stitch", "arra", "arrb", "-d", "{img}", "--baselines", "procrustes"), 2,
         ("unknown baseline 'procrustes'", "absolute, translation, affine")),
    Case("stitch: negative --ridge", ("stitch", "arra", "arrb", "-d", "{img}", "--ridge", "-1"), 2,
         ("--ridge must be a positive number",)),
    Case("stitch: evaluation split is the training split", ("stitch", "arra", "arrb", "-d", "{img}", "--split", "train"), 2,
         ("--split and --train-split are both 'train'",)),
    Case("stitch: ENCODER and DECODER the same model", ("stitch", "arra", "arra", "-d", "{img}"), 2,
         ("stitching needs two models",)),
    Case("stitch: unknown evaluation split", ("stitch", "arra", "arrb", "-d", "{img}", "--split", "val"), 2,
         ("has no split 'val'", "available splits: test, train")),
    Case("stitch: a test class the training split lacks (warns)", ("stitch", "arrc", "arrd", "-d", "{unseen}", *FAST_HEAD), 0,
         ("warning: class(es) 'frog' of split 'test' never occur in 'train'",)),
    # ---- eval -------------------------------------------------------------------------------------------
    Case("eval: one model", ("eval", "-d", "{img}", "--models", "arra"), 2,
         ("give at least two with --models A,B",)),
    Case("eval: --k 0", ("eval", "-d", "{img}", "--models", "arra,arrb", "--k", "0"), 2,
         ("--k must be at least 1, not 0",)),
    Case("eval: --k more than the evaluation rows", ("eval", "-d", "{img}", "--models", "arra,arrb", "--k", "100", *FAST_HEAD), 2,
         ("--k 100 neighbours need more than the 6 evaluation rows", "pass a smaller --k")),
    Case("eval: unknown --metrics", ("eval", "-d", "{img}", "--models", "arra,arrb", "--metrics", "spearman"), 2,
         ("unknown metric 'spearman'", "cka, jaccard, mrr, cosine")),
    Case("eval: --csv in a folder that is not writable", ("eval", "-d", "{img}", "--models", "arra,arrb", "--csv", "cache/rows.csv"), 2,
         ("--csv cache/rows.csv: cache is not writable here", "choose another --csv"), read_only=True),
    Case("eval: --recipe that does not exist", ("eval", "--recipe", "{root}/no-such.toml"), 2,
         ("not found", "check the path")),
    Case("eval: --recipe that is not TOML", ("eval", "--recipe", "{bad_toml}"), 2,
         ("not valid TOML",)),
    Case("eval: --csv is a folder", ("eval", "-d", "{img}", "--models", "arra,arrb", "--csv", "{root}"), 2,
         ("--csv", "is a folder: give a file name")),
    Case("eval: --plot under a file", ("eval", "-d", "{img}", "--models", "arra,arrb", "--plot", "{afile}/plots"), 2,
         ("which is a file, not a folder", "choose another --plot")),
    Case("eval: --plot folder that cannot be created", ("eval", "-d", "{img}", "--models", "arra,arrb", "--plot", "/proc/no-such-dir/plots"), 2,
         ("--plot /proc/no-such-dir/plots: cannot create this folder", "choose another --plot")),
    Case("similarity: --plot folder that cannot be created",
         ("similarity", "-d", "{img}", "--models", "arra,arrb", "--measures", "linear-cka", "--plot", "/proc/no-such-dir/plots"), 2,
         ("--plot /proc/no-such-dir/plots: cannot create this folder", "choose another --plot")),
    Case("similarity: an anchor option without --projection (it would be ignored)",
         ("similarity", "-d", "{img}", "--models", "arra,arrb", "--measures", "linear-cka", "--num-anchors", "5", "--transform", "none"), 2,
         ("--num-anchors, --transform shape(s) the relative spaces", "add --projection")),
    Case("similarity: unknown --transform (named as such, not as a missing --projection)",
         ("similarity", "-d", "{img}", "--models", "arra,arrb", "--transform", "whiten"), 2,
         ("--transform: unknown transform 'whiten'", "use one of none, center, standardize, l2")),
    Case("similarity: a measure listed twice (under its alias)",
         ("similarity", "-d", "{img}", "--models", "arra,arrb", "--measures", "linear-cka,cka"), 2,
         ("--measures lists linear-cka twice (as linear-cka and cka)", "name each measure once")),
    Case("similarity: no models given", ("similarity", "-d", "{img}", "--measures", "linear-cka"), 2,
         ("give the models to compare: --models A,B",)),
    Case("similarity: --k not below --limit (refused before any embedding)",
         ("similarity", "-d", "{img}", "--models", "arra,arrb", "--limit", "5"), 2,
         ("--k 10 neighbours need more than the 5 rows of --limit 5", "pass a smaller --k")),
    Case("similarity: --limit 0 (named as a bad limit, not as too few rows for --k)",
         ("similarity", "-d", "{img}", "--models", "arra,arrb", "--limit", "0"), 2,
         ("--limit must be a positive number of rows, not 0",)),
    Case("similarity: -k meant as the neighbour count (it is --num-anchors)",
         ("similarity", "-d", "{img}", "--models", "arra,arrb", "--measures", "mutual-knn", "-k", "5"), 2,
         ("--num-anchors shape(s) the relative spaces", "-k is --num-anchors; the neighbours of the k-NN measures are --k")),
    Case("eval: a model listed twice", ("eval", "-d", "{img}", "--models", "arra,arra"), 2,
         ("model arra is listed twice", "name each model once")),
    Case("eval: --recipe with --dataset", ("eval", "--recipe", "{bad_toml}", "-d", "{img}"), 2,
         ("drop --dataset and --models",)),
]


# ---- the prepared world: datasets, a cache with imported embeddings, head files -----------------------------


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)


def _import(store: object, name: str, data: Path, rows: dict[str, int], dim: int, seed: int, root: Path) -> None:
    """Import random embeddings of ``data`` under the model name ``name`` (no model work)."""
    from stitchcli.embedding import embed

    rng = np.random.default_rng(seed)
    files = []
    for split, count in rows.items():
        path = root / f"{name}-{split}.npy"
        np.save(path, rng.normal(size=(count, dim)).astype(np.float32))
        files.append(f"{split}={path}")
    embed([name], str(data), list(rows), store=store, from_array=files)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> dict[str, str]:
    """Give the paths the cases name: datasets good and bad, a prepared cache, head files."""
    from typer.testing import CliRunner

    from stitchcli.cli import app
    from stitchcli.embedding import EmbedOptions, embed
    from stitchcli.store import EmbeddingStore

    root = tmp_path_factory.mktemp("bad-input")
    img = make_image_folder(root / "images", per_class={"train": 4, "test": 2}, size=16)
    txt = make_text_table(root / "texts")
    good = [("the team won the match", "sport"), ("the new phone has a faster chip", "tech")] * 2
    tables = {
        "empty": ([], []),
        "emptytest": (good, []),
        "nanlabel": (good + [("a late goal decided the final", "")], good),
        "emptytext": (good + [("", "sport")], good),
        "longtext": (good + [("the striker scored twice " * 400, "sport")], good),
    }
    for name, (train, test) in tables.items():
        _write_csv(root / name / "train.csv", train)
        _write_csv(root / name / "test.csv", test)
    broken = make_image_folder(root / "broken", per_class={"train": 2, "test": 1}, size=16)
    (broken / "test" / "cat" / "0000.png").write_text("this is not a png")
    (broken / "train" / "cat" / "0000.png").write_bytes(b"")
    oneclass = make_image_folder(root / "oneclass", per_class={"train": 4, "test": 2}, classes=("cat",), size=16)
    unseen = make_image_folder(root / "unseen", per_class={"train": 3}, classes=("cat", "dog"), size=16)
    make_image_folder(unseen, per_class={"test": 1}, classes=("cat", "dog", "frog"), size=16)
    (root / "afile").write_text("a file, not a folder\n")
    (root / "garbage.safetensors").write_bytes(b"\x00garbage" * 8)
    (root / "bad.toml").write_text("this is = not [valid toml\n")

    store = EmbeddingStore(root / "cache")
    embed([ModelRef(name, {"weights": "random"}) for name in ["test_vit"]], str(img), ["test"], store=store, options=EmbedOptions(num_workers=0))
    _import(store, "arra", img, {"train": 12, "test": 6}, 8, 0, root)
    _import(store, "arrb", img, {"train": 12, "test": 6}, 16, 1, root)
    _import(store, "arrc", unseen, {"train": 6, "test": 3}, 8, 2, root)
    _import(store, "arrd", unseen, {"train": 6, "test": 3}, 12, 3, root)
    _import(store, "arre", oneclass, {"train": 4, "test": 2}, 8, 4, root)
    runner = CliRunner()
    for argv in (
        ["anchor", "-d", str(txt), "--num", "4", "--name", "txt-anchors"],
        ["fit-head", "-m", "arrb", "-d", str(img), "--epochs", "1", "--out", str(root / "arrb-head")],
        ["fit-head", "-m", "arrd", "-d", str(unseen), "--epochs", "1", "--out", str(root / "arrd-head")],
    ):
        result = runner.invoke(app, [*argv, "--cache-dir", str(store.root), "--quiet"])
        assert result.exit_code == 0, (argv, result.output)
    paths = {
        "root": root, "img": img, "txt": txt, "bert": tiny_bert, "broken": broken, "oneclass": oneclass, "unseen": unseen,
        "afile": root / "afile", "garbage_head": root / "garbage.safetensors", "bad_toml": root / "bad.toml",
        "arrb_head": root / "arrb-head.safetensors", "arrd_head": root / "arrd-head.safetensors", "cache": store.root,
        **{name: root / name for name in tables},
    }
    return {key: str(value) for key, value in paths.items()}


# ---- running the cases -----------------------------------------------------------------------------------


def _snapshot(cache: Path) -> dict[str, str]:
    return {str(p.relative_to(cache)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(cache.rglob("*")) if p.is_file()}


def _read_only_prefix(probe_dir: Path) -> list[str] | None:
    """Give the command prefix under which a read-only folder refuses writes, or None when none does.

    chmod does not stop root: as root, run the command without the capabilities that bypass file
    permissions (util-linux setpriv), and make sure that works here before relying on it.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    prefix = [setpriv, "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]
    probe_dir.mkdir(parents=True, exist_ok=True)
    probe_dir.chmod(0o555)
    try:
        done = subprocess.run([*prefix, sys.executable, "-c", f"open({str(probe_dir / 'x')!r}, 'w')"], capture_output=True)
    except OSError:
        return None
    finally:
        probe_dir.chmod(0o755)
    return prefix if done.returncode != 0 and b"PermissionError" in done.stderr else None


def _set_writable(tree: Path, writable: bool) -> None:
    for path in [tree, *tree.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755 if writable else 0o555)
        else:
            path.chmod(0o644 if writable else 0o444)


@dataclass
class Outcome:
    case: Case
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    cache: Path
    before: dict[str, str]
    memo: dict[str, object]
    skipped: str | None = None


def _gpu_visible() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _run_case(case: Case, world: dict[str, str], workdir: Path, read_only_prefix: list[str] | None, gpu: bool) -> Outcome:
    cache = workdir / "cache"
    shutil.copytree(world["cache"], cache)
    before = _snapshot(cache)
    memo = json.loads((cache / MEMO).read_text()) if (cache / MEMO).exists() else {}
    if case.needs_no_gpu and gpu:
        return Outcome(case, 0, "", "", 0.0, cache, before, memo, skipped="a GPU is visible here")
    prefix: list[str] = []
    if case.read_only:
        if read_only_prefix is None:
            return Outcome(case, 0, "", "", 0.0, cache, before, memo, skipped="running as root without setpriv: a read-only folder would not stop writes")
        prefix = read_only_prefix
        _set_writable(cache, False)
    argv = [arg.format(**world) for arg in case.argv]
    env = {**os.environ, "STITCHCLI_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    started = time.perf_counter()
    try:
        done = subprocess.run([*prefix, sys.executable, "-m", "stitchcli", *argv], capture_output=True, text=True, env=env, timeout=240, cwd=workdir)
    finally:
        if case.read_only:
            _set_writable(cache, True)
    return Outcome(case, done.returncode, done.stdout, done.stderr, time.perf_counter() - started, cache, before, memo)


@pytest.fixture(scope="module")
def runner(world: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    """Give a function running one case in its own process; the outcomes it gathers make the table at the end."""
    base = tmp_path_factory.mktemp("bad-input-runs")
    prefix = _read_only_prefix(base / "probe")
    gpu = _gpu_visible()
    results: dict[str, Outcome] = {}

    def run(case: Case) -> Outcome:
        results[case.id] = _run_case(case, world, base / case.id, prefix, gpu)
        return results[case.id]

    yield run
    table = os.environ.get("STITCHCLI_BAD_INPUT_TABLE")
    if table:
        _write_table(Path(table), results, world)


def _shown_command(case: Case, world: dict[str, str]) -> str:
    """Give the command as a user would type it, datasets named by their folder names."""
    names = {key: Path(value).name for key, value in world.items()}
    names.update(root=".", cache="CACHE", afile="afile", bert="tiny-bert")
    argv = ["stitchcli", *(arg.format(**names) for arg in case.argv)]
    return " ".join(shlex.quote(arg) for arg in argv)


def _shown_line(line: str, outcome: Outcome, world: dict[str, str]) -> str:
    """Give a stderr line with this machine's temporary paths shortened as in the commands."""
    line = line.replace(str(outcome.cache), "CACHE").replace(world["bert"], "tiny-bert")
    return line.replace(world["root"] + "/", "").replace(world["root"], ".")


def _code(text: str) -> str:
    """Give ``text`` as a markdown code span (double backticks: the lines quote commands in backticks)."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _write_table(path: Path, results: dict[str, Outcome], world: dict[str, str]) -> None:
    rows = ["| case | command that reproduces it | what the user sees (exit code and the stderr line) |", "| --- | --- | --- |"]
    for outcome in results.values():
        case = outcome.case
        if outcome.skipped:
            seen = f"(not run here: {outcome.skipped})"
        else:
            lines = [line for line in outcome.stderr.splitlines() if line.strip()]
            shown = [line for line in lines if line.startswith((ERROR, "warning:"))]
            seen = f"exit {outcome.returncode}" + (f": {_code(_shown_line(shown[-1], outcome, world))}" if shown else "")
            if case.note:
                seen += f"; {case.note}"
        command = _code(_shown_command(case, world)) + (" with the cache made read-only" if case.read_only else "")
        rows.append(f"| {case.id} | {command.replace('|', chr(92) + '|')} | {seen.replace('|', chr(92) + '|')} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")


# ---- the assertions --------------------------------------------------------------------------------------


def _assert_cache_still_valid(outcome: Outcome) -> None:
    """Every file the cache held is there with the same bytes (the name memo may only grow); all it holds reads."""
    from safetensors.numpy import load_file

    after = _snapshot(outcome.cache)
    for name, digest in outcome.before.items():
        assert name in after, f"{name} vanished from the cache"
        assert name == MEMO or after[name] == digest, f"{name} changed"
    if outcome.memo:
        grown = json.loads((outcome.cache / MEMO).read_text())
        assert {k: grown.get(k) for k in outcome.memo} == outcome.memo, "the name memo lost entries"
    for path in outcome.cache.rglob("*"):
        if not path.is_file() or any(part.endswith(".partial") for part in path.parts):
            continue
        if path.suffix == ".safetensors":
            assert load_file(str(path)), path
        elif path.suffix == ".json":
            json.loads(path.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, runner: Callable[[Case], Outcome]) -> None:
    outcome = runner(case)
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    stderr = outcome.stderr
    assert "Traceback" not in stderr, stderr
    assert outcome.returncode == case.code, (outcome.returncode, stderr)
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(ERROR)]
    if case.code == 0:
        assert errors == [], stderr
        for needle in case.needles:
            assert needle in stderr, stderr
        if case.check is not None:
            case.check(outcome.stdout)
    else:
        assert len(errors) == 1 and lines[-1] == errors[0], stderr
        for needle in case.needles:
            assert needle in errors[0], errors[0]
        assert outcome.stdout == "", outcome.stdout
    _assert_cache_still_valid(outcome)
