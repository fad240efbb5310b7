"""The one loop that computes robust points, for evaluation and for training's validation alike.

The images are split into fixed batches of ``batch_size``; batch ``i`` is attacked with its own seed, derived from
(``seed``, ``i``) (batch 0 uses ``seed`` itself), so each batch's result depends on nothing but the model, its images
and its seed. Batches can therefore run in any order, in several processes, or be skipped when a previous run
finished them, and the results are the same.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..batching import batch_slices
from ..rng import derive_seed
from .attacks import AttackOutcome
from .progress import PassProgress
from .settings import EvalSettings

SEEDING = "batch i attacked with seed derived from (seed, i) by numpy's SeedSequence; batch 0 with the seed itself"


def batch_seed(seed: int, index: int) -> int:
    """The seed of batch ``index``: ``seed`` for batch 0, else a well-mixed seed from (``seed``, ``index``)."""
    return seed if index == 0 else derive_seed(seed, index)


@dataclass
class BatchResult:
    """One batch's per-image results and what the attack reported."""

    index: int
    correct: torch.Tensor  # bool per image: classified correctly
    robust: torch.Tensor  # bool per image: classified correctly before and after the attack
    broken: dict[str, int] = field(default_factory=dict)  # points each of AutoAttack's attacks broke
    attacks: list[str] = field(default_factory=list)  # AutoAttack's attacks, in order
    flags: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # "clean", "attack" and per AutoAttack attack
    backend: str | None = None
    adversarials: dict[str, torch.Tensor] | None = None  # the points that broke: see :func:`broken_points`


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Predicted classes of one batch, on the CPU."""
    return model(x.to(device)).argmax(1).cpu()


def seed_generators(seed: int, device: torch.device) -> None:
    """Seed torch's CPU generator and, for a CUDA device, that device's: nothing else (a global
    ``torch.manual_seed`` would also queue seeds for every GPU)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)


def broken_points(x: torch.Tensor, y: torch.Tensor, correct: torch.Tensor, robust: torch.Tensor,
                  adversarial: torch.Tensor, predictions: torch.Tensor, offset: int) -> dict[str, torch.Tensor]:
    """The points the attack broke (classified correctly, then not): their ``indices`` among all images (the batch
    starts at ``offset``), adversarial ``images``, true ``labels`` and the model's ``predictions`` on them."""
    (broken,) = (correct & ~robust).nonzero(as_tuple=True)
    return {"indices": broken + offset, "images": adversarial[broken].clone(), "labels": y[broken].clone(),
            "predictions": predictions[broken].clone()}


def run_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: int, settings: EvalSettings, *,
              offset: int = 0, desc: str | None = None) -> BatchResult:
    """Clean predictions of batch ``index`` (its first image is image ``offset``) and, unless the settings' attack is
    None or their radius 0, the attack on its correctly classified images, seeded by :func:`batch_seed`, with a bar
    counting the model's forward passes (with ``settings.progress``), named ``desc``; with
    ``settings.keep_adversarials`` the result keeps the points that broke. ``settings`` are decided
    (:meth:`EvalSettings.on`)."""
    attack, device = settings.attack, settings.device
    start = time.perf_counter()
    correct = predict(model, x, device) == y
    seconds = {"clean": time.perf_counter() - start}
    if attack is None or settings.threat.eps == 0:
        outcome = AttackOutcome(correct.clone(), adversarial=x, predictions=y)
    else:
        bseed = batch_seed(settings.seed, index)
        seed_generators(bseed, device)
        start = time.perf_counter()
        with PassProgress(model, desc or attack.name, attack.passes, enabled=settings.progress) as bar:
            outcome = attack.run(model, x, y, correct, threat=settings.threat, seed=bseed, device=device,
                                 progress=bar)
        seconds["attack"] = time.perf_counter() - start
    robust = outcome.robust & correct
    adversarials = None
    if settings.keep_adversarials:
        adversarials = broken_points(x, y, correct, robust, outcome.adversarial, outcome.predictions, offset)
    return BatchResult(index, correct, robust, outcome.broken, outcome.attacks, outcome.flags,
                       {**seconds, **outcome.seconds}, outcome.backend, adversarials)


def robust_points(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: EvalSettings, *,
                  indices: Iterable[int] | None = None,
                  on_batch: Callable[[BatchResult], None] | None = None) -> list[BatchResult]:
    """:func:`run_batch` on the batches ``indices`` (default: all) of ``x``/``y`` split into
    ``settings.batch_size``; ``on_batch`` sees each result as it is finished (e.g. to store it). With progress, one
    bar counts the batches and another the model's forward passes within each batch."""
    batches = batch_slices(len(x), settings.batch_size)
    indices = list(range(len(batches)) if indices is None else indices)
    name = getattr(settings.attack, "name", "clean")
    results = []
    for index in tqdm(indices, desc=name, unit="batch", leave=False,
                      disable=not settings.progress or len(indices) < 2):
        part = batches[index]
        result = run_batch(model, x[part], y[part], index, settings, offset=part.start,
                           desc=f"{name} batch {index + 1}/{len(batches)}")
        results.append(result)
        if on_batch is not None:
            on_batch(result)
    return results
