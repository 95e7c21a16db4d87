"""TOML recipes: a stitching sweep (datasets x models x projections x aggregations x seeds) in one file.

    from stitchcli.recipes import load_recipe, validate_recipe

    recipe = load_recipe("recipes/paper-vision.toml")   # parse and check the schema (no model, no data)
    validate_recipe(recipe)                             # resolve every dataset and model name, offline

A recipe (every key but ``models`` (unless every dataset lists its own) and one of ``datasets``/``dataset`` is optional)::

    description = "free text"
    datasets = ["cifar10", "mnist"]        # or: dataset = "cifar10"
    models = ["rexnet_100", { name = "bert-base-cased", pooling = "mean" }]
    # or models per dataset (then the top-level models may be left out):
    # datasets = [{ name = "packaged:bbc-news", models = ["minilm", "mpnet"] }, "mnist"]
    split = "test"                         # evaluation split
    train_split = "train"                  # heads and anchors come from here
    limit = 500                            # seeded class-stratified subset of N rows per split
    projections = ["cosine", "l1"]         # or "all"; likewise aggregations and metrics (default: stitch's)
    aggregations = ["mlp-sum"]
    transform = "center"
    seeds = [0, 1, 2]
    metrics = ["cka", "jaccard", "mrr", "cosine"]
    k = 10
    baselines = ["absolute", "translation", "affine"]   # or "all"; [] for none
    ridge = 0.1                            # the affine baseline's ridge strength
    [anchors]        # num, strategy, seed, model (fps/kmeans) -- or name: a saved manifest
    [head]           # any field of stitchcli.heads.HeadSettings (hidden, epochs, lr, dropout...)
    [dataset_options]  # input_column, label_column, dataset_revision

Paths written in a recipe are relative to the recipe's folder, so a recipe works from any working
directory: model and dataset names and ``anchors.name`` when written ``./x`` or ``../x`` (a bare
word there is a name, not a path), and any relative ``weights`` file.

Every problem is a :class:`~stitchcli.errors.UsageError` of one line that starts with the file and
names the key.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from stitchcli import defaults
from stitchcli.models import MODEL_OPTIONS as MODEL_OPTION_KEYS
from stitchcli.models import ModelRef
from stitchcli.errors import UsageError

if TYPE_CHECKING:
    from stitchcli.store import EmbeddingStore

ALL = "all"
BASELINES, METRICS = defaults.BASELINES, defaults.METRICS  # the names a recipe may list

ANCHOR_KEYS = ("num", "strategy", "seed", "name", "model")
DATASET_OPTION_KEYS = ("input_column", "label_column", "dataset_revision")
RECIPE_KEYS = (
    "description",
    "datasets",
    "dataset",
    "models",
    "split",
    "train_split",
    "limit",
    "projections",
    "aggregations",
    "transform",
    "seeds",
    "metrics",
    "k",
    "baselines",
    "ridge",
    "anchors",
    "head",
    "dataset_options",
)
DEFAULTS: dict[str, Any] = {
    "description": "",
    "split": "test",
    "train_split": "train",
    "limit": None,
    "projections": list(defaults.PROJECTIONS),
    "aggregations": [defaults.AGGREGATION],
    "transform": defaults.TRANSFORM,
    "seeds": list(defaults.SEEDS),
    "metrics": ALL,
    "k": 10,
    "baselines": ALL,
    "ridge": defaults.RIDGE,
}
ANCHOR_DEFAULTS: dict[str, Any] = {"num": None, "strategy": "uniform", "seed": 0, "name": None, "model": None}

_MIN_MODELS = 2


@dataclass(frozen=True)
class Recipe:
    """A checked recipe, every default filled in.

    Attributes:
        path: the file it was read from.
        anchors: ``num`` (None: the default, 1280), ``strategy``, ``seed``, ``model`` (fps/kmeans:
            whose embeddings choose the rows) and ``name`` (a saved manifest used instead: then
            num, strategy and seed are None).
        head: only the head settings the recipe gives; the rest keep the head's own defaults.
        dataset_options: ``input_column``, ``label_column``, ``dataset_revision`` as given.
    """

    path: Path
    description: str
    datasets: list[str]
    models: list[ModelRef]
    dataset_models: dict[str, list[ModelRef]]
    split: str
    train_split: str
    limit: int | None
    projections: list[str]
    aggregations: list[str]
    transform: str
    seeds: list[int]
    metrics: list[str]
    k: int
    anchors: dict[str, Any]
    baselines: list[str]
    ridge: float
    head: dict[str, Any]
    dataset_options: dict[str, Any]

    def model_names(self) -> list[str]:
        """Give every model name, in recipe order (each once)."""
        return list(dict.fromkeys(model.name for models in self.dataset_models.values() for model in models))

    def models_of(self, dataset: str) -> list[ModelRef]:
        """Give the models a dataset is swept with: its own list, else the recipe's ``models``."""
        return self.dataset_models[dataset]

    def to_dict(self) -> dict[str, Any]:
        """Give a JSON-ready description (what a result file records as its settings)."""
        document = asdict(self)
        document["path"] = str(self.path)
        return document


# ----- reading values ------------------------------------------------------------------------------


class _Checker:
    """Reads typed values out of parsed TOML; every error names the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, message: str) -> UsageError:
        return UsageError(f"{self.path}: {message}")

    def fail(self, key: str, expected: str, value: Any) -> UsageError:
        return self.error(f"{key} must be {expected}, not {_describe(value)}")

    def known_keys(self, table: Mapping[str, Any], known: tuple[str, ...], prefix: str = "") -> None:
        from stitchcli.relative import unknown_name

        for key in table:
            if key not in known:
                raise self.error(str(unknown_name("key", f"{prefix}{key}", [f"{prefix}{k}" for k in known])))

    def integer(self, key: str, value: Any, *, minimum: int | None = None) -> int:
        # bool is a subclass of int: `k = true` is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
            raise self.fail(key, "an integer" if minimum is None else f"an integer >= {minimum}", value)
        return value

    def number(self, key: str, value: Any) -> float:
        """Give a float (an integer such as ``0`` is accepted too)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, "a number", value)
        return float(value)

    def positive_number(self, key: str, value: Any) -> float:
        number = self.number(key, value)
        if not number > 0:
            raise self.fail(key, "a positive number", value)
        return number

    def string(self, key: str, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, "a non-empty string", value)
        return value.strip()

    def text(self, key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail(key, "a string", value)
        return value

    def table(self, key: str, value: Any) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"a table ([{key}])", value)
        return value

    def unique_list(self, key: str, value: Any, read_item: Callable[[str, Any], Any], what: str) -> list[Any]:
        if not isinstance(value, list) or not value:
            raise self.fail(key, f"a non-empty list of {what}", value)
        items = [read_item(f"{key}[{i}]", item) for i, item in enumerate(value)]
        seen: set[Any] = set()
        for item in items:
            if item in seen:
                raise self.error(f"{key} lists {item!r} twice")
            seen.add(item)
        return items

    def names(self, key: str, value: Any, known: list[str], kind: str) -> list[str]:
        """Give a list of registry names (``"all"``: every known one); unknown names suggest close ones."""
        if value == ALL:
            return list(known)
        names = self.unique_list(key, value, self.string, f'{kind} names (or "all")')
        for name in names:
            self.known_name(key, name, known, kind)
        return names

    def choice(self, key: str, value: Any, known: list[str], kind: str) -> str:
        return self.known_name(key, self.string(key, value), known, kind)

    def known_name(self, key: str, name: str, known: list[str], kind: str) -> str:
        from stitchcli.relative import unknown_name

        if name not in known:
            raise self.error(f"{key}: {unknown_name(kind, name, known)}")
        return name


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    kind = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "a table"}.get(type(value), type(value).__name__)
    shown = repr(value)
    return f"{shown[:60]}… ({kind})" if len(shown) > 60 else f"{shown} ({kind})"


def _from_recipe_folder(value: str, folder: Path, *, any_relative: bool = False) -> str:
    """Give a path written in a recipe relative to the recipe's folder; names are kept as they are."""
    explicit = value.startswith(("./", "../", ".\\", "..\\")) or value in (".", "..")
    if (explicit or any_relative) and not Path(value).expanduser().is_absolute() and not value.startswith("~"):
        return os.path.normpath(folder / value)
    return value


# ----- the schema ----------------------------------------------------------------------------------


def _model(check: _Checker, folder: Path, key: str, value: Any) -> ModelRef:
    from stitchcli.encoders import RANDOM_WEIGHTS, check_model_options

    if isinstance(value, str):
        return ModelRef(_from_recipe_folder(check.string(key, value), folder))
    if not isinstance(value, dict):
        raise check.fail(key, "a model name or a table { name = ..., pooling = ... }", value)
    check.known_keys(value, ("name", *MODEL_OPTION_KEYS), prefix=f"{key}.")
    if "name" not in value:
        raise check.error(f"{key} has no name: write {{ name = \"MODEL\", ... }}")
    options: dict[str, Any] = {}
    for option in MODEL_OPTION_KEYS:
        given = value.get(option)
        if given is None:
            continue
        where = f"{key}.{option}"
        options[option] = check.integer(where, given, minimum=1) if option == "max_length" else check.string(where, given)
    if "weights" in options and options["weights"] != RANDOM_WEIGHTS:
        options["weights"] = _from_recipe_folder(options["weights"], folder, any_relative=True)
    try:
        check_model_options(pooling=options.get("pooling"), max_length=None, precision=options.get("precision"))
    except UsageError as exc:
        raise check.error(f"{key}: {exc}") from None
    return ModelRef(_from_recipe_folder(check.string(f"{key}.name", value["name"]), folder), options)


def _models(check: _Checker, folder: Path, value: Any, *, key: str = "models") -> list[ModelRef]:
    if not isinstance(value, list) or len(value) < _MIN_MODELS:
        raise check.fail(key, f"a list of at least {_MIN_MODELS} models (stitching needs an encoder and a decoder)", value)
    models = [_model(check, folder, f"{key}[{i}]", item) for i, item in enumerate(value)]
    names = [model.name for model in models]
    for name in names:
        if names.count(name) > 1:
            # Result rows are keyed by model name: two variants of one model need two names.
            raise check.error(
                f"{key} lists {name!r} twice; to compare variants (pooling, weights...) register each with "
                "`stitchcli embed --name NAME` and list the names"
            )
    return models


def _datasets(check: _Checker, folder: Path, document: Mapping[str, Any]) -> list[tuple[str, list[ModelRef] | None]]:
    """Give (dataset name, its own models or None) per dataset; a dataset may be a table with ``name`` and ``models``."""
    if ("datasets" in document) == ("dataset" in document):
        raise check.error("give exactly one of datasets = [...] or dataset = \"NAME\"")
    if "dataset" in document:
        return [(_from_recipe_folder(check.string("dataset", document["dataset"]), folder), None)]
    value = document["datasets"]
    if not isinstance(value, list) or not value:
        raise check.fail("datasets", "a non-empty list of dataset names or tables { name = ..., models = [...] }", value)
    entries: list[tuple[str, list[ModelRef] | None]] = []
    for i, item in enumerate(value):
        key = f"datasets[{i}]"
        if isinstance(item, dict):
            check.known_keys(item, ("name", "models"), prefix=f"{key}.")
            if "name" not in item:
                raise check.error(f"{key} has no name: write {{ name = \"DATASET\", models = [...] }}")
            name = check.string(f"{key}.name", item["name"])
            models = _models(check, folder, item["models"], key=f"{key}.models") if "models" in item else None
        else:
            name, models = check.string(key, item), None
        entries.append((_from_recipe_folder(name, folder), models))
    names = [name for name, _ in entries]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise check.error(f"datasets lists {', '.join(repeated)} twice")
    return entries


def _anchors(check: _Checker, folder: Path, value: Any, models: list[ModelRef]) -> dict[str, Any]:
    from stitchcli.anchors import STRATEGIES, list_anchor_strategies

    table = check.table("anchors", value)
    check.known_keys(table, ANCHOR_KEYS, prefix="anchors.")
    if "name" in table:
        chosen = [k for k in ("num", "strategy", "seed", "model") if k in table]
        if chosen:
            raise check.error(f"anchors.name names saved anchors: drop anchors.{', anchors.'.join(chosen)} (they describe a new choice)")
        name = _from_recipe_folder(check.string("anchors.name", table["name"]), folder)
        return {"num": None, "strategy": None, "seed": None, "name": name, "model": None}
    anchors = dict(ANCHOR_DEFAULTS)
    if "num" in table:
        anchors["num"] = check.integer("anchors.num", table["num"], minimum=1)
    if "strategy" in table:
        anchors["strategy"] = check.choice("anchors.strategy", table["strategy"], list_anchor_strategies(), "anchor strategy")
    if "seed" in table:
        anchors["seed"] = check.integer("anchors.seed", table["seed"], minimum=0)
    if "model" in table:
        anchors["model"] = _from_recipe_folder(check.string("anchors.model", table["model"]), folder)
    if STRATEGIES[anchors["strategy"]].needs_embeddings:
        names = [model.name for model in models]
        if anchors["model"] not in names:
            raise check.error(
                f"anchors.strategy {anchors['strategy']!r} chooses rows from a model's embeddings: "
                f"set anchors.model to one of the recipe's models ({', '.join(names)})"
            )
    elif anchors["model"] is not None:
        needing = [name for name, strategy in STRATEGIES.items() if strategy.needs_embeddings]
        raise check.error(f"anchors.model applies to the {' and '.join(needing)} strategies, not {anchors['strategy']!r}: drop it")
    return anchors


def _head(check: _Checker, value: Any) -> dict[str, Any]:
    """Give the head settings a recipe gives, typed; their ranges are HeadSettings' own checks."""
    from dataclasses import fields

    from stitchcli.heads import HeadSettings

    table = check.table("head", value)
    kinds = {f.name: f.type for f in fields(HeadSettings)}
    check.known_keys(table, tuple(kinds), prefix="head.")
    head = {
        key: check.integer(f"head.{key}", given) if kinds[key] in (int, "int") else check.number(f"head.{key}", given)
        for key, given in table.items()
    }
    try:
        HeadSettings(**head)
    except UsageError as exc:
        raise check.error(f"head: {exc}") from None
    return head


def _dataset_options(check: _Checker, value: Any) -> dict[str, Any]:
    table = check.table("dataset_options", value)
    check.known_keys(table, DATASET_OPTION_KEYS, prefix="dataset_options.")
    return {key: check.string(f"dataset_options.{key}", given) for key, given in table.items()}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    if not path.exists():
        raise UsageError(f"recipe file {path} not found; check the path (recipes ship in the recipes/ folder)")
    if not path.is_file():
        raise UsageError(f"recipe {path} is a folder, not a TOML file")
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not valid TOML: the file is not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"recipe {path} cannot be read: {exc.strerror or exc}") from None


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Give the recipe a TOML file describes, checked against the schema, defaults filled in.

    Names are checked against the registries (projections, aggregations, transforms, metrics, anchor
    strategies); datasets and models are only checked by :func:`validate_recipe`.

    Raises:
        UsageError: a missing file, invalid TOML (with its line), an unknown key (with the close
            match), a value of the wrong type or range, an empty or duplicated list, an unknown name.
    """
    from stitchcli.anchors import is_evaluation_split
    from stitchcli.relative import list_aggregations, list_projections, list_transforms

    path = Path(path)
    document = _read_toml(path)
    check = _Checker(path)
    folder = path.absolute().parent
    check.known_keys(document, RECIPE_KEYS)
    values = {**DEFAULTS, **document}
    datasets = _datasets(check, folder, document)
    if "models" not in document and any(own is None for _, own in datasets):
        raise check.error(f"models is missing: list at least {_MIN_MODELS} models, models = [\"A\", \"B\"]")
    models = _models(check, folder, values["models"]) if "models" in document else []
    dataset_models = {name: own if own is not None else models for name, own in datasets}
    split = check.string("split", values["split"])
    train_split = check.string("train_split", values["train_split"])
    if is_evaluation_split(train_split):
        raise check.error(f"train_split {train_split!r} looks like evaluation data: heads and anchors must come from a training split")
    if split == train_split:
        raise check.error(f"split and train_split are both {split!r}: evaluate on data the heads were not trained on")
    limit = None if values["limit"] is None else check.integer("limit", values["limit"], minimum=1)
    k = check.integer("k", values["k"], minimum=1)
    if limit is not None and k >= limit:
        raise check.error(f"k is {k} but limit leaves {limit} rows per split: k must be below limit")
    anchors = _anchors(check, folder, document.get("anchors", {}), [m for own in dataset_models.values() for m in own])
    if anchors["name"] is not None and len(datasets) > 1:
        raise check.error("anchors.name names one dataset's anchors, and the recipe lists several datasets: drop anchors.name")
    if limit is not None and anchors["name"] is None and anchors["num"] is not None:
        num = anchors["num"]  # left out: the default, 1280 or every training row when there are fewer
        if num > limit:
            raise check.error(f"anchors.num is {num} but limit leaves {limit} training rows: set anchors.num to at most {limit}")

    return Recipe(
        path=path,
        description=check.text("description", values["description"]),
        datasets=list(dataset_models),
        models=models,
        dataset_models=dataset_models,
        split=split,
        train_split=train_split,
        limit=limit,
        projections=check.names("projections", values["projections"], list_projections(), "projection"),
        aggregations=check.names("aggregations", values["aggregations"], list_aggregations(), "aggregation"),
        transform=check.choice("transform", values["transform"], list_transforms(), "transform"),
        seeds=check.unique_list("seeds", values["seeds"], lambda key, v: check.integer(key, v, minimum=0), "seeds (integers >= 0)"),
        metrics=check.names("metrics", values["metrics"], list(METRICS), "metric"),
        k=k,
        anchors=anchors,
        baselines=[] if values["baselines"] == [] else check.names("baselines", values["baselines"], list(BASELINES), "baseline"),
        ridge=check.positive_number("ridge", values["ridge"]),
        head=_head(check, document.get("head", {})),
        dataset_options=_dataset_options(check, document.get("dataset_options", {})),
    )


def validate_recipe(recipe: Recipe, store: EmbeddingStore | None = None) -> None:
    """Check that every dataset and model name of a recipe resolves, without network or model work.

    Datasets go through ``resolve_dataset`` (aliases, hub ids, existing local paths) and models
    through ``resolve_model`` (timm and open_clip names against their registries; hub ids by their
    form, since whether a hub id exists can only be told online). With a ``store``, names saved with
    ``embed --name`` are accepted too and ``anchors.name`` must be a saved manifest.

    Raises:
        UsageError: the recipe file, the key, and the resolver's own one-line message.
    """
    from stitchcli.data import resolve_dataset
    from stitchcli.encoders import resolve_model

    from stitchcli.demo import DEMO_MODELS, PACKAGED_DATASETS, PACKAGED_PREFIX

    check = _Checker(recipe.path)
    options = recipe.dataset_options
    for i, name in enumerate(recipe.datasets):
        packaged = name.startswith(PACKAGED_PREFIX)
        try:
            if packaged and name[len(PACKAGED_PREFIX):] not in PACKAGED_DATASETS:
                raise UsageError(f"unknown packaged dataset {name!r}: use {' or '.join(PACKAGED_PREFIX + n for n in PACKAGED_DATASETS)}")
            if not packaged:
                resolve_dataset(
                    name,
                    input_column=options.get("input_column"),
                    label_column=options.get("label_column"),
                    revision=options.get("dataset_revision"),
                )
        except UsageError as exc:
            raise check.error(f"datasets[{i}]: {exc}") from None
        for j, model in enumerate(recipe.models_of(name)):
            if packaged and model.name in DEMO_MODELS:
                continue  # registered from the packaged assets when the sweep runs
            try:
                if store is None:
                    resolve_model(model.name, **model.options)
                else:
                    from stitchcli.embedding import resolve_model_spec

                    resolve_model_spec(store, model.name, **model.options)
            except UsageError as exc:
                where = f"datasets[{i}].models[{j}]" if model not in recipe.models else f"models[{recipe.models.index(model)}]"
                raise check.error(f"{where}: {exc}") from None
    if store is not None and recipe.anchors["name"] is not None:
        from stitchcli.anchors import load_anchor_manifest

        try:
            load_anchor_manifest(store, recipe.anchors["name"])
        except UsageError as exc:
            raise check.error(f"anchors.name: {exc}") from None


def list_recipes(folder: str | os.PathLike[str]) -> list[Path]:
    """Give the recipe files (``*.toml``) of a folder, sorted by name; empty if the folder is missing."""
    return sorted(Path(folder).glob("*.toml"))


def recipe_sweeps(
    recipe: Recipe,
    *,
    device: str = "auto",
    embed_batch_size: int | None = None,
    limit: int | None | str = "recipe",
    trust_remote_code: bool = False,
) -> list[tuple[list[ModelRef], Any]]:
    """Give one (models, StitchSettings) sweep per dataset of the recipe.

    Args:
        recipe: a loaded recipe.
        device, embed_batch_size: how to run (not part of a recipe).
        trust_remote_code: the command line's --trust-remote-code; never a recipe's to give, so that running
            someone's recipe cannot make stitchcli run a model's code.
        limit: ``"recipe"`` keeps the recipe's; an int or None (every row) replaces it.
    """
    from stitchcli.heads import HeadSettings
    from stitchcli.stitching import StitchSettings

    sweeps = []
    for dataset in recipe.datasets:
        settings = StitchSettings(
            dataset=dataset,
            split=recipe.split,
            train_split=recipe.train_split,
            limit=recipe.limit if limit == "recipe" else limit,  # type: ignore[arg-type]
            anchors=recipe.anchors.get("name"),
            num_anchors=recipe.anchors.get("num"),
            anchor_strategy=recipe.anchors.get("strategy") or "uniform",
            anchor_seed=recipe.anchors.get("seed") or 0,
            anchor_model=recipe.anchors.get("model"),
            projections=tuple(recipe.projections),
            aggregations=tuple(recipe.aggregations),
            transform=recipe.transform,
            seeds=tuple(recipe.seeds),
            head=HeadSettings(**recipe.head),
            metrics=tuple(recipe.metrics),
            k=recipe.k,
            baselines=tuple(recipe.baselines),
            ridge=recipe.ridge,
            dataset_options=dict(recipe.dataset_options),
            device=device,
            embed_batch_size=embed_batch_size,
            trust_remote_code=trust_remote_code,
        )
        settings.check()
        sweeps.append((list(recipe.models_of(dataset)), settings))
    return sweeps
