"""Every bridge on the offline demo's real pairs, both directions, several numbers of anchors and anchor draws:
test accuracy through the decoder's absolute head, % of the decoder's non-stitched accuracy, fit time, and
what `auto` (label-free selection, stitchcli.bridges.select_bridge) chooses and how far it lands from the best.

The decoder's absolute heads are trained as stitchcli trains them (stitchcli.heads: HeadSettings defaults,
early stopping on a class-stratified 10% of the training split), one per head seed, and cached under
--work-dir. Anchors are K training rows drawn uniformly (numpy default_rng(anchor seed)). Bridges that use
unlabeled rows get every training row of both models, the decoder's in a shuffled order (they are used as
unordered sets). The evaluation split is used only to score.

Bridges are given as registry names or ``name:option=value,...``; ``--experimental`` adds the residual-MLP
bridge measured in docs/BRIDGES.md (defined here, not in the library: it lost to `kernel`). One JSON line per
(dataset, encoder, decoder, K, anchor seed) is appended to --out (existing settings are skipped, so a sweep
resumes); ``--table`` prints the markdown tables of an --out file.

    OMP_NUM_THREADS=1 python benchmarks/bridges_sweep.py --cache-dir /work/cache --work-dir /tmp/bridges \\
        --datasets packaged:mnist5k --anchors 100,300,1280 --anchor-seeds 0,1,2 --out benchmarks/results/bridges_sweep.jsonl
    python benchmarks/bridges_sweep.py --table --out benchmarks/results/bridges_sweep.jsonl

Fit times taken on a shared machine are noisy: rerun on a quiet one before quoting them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from _common import load, processor
from stitchcli.bridges import list_bridges, select_bridge
from stitchcli.bridges.selection import as_candidate
from stitchcli.data.packaged import packaged_dataset
from stitchcli.embedding import load_embeddings
from stitchcli.heads import HeadSettings, build_classifier, predict, train_classifier
from stitchcli.store import EmbeddingStore

PAIRS = {"packaged:mnist5k": ("lite0", "lite2"), "packaged:bbc-news": ("minilm", "mpnet")}


def load_split(store: EmbeddingStore, model: str, dataset: str, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Give (latents, labels, ids) of a cached split, rows sorted by id (so two models' rows line up)."""
    entry = load_embeddings(store, model, packaged_dataset(dataset, store.root / "assets"), split)
    order = np.argsort(entry.ids, kind="stable")
    return np.asarray(entry.embeddings)[order], np.asarray(entry.labels)[order], np.asarray(entry.ids)[order]


def trained_head(work: Path, tag: str, latents: np.ndarray, labels: np.ndarray, seed: int) -> torch.nn.Module:
    """Give the decoder's absolute head for one seed, trained as stitchcli trains it (cached under ``work``)."""
    digest = hashlib.sha256(latents.tobytes() + labels.tobytes()).hexdigest()[:12]
    path = work / "heads" / f"{tag}-{digest}-seed{seed}.safetensors"
    settings = HeadSettings()
    module = build_classifier("absolute", int(labels.max()) + 1, settings, input_dim=latents.shape[1], seed=seed)
    if path.is_file():
        module.load_state_dict(load_file(path))
    else:
        train_classifier(module, torch.from_numpy(latents), labels, settings, seed=seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({name: value.contiguous() for name, value in module.state_dict().items()}, path)
    return module.eval()


def head_function(module: torch.nn.Module):
    """Give latents -> logits for the selection (no gradients, float32)."""
    def logits(latents: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(latents.to(torch.float32))
    return logits


def accuracy(module: torch.nn.Module, latents: torch.Tensor | np.ndarray, labels: np.ndarray) -> float:
    return float((predict(module, latents) == labels).mean())


def register_experimental() -> list[str]:
    """Register the residual-MLP bridge measured against `kernel` (kept out of the library: it lost)."""
    from stitchcli.bridges import FitData, register_bridge, register_form
    from stitchcli.bridges.linear import AffineMap, affine_map, rms_row_norm
    from stitchcli.bridges.registry import FittedBridge

    @register_form
    class ResidualMLPMap(FittedBridge):
        form = "benchmark-residual-mlp"

        def __init__(self, tensors: dict[str, torch.Tensor], config: dict[str, Any] | None = None) -> None:
            super().__init__(config or {})
            self._tensors = tensors

        def _map(self, x: torch.Tensor) -> torch.Tensor:
            t = self._tensors
            base = (x - t["source_mean"]) @ t["matrix"] + t["target_mean"]
            scaled = (x - t["source_mean"]) / t["source_scale"]
            hidden = torch.nn.functional.silu(scaled @ t["w1"] + t["b1"])
            return base + hidden @ t["w2"] + t["b2"]

        def tensors(self) -> dict[str, torch.Tensor]:
            return self._tensors

        @classmethod
        def from_state(cls, tensors, config):  # type: ignore[no-untyped-def]
            return cls(dict(tensors), config)

    @register_bridge("mlp", source="residual MLP on the anchors with early stopping (benchmark only)")
    def fit_mlp(data: FitData, *, hidden: int = 512, epochs: int = 2000, lr: float = 1e-3, weight_decay: float = 1e-4, patience: int = 100,
                held_fraction: float = 0.1, ridge: float = 0.1):  # type: ignore[no-untyped-def]
        """Ridge affine map plus a residual MLP trained on the anchors, early stopping on held-out anchors."""
        source_anchors, target_anchors, seed = data.source_anchors, data.target_anchors, data.seed
        source_mean, matrix, target_mean, _ = affine_map(source_anchors, target_anchors, ridge)
        base = AffineMap(source_mean, matrix, target_mean)
        scale = rms_row_norm(source_anchors - source_mean)
        x = ((source_anchors - source_mean) / scale).float()
        y = (target_anchors - base._map(source_anchors)).float()
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(x), generator=generator)
        held = order[: max(1, int(held_fraction * len(x)))]
        fit = order[len(held):]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, y.shape[1]))
        torch.nn.init.zeros_(net[2].weight)
        torch.nn.init.zeros_(net[2].bias)
        optimizer = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
        best, best_state, stale = float("inf"), {k: v.clone() for k, v in net.state_dict().items()}, 0
        for _ in range(epochs):
            optimizer.zero_grad()
            loss = ((net(x[fit]) - y[fit]) ** 2).mean()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                held_loss = float(((net(x[held]) - y[held]) ** 2).mean())
            if held_loss < best - 1e-9:
                best, best_state, stale = held_loss, {k: v.clone() for k, v in net.state_dict().items()}, 0
            else:
                stale += 1
                if stale >= patience:
                    break
        net.load_state_dict(best_state)
        tensors = {"source_mean": source_mean, "matrix": matrix, "target_mean": target_mean,
                   "source_scale": torch.tensor(scale, dtype=torch.float64),
                   "w1": net[0].weight.detach().double().T.contiguous(), "b1": net[0].bias.detach().double(),
                   "w2": net[2].weight.detach().double().T.contiguous(), "b2": net[2].bias.detach().double()}
        return ResidualMLPMap(tensors)

    return ["mlp"]


def fit_spec(spec: str, source_anchors, target_anchors, source_rows, target_rows, seed: int):  # type: ignore[no-untyped-def]
    candidate = as_candidate(spec)
    return candidate.fit(source_anchors, target_anchors, source_rows, target_rows, seed)  # type: ignore[union-attr]


def run_setting(args: argparse.Namespace, data: dict[str, Any], encoder: str, decoder: str, count: int, anchor_seed: int, specs: list[str]) -> dict[str, Any]:
    """Give the JSON record of one (encoder, decoder, K, anchor seed)."""
    enc, dec = data[encoder], data[decoder]
    rng = np.random.default_rng(anchor_seed)
    positions = np.sort(rng.choice(len(enc["train"][0]), size=min(count, len(enc["train"][0])), replace=False))
    source_anchors = torch.from_numpy(enc["train"][0][positions]).double()
    target_anchors = torch.from_numpy(dec["train"][0][positions]).double()
    source_rows = torch.from_numpy(enc["train"][0]).double()
    shuffle = np.random.default_rng(10_000 + anchor_seed).permutation(len(dec["train"][0]))
    target_rows = torch.from_numpy(dec["train"][0][shuffle]).double()  # no pairing of the rows is available
    test_x, test_y = torch.from_numpy(enc["test"][0]), enc["test"][1]
    heads = dec["heads"]
    record: dict[str, Any] = {
        "dataset": data["dataset"], "encoder": encoder, "decoder": decoder, "anchors": int(len(positions)),
        "anchor_seed": anchor_seed, "head_seeds": args.head_seeds, "reference": dec["reference"], "bridges": {},
    }
    for spec in specs:
        started = time.perf_counter()
        bridge = fit_spec(spec, source_anchors, target_anchors, source_rows, target_rows, anchor_seed)
        seconds = time.perf_counter() - started
        mapped = bridge(test_x)
        accs = [accuracy(head, mapped, test_y) for head in heads]
        record["bridges"][spec] = {"accuracy": accs, "seconds": round(seconds, 3), "fit": bridge.config.get("fit")}
        print(f"  {encoder}->{decoder} K={len(positions)} s={anchor_seed} {spec}: {100 * statistics.mean(accs):.1f} ({seconds:.1f}s)", file=sys.stderr, flush=True)
    if args.folds:
        started = time.perf_counter()
        selection = select_bridge(specs, source_anchors, target_anchors, head=head_function(heads[0]), source_rows=source_rows,
                                  target_rows=target_rows, folds=args.folds, seed=anchor_seed, refit=False)
        record["selection"] = selection.to_dict()
        record["selection"]["seconds"] = round(time.perf_counter() - started, 2)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, help="the cache holding the demo's full embeddings (read only)")
    parser.add_argument("--work-dir", type=Path, default=Path("bridges-work"), help="where the decoder heads are cached")
    parser.add_argument("--datasets", default=",".join(PAIRS))
    parser.add_argument("--directions", default="both", help="both, or one encoder->decoder like lite2->lite0")
    parser.add_argument("--anchors", default="100,300,1280")
    parser.add_argument("--anchor-seeds", default="0,1,2")
    parser.add_argument("--head-seeds", default="0,1,2")
    parser.add_argument("--bridges", default=None, help="comma-separated specs, ';' between specs with options (default: every registered bridge)")
    parser.add_argument("--experimental", action="store_true", help="also the residual-MLP bridge")
    parser.add_argument("--folds", type=int, default=5, help="folds of the auto selection (0: no selection)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True, help="JSON lines file (appended; settings already in it are skipped)")
    parser.add_argument("--table", action="store_true", help="print the markdown tables of --out and exit")
    args = parser.parse_args()
    if args.table:
        from bridges_tables import print_tables

        print_tables([json.loads(line) for line in args.out.read_text().splitlines() if line.strip()])
        return
    if args.cache_dir is None:
        parser.error("--cache-dir is required")
    torch.set_num_threads(args.threads)
    args.head_seeds = [int(s) for s in args.head_seeds.split(",")]
    experimental = register_experimental() if args.experimental else []
    if args.bridges:
        specs = [s for s in (args.bridges.split(";") if ";" in args.bridges else args.bridges.split(",")) if s]
    else:
        specs = list_bridges()
        specs = [s for s in specs if s not in experimental] + experimental
    done = set()
    if args.out.is_file():
        for line in args.out.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done.add((r["dataset"], r["encoder"], r["decoder"], r["anchors"], r["anchor_seed"], tuple(r["bridges"])))
    store = EmbeddingStore(args.cache_dir)
    for dataset in args.datasets.split(","):
        a, b = PAIRS[dataset]
        data: dict[str, Any] = {"dataset": dataset}
        for model in (a, b):
            train, test = load_split(store, model, dataset, "train"), load_split(store, model, dataset, "test")
            heads = [trained_head(args.work_dir, f"{dataset.split(':')[-1]}-{model}", train[0], train[1], seed) for seed in args.head_seeds]
            data[model] = {"train": train, "test": test, "heads": heads,
                           "reference": [accuracy(head, test[0], test[1]) for head in heads]}
            print(f"{model}: non-stitched {[round(100 * r, 1) for r in data[model]['reference']]}", file=sys.stderr, flush=True)
        assert (data[a]["train"][2] == data[b]["train"][2]).all() and (data[a]["test"][2] == data[b]["test"][2]).all()
        directions = [(b, a), (a, b)] if args.directions == "both" else [tuple(args.directions.split("->"))]
        for encoder, decoder in directions:
            if encoder not in data:
                continue
            for count in [int(c) for c in args.anchors.split(",")]:
                for anchor_seed in [int(s) for s in args.anchor_seeds.split(",")]:
                    if (dataset, encoder, decoder, min(count, len(data[a]["train"][0])), anchor_seed, tuple(specs)) in done:
                        continue
                    record = run_setting(args, data, encoder, decoder, count, anchor_seed, specs)
                    record.update({"threads": args.threads, "processor": processor(), "load": load()})
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    with args.out.open("a") as out:
                        out.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
