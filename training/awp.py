"""Adversarial weight perturbation, AWP (Wu et al. 2020): each step, move the weights a little uphill on the
training loss, take the optimizer step there, and move them back.

The perturbation of a weight tensor ``w`` is ``gamma * ||w|| * g / ||g||``, with ``g`` the gradient of the
objective's own loss (at the step's adversarial examples, BN in train mode) with respect to ``w``: one normalized
ascent step per layer, as in the authors' code. Only the weights of convolutions and linear layers are perturbed;
biases and normalization affines are not (the authors' code perturbs the weight tensors of two or more
dimensions, which in a plain network are exactly these; a routed norm keeps its routes' affines in 2-D tensors,
routes x channels, so the rule here names the layers instead). On a routed model those are exactly the layers
every route shares, while each route's own parameters are its normalization affines: so both routes see the same
perturbed weights, and the perturbation follows the objective's loss through both routes (``hybrid``, ``trades``,
``mart``) or the adv route alone (``madry``). The forward that finds it leaves no trace: every buffer (each
route's running statistics, layer counters) is restored afterwards.

After the optimizer step the perturbation is subtracted again, so the weights move by the update SGD computed
at the perturbed point: ``w <- w - lr * (momentum buffer of grad L(w + v) + wd * (w + v))``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor, nn

EPS = 1e-20  # keeps the normalization finite for a zero gradient


def perturbed_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters AWP perturbs: the weights of convolutions and linear layers (every route shares them)."""
    return [m.weight for m in model.modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and isinstance(m.weight, nn.Parameter) and m.weight.requires_grad]


@contextmanager
def restored_buffers(model: nn.Module) -> Iterator[None]:
    """Put every buffer of ``model`` back as it was when the block ends (running statistics, counters)."""
    saved = [b.clone() for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(model.buffers(), saved):
                buffer.copy_(value)


class WeightPerturbation:
    """AWP of relative size ``gamma``: :meth:`find` computes the perturbation, :meth:`apply` adds or removes it."""

    def __init__(self, gamma: float) -> None:
        self.gamma = gamma

    def find(self, model: nn.Module, loss: Callable[[], Tensor]) -> list[Tensor] | None:
        """The perturbation of each of :func:`perturbed_parameters` uphill on ``loss()`` (a closure that runs the
        model); under torch.distributed the gradient is averaged over processes first, so every process perturbs
        alike. None when the gradient is not finite (the step then runs unperturbed)."""
        params = perturbed_parameters(model)
        with restored_buffers(model):
            grads = torch.autograd.grad(loss(), params)
        if dist.is_available() and dist.is_initialized():
            flat = torch.cat([g.flatten() for g in grads])
            dist.all_reduce(flat)
            grads = [g.view_as(p) for g, p in zip(flat.div_(dist.get_world_size()).split([p.numel() for p in params]),
                                                  params)]
        norms = torch.stack([g.norm() for g in grads])
        if not bool(torch.isfinite(norms).all()):  # one host synchronization per step
            return None
        return [self.gamma * p.detach().norm() / (n + EPS) * g for p, g, n in zip(params, grads, norms)]

    @torch.no_grad()
    def apply(self, model: nn.Module, perturbation: list[Tensor], sign: float = 1.0) -> None:
        """Add ``sign`` times ``perturbation`` to the weights (``sign=-1`` removes it)."""
        torch._foreach_add_(perturbed_parameters(model), perturbation, alpha=sign)
