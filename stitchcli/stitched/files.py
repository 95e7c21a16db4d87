"""A stitched model directory on disk: which files it may hold, their checksums, and writing it whole.

The directory holds JSON and safetensors files only, and ``manifest.json`` with the SHA-256 of every other file.
:func:`verify_directory` runs before anything in the directory is parsed: a file that is not listed (a pickle
dropped in, say), a listed file that is not one a stitched model holds, a missing file or one whose bytes differ
from its checksum (a flipped bit, an edited card) is refused with one line, and nothing in it is read further.
:func:`write_directory` builds the directory beside its destination and renames it into place, so a reader sees
the old model or the new one whole.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from stitchcli.errors import UsageError
from stitchcli.fingerprint import file_sha256
from stitchcli.store import CHECKSUM_ALGORITHM, write_text_atomically

FORMAT = "stitchcli-stitched-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CARD = "card.json"
HEAD = "head.safetensors"
HEAD_CONFIG = "head.json"  # the head's config, for people (save_head writes it beside the head)
ANCHORS = "encoder_anchors.safetensors"
MAP = "map.safetensors"
KNOWN_FILES = (CARD, HEAD, HEAD_CONFIG, ANCHORS, MAP)
"""Every file a stitched model directory may hold besides the manifest."""

_RESAVE = "save it again with `stitchcli stitch ... --save DIR`"


def write_directory(target: str | os.PathLike[str], fill: Callable[[Path], None]) -> Path:
    """Give the directory written at ``target``: ``fill`` writes the files into a fresh folder, the manifest is added,
    then the folder is renamed into place.

    ``target`` must not exist, be empty, or be a stitched model directory (which is replaced); anything else is
    refused (UsageError), so a typo never overwrites a folder of other files.
    """
    target = Path(target).expanduser()
    check_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        fill(building)
        files = sorted(entry.name for entry in building.iterdir())
        unknown = [name for name in files if name not in KNOWN_FILES]
        if unknown:
            raise AssertionError(f"a stitched model was written with files it may not hold: {unknown}")
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "algorithm": CHECKSUM_ALGORITHM,
            "files": {name: file_sha256(building / name) for name in files},
        }
        write_text_atomically(building / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.chmod(building, 0o777 & ~_umask())
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / "model")
        os.replace(building, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_target(target: str | os.PathLike[str]) -> None:
    """Refuse (UsageError) a ``--save`` folder that holds anything but an earlier stitched model."""
    target = Path(target).expanduser()
    if not target.exists():
        return
    if not target.is_dir():
        raise UsageError(f"--save {target} is a file: give a folder for the stitched model")
    names = [entry.name for entry in target.iterdir()]
    if names and MANIFEST not in names:
        raise UsageError(f"--save {target} is a folder of other files: give a new or empty folder (an earlier stitched model there is replaced)")


def verify_directory(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Give the manifest of the stitched model at ``path`` after checking every file against it (nothing else read).

    Raises:
        UsageError: not a folder, no manifest, another format, a file not listed or not one a stitched model holds,
            a listed file missing, or a file whose SHA-256 differs from the manifest's.
    """
    root = Path(path).expanduser()
    where = str(root)
    if not root.is_dir():
        raise UsageError(f"stitched model {where} is not a folder: give the folder written by `stitchcli stitch ... --save DIR`")
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise UsageError(f"{where} is not a stitched model (no {MANIFEST}): give the folder written by `stitchcli stitch ... --save DIR`")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{manifest_path} is not valid JSON ({exc}): {_RESAVE}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UsageError(f"{where} is not a stitched model ({MANIFEST} is of another format): give the folder written by `stitchcli stitch ... --save DIR`")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UsageError(
            f"stitched model {where} has format version {manifest.get('format_version')!r}, this stitchcli reads {FORMAT_VERSION}: "
            f"use the stitchcli that saved it, or {_RESAVE}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or manifest.get("algorithm") != CHECKSUM_ALGORITHM or not all(isinstance(v, str) for v in files.values()):
        raise UsageError(f"{manifest_path} is damaged (no file checksums): {_RESAVE}")
    foreign = sorted(set(files) - set(KNOWN_FILES))
    if foreign:
        raise UsageError(f"stitched model {where} lists {', '.join(foreign)}, which is not a file a stitched model holds: {_RESAVE}")
    present = sorted(entry.name for entry in root.iterdir() if not _file_manager_metadata(entry.name))
    unexpected = [name for name in present if name != MANIFEST and name not in files]
    if unexpected:
        raise UsageError(
            f"stitched model {where} holds unexpected file {', '.join(unexpected)} (a stitched model holds only the JSON and "
            f"safetensors files its {MANIFEST} lists, nothing pickled): remove it, or {_RESAVE}"
        )
    for name in sorted(files):
        file = root / name
        if not file.is_file() or file.is_symlink():
            raise UsageError(f"stitched model {where} lacks {name} (or it is not a plain file): copy the whole folder again, or {_RESAVE}")
        if file_sha256(file) != files[name]:
            raise UsageError(f"{file} does not match its checksum in {MANIFEST} (damaged, or edited by hand): copy it again, or {_RESAVE}")
    return manifest


def _file_manager_metadata(name: str) -> bool:
    """Tell whether a file is what a file manager leaves in a folder it shows or copies (macOS .DS_Store and ._x,
    Windows Thumbs.db and desktop.ini; any hidden file): never read, so no reason to refuse the folder."""
    return name.startswith(".") or name in ("Thumbs.db", "desktop.ini")
