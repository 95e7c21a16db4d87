"""The two kinds of failure a user can meet, and the exit codes the command line maps them to."""

from __future__ import annotations


class StitchError(Exception):
    """Base class of the errors stitchcli reports as one line instead of a traceback."""

    exit_code = 1


class UsageError(StitchError):
    """Bad input the user can fix (unknown name, bad option, missing file): exit code 2."""

    exit_code = 2


class WorkError(StitchError):
    """The work could not be done (a model or dataset could not be loaded, no network): exit code 1."""

    exit_code = 1


OFFLINE_MODEL_ALTERNATIVES = (
    "offline alternatives: a local model folder holding config.json, `timm:ARCH --weights FILE`, "
    "or embeddings computed elsewhere with `--from-array FILE`"
)
OFFLINE_DATA_ALTERNATIVES = (
    "offline alternatives: a local dataset (a save_to_disk folder, an image folder split/class/file, "
    "or CSV/JSON/JSONL/Parquet files named by split)"
)


def looks_like_network_failure(exc: BaseException) -> bool:
    """Tell whether an exception raised while loading from a hub comes from having no network."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        name = type(current).__name__
        text = str(current).lower()
        if name in {
            "ConnectionError",
            "ConnectTimeout",
            "ReadTimeout",
            "OfflineModeIsEnabled",
            "LocalEntryNotFoundError",
            "MaxRetryError",
            "NewConnectionError",
            "ConnectError",
            "gaierror",
        }:
            return True
        if any(
            marker in text
            for marker in (
                "offline mode",
                "hf_hub_offline",
                "couldn't connect",
                "could not connect",
                "connection error",
                "failed to resolve",
                "name or service not known",
                "temporary failure in name resolution",
                "network is unreachable",
                "cannot find the requested files in the local cache",
                "we couldn't connect",
                "connecterror",
            )
        ):
            return True
        current = current.__cause__ or current.__context__
    return False
