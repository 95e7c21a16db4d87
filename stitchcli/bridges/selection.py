"""Choosing a bridge without labels (`--bridge auto`): cross-validation on the anchors.

The anchors are split into folds (seeded). For every fold, each candidate is fitted on the other folds'
anchors (and, if it uses them, on the unlabeled rows with every held-out anchor removed from both models'
rows) and maps the held-out encoder anchors. Those are compared with the same anchors as the decoder's model
embedded them, which is known without any label:

- ``retrieval``: the held-out encoder anchor's nearest held-out decoder anchor (cosine, centred on the fit
  anchors' decoder mean) is its own counterpart, averaged over folds;
- ``mrr``: the mean reciprocal rank of the counterpart among them;
- ``agreement``: the decoder's absolute head predicts the same class for the mapped encoder anchor as for
  the decoder's own embedding of it;
- ``confidence``: the head's probability, for the mapped encoder anchor, of the class it predicts for the
  decoder's own embedding (a smooth form of ``agreement``).

The head was trained by the decoder's owner on the decoder's training split; no label of the encoder's data
and nothing of the evaluation split is read here. Which score tracks test accuracy best was measured on the
real pairs (docs/BRIDGES.md); the default is the winner of that measurement.

Candidates other than the registered bridges (the relative projection sets of `stitch`) take part through
the :class:`Candidate` protocol: fitted on a fold's anchors, a candidate gives the decoder head's logits for
the held-out encoder anchors (and, if it has them, mapped latents for the retrieval scores).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

import torch

from stitchcli.bridges.registry import FittedBridge, as_latents, fit_bridge, get_bridge
from stitchcli.errors import UsageError

SCORES = ("confidence", "agreement", "mrr", "retrieval")
"""The held-out scores, in the order ties are broken (the chosen score first, then these)."""

DEFAULT_SCORE = "confidence"
DEFAULT_FOLDS = 5

Head = Callable[[torch.Tensor], torch.Tensor]
"""The decoder's absolute head: (N, Dt) float32 latents -> (N, C) logits."""


@dataclass
class FoldData:
    """What a candidate sees of one fold.

    Attributes:
        source_anchors, target_anchors: the fit part of the anchors, both models, paired.
        held_source: the held-out anchors as the encoder embedded them (to be mapped).
        source_rows, target_rows: the unlabeled rows of each model without any held-out anchor (or None).
        seed: the selection's seed.
        head: the decoder's absolute head, or None.
    """

    source_anchors: torch.Tensor
    target_anchors: torch.Tensor
    held_source: torch.Tensor
    source_rows: torch.Tensor | None
    target_rows: torch.Tensor | None
    seed: int
    head: Head | None


@dataclass
class FoldOutput:
    """A candidate's answer for one fold's held-out encoder anchors.

    Attributes:
        mapped: (h, Dt) the anchors mapped into the decoder's space, or None (then no retrieval scores).
        logits: (h, C) the decoder head's logits for them, or None (computed from ``mapped`` with the head).
    """

    mapped: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class Candidate(Protocol):
    """Anything ``auto`` can choose: a name and an answer for each fold."""

    name: str

    def fold(self, data: FoldData) -> FoldOutput:
        """Give the held-out encoder anchors' mapped latents and/or decoder-head logits, fitted on the fit part."""
        ...


@dataclass
class BridgeCandidate:
    """A registered bridge with options, as an ``auto`` candidate.

    Attributes:
        bridge: the registry name.
        options: options passed to :func:`fit_bridge`.
        label: the name shown in reports (default: the bridge name, with its options if any).
    """

    bridge: str
    options: Mapping[str, Any] = field(default_factory=dict)
    label: str | None = None

    @property
    def name(self) -> str:
        """The name shown in reports."""
        if self.label:
            return self.label
        extra = ",".join(f"{key}={value}" for key, value in sorted(self.options.items()))
        return f"{self.bridge}:{extra}" if extra else self.bridge

    def fit(self, source_anchors: torch.Tensor, target_anchors: torch.Tensor, source_rows: torch.Tensor | None, target_rows: torch.Tensor | None, seed: int) -> FittedBridge:
        """Give the bridge fitted on these anchors (and rows, if it uses them)."""
        rows = get_bridge(self.bridge).uses_rows
        return fit_bridge(
            self.bridge, source_anchors, target_anchors,
            source_rows=source_rows if rows else None, target_rows=target_rows if rows else None, seed=seed, **self.options,
        )

    def fold(self, data: FoldData) -> FoldOutput:
        """Give the held-out encoder anchors mapped by the bridge fitted on the fold's fit part."""
        bridge = self.fit(data.source_anchors, data.target_anchors, data.source_rows, data.target_rows, data.seed)
        return FoldOutput(mapped=bridge(data.held_source, dtype=torch.float64))


@dataclass
class CandidateScore:
    """One candidate's held-out scores (None where the candidate gives nothing to compute it from)."""

    name: str
    scores: dict[str, float | None]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Give the record as a JSON-ready dict."""
        return {"name": self.name, "scores": self.scores, "seconds": round(self.seconds, 4)}


@dataclass
class Selection:
    """What ``auto`` chose and why.

    Attributes:
        winner: the chosen candidate's name.
        score: the score it was chosen by.
        candidates: every candidate's held-out scores, in the order given.
        folds: the number of folds.
        fitted: the winner refitted on all anchors (bridge candidates; None for others).
    """

    winner: str
    score: str
    candidates: list[CandidateScore]
    folds: int
    fitted: FittedBridge | None = None

    def to_dict(self) -> dict[str, Any]:
        """Give the selection (without the fitted bridge) as a JSON-ready dict."""
        return {"winner": self.winner, "score": self.score, "folds": self.folds, "candidates": [c.to_dict() for c in self.candidates]}


def as_candidate(candidate: str | Candidate) -> Candidate:
    """Give a candidate for a bridge name (``name`` or ``name:option=value,...``) or a candidate unchanged."""
    if not isinstance(candidate, str):
        return candidate
    name, _, rest = candidate.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"bridge option {item!r} of {candidate!r} is not key=value")
        options[key] = _option_value(value)
    get_bridge(name)
    return BridgeCandidate(name, options, label=candidate if options else None)


def _option_value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def fold_indices(count: int, folds: int, seed: int) -> list[torch.Tensor]:
    """Give ``folds`` disjoint sorted index sets covering range(count), of sizes differing by at most one (seeded)."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return [torch.sort(part).values for part in order.tensor_split(folds)]


def without_rows(rows: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """Give ``rows`` minus every row equal to some row of ``removed`` (found by value, not position)."""
    if len(rows) == 0 or len(removed) == 0:
        return rows
    scale = float(rows.abs().max()) or 1.0
    close = torch.cdist(rows, removed) <= 1e-6 * scale * math.sqrt(rows.shape[1])
    drop = torch.zeros(len(rows), dtype=torch.bool)
    for i, j in close.nonzero().tolist():  # confirm the near ones exactly: cdist by matmul is not exact
        if torch.equal(rows[i], removed[j]):
            drop[i] = True
    return rows[~drop]


def select_bridge(
    candidates: Sequence[str | Candidate],
    source_anchors: Any,
    target_anchors: Any,
    *,
    head: Head | None = None,
    source_rows: Any = None,
    target_rows: Any = None,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    score: str = DEFAULT_SCORE,
    refit: bool = True,
) -> Selection:
    """Give the candidate with the best held-out score on the anchors, chosen without any label.

    Args:
        candidates: bridge names (``name`` or ``name:option=value``), :class:`BridgeCandidate`s or other
            :class:`Candidate`s.
        source_anchors, target_anchors: (k, Ds), (k, Dt) the anchors as each model embedded them.
        head: the decoder's absolute head (latents -> logits); needed for ``agreement`` and ``confidence``.
        source_rows, target_rows: unlabeled training rows of each model (for bridges that use them).
        folds: number of folds (at least 2; at most the number of anchors).
        seed: seed of the folds and of the candidates' fits.
        score: the score that decides (see :data:`SCORES`); the others break ties in that order.
        refit: refit the winner on all anchors (bridge candidates only).

    Raises:
        UsageError: no candidates, an unknown score or bridge, too few anchors for the folds, a score
            that needs the head without one.
    """
    if not candidates:
        raise UsageError("auto needs at least one candidate bridge")
    if score not in SCORES:
        raise UsageError(f"unknown selection score {score!r}: use one of {', '.join(SCORES)}")
    if score in ("agreement", "confidence") and head is None:
        raise UsageError(f"the {score} score needs the decoder's absolute head: pass head=, or score by retrieval or mrr")
    source = as_latents(source_anchors, "the encoder's anchors")
    target = as_latents(target_anchors, "the decoder's anchors")
    if len(source) != len(target):
        raise UsageError(f"auto needs the same anchors in both models, got {len(source)} and {len(target)} rows")
    if not 2 <= folds <= len(source) // 2:
        raise UsageError(f"auto needs 2 to {len(source) // 2} folds for {len(source)} anchors (two held-out anchors at least), got {folds}")
    source_all = None if source_rows is None else as_latents(source_rows, "the encoder's unlabeled rows", dim=source.shape[1])
    target_all = None if target_rows is None else as_latents(target_rows, "the decoder's unlabeled rows", dim=target.shape[1])
    chosen = [as_candidate(c) for c in candidates]
    names = [c.name for c in chosen]
    if len(set(names)) != len(names):
        raise UsageError(f"auto got the same candidate twice: {', '.join(names)}")
    parts = fold_indices(len(source), folds, seed)
    totals: list[dict[str, list[float]]] = [{name: [] for name in SCORES} for _ in chosen]
    weights: list[list[int]] = [[] for _ in chosen]
    seconds = [0.0] * len(chosen)
    for held in parts:
        fit = torch.ones(len(source), dtype=torch.bool)
        fit[held] = False
        data = FoldData(
            source_anchors=source[fit],
            target_anchors=target[fit],
            held_source=source[held],
            source_rows=None if source_all is None else without_rows(source_all, source[held]),
            target_rows=None if target_all is None else without_rows(target_all, target[held]),
            seed=seed,
            head=head,
        )
        held_target = target[held]
        reference = _classes(head, held_target) if head is not None else None
        centre = target[fit].mean(dim=0)
        for index, candidate in enumerate(chosen):
            started = time.perf_counter()
            output = candidate.fold(data)
            seconds[index] += time.perf_counter() - started
            fold_scores = _fold_scores(output, held_target, centre, head, reference)
            for name, value in fold_scores.items():
                totals[index][name].append(value)
            weights[index].append(len(held))
    results = []
    for index, candidate in enumerate(chosen):
        scores: dict[str, float | None] = {}
        for name in SCORES:
            values = totals[index][name]
            scores[name] = None if len(values) < len(parts) else round(sum(v * w for v, w in zip(values, weights[index])) / sum(weights[index]), 6)
        results.append(CandidateScore(candidate.name, scores, seconds[index]))
    order = [score] + [name for name in SCORES if name != score]

    def key(result: CandidateScore) -> tuple[float, ...]:
        return tuple(-1.0 if result.scores[name] is None else float(result.scores[name]) for name in order)  # type: ignore[arg-type]

    if all(result.scores[score] is None for result in results):
        raise UsageError(f"no candidate gives what the {score} score needs: score by agreement or confidence with the head")
    best = max(range(len(results)), key=lambda i: (key(results[i]), -i))  # ties: the first given
    selection = Selection(results[best].name, score, results, folds)
    if refit and isinstance(chosen[best], BridgeCandidate):
        selection.fitted = chosen[best].fit(source, target, source_all, target_all, seed)  # type: ignore[union-attr]
    return selection


@torch.no_grad()
def _logits(head: Head, latents: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(head(latents.to(torch.float32))).to(torch.float64)


def _classes(head: Head, latents: torch.Tensor) -> torch.Tensor:
    return _logits(head, latents).argmax(dim=1)


def _fold_scores(output: FoldOutput, held_target: torch.Tensor, centre: torch.Tensor, head: Head | None, reference: torch.Tensor | None) -> dict[str, float]:
    """Give the scores one fold's output supports."""
    scores: dict[str, float] = {}
    if output.mapped is not None:
        mapped = torch.nn.functional.normalize(output.mapped.to(torch.float64) - centre, dim=1)
        gallery = torch.nn.functional.normalize(held_target - centre, dim=1)
        similarity = mapped @ gallery.T
        own = similarity.diagonal()[:, None]
        rank = 1 + (similarity > own).sum(dim=1)
        scores["retrieval"] = float((rank == 1).double().mean())
        scores["mrr"] = float((1.0 / rank.double()).mean())
    logits = output.logits
    if logits is None and output.mapped is not None and head is not None:
        logits = _logits(head, output.mapped)
    if logits is not None and reference is not None:
        logits = torch.as_tensor(logits).to(torch.float64)
        scores["agreement"] = float((logits.argmax(dim=1) == reference).double().mean())
        scores["confidence"] = float(logits.softmax(dim=1).gather(1, reference[:, None]).mean())
    return scores
