"""``robust-sabn bench eval``: evaluation through robust-sabn against the libraries called directly.

Rows: AutoAttack via :func:`robust_sabn.eval.evaluate` vs ``pyautoattack.AutoAttack`` on the folded model
(target ratio <= 1.02, identical robust accuracy), and ``evaluate(attack="pgd-10")`` vs torchattacks' ``PGD``
(10 steps of eps/4, random start) looped over the same batches with a clean pass (target <= 0.90, robust accuracy
within noise). Both baselines get ``fold_route(model, route)``, folded once before timing. Every variant runs once per
round, rounds interleaved (:func:`robust_sabn.bench.timing.interleaved_medians`). robust-sabn's AutoAttack runs
in one batch of all the images, so that it must give pyautoattack's own result.

The model is a trained checkpoint with the first test images of its dataset (``--checkpoint``), or else a fresh
SaBN ``resnet_small`` on random images labelled by its own predictions, a quarter of them wrongly.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import nn

from .. import create_model, fold_route
from ..constants import AA_VERSIONS
from ..data import test_images
from ..eval import evaluate
from ..model_files import load_trained_model
from ..parsing import parse_number
from ..tables import markdown_table
from .timing import interleaved_medians

TARGETS = {"autoattack": 1.02, "pgd-10": 0.90}


def _pyautoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, version: str, attacks: list[str],
                  seed: int, batch_size: int) -> float:
    from pyautoattack import AutoAttack

    adversary = AutoAttack(model, attacks=attacks if version == "custom" else None, device="cpu", eps=eps,
                           norm="Linf", seed=seed, version=version)
    _, y_adv = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    return (y_adv == y).float().mean().item()


def _torchattacks_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int,
                      batch_size: int) -> float:
    import torchattacks

    torch.manual_seed(seed)
    attack = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=10, random_start=True)
    robust = []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        with torch.no_grad():
            correct = model(xb).argmax(1) == yb
        adv = attack(xb, yb)
        with torch.no_grad():
            robust.append(correct & (model(adv).argmax(1) == yb))
    return torch.cat(robust).float().mean().item()


def synthetic_case(width: int, n: int, image_size: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor, str]:
    """A fresh SaBN ``resnet_small`` and ``n`` random images labelled by its adv route, a quarter wrongly."""
    model = create_model("resnet_small", width=width, norm="sandwich").eval()
    x = torch.rand(n, 3, image_size, image_size)
    with torch.no_grad():
        y = fold_route(model, "adv")(x).argmax(1)
    y[: n // 4] = (y[: n // 4] + 1) % 10
    return model, x, y, f"resnet_small (SaBN, width {width}, untrained), {n} random images {image_size}x{image_size}"


def bench_eval(width: int = 16, n: int = 64, image_size: int = 32, batch_size: int = 32, eps: float | None = None,
               version: str = "standard", attacks: list[str] | None = None, repeats: int = 3, warmup: int = 0,
               seed: int = 0, checkpoint: str | None = None) -> str:
    """Time both pairs on one model and one image set; a Markdown table of ratios. ``eps`` defaults to the
    checkpoint's training eps, else 8/255."""
    torch.manual_seed(seed)
    if checkpoint is None:
        model, x, y, case = synthetic_case(width, n, image_size)
        route, eps = "adv", 8 / 255 if eps is None else eps
    else:
        loaded = load_trained_model(checkpoint)
        model, route, config = loaded.model, loaded.route(), loaded.config
        x, y = test_images(config.get("dataset", "cifar10"), config.get("data_dir"), n)
        if eps is None:  # the training radius when it was a Linf one (the benchmark's attacks are Linf)
            eps = config.get("eps", 8 / 255) if config.get("attack_norm", "Linf") == "Linf" else 8 / 255
        case = f"{loaded.path} ({config.get('dataset', 'cifar10')}, route {route or '-'}), first {len(y)} test images"
    folded = fold_route(model, route)
    acc: dict[str, float] = {}

    def run(label: str, fn: Callable[[], float]) -> Callable[[], None]:
        def call() -> None:
            acc[label] = fn()
        return call

    common = dict(route=route, seed=seed, clean_route=None, progress=False)
    variants = {
        "AutoAttack via robust-sabn": run("aa ours", lambda: evaluate(
            model, x, y, eps, attack="autoattack", version=version, aa_attacks=attacks, batch_size=len(x),
            **common).robust_acc),
        "pyautoattack directly": run("aa direct", lambda: _pyautoattack(
            folded, x, y, eps, version, attacks or [], seed, batch_size)),
        "PGD-10 via robust-sabn": run("pgd ours", lambda: evaluate(
            model, x, y, eps, attack="pgd-10", batch_size=batch_size, **common).robust_acc),
        "torchattacks PGD-10": run("pgd direct", lambda: _torchattacks_pgd(folded, x, y, eps, seed, batch_size)),
    }
    times = interleaved_medians(variants, repeats=repeats, warmup=warmup)
    names = list(variants)
    label = f"AutoAttack {version}" + (f" ({', '.join(attacks)})" if version == "custom" else "")
    rows = [
        [label, times[names[0]], times[names[1]], times[names[0]] / times[names[1]], TARGETS["autoattack"],
         f"{100 * acc['aa ours']:.2f} / {100 * acc['aa direct']:.2f}"],
        ["PGD-10 (eps/4 steps)", times[names[2]], times[names[3]], times[names[2]] / times[names[3]],
         TARGETS["pgd-10"], f"{100 * acc['pgd ours']:.2f} / {100 * acc['pgd direct']:.2f}"],
    ]
    header = (f"{case}, batch {batch_size}, Linf eps {eps:.4f}, median of {repeats}, "
              f"{torch.get_num_threads()} threads, torch {torch.__version__}\n\n")
    return header + markdown_table(["evaluation", "robust-sabn (s)", "baseline (s)", "ratio", "target (<=)",
                                    "robust acc % (ours / baseline)"], rows)


def run(args: argparse.Namespace) -> int:
    attacks = [a for a in (args.aa_attacks or "").split(",") if a] or None
    eps = None if args.eps is None else parse_number(args.eps, "--eps")
    print(bench_eval(args.width, args.n_examples, args.image_size, args.batch_size, eps, args.version, attacks,
                     args.repeats, args.warmup, args.seed, args.checkpoint))
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "AutoAttack and PGD-10 through robust-sabn against pyautoattack and torchattacks called directly."
    p.add_argument("--checkpoint", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="a trained model and its dataset's first test images (default: an untrained SaBN resnet_small "
                        "on random images)")
    p.add_argument("--width", type=int, default=16, help="width of the untrained resnet_small SaBN model")
    p.add_argument("--n-examples", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eps", help="Linf radius; fractions allowed (default: the checkpoint's training eps, else 8/255)")
    p.add_argument("--version", default="standard", choices=AA_VERSIONS)
    p.add_argument("--aa-attacks", help="for --version custom, e.g. apgd-ce,apgd-t")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
