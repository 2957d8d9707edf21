"""Samplers of the validation pass: every held-out image on exactly one rank (data/datasets.py, ValIndex)."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Dataset, DistributedSampler


class StridedSampler(DistributedSampler):
    """Indices rank, rank + world, rank + 2 world, ...: every index on exactly one rank, no padding.

    A DistributedSampler subclass, so Lightning keeps it instead of injecting a padding one. Ranks may
    get one item more or fewer; that is safe for evaluation (no gradient synchronisation).
    """

    def __init__(
        self,
        dataset: Dataset,  # the map-style dataset to split
        num_replicas: int,  # world size
        rank: int,  # this process's global rank
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))
