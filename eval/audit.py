"""The gradient-masking audit: is a robust accuracy worth what it says? ``audit`` runs the standard evaluation and
the checks reviewers run by hand (Carlini et al. 2019, "On Evaluating Adversarial Robustness"; Tramer et al. 2020,
"On Adaptive Attacks"), each deciding with a threshold that accounts for the sampling error on N images.

::

    report = audit(model, x, y, EvalSettings(Threat("Linf", "8/255")), route="adv")
    report.reliable, report.failed, report.checks[0].numbers
    write_audit(report, "eval/my-model-audit")          # .json and .md

The checks (:mod:`robust_sabn.eval.audit_checks`): gradients, white-box vs black-box, radius, convergence,
transfer, routing. A routed model is audited folded on ``route``, the route an export folds.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..constants import CLEAN_ROUTE, ORACLE_ROUTING, SINGLE_ROUTE
from ..nn import check_model_route
from ..rng import preserved_rng
from ..tables import markdown_table, percent
from .audit_checks import CHECKS, AuditOptions, AuditRun, CheckResult, Reference
from .evaluate import EvaluationReport
from .report import write_pair
from .settings import EvalSettings


@dataclass
class AuditReport:
    """The checks' results, the standard evaluation (the settings' attack on every image), a summary of every
    evaluation the audit ran, the level of its comparisons and its time."""

    checks: list[CheckResult]
    standard: EvaluationReport
    evaluations: dict[str, dict[str, Any]]
    level: float
    time: dict[str, float]

    @property
    def reliable(self) -> bool:
        """Every check passed."""
        return all(check.passed for check in self.checks)

    @property
    def failed(self) -> list[str]:
        """The names of the checks that failed."""
        return [check.name for check in self.checks if not check.passed]

    @property
    def verdict(self) -> str:
        """"reliable", or "unreliable: failed gradients, radius"."""
        return "reliable" if self.reliable else f"unreliable: failed {', '.join(self.failed)}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON report."""
        s = self.standard
        return {"reliable": self.reliable, "failed": self.failed, "level": self.level,
                "threat": s.threat.to_dict(), "route": s.route, "n": s.n, "seed": s.seed,
                "batch_size": s.batch_size, "numerics": s.numerics, "dataset": s.dataset, "checkpoint": s.checkpoint,
                "source": s.source, "checks": [dataclasses.asdict(check) for check in self.checks], "flags": s.flags,
                "evaluations": self.evaluations, "standard": s.to_dict(), "time": self.time,
                "environment": s.environment}


def audit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: EvalSettings = EvalSettings(), *,
          route: str | None = None, clean_route: str | None = CLEAN_ROUTE, source: nn.Module | None = None,
          options: AuditOptions = AuditOptions()) -> AuditReport:
    """Audit the robust accuracy of ``model`` on images ``x`` (in [0, 1]) with labels ``y``: the standard evaluation
    under ``settings`` (its attack, default the standard AutoAttack; threat model, seed, batch size, device,
    numerics, progress), then every check of :data:`~robust_sabn.eval.audit_checks.CHECKS`.

    A routed model is audited folded on ``route`` (its oracle protocol, clean accuracy through ``clean_route``, is
    reported as not deployable). A plain model exported from a routed ``source`` on ``route`` is compared with it
    (routing) and attacked with its clean route's adversarials (transfer). ``options`` sets the level of every
    comparison and the images AutoAttack's plus version attacks. ``model`` is not changed and the caller's RNG
    states are restored.
    """
    start = time.perf_counter()
    reference = None
    if source is not None:
        check_model_route(model, None, "audit")  # an export: a plain model
        check_model_route(source, route, "compare with")
        reference = Reference(source, route, clean_route)
    elif check_model_route(model, route, "audit"):
        reference = Reference(model, route, clean_route)
    run = AuditRun(model, x, y, settings.on(model), None if source is not None else route, reference, options)
    with preserved_rng():
        standard = run.standard  # first: the headline number, its inputs checked before anything else runs
        checks = [check(run) for check in tqdm(CHECKS, desc="audit", unit="check", leave=False,
                                               disable=not run.settings.progress)]
    evaluations = {key: {"attack": r.attack_description, "threat": r.threat.label, "images": r.n,
                         "clean_acc": r.clean_acc, "robust_acc": r.robust_acc, "seconds": r.time["total_s"]}
                   for key, r in run.evaluations.items()}
    return AuditReport(checks, standard, evaluations, options.level, {"total_s": time.perf_counter() - start})


def to_markdown(report: AuditReport) -> str:
    """The verdict, the checks' table with why each passed or failed, the standard evaluation's protocols, the
    AutoAttack flags and every evaluation the audit ran, as Markdown."""
    s = report.standard
    lines = [f"**Gradient-masking audit** of {s.attack_description} at {s.threat.label} on {s.n} images, seed {s.seed}"
             + (f", route {s.route}" if s.route else "") + f": **{report.verdict}**.", ""]
    rows = [[c.name, c.measured, c.expected, ("yes" if c.passed else "**NO**") if c.applicable else "n/a"]
            for c in report.checks]
    lines += [markdown_table(["check", "measured", "expected", "passed"], rows), ""]
    lines += [f"- {c.name}: {c.explanation} Rule: {c.rule}." for c in report.checks]
    single = s.protocols[SINGLE_ROUTE]
    lines += ["", f"Standard evaluation ({SINGLE_ROUTE}): clean {percent(single.clean_acc, s.n, 2)}%, "
                  f"robust {percent(single.robust_acc, s.n, 2)}% (95% intervals)."]
    if ORACLE_ROUTING in s.protocols:
        oracle = s.protocols[ORACLE_ROUTING]
        lines[-1] += (f" {ORACLE_ROUTING.capitalize()} ({oracle.clean_route} route for clean inputs), not deployable: "
                      f"clean {percent(oracle.clean_acc, s.n, 2)}%, robust {percent(oracle.robust_acc, s.n, 2)}%.")
    lines += [f"\n> **AutoAttack flag:** {flag}" for flag in s.flags]
    rows = [[key, e["attack"], e["threat"], e["images"], percent(e["clean_acc"], e["images"], 2),
             percent(e["robust_acc"], e["images"], 2), f"{e['seconds']:.1f}"] for key, e in report.evaluations.items()]
    lines += ["", markdown_table(["evaluation", "attack", "threat", "images", "clean acc (%, 95% CI)",
                                  "robust acc (%, 95% CI)", "time (s)"], rows)]
    lines += ["", f"Each comparison at level {report.level}; total time {report.time['total_s']:.0f} s on "
                  f"{s.environment.get('device', '-')} ({s.environment.get('numerics', s.numerics)})."]
    return "\n".join(lines) + "\n"


def write_audit(report: AuditReport, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``<path>.json`` and ``<path>.md`` (``path`` without suffix), both or neither; returns their paths."""
    return write_pair(path, json.dumps(report.to_dict(), indent=2) + "\n", to_markdown(report))
