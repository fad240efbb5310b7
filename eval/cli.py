"""``robust-sabn eval``: evaluate a run folder, a checkpoint or an exported model; JSON + Markdown report."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..constants import AA_VERSIONS, CLEAN_ROUTE, THREAT_MODELS
from ..data import test_images
from ..devices import resolve_device
from ..flags import add_common_flags
from ..io import all_or_nothing, atomic_write_text, check_writable
from ..model_files import LoadedModel, load_trained_model
from ..parsing import format_eps, parse_json_object, parse_number_list
from ..tables import markdown_table
from .evaluate import evaluate
from .report import write_report
from .sweep import eps_sweep, plot_sweep

DEFAULT_SWEEP_ATTACK = "pgd-20"


def report_stem(loaded: LoadedModel, out: str | None, attack: str, version: str | None, route: str | None,
                norm: str, eps: str) -> Path:
    if out:
        path = Path(out)
        return path.with_suffix("") if path.suffix in (".json", ".md", ".png") else path
    parts = [loaded.path.stem, attack, version, route or "plain", norm, eps.replace("/", "_")]
    return loaded.path.parent / "eval" / "-".join(p for p in parts if p)


def run(args: argparse.Namespace) -> int:
    loaded = load_trained_model(args.checkpoint, args.model, parse_json_object(args.model_kwargs))
    route = loaded.route(args.route)
    norm, eps = loaded.threat(args.threat_model, args.eps)
    dataset = args.dataset or loaded.trained_on() or "cifar10"
    clean_route = args.clean_route or loaded.config.get("clean_route", CLEAN_ROUTE)
    sweep = parse_number_list(args.eps_sweep, "--eps-sweep value") if args.eps_sweep else None
    attack = args.attack or (DEFAULT_SWEEP_ATTACK if sweep else "autoattack")
    device = resolve_device(args.device)
    version = args.version if attack == "autoattack" else None
    stem = report_stem(loaded, args.out, attack, version, route, norm, "sweep" if sweep else format_eps(eps, norm))
    for suffix in (".json", ".md", ".png") if sweep else (".json", ".md"):
        check_writable(stem.with_name(stem.name + suffix))  # before the attack, not after it
    x, y = test_images(dataset, args.data_dir or loaded.config.get("data_dir"), args.n_examples)
    common = dict(norm=norm, route=route, seed=args.seed, batch_size=args.batch_size, clean_route=clean_route,
                  device=device, progress=args.progress)
    print(f"evaluating {loaded.path} ({loaded.source}) on {len(y)} {dataset} test images, route {route or '-'}",
          flush=True)

    if sweep is not None:
        reports = eps_sweep(loaded.model.to(device), x, y, sweep, attack=attack, **common)
        rows = [[r.eps_str, f"{100 * r.clean_acc:.2f}", f"{100 * r.robust_acc:.2f}"] for r in reports]
        table = markdown_table(["eps", "clean acc (%)", f"{reports[0].attack_description} robust acc (%)"], rows)
        with all_or_nothing():
            atomic_write_text(stem.with_name(stem.name + ".json"),
                              json.dumps([r.to_dict() for r in reports], indent=2) + "\n")
            atomic_write_text(stem.with_name(stem.name + ".md"), table + "\n")
            png = plot_sweep(reports, stem.with_name(stem.name + ".png"), title=f"{loaded.path.name}, {len(y)} images")
        print(table)
        print(f"wrote {stem}.json, .md and {png}")
        return 0

    report = evaluate(loaded.model.to(device), x, y, eps, attack=attack, version=args.version, **common)
    report.checkpoint, report.source, report.dataset = str(loaded.path), loaded.source, dataset
    json_path, md_path = write_report(report, stem)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 0


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model to load, and the route and threat model to use: shared by ``eval`` and ``export``."""
    parser.add_argument("checkpoint", metavar="RUN_DIR_OR_CHECKPOINT",
                        help="run folder (best.pt, else last.pt), training checkpoint, or exported <name>.pt")
    parser.add_argument("--model", help="architecture for a plain state dict, or the Python callable an architecture "
                                        "file names, if you trust it: zoo name or 'module:callable'")
    parser.add_argument("--model-kwargs", help="JSON keyword arguments for --model, e.g. '{\"num_classes\": 10}'")
    parser.add_argument("--route", help="route to evaluate / fold (default: the route training attacked, adv)")
    parser.add_argument("--dataset", help="default: the dataset the model was trained on, else cifar10")
    parser.add_argument("--threat-model", choices=THREAT_MODELS, help="default: the training attack's, else Linf")
    parser.add_argument("--eps", help="attack radius, e.g. 8/255 (default: the training eps, else 8/255)")
    parser.add_argument("--n-examples", type=int, default=1000, help="first N test images (default 1000)")
    parser.add_argument("--version", default="standard", choices=[v for v in AA_VERSIONS if v != "custom"],
                        help="AutoAttack version (default standard)")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="images per batch; each batch is attacked with its own seed (default 256)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Evaluate on the first N test images with the model folded on one route, in eval mode, in "
                          "fixed batches seeded from --seed. Reports both protocols for routed models: single route "
                          "(what RobustBench accepts) and oracle routing (clean route for clean accuracy, as the SaBN "
                          "paper reports).")
    add_model_arguments(parser)
    parser.add_argument("--attack", help="autoattack (default), apgd-ce, pgd-K (K steps, pgd = pgd-20) or cw-K")
    parser.add_argument("--clean-route", help="route for the oracle protocol's clean accuracy (default: clean)")
    parser.add_argument("--out", help="report path without suffix (default: <checkpoint folder>/eval/<settings>)")
    parser.add_argument("--eps-sweep", metavar="EPS,EPS,...",
                        help="robust accuracy at each radius, drawn as a PNG (PGD-20 unless --attack apgd-ce/pgd-K/cw)")
    add_common_flags(parser)
