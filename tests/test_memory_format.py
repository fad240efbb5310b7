"""The memory format training picks: channels_last on the CPU except for models with convolutions whose
channels_last weight gradient oneDNN gets wrong (oneDNN issue 6035); the picked format's gradients equal NCHW's.
bin/test reruns these (marker ``channels_last``) with ONEDNN_MAX_CPU_ISA=AVX2, the kernels that break first."""
import copy

import pytest
import torch
import torch.nn.functional as F
from fake_data import write_fashion_mnist
from torch import nn
from torchvision.models.resnet import BasicBlock, conv1x1

from robust_sabn import ConfigError, convert_norms, create_model, use_route
from robust_sabn.cli import main
from robust_sabn.distributed import start_processes
from robust_sabn.memory_format import channels_last_hazards, choose_memory_format
from robust_sabn.training.config import TrainConfig
from robust_sabn.training.loop import Trainer, train
from robust_sabn.training.objectives import StepOutput

pytestmark = pytest.mark.channels_last

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
SHORTCUTS = ["layers.1.0.shortcut.0", "layers.2.0.shortcut.0"]  # resnet_small's strided 1x1 projections


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist")
    write_fashion_mnist(root, n_train=48, n_test=8)
    return root


def config(data_dir, out_dir, **overrides) -> TrainConfig:
    values = dict(dataset="fashion-mnist", data_dir=str(data_dir), arch="resnet_small", width=4, val_size=16,
                  batch_size=16, out_dir=str(out_dir), device="cpu", progress=False)
    return TrainConfig(**{**values, **overrides})


@pytest.mark.parametrize("conv", ["standard", "weightalign"])
def test_hazards_of_resnet_small_are_its_narrow_shortcuts(conv):
    assert channels_last_hazards(create_model("resnet_small", width=4, conv=conv)) == SHORTCUTS  # 4 and 8 channels
    assert channels_last_hazards(create_model("resnet_small", width=8, conv=conv)) == SHORTCUTS[:1]  # 8 and 16
    assert channels_last_hazards(create_model("resnet_small", width=16, conv=conv)) == []


def test_hazards_of_a_converted_torchvision_model():
    block = BasicBlock(4, 8, stride=2, downsample=nn.Sequential(conv1x1(4, 8, stride=2), nn.BatchNorm2d(8)))
    model = convert_norms(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), block), "sandwich")
    assert channels_last_hazards(model) == ["2.downsample.0"]


@pytest.mark.parametrize("conv, hazard", [
    (nn.Conv2d(15, 8, 1, stride=(1, 2)), True),
    (nn.Conv2d(64, 64, 1, stride=2, groups=8), True),  # counted per group
    (nn.Conv2d(16, 8, 1, stride=2), False),
    (nn.Conv2d(4, 8, 1), False),
    (nn.Conv2d(4, 8, 3, stride=2, padding=1), False),
])
def test_hazard_rule(conv, hazard):
    assert channels_last_hazards(nn.Sequential(conv)) == (["0"] if hazard else [])


def test_default_format_per_device():
    narrow, wide = create_model("resnet_small", width=4), create_model("resnet_small", width=16)
    assert choose_memory_format(wide, CPU) == (True, "")
    chosen = choose_memory_format(narrow, CPU)
    assert not chosen.channels_last and chosen.memory_format == torch.contiguous_format
    assert "oneDNN issue 6035" in chosen.note and all(name in chosen.note for name in SHORTCUTS)
    assert choose_memory_format(wide, CPU, requested=False) == (False, "")
    assert choose_memory_format(narrow, CUDA) == (False, "")  # cuDNN has no such bug
    assert choose_memory_format(narrow, CUDA, amp=True) == (True, "")
    assert choose_memory_format(narrow, CUDA, requested=True) == (True, "")


def test_explicit_channels_last_on_a_hazardous_model_is_one_clear_error(fmnist, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"layers\.1\.0\.shortcut\.0.*oneDNN issue 6035.*drop --channels-last"):
        train(config(fmnist, tmp_path / "run", channels_last=True))
    assert not (tmp_path / "run").exists()
    argv = ["bench", "norms", "--width", "4", "--batch-size", "2", "--image-size", "8", "--channels-last"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("robust-sabn: error: --channels-last: oneDNN") and err.count("\n") == 1


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
    """An objective without an attack, so that gradients in both formats can be compared to float precision."""
    with use_route(model, "adv"):
        logits = model(x)
    return StepOutput(F.cross_entropy(logits, y), logits.detach(), None)


class NoAttack:
    """The training loop's objective interface around :func:`cross_entropy`: no adversarial examples."""

    def adversarial(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x

    def loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> StepOutput:
        return cross_entropy(model, x, y)


@pytest.mark.slow
@pytest.mark.timeout(120, method="thread")  # the bug can hang inside oneDNN, where only the thread method stops it
@pytest.mark.parametrize("width, channels_last", [(4, False), (16, True)])
def test_training_format_gives_the_nchw_weight_gradients(fmnist, tmp_path, width, channels_last, capsys):
    processes = start_processes("cpu")
    trainer = Trainer(config(fmnist, tmp_path / "run", width=width), processes, resume=False)
    assert trainer.memory_format == (torch.channels_last if channels_last else torch.contiguous_format)
    assert ("training in NCHW, not channels_last: oneDNN" in capsys.readouterr().out) == (not channels_last)
    trainer.objective = NoAttack()
    for _ in range(3):  # the bug does not always show on the first step
        x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
        reference = copy.deepcopy(trainer.model).to(memory_format=torch.contiguous_format).train()
        reference.zero_grad(set_to_none=True)
        cross_entropy(reference, x, y).loss.backward()
        trainer.train_step(x, y)
        for (name, p), q in zip(trainer.model.named_parameters(), reference.parameters()):
            assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name
    processes.close()
