"""``robust-sabn bench eval``: evaluation through robust-sabn against the libraries called directly, and sharded.

Rows: AutoAttack via :func:`robust_sabn.eval.evaluate` vs ``pyautoattack.AutoAttack`` on the folded model
(target ratio <= 0.80, identical robust accuracy), once for each ``numerics`` (the exact default, then the opt-in
faster forms, which may change a prediction); ``evaluate(attack="pgd-10")`` vs torchattacks' ``PGD`` (10 steps of
eps/4, random start) looped over the same batches with a clean pass (target <= 0.90, robust accuracy within noise);
and, for a checkpoint, the ``robust-sabn eval`` command sharded over 2 torchrun processes (one thread each) against
one process with one thread and with every thread (whole commands, start-up included; the report says whether
the per-image results are identical). Each library call runs in a fresh Python process, as a user's script would,
and is timed there without the start-up: a process-wide setting of one variant (robust-sabn's allocator, see
:mod:`robust_sabn.allocator`) then cannot speed up another. Both library baselines get ``fold_route(model,
route)``, folded before timing. Every variant runs once per round, rounds interleaved
(:meth:`robust_sabn.cli.bench.timing.Timing.medians`). robust-sabn's AutoAttack and pyautoattack run in one batch
of all the images, so that the exact form must give pyautoattack's own result.

The model is a trained checkpoint with the first test images of its dataset (``--checkpoint``), or else a fresh
SaBN ``resnet_small`` on random images labelled by its own predictions, a quarter of them wrongly.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...constants import AA_VERSIONS
from ...convert import fold_route
from ...data import test_images
from ...eval import EvalAttack, EvalSettings, evaluate, make_eval_attack
from ...eval.numerics import NUMERICS, refusal
from ...limits import BATCH_SIZE, IMAGE_SIZE, IMAGES, REPEATS, WARMUP_ROUNDS, cpu_cores
from ...model_files import load_trained_model
from ...models import create_model
from ...models.arguments import ARGUMENT_RANGES
from ...tables import markdown_table
from ...threat import Threat
from ..flags import InRange, add_common_flags
from .timing import Timing

TARGETS = {"autoattack": 0.80, "pgd-10": 0.90}


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


@dataclasses.dataclass(frozen=True)
class CaseSpec:
    """Which model and images a benchmark works on: a trained ``checkpoint`` with the first ``n`` test images of its
    dataset, or else an untrained SaBN resnet_small of ``width`` on ``n`` random images of ``image_size``
    (:func:`synthetic_case`); the Linf radius ``eps`` (None: the checkpoint's Linf training radius, else 8/255);
    drawn from ``seed``. Plain values, so that every variant's fresh process builds the same :class:`Case`."""

    checkpoint: str | None = None
    width: int = 16
    n: int = 64
    image_size: int = 32
    eps: float | None = None
    seed: int = 0

    def build(self) -> Case:
        torch.manual_seed(self.seed)
        if self.checkpoint is None:
            model, x, y, description = synthetic_case(self.width, self.n, self.image_size)
            return Case(model, "adv", x, y, 8 / 255 if self.eps is None else self.eps, description)
        loaded = load_trained_model(self.checkpoint)
        config = loaded.config
        x, y = test_images(config.get("dataset", "cifar10"), config.get("data_dir"), self.n)
        eps, trained = self.eps, loaded.trained.threat
        if eps is None:  # the training radius when it was a Linf one (the benchmark's attacks are Linf)
            eps = trained.eps if trained is not None and trained.norm == "Linf" else 8 / 255
        description = (f"{loaded.path} ({config.get('dataset', 'cifar10')}, route {loaded.route() or '-'}), "
                       f"first {len(y)} test images")
        return Case(loaded.model, loaded.route(), x, y, eps, description)


@dataclasses.dataclass
class Case:
    """The model, images and radius every variant of one benchmark run works on; the same in every process."""

    model: nn.Module
    route: str | None
    x: torch.Tensor
    y: torch.Tensor
    eps: float
    description: str


def time_variant(spec: dict[str, Any]) -> dict[str, float]:
    """Run one variant of ``spec`` on its :class:`Case` and time the call alone (model and images are ready, the
    baselines' model folded, before the clock starts): ``{"seconds", "robust_acc"}``."""
    torch.set_num_threads(spec["threads"])
    case = CaseSpec(**spec["case"]).build()
    model, route, x, y, eps, seed = case.model, case.route, case.x, case.y, case.eps, spec["seed"]
    variant, batch_size = spec["variant"], spec["batch_size"]

    def ours(attack: EvalAttack, batch: int, numerics: str = "exact") -> float:
        settings = EvalSettings(Threat("Linf", eps), attack, seed, batch, numerics=numerics, progress=False)
        return evaluate(model, x, y, settings, route=route, clean_route=None).robust_acc
    if variant.startswith("autoattack "):
        attack = make_eval_attack("autoattack", spec["version"], spec["attacks"])
        call = functools.partial(ours, attack, len(x), variant.removeprefix("autoattack "))
    elif variant == "pgd-10":
        call = functools.partial(ours, make_eval_attack("pgd-10"), batch_size)
    else:  # a library called directly, on the model folded before the clock starts
        folded = fold_route(model, route)
        call = {"pyautoattack": functools.partial(_pyautoattack, folded, x, y, eps, spec["version"],
                                                  spec["attacks"] or [], seed, len(x)),
                "torchattacks-pgd": functools.partial(_torchattacks_pgd, folded, x, y, eps, seed, batch_size)}[variant]
    start = time.perf_counter()
    robust_acc = call()
    return {"seconds": time.perf_counter() - start, "robust_acc": robust_acc}


def _in_fresh_process(spec: dict[str, Any], results: dict[str, Any]) -> Callable[[], float]:
    """A call that runs :func:`time_variant` on ``spec`` in a new Python process (so that no variant inherits
    another's allocator settings, caches or heap) and returns the seconds it measured; the robust accuracy lands
    in ``results[spec["variant"]]``."""
    code = ("import json, sys; from robust_sabn.cli.bench.eval import time_variant; "
            "print(json.dumps(time_variant(json.load(sys.stdin))))")

    def call() -> float:
        done = subprocess.run([sys.executable, "-c", code], input=json.dumps(spec), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"bench eval variant {spec['variant']!r} failed: {done.stderr[-2000:]}")
        result = json.loads(done.stdout.splitlines()[-1])
        results[spec["variant"]] = result["robust_acc"]
        return result["seconds"]
    return call


def _eval_command(checkpoint: str, out: Path, attack: str, n: int, batch_size: int, eps: float, seed: int,
                  processes: int, threads: int, results: dict[str, Any], label: str) -> Callable[[], None]:
    """Run ``robust-sabn eval`` on ``checkpoint`` as a user would, in ``processes`` torchrun processes (or one plain
    process) of ``threads`` threads each; each call stores the report's per-image results in ``results[label]``."""
    launcher = [sys.executable, "-m", "robust_sabn"]
    if processes > 1:
        launcher = [str(Path(sys.executable).with_name("torchrun")), "--standalone", f"--nproc_per_node={processes}",
                    "-m", "robust_sabn"]
    argv = [*launcher, "eval", checkpoint, "--attack", attack, "--n-examples", str(n), "--batch-size",
            str(batch_size), "--eps", repr(eps), "--seed", str(seed), "--device", "cpu", "--no-progress", "--out",
            str(out)]

    def call() -> None:
        done = subprocess.run(argv, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr[-2000:]}")
        results[label] = json.loads(out.with_name(out.name + ".json").read_text())["per_image"]
    return call


def bench_eval(spec: CaseSpec = CaseSpec(), timing: Timing = Timing(3, 0), batch_size: int = 32,
               version: str = "standard", attacks: list[str] | None = None, numerics: Sequence[str] = ("exact",),
               sharded_attack: str | None = "autoattack") -> str:
    """Time the pairs on the model and images of ``spec``; a Markdown table of ratios. ``numerics``: the forms
    robust-sabn's AutoAttack runs in (one row each; a form refused for the model, e.g. channels-last for narrow ones
    on the CPU, is a row saying why it is skipped). ``sharded_attack`` (None: no sharded rows) is the attack of the
    ``robust-sabn eval`` commands timed with 2 processes and with 1, on a checkpoint only."""
    case = spec.build()
    checkpoint, seed = spec.checkpoint, spec.seed
    threads = torch.get_num_threads()
    refused = {form: refusal(case.model, torch.device("cpu"), form) for form in numerics}
    case_values = dataclasses.asdict(dataclasses.replace(spec, eps=case.eps))
    specs = {variant: dict(case=case_values, variant=variant, seed=seed, version=version, attacks=attacks,
                           batch_size=batch_size, threads=threads)
             for variant in [*(f"autoattack {form}" for form in numerics if refused[form] is None), "pyautoattack",
                             "pgd-10", "torchattacks-pgd"]}
    results: dict[str, Any] = {}  # robust accuracy of each library variant, per-image results of each command
    variants = {variant: _in_fresh_process(spec, results) for variant, spec in specs.items()}
    cores = cpu_cores()
    shards = {"2 x 1": (2, 1), "1 x 1": (1, 1), f"1 x {cores}": (1, cores)}
    with tempfile.TemporaryDirectory() as scratch:
        if checkpoint is not None and sharded_attack is not None:
            variants.update({label: _timed(_eval_command(
                checkpoint, Path(scratch) / label.replace(" ", ""), sharded_attack, len(case.y), batch_size,
                case.eps, seed, *setting, results, label)) for label, setting in shards.items()})
        times = timing.medians(variants, reported=True)
    label = f"AutoAttack {version}" + (f" ({', '.join(attacks)})" if version == "custom" else "")
    direct = times["pyautoattack"]
    rows = [[f"{label}, numerics {form}", "skipped", direct, "", "", refused[form]] if refused[form] else
            [f"{label}, numerics {form}", times[f"autoattack {form}"], direct, times[f"autoattack {form}"] / direct,
             TARGETS["autoattack"] if form == "exact" else "",
             f"{100 * results[f'autoattack {form}']:.2f} / {100 * results['pyautoattack']:.2f}"] for form in numerics]
    rows.append(["PGD-10 (eps/4 steps)", times["pgd-10"], times["torchattacks-pgd"],
                 times["pgd-10"] / times["torchattacks-pgd"], TARGETS["pgd-10"],
                 f"{100 * results['pgd-10']:.2f} / {100 * results['torchattacks-pgd']:.2f}"])
    if "2 x 1" in results:
        robust = f"{100 * results['2 x 1']['robust'].count('1') / len(case.y):.2f}"
        for baseline in list(shards)[1:]:
            same = "identical" if results[baseline] == results["2 x 1"] else "DIFFERENT"
            rows.append([f"robust-sabn eval --attack {sharded_attack}: 2 processes x 1 thread vs {baseline} "
                         f"thread(s)", times["2 x 1"], times[baseline], times["2 x 1"] / times[baseline], "",
                         f"{robust} ({same} per-image results)"])
    header = (f"{case.description}, batch {batch_size}, Linf eps {case.eps:.4f}, median of {timing.repeats}, "
              f"{threads} threads, torch {torch.__version__}; each library call in a fresh process, timed without "
              f"its start-up\n\n")
    return header + markdown_table(["evaluation", "robust-sabn (s)", "baseline (s)", "ratio", "target (<=)",
                                    "robust acc % (ours / baseline)"], rows)


def _timed(call: Callable[[], None]) -> Callable[[], float]:
    """``call`` timed whole (a command, start-up included), in the form Timing.medians(reported=True) reads."""
    def timed() -> float:
        start = time.perf_counter()
        call()
        return time.perf_counter() - start
    return timed


def run(args: argparse.Namespace) -> int:
    attacks = [a for a in (args.aa_attacks or "").split(",") if a] or None
    eps = None if args.eps is None else Threat("Linf", args.eps).eps
    spec = CaseSpec(args.checkpoint, args.width, args.n_examples, args.image_size, eps, args.seed)
    print(bench_eval(spec, Timing(args.repeats, args.warmup, args.progress), args.batch_size, args.version, attacks,
                     args.numerics, None if args.sharded_attack == "none" else args.sharded_attack))
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("AutoAttack and PGD-10 through robust-sabn against pyautoattack and torchattacks called directly; "
                     "robust-sabn eval in 2 torchrun processes against 1.")
    p.add_argument("--checkpoint", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="a trained model and its dataset's first test images (default: an untrained SaBN resnet_small "
                        "on random images)")
    p.add_argument("--width", action=InRange, limits=ARGUMENT_RANGES["width"], default=16,
                   help="width of the untrained resnet_small SaBN model")
    p.add_argument("--n-examples", action=InRange, limits=IMAGES.but(example="64"), default=64)
    p.add_argument("--image-size", action=InRange, limits=IMAGE_SIZE, default=32)
    p.add_argument("--batch-size", action=InRange, limits=BATCH_SIZE.but(example="32"), default=32,
                   help="batch of the PGD pair and of the sharded commands (AutoAttack runs on all images at once)")
    p.add_argument("--eps", help="Linf radius; fractions allowed (default: the checkpoint's training eps, else 8/255)")
    p.add_argument("--version", default="standard", choices=AA_VERSIONS)
    p.add_argument("--aa-attacks", help="for --version custom, e.g. apgd-ce,apgd-t")
    p.add_argument("--numerics", nargs="+", default=list(NUMERICS), choices=list(NUMERICS),
                   help="forms of robust-sabn's AutoAttack to time, one row each (default: all)")
    p.add_argument("--sharded-attack", default="autoattack",
                   help="attack of the sharded robust-sabn eval commands (checkpoint only; 'none' to skip them)")
    p.add_argument("--repeats", action=InRange, limits=REPEATS, default=3)
    p.add_argument("--warmup", action=InRange, limits=WARMUP_ROUNDS, default=0)
    add_common_flags(p, data=False)
