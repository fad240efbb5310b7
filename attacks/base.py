"""The attack base class: torchattacks' ``Attack`` contract plus a route and a BN mode.

Every attack here is a ``torchattacks.Attack``: ``adv = attack(images, labels)`` with images in [0, 1],
targeted modes, ``set_normalization_used`` and composition with torchattacks' ``MultiAttack`` all work as
there. On top of that an attack runs through one route of a routed model (``route=``), keeps batch
normalization in eval or train mode while attacking (``bn_mode=``), and leaves the model as it found it.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torchattacks.attack import Attack

from ..constants import BN_MODES
from ..errors import ConfigError, RouteError
from ..nn import routes_of, use_route
from ..registry import choose
from ..threat import ATTACK_NORMS, Threat


def check_positive(name: str, value: float) -> float:
    value = float(value)
    if not value > 0:
        raise ConfigError(f"attack {name} must be positive, got {value}")
    return value


def check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"attack steps must be an integer >= 1, got {steps!r}")
    return steps


def check_bn_mode(bn_mode: str) -> str:
    return choose(bn_mode, BN_MODES, "bn_mode")


@contextmanager
def restore_modes(model: nn.Module) -> Iterator[nn.Module]:
    """Restore every module's own train/eval flag on exit (``model.train(flag)`` would overwrite frozen parts)."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block no parameter of ``model`` requires a gradient (those that did again on exit): an attack
    differentiates with respect to its input alone, so autograd records no path to the weights, and a compiled
    model compiles a backward pass without weight gradients. Results are the same bit for bit."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        yield model
    finally:
        for p in params:
            p.requires_grad_(True)


class RoutedAttack(Attack):
    """A torchattacks ``Attack`` that runs through ``route`` with batch norms in ``bn_mode``.

    ``route=None`` leaves the model's current route choice alone (plain models, or a route the caller
    set); on a model without routed layers any route is a no-op. ``bn_mode="eval"`` attacks the model in
    eval mode (the usual choice); ``"train"`` keeps it in train mode, so batch statistics are used and the
    route's running statistics are updated by the attack's forwards, as in the official SaBN code.
    Afterwards every module's train/eval flag and the route choice are restored exactly, even on error.
    Gradients are taken with ``torch.autograd.grad`` w.r.t. the input only, with the parameters frozen while the
    attack runs (:func:`frozen_parameters`): no parameter ``.grad`` is touched and no weight gradient is computed,
    by eager or compiled models. Under float16 autocast (``--amp fp16``) the ascent
    directions stay those of float32: see :meth:`input_gradient`.
    """

    float16_ok = True  # its loss keeps float32's ascent directions under float16 autocast (see _precision)

    def __init__(self, name: str, model: nn.Module, route: str | None = None, bn_mode: str = "eval") -> None:
        super().__init__(name, model)
        self.route = self.checked_route(route)
        self.bn_mode = check_bn_mode(bn_mode)
        train = bn_mode == "train"
        self.set_model_training_mode(model_training=train, batchnorm_training=train)

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        route = use_route(self.model, self.route) if self.route is not None else nullcontext()
        with (restore_modes(self.model), frozen_parameters(self.model), route, torch.enable_grad(),
              self._precision(inputs.device.type)):
            return super().__call__(inputs, labels, *args, **kwargs)

    def _precision(self, device_type: str):
        """Leave float16 autocast for float32 where float16 cannot give float32's directions: with BN in train mode
        (samples interact through the batch statistics, so :meth:`input_gradient`'s per-sample rescaling would
        change the directions) and for losses that compare two nearby predictions (``float16_ok = False``)."""
        if ((self.bn_mode == "train" or not self.float16_ok) and torch.is_autocast_enabled(device_type)
                and torch.get_autocast_dtype(device_type) == torch.float16):
            return torch.autocast(device_type, enabled=False)
        return nullcontext()

    def checked_route(self, route: str | None) -> str | None:
        """``route`` if the model has it (or has no routed layers, where routes are no-ops); else RouteError."""
        routes = routes_of(self.model)
        if route is not None and routes and route not in routes:
            raise RouteError(f"unknown attack route {route!r}; this model's routes are {list(routes)}")
        return route

    @property
    def threat(self) -> Threat:
        """The threat model the attack runs in."""
        return Threat(self.norm, self.eps)

    def set_threat(self, norm: str, eps: float | str) -> None:
        """Validate and keep ``norm`` and ``eps`` (torchattacks' attribute names) as one :class:`Threat`."""
        threat = Threat(norm, eps).require(ATTACK_NORMS, self.attack)
        self.norm, self.eps = threat.norm, threat.eps

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """What the attack ascends: cross-entropy on ``labels``, or minus cross-entropy on ``target`` (targeted)."""
        return -F.cross_entropy(logits, target) if target is not None else F.cross_entropy(logits, labels)

    def input_gradient(self, images: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """Gradient of :meth:`loss` (computed in float32) w.r.t. ``images`` alone.

        float16 logits (autocast) keep nothing below 6e-8, so the tiny gradients of confidently classified
        samples would underflow to zero and PGD would leave them where they started. There the backward pass
        starts from each sample's logit gradient scaled to unit norm: every sample's input gradient is only
        rescaled, and its direction (all an attack step uses) is that of float32, up to rounding.
        """
        images = images.detach().requires_grad_(True)
        logits = self.get_logits(images)
        if logits.dtype != torch.float16:
            return torch.autograd.grad(self.loss(logits.float(), labels, target), images)[0]
        leaf = logits.detach().float().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.loss(leaf, labels, target), leaf)
        grad = grad / grad.norm(dim=1, keepdim=True).clamp_min(torch.finfo(grad.dtype).tiny)
        return torch.autograd.grad(logits, images, grad_outputs=grad.to(logits.dtype))[0]

    def targets(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        return self.get_target_label(images, labels) if self.targeted else None
