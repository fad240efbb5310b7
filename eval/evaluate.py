"""``evaluate``: clean and robust accuracy of a model under one attack, on one fixed route, reproducibly.

Protocols (both labelled in every report):

- "single route": one deterministic model, the routed model folded on ``route`` (clean and robust accuracy
  through the same path). This is the model RobustBench loads and what its leaderboard accepts.
- "oracle routing": clean accuracy through ``clean_route``, robust accuracy through ``route``, as the SaBN
  paper reports. It assumes an oracle telling clean from adversarial inputs, so it is not a deployable model.

The attacks are those of :mod:`robust_sabn.eval.attacks`; the batches are :mod:`robust_sabn.eval.batches`'
fixed, independently seeded batches.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..constants import CLEAN_ROUTE, ORACLE_ROUTING, SINGLE_ROUTE
from ..convert import fold_route
from ..errors import ConfigError
from ..nn import check_model_route
from ..provenance import cpu_name, provenance
from ..rng import preserved_rng
from ..stats import accuracy_interval, wilson_interval
from ..threat import Threat
from ..version import __version__
from .autoattack import per_attack_accuracy
from .batches import SEEDING, BatchResult
from .numerics import describe_numerics, evaluation_form, warm_up
from .settings import EvalSettings
from .shards import shared_points
from .state import EvalState, fingerprint

INTERVALS = ("clean_acc_ci", "robust_acc_ci")  # the JSON report's 95% Wilson intervals, beside each accuracy


class Intervals:
    """The 95% Wilson intervals of the ``clean_acc`` and ``robust_acc`` of a result on ``n`` images."""

    @property
    def clean_acc_ci(self) -> tuple[float, float]:
        return accuracy_interval(self.clean_acc, self.n)

    @property
    def robust_acc_ci(self) -> tuple[float, float]:
        return accuracy_interval(self.robust_acc, self.n)


@dataclass
class ProtocolResult(Intervals):
    """Clean and robust accuracy under one protocol on ``n`` images, with the routes each was measured through."""

    clean_route: str | None
    adv_route: str | None
    clean_acc: float
    robust_acc: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), **{key: list(getattr(self, key)) for key in INTERVALS}}


@dataclass
class EvaluationReport(Intervals):
    """What :func:`evaluate` measured and how; :meth:`to_dict` is the JSON report."""

    attack: str  # "autoattack", "apgd-ce", "pgd-20", ...
    attack_description: str
    options: dict[str, Any]  # the attack's settings beyond its name (AutoAttack's version, attacks, restarts)
    backend: str | None  # the AutoAttack implementation that ran
    threat: Threat
    route: str | None
    n: int
    seed: int
    batch_size: int
    clean_acc: float  # single-route protocol
    robust_acc: float
    per_attack: dict[str, float]  # robust accuracy after each of AutoAttack's attacks (cumulative)
    per_class: list[dict[str, Any]]  # per class: n, correct, robust, clean_acc, robust_acc (single route)
    # "correct" and "robust" (single route), and "correct_clean_route" (oracle routing's clean accuracy, routed
    # models): one character "0" or "1" per image, image 0 first
    per_image: dict[str, str]
    protocols: dict[str, ProtocolResult]
    flags: list[str]  # AutoAttack's gradient-masking warnings and threat-model violations
    warnings: list[str]
    time: dict[str, Any]
    environment: dict[str, Any]
    protocol: str = SINGLE_ROUTE
    seeding: str = SEEDING
    numerics: str = "exact"  # the form the model was evaluated in (robust_sabn.eval.numerics)
    checkpoint: str | None = None  # where the model came from (set by the command line)
    source: str | None = None
    dataset: str | None = None
    trained_threat: Threat | None = None  # the threat model the model was trained for, where its files say
    # the adversarial points that broke ("indices", "images", "labels", "predictions"), with save_adversarials
    adversarials: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)

    @property
    def version(self) -> str | None:
        """AutoAttack's version (attacks that run AutoAttack), else None."""
        return self.options.get("version")

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (everything but the adversarial images), every accuracy with its 95% Wilson interval as
        ``<name>_ci`` ([low, high] fractions; ``per_attack_ci`` for ``per_attack``)."""
        values = dataclasses.asdict(dataclasses.replace(self, adversarials=None))
        del values["adversarials"]
        values["threat"] = self.threat.to_dict()
        values["trained_threat"] = None if self.trained_threat is None else self.trained_threat.to_dict()
        values["protocols"] = {name: p.to_dict() for name, p in self.protocols.items()}
        values.update({key: list(getattr(self, key)) for key in INTERVALS})
        values["per_attack_ci"] = {name: list(accuracy_interval(acc, self.n)) for name, acc in self.per_attack.items()}
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EvaluationReport:
        """The report of :meth:`to_dict` (intervals are recomputed; reports written before protocols recorded their
        number of images read too)."""
        values = {k: v for k, v in values.items() if k not in (*INTERVALS, "per_attack_ci")}
        protocols = {name: ProtocolResult(**{"n": values["n"], **{k: v for k, v in p.items() if k not in INTERVALS}})
                     for name, p in values["protocols"].items()}
        trained = values.get("trained_threat")
        return cls(**{**values, "protocols": protocols, "threat": Threat.from_dict(values["threat"]),
                      "trained_threat": None if trained is None else Threat.from_dict(trained)})


def check_inputs(x: torch.Tensor, y: torch.Tensor, num_classes: int | None = None) -> None:
    """Images: float N x C x H x W in [0, 1]; labels: N integers in [0, num_classes)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4 or x.numel() == 0:
        raise ConfigError("images must be a non-empty float tensor N x C x H x W")
    if (not isinstance(y, torch.Tensor) or y.dim() != 1 or y.dtype.is_floating_point or y.dtype.is_complex
            or y.dtype == torch.bool):
        raise ConfigError("labels must be a 1-D integer tensor")
    if len(y) != len(x):
        raise ConfigError(f"got {len(x)} images but {len(y)} labels")
    low, high = x.min().item(), x.max().item()
    if not (0.0 <= low and high <= 1.0):
        raise ConfigError(f"images must lie in [0, 1] (got values in [{low:.3g}, {high:.3g}]); pass unnormalized "
                          "images, the model normalizes inside")
    if num_classes is not None and (y.min().item() < 0 or y.max().item() >= num_classes):
        raise ConfigError(f"labels must be in [0, {num_classes - 1}] for this model's {num_classes} outputs, "
                          f"got values in [{y.min().item()}, {y.max().item()}]")


def check_model_inputs(model: nn.Module, x: torch.Tensor, device: torch.device) -> int:
    """Run ``model`` on one image and refuse images that it runs only by accident: another number of channels than
    its first convolution takes (a per-channel normalization broadcasts gray images to three channels), or images
    smaller than a downsampling layer's stride (global pooling takes any size). Returns the number of classes."""
    seen: list[tuple[nn.Module, torch.Size]] = []
    handles = [layer.register_forward_pre_hook(lambda layer, args: seen.append((layer, args[0].shape)))
               for layer in model.modules() if isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d))]
    error = None
    try:
        with torch.no_grad():
            out = model(x[:1].to(device))
    except RuntimeError as err:
        error = err
    finally:
        for handle in handles:
            handle.remove()
    fix = "evaluate it on images like those it was trained on"
    convs = [layer for layer, _ in seen if isinstance(layer, nn.Conv2d)]
    if convs and convs[0].in_channels != x.shape[1]:
        raise ConfigError(f"the model takes images with {convs[0].in_channels} channels, not {x.shape[1]}; {fix}")
    if error is not None:
        raise ConfigError(f"the model does not accept images of shape {tuple(x.shape[1:])} "
                          f"({str(error).splitlines()[0]}); {fix}") from None
    for layer, shape in seen:
        stride = layer.stride if isinstance(layer.stride, tuple) else (layer.stride, layer.stride)
        if shape[-2] < stride[0] or shape[-1] < stride[1]:
            raise ConfigError(f"images of {x.shape[-2]}x{x.shape[-1]} pixels are too small for the model (a layer "
                              f"downsampling by {stride[0]} gets {shape[-2]}x{shape[-1]} pixels); {fix}")
    if out.dim() != 2:
        raise ConfigError(f"the model returns outputs of shape {tuple(out.shape)}, not images x classes")
    return out.shape[1]


def _dtype(model: nn.Module) -> torch.dtype:
    """The floating-point type of the model's parameters (images are converted to it)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.get_default_dtype())

def freeze(model: nn.Module, route: str | None, device: torch.device) -> nn.Module:
    """A deterministic copy: routed layers folded on ``route``, eval mode, no parameter gradients."""
    return fold_route(model, route).to(device).eval().requires_grad_(False)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: EvalSettings = EvalSettings(), *,
             route: str | None = None, clean_route: str | None = CLEAN_ROUTE,
             state_dir: str | os.PathLike | None = None) -> EvaluationReport:
    """Clean and robust accuracy of ``model`` on images ``x`` (in [0, 1]) with labels ``y`` under ``settings`` (the
    threat model, the attack, seed, batch size, device, numerics, progress, processes: :class:`EvalSettings`).

    The model is folded on ``route`` (required for routed models, None for plain ones) and evaluated in eval
    mode; ``model`` itself is not changed, and the caller's RNG states are restored afterwards. The images are
    attacked in fixed batches, each seeded from (seed, batch index). ``clean_route`` (None: skip) adds the
    oracle-routing protocol for a routed model.

    ``state_dir`` makes the evaluation resumable: each finished batch is stored there, and a later call with the
    same model, images and settings skips the batches it finds (see :mod:`robust_sabn.eval.state`). The folder
    is left in place: remove it once the report is safe (``robust-sabn eval`` does). Processes (from
    :func:`robust_sabn.distributed.start_processes` under torchrun) share the batches; every process gets the
    whole report. ``settings.keep_adversarials`` keeps the adversarial points that broke in ``report.adversarials``.
    Numerics other than "exact" evaluate a faster form that can change predictions (see
    :mod:`robust_sabn.eval.numerics`); the report names it, and the compiled form's compilation (warm-up) is timed
    apart from the attack, as ``time["compile_s"]``.
    """
    start = time.perf_counter()
    if settings.attack is None:
        raise ConfigError("evaluate needs an attack, e.g. EvalSettings(attack='pgd-20'); for clean accuracy alone "
                          "use radius 0")
    routes = check_model_route(model, route, "evaluate")
    settings = settings.on(model)
    device = settings.device
    check_inputs(x, y)
    frozen = freeze(model, route, device)
    x, y = x.detach().cpu().to(_dtype(frozen)), y.detach().cpu().long()
    num_classes = check_model_inputs(frozen, x, device)
    check_inputs(x, y, num_classes)
    attack = settings.attack
    described = dict(attack=attack.name, attack_description=attack.describe(), options=attack.options(),
                     threat=settings.threat, route=route, seed=settings.seed, batch_size=settings.batch_size,
                     numerics=settings.numerics)
    state = None
    if state_dir is not None:
        identity = {**settings.identity(), "route": route, "seeding": SEEDING, "robust_sabn": __version__,
                    "torch": torch.__version__, "backend": attack.backend()}
        state = EvalState(state_dir, fingerprint(frozen, x, y, identity))
    first = x[:settings.batch_size]  # the compiled forms' warm-up batch
    with preserved_rng():
        with evaluation_form(frozen, device, settings.numerics) as form:
            compile_s = warm_up(form, first, device)
            results, resumed = shared_points(form, x, y, settings, state=state)
        oracle = None
        if route is not None and clean_route is not None and clean_route in routes and clean_route != route:
            with evaluation_form(freeze(model, clean_route, device), device, settings.numerics) as form:
                compile_s += warm_up(form, first, device, gradients=False)
                oracle = shared_points(form, x, y, replace(settings, attack=None, keep_adversarials=False))[0]
    report = build_report(results, oracle, y, num_classes, described, clean_route=clean_route)
    report.time["total_s"] = time.perf_counter() - start
    report.time["compile_s"] = compile_s
    report.time["resumed_batches"] = resumed
    report.environment = {**environment(device, settings.processes.world_size),
                          "numerics": describe_numerics(settings.numerics, device)}
    return report


def build_report(results: Sequence[BatchResult], oracle: Sequence[BatchResult] | None, y: torch.Tensor,
                 num_classes: int, settings: dict[str, Any], *, clean_route: str | None) -> EvaluationReport:
    """The report of finished batches (in any order; a resumed or sharded run gives the same report) of the
    evaluation ``settings`` on labels ``y``."""
    results = sorted(results, key=lambda r: r.index)
    correct = torch.cat([r.correct for r in results])
    robust = torch.cat([r.robust for r in results])
    n, clean_acc, robust_acc = len(correct), correct.float().mean().item(), robust.float().mean().item()
    broken: dict[str, int] = {}
    flags: list[str] = []
    timing: dict[str, float] = {}
    for result in results:
        for name, count in result.broken.items():
            broken[name] = broken.get(name, 0) + count
        flags += [flag for flag in result.flags if flag not in flags]
        for name, value in result.seconds.items():
            timing[name] = timing.get(name, 0.0) + value
    attacks = next((r.attacks for r in results if r.attacks), [])
    per_attack = per_attack_accuracy(attacks, broken, int(correct.sum()), int(robust.sum()), n) if attacks else {}
    route, threat = settings["route"], settings["threat"]
    protocols = {SINGLE_ROUTE: ProtocolResult(route, route, clean_acc, robust_acc, n)}
    per_image = {"correct": per_image_bits(correct), "robust": per_image_bits(robust)}
    if oracle is not None:
        oracle_correct = torch.cat([r.correct for r in sorted(oracle, key=lambda r: r.index)])
        protocols[ORACLE_ROUTING] = ProtocolResult(clean_route, route, oracle_correct.float().mean().item(),
                                                   robust_acc, n)
        per_image["correct_clean_route"] = per_image_bits(oracle_correct)
    warnings = list(flags)
    if attacks and threat.eps > 0 and not per_attack:
        warnings.append("per-attack accuracies unavailable: AutoAttack's log lines did not add up to its result")
    adversarials = None
    if results[0].adversarials is not None:
        adversarials = {key: torch.cat([r.adversarials[key] for r in results]) for key in results[0].adversarials}
    return EvaluationReport(
        **settings, backend=next((r.backend for r in results if r.backend), None),
        n=n, clean_acc=clean_acc, robust_acc=robust_acc,
        per_attack=per_attack, per_class=per_class(y, correct, robust, num_classes),
        per_image=per_image, protocols=protocols, flags=flags,
        warnings=warnings, environment={},
        time={"total_s": 0.0, "clean_s": timing.pop("clean", 0.0), "attack_s": timing.pop("attack", 0.0),
              "per_attack_s": timing}, adversarials=adversarials)


def per_class(y: torch.Tensor, correct: torch.Tensor, robust: torch.Tensor, num_classes: int) -> list[dict[str, Any]]:
    """Images, clean and robust counts and accuracies (with their 95% intervals) of every class (None where a
    class has no image)."""
    rows = []
    for label in range(num_classes):
        mine = y == label
        n, c, r = int(mine.sum()), int(correct[mine].sum()), int(robust[mine].sum())
        rows.append({"class": label, "n": n, "correct": c, "robust": r, "clean_acc": c / n if n else None,
                     "robust_acc": r / n if n else None, "clean_acc_ci": list(wilson_interval(c, n)) if n else None,
                     "robust_acc_ci": list(wilson_interval(r, n)) if n else None})
    return rows


def per_image_bits(flags: torch.Tensor) -> str:
    """Per-image flags as a string of 0s and 1s, image 0 first (a report's ``per_image``)."""
    return "".join("1" if flag else "0" for flag in flags.tolist())


def environment(device: torch.device, processes: int = 1) -> dict[str, Any]:
    """Where and with what an evaluation ran: the versions of robust-sabn and its libraries (and the git commit of
    a checkout), Python, the device, the CPU, threads, processes and platform."""
    return {**provenance(), "python": platform.python_version(), "device": str(device), "cpu": cpu_name(),
            "threads": torch.get_num_threads(), "processes": processes, "platform": platform.platform()}
