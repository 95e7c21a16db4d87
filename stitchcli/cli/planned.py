"""Subcommands that exist in --help from the start and say plainly that a later issue builds them."""

from __future__ import annotations

import typer

from stitchcli.errors import WorkError

# Unknown options are accepted so that any documented call reaches the plain message below.
PLANNED_SETTINGS = {"allow_extra_args": True, "ignore_unknown_options": True}

PLANNED = {
    "fit-head": ("Train aggregator + head on a model's relative representations (not built yet).", "issue #4 (stitching)"),
    "stitch": ("Stitch ENCODER's latents into DECODER's head, with baselines (not built yet).", "issue #4 (stitching)"),
    "eval": ("N x N stitching matrix and similarity tables for a set of models (not built yet).", "issue #4 (stitching)"),
}


def planned_command(name: str, summary: str, where: str):
    """Give a command function that reports it is planned and exits with code 1."""

    def command(ctx: typer.Context) -> None:
        raise WorkError(
            f"`stitchcli {name}` is not built yet (planned in {where}); "
            "`stitchcli embed` already fills the cache it will read"
        )

    command.__doc__ = summary
    command.__name__ = f"{name.replace('-', '_')}_command"
    return command
