"""The training batches (:class:`BatchPlan`): resumable, sharded over processes, augmented with per-batch seeds,
optionally mixed with extra (generated or pseudo-labelled) images at a fixed share of every batch."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..batching import num_batches, shard
from ..data import Augment, gather
from ..errors import ConfigError
from ..rng import derive_seed

LABELED_STREAM, EXTRA_DRAW = 1, 2  # keys that set the mixed batches' seeds apart from the augmentation's


def shard_indices(n_items: int, *, shuffle: bool, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                  drop_last: bool = False) -> Tensor:
    """This rank's item order for an epoch: one permutation shared by all ranks (a pure function of
    ``seed`` and ``epoch``), dealt round-robin. Shards are equally long: with ``drop_last`` the tail that does
    not divide evenly is dropped, otherwise the first items are repeated to fill it, as DistributedSampler does."""
    if shuffle:
        order = torch.randperm(n_items, generator=torch.Generator().manual_seed(derive_seed(seed, epoch)))
    else:
        order = torch.arange(n_items)
    total = num_batches(n_items, world_size, drop_last=drop_last) * world_size
    if total > n_items:
        order = torch.cat([order, order[: total - n_items]])
    return shard(order[:total], rank, world_size)


def labeled_stream(n_items: int, start: int, count: int, *, seed: int) -> Tensor:
    """Positions ``start`` to ``start + count`` of an endless sequence of permutations of ``range(n_items)``, the
    c-th drawn by ``(seed, c)``: every item once per pass, whichever batch a pass begins or ends in."""
    first, last = start // n_items, (start + count - 1) // n_items
    passes = [torch.randperm(n_items, generator=torch.Generator().manual_seed(derive_seed(seed, LABELED_STREAM, c)))
              for c in range(first, last + 1)]
    offset = start - first * n_items
    return torch.cat(passes)[offset:offset + count]


class _Batches(Dataset):
    """Batch ``i`` of an epoch as one item: gathered, with ``extra_count`` images of ``extra`` drawn for it, and
    augmented with the generator seeded for it, in whichever process loads it."""

    def __init__(self, dataset: Dataset, batches: list[Tensor], first: int, augment: Augment | None, *, seed: int,
                 epoch: int, rank: int, extra: Dataset | None = None, extra_count: int = 0) -> None:
        self.dataset, self.batches, self.first, self.augment = dataset, batches, first, augment
        self.seed, self.epoch, self.rank = seed, epoch, rank
        self.extra, self.extra_count = extra, extra_count

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x, y = gather(self.dataset, self.batches[i])
        if self.extra is not None:
            draw = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, self.first + i, self.rank,
                                                             EXTRA_DRAW))
            extra_x, extra_y = gather(self.extra, torch.randint(len(self.extra), (self.extra_count,), generator=draw))
            x, y = torch.cat([x, extra_x]), torch.cat([y, extra_y])
        if self.augment is not None:
            seed = derive_seed(self.seed, self.epoch, self.first + i, self.rank)
            x = self.augment(x, torch.Generator().manual_seed(seed))
        return x, y


def extra_share(fraction: float, batch_size: int) -> int:
    """The extra images in a batch of ``batch_size`` with a ``fraction`` of extra data; one line when the batch would
    hold no extra or no labeled image."""
    count = round(fraction * batch_size)
    if not 0 < count < batch_size:
        raise ConfigError(f"--extra-fraction {fraction} of a batch of {batch_size} leaves no extra or no labeled "
                          "image in it; choose a fraction between (the papers use 0.7)")
    return count


@dataclass(frozen=True)
class BatchPlan:
    """How the training batches of every epoch are drawn: ``batch_size`` items of ``dataset`` per batch and process,
    in an order shuffled by (``seed``, epoch), each batch augmented (``augment(x, generator)``) with a generator
    seeded for it; ``drop_last`` drops a last partial batch.

    With ``extra``, ``round(extra_fraction * batch_size)`` images of every batch are drawn from ``extra`` uniformly
    at random (with replacement, as the generated-data papers' sampler does) and the others from ``dataset``, in a
    sequence of permutations that runs on across epochs (each item once per pass); an epoch keeps the number of
    batches ``dataset`` alone fills, and the extra images come last in each batch. Augmentation treats all alike.
    """

    dataset: Dataset
    batch_size: int
    seed: int = 0
    shuffle: bool = True
    drop_last: bool = False
    augment: Augment | None = None
    extra: Dataset | None = None
    extra_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.extra is not None:
            extra_share(self.extra_fraction, self.batch_size)

    @property
    def extra_count(self) -> int:
        """Extra images in every batch."""
        return extra_share(self.extra_fraction, self.batch_size) if self.extra is not None else 0

    def per_process(self, world_size: int = 1) -> int:
        """Batches each of ``world_size`` processes gets per epoch: its equal share of the items
        (:func:`shard_indices`) in batches."""
        share = num_batches(len(self.dataset), world_size, drop_last=self.drop_last)  # items per process
        return num_batches(share, self.batch_size, drop_last=self.drop_last)

    def epoch(self, epoch: int, *, start_batch: int = 0, rank: int = 0, world_size: int = 1, num_workers: int = 0,
              pin_memory: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(x, y)`` batches of epoch ``epoch`` for process ``rank`` of ``world_size``, from batch
        ``start_batch`` on.

        Order and augmentation are a pure function of (``seed``, epoch, batch index, ``rank``): a run resumed with
        ``start_batch=k`` gets exactly batches k, k+1, ... of the uninterrupted run, and the skipped batches are
        never loaded. ``num_workers`` worker processes (0: this one) gather and augment the batches, so the same
        batches come out whatever the number; ``pin_memory`` puts them in page-locked memory (for asynchronous
        copies to a GPU)."""
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside world_size {world_size}")
        count = self.per_process(world_size)
        if self.extra is None:
            order = shard_indices(len(self.dataset), shuffle=self.shuffle, seed=self.seed, epoch=epoch, rank=rank,
                                  world_size=world_size, drop_last=self.drop_last)
            batches = [order[i * self.batch_size:(i + 1) * self.batch_size] for i in range(start_batch, count)]
        else:
            labeled = self.batch_size - self.extra_count  # per batch and rank; ranks take turns along the stream
            first = (epoch * count + start_batch) * world_size  # global batches before this one
            total = (count - start_batch) * world_size
            stream = labeled_stream(len(self.dataset), first * labeled, total * labeled, seed=self.seed) \
                if total > 0 else None
            batches = [] if stream is None else list(stream.view(-1, world_size, labeled)[:, rank])
        items = _Batches(self.dataset, batches, start_batch, self.augment, seed=self.seed, epoch=epoch, rank=rank,
                         extra=self.extra, extra_count=self.extra_count)
        # Its own generator: an iterator over a DataLoader draws its workers' base seed from the generator it is
        # given, by default torch's global one, which the training attacks draw from (a resumed run would draw once
        # more). Every batch is seeded above, so the base seed changes nothing here.
        yield from DataLoader(items, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                              generator=torch.Generator().manual_seed(self.seed))
