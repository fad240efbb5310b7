"""The checks of the gradient-masking audit (:mod:`robust_sabn.eval.audit`), each a function of one
:class:`AuditRun` that returns a :class:`CheckResult`; :data:`CHECKS` lists them in the order they run.

Every comparison of two attacks is paired (the same images under both, from the reports' ``per_image``
outcomes) and decided by an exact one-sided binomial test on the images where they disagree
(:func:`robust_sabn.stats.one_sided_excess`); every share compared with a bound, by the one-sided Wilson bound
(:func:`robust_sabn.stats.wilson_interval`). Both at the run's level (default 0.001 per comparison).
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..batching import batch_slices
from ..constants import ORACLE_ROUTING, SINGLE_ROUTE
from ..errors import ConfigError
from ..nn import routes_of, use_route
from ..stats import one_sided_excess, paired_counts, wilson_interval
from ..threat import Threat
from .attacks import AutoAttackEval, EvalAttack, make_eval_attack
from .autoattack import AutoAttackOptions
from .evaluate import EvaluationReport, evaluate, freeze, per_image_bits
from .numerics import evaluation_form
from .settings import EvalSettings
from .sweep import eps_sweep

TOLERANCE = 0.01  # share of images allowed an unusable gradient, or to be left robust where breaking them is certain
LOGIT_TOLERANCE = 1e-4  # logits "equal": within this share of the largest logit (at least 1) of each other
PGD_STEPS = 200  # the convergence check's long PGD
SHORT_STEPS = 20  # the radius sweep's and the transfer surrogate's PGD
PLUS = "autoattack plus"


@dataclass(frozen=True)
class AuditOptions:
    """``level``: the one-sided significance level of each comparison; ``plus_images``: the first images that
    AutoAttack's plus version attacks (its cost is several standard runs)."""

    level: float = 0.001
    plus_images: int = 100

    def __post_init__(self) -> None:
        if isinstance(self.level, bool) or not isinstance(self.level, float) or not 0 < self.level < 0.5:
            raise ConfigError(f"the audit's level must be a probability in (0, 0.5), e.g. 0.001, got {self.level!r}")
        plus = self.plus_images
        if isinstance(plus, bool) or not isinstance(plus, int) or plus < 1:
            raise ConfigError(f"plus_images must be a positive integer, e.g. 100, got {plus!r}")


@dataclass
class CheckResult:
    """One check: what it measured and expected (one line each, for the table), whether it passed, why, the rule
    and its level, the numbers compared and the evaluations (keys of the report's ``evaluations``) it used."""

    name: str
    passed: bool
    measured: str
    expected: str
    explanation: str
    rule: str
    numbers: dict[str, Any] = field(default_factory=dict)
    evaluations: list[str] = field(default_factory=list)
    applicable: bool = True


@dataclass(frozen=True)
class Reference:
    """The routed model that the audited model is on ``route``: the model itself when it is routed, or the model an
    export folded; ``clean_route`` is its clean route (the oracle protocol's and the transfer surrogate's)."""

    model: nn.Module
    route: str
    clean_route: str | None


@dataclass
class AuditRun:
    """What the checks share: the audited model (a routed model evaluated folded on ``route``, or a plain one with
    ``route`` None), its images and labels, the settings of the standard evaluation (decided), the routed
    ``reference`` where there is one, and every evaluation run so far, each run once."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    settings: EvalSettings
    route: str | None
    reference: Reference | None
    options: AuditOptions
    evaluations: dict[str, EvaluationReport] = field(default_factory=dict)

    def once(self, key: str, compute: Callable[[], EvaluationReport]) -> EvaluationReport:
        if key not in self.evaluations:
            self.evaluations[key] = compute()
        return self.evaluations[key]

    def attacked(self, key: str, attack: EvalAttack | str, n: int | None = None) -> EvaluationReport:
        """The audited model under ``attack`` on the first ``n`` images (all), run once."""
        settings = self.settings.with_attack(attack)
        return self.once(key, lambda: evaluate(self.model, self.x[:n], self.y[:n], settings, route=self.route,
                                               clean_route=None))

    @property
    def standard(self) -> EvaluationReport:
        """The standard evaluation (the settings' attack), with the oracle protocol of a routed model."""
        clean = self.reference.clean_route if self.reference is not None and self.route is not None else None
        return self.once("standard", lambda: evaluate(self.model, self.x, self.y, self.settings, route=self.route,
                                                      clean_route=clean))

    @property
    def whitebox(self) -> EvaluationReport:
        """APGD-CE and APGD-T with the standard AutoAttack's settings."""
        return self.attacked("white-box", AutoAttackEval(AutoAttackOptions("custom", ("apgd-ce", "apgd-t"),
                                                                           standard_apgd=True), label="apgd-ce+apgd-t"))

    def sweep(self) -> dict[str, EvaluationReport]:
        """PGD-20 (APGD-CE in L1) at every radius of :func:`radius_grid`, smallest first, keeping the points it
        broke, run once: the evaluations by key."""
        threat = self.settings.threat
        settings = replace(self.settings, attack=short_attack(threat.norm), keep_adversarials=True)
        grid = radius_grid(threat, self.x[0].numel())[0]
        keys = [f"{settings.attack.name} at {threat.with_eps(eps).label}" for eps in grid]
        if keys[0] not in self.evaluations:
            self.evaluations.update(zip(keys, eps_sweep(self.model, self.x, self.y, grid, settings, route=self.route)))
        return {key: self.evaluations[key] for key in keys}

    def frozen(self, numerics: str | None = None) -> AbstractContextManager[nn.Module]:
        """The audited model, folded and frozen on the settings' device, in the form ``numerics`` (the settings')."""
        device = self.settings.device
        return evaluation_form(freeze(self.model, self.route, device), device, numerics or self.settings.numerics)

    def logits(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """``model``'s logits on ``images``, in the settings' batches, on the CPU."""
        with torch.no_grad():
            return torch.cat([model(images[part].to(self.settings.device)).float().cpu()
                              for part in batch_slices(len(images), self.settings.batch_size)])


def stronger(first: str, second: str, level: float) -> dict[str, Any]:
    """Whether the attack behind the per-image robust outcomes ``second`` breaks significantly more of the images
    that ``first``'s attack left robust than the reverse: the exact one-sided binomial test on the disagreements."""
    only_first, only_second = paired_counts(first, second)
    p = one_sided_excess(only_first, only_first + only_second)
    return {"robust": [first.count("1"), second.count("1")], "images": len(first), "broken_only_by_second": only_first,
            "broken_only_by_first": only_second, "p": p, "significant": p < level}


def above(count: int, n: int, bound: float, level: float) -> dict[str, Any]:
    """Whether the share ``count / n`` is significantly above ``bound``: its one-sided Wilson lower bound at
    ``level`` exceeds it (never for n = 0)."""
    low = wilson_interval(count, n, 1 - 2 * level)[0]
    return {"count": count, "images": n, "share": count / n if n else None, "wilson_low": low, "bound": bound,
            "significant": low > bound}


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f}%"


def _flags(bits: str) -> torch.Tensor:
    """A report's per-image outcomes ("0"/"1") as booleans."""
    return torch.tensor([bit == "1" for bit in bits], dtype=torch.bool)


def _max_difference(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """The largest difference of two logit tensors and the bound it must stay within."""
    return (a - b).abs().max().item(), LOGIT_TOLERANCE * max(1.0, a.abs().max().item())


def _unusable(model: nn.Module, x: torch.Tensor, y: torch.Tensor, run: AuditRun) -> torch.Tensor:
    """Per image: the input gradient of the cross-entropy is zero everywhere or not finite somewhere."""
    flags = []
    with torch.enable_grad():
        for part in batch_slices(len(x), run.settings.batch_size):
            xb = x[part].to(run.settings.device).requires_grad_(True)
            loss = F.cross_entropy(model(xb).float(), y[part].to(run.settings.device), reduction="sum")
            grad = torch.autograd.grad(loss, xb)[0].flatten(1)
            flags.append(((grad == 0).all(1) | ~torch.isfinite(grad).all(1)).cpu())
    return torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)


def gradients(run: AuditRun) -> CheckResult:
    """Input gradients of the loss usable (not zero everywhere, finite) on the clean images and on the points PGD
    broke at the audited radius; two forwards of every image give the same logits."""
    key, attacked_by = next((key, r) for key, r in run.sweep().items() if r.threat == run.settings.threat)
    broken, level = attacked_by.adversarials, run.options.level
    with run.frozen() as model:
        clean = _unusable(model, run.x, run.y, run)
        attacked = _unusable(model, broken["images"], broken["labels"], run)
        first, second = run.logits(model, run.x), run.logits(model, run.x)
    tests = {"clean": above(int(clean.sum()), len(clean), TOLERANCE, level),
             "attacked": above(int(attacked.sum()), len(attacked), TOLERANCE, level)}
    difference, bound = _max_difference(first, second)
    deterministic = difference <= bound
    failed = [name for name, test in tests.items() if test["significant"]]
    explanation = (f"unusable gradients on {' and '.join(failed)} points: attacks following them are blind"
                   if failed else "gradients usable") + ("" if deterministic else
                                                         "; the model is random: two forwards differ")
    return CheckResult(
        "gradients", not failed and deterministic,
        measured=f"zero/non-finite: {tests['clean']['count']}/{len(clean)} clean, "
                 f"{tests['attacked']['count']}/{len(attacked)} attacked; max logit change {difference:.2g}",
        expected=f"<= {TOLERANCE:.0%} unusable (beyond noise); logits repeat within {bound:.2g}",
        explanation=explanation + ".",
        rule=f"fails when the one-sided Wilson lower bound (level {level}) of either unusable share exceeds "
             f"{TOLERANCE}, or two forwards differ by more than {LOGIT_TOLERANCE} x max(1, largest |logit|)",
        numbers={**tests, "max_logit_change": difference, "logit_bound": bound}, evaluations=[key])


def square_attack() -> EvalAttack:
    """AutoAttack's Square (5000 queries, as in its standard version), alone."""
    return AutoAttackEval(AutoAttackOptions("custom", ("square",)), label="square")


def whitebox_blackbox(run: AuditRun) -> CheckResult:
    """Square, a black-box attack, must not break significantly more images that APGD-CE + APGD-T left robust
    than the reverse."""
    test = stronger(run.whitebox.per_image["robust"], run.attacked("square", square_attack()).per_image["robust"],
                    run.options.level)
    n = test["images"]
    return CheckResult(
        "white-box vs black-box", not test["significant"],
        measured=f"robust {_pct(test['robust'][0] / n)} white-box, {_pct(test['robust'][1] / n)} Square; Square alone "
                 f"broke {test['broken_only_by_second']}, white-box alone {test['broken_only_by_first']}",
        expected=f"Square no stronger than white-box (p >= {run.options.level})",
        explanation=("Square finds adversarials the gradient attacks miss: their gradients mislead them."
                     if test["significant"] else "the gradient attacks are at least as strong as Square."),
        rule=f"fails when the exact one-sided binomial test on the images only one attack broke gives p < "
             f"{run.options.level} for Square",
        numbers=test, evaluations=["white-box", "square"])


def radius_grid(threat: Threat, dims: int) -> tuple[list[float], float, float]:
    """The radii of the sweep, ascending: 0, the audited radius and its half, double and quadruple below the radius
    from which every image of ``dims`` values reaches the gray image (all 0.5; Linf 0.5), that radius, and one from
    which it reaches every image (Linf 1); then those two radii."""
    power = {"Linf": 0.0, "L2": 0.5, "L1": 1.0}[threat.norm]
    reach, unbounded = 0.5 * dims ** power, dims ** power
    grid = {0.0, threat.eps, reach, unbounded} | {f * threat.eps for f in (0.5, 2, 4) if f * threat.eps < reach}
    return sorted(grid), reach, unbounded


def short_attack(norm: str) -> str:
    """PGD-20 (APGD-CE in L1, where robust-sabn's PGD does not run)."""
    return "apgd-ce" if norm == "L1" else f"pgd-{SHORT_STEPS}"


def radius(run: AuditRun) -> CheckResult:
    """Robust accuracy does not rise with the radius; at the radius from which every image reaches the gray image
    it is at chance (the images of the gray image's class) or below; at the radius from which every image reaches
    every other, the attack breaks every image that the gray image or another image is classified against."""
    threat, level, y = run.settings.threat, run.options.level, run.y
    _, reach, unbounded = radius_grid(threat, run.x[0].numel())
    sweep = run.sweep()
    reports = list(sweep.values())
    robust = {r.threat.eps: r.per_image["robust"] for r in reports}
    rises = {f"{a.threat.eps_str} -> {b.threat.eps_str}": stronger(robust[b.threat.eps], robust[a.threat.eps], level)
             for a, b in zip(reports, reports[1:])}
    with run.frozen() as model:  # the gray image, and the images themselves, are within reach at the largest radius
        gray = run.logits(model, torch.full_like(run.x[:1], 0.5)).argmax(1).item()
        classes = {gray, *run.logits(model, run.x).argmax(1).tolist()}
    other_exists = torch.tensor([bool(classes - {label}) for label in y.tolist()], dtype=torch.bool)
    missed = {"gray": above(int((_flags(robust[reach]) & (y != gray)).sum()), len(y), TOLERANCE, level),
              "any": above(int((_flags(robust[unbounded]) & other_exists).sum()), len(y), TOLERANCE, level)}
    failed = [f"rises from {step}" for step, test in rises.items() if test["significant"]]
    if missed["gray"]["significant"]:
        failed.append(f"above chance at {threat.with_eps(reach).label}")
    if missed["any"]["significant"]:
        failed.append(f"images survive {threat.with_eps(unbounded).label}")
    chance = float((y == gray).float().mean())
    curve = ", ".join(f"{r.threat.eps_str}: {_pct(r.robust_acc)}" for r in reports)
    return CheckResult(
        "radius", not failed, measured=f"{reports[0].attack} robust accuracy at eps {curve}",
        expected=f"non-increasing; at {reach:g} <= {_pct(chance)} (the gray image's class), at {unbounded:g} about 0",
        explanation=("; ".join(failed) + ": the attack fails where success is certain." if failed else
                     "robust accuracy never rises with the radius, and the attack breaks what the largest radii make "
                     "certain to break."),
        rule=f"fails when a larger radius leaves significantly more images robust than a smaller one (exact one-sided "
             f"binomial test, p < {level}), or when the images left robust that are certain to be breakable (at "
             f"{reach:g} those of another class than the gray image's; at {unbounded:g} those of another class than "
             f"the gray image's or another image's) are significantly more than {TOLERANCE} of all (one-sided Wilson "
             f"lower bound, level {level})",
        numbers={"radii": list(robust), "robust_acc": [r.robust_acc for r in reports], "rises": rises,
                 "gray_class": gray, "chance": chance, "classes_given": sorted(classes),
                 "missed_at_gray": missed["gray"], "missed_at_any": missed["any"]}, evaluations=list(sweep))


def long_attack(norm: str) -> EvalAttack:
    """PGD-200 (in L1, APGD-CE with 10 restarts)."""
    if norm == "L1":
        return AutoAttackEval(AutoAttackOptions("custom", ("apgd-ce",), restarts=10, standard_apgd=True),
                              label="apgd-ce-10-restarts")
    return make_eval_attack(f"pgd-{PGD_STEPS}")


def convergence(run: AuditRun) -> CheckResult:
    """A long PGD and AutoAttack's plus version (on the first images) must not break significantly more images
    than the standard evaluation left robust."""
    level, standard = run.options.level, run.standard.per_image["robust"]
    attack = long_attack(run.settings.threat.norm)
    long = run.attacked(attack.name, attack)
    n_plus = min(run.options.plus_images, len(run.y))
    plus = run.attacked(PLUS, make_eval_attack("autoattack", "plus"), n_plus)
    tests = {attack.name: stronger(standard, long.per_image["robust"], level),
             PLUS: stronger(standard[:n_plus], plus.per_image["robust"], level)}
    failed = [name for name, test in tests.items() if test["significant"]]
    return CheckResult(
        "convergence", not failed,
        measured="; ".join(f"{name} broke {t['broken_only_by_second']} the standard evaluation left robust "
                           f"(it {t['broken_only_by_first']} the other way), {t['images']} images"
                           for name, t in tests.items()),
        expected=f"no more than the reverse, beyond noise (p >= {level})",
        explanation=(f"{' and '.join(failed)} lower the robust accuracy: the standard evaluation has not converged."
                     if failed else "more iterations and restarts do not lower the robust accuracy."),
        rule=f"fails when the exact one-sided binomial test on the images only one evaluation broke gives p < {level} "
             "for the stronger attack", numbers=tests, evaluations=["standard", attack.name, PLUS])


def surrogate(run: AuditRun) -> tuple[str, Callable[[], EvaluationReport]] | None:
    """What the transfer attack is crafted on, and the evaluation that crafts it (PGD-20 keeping its points)."""
    settings = replace(run.settings, attack=short_attack(run.settings.threat.norm), keep_adversarials=True)
    ref = run.reference
    if ref is not None and ref.clean_route not in (None, ref.route) and ref.clean_route in routes_of(ref.model):
        return (f"the {ref.clean_route} route",
                lambda: evaluate(ref.model, run.x, run.y, settings, route=ref.clean_route, clean_route=None))
    if run.settings.numerics != "exact":
        exact = replace(settings, numerics="exact")
        return "the exact float32 model", lambda: evaluate(run.model, run.x, run.y, exact, route=run.route,
                                                           clean_route=None)
    return None


def transfer(run: AuditRun) -> CheckResult:
    """Adversarials crafted on a surrogate (a routed model's clean route; the exact float32 model of one evaluated
    in a faster form) must not break significantly more images than the white-box attack left robust."""
    crafted_on = surrogate(run)
    level = run.options.level
    if crafted_on is None:
        return CheckResult("transfer", True, measured="-", expected="-", applicable=False,
                           explanation="not applicable: a plain model evaluated in its exact form has no surrogate.",
                           rule="none")
    name, craft = crafted_on
    points = run.once("transfer source", craft).adversarials
    images = run.x.clone()
    images[points["indices"]] = points["images"].to(images.dtype)
    with run.frozen() as model:
        predictions = run.logits(model, images).argmax(1)
    transferred = per_image_bits(_flags(run.standard.per_image["correct"]) & (predictions == run.y))
    test = stronger(run.whitebox.per_image["robust"], transferred, level)
    return CheckResult(
        "transfer", not test["significant"],
        measured=f"PGD adversarials of {name}: robust {_pct(test['robust'][1] / test['images'])}, white-box "
                 f"{_pct(test['robust'][0] / test['images'])}; transfer alone broke {test['broken_only_by_second']}",
        expected=f"transfer no stronger than white-box (p >= {level})",
        explanation=(f"adversarials of {name} beat the white-box attack: the audited model's gradients mislead it."
                     if test["significant"] else "the white-box attack is at least as strong as the transfer."),
        rule=f"fails when the exact one-sided binomial test on the images only one attack broke gives p < {level} for "
             "the transfer", numbers={"surrogate": name, **test},
        evaluations=["transfer source", "standard", "white-box"])


def routing(run: AuditRun) -> CheckResult:
    """The audited model computes what the routed model computes on the route (the evaluated route is the one
    exported); the oracle protocol's numbers are reported as not deployable."""
    ref = run.reference
    if ref is None:
        return CheckResult("routing", True, measured="-", expected="-", applicable=False, rule="none",
                           explanation="not applicable: a plain model has no routes; it is the model evaluated.")
    routed = copy.deepcopy(ref.model).to(run.settings.device).eval()
    with use_route(routed, ref.route):
        expected = run.logits(routed, run.x)
    with run.frozen("exact") as model:
        audited = run.logits(model, run.x)
    difference, bound = _max_difference(expected, audited)
    protocols = {(name if name == SINGLE_ROUTE else f"{name} (not deployable)"): asdict(p)
                 for name, p in run.standard.protocols.items()}
    oracle = run.standard.protocols.get(ORACLE_ROUTING)
    note = (f"; oracle routing (not deployable) clean {_pct(oracle.clean_acc)}" if oracle is not None else "")
    return CheckResult(
        "routing", difference <= bound,
        measured=f"max logit difference from the {ref.route} route: {difference:.2g}{note}",
        expected=f"<= {bound:.2g}",
        explanation=(f"the model audited is the {ref.route} route of the routed model." if difference <= bound else
                     f"the model audited is not the {ref.route} route: the numbers are not the exported model's."),
        rule=f"fails when any logit differs by more than {LOGIT_TOLERANCE} x max(1, largest |logit|); the oracle "
             "protocol assumes someone tells clean from attacked inputs, so its numbers are never a claim",
        numbers={"route": ref.route, "max_logit_difference": difference, "bound": bound, "protocols": protocols},
        evaluations=["standard"])


Check = Callable[[AuditRun], CheckResult]
CHECKS: list[Check] = [gradients, whitebox_blackbox, radius, convergence, transfer, routing]
