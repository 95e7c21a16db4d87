"""bf16 on the CPU: which attention and which cast are fastest for a timm ViT (how stitchcli chooses).

Times the forward of `vit_small_patch16_224` (random weights, batch 32, inference mode) four ways, round after
round in one process (a shared machine's slow spells hit all alike): weights cast to bf16 with timm's fused
attention (F.scaled_dot_product_attention) or with plain matmul attention, and fp32 weights under CPU bf16
autocast with either. stitchcli casts the weights; it keeps the fused kernel on CPUs with AMX and uses matmul
attention on the others (stitchcli.encoders.TorchEncoder). One JSON line: medians and every round.

    python benchmarks/bf16_attention.py --rounds 10
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import processor  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    import timm

    from stitchcli.encoders import cpu_has_amx, prefer_matmul_attention

    torch.manual_seed(0)
    base = timm.create_model(args.model, pretrained=False, num_classes=0).eval()

    def variant(cast: bool, matmul: bool) -> torch.nn.Module:
        model = copy.deepcopy(base)
        if cast:
            model = model.to(torch.bfloat16)
        if matmul:
            prefer_matmul_attention(model)
        return model

    variants = {"cast, fused": (variant(True, False), True), "cast, matmul": (variant(True, True), True),
                "autocast, fused": (variant(False, False), False), "autocast, matmul": (variant(False, True), False)}
    x = torch.randn(args.batch_size, 3, *base.pretrained_cfg["input_size"][1:])
    rates: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for round_ in range(args.rounds + 1):  # the first round warms up and is not kept
            for name, (model, cast) in variants.items():
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not cast):
                    batch = x.to(torch.bfloat16) if cast else x
                    started = time.perf_counter()
                    model(batch)
                    seconds = time.perf_counter() - started
                if round_:
                    rates[name].append(round(args.batch_size / seconds, 2))
    print(json.dumps({
        "benchmark": "bf16_attention", "model": args.model, "batch_size": args.batch_size, "rounds": args.rounds,
        "threads": torch.get_num_threads(), "processor": processor(), "amx": cpu_has_amx(), "torch": torch.__version__,
        "rows_per_s_median": {name: round(statistics.median(v), 1) for name, v in rates.items()}, "rows_per_s": rates,
    }))


if __name__ == "__main__":
    main()
