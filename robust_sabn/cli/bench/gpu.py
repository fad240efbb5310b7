"""``robust-sabn bench gpu``: throughput on a CUDA device, where the fused route split and mixed precision pay.

Rows: a hybrid SaBN training step (PGD attack included, channels_last) in float32, bfloat16 and float16 autocast, and
compiled (float32, ``--compile``'s in-place torch.compile, its warm-up timed apart) as images per second with the
ratio of float32's time to theirs (the median of the rounds' ratios), and what a training epoch of 50,000
CIFAR-shaped images takes eager and compiled; one forward+backward over the joined clean+adversarial batch through
``split_routes`` against two forwards (the <= 0.85 target); and AutoAttack (standard) through
:func:`robust_sabn.eval.evaluate` in the exact and the compiled form, in images per second, with the compiled form's
warm-up and the robust accuracies.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

from ...compiling import compile_in_place
from ...devices import resolve_device
from ...errors import ConfigError
from ...eval import EvalSettings, evaluate
from ...limits import ATTACK_STEPS, BATCH_SIZE, IMAGES, REPEATS
from ...models import create_model
from ...nn import set_route
from ...tables import markdown_table
from ...threat import Threat
from ...training.objectives import OBJECTIVES
from ..flags import InRange, add_common_flags
from .steps import SPLIT_TARGET, split_steps
from .timing import SPREAD_COLUMN, Timing, machine

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
EPOCH_IMAGES = 50_000  # a CIFAR-10 training epoch


def _refuse(reason: str) -> None:
    raise ConfigError(f"bench gpu's compiled rows: {reason}")


def _training_step(model, objective, x, y, dtype):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype is torch.float16)

    def step() -> None:
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            loss = objective(model, x, y).loss
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return step


def bench_gpu(arch: str = "preact_resnet18", batch_size: int = 128, steps: int = 7, timing: Timing = Timing(10, 3),
              n_eval: int = 512, device: str = "auto", seed: int = 0) -> str:
    """Time the rows above on ``device``; a Markdown table."""
    device = resolve_device(device)
    if device.type != "cuda":
        raise ConfigError("bench gpu measures a CUDA device and none is available; on the CPU run bench norms, "
                          "bench train, bench eval and bench data")
    torch.manual_seed(seed)
    x = torch.rand(batch_size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,), device=device)
    objective = OBJECTIVES["hybrid"](threat=Threat(), step_size=2 / 255, steps=steps)
    model = create_model(arch, norm="sandwich").to(device).to(memory_format=torch.channels_last).train()
    variants = {name: _training_step(model, objective, x, y, dtype) for name, dtype in PRECISIONS.items()}
    variants["compiled"] = _training_step(compile_in_place(copy.deepcopy(model), device, _refuse), objective, x, y,
                                          None)
    torch.cuda.synchronize()
    start = time.perf_counter()
    variants["compiled"]()  # the warm-up: every graph of the step compiled (or read from the cache)
    torch.cuda.synchronize()
    warm_up = time.perf_counter() - start
    fused, separate = split_steps(set_route(model, "adv"), x, y)
    variants.update({"split": fused, "two": separate})
    times = timing.rounds(variants, wait=torch.cuda.synchronize)

    rows = [[f"hybrid training step (PGD-{steps}), {name}", batch_size / times.median(name),
             times.ratio("float32", name), "", times.spread("float32", name)] for name in [*PRECISIONS, "compiled"]]
    epoch = EPOCH_IMAGES / batch_size
    rows.append([f"training epoch of {EPOCH_IMAGES} images, float32: eager {epoch * times.median('float32'):.0f} s, "
                 f"compiled {epoch * times.median('compiled'):.0f} s (+ {warm_up:.0f} s compile warm-up, once)",
                 "-", "-", "", ""])
    rows.append(["split_routes (2B in one pass) vs two forwards (B + B), float32, time ratio", "-",
                 times.ratio("split", "two"), SPLIT_TARGET, times.spread("split", "two")])
    images = torch.rand(n_eval, 3, 32, 32)
    with torch.no_grad():
        labels = set_route(model.eval(), "adv")(images.to(device)).argmax(1).cpu()  # all correct: all attacked
    set_route(model, None)
    seconds, reports = {}, {}  # AutoAttack: one evaluation in each form
    for numerics in ("exact", "compiled"):
        settings = EvalSettings(attack="autoattack", batch_size=n_eval, numerics=numerics, progress=timing.progress)
        torch.cuda.synchronize()
        start = time.perf_counter()
        reports[numerics] = evaluate(model, images, labels, settings, route="adv", clean_route=None)
        torch.cuda.synchronize()
        seconds[numerics] = time.perf_counter() - start - reports[numerics].time["compile_s"]
    robust = " / ".join(f"{100 * reports[n].robust_acc:.1f}" for n in seconds)
    rows += [[f"AutoAttack standard, {n_eval} images, numerics {numerics}"
              + (f" (+ {reports[numerics].time['compile_s']:.0f} s compile warm-up; robust acc % exact / compiled: "
                 f"{robust})" if numerics == "compiled" else ""), n_eval / seconds[numerics],
              seconds["exact"] / seconds[numerics], "", ""] for numerics in seconds]
    header = (f"{arch} with SaBN on {torch.cuda.get_device_name(device)}, batch {batch_size}x3x32x32 channels_last, "
              f"medians of {timing.timed_rounds} (AutoAttack: one run each), host CPU {machine()}\n\n")
    return header + markdown_table(["row", "images / s", "ratio", "target (<=)", SPREAD_COLUMN], rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Throughput on a CUDA device: training steps per precision and compiled, the fused route "
                          "split against two forwards, and AutoAttack exact and compiled.")
    parser.add_argument("--arch", default="preact_resnet18")
    parser.add_argument("--batch-size", action=InRange, limits=BATCH_SIZE, default=128)
    parser.add_argument("--steps", action=InRange, limits=ATTACK_STEPS, default=7,
                        help="PGD steps of the training attack")
    parser.add_argument("--repeats", action=InRange, limits=REPEATS, default=10)
    parser.add_argument("--n-eval", action=InRange, limits=IMAGES.but(example="512"), default=512,
                        help="images for the AutoAttack rows")
    add_common_flags(parser, data=False)


def run(args: argparse.Namespace) -> int:
    print(bench_gpu(args.arch, args.batch_size, args.steps, Timing(args.repeats, 3, args.progress), args.n_eval,
                    args.device, args.seed))
    return 0
