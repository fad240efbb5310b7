"""The module ``autoattack`` (upstream fra31/auto-attack's API) on top of PyPI's ``pyautoattack``.

RobustBench and most published evaluation scripts call ``autoattack.AutoAttack(model, norm=..., eps=...,
version=..., device=..., log_path=...)`` and ``run_standard_evaluation(x, y, bs=...)``. PyPI ships the same
attacks as ``pyautoattack`` with keyword-only arguments and a different return value. This class accepts the
upstream call and runs pyautoattack's code unchanged, so results are pyautoattack's own.

This package is imported under the name ``autoattack``, and only when no real ``autoattack`` is installed: see
``_robust_sabn_hooks``, which loads it from its file. It is a leaf (pyautoattack, torch and the standard library),
so ``import autoattack`` never imports ``robust_sabn``.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from pyautoattack import AutoAttack as _PyAutoAttack
from pyautoattack import checks  # noqa: F401  (upstream's module layout, which RobustBench imports from)
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted  # noqa: F401
from pyautoattack.fab_pt import FABAttack_PT  # noqa: F401
from pyautoattack.square import SquareAttack  # noqa: F401

IS_ROBUST_SABN_ADAPTER = True

LOGGER_NAME = "auto-attack"


class AutoAttack:
    """Upstream's ``AutoAttack`` interface; every attack and check runs in a wrapped ``pyautoattack.AutoAttack``.

    Attributes (``apgd``, ``fab``, ``square``, ``attacks_to_run``, ``seed``, ...) read and write through to
    the wrapped object. Differences from upstream: ``device=None`` (the default) means the model's device
    rather than "cuda"; ``is_tv_transform`` is accepted and ignored; messages go to the "auto-attack"
    logger, which ``verbose`` routes to stdout (or to ``log_path``).
    """

    def __init__(self, model: torch.nn.Module, norm: str = "Linf", eps: float = 0.3, seed: int | None = None,
                 verbose: bool = True, attacks_to_run: Sequence[str] = (), version: str = "standard",
                 is_tv_transform: bool = False, device: torch.device | str | None = None,
                 log_path: str | None = None) -> None:
        inner = _PyAutoAttack(model, attacks=list(attacks_to_run) if version == "custom" else None,
                              device=device if device is not None else _model_device(model),
                              eps=eps, norm=norm, seed=seed, version=version)
        object.__setattr__(self, "_inner", inner)
        inner.verbose = verbose
        if verbose:
            _attach_handler(log_path)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value) -> None:
        setattr(self._inner, name, value)

    def set_version(self, version: str = "standard") -> None:
        self._inner.version = version
        self._inner._set_version(version)

    def run_standard_evaluation(self, x_orig: torch.Tensor, y_orig: torch.Tensor, bs: int = 250,
                                return_labels: bool = False, state_path: str | Path | None = None):
        state_path = Path(state_path) if state_path is not None else None
        x_adv, y_adv = self._inner.run_standard_evaluation(x_orig, y_orig, batch_size=bs, state_path=state_path)
        return (x_adv, y_adv) if return_labels else x_adv

    def run_standard_evaluation_individual(self, x_orig: torch.Tensor, y_orig: torch.Tensor, bs: int = 250,
                                           return_labels: bool = False) -> dict:
        adv = self._inner.run_standard_evaluation_individual(x_orig, y_orig, batch_size=bs)
        return adv if return_labels else {name: x for name, (x, _) in adv.items()}


def _model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's parameters (or buffers) live; the CPU for a model without any (robust-sabn's rule)."""
    tensor = next(iter(list(model.parameters()) + list(model.buffers())), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _attach_handler(log_path: str | None) -> None:
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.DEBUG)
    wanted = log_path or "<stdout>"
    if any(getattr(h, "_robust_sabn_target", None) == wanted for h in logger.handlers):
        return
    handler = logging.FileHandler(log_path) if log_path else logging.StreamHandler()
    handler._robust_sabn_target = wanted
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
