"""The registry of similarity measures: each named once, with its direction, invariances and cost.

A :class:`Measure` is computed from two :class:`~stitchcli.similarity.representation.Representation` objects,
which keep what a measure derives from one model's vectors (centring, neighbour lists, a Gram matrix) so that
comparing one model with many others prepares it once. ``measure(x, y)`` on plain arrays does the same for one
pair. Measures register themselves when their module is imported; :func:`get_measure` and
:func:`list_measures` import them all first.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stitchcli.errors import UsageError

if TYPE_CHECKING:
    from stitchcli.similarity.representation import ArrayLike, Representation

PairCache = dict
"""What two measures of one family share for one pair of representations (e.g. the cross-covariance)."""

Compare = Callable[..., float]
"""``compare(x: Representation, y: Representation, pair: PairCache, **options) -> float``."""

_MEASURE_MODULES = ("stitchcli.similarity.kernels", "stitchcli.similarity.neighbours", "stitchcli.similarity.geometry")
_ORDER = (
    "linear-cka", "unbiased-cka", "rbf-cka", "mutual-knn", "cknna", "svcca", "procrustes", "rsa", "jaccard", "mrr", "cosine",
)
"""The order of issue 23 and docs/SIMILARITY.md; a measure registered elsewhere follows these."""
_MEASURES: dict[str, Measure] = {}
_ALIASES: dict[str, str] = {}


@dataclass(frozen=True)
class Measure:
    """A named similarity (or distance) between two representations of the same N samples.

    Attributes:
        name: the registry and JSON name (``linear-cka``).
        title: a short human name for tables.
        compare: the prepared form, ``compare(x, y, pair, **options)`` on two Representations.
        higher_is_more_alike: False for a distance (``procrustes``).
        identical: the value of a representation against itself (1 for the similarities, 0 for a distance);
            the calibration scales against it.
        symmetric: whether swapping x and y gives the same value.
        invariant_to: the transformations of either input that leave the value unchanged.
        cost: time and memory, per representation (prepared once) and per pair.
        family: measures of one family share per-pair work (``cross``: the cross-covariance) and are
            computed together by the all-pairs loop.
        shared_space: the measure compares x_i with y_j directly, so both must live in the same coordinates
            (e.g. relative spaces on the same anchors); skipped on absolute latents.
        options: the keyword options and their defaults.
        function: a plain ``function(x, y, **options)`` on arrays where one exists already (eval's measures
            in :mod:`stitchcli.metrics`); else the prepared form is used on fresh Representations.
        aliases: other names accepted by :func:`get_measure` (eval's ``cka``).
        reference: where the definition comes from.
    """

    name: str
    title: str
    compare: Compare
    higher_is_more_alike: bool
    identical: float
    symmetric: bool
    invariant_to: str
    cost: str
    family: str
    shared_space: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    function: Callable[..., float] | None = None
    aliases: tuple[str, ...] = ()
    reference: str = ""

    def __call__(self, x: ArrayLike | Representation, y: ArrayLike | Representation, **options: Any) -> float:
        """Give the measure between x (N, p) and y (N, q) as a float (see the measure's options)."""
        from stitchcli.similarity.representation import Representation

        chosen = self.resolve_options(options)
        if self.function is not None and not isinstance(x, Representation) and not isinstance(y, Representation):
            return float(self.function(x, y, **chosen))
        rx = x if isinstance(x, Representation) else Representation(x, "x")
        ry = y if isinstance(y, Representation) else Representation(y, "y")
        check_rows(rx, ry)
        return self.compare(rx, ry, {}, **chosen)

    def resolve_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Give the measure's defaults updated with ``options``; UsageError for an option it does not take."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            takes = ", ".join(sorted(self.options)) or "no options"
            raise UsageError(f"measure {self.name!r} takes no option {', '.join(map(repr, unknown))}: it takes {takes}")
        return {**self.options, **options}

    def options_from(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Give the measure's defaults updated with those of ``options`` it takes (shared option sets)."""
        return {**self.options, **{key: value for key, value in options.items() if key in self.options}}


def register_measure(measure: Measure) -> Measure:
    """Add ``measure`` to the registry under its name and aliases; give it back."""
    for name in (measure.name, *measure.aliases):
        if name in _MEASURES or name in _ALIASES:
            raise ValueError(f"measure name {name!r} is registered twice")
    _MEASURES[measure.name] = measure
    for alias in measure.aliases:
        _ALIASES[alias] = measure.name
    return measure


def measure_options(compare: Compare) -> dict[str, Any]:
    """Give the keyword options (and defaults) of a compare function: its keyword-only parameters."""
    return {
        name: parameter.default
        for name, parameter in inspect.signature(compare).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }


def _load() -> None:
    for module in _MEASURE_MODULES:
        importlib.import_module(module)


def list_measures() -> list[str]:
    """Give the registered measure names: those of docs/SIMILARITY.md in its order, then any others."""
    _load()
    return sorted(_MEASURES, key=lambda name: (_ORDER.index(name) if name in _ORDER else len(_ORDER)))


def get_measure(name: str) -> Measure:
    """Give the measure registered as ``name`` (or one of its aliases); UsageError naming the known ones."""
    from stitchcli.relative import unknown_name

    _load()
    key = _ALIASES.get(name, name)
    if key not in _MEASURES:
        raise unknown_name("similarity measure", name, list(_MEASURES))
    return _MEASURES[key]


def takes_neighbours(names: Sequence[str]) -> bool:
    """Tell whether any of the measures ``names`` takes the neighbour count k (so k must be below the rows)."""
    return any("k" in get_measure(name).options for name in names)


def measure(x: ArrayLike, y: ArrayLike, name: str, **options: Any) -> float:
    """Give the measure ``name`` between x (N, p) and y (N, q), e.g. ``measure(x, y, "cknna", k=10)``."""
    return get_measure(name)(x, y, **options)


def check_rows(x: Representation, y: Representation) -> None:
    """Raise a UsageError unless both representations describe the same number of samples."""
    if x.rows != y.rows:
        raise UsageError(
            f"{x.name} has {x.rows} rows but {y.name} has {y.rows}: both must describe the same samples, row for row"
        )
