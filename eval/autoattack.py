"""Run the real AutoAttack once and read its per-attack results, flags and progress from its log.

Backend: upstream ``autoattack`` (fra31/auto-attack) when a real one is installed, else PyPI's
``pyautoattack`` through robust-sabn's adapter, which ``_robust_sabn_hooks`` supplies as the module
``autoattack`` (it says so with ``IS_ROBUST_SABN_ADAPTER``). torchattacks' ``AutoAttack``
(10-iteration APGD/FAB) is never used. AutoAttack runs unmodified: one ``run_standard_evaluation`` call.
robust-sabn only replaces its logger by a recorder that keeps the gradient-masking warnings of its checks
(randomness, zero gradients, Square beating the white-box attacks, ...), counts the points each attack
breaks per batch (the per-attack robust accuracy) and drives the progress bars.
"""
from __future__ import annotations

import importlib
import importlib.metadata as metadata
import re
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..constants import AA_ATTACKS, AA_VERSIONS
from ..devices import model_device
from ..errors import ConfigError
from ..registry import choose
from ..threat import Threat
from .progress import PassProgress

_BATCH_LINE = re.compile(r"^(?P<attack>[\w-]+) - (?P<batch>\d+)/(?P<batches>\d+) - (?P<broken>\d+) out of \d+ ")
_RUNNING_LINE = re.compile(r"^running (?P<attack>[\w-]+)$")  # pyautoattack's line before each attack


@dataclass(frozen=True)
class Backend:
    name: str
    AutoAttack: type


def autoattack_backend() -> Backend:
    """Upstream ``autoattack`` if installed, else pyautoattack through robust-sabn's adapter."""
    try:
        module = importlib.import_module("autoattack")
    except ImportError as err:
        raise ConfigError(f"AutoAttack is not installed ({err}); pip install pyautoattack") from None
    if getattr(module, "IS_ROBUST_SABN_ADAPTER", False):
        return Backend(f"pyautoattack {_version('pyautoattack')}", module.AutoAttack)
    return Backend(f"autoattack {_version('autoattack')} (upstream)", module.AutoAttack)


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "(unknown version)"


class AttackLog:
    """Stands in for AutoAttack's logger (upstream calls ``log``; pyautoattack uses logging's methods): keeps the
    warnings, counts the points each attack breaks, and names the running attack on the progress bar."""

    def __init__(self, progress: PassProgress | None = None, passes: dict[str, int] | None = None) -> None:
        self.flags: list[str] = []
        self.broken: dict[str, int] = {}
        self.finished: dict[str, float] = {}  # attack -> perf_counter() at its last batch
        self.progress = progress
        self.passes = passes or {}  # attack -> the forward passes it takes on one batch (the bar's total)

    def log(self, message: str) -> None:
        message = str(message)
        if message.startswith("Warning: "):
            self.warning(message[len("Warning: "):])
        else:
            self.debug(message)

    def warning(self, message: str, *args, **_) -> None:
        message = str(message) % args if args else str(message)
        if message not in self.flags:
            self.flags.append(message)

    def debug(self, message: str, *args, **_) -> None:
        message = str(message) % args if args else str(message)
        running = _RUNNING_LINE.match(message)
        if running is not None and self.progress is not None:
            self.progress.phase(running["attack"], self.passes.get(running["attack"]))
        match = _BATCH_LINE.match(message)
        if match is None:
            return
        attack = match["attack"]
        self.broken[attack] = self.broken.get(attack, 0) + int(match["broken"])
        self.finished[attack] = time.perf_counter()
        if self.progress is not None:
            self.progress.note(broken=sum(self.broken.values()))

    info = error = critical = debug


@dataclass
class AutoAttackResult:
    robust: torch.Tensor  # bool per example: still classified correctly after every attack
    attacks: list[str]  # the attacks of the version, in AutoAttack's order
    broken: dict[str, int]  # points each attack broke (counted from AutoAttack's per-batch log lines)
    seconds: dict[str, float]
    flags: list[str] = field(default_factory=list)
    backend: str = ""
    adversarial: torch.Tensor | None = None  # AutoAttack's x_adv: the adversarial point where one was found
    predictions: torch.Tensor | None = None  # the model's prediction on each point of ``adversarial``

    def per_attack(self, clean_correct: int) -> dict[str, float]:
        """Robust accuracy after each attack (cumulative, as AutoAttack reports it), given the number of points
        classified correctly before attacking; empty when the log lines do not add up to the result."""
        return per_attack_accuracy(self.attacks, self.broken, clean_correct, int(self.robust.sum()), len(self.robust))


def per_attack_accuracy(attacks: Sequence[str], broken: dict[str, int], correct: int, robust: int,
                        n: int) -> dict[str, float]:
    """Robust accuracy after each attack (cumulative, as AutoAttack reports it) from the points each one broke;
    empty when AutoAttack's log lines do not add up to its result."""
    if correct - sum(broken.values()) != robust:
        return {}
    accuracies = {}
    for attack in attacks:
        correct -= broken.get(attack, 0)
        accuracies[attack] = correct / n
    return accuracies


@dataclass(frozen=True)
class AutoAttackOptions:
    """Which AutoAttack runs: a ``version`` (standard, plus, rand, or custom with ``attacks``), APGD's ``restarts``
    (None: the version's), and ``standard_apgd``: APGD and APGD-T with the standard version's settings for the
    threat model (robust-sabn's "apgd-ce" check, the audit's white-box attack: 1 restart and 9 target classes for
    Linf and L2; for L1, 5 restarts, 5 target classes and APGD-L1's schedule of growing radii, ``use_largereps``).
    Checked when made."""

    version: str = "standard"
    attacks: tuple[str, ...] | None = None
    restarts: int | None = None
    standard_apgd: bool = False

    def __post_init__(self) -> None:
        choose(self.version, AA_VERSIONS, "AutoAttack version")
        if self.version == "custom":
            unknown = [a for a in self.attacks or () if a not in AA_ATTACKS]
            if not self.attacks or unknown:
                raise ConfigError(f"version 'custom' needs attacks from {list(AA_ATTACKS)}, "
                                  f"got {list(self.attacks or ())}")
            object.__setattr__(self, "attacks", tuple(self.attacks))
        else:
            object.__setattr__(self, "attacks", None)
        restarts = self.restarts
        if restarts is not None and (isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1):
            raise ConfigError(f"APGD restarts must be a positive integer, got {restarts!r}")


def attack_passes(adversary: Any) -> dict[str, int]:
    """The model's forward passes each attack of a pyautoattack-style ``adversary`` takes on one batch: exact for
    APGD and FAB, which run all their iterations (as counted on pyautoattack 0.2.0), an upper bound for Square,
    which stops once every point is broken. The progress bar's total, from which it estimates the time left."""
    apgd, targeted, fab, square = adversary.apgd, adversary.apgd_targeted, adversary.fab, adversary.square
    one_apgd = apgd.n_restarts * (apgd.n_iter + 1) + 2
    one_fab = fab.n_restarts * (2 * fab.n_iter + 2) + 2
    return {"apgd-ce": one_apgd, "apgd-dlr": one_apgd,
            "apgd-t": targeted.n_target_classes * targeted.n_restarts * (targeted.n_iter + 2) + 2,
            "fab": one_fab, "fab-t": fab.n_target_classes * (2 * fab.n_iter + 3) + 2,
            "square": square.n_restarts * square.n_queries + 4}


def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat,
                   options: AutoAttackOptions = AutoAttackOptions(), *, seed: int = 0,
                   device: torch.device | str | None = None,
                   progress: bool | PassProgress = True) -> AutoAttackResult:
    """AutoAttack as ``options`` say, in ``threat``, on a deterministic ``model`` in eval mode, all of ``x`` in one
    batch.

    ``device`` defaults to the model's (the images may live anywhere, e.g. a CUDA model and CPU test images).
    ``progress`` is a bar of :class:`PassProgress` or a switch. Returns which points stay robust, per-attack robust
    accuracy, the flags AutoAttack raised and its adversarial points.
    """
    backend = autoattack_backend()
    device = device if device is not None else model_device(model)
    norm, eps = threat.norm, threat.eps
    adversary = backend.AutoAttack(model, norm=norm, eps=eps, seed=seed, verbose=False, version=options.version,
                                   attacks_to_run=list(options.attacks or ()), device=device)
    adversary.verbose = True  # per-batch lines go to the recorder, not to stdout
    if options.standard_apgd:
        adversary.apgd.n_restarts = 5 if norm == "L1" else 1
        adversary.apgd_targeted.n_target_classes = 5 if norm == "L1" else 9
        for apgd in (adversary.apgd, adversary.apgd_targeted):
            apgd.use_largereps = norm == "L1"
    if options.restarts is not None:
        adversary.apgd.n_restarts = options.restarts
    to_run = list(adversary.attacks_to_run)
    bar = nullcontext(progress) if isinstance(progress, PassProgress) else PassProgress(model, "AutoAttack",
                                                                                         enabled=progress)
    start = time.perf_counter()
    with bar as bar:
        log = AttackLog(bar, attack_passes(adversary))
        for owner in (adversary, adversary.apgd, adversary.apgd_targeted):
            owner.logger = log
        x_adv, y_adv = adversary.run_standard_evaluation(x, y, bs=len(x), return_labels=True)
    robust = (y_adv.to(y.device) == y)
    x_adv = x_adv.to(x.device)
    _check_perturbation(x, x_adv, threat, log)

    seconds, previous = {}, start
    for attack in to_run:
        if attack in log.finished:
            seconds[attack], previous = log.finished[attack] - previous, log.finished[attack]
    return AutoAttackResult(robust.cpu(), to_run, dict(log.broken), seconds, log.flags, backend.name, x_adv.cpu(),
                            y_adv.cpu())


def perturbation_size(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """The ``norm`` (Linf, L2 or L1) of each image's perturbation in ``delta``."""
    delta = delta.flatten(1)
    if norm == "Linf":
        return delta.abs().amax(1)
    return delta.norm(p=2 if norm == "L2" else 1, dim=1)


def _check_perturbation(x: torch.Tensor, x_adv: torch.Tensor, threat: Threat, log: AttackLog) -> None:
    """Flag adversarial points outside the threat model (they would make the robust accuracy meaningless)."""
    norm, eps = threat.norm, threat.eps
    size = perturbation_size(x_adv - x, norm)
    if (size > eps + 1e-5 * max(1.0, eps)).any() or x_adv.min() < 0 or x_adv.max() > 1:
        log.warning(f"adversarial points outside the {norm} ball of radius {eps:.5f} or outside [0, 1] "
                    f"(largest perturbation {size.max().item():.5f})")
