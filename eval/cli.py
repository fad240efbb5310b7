"""``robust-sabn eval``: evaluate a run folder, a checkpoint or an exported model; JSON + Markdown report."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..io import all_or_nothing, atomic_write_text, check_writable
from ..model_files import LoadedModel, load_trained_model
from ..nn import routes_of
from .tables import markdown_table

DEFAULT_SWEEP_ATTACK = "pgd-20"


def parse_eps(value: Any, name: str = "eps") -> float:
    from ..training.config import parse_number

    return parse_number(value, name)


def parse_eps_list(text: str) -> list[float]:
    """``"0,2/255,4/255"`` -> [0.0, 0.00784..., 0.01568...]."""
    return [parse_eps(part, "--eps-sweep value") for part in text.split(",") if part.strip()]


def parse_kwargs(text: str | None) -> dict:
    if not text:
        return {}
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--model-kwargs must be a JSON object like '{{\"num_classes\": 10}}' ({err})") from None
    if not isinstance(kwargs, dict):
        raise ConfigError("--model-kwargs must be a JSON object like '{\"num_classes\": 10}'")
    return kwargs


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but CUDA is not available; use --device cpu")
    return torch.device(name)


def default_route(loaded: LoadedModel, route: str | None) -> str | None:
    """``--route`` as given; for a routed model without one, "adv" when it has that route."""
    routes = routes_of(loaded.model)
    if route is None and routes:
        if "adv" not in routes:
            raise ConfigError(f"this model has routes {list(routes)}; choose one with --route")
        return "adv"
    return route


def settings(args: argparse.Namespace, loaded: LoadedModel) -> dict[str, Any]:
    """Dataset, threat model, eps and data folder: the flag when given, else the training config's, else
    RobustBench's defaults (cifar10, Linf, 8/255)."""
    config = loaded.config
    return {
        "dataset": args.dataset or config.get("dataset") or "cifar10",
        "data_dir": args.data_dir or config.get("data_dir"),
        "norm": args.threat_model or config.get("attack_norm") or "Linf",
        "eps": parse_eps(args.eps if args.eps is not None else config.get("eps", 8 / 255)),
    }


def report_stem(loaded: LoadedModel, out: str | None, attack: str, version: str | None, route: str | None,
                norm: str, eps: str) -> Path:
    if out:
        path = Path(out)
        return path.with_suffix("") if path.suffix in (".json", ".md", ".png") else path
    parts = [loaded.path.stem, attack, version, route or "plain", norm, eps.replace("/", "_")]
    return loaded.path.parent / "eval" / "-".join(p for p in parts if p)


def run(args: argparse.Namespace) -> int:
    from ..exporting import format_eps
    from .data import test_images
    from .evaluate import evaluate
    from .report import write_report
    from .sweep import eps_sweep, plot_sweep

    loaded = load_trained_model(args.checkpoint, args.model, parse_kwargs(args.model_kwargs))
    route = default_route(loaded, args.route)
    setup = settings(args, loaded)
    sweep = parse_eps_list(args.eps_sweep) if args.eps_sweep else None
    attack = args.attack or (DEFAULT_SWEEP_ATTACK if sweep else "autoattack")
    device = resolve_device(args.device)
    version = args.version if attack == "autoattack" else None
    eps_name = "sweep" if sweep else format_eps(setup["eps"], setup["norm"])
    stem = report_stem(loaded, args.out, attack, version, route, setup["norm"], eps_name)
    for suffix in (".json", ".md", ".png") if sweep else (".json", ".md"):
        check_writable(stem.with_name(stem.name + suffix))  # before the attack, not after it
    x, y = test_images(setup["dataset"], setup["data_dir"], args.n_examples)
    common = dict(norm=setup["norm"], route=route, seed=args.seed, batch_size=args.batch_size,
                  clean_route=args.clean_route, device=device)
    print(f"evaluating {loaded.path} ({loaded.source}) on {len(y)} {setup['dataset']} test images, "
          f"route {route or '-'}", flush=True)

    if sweep is not None:
        reports = eps_sweep(loaded.model.to(device), x, y, sweep, attack=attack, **common)
        rows = [[r["eps_str"], f"{100 * r['clean_acc']:.2f}", f"{100 * r['robust_acc']:.2f}"] for r in reports]
        table = markdown_table(["eps", "clean acc (%)", f"{reports[0]['attack_description']} robust acc (%)"], rows)
        with all_or_nothing():
            atomic_write_text(stem.with_name(stem.name + ".json"), json.dumps(reports, indent=2) + "\n")
            atomic_write_text(stem.with_name(stem.name + ".md"), table + "\n")
            png = plot_sweep(reports, stem.with_name(stem.name + ".png"), title=f"{loaded.path.name}, {len(y)} images")
        print(table)
        print(f"wrote {stem}.json, .md and {png}")
        return 0

    report = evaluate(loaded.model.to(device), x, y, setup["eps"], attack=attack, version=args.version, **common)
    report.update(checkpoint=str(loaded.path), source=loaded.source, dataset=setup["dataset"])
    json_path, md_path = write_report(report, stem)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="AutoAttack / APGD-CE / PGD / CW evaluation of a run folder, checkpoint or exported model",
        description="Evaluate on the first N test images with the model folded on one route, in eval mode, with a "
                    "fixed seed. Reports both protocols for routed models: single route (what RobustBench "
                    "accepts) and oracle routing (clean route for clean accuracy, as the SaBN paper reports).")
    p.add_argument("checkpoint", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="run folder (best.pt, else last.pt), training checkpoint, or exported <name>.pt")
    p.add_argument("--model", help="architecture for a plain state dict: zoo name or 'module:callable'")
    p.add_argument("--model-kwargs", help="JSON keyword arguments for --model, e.g. '{\"num_classes\": 10}'")
    p.add_argument("--dataset", help="dataset of the test images (default: the training config's, else cifar10)")
    p.add_argument("--data-dir", help="dataset folder (default: the training config's, else the dataset default)")
    p.add_argument("--threat-model", choices=("Linf", "L2"), help="default: the training attack's norm, else Linf")
    p.add_argument("--eps", help="attack radius, e.g. 8/255 (default: the training eps, else 8/255)")
    p.add_argument("--n-examples", type=int, default=1000, help="first N test images (default 1000)")
    p.add_argument("--attack", help="autoattack (default), apgd-ce, pgd-20 (any pgd-K) or cw (CW-loss PGD-20)")
    p.add_argument("--version", default="standard", choices=("standard", "plus", "rand"),
                   help="AutoAttack version (default standard)")
    p.add_argument("--route", help="route to evaluate (default adv for routed models)")
    p.add_argument("--clean-route", default="clean", help="route for the oracle protocol's clean accuracy")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--out", help="report path without suffix (default: <checkpoint folder>/eval/<settings>)")
    p.add_argument("--eps-sweep", metavar="EPS,EPS,...",
                   help="robust accuracy at each radius, drawn as a PNG (PGD-20 unless --attack apgd-ce/pgd-K/cw)")
    p.set_defaults(run=run)
