"""Local datasets: which layout a path has, how to open it, and its fingerprint.

Accepted layouts, checked in this order for a folder:

1. a ``save_to_disk`` folder (``dataset_dict.json``, or ``state.json`` for a single split) -> ``disk``;
2. table files named by split (``train.csv``, ``test.jsonl``, ``validation.parquet``…) -> ``table``
   (table files win over subfolders, so a table that names images in subfolders is read as a table);
3. split folders of class folders of images (``train/cat/001.png``), or of images without classes
   (``train/001.png``: a split without labels) -> ``imagefolder``.

A single table file is one split named ``train``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from stitchcli.data.base import DatasetSpec
from stitchcli.data.sources import (
    HFSplitSource,
    ImageFolderSource,
    TableSource,
    image_folder_splits,
    images_below_class_folders,
    unknown_split,
)
from stitchcli.data.tables import TABLE_SUFFIXES, csv_delimiter, default_delimiter, file_class_label_names
from stitchcli.errors import UsageError
from stitchcli.fingerprint import file_sha256, tree_fingerprint

SINGLE_FILE_SPLIT = "train"

LAYOUTS_HELP = (
    "a dataset folder must be a save_to_disk folder (dataset_dict.json or state.json), hold table files "
    f"named by split (train.csv, test.jsonl…; {'/'.join(s[1:] for s in TABLE_SUFFIXES)}), or hold "
    "split folders of class folders of images (train/cat/001.png), or of images without labels (train/001.png)"
)


def _is_table_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in TABLE_SUFFIXES


def resolve_local(name: str, path: Path) -> DatasetSpec:
    """Give the spec of an existing local file or folder, from its layout (reads no rows)."""
    path = path.expanduser().resolve()
    if path.is_file():
        if not _is_table_file(path):
            raise UsageError(f"{path} is not a table file; {LAYOUTS_HELP}")
        return DatasetSpec(name, "table", str(path), split_paths=((SINGLE_FILE_SPLIT, str(path)),))
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return DatasetSpec(name, "disk", str(path))
    try:
        tables = sorted(p for p in path.iterdir() if _is_table_file(p))
    except OSError as exc:
        reason = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or type(exc).__name__)
        raise UsageError(f"cannot read the dataset folder {path}: {reason}; make it readable or choose another dataset") from None
    if tables:
        return DatasetSpec(name, "table", str(path), split_paths=_splits_by_stem(tables))
    if image_folder_splits(path):
        return DatasetSpec(name, "imagefolder", str(path))
    raise UsageError(f"{path} holds no dataset; {LAYOUTS_HELP}")


def _splits_by_stem(files: list[Path]) -> tuple[tuple[str, str], ...]:
    by_split: dict[str, Path] = {}
    for f in files:
        split = f.name[: -len(f.suffix)]
        if split in by_split:
            raise UsageError(
                f"split '{split}' has two files, {by_split[split].name} and {f.name}; keep one per split"
            )
        by_split[split] = f
    return tuple((split, str(f)) for split, f in sorted(by_split.items()))


def resolve_split_paths(name: str, split_paths: dict[str, str]) -> DatasetSpec:
    """Give a ``table`` spec for explicit ``--split NAME=PATH`` files."""
    resolved: dict[str, str] = {}
    for split, raw in split_paths.items():
        p = Path(raw).expanduser().resolve()
        if not p.is_file():
            raise UsageError(f"--split {split}={raw}: no such file")
        if not _is_table_file(p):
            raise UsageError(f"--split {split}={raw}: not a table file ({', '.join(TABLE_SUFFIXES)})")
        resolved[split] = str(p)
    if not resolved:
        raise UsageError("--split needs at least one NAME=PATH")
    # the files' common folder stands for the dataset; the split files' hashes tell versions apart
    source = os.path.commonpath([str(Path(p).parent) for p in resolved.values()])
    return DatasetSpec(name or source, "table", source, split_paths=tuple(sorted(resolved.items())))


def disk_splits(root: Path) -> list[str]:
    """Give the split names of a ``save_to_disk`` folder (a single Dataset: its split, else ``train``)."""
    dict_file = root / "dataset_dict.json"
    if dict_file.is_file():
        return list(json.loads(dict_file.read_text())["splits"])
    state = json.loads((root / "state.json").read_text())
    return [state.get("_split") or SINGLE_FILE_SPLIT]


def open_disk(spec: DatasetSpec) -> HFSplitSource:
    """Give the splits of a ``save_to_disk`` folder (memory-mapped, nothing is copied)."""
    import datasets

    root = Path(spec.source)
    loaded = datasets.load_from_disk(str(root))
    if isinstance(loaded, datasets.DatasetDict):
        return HFSplitSource(dict(loaded))
    return HFSplitSource({disk_splits(root)[0]: loaded})


def open_table(spec: DatasetSpec) -> TableSource:
    """Give the splits of a ``table`` dataset (files are read when a split is asked for)."""
    return TableSource(dict(spec.split_paths))


def open_imagefolder(spec: DatasetSpec) -> ImageFolderSource:
    """Give the splits of an image folder."""
    return ImageFolderSource(Path(spec.source))


# Class ids are numbered over the labels of every split (so train and test agree), hence each
# split's fingerprint covers what the class vocabulary is read from, not only the split itself.


def disk_fingerprint(spec: DatasetSpec, split: str) -> str:
    """Give the content hash of a ``save_to_disk`` dataset (every split: class ids span them all)."""
    root = Path(spec.source)
    splits = disk_splits(root)
    if split not in splits:
        raise unknown_split(spec.name, split, splits)
    return tree_fingerprint(root)


def table_fingerprint(spec: DatasetSpec, split: str) -> str:
    """Give a hash of every split's table file (the split's own rows, and the shared class vocabulary)."""
    paths = dict(spec.split_paths)
    if split not in paths:
        raise unknown_split(spec.name, split, list(paths))
    digest = hashlib.sha256()
    for name in sorted(paths):
        digest.update(f"{name}={file_sha256(paths[name])};".encode())
        delimiter = csv_delimiter(paths[name])
        if delimiter != default_delimiter(paths[name]):  # read otherwise than its suffix says (a ';' CSV): its
            digest.update(f"delimiter={delimiter!r};".encode())  # entries made before that was found read it wrongly
        if file_class_label_names(paths[name]):  # class names read from its ClassLabel features (they were 0, 1…)
            digest.update(b"class names from its features;")
    return digest.hexdigest()


def imagefolder_fingerprint(spec: DatasetSpec, split: str) -> str:
    """Give a hash of the split folder's file names and sizes, and of every split's class folders.

    Contents are not read: hashing every image on each command would cost more than the cache
    saves, so an image rewritten in place with the same size goes unnoticed.
    """
    root = Path(spec.source)
    splits = image_folder_splits(root)
    if split not in splits:
        raise unknown_split(spec.name, split, splits, folder=root)
    classes = sorted({d.name for s in splits for d in (root / s).iterdir() if d.is_dir()})
    names: list[str] = []
    links: list[str] = []
    digest = hashlib.sha256(tree_fingerprint(root / split, content=False, names=names, links=links).encode())
    digest.update("\0".join(classes).encode())
    below = images_below_class_folders(root / split, names, links)
    if below:  # rows since subfolders of class folders are read (entries made before lack them); those reached
        # through links to folders are hashed here, as the tree's walk does not follow links
        digest.update(b"\0images below class folders")
        digest.update("\n".join(below).encode())
    return digest.hexdigest()
