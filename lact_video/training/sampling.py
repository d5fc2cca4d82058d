"""Which sample each process reads at each step: a pure function of (seed, step), so resuming is exact.

The run reads one endless stream of samples: epoch `e` is a permutation of the dataset seeded
by `seed + e`, and the epochs follow one another. Global micro-batch `c` is the stream positions
`[c * P * b, (c + 1) * P * b)` for `P` processes and `b` samples per process, and process `r`
takes the `b` positions starting at `c * P * b + r * b`. Hence:

- a resumed run starts at micro-batch `global_step * gradient_accumulation_steps` and reads
  exactly what the interrupted run would have read next, without replaying the data;
- one process with batch `P * b` reads the same samples per step as `P` processes with batch `b`.
"""

from __future__ import annotations

import itertools
from typing import Iterator, NamedTuple

import torch


class SampleKey(NamedTuple):
    """One draw from the stream: the dataset index, the epoch it belongs to, and its position."""

    epoch: int
    index: int
    position: int


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the dataset in `epoch`, (num_samples,)."""
    return torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed + epoch))


class ResumableSampler(torch.utils.data.Sampler):
    """Endless `SampleKey`s for one process, starting at global micro-batch `start_micro_batch`."""

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        num_processes: int = 1,
        process_index: int = 0,
        seed: int = 0,
        start_micro_batch: int = 0,
    ):
        if num_samples < 1:
            raise ValueError("the dataset is empty")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.num_processes = num_processes
        self.process_index = process_index
        self.seed = seed
        self.start_micro_batch = start_micro_batch

    def positions(self, micro_batch: int) -> range:
        """Stream positions this process reads in global micro-batch `micro_batch`."""
        start = (micro_batch * self.num_processes + self.process_index) * self.batch_size
        return range(start, start + self.batch_size)

    def __iter__(self) -> Iterator[SampleKey]:
        epoch, order = -1, None
        for micro_batch in itertools.count(self.start_micro_batch):
            for position in self.positions(micro_batch):
                this_epoch, offset = divmod(position, self.num_samples)
                if this_epoch != epoch:
                    epoch, order = this_epoch, epoch_permutation(self.num_samples, self.seed, this_epoch)
                yield SampleKey(epoch, int(order[offset]), position)


class KeyedDataset(torch.utils.data.Dataset):
    """Reads `SampleKey`s from a `ResumableSampler`: the item of `key.index`, tagged with its position.

    A dataset with `set_epoch` (random clip starts) gets the key's epoch first, so the clip
    depends only on the key, also inside DataLoader workers.
    """

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey) -> dict:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(key.epoch)
        item = dict(self.dataset[key.index])
        item["position"] = key.position
        return item
