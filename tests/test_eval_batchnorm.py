"""The input-gradient-only BatchNorm of the exact evaluation form: bit for bit PyTorch's outputs and input gradients;
and the compiled form's BatchNorms folded into convolutions."""
import copy

import pytest
import torch
from helpers import routed_model
from torch import nn

from robust_sabn import fold_route
from robust_sabn.eval.batchnorm import (
    InputGradBatchNorm2d,
    fold_into_convolutions,
    replaceable,
    with_input_grad_batchnorm,
)
from robust_sabn.nn import WeightAlignConv2d


def trained_looking_bn(channels: int, affine: bool = True) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, affine=affine, eps=1e-5)
    bn.running_mean.normal_()
    bn.running_var.uniform_(1e-4, 5.0)  # small variances make invstd's rounding matter
    if affine:
        bn.weight.data.normal_()
        bn.bias.data.normal_()
    return bn.eval().requires_grad_(False)


def output_and_input_grad(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    out = module(x)
    (grad,) = torch.autograd.grad(out, x, torch.randn_like(out, generator=torch.Generator().manual_seed(1)))
    return out.detach(), grad


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(1, 3, 5, 5), (7, 16, 14, 14), (64, 33, 8, 8)])
@pytest.mark.parametrize("affine", [True, False])
def test_outputs_and_input_gradients_equal_pytorchs_bit_for_bit(threads, shape, affine):
    torch.manual_seed(0)
    bn = trained_looking_bn(shape[1], affine)
    x = torch.randn(shape) * 3
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        native, ours = output_and_input_grad(bn, x), output_and_input_grad(InputGradBatchNorm2d(bn), x)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(native[0], ours[0]) and torch.equal(native[1], ours[1])


def test_a_whole_folded_model_keeps_its_logits_and_input_gradients():
    model = fold_route(routed_model(), "adv").requires_grad_(False)
    fast = with_input_grad_batchnorm(copy.deepcopy(model))
    assert any(isinstance(m, InputGradBatchNorm2d) for m in fast.modules())
    x = torch.rand(9, 3, 32, 32)
    native, ours = output_and_input_grad(model, x), output_and_input_grad(fast, x)
    assert torch.equal(native[0], ours[0]) and torch.equal(native[1], ours[1])


def test_only_frozen_float32_eval_mode_batchnorms_on_the_cpu_are_replaced():
    assert replaceable(trained_looking_bn(4))
    assert not replaceable(trained_looking_bn(4).train())  # batch statistics: another backward
    assert not replaceable(trained_looking_bn(4).requires_grad_(True))  # its parameters want gradients
    assert not replaceable(trained_looking_bn(4).double())
    assert not replaceable(nn.BatchNorm2d(4, track_running_stats=False).eval())
    assert not replaceable(nn.SyncBatchNorm(4).eval().requires_grad_(False))  # a subclass: its own kernels
    model = nn.Sequential(nn.Conv2d(3, 4, 3), trained_looking_bn(4).train())
    assert with_input_grad_batchnorm(model)[1].__class__ is nn.BatchNorm2d


def test_channels_last_inputs_and_no_grad_calls_run_pytorchs_own_batchnorm():
    bn = trained_looking_bn(8)
    wrapped = InputGradBatchNorm2d(bn)
    x = torch.randn(4, 8, 6, 6).to(memory_format=torch.channels_last)
    native, ours = output_and_input_grad(bn, x), output_and_input_grad(wrapped, x)
    assert torch.equal(native[0], ours[0]) and torch.equal(native[1], ours[1])
    with torch.no_grad():
        assert torch.equal(wrapped(x), bn(x))


def test_the_compiled_form_folds_batchnorms_into_plain_convolutions_only():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), trained_looking_bn(16), nn.ReLU(), WeightAlignConv2d(16, 16, 3),
                          trained_looking_bn(16)).eval().requires_grad_(False)
    folded = fold_into_convolutions(model)
    assert [type(m) for m in folded.modules() if isinstance(m, nn.BatchNorm2d)] == [nn.BatchNorm2d]  # WA's stays
    x = torch.rand(4, 3, 9, 9)
    assert torch.allclose(folded(x), model(x), atol=1e-5, rtol=1e-5)
    assert not any(p.requires_grad for p in folded.parameters())

    class DataDependent(nn.Module):  # torch.fx cannot trace it: the model stays as it is
        def forward(self, x):
            return model(x) if x.sum() > 0 else -x

    untraceable = DataDependent()
    assert fold_into_convolutions(untraceable) is untraceable
