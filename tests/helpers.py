"""Shared test utilities."""
from pathlib import Path

import torch
from torch import nn

from datasets import write_cifar10


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


def write_run_dir(root: Path, eps: float = 8 / 255, n_test: int = 6) -> Path:
    """``root/run``: a run folder as the training loop writes it (``last.pt`` with a tiny SaBN resnet_small,
    its model_spec and config) for fake CIFAR-10 files in ``root/data``."""
    from robust_sabn import create_model
    from robust_sabn.io import save_checkpoint

    write_cifar10(root / "data", n_train=10, n_test=n_test)
    model = randomize_bn_state(create_model("resnet_small", width=4, norm="sandwich"))
    config = {"dataset": "cifar10", "data_dir": str(root / "data"), "eps": eps, "attack_norm": "Linf"}
    checkpoint = {"model": model.state_dict(), "model_spec": model.model_spec, "config": config, "epoch": 1, "step": 2}
    save_checkpoint(checkpoint, root / "run" / "last.pt")
    return root / "run"
