"""Shared test utilities."""
import functools
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from fake_data import write_cifar10
from torch import nn

from robust_sabn import convert_norms, fold_route


def randomize_bn_state(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine so that equality checks mean something."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
    return model


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def assert_split_equals_separate(model: nn.Module, x_clean: torch.Tensor, x_adv: torch.Tensor,
                                 y: torch.Tensor) -> nn.Module:
    """One ``split_routes`` forward/backward of ``model`` equals per-route forwards of a copy (outputs, input and
    parameter gradients, running statistics); returns the copy."""
    import copy

    import torch.nn.functional as F

    from robust_sabn import split_routes, use_route

    separate = copy.deepcopy(model)
    n = len(x_clean)
    joined = torch.cat([x_clean, x_adv]).requires_grad_()
    with split_routes(model, clean=n, adv=len(x_adv)):
        out = model(joined)
    F.cross_entropy(out, y, reduction="sum").backward()

    xc, xa = x_clean.clone().requires_grad_(), x_adv.clone().requires_grad_()
    with use_route(separate, "clean"):
        out_c = separate(xc)
    with use_route(separate, "adv"):
        out_a = separate(xa)
    (F.cross_entropy(out_c, y[:n], reduction="sum") + F.cross_entropy(out_a, y[n:], reduction="sum")).backward()

    assert max_diff(out, torch.cat([out_c, out_a])) < 1e-10
    assert max_diff(joined.grad, torch.cat([xc.grad, xa.grad])) < 1e-10
    for (name, p), q in zip(model.named_parameters(), separate.parameters()):
        assert max_diff(p.grad, q.grad) < 1e-9, name
    for (name, b), c in zip(model.state_dict().items(), separate.state_dict().values()):
        assert torch.allclose(b, c, atol=1e-12), name
    return separate


def write_run_dir(root: Path, eps: float = 8 / 255, n_test: int = 6, width: int = 4, labelled: bool = False) -> Path:
    """``root/run``: a run folder as the training loop writes it (``last.pt`` with a tiny SaBN resnet_small,
    its model_spec and config) for fake CIFAR-10 files in ``root/data``. ``labelled``: the test images carry the
    labels the model predicts on its adv route, so every one is classified correctly and worth attacking."""
    from robust_sabn import create_model
    from robust_sabn.io import save_checkpoint

    written = write_cifar10(root / "data", n_train=10, n_test=n_test)
    model = randomize_bn_state(create_model("resnet_small", width=width, norm="sandwich"))
    if labelled:
        with torch.no_grad():
            labels = fold_route(model, "adv")(written["test"][0].float() / 255).argmax(1)
        write_cifar10(root / "data", n_train=10, n_test=n_test, test_labels=labels)
    config = {"dataset": "cifar10", "data_dir": str(root / "data"), "eps": eps, "attack_norm": "Linf"}
    checkpoint = {"model": model.state_dict(), "model_spec": model.model_spec, "config": config, "epoch": 1, "step": 2,
                  "input_shape": [3, 32, 32]}
    save_checkpoint(checkpoint, root / "run" / "last.pt")
    return root / "run"


def write_fitted_run_dir(root: Path, n_test: int = 12) -> Path:
    """``root/run``: a plain-BN resnet_small (width 8) fitted to the fake CIFAR-10 test images in ``root/data``:
    every image classified correctly, and at 5/255 APGD-CE breaks some of them but not all."""
    from robust_sabn import create_model
    from robust_sabn.io import save_checkpoint

    written = write_cifar10(root / "data", n_train=10, n_test=n_test)
    x, y = written["test"][0].float() / 255, written["test"][1]
    torch.manual_seed(0)
    model = create_model("resnet_small", width=8, norm="bn")
    optimizer = torch.optim.Adam(model.parameters(), 0.01)
    for _ in range(40):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    config = {"dataset": "cifar10", "data_dir": str(root / "data"), "eps": 5 / 255, "attack_norm": "Linf"}
    save_checkpoint({"model": model.state_dict(), "model_spec": model.model_spec, "config": config},
                    root / "run" / "last.pt")
    return root / "run"


def bad_cli(args: list[str], capsys, match: str) -> None:
    """``robust-sabn ARGS`` exits 2 with one line on stderr that contains ``match``."""
    from robust_sabn.cli import main

    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("robust-sabn: error:") and "\n" not in err and match in err, err


def fill_disk(monkeypatch, fails=lambda target: True) -> None:
    """Make the atomic writes of the files for which ``fails(target name)`` holds meet a full disk: their temporary
    file is created as usual, but its descriptor points at /dev/full, where every write fails with ENOSPC."""
    import os
    import tempfile

    if not os.path.exists("/dev/full"):
        import pytest

        pytest.skip("needs /dev/full")
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, prefix="", **kwargs):
        fd, name = real_mkstemp(*args, prefix=prefix, **kwargs)
        if fails(prefix[1:-1]):  # atomic_write's prefix is ".<target name>."
            full = os.open("/dev/full", os.O_WRONLY)
            os.dup2(full, fd)
            os.close(full)
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


# ------------------------------------------------------------------- tiny fitted models for evaluation tests
def tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2),
                         nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


IMAGES = torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(1))
LABELS = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(2))


@functools.lru_cache(maxsize=1)
def trained_state() -> dict:
    """A tiny CNN fitted to 32 random images: confident on them, but not robust at 8/255."""
    torch.manual_seed(0)
    net = tiny_net()
    optimizer = torch.optim.Adam(net.parameters(), 0.02)
    for _ in range(60):
        optimizer.zero_grad()
        F.cross_entropy(net(IMAGES), LABELS).backward()
        optimizer.step()
    return net.state_dict()


def plain_model() -> nn.Module:
    net = tiny_net()
    net.load_state_dict(trained_state())
    return net.eval()


def routed_model() -> nn.Module:
    """The fitted CNN converted to SaBN (as a user's own model would be); its two routes differ."""
    model = convert_norms(plain_model(), "sandwich")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "route" in name:
                p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    return model.eval()


def images_labelled_by(model: nn.Module, n: int = 8, route: str | None = "adv", wrong: int = 2):
    """Images with the labels the model predicts on ``route``, except the first ``wrong`` ones: a known clean
    accuracy and points worth attacking."""
    x = IMAGES[:n]
    with torch.no_grad():
        y = fold_route(model, route)(x).argmax(1)
    y[:wrong] = (y[:wrong] + 1) % 10
    return x, y


def interrupt_after(monkeypatch, finished: int) -> None:
    """Make the evaluation stop (as if killed) when it starts the batch after ``finished`` batches."""
    import robust_sabn.eval.batches as batches

    real = batches.run_batch
    calls = []

    def run_batch(*args, **kwargs):
        if len(calls) == finished:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(batches, "run_batch", run_batch)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, processes: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    """``torchrun -m robust_sabn ARGS`` with one thread per process; asserts that it succeeded, showing what the
    processes wrote before torchrun's own summary (which alone would hide why a process died)."""
    argv = [str(Path(sys.executable).with_name("torchrun")), f"--nproc_per_node={processes}",
            f"--master_port={free_port()}", "-m", "robust_sabn", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    err = done.stderr
    assert done.returncode == 0, err if len(err) < 6000 else f"{err[:4000]}\n[...]\n{err[-2000:]}"
    return done
