"""RNG states in checkpoints: only this process's own generators, so a run resumes on another device count."""
import random

import numpy as np
import pytest
import torch

from robust_sabn.rng import preserved_rng, rng_state, set_rng_state


def draws():
    return torch.rand(3).tolist(), random.random(), np.random.rand()


def test_cpu_states_round_trip_and_never_touch_cuda(monkeypatch):
    def no_cuda(*args, **kwargs):
        raise AssertionError("a CPU run initialized CUDA")

    for name in ("get_rng_state", "get_rng_state_all", "set_rng_state", "set_rng_state_all"):
        monkeypatch.setattr(torch.cuda, name, no_cuda)
    state = rng_state("cpu")
    expected = draws()
    set_rng_state(state, "cpu")
    assert state["cuda"] is None and draws() == expected


@pytest.fixture
def eight_gpus(monkeypatch):
    """Simulated CUDA generators, one per GPU; records every restore as (device index, state)."""
    states = {i: torch.full((8,), i, dtype=torch.uint8) for i in range(8)}
    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: states[torch.device(device).index])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append(
        (torch.device(device).index, int(state[0]))))
    return restored


def test_a_gpu_process_saves_its_own_gpu_and_resumes_on_any_one(eight_gpus):
    saved = rng_state(torch.device("cuda", 5))  # rank 5 of an 8-GPU node
    assert int(saved["cuda"][0]) == 5
    set_rng_state(saved, torch.device("cuda", 0))  # one visible GPU (CUDA_VISIBLE_DEVICES=3): its cuda:0
    assert eight_gpus == [(0, 5)]


def test_checkpoints_of_earlier_versions_with_every_gpu_state_resume_on_fewer_gpus(eight_gpus):
    old = {**rng_state("cpu"), "cuda": [torch.full((8,), i, dtype=torch.uint8) for i in range(8)]}
    set_rng_state(old, torch.device("cuda", 0))
    set_rng_state(old, torch.device("cuda", 9))  # no entry for this GPU: its generator stays as it is
    set_rng_state(old, "cpu")
    assert eight_gpus == [(0, 0)]


def test_preserved_rng_restores_every_gpu_even_when_cuda_was_not_initialized(monkeypatch, eight_gpus):
    """AutoAttack reseeds CUDA; a seed set before CUDA is initialized would only be queued and change the caller's
    CUDA seed later, so every GPU's generator is saved on entry and put back on exit."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    with preserved_rng():
        assert eight_gpus == []
    assert eight_gpus == [(i, i) for i in range(8)]
