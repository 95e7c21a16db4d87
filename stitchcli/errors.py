"""The kinds of failure a user can meet, and the exit codes the command line maps them to."""

from __future__ import annotations

import contextlib
import difflib
import errno
import os
import re
from typing import Iterator


class StitchError(Exception):
    """Base class of the errors stitchcli reports as one line instead of a traceback."""

    exit_code = 1


class UsageError(StitchError):
    """Bad input the user can fix (unknown name, bad option, missing file): exit code 2."""

    exit_code = 2


class NotCached(UsageError):
    """What a command needs is not in the cache yet (embeddings not computed): exit code 2, the message says how to make it."""


class WorkError(StitchError):
    """The work could not be done (a model or dataset could not be loaded, no network): exit code 1."""

    exit_code = 1


class BelowMinimum(StitchError):
    """The work was done and measured below the bar the user set (``--min-accuracy``): exit code 3, so a CI script
    tells "worse than the bar" from "broken" (1) and "bad input" (2)."""

    exit_code = 3


def unknown_name(kind: str, name: object, known: list[str]) -> UsageError:
    """Give the one-line error for an unknown registry name: the close match, if any, and every known name."""
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UsageError(f"unknown {kind} {name!r}{hint}: use one of {', '.join(known)}")


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


_OUT_OF_SPACE = {  # errno: (what happened, why, what to do)
    errno.ENOSPC: ("no space left on the device", "", "free space"),
    errno.EDQUOT: ("disk quota exceeded", "", "free space"),
    errno.EFBIG: ("file too large", " (a file-size limit, see `ulimit -f`, or the file system's largest file)", "raise the limit"),
}


def out_of_space_errno(exc: BaseException) -> int | None:
    """Give ENOSPC, EDQUOT or EFBIG when a failed write ran out of room, else None.

    safetensors reports these as a SafetensorError whose text ends in "(os error 28)", not as an OSError,
    so the text is read too (along the chain of causes).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _OUT_OF_SPACE:
            return current.errno
        found = re.search(r"\(os error (\d+)\)", str(current))
        if found and int(found.group(1)) in _OUT_OF_SPACE:
            return int(found.group(1))
        current = current.__cause__ or current.__context__
    return None


def out_of_space_message(code: int, path: str | os.PathLike[str]) -> str:
    """Give the one line that says which write ran out of room (``code`` from :func:`out_of_space_errno`) and what to do."""
    what, why, fix = _OUT_OF_SPACE[code]
    return (
        f"{what} writing {os.fspath(path)}{why}: {fix} or choose another --cache-dir, then run the same command again "
        "(finished embedding shards and heads are kept)"
    )


@contextlib.contextmanager
def out_of_space_as_work_error(path: str | os.PathLike[str]) -> Iterator[None]:
    """Run the block; a write in it that runs out of room (a full disk, a quota, a file-size limit) becomes a
    WorkError naming ``path``, so the user gets one line instead of a traceback."""
    try:
        yield
    except StitchError:
        raise
    except Exception as exc:
        code = out_of_space_errno(exc)
        if code is None:
            raise
        raise WorkError(out_of_space_message(code, path)) from exc
