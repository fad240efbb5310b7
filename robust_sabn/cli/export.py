"""``robust-sabn export``: fold a route, write RobustBench's files, and with ``--eval`` fill the card by AutoAttack."""
from __future__ import annotations

import argparse
from collections.abc import Callable

from torch import nn

from ..checksums import manifest_path
from ..constants import ADV_ROUTE, CLEAN_ROUTE
from ..data import test_images
from ..devices import resolve_device
from ..errors import ConfigError
from ..eval import EvalSettings, evaluate, make_eval_attack, write_report
from ..eval.audit import audit, write_audit
from ..eval.audit_checks import AuditOptions
from ..eval.report import report_stem
from ..exporting import ExportOptions, card_path, export, fill_card, reports_dir, weights_path
from ..exporting.huggingface import check_hf_folder, write_hf_folder
from ..exporting.robustbench import unreachable, zoo_entry
from ..io import all_or_nothing, check_writable
from ..mixing import describe_mixture, mixture_weights
from ..model_files import (
    LoadedModel,
    TrainedFor,
    arch_file,
    load_trained_model,
    read_arch_file,
    safetensors_file,
)
from ..parsing import parse_json_object, parse_number
from ..tables import markdown_table, percent
from ..threat import Threat
from .flags import add_common_flags, add_model_arguments, add_plus_images_flag, add_recalibrate_flag


def mixture(loaded: LoadedModel, args: argparse.Namespace) -> dict[str, float]:
    """``--route-mix T``: the weights (1 - T) on the clean route and T on the adv route (the training config's)."""
    if args.route is not None:
        raise ConfigError("--route and --route-mix both choose what to fold; pass one of them")
    config = loaded.config
    return mixture_weights(loaded.model, parse_number(args.route_mix, "--route-mix"),
                           clean=config.get("clean_route", CLEAN_ROUTE), adv=config.get("adv_route", ADV_ROUTE))


def recalibration(loaded: LoadedModel, args: argparse.Namespace, route: str | dict[str, float] | None,
                  threat: Threat) -> tuple[Callable[[nn.Module], nn.Module] | None, str | None]:
    """``--recalibrate N``: what re-estimates the mixture's BN statistics before it is written, and its note."""
    if args.recalibrate is None:
        return None, None
    t = route.get(loaded.config.get("adv_route", ADV_ROUTE), 0.0) if isinstance(route, dict) else None
    if t is None or not 0 < t < 1:
        raise ConfigError("--recalibrate re-estimates the BN statistics of a mixture strictly between the routes; "
                          "use it with --route-mix T, 0 < T < 1 (the routes themselves stay as trained)")
    from ..eval.recalibration import training_recalibration

    recalibrate = training_recalibration(loaded, args.recalibrate, threat, args.data_dir, args.seed)
    return (lambda mixed: recalibrate(mixed, t, resolve_device(args.device))), recalibrate.describe(t)


def describe(route: str | dict[str, float] | None) -> str:
    if isinstance(route, dict):
        return f"{describe_mixture(route)} of the routes folded"
    return f"{route} route folded" if route else "no routes"


def run(args: argparse.Namespace) -> int:
    loaded = load_trained_model(args.checkpoint, args.model, parse_json_object(args.model_kwargs))
    route = loaded.route(args.route) if args.route_mix is None else mixture(loaded, args)
    threat = loaded.threat(args.threat_model, args.eps)
    trained = TrainedFor(threat, loaded.trained_on(), loaded.input_shape)
    dataset = args.dataset or trained.dataset or "cifar10"  # RobustBench's slot
    model = loaded.model
    arch = None if getattr(model, "model_spec", None) is not None else loaded.spec
    weights_file = weights_path(args.name, args.model_dir, dataset, threat.norm)
    settings = EvalSettings(threat, make_eval_attack("autoattack", args.version), args.seed, args.batch_size,
                            args.device, progress=args.progress)
    stem = report_stem(reports_dir(weights_file), args.name, settings, "plain")
    audit_stem = report_stem(reports_dir(weights_file), f"{args.name}-audit", settings, "plain")
    if args.audit and not args.eval:
        raise ConfigError("--audit checks the evaluation that --eval records in the card; pass --eval too")
    for path in [stem] * args.eval + [audit_stem] * args.audit:
        for suffix in (".json", ".md"):
            check_writable(path.with_name(path.name + suffix))
    if args.hf_dir:
        check_hf_folder(args.hf_dir, args.overwrite)
    prepare, note = recalibration(loaded, args, route, threat)
    options = ExportOptions(args.overwrite, args.info_dir, args.allow_dataset_mismatch, prepare, note)
    weights = export(model, args.name, route, args.model_dir, trained=trained, dataset=dataset, arch=arch,
                     options=options)
    card = card_path(args.name, args.model_dir, dataset, threat.norm, args.info_dir)
    rows = [["weights (state dict)", weights], ["weights (safetensors)", safetensors_file(weights)],
            ["architecture", arch_file(weights)], ["SHA-256 manifest", manifest_path(weights)],
            ["leaderboard card", card]]
    report = None
    if args.eval:
        exported = load_trained_model(weights).model  # the files RobustBench reads, nothing else
        data_dir = args.data_dir or loaded.config.get("data_dir")
        x, y = test_images(trained.dataset or dataset, data_dir, args.n_examples)  # the model's own dataset
        audited = None
        if args.audit:  # compared with the routed model where one route was folded as trained
            folded = route if isinstance(route, str) and prepare is None else None
            audited = audit(exported, x, y, settings, route=folded, source=loaded.model if folded else None,
                            clean_route=loaded.config.get("clean_route", CLEAN_ROUTE),
                            options=AuditOptions(plus_images=args.plus_images))
        report = audited.standard if audited is not None else evaluate(exported, x, y, settings, clean_route=None)
        report.checkpoint, report.dataset = str(weights), trained.dataset or dataset
        report.source, report.trained_threat = f"exported model ({describe(route)})", threat
        with all_or_nothing():  # the card and the reports it rests on
            fill_card(card, report, audited)
            rows += [["evaluation report", write_report(report, stem)[0]]]
            if audited is not None:
                rows += [["audit report", write_audit(audited, audit_stem)[0]], ["audit verdict", audited.verdict]]
        rows += [["clean / AutoAttack accuracy (%, 95% CI)",
                  f"{percent(report.clean_acc, report.n, 2)} / {percent(report.robust_acc, report.n, 2)} "
                  f"({report.n} images, {args.version}, {threat.label})"]]
        rows += [["AutoAttack flag", flag] for flag in report.flags]
    if args.hf_dir:
        rows += [["Hugging Face folder", args.hf_dir]]
        write_hf_folder(weights, args.hf_dir, report, args.overwrite)
    print(f"exported {loaded.path} ({loaded.source}, {describe(route)}{f'; {note}' if note else ''}) as {args.name}, "
          f"trained for {threat.label}\n")
    print(markdown_table(["", ""], rows))
    reason = unreachable(dataset, threat.norm)
    if reason is None:
        print(f"\nload it: robustbench.utils.load_model({args.name!r}, model_dir={str(args.model_dir)!r}, "
              f"dataset={dataset!r}, threat_model={threat.norm!r})")
        print(f"\nits entry for a RobustBench pull request (robustbench/model_zoo/{dataset}.py, the {threat.norm} "
              f"OrderedDict; the card {card.name} goes to model_info/{dataset}/{threat.norm}/):\n\n"
              f"{zoo_entry(args.name, read_arch_file(arch_file(weights))['spec'])}")
    else:
        print(f"\n{reason}, so its load_model cannot reach this export; evaluate it with "
              f"`robust-sabn eval {weights}`")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Writes <model-dir>/<dataset>/<threat>/<name>.pt (state dict), <name>.safetensors (the "
                          "same tensors), <name>.arch.json (architecture), <name>.sha256 and "
                          "model_info/<dataset>/<threat>/<name>.json (card; accuracies with --eval). "
                          "robustbench.utils.load_model(name, model_dir, dataset, threat_model) then loads it offline, "
                          "in any process of this environment.")
    add_model_arguments(parser)
    parser.add_argument("--name", required=True, help="RobustBench-style name, e.g. Name2026Title (must be new)")
    parser.add_argument("--model-dir", default="models", help="RobustBench's model_dir (default ./models)")
    parser.add_argument("--info-dir", help="folder for the card (default: model_info beside --model-dir)")
    parser.add_argument("--route-mix", metavar="T",
                        help="export the mixture of the routes (1 - T) clean + T adv instead of one route (0: the "
                             "clean route, 1: the adv route; see docs/route-mixing.md)")
    add_recalibrate_flag(parser)
    parser.add_argument("--hf-dir", metavar="DIR",
                        help="also lay the export out in DIR as a Hugging Face model repository (model.safetensors, "
                             "config.json, a README.md model card with the --eval numbers; docs/export.md)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export of the same name")
    parser.add_argument("--allow-dataset-mismatch", action="store_true",
                        help="file a model under a --dataset other than the one it was trained on (a demonstration; "
                             "its card names the dataset it was trained on)")
    parser.add_argument("--eval", action="store_true",
                        help="run AutoAttack on the exported model (the first --n-examples test images) and fill "
                             "the card")
    parser.add_argument("--audit", action="store_true",
                        help="with --eval: run the gradient-masking audit of that evaluation (docs/audit.md); the "
                             "card's unreliable field and footnote carry its verdict")
    add_plus_images_flag(parser, AuditOptions.plus_images)
    add_common_flags(parser)
