"""Anchors: the training rows every model encodes as shared reference points, and the manifest naming them.

A manifest records which rows of which split of which data were chosen, how and with what seed, so
that every model's anchor embeddings are the same samples (METHOD.md §4). Anchors come from a
training split only. ``ids`` are the split's original row ids (the ``ids`` tensor of every cache
entry), always in ascending order; ``labels[i]`` belongs to ``ids[i]``.

Strategies live in one registry (:data:`STRATEGIES`):

- ``uniform``: a seeded draw without replacement (``numpy.random.default_rng(seed).choice``).
- ``class-balanced``: equal counts per class, differing by at most one; the leftover goes to
  classes in a seeded order; a class with too few rows gives all of them and the rest is shared out.
- ``fps``: farthest point sampling on a model's cached embeddings: Euclidean distance between
  L2-normalised rows (a monotone function of cosine distance, so scale-free), seeded first row.
- ``kmeans``: seeded k-means (k = num, Lloyd iterations from ``num`` random rows) on the same
  normalised rows, then for each centroid in turn the nearest row not taken by an earlier one.

The same arguments give the same ids on any machine: numpy's ``default_rng`` draws the rows, and
fps/kmeans work on the normalised rows rounded to a grid of 2^-11 (cosines move by about 2e-4, at
most about 1e-3), where every dot product is a sum of integers below 2^24: exact in float32
whatever order the BLAS adds in, so the result does not depend on the CPU kernel or the thread
count. fps/kmeans do depend on the cached embeddings, which differ across hardware: the manifest
records the cache key digest of the entry that chose them, and the manifest (not a rerun) is the
thing to share.

Manifests are stored as ``<cache>/anchors/<NAME>.json`` (written atomically) and found by name.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import shlex
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from stitchcli.errors import NotCached, UsageError, out_of_space_as_work_error
from stitchcli.store import canonical_json, write_text_atomically

if TYPE_CHECKING:
    from stitchcli.data.base import DatasetSpec
    from stitchcli.progress import Reporter
    from stitchcli.store import CachedEmbeddings, EmbeddingStore

SCHEMA_VERSION = 1
DEFAULT_NUM = 1280
KMEANS_ITERATIONS = 10
ANCHORS_FOLDER = "anchors"
# The key of a saved manifest's checksum (not a field of AnchorManifest: readers of older stitchcli ignore it).
CHECKSUM_KEY = "checksum"

# Rows are scaled by 2^11 after L2 normalisation and rounded: every coordinate is an integer, and a
# dot product of two such rows and each of its partial sums is at most (2^11 + sqrt(D)/2)^2 < 2^24
# in magnitude (Cauchy-Schwarz), so float32 matrix products hold them exactly, in any order.
_GRID = float(2**11)
# Upper bound on the temporary blocks of the distance computations.
_BLOCK_BYTES = 64 * 2**20
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Split names that hold evaluation data: substrings, and short words that must stand alone.
_EVALUATION_SPLIT = re.compile(r"test|valid|eval|(?:^|[^a-z])(?:val|dev)(?:[^a-z]|$)")


# ----- the manifest ------------------------------------------------------------------------------


@dataclass
class AnchorManifest:
    """Which rows were chosen as anchors, from which data, how; the JSON document saved in the cache.

    Attributes:
        name: the name later commands find it by.
        dataset: a dataset name that resolves again from any folder (alias or hub id as typed;
            the absolute path of local data).
        dataset_id: the dataset's identity in cache keys.
        dataset_fingerprint: the split's fingerprint when the anchors were chosen.
        split: the training split they come from.
        strategy: a name in :data:`STRATEGIES`.
        seed: seed of the choice.
        num: number of anchors.
        ids: the split's row ids, ascending.
        labels: class index of each id.
        class_names: the split's class names (index = label).
        pool_rows: rows the anchors were drawn from (the split, or its --limit subset).
        limit: the --limit subset drawn from, if any.
        limit_seed: the seed of that subset (embed's --seed), if any.
        model: fps/kmeans: the model whose cached embeddings chose the rows.
        model_options: fps/kmeans: the options given with it (weights, precision…).
        model_entry: fps/kmeans: the key digest of the cache entry read.
        dataset_options: the input/label columns and revision given with the dataset.
        params: strategy details (distance, iterations, first row…).
        notes: what the user should know (e.g. classes too small for a balanced share).
        created: creation time.
        stitchcli_version: the version that chose them.
        numpy_version: the numpy whose generator drew them.
        schema_version: format version of this document.
    """

    name: str
    dataset: str
    dataset_id: str
    dataset_fingerprint: str
    split: str
    strategy: str
    seed: int
    num: int
    ids: list[int]
    labels: list[int]
    class_names: list[str]
    pool_rows: int
    limit: int | None = None
    limit_seed: int | None = None
    model: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    model_entry: str | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    created: str = ""
    stitchcli_version: str = ""
    numpy_version: str = ""
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Give the JSON-ready document."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "anchor manifest") -> AnchorManifest:
        """Give the manifest a document describes; UsageError when it is not a valid manifest.

        Unknown keys are ignored, so a newer minor addition does not break an older reader.
        """
        if not isinstance(data, Mapping):
            raise UsageError(f"{where} is not an anchor manifest (expected a JSON object)")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise UsageError(
                f"{where} has schema version {version!r}, this stitchcli reads version {SCHEMA_VERSION}: "
                "choose the anchors again with `stitchcli anchor`"
            )
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        missing = sorted(k for k in required if k not in data)
        if missing:
            raise UsageError(f"{where} is not an anchor manifest: it lacks {', '.join(missing)}")
        manifest = cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
        try:
            manifest.ids = [int(i) for i in manifest.ids]
            manifest.labels = [int(v) for v in manifest.labels]
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{where} is damaged: ids and labels must be lists of integers ({exc})") from None
        if len(manifest.ids) != manifest.num or len(manifest.labels) != manifest.num:
            raise UsageError(f"{where} is damaged: num is {manifest.num} but it lists {len(manifest.ids)} ids and {len(manifest.labels)} labels")
        return manifest

    @property
    def id_array(self) -> np.ndarray:
        """Give the row ids as an int64 array."""
        return np.asarray(self.ids, dtype=np.int64)

    @property
    def label_array(self) -> np.ndarray:
        """Give the labels as an int64 array."""
        return np.asarray(self.labels, dtype=np.int64)

    def class_counts(self) -> dict[str, int]:
        """Give the number of anchors of every class of the split (0 for classes not covered)."""
        counts = np.bincount(self.label_array, minlength=len(self.class_names))
        return {name: int(counts[i]) for i, name in enumerate(self.class_names)}

    def selection(self) -> dict[str, Any]:
        """Give the fields that define the choice (everything but the time and versions of the run)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("created", "stitchcli_version", "numpy_version")}


# ----- strategies --------------------------------------------------------------------------------


@dataclass
class AnchorPool:
    """The rows anchors are drawn from: ids, labels and, for fps/kmeans, the embeddings (row-aligned)."""

    ids: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    embeddings: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.ids.shape[0])


@dataclass
class Selection:
    """What a strategy chose: positions into the pool, its parameters, and notes for the user."""

    positions: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AnchorStrategy:
    """One way of choosing anchors: ``select(pool, num, rng)`` and whether it reads embeddings."""

    select: Callable[[AnchorPool, int, np.random.Generator], Selection]
    needs_embeddings: bool
    summary: str


def _uniform(pool: AnchorPool, num: int, rng: np.random.Generator) -> Selection:
    """Give ``num`` positions drawn uniformly without replacement."""
    return Selection(rng.choice(len(pool), size=num, replace=False))


def balanced_quotas(sizes: np.ndarray, num: int, order: np.ndarray) -> np.ndarray:
    """Give per-class counts summing to ``num``: equal where possible, never above a class's size.

    Classes that still have rows always receive the same share (water filling); a class with fewer
    rows than its share gives all it has. The last ``remaining < active classes`` anchors go one
    each to the active classes in ``order``. So counts differ by at most one, except classes that
    gave all their rows.
    """
    quota = np.zeros_like(sizes)
    remaining = int(num)
    while remaining > 0:
        active = np.flatnonzero(quota < sizes)
        share = remaining // len(active)
        if share == 0:
            ranked = [c for c in order if quota[c] < sizes[c]]
            quota[ranked[:remaining]] += 1
            break
        added = np.minimum(share, sizes[active] - quota[active])
        quota[active] += added
        remaining -= int(added.sum())
    return quota


def _class_balanced(pool: AnchorPool, num: int, rng: np.random.Generator) -> Selection:
    """Give ``num`` positions with (as near as the class sizes allow) equal counts per class."""
    classes, sizes = np.unique(pool.labels, return_counts=True)
    order = rng.permutation(len(classes))
    quota = balanced_quotas(sizes, num, order)
    chosen = [rng.choice(np.flatnonzero(pool.labels == cls), size=int(q), replace=False) for cls, q in zip(classes, quota)]
    notes = []
    if quota.max() - quota.min() > 1:
        fair = num // len(classes)
        small = [f"{_class_name(pool, c)} ({s} row{'s' if s != 1 else ''})" for c, s, q in zip(classes, sizes, quota) if q == s and s < fair]
        notes.append(
            f"class-balanced: {len(small)} class(es) have fewer rows than the even share of {fair}: "
            f"{', '.join(small)}; took all their rows and gave the rest to the other classes "
            f"(counts range from {int(quota.min())} to {int(quota.max())})"
        )
    return Selection(np.concatenate(chosen), {"per_class": {_class_name(pool, c): int(q) for c, q in zip(classes, quota)}}, notes)


def _class_name(pool: AnchorPool, label: int) -> str:
    return pool.class_names[label] if 0 <= label < len(pool.class_names) else str(label)


def _grid_rows(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Give the rows L2-normalised and rounded onto the integer grid (float32), and their squared norms (float64).

    Zero rows stay zero. Dot products of grid rows are exact in float32, squared norms in float64.
    """
    x = np.asarray(embeddings)
    n, d = x.shape
    grid = np.empty((n, d), dtype=np.float32)
    squared = np.empty(n, dtype=np.float64)
    step = max(1, _BLOCK_BYTES // (8 * max(d, 1)))
    for start in range(0, n, step):
        block = x[start : start + step].astype(np.float64)
        norms = np.sqrt((block * block).sum(axis=1))
        norms[norms == 0] = 1.0
        rounded = np.rint(block / norms[:, None] * _GRID)
        grid[start : start + step] = rounded
        squared[start : start + step] = (rounded * rounded).sum(axis=1)
    return grid, squared


_DISTANCE = "squared Euclidean between L2-normalised rows (exact on a 2^-11 grid)"


def _fps(pool: AnchorPool, num: int, rng: np.random.Generator) -> Selection:
    """Give ``num`` positions by farthest point sampling from a seeded first row.

    Each next row is the one farthest from all rows chosen so far (ties: the lowest position);
    rows identical to chosen ones come last, so the positions are always distinct.
    """
    assert pool.embeddings is not None
    grid, squared = _grid_rows(pool.embeddings)
    first = int(rng.integers(len(pool)))
    chosen = [first]
    nearest = np.full(len(pool), np.inf)
    nearest[first] = -np.inf
    current = first
    for _ in range(num - 1):
        distance = squared + squared[current] - 2.0 * (grid @ grid[current]).astype(np.float64)
        np.minimum(nearest, distance, out=nearest)
        current = int(np.argmax(nearest))
        nearest[current] = -np.inf
        chosen.append(current)
    return Selection(np.asarray(chosen, dtype=np.int64), {"distance": _DISTANCE, "first_id": int(pool.ids[first])})


def _nearest_centroids(grid: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Give each row's nearest centroid (ties: the lowest index), in blocks of bounded size."""
    centroid_sq = np.einsum("ij,ij->i", centroids, centroids, dtype=np.float64)
    step = max(1, _BLOCK_BYTES // (12 * len(centroids)))
    out = np.empty(len(grid), dtype=np.int64)
    for start in range(0, len(grid), step):
        # the row's own squared norm is the same for every centroid: left out of the argmin
        scores = centroid_sq[None, :] - 2.0 * (grid[start : start + step] @ centroids.T)
        out[start : start + step] = np.argmin(scores, axis=1)
    return out


def _distinct_nearest_rows(grid: np.ndarray, squared: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Give for each centroid in turn the nearest row no earlier centroid took."""
    n = len(grid)
    taken = np.zeros(n, dtype=bool)
    chosen = np.empty(len(centroids), dtype=np.int64)
    step = max(1, _BLOCK_BYTES // (12 * n))
    for start in range(0, len(centroids), step):
        scores = squared[None, :] - 2.0 * (centroids[start : start + step] @ grid.T)
        for j, row in enumerate(scores):
            row[taken] = np.inf
            pick = int(np.argmin(row))
            taken[pick] = True
            chosen[start + j] = pick
    return chosen


def _kmeans(pool: AnchorPool, num: int, rng: np.random.Generator, iterations: int = KMEANS_ITERATIONS) -> Selection:
    """Give the rows nearest the ``num`` centroids of a seeded k-means, one distinct row per centroid.

    Centroids start at ``num`` distinct random rows; each Lloyd step assigns rows to the nearest
    centroid and moves each centroid to its rows' mean (rounded to the grid, so the next step is
    exact too); a centroid left without rows stays where it is. Stops when no assignment changes.
    """
    assert pool.embeddings is not None
    grid, squared = _grid_rows(pool.embeddings)
    centroids = grid[rng.choice(len(pool), size=num, replace=False)].copy()
    assignment: np.ndarray | None = None
    steps, converged = 0, False
    for steps in range(1, iterations + 1):
        new = _nearest_centroids(grid, centroids)
        if assignment is not None and np.array_equal(new, assignment):
            converged = True
            break
        assignment = new
        sums = np.zeros(centroids.shape, dtype=np.float64)  # sums of integers: exact below 2^53
        np.add.at(sums, assignment, grid)
        counts = np.bincount(assignment, minlength=num)
        filled = counts > 0
        centroids[filled] = np.rint(sums[filled] / counts[filled, None])
    positions = _distinct_nearest_rows(grid, squared, centroids)
    params = {"distance": _DISTANCE, "init": "random rows", "max_iterations": iterations, "iterations": steps, "converged": converged}
    return Selection(positions, params)


STRATEGIES: dict[str, AnchorStrategy] = {
    "uniform": AnchorStrategy(_uniform, False, "seeded uniform draw without replacement"),
    "class-balanced": AnchorStrategy(_class_balanced, False, "equal counts per class (differ by at most one)"),
    "fps": AnchorStrategy(_fps, True, "farthest point sampling on a model's cached embeddings"),
    "kmeans": AnchorStrategy(_kmeans, True, "real rows nearest the centroids of a seeded k-means on a model's cached embeddings"),
}


def list_anchor_strategies() -> list[str]:
    """Give the names of the anchor strategies."""
    return list(STRATEGIES)


def _strategy(name: str) -> AnchorStrategy:
    if name not in STRATEGIES:
        close = difflib.get_close_matches(name, STRATEGIES, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UsageError(f"unknown anchor strategy {name!r}; {hint}use one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


# ----- choosing ----------------------------------------------------------------------------------


def is_evaluation_split(split: str) -> bool:
    """Tell whether a split name looks like evaluation data (test, validation, val, eval, dev)."""
    return _EVALUATION_SPLIT.search(split.lower()) is not None


def _model_options(weights: str | None, pooling: str | None, max_length: int | None, precision: str | None, revision: str | None) -> dict[str, Any]:
    given = {"weights": weights, "pooling": pooling, "max_length": max_length, "precision": precision, "revision": revision}
    return {k: v for k, v in given.items() if v is not None}


def _embed_hint(model: str, dataset: str, split: str, *, limit: int | None, embed_seed: int, options: Mapping[str, Any]) -> str:
    """Give the `stitchcli embed` command that makes the cache entry these arguments look up."""
    words = ["stitchcli", "embed", "--model", model, "--dataset", dataset, "--split", split]
    for key, value in options.items():
        words += [f"--{key.replace('_', '-')}", str(value)]
    if limit is not None:
        words += ["--limit", str(limit)]
    if embed_seed:
        words += ["--seed", str(embed_seed)]
    return shlex.join(words)


def _cached_entry(
    store: EmbeddingStore,
    model: str,
    dataset: str,
    split: str,
    *,
    limit: int | None,
    embed_seed: int,
    options: Mapping[str, Any],
    purpose: str,
) -> CachedEmbeddings:
    """Give a model's cached entry of a split with arrays loaded; UsageError naming the embed command if absent.

    ``options`` are load_embeddings' model and dataset options, named as embed's flags.
    """
    from stitchcli.embedding import load_embeddings
    from stitchcli.models import MODEL_OPTIONS, ModelRef

    ref = ModelRef(model, {k: v for k, v in options.items() if k in MODEL_OPTIONS})
    dataset_options = {k: v for k, v in options.items() if k not in MODEL_OPTIONS}
    try:
        return load_embeddings(store, ref, dataset, split, limit=limit, seed=embed_seed, **dataset_options)
    except NotCached:
        subset = f" (the --limit {limit} subset)" if limit is not None else ""
        command = _embed_hint(model, dataset, split, limit=limit, embed_seed=embed_seed, options=options)
        raise NotCached(f"{purpose} needs {model}'s cached embeddings of split {split!r}{subset} of {dataset}: run `{command}` first") from None


def _readable(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-") or "x"


def default_anchor_name(
    data: DatasetSpec, split: str, strategy: str, num: int, seed: int, *, model: str | None = None, limit: int | None = None
) -> str:
    """Give the readable, deterministic name anchors are saved under when no name is given.

    ``<dataset>-<split>-<strategy>-<num>-s<seed>``, with ``-limit<N>`` for a subset and the model
    for fps/kmeans; local data is named by its folder or file plus a short hash of its path.
    """
    if data.kind == "hub":
        base = _readable(data.name).lower()
    else:
        base = f"{_readable(Path(data.source).stem)}-{hashlib.sha256(data.dataset_id.encode()).hexdigest()[:6]}"
    parts = [base, _readable(split), strategy, str(num), f"s{seed}"]
    if limit is not None:
        parts.append(f"limit{limit}")
    if model is not None:
        parts.append(_readable(model))
    return "-".join(parts)


def check_anchor_name(name: str) -> str:
    """Give the name back if it can name a manifest file; UsageError otherwise."""
    if not _NAME_PATTERN.fullmatch(name):
        raise UsageError(f"anchor name {name!r} is not valid: use letters, digits, '.', '_' and '-' (starting with a letter or digit)")
    return name


def choose_anchors(
    store: EmbeddingStore,
    dataset: str,
    *,
    split: str = "train",
    num: int = DEFAULT_NUM,
    strategy: str = "uniform",
    seed: int = 0,
    model: str | None = None,
    limit: int | None = None,
    embed_seed: int = 0,
    weights: str | None = None,
    pooling: str | None = None,
    max_length: int | None = None,
    precision: str | None = None,
    revision: str | None = None,
    dataset_revision: str | None = None,
    input_column: str | None = None,
    label_column: str | None = None,
    name: str | None = None,
    reporter: Reporter | None = None,
) -> AnchorManifest:
    """Give the manifest of ``num`` anchors chosen from a training split (not saved: see save_anchor_manifest).

    Args:
        store: the cache (fps/kmeans read the model's embeddings from it).
        dataset: as for ``embed`` (alias, hub id, local path).
        split: a training split; names like test/validation/eval/dev are refused.
        num: number of anchors; at most the rows of the split (or of the ``limit`` subset).
        strategy: a name from :func:`list_anchor_strategies`.
        seed: seed of the choice.
        model: fps/kmeans only: the model whose cached embeddings of the split choose the rows.
        limit: draw from the seeded class-stratified subset ``embed --limit`` encodes.
        embed_seed: the ``--seed`` given to embed: it picks the ``limit`` subset and seeds
            ``--weights random``, so it locates the cache entry.
        weights, pooling, max_length, precision, revision: the model options given to embed.
        dataset_revision, input_column, label_column: the dataset options given to embed.
        name: the name to save under (default :func:`default_anchor_name`).
        reporter: where notes and progress go.

    Raises:
        UsageError: a bad option, an evaluation split, ``num`` above the rows available, or
            fps/kmeans without that model's cached embeddings.
    """
    from stitchcli import __version__
    from stitchcli.data import load_split, resolve_dataset
    from stitchcli.progress import Reporter

    reporter = reporter or Reporter()
    chosen_strategy = _strategy(strategy)
    if num < 1:
        raise UsageError(f"--num must be a positive number of anchors, not {num}")
    if seed < 0 or embed_seed < 0:
        raise UsageError(f"seeds must be 0 or more, not {min(seed, embed_seed)}")
    if limit is not None and limit <= 0:
        raise UsageError(f"--limit must be a positive number of rows, not {limit}")
    if is_evaluation_split(split):
        raise UsageError(
            f"anchors must come from the training split, and {split!r} looks like evaluation data: "
            "pass a training split with --split (default: train)"
        )
    model_options = _model_options(weights, pooling, max_length, precision, revision)
    if chosen_strategy.needs_embeddings and model is None:
        raise UsageError(f"--strategy {strategy} chooses anchors from a model's embeddings: pass --model M (embedded on this split first)")
    if not chosen_strategy.needs_embeddings and (model is not None or model_options):
        raise UsageError(f"--strategy {strategy} reads no embeddings: drop --model and its options (they apply to fps and kmeans)")
    if name is not None:
        check_anchor_name(name)

    from stitchcli.assets import prepare_packaged

    dataset = prepare_packaged(store, dataset, [model] if model else [], reporter)
    data = resolve_dataset(dataset, input_column=input_column, label_column=label_column, revision=dataset_revision)
    given = {"input_column": input_column, "label_column": label_column, "dataset_revision": dataset_revision}
    dataset_options = {k: v for k, v in given.items() if v is not None}
    # A name that resolves again from any folder: local data by its absolute path.
    dataset_name = data.name if data.kind == "hub" else data.source
    entry: CachedEmbeddings | None = None
    if chosen_strategy.needs_embeddings:
        assert model is not None
        entry = _cached_entry(
            store, model, dataset, split, limit=limit, embed_seed=embed_seed,
            options={**model_options, **dataset_options}, purpose=f"--strategy {strategy}",
        )
        pool = AnchorPool(entry.ids, entry.labels, list(entry.metadata.get("class_names", [])), entry.embeddings)
        fingerprint = str(entry.metadata["key"]["dataset_fingerprint"])
    else:
        if data.kind == "hub":
            from stitchcli.hub import prefer_offline_when_unreachable

            prefer_offline_when_unreachable()
        rows = load_split(data, split, limit=limit, seed=embed_seed)
        pool = AnchorPool(rows.ids, rows.labels, list(rows.class_names))
        fingerprint = rows.fingerprint
    if num > len(pool):
        where = f"the --limit {limit} subset of split {split!r}" if limit is not None else f"split {split!r}"
        raise UsageError(f"--num {num} is more than the {len(pool)} rows of {where} of {data.name}: ask for at most {len(pool)} anchors")

    if entry is not None:
        reporter.info(f"choosing {num} anchors by {strategy} among {len(pool)} rows of {model}'s embeddings ({entry.dim}-d)")
    started = time.perf_counter()
    selection = chosen_strategy.select(pool, num, np.random.default_rng(seed))
    positions = np.asarray(selection.positions, dtype=np.int64)
    if len(np.unique(positions)) != num:  # a strategy bug, not a user error
        raise AssertionError(f"strategy {strategy} returned {len(np.unique(positions))} distinct rows for num={num}")
    order = np.argsort(pool.ids[positions], kind="stable")
    positions = positions[order]
    for note in selection.notes:
        reporter.warn(note)
    if entry is not None:
        reporter.info(f"chose {num} anchors in {time.perf_counter() - started:.1f} s")
    return AnchorManifest(
        name=name or default_anchor_name(data, split, strategy, num, seed, model=model, limit=limit),
        dataset=dataset_name,
        dataset_id=data.dataset_id,
        dataset_fingerprint=fingerprint,
        split=split,
        strategy=strategy,
        seed=seed,
        num=num,
        ids=[int(i) for i in pool.ids[positions]],
        labels=[int(v) for v in pool.labels[positions]],
        class_names=pool.class_names,
        pool_rows=len(pool),
        limit=limit,
        limit_seed=embed_seed if limit is not None else None,
        model=model,
        model_options=model_options,
        model_entry=str(entry.metadata["key_digest"]) if entry is not None else None,
        dataset_options=dataset_options,
        params=selection.params,
        notes=selection.notes,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        stitchcli_version=__version__,
        numpy_version=np.__version__,
    )


# ----- saving and finding ------------------------------------------------------------------------


def anchors_folder(store: EmbeddingStore) -> Path:
    """Give the folder holding saved manifests."""
    return store.root / ANCHORS_FOLDER


def list_anchor_manifests(store: EmbeddingStore) -> list[str]:
    """Give the names of the saved manifests, sorted."""
    folder = anchors_folder(store)
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def _write_json(path: Path, document: Any) -> None:
    """Write a JSON document atomically (a file that already holds it is left alone)."""
    with out_of_space_as_work_error(path):
        write_text_atomically(path, json.dumps(document, indent=2) + "\n")


def save_anchor_manifest(store: EmbeddingStore, manifest: AnchorManifest, *, out: str | os.PathLike[str] | None = None, force: bool = False) -> Path:
    """Give the cache path the manifest was saved to (also written to ``out`` when given).

    Saving the same choice again keeps the saved file's creation time and versions (``manifest`` takes them),
    so nothing is written when the file is this stitchcli's (one with keys this version does not know is
    rewritten); a name that holds another choice is refused unless ``force``, so anchors that heads were
    trained with are not replaced silently.
    """
    path = anchors_folder(store) / f"{check_anchor_name(manifest.name)}.json"
    if path.exists() and not force:
        try:
            saved = _read_manifest(path)
        except UsageError:
            saved = None  # a damaged file holds nothing worth keeping
        existing = saved.selection() if saved is not None else None
        if saved is not None and existing == manifest.selection():  # the same choice: keep the file as it is
            manifest.created, manifest.stitchcli_version, manifest.numpy_version = saved.created, saved.stitchcli_version, saved.numpy_version
        if existing is not None and existing != manifest.selection():
            raise UsageError(
                f"anchors named {manifest.name!r} already exist with another choice ({path}): "
                "pass --name to save these under another name, or --force to replace them"
            )
    _write_json(path, _saved_document(manifest))
    if out is not None:
        _write_json(Path(out).expanduser(), _saved_document(manifest))
    return path


def _fields_digest(document: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(document).encode()).hexdigest()


def _saved_document(manifest: AnchorManifest) -> dict[str, Any]:
    """Give the JSON document a manifest is saved as: its fields and the SHA-256 of their canonical JSON, so
    bit rot or an edit (one id changed: other anchors, silently) is found when it is read."""
    document = manifest.to_dict()
    return {**document, CHECKSUM_KEY: {"algorithm": "sha256", "digest": _fields_digest(document)}}


def _read_manifest(path: Path) -> AnchorManifest:
    """Give the manifest in ``path``; UsageError when it is unreadable, damaged, or fails its checksum.

    A manifest without a checksum (written by hand, or by an older stitchcli) is read as it is."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read anchor manifest {str(path)!r}: {exc}") from None
    if isinstance(data, dict) and CHECKSUM_KEY in data:
        stored = data.pop(CHECKSUM_KEY)
        if not isinstance(stored, dict) or stored.get("digest") != _fields_digest(data):
            raise UsageError(
                f"anchor manifest {str(path)!r} does not match its checksum (bit rot, or edited by hand): choose the "
                f"anchors again with `stitchcli anchor`, or delete its \"{CHECKSUM_KEY}\" field to use it as edited"
            )
    try:
        return AnchorManifest.from_dict(data, where=f"anchor manifest {str(path)!r}")
    except TypeError as exc:  # a field of the wrong shape
        raise UsageError(f"anchor manifest {str(path)!r} is damaged: {exc}") from None


def load_anchor_manifest(store: EmbeddingStore, name_or_path: str | os.PathLike[str]) -> AnchorManifest:
    """Give the manifest saved under a name in the cache, or read from a file path.

    Raises:
        UsageError: neither a saved name nor a readable manifest file (the message lists saved names).
    """
    text = str(name_or_path)
    if _NAME_PATTERN.fullmatch(text):
        saved = anchors_folder(store) / f"{text}.json"
        if saved.is_file():
            return _read_manifest(saved)
    path = Path(text).expanduser()
    if path.is_file():
        return _read_manifest(path)
    names = list_anchor_manifests(store)
    close = difflib.get_close_matches(text, names, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    listing = f"saved anchors: {', '.join(names)}" if names else "no anchors saved yet: make some with `stitchcli anchor --dataset D`"
    raise UsageError(f"unknown anchors {text!r} (neither a saved name in {anchors_folder(store)} nor a file); {hint}{listing}")


# ----- the anchors' embeddings -------------------------------------------------------------------


@dataclass
class AnchorEmbeddings:
    """A model's embeddings of the anchors, row i belonging to ``ids[i]`` (the manifest's order)."""

    embeddings: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    model: str
    path: Path


def select_anchor_rows(manifest: AnchorManifest, entry: CachedEmbeddings, *, model: str = "") -> AnchorEmbeddings:
    """Give the anchors' rows of a loaded cache entry; UsageError if the entry lacks some or holds other data.

    Args:
        manifest: the anchors.
        entry: a cache entry of the manifest's dataset and split, with arrays loaded.
        model: the model's name, for messages.
    """
    assert entry.embeddings is not None and entry.ids is not None and entry.labels is not None
    key = entry.metadata.get("key", {})
    who = model or str(entry.path)
    if key.get("dataset_id") != manifest.dataset_id or key.get("split") != manifest.split:
        raise UsageError(
            f"anchors {manifest.name!r} are rows of {manifest.dataset_id}/{manifest.split}, "
            f"but {who}'s entry holds {key.get('dataset_id')}/{key.get('split')}"
        )
    if key.get("dataset_fingerprint") != manifest.dataset_fingerprint:
        raise UsageError(
            f"the data of {manifest.dataset}/{manifest.split} changed since anchors {manifest.name!r} were chosen "
            f"(fingerprint {manifest.dataset_fingerprint} then, {key.get('dataset_fingerprint')} now): choose them again with `stitchcli anchor`"
        )
    wanted = manifest.id_array
    order = np.argsort(entry.ids, kind="stable")
    sorted_ids = entry.ids[order]
    slots = np.minimum(np.searchsorted(sorted_ids, wanted), len(sorted_ids) - 1)
    found = sorted_ids[slots] == wanted if len(sorted_ids) else np.zeros(len(wanted), dtype=bool)
    if not found.all():
        subset = f"the --limit {key.get('limit')} subset" if key.get("limit") is not None else "its rows"
        raise UsageError(
            f"{int((~found).sum())} of the {len(wanted)} anchors of {manifest.name!r} are not in {who}'s cached entry "
            f"({subset}, {entry.rows} rows): embed the split whole (without --limit), or with the --limit the anchors were drawn from"
        )
    positions = order[slots]
    labels = entry.labels[positions]
    if not np.array_equal(labels, manifest.label_array):
        raise UsageError(
            f"{who}'s labels of the anchor rows differ from those in anchors {manifest.name!r}: "
            "the label column or class names changed; choose the anchors again"
        )
    return AnchorEmbeddings(entry.embeddings[positions], wanted, labels, who, Path(entry.path))


def anchor_embeddings(
    store: EmbeddingStore,
    manifest: AnchorManifest,
    model: str,
    *,
    limit: int | None = None,
    embed_seed: int = 0,
    weights: str | None = None,
    pooling: str | None = None,
    max_length: int | None = None,
    precision: str | None = None,
    revision: str | None = None,
) -> AnchorEmbeddings:
    """Give a model's cached embeddings of the manifest's anchors, in the manifest's order.

    Reads the model's entry of the manifest's dataset and split (the whole split unless ``limit``;
    ``embed_seed`` and the model options as given to embed). Every model gives the same ids and
    labels, so their anchor embeddings are the same samples.

    Raises:
        UsageError: the entry is not cached (the message names the embed command), lacks some
            anchor rows (e.g. made with another --limit), or holds changed data.
    """
    entry = _cached_entry(
        store, model, manifest.dataset, manifest.split, limit=limit, embed_seed=embed_seed,
        options={**_model_options(weights, pooling, max_length, precision, revision), **manifest.dataset_options},
        purpose=f"anchors {manifest.name!r}",
    )
    return select_anchor_rows(manifest, entry, model=model)
