"""The shard plan: how the rows of a cache entry being built are cut into resumable shards, and which are done."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass
class ShardPlan:
    """How the rows of an entry are cut into resumable shards, and which are already done.

    ``jobs`` > 1 when the entry is built by several processes (torchrun ranks or array jobs): job ``j``
    computes the contiguous run of shards :meth:`job_shards` gives, so every shard is in exactly one job.
    """

    rows: int
    shard_rows: int
    done: list[int]
    jobs: int = 1

    def job_shards(self, job: int) -> list[int]:
        """Give the shard indices job ``job`` (of ``jobs``) computes (with fewer shards than jobs, the last jobs get none)."""
        if self.num_shards < self.jobs:
            return [job] if job < self.num_shards else []
        return list(range(job * self.num_shards // self.jobs, (job + 1) * self.num_shards // self.jobs))

    @property
    def missing_jobs(self) -> list[int]:
        """Give the jobs that still have a shard to compute."""
        done = set(self.done)
        return [j for j in range(self.jobs) if any(i not in done for i in self.job_shards(j))]

    @property
    def num_shards(self) -> int:
        """Give the number of shards covering all rows."""
        return (self.rows + self.shard_rows - 1) // self.shard_rows

    def bounds(self, index: int) -> tuple[int, int]:
        """Give the [start, stop) positions of one shard."""
        start = index * self.shard_rows
        return start, min(start + self.shard_rows, self.rows)

    @property
    def todo(self) -> list[int]:
        """Give the shard indices still to compute, in order."""
        done = set(self.done)
        return [i for i in range(self.num_shards) if i not in done]

    def rows_in(self, indices: Iterable[int]) -> int:
        """Give the number of rows the shards ``indices`` hold."""
        return sum(self.bounds(i)[1] - self.bounds(i)[0] for i in indices)

    @property
    def rows_done(self) -> int:
        """Give the number of rows already in finished shards."""
        return self.rows_in(self.done)
