"""``evaluate``: clean and robust accuracy of a model under one attack, on one fixed route, reproducibly.

Protocols (both labelled in every report):

- "single route": one deterministic model, the routed model folded on ``route`` (clean and robust accuracy
  through the same path). This is the model RobustBench loads and what its leaderboard accepts.
- "oracle routing": clean accuracy through ``clean_route``, robust accuracy through ``route``, as the SaBN
  paper reports. It assumes an oracle telling clean from adversarial inputs, so it is not a deployable model.

Attacks: "autoattack" (the real AutoAttack, ``version`` standard/plus/rand/custom), "apgd-ce" (AutoAttack's
APGD on cross-entropy, 100 iterations, 1 restart, as in the standard version), "pgd-K" (PGD on
cross-entropy, K steps of eps/4, random start), "cw" / "cw-K" (the same PGD on the Carlini-Wagner margin
loss with kappa 50, K = 20 by default).
"""
from __future__ import annotations

import platform
import re
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import __version__
from ..attacks import PGD
from ..attacks.base import check_eps
from ..convert import fold_route
from ..devices import model_device
from ..errors import ConfigError
from ..exporting import format_eps
from ..nn import check_model_route
from ..rng import preserved_rng
from .autoattack_runner import VERSIONS, run_autoattack
from .cw import CWPGD

ATTACKS = ("autoattack", "apgd-ce", "pgd-20", "cw")
NORMS = ("Linf", "L2")
SINGLE, ORACLE = "single route", "oracle routing"
_PGD_NAME = re.compile(r"(pgd|cw)(?:-(\d+))?")


def describe_attack(attack: str, version: str = "standard", aa_attacks: Sequence[str] | None = None,
                    aa_restarts: int | None = None) -> str:
    if attack == "autoattack":
        if version != "custom":
            return f"AutoAttack, {version} version"
        restarts = f", APGD restarts {aa_restarts}" if aa_restarts is not None else ""
        return f"AutoAttack, custom version ({', '.join(aa_attacks or ())}{restarts})"
    if attack == "apgd-ce":
        return "APGD-CE (AutoAttack's; 100 iterations, 1 restart)"
    kind, steps = _parse_pgd(attack)
    loss = "cross-entropy" if kind == "pgd" else "CW margin loss (kappa 50)"
    return f"PGD-{steps} on the {loss}, step eps/4, random start"


def _parse_pgd(attack: str) -> tuple[str, int]:
    match = _PGD_NAME.fullmatch(attack)
    if match is None or (match[1] == "pgd" and match[2] is None):
        raise ConfigError(f"unknown attack {attack!r}; choose one of {list(ATTACKS)} (or pgd-K, cw-K for K steps)")
    steps = int(match[2] or 20)
    if steps < 1:
        raise ConfigError(f"attack {attack!r} needs at least one step")
    return match[1], steps


def check_attack(attack: str, version: str) -> None:
    if attack not in ("autoattack", "apgd-ce"):
        _parse_pgd(attack)
    if version not in VERSIONS:
        raise ConfigError(f"unknown AutoAttack version {version!r}; choose one of {list(VERSIONS)}")


def check_inputs(x: torch.Tensor, y: torch.Tensor, num_classes: int | None = None) -> None:
    """Images: float N x C x H x W in [0, 1]; labels: N integers in [0, num_classes)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4 or len(x) == 0:
        raise ConfigError("images must be a non-empty float tensor N x C x H x W")
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ConfigError("labels must be a 1-D integer tensor")
    if len(y) != len(x):
        raise ConfigError(f"got {len(x)} images but {len(y)} labels")
    low, high = x.min().item(), x.max().item()
    if not (0.0 <= low and high <= 1.0):
        raise ConfigError(f"images must lie in [0, 1] (got values in [{low:.3g}, {high:.3g}]); pass unnormalized "
                          "images, the model normalizes inside")
    if num_classes is not None and (y.min().item() < 0 or y.max().item() >= num_classes):
        raise ConfigError(f"labels must be in [0, {num_classes - 1}] for this model's {num_classes} outputs, "
                          f"got values in [{y.min().item()}, {y.max().item()}]")


def _frozen(model: nn.Module, route: str | None, device: torch.device) -> nn.Module:
    """A deterministic copy: routed layers folded on ``route``, eval mode, no parameter gradients."""
    folded = fold_route(model, route).to(device).eval()
    return folded.requires_grad_(False)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device, desc: str = "clean",
            progress: bool = True) -> torch.Tensor:
    """Predicted classes of ``x`` (on the CPU), batch by batch."""
    starts = range(0, len(x), batch_size)
    out = [model(x[i:i + batch_size].to(device)).argmax(1).cpu()
           for i in tqdm(starts, desc=desc, unit="batch", leave=False, disable=not progress)]
    return torch.cat(out)


def _pgd_robust(model: nn.Module, x: torch.Tensor, y: torch.Tensor, correct: torch.Tensor, attack: str, eps: float,
                norm: str, batch_size: int, device: torch.device, progress: bool) -> torch.Tensor:
    """Robust points under PGD/CW: like AutoAttack, only the correctly classified points are attacked (the others
    count as broken), in batches of ``batch_size`` of them."""
    kind, steps = _parse_pgd(attack)
    cls = PGD if kind == "pgd" else CWPGD
    adversary = cls(model, eps=eps, alpha=eps / 4, steps=steps, random_start=True, norm=norm)
    robust = torch.zeros_like(correct)
    (todo,) = correct.nonzero(as_tuple=True)
    for index in tqdm(todo.split(batch_size), desc=attack.upper(), unit="batch", leave=False,
                      disable=not progress):
        xb, yb = x[index].to(device), y[index].to(device)
        with torch.no_grad():
            robust[index] = (model(adversary(xb, yb)).argmax(1) == yb).cpu()
    return robust


def _attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, correct: torch.Tensor, eps: float, norm: str,
            attack: str, version: str, aa_attacks: Sequence[str] | None, aa_restarts: int | None, seed: int,
            batch_size: int,
            device: torch.device, progress: bool) -> tuple[torch.Tensor, list, dict, dict, str | None]:
    """Robust points, flags, per-attack accuracy and seconds, and the AutoAttack backend (None for PGD)."""
    if eps == 0:
        return correct.clone(), [], {}, {}, None
    if attack in ("autoattack", "apgd-ce"):
        single = attack == "apgd-ce"
        result = run_autoattack(model, x, y, eps=eps, norm=norm, version="custom" if single else version, seed=seed,
                                batch_size=batch_size, attacks=["apgd-ce"] if single else aa_attacks, device=device,
                                progress=progress, restarts=1 if single else aa_restarts)
        return (result.robust & correct, result.flags, result.per_attack(int(correct.sum())), result.seconds,
                result.backend)
    return _pgd_robust(model, x, y, correct, attack, eps, norm, batch_size, device, progress), [], {}, {}, None


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "Linf",
             attack: str = "autoattack", version: str = "standard", route: str | None = None, seed: int = 0,
             batch_size: int = 256, *, clean_route: str | None = "clean", aa_attacks: Sequence[str] | None = None,
             aa_restarts: int | None = None, device: torch.device | str | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Clean and robust accuracy of ``model`` on images ``x`` (in [0, 1]) with labels ``y``.

    The model is folded on ``route`` (required for routed models, None for plain ones) and evaluated in eval
    mode; ``model`` itself is not changed, and the caller's RNG states are restored afterwards. ``seed`` fixes
    the attack's randomness. ``aa_attacks`` lists AutoAttack's attacks for ``version="custom"``; ``aa_restarts``
    sets APGD's restarts (AutoAttack's custom version uses 5, the standard version 1).

    Returns a JSON-able report: ``clean_acc`` and ``robust_acc`` (fractions, single-route protocol),
    ``protocol``, ``protocols`` (single route and, for routed models with ``clean_route``, oracle routing;
    ``clean_route=None`` skips it),
    ``attack``, ``version``, ``eps``, ``n``, ``seed``, ``per_attack`` (robust accuracy after each AutoAttack
    attack), ``flags`` (AutoAttack's gradient-masking warnings), ``time`` and ``environment``.
    """
    start = time.perf_counter()
    if norm not in NORMS:
        raise ConfigError(f"unknown threat model {norm!r}; choose one of {list(NORMS)}")
    eps = float(eps)
    if not np.isfinite(eps):
        raise ConfigError(f"eps must be a finite number, got {eps}")
    check_eps(eps, norm)
    check_attack(attack, version)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    routes = check_model_route(model, route, "evaluate")
    device = torch.device(device) if device is not None else model_device(model)
    check_inputs(x, y)
    frozen = _frozen(model, route, device)
    try:
        with torch.no_grad():
            num_classes = frozen(x[:1].to(device)).shape[1]
    except RuntimeError as err:
        raise ConfigError(f"the model does not accept images of shape {tuple(x.shape[1:])} "
                          f"({str(err).splitlines()[0]}); evaluate it on the dataset it was trained for") from None
    check_inputs(x, y, num_classes)
    x, y = x.detach().cpu(), y.detach().cpu().long()

    with preserved_rng():
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        correct = predict(frozen, x, batch_size, device, progress=progress) == y
        clean_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        robust, flags, per_attack, per_attack_seconds, backend = _attack(
            frozen, x, y, correct, eps, norm, attack, version, aa_attacks, aa_restarts, seed, batch_size, device,
            progress)
        attack_seconds = time.perf_counter() - t0
        oracle_clean = None
        if route is not None and clean_route is not None and clean_route in routes and clean_route != route:
            clean_model = _frozen(model, clean_route, device)
            oracle_clean = (predict(clean_model, x, batch_size, device, f"clean ({clean_route} route)",
                                    progress) == y).float().mean().item()

    n = len(y)
    clean_acc, robust_acc = correct.float().mean().item(), robust.float().mean().item()
    protocols = {SINGLE: {"clean_route": route, "adv_route": route, "clean_acc": clean_acc, "robust_acc": robust_acc}}
    if oracle_clean is not None:
        protocols[ORACLE] = {"clean_route": clean_route, "adv_route": route, "clean_acc": oracle_clean,
                             "robust_acc": robust_acc}
    warnings = list(flags)
    if attack in ("autoattack", "apgd-ce") and eps > 0 and not per_attack:
        warnings.append("per-attack accuracies unavailable: AutoAttack's log lines did not add up to its result")
    return {
        "protocol": SINGLE,
        "route": route,
        "attack": attack,
        "attack_description": describe_attack(attack, version, aa_attacks, aa_restarts),
        "version": version if attack == "autoattack" else None,
        "aa_attacks": list(aa_attacks) if attack == "autoattack" and version == "custom" else None,
        "aa_restarts": aa_restarts if attack == "autoattack" else None,
        "backend": backend,
        "norm": norm,
        "eps": eps,
        "eps_str": format_eps(eps, norm),
        "n": n,
        "seed": seed,
        "batch_size": batch_size,
        "clean_acc": clean_acc,
        "robust_acc": robust_acc,
        "per_attack": per_attack,
        "protocols": protocols,
        "flags": flags,
        "warnings": warnings,
        "time": {"total_s": time.perf_counter() - start, "clean_s": clean_seconds, "attack_s": attack_seconds,
                 "per_attack_s": per_attack_seconds},
        "environment": environment(device),
    }


def environment(device: torch.device) -> dict[str, Any]:
    return {"robust_sabn": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": str(device), "threads": torch.get_num_threads(), "platform": platform.platform()}
