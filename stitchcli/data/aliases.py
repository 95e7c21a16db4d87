"""The table of known dataset aliases: short name -> canonical hub id and columns."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from stitchcli.data.packaged import PACKAGED_DATASETS, PACKAGED_PREFIX


@dataclass(frozen=True)
class DatasetAlias:
    """A short name for a hub dataset whose columns are known.

    Attributes:
        hub_id: the canonical Hugging Face hub id.
        input_columns: the input column(s); several are joined with a space (text only).
        label_column: the label column.
        config: the hub configuration name, if the dataset needs one.
    """

    hub_id: str
    input_columns: tuple[str, ...]
    label_column: str
    config: str | None = None


ALIASES: dict[str, DatasetAlias] = {
    "cifar10": DatasetAlias("uoft-cs/cifar10", ("img",), "label"),
    "cifar100": DatasetAlias("uoft-cs/cifar100", ("img",), "fine_label"),
    "cifar100-coarse": DatasetAlias("uoft-cs/cifar100", ("img",), "coarse_label"),
    "mnist": DatasetAlias("ylecun/mnist", ("image",), "label"),
    "fashion_mnist": DatasetAlias("zalando-datasets/fashion_mnist", ("image",), "label"),
    "ag_news": DatasetAlias("fancyzhx/ag_news", ("text",), "label"),
    "trec": DatasetAlias("CogComp/trec", ("text",), "coarse_label"),
    "dbpedia_14": DatasetAlias("fancyzhx/dbpedia_14", ("title", "content"), "label"),
    "imdb": DatasetAlias("stanfordnlp/imdb", ("text",), "label"),
}


def _normalise(name: str) -> str:
    # '-', '_' and ':' are interchangeable and case is ignored, so cifar100-coarse, cifar100_coarse,
    # cifar100:coarse and fashion-mnist all find their entry without a list of spellings.
    return re.sub(r"[-_:]", "_", name.strip().lower())


_BY_NORMALISED: dict[str, str] = {_normalise(alias): alias for alias in ALIASES}


def canonical_alias(name: str) -> str | None:
    """Give the alias ``name`` spells (ignoring case and ``-``/``_``/``:``), or None."""
    return _BY_NORMALISED.get(_normalise(name))


def close_aliases(name: str, n: int = 3) -> list[str]:
    """Give up to ``n`` aliases that look like ``name``, closest first."""
    matches = difflib.get_close_matches(_normalise(name), list(_BY_NORMALISED), n=n, cutoff=0.6)
    return [_BY_NORMALISED[m] for m in matches]


def close_dataset_names(name: str, n: int = 3) -> list[str]:
    """Give up to ``n`` known dataset names that look like ``name``, closest first; packaged ones as ``packaged:NAME``.

    A packaged dataset spelled without its prefix (``mnist5k``, ``bbc news``, ``bbc``) is the only
    suggestion: the alias it resembles (``mnist``) needs the hub, the packaged one works offline.
    """
    bare = re.sub(r"[-_:\s]", "", name.lower())
    exact = [short for short in PACKAGED_DATASETS if re.sub(r"[-_:\s]", "", short).startswith(bare) and len(bare) >= 3]
    if exact:
        return [PACKAGED_PREFIX + short for short in exact][:n]
    known = {**{_normalise(short): PACKAGED_PREFIX + short for short in PACKAGED_DATASETS}, **_BY_NORMALISED}
    return [known[m] for m in difflib.get_close_matches(_normalise(name), list(known), n=n, cutoff=0.6)]


def list_aliases() -> dict[str, str]:
    """Give alias -> hub id for every known alias (for help text)."""
    return {alias: entry.hub_id for alias, entry in ALIASES.items()}
