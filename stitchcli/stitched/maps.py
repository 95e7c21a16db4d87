"""Latent maps a stitched model can hold: the encoder's latents mapped into the decoder's space, then the decoder's
absolute head.

Each map kind is registered once with three functions: how it is fitted on the anchors, how a fitted map becomes
tensors plus JSON options (what a stitched model directory stores), and how those parts become the map again.
Two kinds are registered here: ``absolute`` (no map) and ``bridge``, any fitted bridge of stitchcli.bridges
(the ``translation`` and ``affine`` baselines are its orthogonal and affine bridges) stored as its state; another
kind of map registers itself with :func:`register_map` and fits the same slot of the saved format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from stitchcli.errors import UsageError, unknown_name

LatentMap = Callable[[np.ndarray], np.ndarray]
"""(N, encoder dim) latents -> (N, decoder dim) float32 latents."""


@dataclass(frozen=True)
class MapKind:
    """How one kind of map is fitted, stored and rebuilt.

    Attributes:
        name: the row's method (``affine``...), as stitch's table names it.
        fit: (encoder's anchors, decoder's anchors, options) -> the fitted map object.
        to_parts: fitted map -> (tensors, JSON options).
        from_parts: (tensors, JSON options) -> the map, a callable on latents.
    """

    name: str
    fit: Callable[[np.ndarray, np.ndarray, Mapping[str, Any]], Any]
    to_parts: Callable[[Any], tuple[dict[str, np.ndarray], dict[str, Any]]]
    from_parts: Callable[[Mapping[str, np.ndarray], Mapping[str, Any]], LatentMap]


_MAPS: dict[str, MapKind] = {}


def register_map(kind: MapKind) -> MapKind:
    """Give ``kind`` after registering it under its name (a later registration of the same name replaces it)."""
    _MAPS[kind.name] = kind
    return kind


def list_maps() -> list[str]:
    """Give the registered map kinds, in registration order."""
    return list(_MAPS)


def get_map_kind(name: str) -> MapKind:
    """Give the registered kind ``name``; UsageError naming the known ones otherwise."""
    if name not in _MAPS:
        raise unknown_name("latent map", name, list_maps())
    return _MAPS[name]


def fit_map(name: str, source_anchors: np.ndarray, target_anchors: np.ndarray, options: Mapping[str, Any]) -> tuple[LatentMap, dict[str, np.ndarray], dict[str, Any]]:
    """Give (the fitted map, its tensors, its JSON options): what is applied now and what a directory stores."""
    kind = get_map_kind(name)
    fitted = kind.fit(source_anchors, target_anchors, options)
    tensors, stored = kind.to_parts(fitted)
    return kind.from_parts(tensors, stored), tensors, stored


def map_parts(name: str, fitted: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Give (tensors, JSON options) of a fitted map of kind ``name``: what a directory stores."""
    return get_map_kind(name).to_parts(fitted)


def rebuild_map(name: str, tensors: Mapping[str, np.ndarray], options: Mapping[str, Any]) -> LatentMap:
    """Give the map a directory stored as ``tensors`` and ``options``; UsageError when they do not make one."""
    kind = get_map_kind(name)
    try:
        return kind.from_parts(tensors, options)
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"the stored {name} map is incomplete ({exc}): save the stitched model again") from None


def _no_fit(source: np.ndarray, target: np.ndarray, options: Mapping[str, Any]) -> Any:
    raise AssertionError("a bridge is fitted (or read from the cache) by stitchcli.stitching.bridges.obtain_bridge")


def _identity_from_parts(tensors: Mapping[str, np.ndarray], options: Mapping[str, Any]) -> LatentMap:
    return lambda latents: np.asarray(latents, dtype=np.float32)


def _bridge_parts(fitted: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    tensors, config = fitted.state()
    return {key: value.numpy() for key, value in tensors.items()}, config


def _bridge_from_parts(tensors: Mapping[str, np.ndarray], options: Mapping[str, Any]) -> LatentMap:
    import torch

    from stitchcli.bridges import load_bridge

    bridge = load_bridge({key: torch.from_numpy(np.asarray(value)) for key, value in tensors.items()}, dict(options))
    return lambda latents: bridge(torch.from_numpy(np.ascontiguousarray(latents, dtype=np.float32))).numpy()


register_map(MapKind("absolute", lambda source, target, options: None, lambda fitted: ({}, {}), _identity_from_parts))
# Every bridge of stitchcli.bridges (the translation and affine baselines included: the registry's orthogonal and
# affine bridges) is stored as its state: the tensors and the JSON config that load_bridge rebuilds it from.
register_map(MapKind("bridge", _no_fit, _bridge_parts, _bridge_from_parts))
