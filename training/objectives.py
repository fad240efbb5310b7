"""Adversarial-training objectives: each crafts its own attack and returns the loss of one step.

Routes (no-ops on models without routed layers):

- ``madry``: PGD through the adv route; loss ``CE(model(x_adv))`` through the adv route. Only the adv route
  (and the shared layers) is trained.
- ``fast``: as ``madry`` with FGSM from a random start (Wong et al. 2020; ``step_size`` is FGSM's step,
  1.25 * eps there; ``steps`` is ignored).
- ``hybrid``: the SaBN paper's ``(CE(model(x), clean route) + CE(model(x_adv), adv route)) / 2``, both halves
  in one ``split_routes`` forward over ``cat([x, x_adv])``; PGD through the adv route.
- ``trades``: ``CE(f_clean(x), y) + beta * KL(f_clean(x) || f_adv(x_adv))`` with ``x_adv`` from
  :class:`~robust_sabn.attacks.TradesPGD` (it moves the adv route's prediction away from the clean route's);
  natural logits through the clean route, adversarial logits through the adv route, in one fused forward.
  On a plain model this is TRADES exactly.
- ``mart``: MART (Wang et al. 2020): a boosted CE on ``x_adv`` through the adv route (CE plus
  ``-log(1 - p_adv(most likely wrong class))``) plus ``beta`` times the KL from the clean route's prediction to the
  adv route's, weighted per image by ``1 - p_clean(y)`` (misclassified clean images weigh more); PGD through the
  adv route, one fused forward as ``trades``.

``label_smoothing`` smooths every training cross-entropy (PyTorch's ``label_smoothing``: the target puts
``1 - s + s / C`` on the label and ``s / C`` on every other class); the attacks' losses are never smoothed.

Each objective splits into :meth:`Objective.adversarial` (craft ``x_adv``) and :meth:`Objective.loss` (the loss on
``x`` and ``x_adv``), so adversarial weight perturbation can take the gradient of the same loss at the same
``x_adv`` before the step.

Logged accuracies: ``adv_logits`` are the training forward's logits on ``x_adv``. ``hybrid`` and ``trades``
get ``clean_logits`` from their joint forward for free; ``madry`` and ``fast`` train only the adv route, so
their ``clean_logits`` come from one extra no-grad forward of ``x`` through the adv route in eval mode
(running statistics untouched; about +5% time for PGD-7 AT, +15% for fast AT).

On a model without routed layers ``hybrid`` and ``trades`` run two forwards instead of one, so clean and
adversarial inputs are never normalized with joint batch statistics (what the official code's two calls do).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import FGSM, PGD, RoutedAttack, TradesPGD, restore_modes
from ..attacks.base import check_bn_mode, check_norm, check_positive, check_steps
from ..constants import ADV_ROUTE, CLEAN_ROUTE
from ..errors import ConfigError
from ..limits import check_eps
from ..nn import routes_of, split_routes, use_route
from ..registry import Registry

OBJECTIVES: Registry[type[Objective]] = Registry("objective")


@dataclass
class StepOutput:
    """One training step's loss (scalar, with grad) and the detached logits used for logging."""

    loss: Tensor
    clean_logits: Tensor | None
    adv_logits: Tensor | None


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel: attacks run on it, so their forwards do not sync anything."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class Objective:
    """Base class: holds the training attack's settings and the two route names. A new objective is one subclass
    registered in :data:`OBJECTIVES` (``@OBJECTIVES.register("name")``), built from a config by :meth:`from_config`."""

    step_factor = 0.25  # the training attack's default step: step_factor * eps
    step_exceeds_eps = False  # whether a step larger than eps makes sense (one-step attacks)
    single_route = False  # trains only the adv route (the clean route's own parameters get no gradient)

    def __init__(self, *, eps: float, step_size: float, steps: int, norm: str = "Linf", bn_mode: str = "eval",
                 clean_route: str = CLEAN_ROUTE, adv_route: str = ADV_ROUTE, label_smoothing: float = 0.0) -> None:
        self.norm = check_norm(norm)
        self.eps = check_eps(eps, norm)
        self.step_size = check_positive("step_size", step_size)
        self.steps = check_steps(steps)
        self.bn_mode = check_bn_mode(bn_mode)
        self.clean_route = clean_route
        self.adv_route = adv_route
        if not 0 <= label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    @classmethod
    def from_config(cls, config: Any) -> Objective:
        """The objective a :class:`~robust_sabn.training.TrainConfig` describes."""
        return cls(eps=config.eps, step_size=config.step_size, steps=config.steps, norm=config.attack_norm,
                   bn_mode=config.bn_mode, clean_route=config.clean_route, adv_route=config.adv_route,
                   label_smoothing=config.label_smoothing)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> StepOutput:
        """One step's loss: craft ``x_adv``, then the loss on ``x`` and ``x_adv``."""
        return self.loss(model, x, self.adversarial(model, x, y), y)

    def adversarial(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The training attack's adversarial examples of ``x``."""
        return self.attack(model)(x, y)

    def loss(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, *, log: bool = True) -> StepOutput:
        """The loss on clean ``x`` and adversarial ``x_adv`` (``log=False``: skip work done only for logging)."""
        raise NotImplementedError

    def cross_entropy(self, logits: Tensor, y: Tensor) -> Tensor:
        """The training cross-entropy, with ``label_smoothing``."""
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    def attack(self, model: nn.Module) -> RoutedAttack:
        """The training attack, through the adv route."""
        return PGD(unwrap(model), self.eps, self.step_size, self.steps, norm=self.norm, route=self.adv_route,
                   bn_mode=self.bn_mode)

    def forward_pair(self, model: nn.Module, x: Tensor, x_adv: Tensor) -> tuple[Tensor, Tensor]:
        """Logits of ``x`` through the clean route and of ``x_adv`` through the adv route: one fused forward on a
        routed model, two forwards on a plain one."""
        if routes_of(model) and self.clean_route != self.adv_route:
            with split_routes(model, **{self.clean_route: len(x), self.adv_route: len(x_adv)}):
                return model(torch.cat([x, x_adv])).split([len(x), len(x_adv)])
        with use_route(model, self.clean_route):
            clean = model(x)
        with use_route(model, self.adv_route):
            return clean, model(x_adv)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(eps={self.eps:.5g}, step_size={self.step_size:.5g}, steps={self.steps}, "
                f"norm={self.norm!r}, bn_mode={self.bn_mode!r}, routes=({self.clean_route!r}, {self.adv_route!r}), "
                f"label_smoothing={self.label_smoothing:g})")


@OBJECTIVES.register("madry")
class Madry(Objective):
    """Cross-entropy on PGD adversarials, through the adv route (Madry et al. 2018)."""

    single_route = True

    def loss(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, *, log: bool = True) -> StepOutput:
        with use_route(model, self.adv_route):
            adv_logits = model(x_adv)
            clean_logits = None
            if log:
                with torch.no_grad(), restore_modes(model):
                    clean_logits = unwrap(model).eval()(x)
        return StepOutput(self.cross_entropy(adv_logits, y), clean_logits, adv_logits.detach())


@OBJECTIVES.register("fast")
class Fast(Madry):
    """``madry`` with FGSM from a random start (Wong et al. 2020), step ``step_size``."""

    step_factor = 1.25
    step_exceeds_eps = True

    def __init__(self, **kwargs) -> None:
        if kwargs.get("norm", "Linf") != "Linf":
            raise ConfigError("the fast objective (FGSM) supports norm 'Linf' only")
        super().__init__(**kwargs)

    def attack(self, model: nn.Module) -> RoutedAttack:
        return FGSM(unwrap(model), self.eps, self.step_size, route=self.adv_route, bn_mode=self.bn_mode)


@OBJECTIVES.register("hybrid")
class Hybrid(Objective):
    """The SaBN paper's mean of clean CE (clean route) and adversarial CE (adv route), one fused forward."""

    def loss(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, *, log: bool = True) -> StepOutput:
        clean_logits, adv_logits = self.forward_pair(model, x, x_adv)
        loss = (self.cross_entropy(clean_logits, y) + self.cross_entropy(adv_logits, y)) / 2
        return StepOutput(loss, clean_logits.detach(), adv_logits.detach())


class Regularized(Objective):
    """An objective with a regularizer weighted by ``beta`` (TRADES, MART)."""

    def __init__(self, *, beta: float = 6.0, **kwargs) -> None:
        super().__init__(**kwargs)
        if not beta >= 0:
            raise ConfigError(f"{type(self).__name__} beta must be non-negative, got {beta}")
        self.beta = float(beta)

    @classmethod
    def from_config(cls, config: Any) -> Regularized:
        objective = super().from_config(config)
        objective.beta = float(config.beta)
        return objective

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, beta={self.beta:g})"


@OBJECTIVES.register("trades")
class Trades(Regularized):
    """TRADES (Zhang et al. 2019): clean CE plus ``beta`` times the KL from the clean to the adversarial prediction."""

    def attack(self, model: nn.Module) -> RoutedAttack:
        return TradesPGD(unwrap(model), self.eps, self.step_size, self.steps, norm=self.norm, route=self.adv_route,
                         reference_route=self.clean_route, bn_mode=self.bn_mode)

    def loss(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, *, log: bool = True) -> StepOutput:
        clean_logits, adv_logits = self.forward_pair(model, x, x_adv)
        kl = F.kl_div(F.log_softmax(adv_logits, dim=1), F.softmax(clean_logits, dim=1), reduction="batchmean")
        loss = self.cross_entropy(clean_logits, y) + self.beta * kl
        return StepOutput(loss, clean_logits.detach(), adv_logits.detach())


@OBJECTIVES.register("mart")
class Mart(Regularized):
    """MART (Wang et al. 2020): boosted CE on ``x_adv`` plus ``beta`` times the KL from the clean to the adversarial
    prediction, weighted per image by how unsure the clean prediction is of the label. The constants inside the
    logarithms (1.0001, 1e-12) and the weight's 1.0000001 are those of the authors' code."""

    def loss(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, *, log: bool = True) -> StepOutput:
        clean_logits, adv_logits = self.forward_pair(model, x, x_adv)
        adv_probs = F.softmax(adv_logits, dim=1)
        top2 = adv_probs.topk(2, dim=1).indices
        wrong = torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0])  # the most likely wrong class
        boosted = self.cross_entropy(adv_logits, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), wrong)
        clean_probs = F.softmax(clean_logits, dim=1)
        kl = F.kl_div(torch.log(adv_probs + 1e-12), clean_probs, reduction="none").sum(1)
        weight = 1.0000001 - clean_probs.gather(1, y[:, None]).squeeze(1)
        loss = boosted + self.beta * (kl * weight).mean()
        return StepOutput(loss, clean_logits.detach(), adv_logits.detach())
