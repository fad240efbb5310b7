"""How an evaluation runs, as one object that every evaluation path takes: :func:`~robust_sabn.eval.evaluate`, the
eps sweep, the route-mixing front, training's validation and the benchmarks.

::

    settings = EvalSettings(Threat("Linf", "8/255"), attack="pgd-20", seed=1, batch_size=128)
    report = evaluate(model, x, y, settings, route="adv")

The attack is a name ("autoattack", "apgd-ce", "pgd-20", "cw-10") or an :class:`~robust_sabn.eval.EvalAttack`
(``make_eval_attack("autoattack", version="plus")`` for AutoAttack's other versions); None computes clean
accuracy only. Everything is checked when the object is made, once.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from ..devices import model_device, resolve_device
from ..distributed import Processes
from ..errors import ConfigError
from ..rng import check_seed
from ..threat import Threat
from .attacks import EvalAttack, make_eval_attack
from .numerics import check_numerics


@dataclass(frozen=True)
class EvalSettings:
    """The threat model, the attack, the seed of batch 0 (batch ``i``'s is derived from it), the batch size, the
    device (None: the model's), the numerics form (:mod:`robust_sabn.eval.numerics`), progress bars, the torchrun
    processes that share the batches (None: this process alone), and whether reports keep the adversarial points
    that broke."""

    threat: Threat = Threat()
    attack: EvalAttack | str | None = "autoattack"
    seed: int = 0
    batch_size: int = 256
    device: torch.device | str | None = None
    numerics: str = "exact"
    progress: bool = True
    processes: Processes | None = None
    keep_adversarials: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.threat, Threat):
            raise ConfigError(f"the threat model must be a Threat, e.g. Threat('Linf', '8/255'), got {self.threat!r}")
        if isinstance(self.attack, str):
            object.__setattr__(self, "attack", make_eval_attack(self.attack))
        if self.attack is not None:
            self.attack.check_threat(self.threat)
        check_seed(self.seed)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        check_numerics(self.numerics)

    def on(self, model: nn.Module) -> EvalSettings:
        """These settings with the device decided (the model's when none was given; a name by the device rule of
        :func:`robust_sabn.devices.resolve_device`) and the processes set (this one alone when none were given)."""
        device = self.device
        if device is None:
            device = self.processes.device if self.processes is not None else model_device(model)
        device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        return replace(self, device=device, processes=self.processes or Processes(device=device))

    def with_attack(self, attack: EvalAttack | str | None) -> EvalSettings:
        return replace(self, attack=attack)

    def identity(self) -> dict:
        """What decides the answer (the state folder's fingerprint and the report's settings): JSON values."""
        attack = self.attack
        return {"attack": None if attack is None else attack.name, **({} if attack is None else attack.options()),
                "norm": self.threat.norm, "eps": self.threat.eps, "seed": self.seed, "batch_size": self.batch_size,
                "numerics": self.numerics, "adversarials": self.keep_adversarials}
