"""``robust-sabn quickstart``: the main job, a few minutes on a CPU.

Trains ``resnet_small`` with Sandwich BN and the hybrid objective on Fashion-MNIST (Linf eps 0.1), then runs a
list of steps, each adding rows to one table of clean and robust test accuracy. Later parts append their steps
to :data:`QUICKSTART_STEPS` (e.g. AutoAttack, export, reload through RobustBench).
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from .eval.quickstart_steps import STEPS as EVAL_STEPS
from .eval.tables import markdown_table
from .model_files import load_trained_model
from .nn import routes_of
from .training.config import TrainConfig
from .training.data import load_dataset
from .training.distributed import resolve_device
from .training.evaluate import accuracy, pgd_attack
from .training.loop import fixed_subset, train
from .training.run_dir import BEST, default_run_dir

RECIPE = "fashion-mnist-small"
# Sized for about five minutes on two quiet CPU cores: four passes over 25,000 images with PGD-5 training attacks
# (the recipe's), the learning rate divided by 10 for the last pass (about 50 s per epoch), then the PGD-20 table
# (~15 s) and the standard AutoAttack on 100 images (~1 min).
SETTINGS = {"epochs": 4, "train_size": 25000, "milestones": [3], "val_size": 500}
TABLE_HEADERS = ("evaluation", "route", "clean acc (%)", "robust acc (%)", "test images")


@dataclass
class Quickstart:
    """What the steps share. The train step fills ``model`` (best.pt, eval mode); every step may add ``rows``
    (one per :data:`TABLE_HEADERS`) and ``notes`` printed under the table."""

    config: TrainConfig
    test: Dataset
    device: torch.device
    pgd_steps: int = 20
    model: nn.Module | None = None
    rows: list[list[object]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return Path(self.config.out_dir)

    def add_row(self, evaluation: str, route: str, clean: float | None, robust: float | None) -> None:
        def pct(value: float | None) -> str:
            return "-" if value is None else f"{100 * value:.1f}"

        self.rows.append([evaluation, route, pct(clean), pct(robust), len(self.test)])


def train_model(qs: Quickstart) -> None:
    """Train (the run folder is kept) and load the checkpoint with the best robust validation accuracy."""
    result = train(qs.config)
    qs.model = load_trained_model(result.run_dir / BEST).model.to(qs.device)
    qs.notes.append(f"run folder: {result.run_dir} (best.pt from epoch {result.best['epoch']}, "
                    f"{result.step} steps)")


def evaluate_pgd(qs: Quickstart) -> None:
    """Clean and PGD accuracy through each route, and the paper's oracle routing (clean inputs through the
    clean route, attacked inputs through the adv route)."""
    model, config = qs.model, qs.config
    label = f"PGD-{qs.pgd_steps} ({config.attack_norm} {config.eps:g})"
    results = {}
    for route in routes_of(model) or ("adv",):
        attack = pgd_attack(model, eps=config.eps, steps=qs.pgd_steps, route=route, norm=config.attack_norm)
        kwargs = {"route": route, "device": qs.device, "seed": config.seed}
        results[route] = (accuracy(model, qs.test, **kwargs), accuracy(model, qs.test, attack=attack, **kwargs))
        qs.add_row(label, route, *results[route])
    if "clean" in results and "adv" in results:
        qs.add_row(f"{label}, oracle routing", "clean for clean, adv for attacked", results["clean"][0],
                   results["adv"][1])


Step = Callable[[Quickstart], None]
QUICKSTART_STEPS: list[tuple[str, Step]] = [("train", train_model), ("PGD evaluation", evaluate_pgd)]
QUICKSTART_STEPS += EVAL_STEPS  # AutoAttack, then export and reload through RobustBench


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
    qs = Quickstart(config, test, resolve_device(config.device), pgd_steps)
    steps = QUICKSTART_STEPS if steps is None else steps
    for i, (name, step) in enumerate(steps, start=1):
        if config.progress:
            print(f"[{i}/{len(steps)}] {name}", flush=True)
        step(qs)
    return qs


def report(qs: Quickstart) -> str:
    return "\n".join([markdown_table(TABLE_HEADERS, qs.rows), "", *qs.notes])


def run(args: argparse.Namespace) -> int:
    config = quickstart_config(out_dir=args.out_dir, data_dir=args.data_dir, download=args.download or None,
                               epochs=args.epochs, train_size=args.train_size, seed=args.seed, device=args.device,
                               progress=False if args.no_progress else None)
    print(report(run_quickstart(config, args.test_size, args.pgd_steps)))
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quickstart", help="train a small SaBN model on Fashion-MNIST and print its clean/robust accuracy table",
        description="Adversarially train resnet_small with Sandwich BN (hybrid loss, PGD, Linf eps 0.1) on "
                    "Fashion-MNIST on the CPU in about five minutes, then evaluate it on the test set.")
    parser.add_argument("--out-dir", help="run folder (default: runs/quickstart-...)")
    parser.add_argument("--data-dir", help="folder with the Fashion-MNIST idx files "
                                           "(default: /usr/share/datasets/fashion-mnist, then data/FashionMNIST/raw)")
    parser.add_argument("--download", action="store_true", help="download Fashion-MNIST if missing (needs internet)")
    parser.add_argument("--epochs", type=int, help=f"training epochs (default {SETTINGS['epochs']})")
    parser.add_argument("--train-size", type=int, help=f"training images (default {SETTINGS['train_size']})")
    parser.add_argument("--test-size", type=int, default=1000, help="test images evaluated (default 1000)")
    parser.add_argument("--pgd-steps", type=int, default=20, help="PGD steps of the evaluation attack")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="auto, cpu or cuda")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)
