"""``robust-sabn bench norms``: forward+backward time of one model per normalization, side by side; what one
adversarial training step costs against K+1 plain training steps of the same model and batch; and with
``--compile``, what ``train --compile`` gives on those steps, against eager in training's memory format and in NCHW.

Every step runs with freed memory kept in the process, as training runs (:mod:`robust_sabn.allocator`).
"""
from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...allocator import keep_freed_memory
from ...attacks.base import frozen_parameters, restore_modes
from ...compiling import compile_in_place
from ...devices import resolve_device
from ...errors import ConfigError
from ...limits import BATCH_SIZE, IMAGE_SIZE, REPEATS, WARMUP_ROUNDS
from ...memory_format import choose_memory_format
from ...models import create_model
from ...models.arguments import ARGUMENT_RANGES
from ...nn import set_route
from ...tables import markdown_table
from ...threat import Threat
from ...training.objectives import OBJECTIVES
from ..flags import InRange, add_common_flags
from .steps import COMPILED_TARGET, SPLIT_TARGET, Step, split_steps
from .timing import SPREAD_COLUMN, Times, Timing, machine

# label -> create_model arguments; every model runs on the same input, in train mode, on the "adv" route.
NORM_VARIANTS: dict[str, dict] = {
    "BN": {"norm": "bn"},
    "SaBN": {"norm": "sandwich"},
    "AuxBN": {"norm": "dual"},
    "UBN": {"norm": "ubn"},
    "UBN stage 1 only": {"norm": "ubn", "norm_kwargs": {"calibration": False}},
    "WeightAlign+BN": {"norm": "bn", "conv": "weightalign"},
    "WeightAlign+GN": {"norm": "gn", "conv": "weightalign"},
}
TARGETS = {"SaBN": 1.03}
K = 5  # PGD steps of the adversarial training step compared with K+1 plain steps
COMPILED_PARTS = ("adversarial step", "plain step", "attack pass")  # the steps timed compiled with --compile


@dataclass(frozen=True)
class Comparison:
    """One row: the time of ``numerator`` against ``scale`` times that of ``denominator``, round by round."""

    label: str
    numerator: str
    denominator: str
    scale: float = 1.0
    target: float | str = ""

    def row(self, times: Times) -> list:
        """Label, the numerator's median milliseconds, the median of the rounds' ratios, the target, and the ratios'
        quartiles over the rounds."""
        return [self.label, 1e3 * times.median(self.numerator),
                times.ratio(self.numerator, self.denominator, self.scale), self.target,
                times.spread(self.numerator, self.denominator, self.scale)]


def _train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Step:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
    return step


def _adversarial_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Step]:
    """On a BN ``model`` in train mode, with SGD: a madry PGD-K training step as the trainer takes it (the attack's K
    passes, eval-mode forward and input gradient each; the loss, with the no-grad forward that logs clean accuracy;
    backward; SGD), a plain step (forward, backward, SGD), and the adversarial step's parts."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    objective = OBJECTIVES["madry"](threat=Threat("Linf", 8 / 255), step_size=2 / 255, steps=K)
    attack = objective.attack(model)  # made once, as the trainer's objective makes it

    def update(loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def adversarial() -> None:
        update(objective.loss(model, x, attack(x, y), y).loss)

    def one_pass() -> None:
        with restore_modes(model), frozen_parameters(model.eval()):
            images = x.detach().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(images), y), images)

    def logging_forward() -> None:
        with restore_modes(model), frozen_parameters(model.eval()), torch.no_grad():
            model(x)
    return {"adversarial step": adversarial, "plain step": lambda: update(F.cross_entropy(model(x), y)),
            "attack pass": one_pass, "logging forward": logging_forward}


def _refuse_eager(reason: str) -> None:
    raise ConfigError(f"bench norms --compile: {reason}; run it without --compile")


def _compiled_comparisons(bn: nn.Module, x: torch.Tensor, y: torch.Tensor,
                          layout: str) -> tuple[dict[str, Step], list[Comparison]]:
    """``--compile``: the BN model's steps compiled (as ``train --compile`` compiles them), and eager in NCHW when
    ``layout`` (training's) is not; and their rows, each against eager in ``layout`` and in NCHW."""
    compiled = compile_in_place(copy.deepcopy(bn), x.device, _refuse_eager)
    steps = {f"compiled {part}": step for part, step in _adversarial_steps(compiled, x, y).items()
             if part in COMPILED_PARTS}
    baselines = {layout: ""}
    if layout != "NCHW":
        nchw = copy.deepcopy(bn).to(memory_format=torch.contiguous_format)
        steps.update({f"NCHW {part}": step for part, step in _adversarial_steps(nchw, x.contiguous(), y).items()
                      if part in COMPILED_PARTS})
        baselines["NCHW"] = "NCHW "
    comparisons = [Comparison(f"BN compiled: {part} vs eager ({baseline})", f"compiled {part}", prefix + part,
                              target=COMPILED_TARGET if part == "adversarial step" and baseline == layout else "")
                   for part in COMPILED_PARTS for baseline, prefix in baselines.items()]
    return steps, comparisons


def bench_norms(arch: str = "resnet_small", width: int = 32, batch_size: int = 64, image_size: int = 32,
                timing: Timing = Timing(), seed: int = 0, channels_last: bool | None = None,
                device: str = "cpu", compile: bool = False) -> str:
    """Time every variant on one input and return a Markdown table of ratios against BN.

    The memory format is the one training picks on ``device`` (``channels_last=None``: on the CPU NHWC activations
    unless the model has convolutions that oneDNN mishandles there, see :mod:`robust_sabn.memory_format`), or the
    one asked for. Two extra rows compare one forward over the joined batch with two separate forwards: through
    SaBN's routes (``split_routes``), and through plain BN, where no routing is involved and the ratio shows how the
    hardware scales with batch size. With ``compile``, the adversarial step, the plain step and the attack pass of
    BN also run compiled (their first calls, which compile, are the warm-up rounds; ``timing.warmup`` must be at
    least 1) and are compared with eager in this memory format and in NCHW.
    """
    if compile and timing.warmup < 1:
        raise ConfigError("bench norms --compile needs --warmup 1 or more (the first calls compile)")
    torch.manual_seed(seed)
    device = resolve_device(device)
    if device.type == "cpu":
        keep_freed_memory()  # as training runs
    arch_kwargs = {"width": width} if arch == "resnet_small" else {}
    x = torch.rand(batch_size, 3, image_size, image_size, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    models = {label: set_route(create_model(arch, **kwargs, **arch_kwargs).to(device).train(), "adv")
              for label, kwargs in NORM_VARIANTS.items()}
    # The variants differ in their norm and conv types, not in their convolutions' shapes: one choice for all.
    choice = choose_memory_format(models["BN"], device, channels_last)
    x = x.contiguous(memory_format=choice.memory_format)
    steps = {label: _train_step(model.to(memory_format=choice.memory_format), x, y) for label, model in models.items()}
    for label in ("SaBN", "BN"):
        steps[f"{label} joined"], steps[f"{label} two"] = split_steps(models[label], x, y)
    bn = create_model(arch, norm="bn", **arch_kwargs).to(device).to(memory_format=choice.memory_format).train()
    steps.update(_adversarial_steps(bn, x, y))
    layout = "channels_last" if choice.channels_last else "NCHW"
    if compile:
        compiled_steps, compiled_comparisons = _compiled_comparisons(bn, x, y, layout)
        steps.update(compiled_steps)
    times = timing.rounds(steps, wait=torch.cuda.synchronize if device.type == "cuda" else lambda: None)

    comparisons = [Comparison(label, label, "BN", target=TARGETS.get(label, "")) for label in NORM_VARIANTS]
    comparisons += [
        Comparison("SaBN split_routes (2B in one pass) vs two forwards (B + B)", "SaBN joined", "SaBN two",
                   target=SPLIT_TARGET),
        Comparison("BN, no routes: one pass over 2B vs two passes over B (hardware batch scaling)", "BN joined",
                   "BN two"),
        Comparison(f"BN: adversarial step (madry, PGD-{K}) vs {K + 1} plain steps (analytic limit "
                   f"{(2 * K + 3) / (3 * K + 3):.2f})", "adversarial step", "plain step", scale=K + 1),
        *(Comparison(f"BN: {part} vs a plain step (analytic {analytic})", part, "plain step")
          for part, analytic in (("attack pass", "0.67"), ("logging forward", "0.33"))),
    ]
    if compile:
        comparisons += compiled_comparisons
    rows = [comparison.row(times) for comparison in comparisons]
    header = (f"{arch} (width {width}), batch {batch_size}x3x{image_size}x{image_size} ({layout}), train mode, "
              f"forward+backward, {timing.timed_rounds} (a ratio is the median of the rounds' ratios), "
              f"{device}, {machine()}\n\n")
    if choice.note:
        header += f"NCHW, not channels_last: {choice.note}\n\n"
    return header + markdown_table(["variant", "ms / step", "ratio", "target (<=)", SPREAD_COLUMN], rows)


def run(args: argparse.Namespace) -> int:
    timing = Timing(args.repeats, args.warmup, args.progress)
    print(bench_norms(args.arch, args.width, args.batch_size, args.image_size, timing, args.seed, args.channels_last,
                      args.device, args.compile))
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Forward+backward time of one model per normalization on one input, and the fused route "
                          "split against two forwards; ratios against BN.")
    parser.add_argument("--arch", default="resnet_small")
    parser.add_argument("--width", action=InRange, limits=ARGUMENT_RANGES["width"], default=32,
                        help="width of resnet_small")
    parser.add_argument("--batch-size", action=InRange, limits=BATCH_SIZE, default=64)
    parser.add_argument("--image-size", action=InRange, limits=IMAGE_SIZE, default=32)
    parser.add_argument("--repeats", action=InRange, limits=REPEATS, default=10)
    parser.add_argument("--warmup", action=InRange, limits=WARMUP_ROUNDS, default=2)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="NHWC activations (default: as training on the CPU: on, unless the model has 1x1 "
                             "strided convolutions with fewer than 16 input channels; see docs/memory-format.md)")
    parser.add_argument("--compile", action="store_true",
                        help="also time BN's adversarial step, plain step and attack pass compiled (train --compile), "
                             "against eager in this memory format and in NCHW; the warm-up rounds compile")
    add_common_flags(parser, data=False)
