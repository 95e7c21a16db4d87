"""The anchor manifest: which rows were chosen as anchors, from which data, how; saved, checked and found by name.

Manifests are stored as ``<cache>/anchors/<NAME>.json`` (written atomically, with the SHA-256 of their fields) and
found by name or path.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from stitchcli.errors import UsageError, out_of_space_as_work_error
from stitchcli.store import canonical_json, write_text_atomically

if TYPE_CHECKING:
    from stitchcli.data.base import DatasetSpec
    from stitchcli.store import EmbeddingStore

SCHEMA_VERSION = 1
ANCHORS_FOLDER = "anchors"
# The key of a saved manifest's checksum (not a field of AnchorManifest: readers of older stitchcli ignore it).
CHECKSUM_KEY = "checksum"
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


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
        strategy: a name in :data:`~stitchcli.anchors.strategies.STRATEGIES`.
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
        """Give the number of anchors of every class of the split (0 for classes not covered; none without labels)."""
        labels = self.label_array
        counts = np.bincount(labels[labels >= 0], minlength=len(self.class_names))
        return {name: int(counts[i]) for i, name in enumerate(self.class_names)}

    def selection(self) -> dict[str, Any]:
        """Give the fields that define the choice (everything but the time and versions of the run)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("created", "stitchcli_version", "numpy_version")}



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
