"""``robust-sabn export``: fold a route, write RobustBench's files, and with ``--eval`` fill the card by AutoAttack."""
from __future__ import annotations

import argparse

from ..exporting import card_path, export, fill_card, format_eps, weights_path
from ..io import check_writable
from ..model_files import LoadedModel, arch_file, load_trained_model, read_arch_file
from ..robustbench_bridge import robustbench_names
from .cli import default_route, parse_kwargs, resolve_device, settings
from .tables import markdown_table


def trained_on(loaded: LoadedModel) -> str | None:
    """The dataset the model was trained on: its training config's, or the one its export recorded."""
    if loaded.config.get("dataset"):
        return loaded.config["dataset"]
    if loaded.source == "exported model":
        record = read_arch_file(arch_file(loaded.path))
        return record.get("trained_on") or record.get("dataset")
    return None


def run(args: argparse.Namespace) -> int:
    loaded = load_trained_model(args.checkpoint, args.model, parse_kwargs(args.model_kwargs))
    route = default_route(loaded, args.route)
    setup = settings(args, loaded)
    trained = trained_on(loaded)
    dataset = args.dataset or trained or setup["dataset"]  # RobustBench's slot
    model = loaded.model
    arch = None if getattr(model, "model_spec", None) is not None else loaded.spec
    report_stem = weights_path(args.name, args.model_dir, dataset, setup["norm"]).with_name(f"{args.name}.eval")
    if args.eval:
        for suffix in (".json", ".md"):
            check_writable(report_stem.with_name(report_stem.name + suffix))
    weights = export(model, args.name, route, args.model_dir, dataset, setup["norm"], arch, eps=setup["eps"],
                     info_dir=args.info_dir, overwrite=args.overwrite, trained_on=trained,
                     allow_dataset_mismatch=args.allow_dataset_mismatch)
    card = card_path(args.name, args.model_dir, dataset, setup["norm"], args.info_dir)
    rows = [["weights (state dict)", weights], ["architecture", weights.with_name(f"{args.name}.arch.json")],
            ["leaderboard card", card]]
    if args.eval:
        from .data import test_images
        from .evaluate import evaluate
        from .report import write_report

        exported = load_trained_model(weights).model  # the files RobustBench reads, nothing else
        device = resolve_device(args.device)
        x, y = test_images(trained or dataset, setup["data_dir"], args.n_examples)  # the model's own dataset
        report = evaluate(exported.to(device), x, y, setup["eps"], norm=setup["norm"], attack="autoattack",
                          version=args.version, seed=args.seed, batch_size=args.batch_size, device=device)
        report.update(checkpoint=str(weights), source="exported model", dataset=trained or dataset, route_folded=route)
        fill_card(card, report)
        json_path, _ = write_report(report, report_stem)
        rows += [["evaluation report", json_path],
                 ["clean / AutoAttack accuracy (%)",
                  f"{100 * report['clean_acc']:.2f} / {100 * report['robust_acc']:.2f} ({report['n']} images, "
                  f"{args.version}, {setup['norm']} eps {format_eps(setup['eps'], setup['norm'])})"]]
        rows += [["AutoAttack flag", flag] for flag in report["flags"]]
    print(f"exported {loaded.path} (route {route or '-'}) as {args.name}\n")
    print(markdown_table(["", ""], rows))
    if robustbench_names(dataset, setup["norm"]):
        print(f"\nload it: robustbench.utils.load_model({args.name!r}, model_dir={str(args.model_dir)!r}, "
              f"dataset={dataset!r}, threat_model={setup['norm']!r}) after `import robust_sabn`")
    else:
        print(f"\nRobustBench has no {dataset} models, so its load_model cannot reach this export; "
              f"evaluate it with `robust-sabn eval {weights}`")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="fold a route and write the model in RobustBench's format (+ leaderboard card)",
        description="Writes <model-dir>/<dataset>/<threat>/<name>.pt (state dict), <name>.arch.json (architecture) "
                    "and model_info/<dataset>/<threat>/<name>.json (card; accuracies with --eval). After "
                    "`import robust_sabn`, robustbench.utils.load_model(name, model_dir, dataset, threat_model) "
                    "loads it offline.")
    p.add_argument("checkpoint", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="run folder (best.pt, else last.pt) or checkpoint")
    p.add_argument("--name", required=True, help="RobustBench-style name, e.g. Name2026Title (must be new)")
    p.add_argument("--route", help="route to fold (default adv for routed models)")
    p.add_argument("--model-dir", default="models", help="RobustBench's model_dir (default ./models)")
    p.add_argument("--info-dir", help="folder for the card (default: model_info beside --model-dir)")
    p.add_argument("--dataset", help="default: the training config's dataset, else cifar10")
    p.add_argument("--threat-model", choices=("Linf", "L2"), help="default: the training attack's norm, else Linf")
    p.add_argument("--eps", help="radius on the card and for --eval (default: the training eps, else 8/255)")
    p.add_argument("--model", help="architecture for a plain state dict: zoo name or 'module:callable'")
    p.add_argument("--model-kwargs", help="JSON keyword arguments for --model")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export of the same name")
    p.add_argument("--allow-dataset-mismatch", action="store_true",
                   help="file a model under a --dataset other than the one it was trained on (a demonstration; "
                        "its card names the dataset it was trained on)")
    p.add_argument("--eval", action="store_true", help="run AutoAttack on the exported model and fill the card")
    p.add_argument("--n-examples", type=int, default=1000, help="--eval: first N test images (default 1000)")
    p.add_argument("--version", default="standard", choices=("standard", "plus", "rand"),
                   help="--eval: AutoAttack version")
    p.add_argument("--data-dir", help="--eval: dataset folder")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(run=run)
