"""``robust-sabn audit``: the gradient-masking checklist on a run folder, checkpoint or export; JSON + Markdown."""
from __future__ import annotations

import argparse

from ..devices import resolve_device
from ..eval.attacks import make_eval_attack
from ..eval.audit import audit, to_markdown, write_audit
from ..eval.audit_checks import AuditOptions
from ..eval.numerics import NUMERICS
from ..eval.settings import EvalSettings
from .flags import add_common_flags, add_model_arguments, add_plus_images_flag
from .target import EvaluatedModel

DEFAULT_IMAGES = 500


def run(args: argparse.Namespace) -> int:
    target = EvaluatedModel.from_args(args)
    options = AuditOptions(plus_images=args.plus_images)
    settings = EvalSettings(target.threat, make_eval_attack("autoattack", args.version), args.seed, args.batch_size,
                            resolve_device(args.device), args.numerics, args.progress)
    stem = target.report_path(args.out, settings, target.route or "plain", [".json", ".md"], kind="-audit")
    x, y = target.images(args.data_dir, args.n_examples)
    print(f"auditing {target.describe(len(y))}", flush=True)
    report = audit(target.loaded.model.to(settings.device), x, y, settings, route=target.route,
                   clean_route=target.clean_route, options=options)
    target.label(report.standard)
    paths = write_audit(report, stem)
    print(to_markdown(report))
    print(f"wrote {', '.join(str(path) for path in paths)}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Check that the robust accuracy of a model is not an artefact of gradient masking: the "
                          "standard AutoAttack on the first N test images, then the gradients, white-box vs black-box, "
                          "radius, convergence, transfer and routing checks, each with a threshold from the sampling "
                          "error on N images (docs/audit.md). Exits 0 whatever the verdict.")
    add_model_arguments(parser)
    parser.set_defaults(n_examples=DEFAULT_IMAGES)
    parser.add_argument("--clean-route", help="a routed model's clean route: the oracle protocol's clean accuracy and "
                                              "the transfer check's surrogate (default: clean)")
    parser.add_argument("--numerics", default="exact", choices=list(NUMERICS),
                        help="the form the model is audited in (default exact); in another, the transfer check of a "
                             "model with one route crafts adversarials on the exact float32 model")
    add_plus_images_flag(parser, AuditOptions.plus_images)
    parser.add_argument("--out", help="report path without suffix (default: <checkpoint folder>/eval/"
                                      "<checkpoint>-audit-<settings>; for an export, its reports folder; for a "
                                      "Hugging Face folder, ./eval/<folder>)")
    add_common_flags(parser)
