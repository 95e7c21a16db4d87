"""Does one generalised-Procrustes shared space for N models lose accuracy against pairwise maps?

On each real pair (A, B) the stitched accuracy of A -> B (B's absolute heads, head seeds 0,1,2) through:
pairwise orthogonal Procrustes; the shared space of {A, B} (equal to it by construction when the sizes
match); and shared spaces that also hold extra "models" built from the real ones, because only two real
models per dataset exist here: a rotated noisy copy of A (A·Q + noise), a stretched noisy copy of B (B·S +
noise, S with condition number 10), and a rotated copy of B passed through tanh (a nonlinear third model).
The noise has 0.3 times the per-dimension standard deviation. Also the whitened variants (shared whitened
space against the pairwise affine map). Anchors: K uniform training rows (anchor seeds 0,1,2).

    OMP_NUM_THREADS=1 python benchmarks/shared_space.py --cache-dir /work/cache --work-dir /tmp/bridges \\
        --output benchmarks/results/shared_space.json
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch

from _common import emit, load, processor
from bridges_sweep import PAIRS, accuracy, load_split, trained_head
from stitchcli.bridges import fit_bridge, fit_shared_space
from stitchcli.store import EmbeddingStore


def extra_models(a: np.ndarray, b: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Give the derived models' latents of the same rows (train and test stacked): name -> array."""
    g = np.random.default_rng(seed)
    q_a, _ = np.linalg.qr(g.normal(size=(a.shape[1], a.shape[1])))
    q_b, _ = np.linalg.qr(g.normal(size=(b.shape[1], b.shape[1])))
    r_b, _ = np.linalg.qr(g.normal(size=(b.shape[1], b.shape[1])))
    stretch = q_b @ np.diag(np.geomspace(1.0, 10.0, b.shape[1])) @ r_b
    noise = lambda x: 0.3 * x.std(axis=0) * g.normal(size=x.shape)
    centred_b = (b - b.mean(0)) / b.std()
    return {
        "A-rotated-noisy": a @ q_a + noise(a),
        "B-stretched-noisy": b @ stretch + noise(b @ stretch),
        "B-tanh": np.tanh(centred_b @ q_b),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--work-dir", type=Path, default=Path("bridges-work"))
    parser.add_argument("--datasets", default=",".join(PAIRS))
    parser.add_argument("--anchors", type=int, default=1280)
    parser.add_argument("--anchor-seeds", default="0,1,2")
    parser.add_argument("--head-seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    store = EmbeddingStore(args.cache_dir)
    head_seeds = [int(s) for s in args.head_seeds.split(",")]
    results = []
    for dataset in args.datasets.split(","):
        a, b = PAIRS[dataset]
        split = {m: (load_split(store, m, dataset, "train"), load_split(store, m, dataset, "test")) for m in (a, b)}
        n_train = len(split[a][0][0])
        stacked = {m: np.concatenate([split[m][0][0], split[m][1][0]]) for m in (a, b)}
        labels_test = split[a][1][1]
        heads = {m: [trained_head(args.work_dir, f"{dataset.split(':')[-1]}-{m}", split[m][0][0], split[m][0][1], s) for s in head_seeds] for m in (a, b)}
        everyone = {a: stacked[a], b: stacked[b], **extra_models(stacked[a], stacked[b], seed=0)}
        for encoder, decoder in ((b, a), (a, b)):
            for anchor_seed in [int(s) for s in args.anchor_seeds.split(",")]:
                positions = np.sort(np.random.default_rng(anchor_seed).choice(n_train, size=min(args.anchors, n_train), replace=False))
                anchors = {m: torch.from_numpy(x[positions]).double() for m, x in everyone.items()}
                test = torch.from_numpy(stacked[encoder][n_train:])
                rows: dict[str, float] = {}

                def score(bridge) -> float:  # type: ignore[no-untyped-def]
                    mapped = bridge(test)
                    return statistics.mean(accuracy(h, mapped, labels_test) for h in heads[decoder])

                rows["pairwise orthogonal"] = score(fit_bridge("orthogonal", anchors[encoder], anchors[decoder]))
                rows["pairwise affine"] = score(fit_bridge("affine", anchors[encoder], anchors[decoder]))
                members = {
                    "N=2": [a, b],
                    "N=3 (+A rotated noisy)": [a, b, "A-rotated-noisy"],
                    "N=4 (+B stretched noisy)": [a, b, "A-rotated-noisy", "B-stretched-noisy"],
                    "N=5 (+B tanh)": [a, b, "A-rotated-noisy", "B-stretched-noisy", "B-tanh"],
                }
                for label, names in members.items():
                    for whiten in (False, True):
                        space = fit_shared_space({m: anchors[m] for m in names}, whiten=whiten)
                        rows[f"shared {label}{' whitened' if whiten else ''}"] = score(space.bridge(encoder, decoder))
                reference = statistics.mean(accuracy(h, split[decoder][1][0], labels_test) for h in heads[decoder])
                results.append({"dataset": dataset, "encoder": encoder, "decoder": decoder, "anchor_seed": anchor_seed,
                                "anchors": int(len(positions)), "reference": reference, "accuracy": rows})
                print(encoder, decoder, anchor_seed, {k: round(100 * v, 1) for k, v in rows.items()}, flush=True)
    emit({"benchmark": "shared_space", "processor": processor(), "load": load(), "head_seeds": head_seeds, "results": results}, args.output)


if __name__ == "__main__":
    main()
