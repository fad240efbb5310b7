"""Batches and shards, defined once: how many batches ``n`` items make, where each batch lies, and which share of
a list each of several processes takes. Training, evaluation and re-calibration all count and deal with these."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def num_batches(n: int, batch_size: int, *, drop_last: bool = False) -> int:
    """Batches of ``batch_size`` that ``n`` items fill: the last one partial, or dropped with ``drop_last``."""
    return n // batch_size if drop_last else -(-n // batch_size)


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Where each batch of ``n`` items lies, in order; the last one may be shorter."""
    return [slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def shard(items: Sequence[T], rank: int, world_size: int) -> Sequence[T]:
    """Process ``rank``'s share of ``items`` among ``world_size`` processes: every ``world_size``-th item from
    position ``rank`` (dealt round-robin, so that the shares differ in length by at most one)."""
    return items[rank::world_size]
