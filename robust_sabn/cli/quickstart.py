"""``robust-sabn quickstart``: the main job, a few minutes on a CPU.

Trains ``resnet_small`` with Sandwich BN and the hybrid objective on Fashion-MNIST (Linf eps 0.1), then runs a list
of steps, each adding rows to one table of clean and robust test accuracy: PGD through each route and the paper's
oracle routing, the standard AutoAttack under both protocols, and an export reloaded through RobustBench.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..batching import batch_slices
from ..constants import ORACLE_ROUTING, SINGLE_ROUTE
from ..data import as_tensors, fixed_subset, load_dataset
from ..devices import resolve_device
from ..eval import EvalSettings, evaluate, write_report
from ..exporting import ExportOptions, export
from ..exporting.robustbench import import_robustbench
from ..limits import ATTACK_STEPS, EPOCHS, IMAGES
from ..model_files import TrainedFor, load_trained_model
from ..nn import use_route
from ..tables import markdown_table, percent
from ..training.config import TrainConfig
from ..training.loop import train
from ..training.run_dir import BEST, default_run_dir
from .flags import InRange, add_common_flags

RECIPE = "fashion-mnist-small"
# Sized for about five minutes on two quiet CPU cores: four passes over 25,000 images with PGD-5 training attacks
# (the recipe's), the learning rate divided by 10 for the last pass (about 50 s per epoch), then the PGD-20 table
# (~15 s) and the standard AutoAttack on 100 images (~1 min; `robust-sabn eval RUN --n-examples 10000` runs it on
# the whole test set).
SETTINGS = {"epochs": 4, "train_size": 25000, "milestones": [3], "val_size": 500}
AA_IMAGES = 100
EXPORT_NAME = "QuickstartSabn2026"
TABLE_HEADERS = ("evaluation", "route", "clean acc (%, 95% CI)", "robust acc (%, 95% CI)", "test images")


@dataclass
class Quickstart:
    """What the steps share: the test images, and the model the train step fills (best.pt, eval mode). Every step
    may add ``rows`` (one per :data:`TABLE_HEADERS`) and ``notes`` printed under the table."""

    config: TrainConfig
    x: torch.Tensor
    y: torch.Tensor
    device: torch.device
    pgd_steps: int = 20
    model: nn.Module | None = None
    rows: list[list[object]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return Path(self.config.out_dir)

    @property
    def oracle_routes(self) -> str:
        return f"{self.config.clean_route} for clean, {self.config.adv_route} for attacked"

    def add_row(self, evaluation: str, route: str, clean: float | None, robust: float | None, n: int) -> None:
        self.rows.append([evaluation, route, percent(clean, n) or "-", percent(robust, n) or "-", n])

    def evaluate(self, attack: str, route: str, n: int | None = None, clean_route: str | None = None):
        """:func:`robust_sabn.eval.evaluate` of the trained model on the first ``n`` test images (in one batch when
        ``n`` is given)."""
        config = self.config
        settings = EvalSettings(config.threat, attack, config.seed, n or 256, self.device, progress=config.progress)
        return evaluate(self.model, self.x[:n], self.y[:n], settings, route=route, clean_route=clean_route)


def train_model(qs: Quickstart) -> None:
    """Train (the run folder is kept) and load the checkpoint with the best robust validation accuracy."""
    result = train(qs.config)
    qs.model = load_trained_model(result.run_dir / BEST).model.to(qs.device)
    qs.notes.append(f"run folder: {result.run_dir} (best.pt from epoch {result.best['epoch']}, "
                    f"{result.step} steps)")


def evaluate_pgd(qs: Quickstart) -> None:
    """``robust-sabn eval``'s PGD-K through each route, and the paper's oracle routing (clean inputs through the
    clean route, attacked inputs through the adv route)."""
    config, attack = qs.config, f"pgd-{qs.pgd_steps}"
    label = f"PGD-{qs.pgd_steps} ({config.threat.label})"
    clean = qs.evaluate(attack, config.clean_route)
    adv = qs.evaluate(attack, config.adv_route, clean_route=config.clean_route)
    qs.add_row(label, config.clean_route, clean.clean_acc, clean.robust_acc, clean.n)
    qs.add_row(label, config.adv_route, adv.clean_acc, adv.robust_acc, adv.n)
    oracle = adv.protocols[ORACLE_ROUTING]
    qs.add_row(f"{label}, {ORACLE_ROUTING}", qs.oracle_routes, oracle.clean_acc, oracle.robust_acc, adv.n)


def autoattack(qs: Quickstart) -> None:
    """The standard AutoAttack on the first test images, both protocols; the report goes to <run>/eval/."""
    config = qs.config
    report = qs.evaluate("autoattack", config.adv_route, AA_IMAGES, clean_route=config.clean_route)
    json_path, _ = write_report(report, qs.run_dir / "eval" / "quickstart-autoattack")
    label = f"AutoAttack standard ({report.threat.label})"
    for name, protocol in report.protocols.items():
        route = protocol.adv_route if name == SINGLE_ROUTE else qs.oracle_routes
        qs.add_row(f"{label}, {name}", route, protocol.clean_acc, protocol.robust_acc, report.n)
    qs.notes.append(f"AutoAttack: {report.attack_description} ({report.backend}, seed {report.seed}, "
                    f"{report.time['total_s']:.0f} s): {json_path}")
    qs.notes += [f"AutoAttack flag: {flag}" for flag in report.flags]


def export_and_reload(qs: Quickstart) -> None:
    """Fold the adv route, export it, load it back with ``robustbench.utils.load_model`` and compare logits.

    RobustBench 1.1.1 loads only cifar10/cifar100/imagenet models, so this Fashion-MNIST model is filed in the
    cifar10 slot of a scratch model_dir inside the run folder (``allow_dataset_mismatch``; the card names
    Fashion-MNIST): it shows the round trip, not a leaderboard entry.
    """
    import_robustbench()
    from robustbench.utils import load_model

    config = qs.config
    model_dir = qs.run_dir / "robustbench" / "models"
    trained = TrainedFor(config.threat, config.dataset, tuple(qs.x.shape[1:]))
    path = export(qs.model, EXPORT_NAME, config.adv_route, model_dir, trained=trained, dataset="cifar10",
                  options=ExportOptions(overwrite=True, allow_dataset_mismatch=True))
    loaded = load_model(EXPORT_NAME, model_dir=model_dir, dataset="cifar10", threat_model=config.threat.norm)
    loaded = loaded.to(qs.device)
    logits, expected = [], []
    with torch.no_grad(), use_route(qs.model, config.adv_route):
        for part in batch_slices(len(qs.x), 256):
            logits.append(loaded(qs.x[part].to(qs.device)).cpu())
            expected.append(qs.model(qs.x[part].to(qs.device)).cpu())
    logits, expected = torch.cat(logits), torch.cat(expected)
    clean = (logits.argmax(1) == qs.y).float().mean().item()
    qs.add_row(f"RobustBench load_model of the export ({config.adv_route} route folded into plain BN)", "-", clean,
               None, len(qs.y))
    qs.notes.append(f"export: {path} (+ .arch.json, card in {model_dir.parent / 'model_info'}); reloaded through "
                    f"robustbench.utils.load_model, max |logit difference| vs the routed model "
                    f"{(logits - expected).abs().max().item():.1e}; filed under RobustBench's cifar10 slot only "
                    "because RobustBench 1.1.1 knows no Fashion-MNIST")


Step = Callable[[Quickstart], None]
QUICKSTART_STEPS: list[tuple[str, Step]] = [
    ("train", train_model), ("PGD evaluation", evaluate_pgd), ("AutoAttack evaluation", autoattack),
    ("export and reload through RobustBench", export_and_reload),
]


def quickstart_config(**overrides) -> TrainConfig:
    """The quickstart's training config: the ``fashion-mnist-small`` recipe, shortened, with ``overrides``."""
    values = {**SETTINGS, **{k: v for k, v in overrides.items() if v is not None}}
    config = TrainConfig.from_file(RECIPE, **values)
    if config.out_dir is None:
        config.out_dir = default_run_dir(config).replace(f"{config.dataset}-", "quickstart-", 1)
    return config


def run_quickstart(config: TrainConfig, test_size: int | None = 1000, pgd_steps: int = 20,
                   steps: list[tuple[str, Step]] | None = None) -> Quickstart:
    """Run every step on a fixed random subset of ``test_size`` test images (all of them when None)."""
    splits = load_dataset(config.dataset, config.data_dir, download=config.download, val_size=config.val_size,
                          seed=config.seed)
    test = fixed_subset(splits.test, min(test_size, len(splits.test)) if test_size else None, config.seed)
    qs = Quickstart(config, *as_tensors(test), resolve_device(config.device), pgd_steps)
    steps = QUICKSTART_STEPS if steps is None else steps
    for i, (name, step) in enumerate(steps, start=1):
        if config.progress:
            print(f"[{i}/{len(steps)}] {name}", flush=True)
        step(qs)
    return qs


def report(qs: Quickstart) -> str:
    return "\n".join([markdown_table(TABLE_HEADERS, qs.rows), "", *qs.notes])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Adversarially train resnet_small with Sandwich BN (hybrid loss, PGD, Linf eps 0.1) on "
                          "Fashion-MNIST on the CPU in about five minutes, then evaluate it on the test set.")
    parser.add_argument("--out-dir", help="run folder (default: runs/quickstart-...)")
    parser.add_argument("--download", action="store_true", help="download Fashion-MNIST if missing (needs internet)")
    parser.add_argument("--epochs", action=InRange, limits=EPOCHS.but(example="10"),
                        help=f"training epochs (default {SETTINGS['epochs']})")
    parser.add_argument("--train-size", action=InRange, limits=IMAGES.but(example="10000"),
                        help=f"training images (default {SETTINGS['train_size']})")
    parser.add_argument("--test-size", action=InRange, limits=IMAGES, default=1000,
                        help="test images evaluated (default 1000)")
    parser.add_argument("--pgd-steps", action=InRange, limits=ATTACK_STEPS.but(example="20"), default=20,
                        help="steps of the PGD evaluation (eval's pgd-K)")
    add_common_flags(parser, seed=None)


def run(args: argparse.Namespace) -> int:
    config = quickstart_config(out_dir=args.out_dir, data_dir=args.data_dir, download=args.download or None,
                               epochs=args.epochs, train_size=args.train_size, seed=args.seed, device=args.device,
                               progress=args.progress)
    print(report(run_quickstart(config, args.test_size, args.pgd_steps)))
    return 0
