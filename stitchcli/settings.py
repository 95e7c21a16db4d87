"""Every setting of ``fit-head``, ``stitch``, ``eval`` and recipes, declared once.

Each field of :class:`HeadSettings`, :class:`DatasetOptions` and :class:`StitchSettings` carries an
:class:`Option` in its metadata: its flags and help, which commands take it, its recipe key, and what a valid
value is. The typer options of the commands (:mod:`stitchcli.cli.settings_options`), the recipe schema
(:mod:`stitchcli.recipes`) and :meth:`StitchSettings.check` are all derived from these declarations, so a new
setting is one field here plus the code that uses it.

The defaults (docs/METHOD.md §4 for the head): the projection set, transform and aggregation were chosen on
the validation part of the training split of the offline demo's real pairs, both directions
(benchmarks/stitching_defaults.py; docs/RESULTS.md §3): the product of centred cosine and Euclidean with
``mlp-sum`` did best on average and stays within 1.5 points of the best single projection on both pairs,
where the product of all four does not. The affine baseline's ridge was chosen the same way.

This module imports no torch: the command line reads it at start-up.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field, fields, replace
from functools import cache
from typing import Any, Callable, Collection, Iterator, Mapping, Sequence

from stitchcli.errors import UsageError, unknown_name

if typing.TYPE_CHECKING:
    from stitchcli.data.base import DatasetSpec

FIT_HEAD, STITCH, EVAL = "fit-head", "stitch", "eval"
ALL_COMMANDS = frozenset({FIT_HEAD, STITCH, EVAL})
SWEEPS = frozenset({STITCH, EVAL})

BASELINES: tuple[str, ...] = ("absolute", "translation", "affine")
TASKS: tuple[str, ...] = ("classification", "reconstruction")
TASK_HEAD_DEFAULTS: dict[str, dict[str, Any]] = {"reconstruction": {"batch_size": 64}}
"""Head settings whose default differs by task (applied unless given: :func:`with_task_defaults`). A
reconstruction decoder trains in batches of 64: at the demo's 300 training rows, 256 leaves two Adam steps an
epoch and the decoder is far from trained after 40 epochs (docs/RECONSTRUCTION.md §4)."""
METRICS: tuple[str, ...] = ("cka", "jaccard", "mrr", "cosine")
AUTO = "auto"
"""The bridge that is a choice among the others, made without labels (docs/BRIDGES.md)."""
SHARED = "shared"
"""The bridge through one generalised-Procrustes space of all the sweep's models (docs/BRIDGES.md)."""


@dataclass(frozen=True)
class Requirement:
    """What a valid value is, in words for the error message (``--epochs must be at least 1, not 0``)."""

    words: str
    holds: Callable[[Any], bool]


def at_least(minimum: int, unit: str = "") -> Requirement:
    """Give the requirement ``value >= minimum``."""
    return Requirement(f"at least {minimum}{unit}", lambda value: value >= minimum)


POSITIVE = Requirement("positive", lambda value: value > 0 and math.isfinite(value))
NOT_NEGATIVE = Requirement("0 or more", lambda value: value >= 0)


@dataclass(frozen=True)
class Option:
    """How one setting is given: on the command line, in a recipe, and what values it accepts.

    Attributes:
        flags: the command-line flags, long name first.
        help: the help text (the default is appended from the field's default, or ``shown_default``).
        commands: the commands that take it.
        recipe: its key in a recipe (``projections``, ``anchors.num``, ``head.epochs``); None: not in recipes.
        requirement: a range check of scalar values.
        choices: the registry of valid names (a callable, so registries load only when checked).
        every: for lists: what ``all`` stands for (default: ``choices``); ``none`` stands for the empty list
            when ``empty_ok``.
        empty_ok: a list may be empty (``none`` on the command line, ``[]`` in a recipe).
        shown_default: the default as the help shows it, when the field's default is None.
        panel: the group of options it is listed in by ``--help``.
        joined: a text that names several values comma-separated (``--input-column title,body``): on the command
            line it may be repeated like a list, its occurrences joined with commas.
    """

    flags: tuple[str, ...]
    help: str
    commands: frozenset[str] = ALL_COMMANDS
    recipe: str | None = None
    requirement: Requirement | None = None
    choices: Callable[[], Sequence[str]] | None = None
    every: Callable[[], Sequence[str]] | None = None
    empty_ok: bool = False
    shown_default: str | None = None
    panel: str = "Settings"
    joined: bool = False


def setting(default: Any, *flags: str, help: str, factory: bool = False, **option: Any) -> Any:
    """Give a dataclass field whose metadata declares the setting (see :class:`Option`)."""
    declared = Option(flags=flags, help=help, **option)
    if factory:
        return field(default_factory=default, metadata={"option": declared})
    return field(default=default, metadata={"option": declared})


# ----- the registries settings name (imported when a value is checked, not at start-up) -------------------


def _projections() -> list[str]:
    from stitchcli.relative import list_projections

    return list_projections()


def _aggregations() -> list[str]:
    from stitchcli.relative import list_aggregations

    return list_aggregations()


def _transforms() -> list[str]:
    from stitchcli.relative import list_transforms

    return list_transforms()


def _bridges() -> list[str]:
    from stitchcli.bridges import list_bridges

    return list_bridges()


def _bridge_choices() -> list[str]:
    return [*_bridges(), SHARED, AUTO]


def _anchor_strategies() -> list[str]:
    from stitchcli.anchors import list_anchor_strategies

    return list_anchor_strategies()


# ----- the declarations --------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadSettings:
    """How a head is built and trained (docs/METHOD.md §4 defaults); a ``--head`` file fixes all of them."""

    hidden: int = setting(512, "--hidden", help="Hidden layer size of the head.", recipe="head.hidden",
                          requirement=Requirement("a positive layer size", lambda v: v >= 1), panel="Head training")
    dropout: float = setting(0.1, "--dropout", help="Dropout of the head.", recipe="head.dropout",
                             requirement=Requirement("in [0, 1)", lambda v: 0.0 <= v < 1.0), panel="Head training")
    epochs: int = setting(40, "--epochs", help="Most training epochs (early stopping on the validation part).",
                          recipe="head.epochs", requirement=at_least(1), panel="Head training")
    lr: float = setting(1e-3, "--lr", help="Adam learning rate.", recipe="head.lr", requirement=POSITIVE, panel="Head training")
    batch_size: int = setting(256, "--batch-size", help="Head training batch size.", recipe="head.batch_size", requirement=POSITIVE, panel="Head training")
    weight_decay: float = setting(0.0, "--weight-decay", help="Adam weight decay.", recipe="head.weight_decay", requirement=NOT_NEGATIVE, panel="Head training")
    val_fraction: float = setting(0.1, "--val-fraction", help="Class-stratified part of the training split held out for early stopping.",
                                  recipe="head.val_fraction", requirement=Requirement("between 0 and 1 (exclusive)", lambda v: 0.0 < v < 1.0), panel="Head training")
    patience: int = setting(5, "--patience", help="Epochs without a better validation accuracy before stopping.",
                            recipe="head.patience", requirement=at_least(1, " epoch"), panel="Head training")

    def __post_init__(self) -> None:
        _check_fields(self)

    def to_dict(self) -> dict[str, Any]:
        """Give the settings as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeadSettings:
        """Give settings from a dict (unknown keys refused with the known ones named)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown head setting {', '.join(unknown)}: use some of {', '.join(sorted(known))}")
        return cls(**data)


@dataclass(frozen=True)
class DatasetOptions:
    """How a dataset's rows are read, as for ``embed`` (part of every cache key)."""

    input_column: str | None = setting(None, "--input-column", help="Input column(s); comma-separated text columns are joined.",
                                       recipe="dataset_options.input_column", panel="Data", joined=True)
    label_column: str | None = setting(None, "--label-column", help="Label column; 'none' reads the data without labels (enough for "
                                       "embed and similarity; inferred when no column holds labels).", recipe="dataset_options.label_column", panel="Data")
    dataset_revision: str | None = setting(None, "--dataset-revision", help="Hub revision of the dataset.",
                                           recipe="dataset_options.dataset_revision", panel="Data")

    def given(self) -> dict[str, str]:
        """Give the options that are set (name -> value)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_given(cls, given: Mapping[str, Any] | None) -> DatasetOptions:
        """Give the options :meth:`given` recorded (an anchor manifest's ``dataset_options``)."""
        return cls(**dict(given or {}))

    def resolve(self, name: str, split_paths: Mapping[str, str] | None = None) -> DatasetSpec:
        """Give the spec of dataset ``name`` read with these options (see :func:`stitchcli.data.resolve_dataset`)."""
        from stitchcli.data import resolve_dataset

        return resolve_dataset(name, input_column=self.input_column, label_column=self.label_column,
                               split_paths=dict(split_paths) if split_paths else None, revision=self.dataset_revision)


@dataclass(frozen=True)
class StitchSettings:
    """Everything that decides a stitching sweep besides the models.

    Attributes:
        dataset: as for ``embed`` (alias, hub id, local path, ``packaged:NAME``); given as its own argument.
        head: head architecture and training settings.
        data: how the dataset's rows are read.
        singles: add a row for every single projection besides the product (library only).
        The other attributes are the declared settings: see their ``Option`` help (``stitchcli stitch --help``).
    """

    dataset: str
    task: str = setting("classification", "--task", help="classification: heads predict the class; reconstruction: decoders rebuild "
                        "the input image (image datasets; rows report MSE, PSNR, SSIM and a pixel classifier's accuracy on the "
                        "reconstructions).", recipe="task", choices=lambda: TASKS, panel="Task")
    split: str = setting("test", "--split", "-s", help="Evaluation split (never used for training or model selection).",
                         commands=SWEEPS, recipe="split", panel="Data")
    train_split: str = setting("train", "--train-split", help="Split heads are trained on and anchors drawn from.", recipe="train_split", panel="Data")
    limit: int | None = setting(None, "--limit", help="Use the seeded class-stratified subset of N rows of each split (uniform without labels; as `embed --limit N`).",
                                recipe="limit", requirement=Requirement("a positive number of rows", lambda v: v >= 1), panel="Data")
    embed_seed: int = setting(0, "--embed-seed", help="embed's --seed: picks the --limit subset and seeds --weights random.",
                              requirement=Requirement("0 or more", lambda v: v >= 0), panel="Data")
    anchors: str | None = setting(None, "--anchors", help="Anchor manifest: a name saved by `stitchcli anchor`, or a manifest file.",
                                  recipe="anchors.name", shown_default="draw --num-anchors", panel="Anchors")
    num_anchors: int | None = setting(None, "--num-anchors", "-k", help="Anchors to draw from the training split.", recipe="anchors.num",
                                      requirement=Requirement("a positive number of anchors", lambda v: v >= 1),
                                      shown_default="1280, or every training row when fewer", panel="Anchors")
    anchor_strategy: str = setting("uniform", "--anchor-strategy", help="uniform, class-balanced, fps or kmeans (fps and kmeans choose by a model's "
                                   "embeddings: --anchor-model; fit-head: its --model).", recipe="anchors.strategy", choices=_anchor_strategies, panel="Anchors")
    anchor_seed: int = setting(0, "--anchor-seed", help="Seed of the anchor draw.", recipe="anchors.seed", requirement=NOT_NEGATIVE, panel="Anchors")
    anchor_model: str | None = setting(None, "--anchor-model", help="fps/kmeans: which of the models' embeddings choose the anchors.",
                                       commands=SWEEPS, recipe="anchors.model", panel="Anchors")
    projections: tuple[str, ...] = setting(("cosine", "euclidean"), "--projection", "-p", help="Comma-separated projections (cosine, euclidean, l1, linf), or all.",
                                           recipe="projections", choices=_projections, panel="Product space")
    aggregations: tuple[str, ...] = setting(("mlp-sum",), "--aggregation", "--aggregations", "-a",
                                            help="Comma-separated aggregations (concat, sum, mlp-sum, self-attention), or all; fit-head takes one.", recipe="aggregations", choices=_aggregations, panel="Product space")
    transform: str = setting("center", "--transform", help="Absolute transform fitted on each model's anchors: none, center, standardize, l2.", recipe="transform",
                             choices=_transforms, panel="Product space")
    seeds: tuple[int, ...] = setting((0, 1, 2), "--seeds", help="Comma-separated head seeds; results are mean ± std over them.",
                                     commands=SWEEPS, recipe="seeds", requirement=NOT_NEGATIVE, panel="Product space")
    head: HeadSettings = field(default_factory=HeadSettings)
    baselines: tuple[str, ...] = setting(BASELINES, "--baselines", help="Baselines beside the relative rows: absolute, translation "
                                         "(orthogonal), affine (ridge); all, or none.", commands=SWEEPS, recipe="baselines",
                                         choices=lambda: BASELINES, empty_ok=True, panel="Baselines")
    ridge: float = setting(0.1, "--ridge", help="Ridge strength of the affine baseline, relative to the anchors' variance.",
                           commands=SWEEPS, recipe="ridge", requirement=Requirement("a positive number", POSITIVE.holds), panel="Baselines")
    # The default (docs/BRIDGES.md, "The default"): auto beside the paper's rows and the baselines, choosing between
    # the affine map and its refinement from unlabeled rows (the cheap pair that holds the measured best rows).
    bridges: tuple[str, ...] = setting((AUTO,), "--bridge", "--bridges", help="Comma-separated bridges (orthogonal, affine, inverse-relative, "
                                       "kernel, refine, refine-coral, refine-orthogonal), all, shared, auto, or none: a row each, the encoder's "
                                       "latents mapped into the decoder's for its absolute head. shared: one space for all the models "
                                       "(N maps, not N²). auto chooses among the other bridges given (alone: affine, refine, refine-coral) by held-out "
                                       "anchors, without labels.", commands=SWEEPS, recipe="bridges",
                                       choices=_bridge_choices, every=_bridges, empty_ok=True, panel="Bridges")
    metrics: tuple[str, ...] = setting(METRICS, "--metrics", help="Comma-separated similarity measures (cka, jaccard, mrr, cosine), all, or none.",
                                       commands=frozenset({EVAL}), recipe="metrics", choices=lambda: METRICS, empty_ok=True, panel="Similarity")
    k: int = setting(10, "--k", help="Neighbours for Jaccard@k and MRR@k.", commands=frozenset({EVAL}), recipe="k", requirement=at_least(1), panel="Similarity")
    data: DatasetOptions = field(default_factory=DatasetOptions)
    device: str = setting("auto", "--device", help="auto, cpu, cuda, cuda:N or mps.", panel="Running")
    embed_batch_size: int | None = setting(None, "--embed-batch-size", help="Batch size when missing embeddings are computed.",
                                           requirement=POSITIVE, shown_default="embed's", panel="Running")
    trust_remote_code: bool = setting(False, "--trust-remote-code", help="Let a transformers model run the Python code it ships "
                                      "(auto_map in its config.json). Off, such a model is refused: read its code first. Not part of any cache key.", panel="Running")
    singles: bool = True

    def check_values(self) -> None:
        """Refuse a value that its declaration does not accept (an unknown name, a count out of range), and
        nothing else: for a command that uses only some settings (``similarity``), where :meth:`check`'s rules
        between settings (a training split apart from the evaluated one) need not hold."""
        _check_fields(self)

    def check(self, where: Callable[[Declared], str] | None = None, *, heads: bool = True) -> None:
        """Refuse settings that cannot be right, before any work (UsageError naming the option).

        ``where`` names a setting in messages (default: its flag; recipes name their keys). ``heads`` False
        (``similarity``: no head is trained) leaves out the rules that keep evaluation data apart from the
        training split; the anchors' own rules still hold.
        """
        from stitchcli.anchors import STRATEGIES, is_evaluation_split

        name = where or (lambda declared: declared.flag)
        _check_fields(self, name)
        if STRATEGIES[self.anchor_strategy].needs_embeddings and self.anchor_model is None and self.anchors is None:
            raise UsageError(f"{name(by_name('anchor_strategy'))} {self.anchor_strategy} chooses anchors from a model's embeddings: "
                             f"name one of the models with {name(by_name('anchor_model'))}")
        if not heads:
            return
        if is_evaluation_split(self.train_split):
            raise UsageError(f"{name(by_name('train_split'))} {self.train_split!r} looks like evaluation data: heads and anchors come from a training split")
        if self.split == self.train_split:
            raise UsageError(f"{name(by_name('split'))} and {name(by_name('train_split'))} are both {self.split!r}: "
                             "evaluate on data the heads were not trained on")

    def projection_sets(self) -> list[tuple[str, ...]]:
        """Give the projection sets with rows: each projection alone (when ``singles``), then the product."""
        sets = [(name,) for name in self.projections] if self.singles or len(self.projections) == 1 else []
        if len(self.projections) > 1:
            sets.append(tuple(self.projections))
        return sets

    def to_dict(self) -> dict[str, Any]:
        """Give the JSON-ready settings (as ``stitch --json`` reports them)."""
        document = dataclasses.asdict(self)
        document["dataset_options"] = document.pop("data")
        return document


# ----- reading the declarations ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Declared:
    """One declared setting: its option, its parameter name and where it lives in :class:`StitchSettings`.

    Attributes:
        name: the parameter name (``epochs``, ``projection``: the long flag with ``-`` as ``_``).
        path: the attribute path in StitchSettings (``head.epochs``, ``projections``).
        type: the field's type (``int``, ``int | None``, ``tuple[str, ...]``…).
        default: the field's default.
        option: the declaration.
    """

    name: str
    path: str
    type: Any
    default: Any
    option: Option

    @property
    def flag(self) -> str:
        """The long flag (``--epochs``)."""
        return self.option.flags[0]

    @property
    def is_list(self) -> bool:
        """Whether the value is a tuple (comma-separated on the command line, a list in recipes)."""
        return typing.get_origin(self.type) is tuple

    @property
    def repeatable(self) -> bool:
        """Whether the command-line option may be repeated, its occurrences read as one comma-separated list."""
        return self.is_list or self.option.joined

    @property
    def item_type(self) -> type:
        """The type of one value (of each item, for lists); Optional stripped."""
        args = [a for a in typing.get_args(self.type) if a is not type(None) and a is not Ellipsis]
        return args[0] if args else self.type

    @property
    def optional(self) -> bool:
        """Whether None is a valid value (``int | None``)."""
        return type(None) in typing.get_args(self.type)

    def get(self, settings: StitchSettings) -> Any:
        """Give this setting's value in ``settings``."""
        return attribute(settings, self.path)

    def expand(self, names: Sequence[Any]) -> tuple[Any, ...]:
        """Give a list with ``all`` and ``none`` resolved (``names`` as given, e.g. split at commas)."""
        every = self.option.every or self.option.choices
        if "all" in names and every is not None:  # `all` may come with more (--bridge all,auto)
            expanded = [item for name in names for item in (every() if name == "all" else [name])]
            return tuple(dict.fromkeys(expanded))
        if list(names) == ["none"] and self.option.empty_ok:
            return ()
        if "none" in names and self.option.empty_ok:
            raise UsageError(f"{self.flag} none means no {self.kind}: give it alone, not with {', '.join(n for n in names if n != 'none')}")
        return tuple(names)

    @property
    def kind(self) -> str:
        """What one value is called in messages (``projection``, ``anchor strategy``)."""
        last = self.path.rsplit(".", 1)[-1]
        return (last[:-1] if self.is_list and last.endswith("s") else last).replace("_", " ")

    def problem(self, value: Any, where: str) -> str | None:
        """Give the one-line message saying what is wrong with ``value`` given as ``where``, or None when valid."""
        if value is None:
            return None
        if self.is_list:
            if not value and not self.option.empty_ok:
                return f"{where} lists nothing: give at least one value"
            if len(set(value)) != len(value):
                return f"{where} lists a value twice: {','.join(map(str, value))}"
            items = list(value)
        else:
            items = [value]
        for item in items:
            if self.option.choices is not None and item not in self.option.choices():
                return f"{where}: {unknown_name(self.kind, item, list(self.option.choices()))}"
            requirement = self.option.requirement
            if requirement is not None and not requirement.holds(item):
                return f"{where} must be {requirement.words}, not {item}"
        return None


def attribute(instance: Any, path: str) -> Any:
    """Give the attribute at a dotted path (``head.epochs``)."""
    for part in path.split("."):
        instance = getattr(instance, part)
    return instance


@cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _walk(cls: type, prefix: str = "") -> Iterator[Declared]:
    hints = _type_hints(cls)
    for f in fields(cls):
        option = f.metadata.get("option")
        if option is not None:
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            name = option.flags[0].lstrip("-").replace("-", "_")
            yield Declared(name, prefix + f.name, hints[f.name], default, option)
        elif dataclasses.is_dataclass(hints[f.name]):
            yield from _walk(hints[f.name], f"{prefix}{f.name}.")


@cache
def declared_settings() -> tuple[Declared, ...]:
    """Give every declared setting of StitchSettings, its head and dataset options included."""
    return tuple(_walk(StitchSettings))


def settings_of(command: str) -> list[Declared]:
    """Give the settings a command takes, in declaration order."""
    return [d for d in declared_settings() if command in d.option.commands]


def by_name(name: str) -> Declared:
    """Give the declared setting with this parameter name (``epochs``, ``projection``)."""
    for declared in declared_settings():
        if declared.name == name:
            return declared
    raise KeyError(name)


def _check_fields(instance: Any, where: Callable[[Declared], str] = lambda declared: declared.flag) -> None:
    """Refuse a value of ``instance`` (HeadSettings or StitchSettings, its nested settings included) that its
    declaration does not accept; ``where`` names the setting in the message."""
    prefix = {HeadSettings: "head.", DatasetOptions: "data."}.get(type(instance), "")
    for declared in declared_settings():
        if declared.path.startswith(prefix):
            problem = declared.problem(attribute(instance, declared.path[len(prefix):]), where(declared))
            if problem is not None:
                raise UsageError(problem)


def build_settings(dataset: str, values: Mapping[str, Any], base: StitchSettings | None = None) -> StitchSettings:
    """Give StitchSettings with the declared settings in ``values`` (parameter name -> typed value) set.

    Values are typed already (tuples for lists, ``all``/``none`` expanded); the rest keep ``base``'s
    values (default: the defaults). Nothing is checked here beyond what the dataclasses check themselves;
    call :meth:`StitchSettings.check`.
    """
    base = base or StitchSettings(dataset=dataset)
    groups: dict[str, dict[str, Any]] = {"": {"dataset": dataset}, "head.": {}, "data.": {}}
    for name, value in values.items():
        declared = by_name(name)
        prefix, _, attribute = declared.path.rpartition(".")
        groups[prefix + "." if prefix else ""][attribute] = value
    return replace(base, head=replace(base.head, **groups["head."]), data=replace(base.data, **groups["data."]), **groups[""])


def with_task_defaults(settings: StitchSettings, explicit: Collection[str] = ()) -> StitchSettings:
    """Give ``settings`` with the head defaults of its task (:data:`TASK_HEAD_DEFAULTS`) where not in ``explicit``.

    ``explicit``: the parameter names the user gave (a value given is kept even when it equals the default).
    """
    defaults = {name: value for name, value in TASK_HEAD_DEFAULTS.get(settings.task, {}).items()
                if name not in explicit and getattr(settings.head, name) == by_name(name).default}
    return replace(settings, head=replace(settings.head, **defaults)) if defaults else settings


def differing(settings: StitchSettings, other: StitchSettings, names: Sequence[str]) -> list[str]:
    """Give the flags of the settings named in ``names`` whose values differ between the two settings, in declaration order
    (``names`` may be a set: the message must not depend on its order)."""
    return [d.flag for d in declared_settings() if d.name in names and d.get(settings) != d.get(other)]
