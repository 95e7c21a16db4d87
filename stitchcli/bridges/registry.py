"""The bridge registry and the fitted-bridge API shared by every family.

A *bridge* maps an encoder's latents into a decoder's absolute latent space, so that the decoder's absolute
head reads them. It is fitted on the anchors (the same training rows embedded by both models) and, where the
bridge says it uses them, on unlabeled training rows of each model taken as two unordered sets: nothing of
the pairing of those rows is used, and no label ever is.

    from stitchcli.bridges import fit_bridge, load_bridge

    bridge = fit_bridge("affine", source_anchors, target_anchors)       # (k, Ds), (k, Dt)
    mapped = bridge(source_test)                                          # (N, Ds) -> (N, Dt), float32
    tensors, config = bridge.state()                                      # safetensors + JSON
    same = load_bridge(tensors, config)

A family registers a fitting function with :func:`register_bridge`; what it returns is a
:class:`FittedBridge` of some registered *form* (the stored shape of a fitted map: ``affine``,
``inverse-relative``, ``kernel``), so that several bridges can share one form (an orthogonal, an affine
and a refined map are all affine maps once fitted).
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

import torch

from stitchcli.errors import UsageError

BRIDGE_FORMAT = 1
"""Version of the stored state of a fitted bridge (bumped when a form's tensors or config change)."""

TRANSFORMATION_CLASSES = ("similarity", "affine", "none")
"""What a bridge can claim to stitch exactly: ``similarity`` = x -> s·xQ + t (Q orthogonal, s > 0),
``affine`` = x -> xA + t (A invertible), ``none`` = no exactness claim."""


class FittedBridge:
    """A fitted map from an encoder's latent space into a decoder's, and the config that says what it is.

    Subclasses are *forms*: they hold float64 tensors, implement :meth:`_map` on float64 input, and give
    their tensors back through :meth:`tensors` and :meth:`from_state` (registered with :func:`register_form`).

    Attributes:
        config: JSON-able: ``format``, ``bridge`` (the registry name it was fitted under), ``form``,
            ``source_dim``, ``target_dim``, ``options`` and ``fit`` (what fitting saw and did).
    """

    form: ClassVar[str] = ""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    @property
    def name(self) -> str:
        """The registry name the bridge was fitted under."""
        return str(self.config["bridge"])

    @property
    def source_dim(self) -> int:
        """The encoder's latent size."""
        return int(self.config["source_dim"])

    @property
    def target_dim(self) -> int:
        """The decoder's latent size."""
        return int(self.config["target_dim"])

    def __call__(self, x: torch.Tensor, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Give ``x`` (N, source dim) mapped into the decoder's space, (N, target dim), computed in float64."""
        x = torch.as_tensor(x)
        if x.ndim != 2 or x.shape[1] != self.source_dim:
            raise UsageError(
                f"bridge {self.name!r} maps {self.source_dim}-d rows, got an array of shape {tuple(x.shape)}: "
                "feed it the encoder it was fitted on"
            )
        return self._map(x.to(torch.float64)).to(dtype)

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def tensors(self) -> dict[str, torch.Tensor]:
        """Give the tensors that define the map (float64, contiguous, on the CPU)."""
        raise NotImplementedError

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Give (tensors, JSON-able config): what :func:`load_bridge` needs to rebuild this bridge."""
        tensors = {name: value.detach().to("cpu", torch.float64).contiguous() for name, value in self.tensors().items()}
        return tensors, dict(self.config)

    @classmethod
    def from_state(cls, tensors: Mapping[str, torch.Tensor], config: dict[str, Any]) -> FittedBridge:
        """Give the bridge whose :meth:`state` was (tensors, config)."""
        raise NotImplementedError


_FORMS: dict[str, type[FittedBridge]] = {}


def register_form(cls: type[FittedBridge]) -> type[FittedBridge]:
    """Give ``cls`` back after registering it as the loader of its ``form``."""
    if not cls.form or cls.form in _FORMS:
        raise ValueError(f"bridge form {cls.form!r} is empty or already registered")
    _FORMS[cls.form] = cls
    return cls


@dataclass(frozen=True)
class FitData:
    """What a bridge is fitted on, checked by :func:`fit_bridge`: float64 CPU tensors.

    Attributes:
        source_anchors: (k, Ds) the anchors embedded by the encoder.
        target_anchors: (k, Dt) the same anchors, in the same order, embedded by the decoder's model.
        source_rows: (Ns, Ds) unlabeled training rows of the encoder, an unordered set (None unless the
            bridge uses rows).
        target_rows: (Nt, Dt) unlabeled training rows of the decoder's model, likewise.
        seed: seed of whatever the fit draws at random.
    """

    source_anchors: torch.Tensor
    target_anchors: torch.Tensor
    source_rows: torch.Tensor | None = None
    target_rows: torch.Tensor | None = None
    seed: int = 0


BridgeFitter = Callable[..., FittedBridge]


@dataclass(frozen=True)
class Bridge:
    """A registered bridge.

    Attributes:
        name: registry name.
        fit: ``fit(data: FitData, **options)``, giving a :class:`FittedBridge` (its config is completed by
            :func:`fit_bridge`).
        uses_rows: whether it needs the unlabeled training rows of both models.
        exact_for: the transformation class it stitches exactly (see :data:`TRANSFORMATION_CLASSES`).
        exact_options: the options under which that claim holds (for example no ridge), merged over defaults.
        defaults: its options and their defaults.
        summary: one line for listings.
        source: where the method comes from (paper, arXiv id).
    """

    name: str
    fit: BridgeFitter
    uses_rows: bool
    exact_for: str
    summary: str
    source: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    exact_options: Mapping[str, Any] = field(default_factory=dict)


_BRIDGES: dict[str, Bridge] = {}


def register_bridge(
    name: str,
    *,
    uses_rows: bool = False,
    exact_for: str | None = None,
    source: str = "",
    exact_options: Mapping[str, Any] | None = None,
    extends: str | None = None,
) -> Callable[[BridgeFitter], BridgeFitter]:
    """Give a decorator that registers a fitting function as bridge ``name``.

    The function takes a :class:`FitData` and the bridge's options as keyword-only parameters; their defaults
    are recorded in :attr:`Bridge.defaults`, and unknown options are refused by :func:`fit_bridge`.

    With ``extends``, the new bridge is that registered bridge plus a step of its own: it takes the base's
    options as well as its own (they reach the function in its ``**options``, see :func:`base_options`), uses
    rows if either does, and keeps the base's exactness claim unless it states one.
    """
    base = _BRIDGES[extends] if extends is not None else None
    claim = exact_for or (base.exact_for if base is not None else "none")
    if claim not in TRANSFORMATION_CLASSES:
        raise ValueError(f"exact_for must be one of {TRANSFORMATION_CLASSES}, not {exact_for!r}")

    def decorator(fit: BridgeFitter) -> BridgeFitter:
        if name in _BRIDGES:
            raise ValueError(f"bridge {name!r} is already registered")
        parameters = inspect.signature(fit).parameters.values()
        defaults = dict(base.defaults) if base is not None else {}
        defaults.update({p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY})
        inherited = dict(base.exact_options) if base is not None and exact_for is None else {}
        summary = (inspect.getdoc(fit) or name).splitlines()[0]
        _BRIDGES[name] = Bridge(
            name, fit, uses_rows or (base is not None and base.uses_rows), claim, summary, source, defaults,
            {**inherited, **(exact_options or {})},
        )
        return fit

    return decorator


def base_options(base: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Give the options of registered bridge ``base`` taken from ``options``, its defaults filling the gaps
    (for a bridge registered with ``extends=base``, whose function receives them in ``**options``)."""
    defaults = _BRIDGES[base].defaults
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(f"bridge {base!r} has no option {', '.join(unknown)}")
    return {key: options.get(key, value) for key, value in defaults.items()}


def _load_families() -> None:
    # The families register themselves on import; importing them here (not in __init__) keeps
    # `import stitchcli.bridges` free of torch for the command line.
    from stitchcli.bridges import linear  # noqa: F401  (first: its bridges lead the listings)
    from stitchcli.bridges import inverse_relative, kernel, refine  # noqa: F401


def list_bridges() -> list[str]:
    """Give the registered bridge names, in registration order."""
    _load_families()
    return list(_BRIDGES)


def get_bridge(name: str) -> Bridge:
    """Give the registered bridge ``name``.

    Raises:
        UsageError: no bridge has that name (the message names the close one and all known ones).
    """
    from stitchcli.relative import unknown_name

    _load_families()
    found = _BRIDGES.get(name)
    if found is None:
        raise unknown_name("bridge", name, list(_BRIDGES))
    return found


def as_latents(x: Any, what: str, *, dim: int | None = None) -> torch.Tensor:
    """Give ``x`` as a 2-D finite float64 CPU tensor; UsageError naming ``what`` otherwise."""
    tensor = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if tensor.ndim != 2:
        raise UsageError(f"{what} must be a 2-D array (rows × latent size), got shape {tuple(tensor.shape)}")
    if dim is not None and tensor.shape[1] != dim:
        raise UsageError(f"{what} must have {dim} columns like the anchors of the same model, got {tensor.shape[1]}")
    if not bool(torch.isfinite(tensor).all()):
        raise UsageError(f"{what} hold NaN or infinite values: embed them again")
    return tensor


def fit_bridge(
    name: str,
    source_anchors: Any,
    target_anchors: Any,
    *,
    source_rows: Any = None,
    target_rows: Any = None,
    seed: int = 0,
    **options: Any,
) -> FittedBridge:
    """Give bridge ``name`` fitted on the anchors (and, if it uses them, the unlabeled rows of both models).

    Args:
        name: a registered bridge (see :func:`list_bridges`).
        source_anchors: (k, Ds) the anchors embedded by the encoder.
        target_anchors: (k, Dt) the same anchors, in the same order, embedded by the decoder's model.
        source_rows: (Ns, Ds) unlabeled training rows of the encoder, taken as an unordered set; never the
            evaluation split. Bridges that do not use rows ignore them.
        target_rows: (Nt, Dt) unlabeled training rows of the decoder's model, likewise.
        seed: seed of whatever the fit draws at random.
        options: the bridge's options (see ``get_bridge(name).defaults``).

    Raises:
        UsageError: unknown bridge or option, anchors that do not pair up, bad shapes, missing rows.
    """
    bridge = get_bridge(name)
    unknown = sorted(set(options) - set(bridge.defaults))
    if unknown:
        known = ", ".join(sorted(bridge.defaults)) or "none"
        raise UsageError(f"bridge {name!r} has no option {', '.join(unknown)}: its options are {known}")
    source = as_latents(source_anchors, "the encoder's anchors")
    target = as_latents(target_anchors, "the decoder's anchors")
    if source.shape[0] != target.shape[0]:
        raise UsageError(
            f"a bridge needs the same anchors embedded by both models, got {source.shape[0]} encoder rows and "
            f"{target.shape[0]} decoder rows: use one anchor set for both"
        )
    if source.shape[0] < 2:
        raise UsageError(f"a bridge needs at least 2 anchors, got {source.shape[0]}: choose more anchors")
    rows: dict[str, torch.Tensor | None] = {"source_rows": None, "target_rows": None}
    if bridge.uses_rows:
        if source_rows is None or target_rows is None:
            raise UsageError(
                f"bridge {name!r} also learns from unlabeled training rows of both models: pass source_rows and target_rows"
            )
        rows["source_rows"] = as_latents(source_rows, "the encoder's unlabeled rows", dim=source.shape[1])
        rows["target_rows"] = as_latents(target_rows, "the decoder's unlabeled rows", dim=target.shape[1])
    chosen = {**bridge.defaults, **options}
    started = time.perf_counter()
    fitted = bridge.fit(FitData(source, target, rows["source_rows"], rows["target_rows"], int(seed)), **chosen)
    seconds = time.perf_counter() - started
    fitted.config = {
        "format": BRIDGE_FORMAT,
        "bridge": name,
        "form": fitted.form,
        "source_dim": int(source.shape[1]),
        "target_dim": int(target.shape[1]),
        "options": _jsonable(chosen),
        "seed": int(seed),
        "fit": {
            "anchors": int(source.shape[0]),
            "source_rows": None if rows["source_rows"] is None else int(rows["source_rows"].shape[0]),
            "target_rows": None if rows["target_rows"] is None else int(rows["target_rows"].shape[0]),
            "seconds": round(seconds, 4),
            "threads": torch.get_num_threads(),
            **dict(fitted.config.get("fit") or {}),
        },
    }
    return fitted


def _jsonable(options: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out


def load_bridge(tensors: Mapping[str, Any], config: Mapping[str, Any]) -> FittedBridge:
    """Give the fitted bridge saved as ``state()`` = (tensors, config).

    Raises:
        UsageError: the config is of another format or names an unknown form, or the tensors do not fit it.
    """
    _load_families()
    config = dict(config)
    if config.get("format") != BRIDGE_FORMAT:
        raise UsageError(
            f"this bridge was saved in format {config.get('format')!r}, and this stitchcli reads format {BRIDGE_FORMAT}: fit it again"
        )
    form = _FORMS.get(str(config.get("form")))
    if form is None:
        raise UsageError(f"unknown bridge form {config.get('form')!r}: fit the bridge again with this stitchcli")
    try:
        loaded = form.from_state({name: torch.as_tensor(value, dtype=torch.float64) for name, value in tensors.items()}, config)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise UsageError(f"saved bridge {config.get('bridge')!r} is damaged or inconsistent with its config: {exc}") from None
    return loaded
