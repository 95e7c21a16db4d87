"""One `embed` run as several processes: torchrun ranks (torch.distributed) or array jobs (--num-shards).

Both cut an entry's rows into the same resumable shards and give job ``j`` of ``n`` a contiguous run of
them (:meth:`stitchcli.store.ShardPlan.job_shards`). Under torchrun the ranks are the jobs and meet at
barriers, and rank 0 joins the shards into the entry once every rank is done. Array jobs never talk to
each other: each writes its shards and the one that finds every shard present joins them; any later
command says which jobs are missing until then.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from stitchcli.errors import UsageError

BARRIER_TIMEOUT = timedelta(hours=24)
"""How long a rank waits at a barrier for the others (ranks that finish early wait for the slowest)."""


def torchrun_rank() -> tuple[int, int, int] | None:
    """Give (world size, rank, local rank) when torchrun launched this process with more than one rank, else None."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ["RANK"])
    except (KeyError, ValueError):
        return None
    if world <= 1:
        return None
    return world, rank, int(os.environ.get("LOCAL_RANK", rank))


@dataclass
class Workers:
    """Which of how many processes this one is, and (under torchrun) the process group they share."""

    count: int = 1
    index: int = 0
    local_rank: int = 0
    group: Any = None  # the gloo group barriers use, when launched by torchrun
    owns_process_group: bool = False

    @property
    def distributed(self) -> bool:
        """Tell whether the processes meet through torch.distributed (torchrun), not only through the cache."""
        return self.group is not None

    @property
    def leader(self) -> bool:
        """Tell whether this process reports results (rank 0, or the only process)."""
        return self.index == 0 or not self.distributed

    def barrier(self) -> None:
        """Wait until every rank gets here (nothing to wait for outside torchrun)."""
        if self.group is not None:
            import torch.distributed as dist

            dist.barrier(group=self.group)

    def agree(self, value: bool) -> bool:
        """Give rank 0's ``value`` on every rank, so all ranks take the same branch."""
        if self.group is None:
            return value
        import torch
        import torch.distributed as dist

        flag = torch.tensor([int(value)], dtype=torch.int64)
        dist.broadcast(flag, src=0, group=self.group)
        return bool(flag.item())

    def close(self) -> None:
        """Leave the process group this run started (one a caller started is left to the caller)."""
        if self.owns_process_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.group = None


def check_shard_options(num_shards: int, shard_index: int | None) -> None:
    """Refuse --num-shards/--shard-index values that name no job (no torch import)."""
    if num_shards < 1:
        raise UsageError(f"--num-shards must be 1 or more, not {num_shards}")
    if shard_index is not None and not 0 <= shard_index < num_shards:
        raise UsageError(f"--shard-index must be between 0 and {num_shards - 1} for --num-shards {num_shards}, not {shard_index}")
    if num_shards > 1 and shard_index is None:
        raise UsageError(f"--num-shards {num_shards} needs --shard-index I (0 to {num_shards - 1}): which shard this job computes")


def start_workers(num_shards: int, shard_index: int | None, device: str) -> tuple[Workers, str]:
    """Give the workers this process belongs to and the device it should use.

    Under torchrun (more than one rank) the ranks are the jobs: the process group is joined (nccl
    beside gloo on CUDA, gloo on the CPU) and an ``auto`` or bare ``cuda`` device becomes
    ``cuda:LOCAL_RANK``. Otherwise ``--num-shards``/``--shard-index`` name an array job, or there is one job.
    """
    check_shard_options(num_shards, shard_index)
    launched = torchrun_rank()
    if launched is None:
        return Workers(count=num_shards, index=shard_index or 0), device
    if num_shards > 1:
        raise UsageError("--num-shards/--shard-index are for array jobs; under torchrun the ranks are the shards: drop them")
    world, rank, local_rank = launched
    import torch
    import torch.distributed as dist

    if device.startswith("cuda:"):
        raise UsageError(f"--device {device} under torchrun would put every rank on one GPU: use --device cuda (or auto), and each rank takes cuda:LOCAL_RANK")
    if device in ("auto", "cuda") and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise UsageError(
                f"rank {rank} has LOCAL_RANK {local_rank} but this machine shows {torch.cuda.device_count()} GPUs: "
                f"start at most {torch.cuda.device_count()} processes per node (--nproc-per-node), or use --device cpu"
            )
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    owns = not dist.is_initialized()
    if owns:
        if device.startswith("cuda"):
            dist.init_process_group("cpu:gloo,cuda:nccl", timeout=BARRIER_TIMEOUT, device_id=torch.device(device))
        else:
            dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    elif dist.get_world_size() != world or dist.get_rank() != rank:
        raise UsageError("torch.distributed is set up for another world than torchrun's WORLD_SIZE/RANK")
    group = dist.new_group(backend="gloo", timeout=BARRIER_TIMEOUT)
    return Workers(count=world, index=rank, local_rank=local_rank, group=group, owns_process_group=owns), device
