"""Clean and PGD accuracy of a model on a dataset through a chosen route, in eval mode (validation, quickstart,
``bench train``). Sharded over processes under DDP."""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from ..attacks import PGD
from ..nn import use_route
from .data import batch_iterator


def pgd_attack(model: nn.Module, *, eps: float, steps: int, route: str | None, norm: str = "Linf") -> PGD:
    """The evaluation PGD: random start, step ``2.5 * eps / steps`` (Madry et al.'s rule), eval mode."""
    return PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, norm=norm, route=route, bn_mode="eval")


def accuracy(model: nn.Module, dataset: Dataset, *, route: str | None, attack: PGD | None = None,
             batch_size: int = 256, device: torch.device | str = "cpu", seed: int = 0,
             rank: int = 0, world_size: int = 1) -> float:
    """Accuracy of ``model`` (eval mode, ``route``) on ``dataset``, on ``attack(x, y)`` when an attack is given.

    The attack's random start is drawn under ``seed`` inside a forked RNG, so results are repeatable and the
    caller's generators are left untouched. With ``world_size > 1`` each process scores its shard and the
    counts are summed (shards are evened by repeating up to ``world_size - 1`` images, as DistributedSampler does).
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    correct = torch.zeros(2, dtype=torch.float64, device=device)
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), (use_route(model, route) if route else nullcontext()):
            torch.manual_seed(seed + rank)
            for x, y in batch_iterator(dataset, batch_size, shuffle=False, seed=seed, epoch=0,
                                       rank=rank, world_size=world_size):
                x, y = x.to(device), y.to(device)
                if attack is not None:
                    x = attack(x, y)
                with torch.no_grad():
                    correct[0] += (model(x).argmax(1) == y).sum()
                correct[1] += len(y)
    finally:
        model.train(was_training)
    if world_size > 1:
        dist.all_reduce(correct)
    return (correct[0] / correct[1].clamp_min(1)).item()
