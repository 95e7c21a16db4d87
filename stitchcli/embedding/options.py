"""embed's options and its summary record, and the reading of its --split and --from-array values."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from stitchcli.errors import UsageError

if TYPE_CHECKING:
    pass


DEFAULT_SPLITS = ("train", "test")
DEFAULT_SHARD_ROWS = 1024


@dataclass
class EmbedResult:
    """One row of the embed summary: what was cached where, and how fast."""

    model: str
    dataset: str
    split: str
    rows: int
    dim: int
    seconds: float
    rows_per_s: float | None
    cache_hit: bool
    path: str
    resumed_rows: int = 0
    num_shards: int = 1
    shard_index: int | None = None
    complete: bool = True
    waiting_for_shards: list[int] = field(default_factory=list)
    layer: str | None = None  # an intermediate layer's entry (embed --layers); None: the final representation

    def to_dict(self) -> dict[str, Any]:
        """Give a JSON-ready record."""
        return asdict(self)


@dataclass
class EmbedOptions:
    """How to run the models; everything here except the seed is outside the cache key."""

    batch_size: int | None = None
    device: str = "auto"
    num_workers: int | None = None
    shard_rows: int = DEFAULT_SHARD_ROWS
    force: bool = False
    limit: int | None = None
    seed: int = 0
    compile: bool = False
    num_shards: int = 1
    shard_index: int | None = None
    merge: bool = False
    trust_remote_code: bool = False  # let a transformers model run the code it ships (auto_map); off: refused


def parse_splits(values: Sequence[str] | None) -> tuple[list[str], dict[str, str]]:
    """Give (split names, split name -> file path) from ``--split`` values (``NAME`` or ``NAME=PATH``)."""
    names: list[str] = []
    paths: dict[str, str] = {}
    for value in values or DEFAULT_SPLITS:
        if "=" in value:
            split_name, _, path = value.partition("=")
            if not split_name or not path:
                raise UsageError(f"--split {value!r}: write NAME or NAME=PATH (for example test=data/test.csv)")
            paths[split_name] = str(Path(path).expanduser().resolve())
            names.append(split_name)
        else:
            names.append(value)
    if len(set(names)) != len(names):
        raise UsageError(f"--split lists a split twice: {', '.join(names)}")
    return names, paths


def parse_array_files(values: Sequence[str] | None, splits: Sequence[str]) -> dict[str, Path]:
    """Give split -> array file from ``--from-array`` values (``FILE`` for one split, or ``SPLIT=FILE``)."""
    files: dict[str, Path] = {}
    for value in values or ():
        if "=" in value and not Path(value).exists():
            split_name, _, path = value.partition("=")
            files[split_name] = Path(path).expanduser()
        else:
            if len(splits) != 1:
                raise UsageError(
                    "--from-array FILE fits one split; with several splits write --from-array SPLIT=FILE for each"
                )
            files[splits[0]] = Path(value).expanduser()
    unknown = sorted(set(files) - set(splits))
    if unknown:
        raise UsageError(f"--from-array names split(s) {', '.join(unknown)} not given with --split")
    missing = [s for s in splits if s not in files] if files else []
    if missing:
        raise UsageError(f"--from-array has no file for split(s) {', '.join(missing)}: give SPLIT=FILE for each")
    return files


