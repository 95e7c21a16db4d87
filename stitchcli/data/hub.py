"""Datasets on the Hugging Face hub: ids, loading, and the errors a user can meet."""

from __future__ import annotations

import os
import re

from stitchcli.data.base import DatasetSpec
from stitchcli.data.sources import HFSplitSource
from stitchcli.errors import OFFLINE_DATA_ALTERNATIVES, UsageError, WorkError, looks_like_network_failure

# ORG/NAME, optionally :CONFIG (e.g. nyu-mll/glue:sst2); hub ids have exactly one slash, so
# anything else that is not an existing path is reported as a missing path instead.
_HUB_ID = re.compile(r"^(?P<id>[A-Za-z0-9][\w.-]*/[\w.-]+)(?::(?P<config>[\w.-]+))?$")

_TRUE = {"1", "true", "yes", "on"}


def parse_hub_name(name: str) -> tuple[str, str | None] | None:
    """Give (hub id, config) if ``name`` reads as ``ORG/NAME[:CONFIG]``, else None."""
    match = _HUB_ID.match(name)
    return (match["id"], match["config"]) if match else None


def offline_mode() -> bool:
    """Tell whether the hub is switched off (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE)."""
    if any(os.environ.get(var, "").strip().lower() in _TRUE for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")):
        return True
    import datasets

    return bool(datasets.config.HF_HUB_OFFLINE)


def open_hub(spec: DatasetSpec) -> HFSplitSource:
    """Give every split of a hub dataset (downloaded into the datasets cache, or read from it).

    All splits are loaded, not only the one asked for: the download prepares every split anyway,
    and the others are needed to list split names and to give string labels the same ids in each.

    Raises:
        WorkError: the hub cannot be reached (no network, offline mode) or loading failed.
        UsageError: the id or configuration does not exist on a reachable hub.
    """
    import datasets

    try:
        # A dataset's loading script never runs: datasets 2.x ran it by default; 4.0 dropped scripts altogether.
        loaded = datasets.load_dataset(spec.source, spec.config, revision=spec.revision, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - every failure is translated, the cause is chained
        raise _translate(spec, exc) from exc
    if isinstance(loaded, datasets.DatasetDict):
        return HFSplitSource(dict(loaded))
    return HFSplitSource({"train": loaded})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _translate(spec: DatasetSpec, exc: Exception) -> Exception:
    from datasets.exceptions import DatasetNotFoundError

    shown = f"'{spec.name}'" if spec.name == spec.dataset_id else f"'{spec.name}' ({spec.dataset_id})"
    offline = offline_mode()
    if looks_like_network_failure(exc) or (offline and isinstance(exc, FileNotFoundError)):
        return WorkError(
            f"could not download dataset {shown} from the Hugging Face hub (no network?); {OFFLINE_DATA_ALTERNATIVES}"
        )
    if isinstance(exc, DatasetNotFoundError):
        return UsageError(
            f"dataset {shown} was not found on the Hugging Face hub (or needs `hf auth login`); "
            "check the id, or pass an alias or a local path"
        )
    if isinstance(exc, ValueError) and "config" in str(exc).lower():
        return UsageError(f"dataset {shown}: {_first_line(exc)}; name the configuration as ORG/NAME:CONFIG")
    return WorkError(f"could not load dataset {shown} from the Hugging Face hub: {_first_line(exc)}")


def hub_fingerprint(spec: DatasetSpec, split: str) -> str:
    """Give ``id@revision`` (``main`` when no revision was pinned); the split is checked at load time."""
    return f"{spec.dataset_id}@{spec.revision or 'main'}"
