"""Random-number-generator states as plain tensors and lists, so that a weights-only checkpoint holds them."""
from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from .errors import ConfigError
from .parsing import Range

SEEDS = 2**32  # seeds are 0 .. 2**32 - 1, as NumPy's
SEED_RANGE = Range(0, SEEDS - 1, "0", integer=True)


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    return SEED_RANGE.check(seed, "seed", "--seed")


def derive_seed(*keys: int) -> int:
    """A well-mixed 64-bit seed from integer keys (numpy's SeedSequence), e.g. (seed, epoch, batch index)."""
    return int(np.random.SeedSequence([int(k) % 2**64 for k in keys]).generate_state(1, np.uint64)[0])


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), Python's ``random`` and NumPy's global generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Every global generator this process draws from: torch CPU (and, when it trains on a GPU, that GPU's
    generator only) as uint8 tensors, Python and NumPy as lists. A CPU run never touches CUDA here."""
    device = torch.device(device)
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "python": [version, list(words), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }


def set_rng_state(state: dict[str, Any], device: torch.device | str = "cpu") -> None:
    """Restore what :func:`rng_state` captured; the CUDA state goes to ``device`` (this process's GPU), whatever
    GPU it was saved from, so a run resumes on another GPU or on fewer visible GPUs. (Checkpoints of earlier
    versions hold a list with every visible GPU's state: the entry of this process's GPU index is taken.)"""
    device = torch.device(device)
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if isinstance(cuda, list):
        cuda = cuda[device.index or 0] if device.type == "cuda" and (device.index or 0) < len(cuda) else None
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore every global generator on exit: torch's CPU and every GPU's, Python's and NumPy's (AutoAttack
    reseeds torch, CUDA included). Where CUDA exists it is initialized first: a seed set while it is not yet
    initialized would only be queued, run at its first use, and change the caller's CUDA seed even when the code
    inside ran on the CPU."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
