"""The evaluation attacks, chosen by name, each run on one batch of a deterministic (folded, eval-mode) model.

- ``autoattack``: the real AutoAttack (``version`` standard / plus / rand, or custom with ``aa_attacks``);
- ``apgd-ce``: AutoAttack's APGD on the cross-entropy, 100 iterations, with the restarts of its standard version
  (1 for Linf and L2; 5 for L1, with APGD-L1's schedule of growing radii);
- ``pgd-K``: PGD on the cross-entropy, K steps of eps/4 from a uniform random start (``pgd`` alone: K = 20);
- ``cw-K``: the same PGD on the Carlini-Wagner margin loss with kappa 50 (``cw`` alone: K = 20).

Like AutoAttack, every attack attacks only the points the model classifies correctly; a point is robust when it
is classified correctly and stays so. New families register in :data:`EVAL_ATTACKS`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..attacks import CWPGD, PGD
from ..errors import ConfigError
from ..limits import ATTACK_STEPS
from ..registry import Registry
from ..threat import ATTACK_NORMS, THREAT_MODELS, Threat
from .autoattack import AutoAttackOptions, autoattack_backend, run_autoattack
from .progress import PassProgress


@dataclass
class AttackOutcome:
    """What an attack did to one batch."""

    robust: torch.Tensor  # bool per image: correct before and after the attack
    broken: dict[str, int] = field(default_factory=dict)  # points each of AutoAttack's attacks broke
    flags: list[str] = field(default_factory=list)  # gradient-masking and threat-model warnings
    seconds: dict[str, float] = field(default_factory=dict)  # per AutoAttack attack
    attacks: list[str] = field(default_factory=list)  # AutoAttack's attacks in the order it ran them
    backend: str | None = None  # the AutoAttack implementation that ran
    adversarial: torch.Tensor | None = None  # the attacked images (the adversarial point where one was found)
    predictions: torch.Tensor | None = None  # the model's prediction on each of them


class EvalAttack:
    """Base class: ``name`` (as reports show it), :meth:`describe`, :meth:`options` and :meth:`run` on one batch.
    ``passes`` is the number of forward passes a batch takes, where it is known (the progress bar's total)."""

    name = ""
    norms: tuple[str, ...] = ATTACK_NORMS
    passes: int | None = None

    def describe(self) -> str:
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """The attack's settings beyond its name, as JSON values (for reports and state folders)."""
        return {}

    def backend(self) -> str | None:
        """The library that runs the attack, with its version, where it is not robust-sabn."""
        return None

    def check_threat(self, threat: Threat) -> None:
        if threat.norm not in self.norms:
            raise ConfigError(f"{self.name} runs in the {', '.join(self.norms)} threat models, not {threat.norm}; "
                              "for L1 use autoattack or apgd-ce")

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, correct: torch.Tensor, *, threat: Threat,
            seed: int, device: torch.device, progress: PassProgress) -> AttackOutcome:
        """Attack the images of ``x`` that ``correct`` marks; ``progress`` counts the model's forward passes."""
        raise NotImplementedError


@dataclass
class PGDEval(EvalAttack):
    """``pgd-K`` / ``cw-K``: K steps of eps/4 from a random start, on the cross-entropy or the CW margin."""

    steps: int = 20
    loss: str = "pgd"  # "pgd" (cross-entropy) or "cw" (CW margin)

    @property
    def name(self) -> str:
        return f"{self.loss}-{self.steps}"

    @property
    def passes(self) -> int:
        return self.steps + 1  # one per step, and the prediction on the result

    def describe(self) -> str:
        loss = "cross-entropy" if self.loss == "pgd" else "CW margin loss (kappa 50)"
        return f"PGD-{self.steps} on the {loss}, step eps/4, random start"

    def options(self) -> dict[str, Any]:
        return {"steps": self.steps, "loss": self.loss}

    def run(self, model, x, y, correct, *, threat, seed, device, progress) -> AttackOutcome:
        robust, adversarial, predictions = torch.zeros_like(correct), x.clone(), torch.full_like(y, -1)
        (todo,) = correct.nonzero(as_tuple=True)
        if len(todo):
            cls = PGD if self.loss == "pgd" else CWPGD
            adversary = cls(model, eps=threat.eps, alpha=threat.eps / 4, steps=self.steps, random_start=True,
                            norm=threat.norm)
            xb, yb = x[todo].to(device), y[todo].to(device)
            adv = adversary(xb, yb)
            with torch.no_grad():
                predicted = model(adv).argmax(1).cpu()
            robust[todo] = predicted == yb.cpu()
            adversarial[todo], predictions[todo] = adv.cpu().to(x.dtype), predicted
        return AttackOutcome(robust, adversarial=adversarial, predictions=predictions)


@dataclass
class AutoAttackEval(EvalAttack):
    """The real AutoAttack, unchanged, on the batch (see :func:`robust_sabn.eval.autoattack.run_autoattack`)."""

    settings: AutoAttackOptions = field(default_factory=AutoAttackOptions)
    label: str = "autoattack"
    norms = THREAT_MODELS

    @property
    def name(self) -> str:
        return self.label

    @property
    def version(self) -> str:
        return self.settings.version

    def describe(self) -> str:
        if self.label == "apgd-ce":
            return "APGD-CE (AutoAttack's; 100 iterations; restarts as in its standard version: 1, 5 for L1)"
        if self.version != "custom":
            return f"AutoAttack, {self.version} version"
        restarts = f", APGD restarts {self.settings.restarts}" if self.settings.restarts is not None else ""
        return f"AutoAttack, custom version ({', '.join(self.settings.attacks)}{restarts})"

    def options(self) -> dict[str, Any]:
        return {"version": self.version, "aa_attacks": None if self.settings.attacks is None else
                list(self.settings.attacks), "aa_restarts": self.settings.restarts}

    def backend(self) -> str:
        return autoattack_backend().name

    def run(self, model, x, y, correct, *, threat, seed, device, progress) -> AttackOutcome:
        result = run_autoattack(model, x, y, threat, self.settings, seed=seed, device=device, progress=progress)
        return AttackOutcome(result.robust & correct, result.broken, result.flags, result.seconds, result.attacks,
                             result.backend, result.adversarial, result.predictions)


EVAL_ATTACKS: Registry[Callable[..., EvalAttack]] = Registry("evaluation attack")


def _no_steps(name: str, steps: int | None) -> None:
    if steps is not None:
        raise ConfigError(f"attack {name!r} takes no step count; drop the -{steps}")


def _steps(name: str, steps: int | None) -> int:
    if steps is None:
        return 20
    return ATTACK_STEPS.but(example=f"{name}-20").check(steps, f"the steps K of {name}-K", "--attack")


@EVAL_ATTACKS.register("autoattack")
def _autoattack(steps: int | None, version: str = "standard", aa_attacks: Sequence[str] | None = None,
                aa_restarts: int | None = None) -> EvalAttack:
    _no_steps("autoattack", steps)
    return AutoAttackEval(AutoAttackOptions(version, tuple(aa_attacks) if aa_attacks else None, aa_restarts))


@EVAL_ATTACKS.register("apgd-ce")
def _apgd_ce(steps: int | None) -> EvalAttack:
    _no_steps("apgd-ce", steps)
    return AutoAttackEval(AutoAttackOptions("custom", ("apgd-ce",), standard_apgd=True), label="apgd-ce")


@EVAL_ATTACKS.register("pgd")
def _pgd(steps: int | None) -> EvalAttack:
    return PGDEval(_steps("pgd", steps), "pgd")


@EVAL_ATTACKS.register("cw")
def _cw(steps: int | None) -> EvalAttack:
    return PGDEval(_steps("cw", steps), "cw")


def make_eval_attack(name: str, version: str = "standard", aa_attacks: Sequence[str] | None = None,
                     aa_restarts: int | None = None) -> EvalAttack:
    """The attack called ``name`` ("autoattack", "apgd-ce", "pgd-20", "cw", ...: a registered family, with "-K"
    for K steps where the family takes steps); ``version``, ``aa_attacks`` and ``aa_restarts`` are AutoAttack's."""
    if not isinstance(name, str):
        raise ConfigError(f"the attack must be a name like 'autoattack' or 'pgd-20', got {name!r}")
    family, steps = name, None
    head, dash, tail = name.rpartition("-")
    if dash and tail.isdigit():
        # int() refuses over 4300 digits: such a K is out of range anyway, and the message shows its size
        family, steps = head, int(tail) if len(tail) <= 4000 else 10 ** len(tail)
    if family not in EVAL_ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; choose one of: autoattack, apgd-ce, pgd-K, cw-K (K steps)")
    if family == "autoattack":
        return EVAL_ATTACKS[family](steps, version=version, aa_attacks=aa_attacks, aa_restarts=aa_restarts)
    if aa_attacks or aa_restarts is not None:
        raise ConfigError("aa_attacks and aa_restarts apply to attack 'autoattack' only")
    return EVAL_ATTACKS[family](steps)
