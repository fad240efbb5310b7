"""``robust-sabn bench data``: the training augmentation (random crop and flip) on a CIFAR-sized batch, batched as
training runs it against the per-image loop it replaced, on the CPU and (where one exists) a GPU."""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from ...data import random_crop_flip
from ...devices import resolve_device
from ...limits import BATCH_SIZE, IMAGE_SIZE, REPEATS
from ...tables import markdown_table
from ..flags import InRange, add_common_flags
from .timing import SPREAD_COLUMN, Timing, machine


def crops_one_by_one(x: torch.Tensor, generator: torch.Generator, padding: int, flip: bool) -> torch.Tensor:
    """The baseline: a Python loop cropping image by image (one kernel per image on a GPU), drawing the same random
    numbers in the same order as :func:`robust_sabn.data.random_crop_flip`, so the outputs are identical."""
    b, _, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (b, 2), generator=generator).tolist()
    padded = F.pad(x, (padding,) * 4)
    out = torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])
    if flip:
        flipped = (torch.rand(b, generator=generator) < 0.5).nonzero().squeeze(1).to(x.device)
        out[flipped] = out[flipped].flip(3)
    return out


def bench_data(batch_size: int = 512, image_size: int = 32, padding: int = 4, timing: Timing = Timing(20, 3),
               device: str = "auto", seed: int = 0) -> str:
    """A Markdown table of milliseconds per batch and the ratio of the batched crop to the loop (the median of the
    rounds' ratios, with their quartiles) on the CPU, and on ``device`` too when that is a GPU."""
    torch.manual_seed(seed)
    gpu = resolve_device(device)
    devices = [torch.device("cpu")] + ([gpu] if gpu.type == "cuda" else [])
    rows = []
    for device in devices:
        x = torch.rand(batch_size, 3, image_size, image_size, device=device)
        variants = {name: (lambda fn=fn, x=x: fn(x, torch.Generator().manual_seed(seed), padding, True))
                    for name, fn in (("batched", random_crop_flip), ("loop", crops_one_by_one))}
        wait = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        times = timing.rounds(variants, wait=wait)
        rows.append([str(device), 1e3 * times.median("batched"), 1e3 * times.median("loop"),
                     times.ratio("batched", "loop"),
                     times.spread("batched", "loop")])
    header = (f"random crop (padding {padding}) and flip of {batch_size}x3x{image_size}x{image_size} float images, "
              f"medians of {timing.timed_rounds}, {machine()}\n\n")
    return header + markdown_table(["device", "batched (ms)", "per-image loop (ms)", "ratio", SPREAD_COLUMN], rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "The training augmentation, batched, against the per-image loop, on each device."
    parser.add_argument("--batch-size", action=InRange, limits=BATCH_SIZE, default=512)
    parser.add_argument("--image-size", action=InRange, limits=IMAGE_SIZE, default=32)
    parser.add_argument("--repeats", action=InRange, limits=REPEATS, default=20)
    add_common_flags(parser, data=False)


def run(args: argparse.Namespace) -> int:
    print(bench_data(args.batch_size, args.image_size, timing=Timing(args.repeats, 3, args.progress),
                     device=args.device, seed=args.seed))
    return 0
