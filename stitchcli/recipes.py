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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from stitchcli.errors import UsageError
from stitchcli.models import MODEL_OPTIONS as MODEL_OPTION_KEYS
from stitchcli.models import ModelRef
from stitchcli.settings import Declared, StitchSettings, build_settings, declared_settings, with_task_defaults

if TYPE_CHECKING:
    from stitchcli.store import EmbeddingStore

ALL = "all"
STRUCTURE_KEYS = ("description", "datasets", "dataset", "models")
"""The keys that describe what a recipe runs on; every other key is a declared setting (stitchcli.settings)."""
_MIN_MODELS = 2


def recipe_settings() -> dict[str, Declared]:
    """Give recipe key (``projections``, ``anchors.num``, ``head.epochs``) -> the declared setting it sets."""
    return {d.option.recipe: d for d in declared_settings() if d.option.recipe is not None}


@dataclass(frozen=True)
class Recipe:
    """A checked recipe.

    Attributes:
        path: the file it was read from.
        description: its free text.
        datasets: the dataset names, in order.
        models: the top-level models (empty when every dataset lists its own).
        dataset_models: dataset name -> the models swept on it.
        settings: the sweep settings (every default filled in) with the first dataset; each dataset's
            sweep is these settings with its own dataset (:func:`recipe_sweeps`).
        given: the recipe keys the file sets, with their values as read.
    """

    path: Path
    description: str
    datasets: list[str]
    models: list[ModelRef]
    dataset_models: dict[str, list[ModelRef]]
    settings: StitchSettings
    given: dict[str, Any]

    def model_names(self) -> list[str]:
        """Give every model name the recipe lists, in order, each once."""
        return list(dict.fromkeys(model.name for own in self.dataset_models.values() for model in own))

    def models_of(self, dataset: str) -> list[ModelRef]:
        """Give the models swept on ``dataset``."""
        return list(self.dataset_models[dataset])


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


def _setting(check: _Checker, key: str, value: Any, declared: Declared) -> Any:
    """Give the typed value of one declared setting as a recipe writes it; errors name the key."""
    item_type = declared.item_type
    if declared.is_list:
        if value == ALL and (declared.option.every or declared.option.choices) is not None:
            return declared.expand([ALL])
        if value == [] and declared.option.empty_ok:
            return ()
        read_item = check.integer if item_type is int else check.string
        what = "integers" if item_type is int else f'{declared.kind} names (or "{ALL}")'
        return declared.expand(check.unique_list(key, value, read_item, what))
    if item_type is bool:
        if not isinstance(value, bool):
            raise check.fail(key, "true or false", value)
        return value
    if item_type is int:
        return check.integer(key, value)
    if item_type is float:
        return check.number(key, value)
    return check.string(key, value)


def _settings(check: _Checker, folder: Path, document: Mapping[str, Any]) -> dict[str, Any]:
    """Give parameter name -> typed value of every declared setting the recipe sets (unknown keys refused)."""
    by_key = recipe_settings()
    tables = sorted({key.split(".")[0] for key in by_key if "." in key})
    check.known_keys(document, (*STRUCTURE_KEYS, *(key for key in by_key if "." not in key), *tables))
    values: dict[str, Any] = {}
    for table in tables:
        if table in document:
            leaves = tuple(key.split(".", 1)[1] for key in by_key if key.startswith(table + "."))
            check.known_keys(check.table(table, document[table]), leaves, prefix=f"{table}.")
    for key, declared in by_key.items():
        table, _, leaf = key.rpartition(".")
        source = document.get(table, {}) if table else document
        if leaf not in source:
            continue
        value = _setting(check, key, source[leaf], declared)
        problem = declared.problem(value, key)
        if problem is not None:
            raise check.error(problem)
        values[declared.name] = value
    for name in ("anchors", "anchor_model"):  # names written ./x in a recipe are relative to its folder
        if name in values:
            values[name] = _from_recipe_folder(values[name], folder)
    return values


def _check_anchor_keys(check: _Checker, document: Mapping[str, Any], settings: StitchSettings, models: list[ModelRef], datasets: int) -> None:
    """Refuse anchor keys that contradict each other or the recipe's models and datasets."""
    from stitchcli.anchors import STRATEGIES

    table = document.get("anchors", {})
    if "name" in table:
        chosen = [k for k in ("num", "strategy", "seed", "model") if k in table]
        if chosen:
            raise check.error(f"anchors.name names saved anchors: drop anchors.{', anchors.'.join(chosen)} (they describe a new choice)")
        if datasets > 1:
            raise check.error("anchors.name names one dataset's anchors, and the recipe lists several datasets: drop anchors.name")
        return
    if STRATEGIES[settings.anchor_strategy].needs_embeddings:
        names = [model.name for model in models]
        if settings.anchor_model not in names:
            raise check.error(
                f"anchors.strategy {settings.anchor_strategy!r} chooses rows from a model's embeddings: "
                f"set anchors.model to one of the recipe's models ({', '.join(names)})"
            )
    elif settings.anchor_model is not None:
        needing = [name for name, strategy in STRATEGIES.items() if strategy.needs_embeddings]
        raise check.error(f"anchors.model applies to the {' and '.join(needing)} strategies, not {settings.anchor_strategy!r}: drop it")
    if settings.limit is not None and settings.num_anchors is not None and settings.num_anchors > settings.limit:
        raise check.error(f"anchors.num is {settings.num_anchors} but limit leaves {settings.limit} training rows: set anchors.num to at most {settings.limit}")


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

    The schema is the declared settings (:mod:`stitchcli.settings`: each setting's ``recipe`` key) plus the
    structure keys (description, datasets or dataset, models). Names are checked against the registries
    (projections, aggregations, transforms, metrics, anchor strategies); datasets and models only by
    :func:`validate_recipe`.

    Raises:
        UsageError: a missing file, invalid TOML (with its line), an unknown key (with the close
            match), a value of the wrong type or range, an empty or duplicated list, an unknown name.
    """
    path = Path(path)
    document = _read_toml(path)
    check = _Checker(path)
    folder = path.absolute().parent
    values = _settings(check, folder, document)
    datasets = _datasets(check, folder, document)
    if "models" not in document and any(own is None for _, own in datasets):
        raise check.error(f"models is missing: list at least {_MIN_MODELS} models, models = [\"A\", \"B\"]")
    models = _models(check, folder, document["models"]) if "models" in document else []
    if models and all(own is not None for _, own in datasets):  # it would be read by no dataset, silently
        raise check.error("models is used by no dataset: every entry of datasets lists its own models; "
                          "drop the top-level models, or drop models from a dataset entry that should use it")
    dataset_models = {name: own if own is not None else models for name, own in datasets}
    settings = build_settings(datasets[0][0], values)
    _check_anchor_keys(check, document, settings, [m for own in dataset_models.values() for m in own], len(datasets))
    try:
        settings.check(where=lambda declared: str(declared.option.recipe))
    except UsageError as exc:
        raise check.error(str(exc)) from None
    if settings.limit is not None and settings.k >= settings.limit:
        raise check.error(f"k is {settings.k} but limit leaves {settings.limit} rows per split: k must be below limit")
    return Recipe(
        path=path,
        description=check.text("description", document.get("description", "")),
        datasets=list(dataset_models),
        models=models,
        dataset_models=dataset_models,
        settings=settings,
        given=values,
    )


def validate_recipe(recipe: Recipe, store: EmbeddingStore | None = None) -> None:
    """Check that every dataset and model name of a recipe resolves, without network or model work.

    Datasets go through :func:`stitchcli.data.resolve_dataset` (aliases, hub ids, existing local paths) and models
    through ``resolve_model`` (timm and open_clip names against their registries; hub ids by their
    form, since whether a hub id exists can only be told online). With a ``store``, names saved with
    ``embed --name`` are accepted too and ``anchors.name`` must be a saved manifest.

    Raises:
        UsageError: the recipe file, the key, and the resolver's own one-line message.
    """
    from stitchcli.encoders import resolve_model

    from stitchcli.assets import PACKAGED_MODELS
    from stitchcli.data.packaged import PACKAGED_DATASETS, PACKAGED_PREFIX

    check = _Checker(recipe.path)
    options = recipe.settings.data
    for i, name in enumerate(recipe.datasets):
        packaged = name.startswith(PACKAGED_PREFIX)
        try:
            if packaged and name[len(PACKAGED_PREFIX):] not in PACKAGED_DATASETS:
                raise UsageError(f"unknown packaged dataset {name!r}: use {' or '.join(PACKAGED_PREFIX + n for n in PACKAGED_DATASETS)}")
            if not packaged:
                options.resolve(name)
        except UsageError as exc:
            raise check.error(f"datasets[{i}]: {exc}") from None
        for j, model in enumerate(recipe.models_of(name)):
            if packaged and model.name in PACKAGED_MODELS:
                continue  # registered from the packaged assets when the sweep runs
            try:
                if store is None:
                    resolve_model(model.name, **model.options)
                else:
                    from stitchcli.embedding import resolve_model_spec

                    resolve_model_spec(store, model)
            except UsageError as exc:
                where = f"datasets[{i}].models[{j}]" if model not in recipe.models else f"models[{recipe.models.index(model)}]"
                raise check.error(f"{where}: {exc}") from None
    if store is not None and recipe.settings.anchors is not None:
        from stitchcli.anchors import load_anchor_manifest

        try:
            load_anchor_manifest(store, recipe.settings.anchors)
        except UsageError as exc:
            raise check.error(f"anchors.name: {exc}") from None


def list_recipes(folder: str | os.PathLike[str]) -> list[Path]:
    """Give the recipe files (``*.toml``) of a folder, sorted by name; empty if the folder is missing."""
    return sorted(Path(folder).glob("*.toml"))


def recipe_sweeps(recipe: Recipe, runtime: Mapping[str, Any] | None = None, *, limit: int | None | str = "recipe") -> list[tuple[list[ModelRef], StitchSettings]]:
    """Give one (models, StitchSettings) sweep per dataset of the recipe.

    Args:
        recipe: a loaded recipe.
        runtime: settings a recipe does not hold (parameter name -> value: device, embed_batch_size,
            trust_remote_code, embed_seed), as the command line gave them. ``trust_remote_code`` is never a
            recipe's to give, so that running someone's recipe cannot make stitchcli run a model's code.
        limit: ``"recipe"`` keeps the recipe's; an int or None (every row) replaces it.
    """
    overrides = dict(runtime or {})
    refused = sorted(name for name in overrides if recipe_key_of(name) is not None)
    if refused:
        raise UsageError(f"{', '.join(refused)} belong in the recipe, not beside it")
    base = recipe.settings if limit == "recipe" else replace(recipe.settings, limit=limit)
    sweeps = []
    for dataset in recipe.datasets:
        settings = with_task_defaults(build_settings(dataset, overrides, base))
        settings.check()
        sweeps.append((list(recipe.models_of(dataset)), settings))
    return sweeps


def recipe_key_of(name: str) -> str | None:
    """Give the recipe key of a declared setting (parameter name), or None when recipes do not hold it."""
    from stitchcli.settings import by_name

    return by_name(name).option.recipe
