"""``robust-sabn bench eval``: evaluation through robust-sabn against the libraries called directly, and sharded.

Rows: AutoAttack via :func:`robust_sabn.eval.evaluate` vs ``pyautoattack.AutoAttack`` on the folded model
(target ratio <= 0.80, identical robust accuracy), once for each ``numerics`` (the exact default, then the opt-in
faster forms, which may change a prediction; the compiled form's target is <= 0.55), with the per-image agreement;
``evaluate(attack="pgd-10")`` vs torchattacks' ``PGD`` (10 steps of eps/4, random start) looped over the same
batches with a clean pass (target <= 0.90, robust accuracy within noise), and compiled (target <= 0.55), on
images of their own (``pgd_examples``: PGD-10 on a hundred images lasts half a second, short enough for the
machine's noise and each call's fixed costs to decide the ratio); the
compiled form's warm-up from an empty compile cache (target < 60 s) and from the cache the bench filled (< 5 s),
which the compiled rows' times leave out; and, for a checkpoint, the ``robust-sabn eval`` command sharded over 2
torchrun processes (one thread each) against one process with one thread and with every thread (whole commands,
start-up included; the report says whether the per-image results are identical). Each library call runs in a
fresh Python process, as a user's script would, and is timed there without the start-up: a process-wide setting of
one variant (robust-sabn's allocator, see :mod:`robust_sabn.allocator`) then cannot speed up another. Both library
baselines get ``fold_route(model, route)``, folded before timing. Every variant runs once per round, rounds
interleaved, and a ratio is the median of the rounds' ratios (:class:`robust_sabn.cli.bench.timing.Times`).
robust-sabn's AutoAttack and pyautoattack run in one batch of all the images, so that the exact form must give
pyautoattack's own result.

The model is a trained checkpoint with the first test images of its dataset (``--checkpoint``), or else a fresh
SaBN ``resnet_small`` on random images labelled by its own predictions, a quarter of them wrongly.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...compiling import CACHE_VARIABLE
from ...constants import AA_VERSIONS
from ...convert import fold_route
from ...data import test_images
from ...eval import EvalAttack, EvalSettings, evaluate, make_eval_attack
from ...eval.evaluate import per_image_bits
from ...eval.numerics import NUMERICS, refusal
from ...limits import BATCH_SIZE, IMAGE_SIZE, IMAGES, REPEATS, WARMUP_ROUNDS, cpu_cores
from ...model_files import load_trained_model
from ...models import create_model
from ...models.arguments import ARGUMENT_RANGES
from ...tables import markdown_table
from ...threat import Threat
from ..flags import InRange, add_common_flags
from .timing import SPREAD_COLUMN, Times, Timing, machine

TARGETS = {"autoattack exact": 0.80, "autoattack compiled": 0.55, "pgd-10 exact": 0.90, "pgd-10 compiled": 0.55}
WARM_UP_TARGETS = {"cold": 60.0, "cached": 5.0}  # seconds, the compiled form's warm-up


def _pyautoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, version: str, attacks: list[str],
                  seed: int, batch_size: int) -> torch.Tensor:
    from pyautoattack import AutoAttack

    adversary = AutoAttack(model, attacks=attacks if version == "custom" else None, device="cpu", eps=eps,
                           norm="Linf", seed=seed, version=version)
    _, y_adv = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    return y_adv == y


def _torchattacks_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int,
                      batch_size: int) -> torch.Tensor:
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
    return torch.cat(robust)


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


def time_variant(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one variant of ``spec`` on its :class:`Case` and time the call alone (model and images are ready, the
    baselines' model folded, before the clock starts; the compiled form's warm-up, compiling from ``spec["cache"]``,
    is timed apart): ``{"seconds", "robust", "compile_s"}``, ``robust`` one character 0 or 1 per image."""
    torch.set_num_threads(spec["threads"])
    os.environ[CACHE_VARIABLE] = spec["cache"]
    case = CaseSpec(**spec["case"]).build()
    model, route, x, y, eps, seed = case.model, case.route, case.x, case.y, case.eps, spec["seed"]
    variant, batch_size = spec["variant"], spec["batch_size"]

    def ours(attack: EvalAttack, batch: int, numerics: str) -> tuple[str, float]:
        settings = EvalSettings(Threat("Linf", eps), attack, seed, batch, numerics=numerics, progress=False)
        report = evaluate(model, x, y, settings, route=route, clean_route=None)
        return report.per_image["robust"], report.time["compile_s"]
    attack, _, numerics = variant.partition(" ")
    if attack == "autoattack":
        call = functools.partial(ours, make_eval_attack("autoattack", spec["version"], spec["attacks"]), len(x),
                                 numerics)
    elif attack in ("pgd-10", "warm-up"):  # warm-up: the compiled form's compilation under the shortest attack
        call = functools.partial(ours, make_eval_attack("pgd-10" if attack == "pgd-10" else "pgd-1"), batch_size,
                                 numerics)
    else:  # a library called directly, on the model folded before the clock starts
        folded = fold_route(model, route)
        library = {"pyautoattack": functools.partial(_pyautoattack, folded, x, y, eps, spec["version"],
                                                     spec["attacks"] or [], seed, len(x)),
                   "torchattacks-pgd": functools.partial(_torchattacks_pgd, folded, x, y, eps, seed, batch_size)}

        def call() -> tuple[str, float]:
            return per_image_bits(library[variant]()), 0.0
    start = time.perf_counter()
    robust, compile_s = call()
    return {"seconds": time.perf_counter() - start - compile_s, "robust": robust, "compile_s": compile_s}


def _in_fresh_process(spec: dict[str, Any], results: dict[str, Any]) -> Callable[[], float]:
    """A call that runs :func:`time_variant` on ``spec`` in a new Python process (so that no variant inherits
    another's allocator settings, caches or heap) and returns the seconds it measured; its result lands in
    ``results[spec["variant"]]`` (the last call's robust flags, every call's compile warm-up)."""
    code = ("import json, sys; from robust_sabn.cli.bench.eval import time_variant; "
            "print(json.dumps(time_variant(json.load(sys.stdin))))")

    def call() -> float:
        done = subprocess.run([sys.executable, "-c", code], input=json.dumps(spec), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"bench eval variant {spec['variant']!r} failed: {done.stderr[-2000:]}")
        result = json.loads(done.stdout.splitlines()[-1])
        mine = results.setdefault(spec["variant"], {"compile_s": []})
        mine["robust"] = result["robust"]
        mine["compile_s"].append(result["compile_s"])
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
               sharded_attack: str | None = "autoattack", pgd_examples: int | None = None) -> str:
    """Time the pairs on the model and images of ``spec`` (the PGD pair on its first ``pgd_examples`` images,
    default ``spec.n``); a Markdown table of ratios. ``numerics``: the forms
    robust-sabn's AutoAttack runs in (one row each; a form refused for the model, e.g. channels-last for narrow ones
    on the CPU, is a row saying why it is skipped; "compiled" adds the compiled PGD-10 and the warm-up rows).
    ``sharded_attack`` (None: no sharded rows) is the attack of the ``robust-sabn eval`` commands timed with 2
    processes and with 1, on a checkpoint only."""
    case = spec.build()
    checkpoint, seed = spec.checkpoint, spec.seed
    threads = torch.get_num_threads()
    refused = {form: refusal(case.model, torch.device("cpu"), form) for form in numerics}
    compiled = "compiled" in numerics and refused["compiled"] is None
    case_values = dataclasses.asdict(dataclasses.replace(spec, eps=case.eps))
    pgd_case = {**case_values, "n": pgd_examples or spec.n}
    results: dict[str, Any] = {}  # each variant's robust flags and warm-ups, each command's per-image results
    cores = cpu_cores()
    shards = {"2 x 1": (2, 1), "1 x 1": (1, 1), f"1 x {cores}": (1, cores)}
    with tempfile.TemporaryDirectory() as scratch:
        cases = {**{f"autoattack {form}": case_values for form in numerics if refused[form] is None},
                 "pyautoattack": case_values,
                 **{variant: pgd_case for variant in ("pgd-10 exact", "pgd-10 compiled", "torchattacks-pgd")
                    if compiled or variant != "pgd-10 compiled"}}
        specs = {variant: dict(case=case, variant=variant, seed=seed, version=version, attacks=attacks,
                               batch_size=batch_size, threads=threads, cache=str(Path(scratch) / "cache"))
                 for variant, case in cases.items()}
        variants = {variant: _in_fresh_process(spec, results) for variant, spec in specs.items()}
        if compiled:  # the first compilation, into the empty cache that every compiled variant then reads
            _in_fresh_process({**specs["pgd-10 compiled"], "variant": "warm-up compiled"}, results)()
        if checkpoint is not None and sharded_attack is not None:
            variants.update({label: _timed(_eval_command(
                checkpoint, Path(scratch) / label.replace(" ", ""), sharded_attack, len(case.y), batch_size,
                case.eps, seed, *setting, results, label)) for label, setting in shards.items()})
        times = timing.rounds(variants, reported=True)
    label = f"AutoAttack {version}" + (f" ({', '.join(attacks)})" if version == "custom" else "")
    rows = [[f"{label}, numerics {form}", "skipped", times.median("pyautoattack"), "", "", "", refused[form], ""]
            if refused[form] else _row(f"{label}, numerics {form}", f"autoattack {form}", "pyautoattack", times,
                                       results, "images") for form in numerics]
    pgd = f"PGD-10 (eps/4 steps, {len(results['pgd-10 exact']['robust'])} images)"  # a test set may hold fewer
    rows.append(_row(f"{pgd}, numerics exact", "pgd-10 exact", "torchattacks-pgd", times, results))
    if compiled:
        rows.append(_row(f"{pgd}, numerics compiled", "pgd-10 compiled", "torchattacks-pgd", times, results,
                         "with exact", "pgd-10 exact"))
        cached = statistics.median([warm_up for variant in ("autoattack compiled", "pgd-10 compiled")
                                    for warm_up in results.get(variant, {}).get("compile_s", [])])
        for kind, warm_up in (("cold", results["warm-up compiled"]["compile_s"][0]), ("cached", cached)):
            source = "an empty compile cache" if kind == "cold" else "the cache (median of the compiled calls)"
            rows.append([f"compile warm-up from {source}, target < {WARM_UP_TARGETS[kind]:.0f} s", warm_up, "", "",
                         "", "", "", ""])
    if "2 x 1" in results:
        robust = f"{100 * results['2 x 1']['robust'].count('1') / len(case.y):.2f}"
        for baseline in list(shards)[1:]:
            same = "identical" if results[baseline] == results["2 x 1"] else "DIFFERENT"
            rows.append([f"robust-sabn eval --attack {sharded_attack}: 2 processes x 1 thread vs {baseline} "
                         f"thread(s)", times.median("2 x 1"), times.median(baseline),
                         times.ratio("2 x 1", baseline), "", times.spread("2 x 1", baseline),
                         f"{robust} ({same} per-image results)", ""])
    header = (f"{case.description}, batch {batch_size}, Linf eps {case.eps:.4f}, medians of {timing.timed_rounds}, "
              f"{machine()}; each library call in a fresh process, timed without "
              f"its start-up (and robust-sabn's compiled calls without their warm-up)\n\n")
    return header + markdown_table(["evaluation", "robust-sabn (s)", "baseline (s)", "ratio", "target (<=)",
                                    SPREAD_COLUMN, "robust acc % (ours / baseline)", "per-image agreement"], rows)


def _row(label: str, ours: str, baseline: str, times: Times, results: dict[str, Any], agreement: str = "",
         agreed_with: str | None = None) -> list[object]:
    """A pair's row: median times, ratio and its quartiles over the rounds, target, robust accuracies, and (with
    ``agreement``, the words after the count) how many images have the same robust flag in ``ours`` as in
    ``agreed_with`` (default: the baseline)."""
    mine, theirs = results[ours]["robust"], results[baseline]["robust"]
    other = results[agreed_with or baseline]["robust"]
    agreed = f"{sum(a == b for a, b in zip(mine, other))}/{len(mine)} {agreement}" if agreement else ""
    return [label, times.median(ours), times.median(baseline), times.ratio(ours, baseline), TARGETS.get(ours, ""),
            times.spread(ours, baseline),
            f"{100 * mine.count('1') / len(mine):.2f} / {100 * theirs.count('1') / len(theirs):.2f}", agreed]


def _timed(call: Callable[[], None]) -> Callable[[], float]:
    """``call`` timed whole (a command, start-up included), in the form Timing.rounds(reported=True) reads."""
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
                     args.numerics, None if args.sharded_attack == "none" else args.sharded_attack,
                     args.pgd_examples))
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
    p.add_argument("--pgd-examples", action=InRange, limits=IMAGES.but(example="1000"),
                   help="images of the PGD-10 pair (default: --n-examples); a thousand make a call of seconds")
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
