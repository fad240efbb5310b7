"""``robust-sabn export``: fold a route, write RobustBench's files, and with ``--eval`` fill the card by AutoAttack."""
from __future__ import annotations

import argparse
from collections.abc import Callable

from torch import nn

from ..constants import ADV_ROUTE, CLEAN_ROUTE
from ..data import test_images
from ..devices import resolve_device
from ..errors import ConfigError
from ..eval.cli import add_model_arguments, add_recalibrate_flag
from ..flags import add_common_flags
from ..io import check_writable
from ..mixing import describe_mixture, mixture_weights
from ..model_files import LoadedModel, load_trained_model
from ..parsing import format_eps, parse_json_object, parse_number
from ..tables import markdown_table
from . import card_path, export, fill_card, weights_path
from .robustbench import unreachable


def mixture(loaded: LoadedModel, args: argparse.Namespace) -> dict[str, float]:
    """``--route-mix T``: the weights (1 - T) on the clean route and T on the adv route (the training config's)."""
    if args.route is not None:
        raise ConfigError("--route and --route-mix both choose what to fold; pass one of them")
    config = loaded.config
    return mixture_weights(loaded.model, parse_number(args.route_mix, "--route-mix"),
                           clean=config.get("clean_route", CLEAN_ROUTE), adv=config.get("adv_route", ADV_ROUTE))


def recalibration(loaded: LoadedModel, args: argparse.Namespace, route: str | dict[str, float] | None, eps: float,
                  norm: str) -> tuple[Callable[[nn.Module], nn.Module] | None, str | None]:
    """``--recalibrate N``: what re-estimates the mixture's BN statistics before it is written, and its note."""
    if args.recalibrate is None:
        return None, None
    t = route.get(loaded.config.get("adv_route", ADV_ROUTE), 0.0) if isinstance(route, dict) else None
    if t is None or not 0 < t < 1:
        raise ConfigError("--recalibrate re-estimates the BN statistics of a mixture strictly between the routes; "
                          "use it with --route-mix T, 0 < T < 1 (the routes themselves stay as trained)")
    from ..eval.recalibration import training_recalibration

    recalibrate = training_recalibration(loaded, args.recalibrate, eps, norm, args.data_dir, args.seed)
    return (lambda mixed: recalibrate(mixed, t, resolve_device(args.device))), recalibrate.describe(t)


def describe(route: str | dict[str, float] | None) -> str:
    if isinstance(route, dict):
        return f"{describe_mixture(route)} of the routes folded"
    return f"{route} route folded" if route else "no routes"


def run(args: argparse.Namespace) -> int:
    loaded = load_trained_model(args.checkpoint, args.model, parse_json_object(args.model_kwargs))
    route = loaded.route(args.route) if args.route_mix is None else mixture(loaded, args)
    norm, eps = loaded.threat(args.threat_model, args.eps)
    trained = loaded.trained_on()
    dataset = args.dataset or trained or "cifar10"  # RobustBench's slot
    model = loaded.model
    arch = None if getattr(model, "model_spec", None) is not None else loaded.spec
    report_stem = weights_path(args.name, args.model_dir, dataset, norm).with_name(f"{args.name}.eval")
    if args.eval:
        for suffix in (".json", ".md"):
            check_writable(report_stem.with_name(report_stem.name + suffix))
    prepare, note = recalibration(loaded, args, route, eps, norm)
    weights = export(model, args.name, route, args.model_dir, dataset, norm, arch, eps=eps,
                     info_dir=args.info_dir, overwrite=args.overwrite, trained_on=trained,
                     allow_dataset_mismatch=args.allow_dataset_mismatch, input_shape=loaded.input_shape,
                     prepare=prepare, note=note)
    card = card_path(args.name, args.model_dir, dataset, norm, args.info_dir)
    rows = [["weights (state dict)", weights], ["architecture", weights.with_name(f"{args.name}.arch.json")],
            ["leaderboard card", card]]
    if args.eval:
        from ..eval import evaluate, write_report

        exported = load_trained_model(weights).model  # the files RobustBench reads, nothing else
        device = resolve_device(args.device)
        data_dir = args.data_dir or loaded.config.get("data_dir")
        x, y = test_images(trained or dataset, data_dir, args.n_examples)  # the model's own dataset
        report = evaluate(exported.to(device), x, y, eps, norm=norm, attack="autoattack", version=args.version,
                          seed=args.seed, batch_size=args.batch_size, device=device, progress=args.progress)
        report.checkpoint, report.dataset = str(weights), trained or dataset
        report.source = f"exported model ({describe(route)})"
        fill_card(card, report)
        json_path = write_report(report, report_stem)[0]
        rows += [["evaluation report", json_path],
                 ["clean / AutoAttack accuracy (%)",
                  f"{100 * report.clean_acc:.2f} / {100 * report.robust_acc:.2f} ({report.n} images, "
                  f"{args.version}, {norm} eps {format_eps(eps, norm)})"]]
        rows += [["AutoAttack flag", flag] for flag in report.flags]
    print(f"exported {loaded.path} ({loaded.source}, {describe(route)}{f'; {note}' if note else ''}) as {args.name}\n")
    print(markdown_table(["", ""], rows))
    reason = unreachable(dataset, norm)
    if reason is None:
        print(f"\nload it: robustbench.utils.load_model({args.name!r}, model_dir={str(args.model_dir)!r}, "
              f"dataset={dataset!r}, threat_model={norm!r}) after `import robust_sabn`")
    else:
        print(f"\n{reason}, so its load_model cannot reach this export; evaluate it with "
              f"`robust-sabn eval {weights}`")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Writes <model-dir>/<dataset>/<threat>/<name>.pt (state dict), <name>.arch.json "
                          "(architecture) and model_info/<dataset>/<threat>/<name>.json (card; accuracies with "
                          "--eval). After `import robust_sabn`, robustbench.utils.load_model(name, model_dir, dataset, "
                          "threat_model) loads it offline.")
    add_model_arguments(parser)
    parser.add_argument("--name", required=True, help="RobustBench-style name, e.g. Name2026Title (must be new)")
    parser.add_argument("--model-dir", default="models", help="RobustBench's model_dir (default ./models)")
    parser.add_argument("--info-dir", help="folder for the card (default: model_info beside --model-dir)")
    parser.add_argument("--route-mix", metavar="T",
                        help="export the mixture of the routes (1 - T) clean + T adv instead of one route (0: the "
                             "clean route, 1: the adv route; see docs/route-mixing.md)")
    add_recalibrate_flag(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export of the same name")
    parser.add_argument("--allow-dataset-mismatch", action="store_true",
                        help="file a model under a --dataset other than the one it was trained on (a demonstration; "
                             "its card names the dataset it was trained on)")
    parser.add_argument("--eval", action="store_true",
                        help="run AutoAttack on the exported model (the first --n-examples test images) and fill "
                             "the card")
    add_common_flags(parser)
