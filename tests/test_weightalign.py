import copy
import math

import pytest
import torch
import torch.nn.functional as F
from fake_data import write_fashion_mnist
from helpers import max_diff
from torch import nn

from robust_sabn import (
    ConfigError,
    WeightAlignConv2d,
    convert_convs,
    create_model,
    fold_route,
    fold_spec,
    list_models,
    use_route,
)
from robust_sabn.cli import main
from robust_sabn.io import extract_state_dict, load_checkpoint, load_weights
from robust_sabn.models import build_model
from robust_sabn.nn import routed_layers
from robust_sabn.nn.groupnorm import default_num_groups, group_norm


def random_gains(layer: WeightAlignConv2d) -> WeightAlignConv2d:
    with torch.no_grad():
        layer.weight_gain.uniform_(0.5, 2.0)
    return layer


@pytest.mark.parametrize("groups", [1, 2])
def test_aligned_filters_have_zero_mean_and_the_stated_scale(groups):
    layer = random_gains(WeightAlignConv2d(4, 6, 3, groups=groups, bias=False))
    with torch.no_grad():
        layer.weight.mul_(3).add_(torch.arange(6.0).view(6, 1, 1, 1))  # filters with means and spreads of their own
    w = layer.aligned_weight().detach().double().flatten(1)
    fan_in = 4 // groups * 9
    var = layer.weight.detach().double().flatten(1).var(1, unbiased=False)
    gain = layer.weight_gain.detach().double().flatten()
    expected_std = gain * math.sqrt(2 / fan_in) * torch.sqrt(var / (var + 1e-6))
    assert w.mean(1).abs().max() < 1e-6  # float32 rounding of filters with means up to 5
    assert torch.allclose(w.std(1, unbiased=False), expected_std, rtol=1e-5)


def test_output_of_a_sample_does_not_depend_on_the_rest_of_the_batch():
    model = create_model("resnet_small", width=8, conv="weightalign", norm="gn")
    x = torch.rand(6, 3, 16, 16)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        full = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(6)])
        other_batch = model(torch.cat([x[:2], torch.rand(9, 3, 16, 16)]))[:2]
        assert max_diff(full, alone) < 1e-5 and max_diff(full[:2], other_batch) < 1e-5, mode


def test_to_conv_gives_identical_outputs_and_plain_module():
    layer = random_gains(WeightAlignConv2d(3, 5, 3, stride=2, padding=1, padding_mode="reflect"))
    x = torch.randn(2, 3, 9, 9)
    conv = layer.to_conv()
    assert type(conv) is nn.Conv2d and conv.padding_mode == "reflect"
    assert max_diff(conv(x), layer(x)) == 0
    assert type(layer.fold("adv")) is nn.Conv2d


def test_fold_route_of_weightalign_sabn_model_is_exact_and_loads_into_a_standard_bn_model():
    model = create_model("resnet_small", width=8, conv="weightalign", norm="sandwich").train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for route in ("clean", "adv", "adv"):  # move weights, gains, affines and statistics away from their start
        with use_route(model, route):
            loss = F.cross_entropy(model(torch.rand(8, 3, 16, 16)), torch.randint(0, 10, (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    x = torch.rand(4, 3, 16, 16)
    with use_route(model, "adv"):
        routed = model(x)
    folded = fold_route(model, "adv")
    assert not routed_layers(folded) and not any(isinstance(m, WeightAlignConv2d) for m in folded.modules())
    assert max_diff(folded(x), routed) <= 1e-5

    plain = create_model("resnet_small", width=8, conv="standard", norm="bn")
    plain.load_state_dict(folded.state_dict())
    assert max_diff(plain.eval()(x), routed) <= 1e-5
    spec = fold_spec(model.model_spec)
    assert spec["kwargs"]["conv"] == "standard" and spec["kwargs"]["norm"] == "bn"
    build_model(spec).load_state_dict(folded.state_dict())


SMALL_MODELS = ("resnet_small", "preact_resnet18")


@pytest.mark.parametrize("name", [n if n in SMALL_MODELS else pytest.param(n, marks=pytest.mark.slow)
                                  for n in list_models()])
def test_every_zoo_model_builds_with_weightalign_and_folds_exactly(name):
    model = create_model(name, conv="weightalign", norm="bn").eval()
    size = 8 if name.startswith("wide") else 16
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        assert max_diff(fold_route(model, "adv")(x), model(x)) <= 1e-5


def test_gradients_reach_weights_and_gains():
    layer = random_gains(WeightAlignConv2d(3, 4, 3))
    layer(torch.randn(2, 3, 5, 5)).pow(2).sum().backward()
    assert layer.weight.grad.abs().sum() > 0 and layer.weight_gain.grad.abs().min() > 0 and layer.bias.grad is not None


@pytest.mark.parametrize("norm", ["gn", "none", "bn"])
@pytest.mark.parametrize("batch_size", [1, 2])
def test_tiny_batch_training_steps_run(norm, batch_size):
    model = create_model("resnet_small", width=8, conv="weightalign", norm=norm).train()
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = F.cross_entropy(model(torch.rand(batch_size, 3, 16, 16)), torch.zeros(batch_size, dtype=torch.long))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert not torch.equal(before["conv1.weight"], model.conv1.weight)


def test_convert_convs_keeps_zero_mean_filters_and_documents_the_rest():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1, bias=False))
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Conv2d):
                m.weight.sub_(m.weight.mean((1, 2, 3), keepdim=True))
    x = torch.rand(2, 3, 6, 6)
    reference = model(x)
    converted = convert_convs(copy.deepcopy(model), "weightalign")
    assert sum(isinstance(m, WeightAlignConv2d) for m in converted.modules()) == 2
    assert max_diff(converted(x), reference) < 1e-3 * reference.abs().max()  # equal up to eps

    generic = nn.Conv2d(3, 4, 3)
    aligned = convert_convs(generic, "weightalign")
    centered = generic.weight - generic.weight.mean((1, 2, 3), keepdim=True)
    assert max_diff(aligned.aligned_weight(), centered) < 1e-3  # the filter means are what conversion drops


def test_bad_conv_configurations_are_clear_errors():
    with pytest.raises(ConfigError, match="at least 2 weights"):
        WeightAlignConv2d(4, 4, 1, groups=4)
    with pytest.raises(ConfigError, match="no conversion"):
        convert_convs(nn.Conv2d(3, 3, 3), "standard")
    with pytest.raises(ConfigError, match="unknown conv"):
        create_model("resnet_small", conv="aligned")


def test_group_norm_chooses_groups_from_the_width():
    assert [default_num_groups(c) for c in (3, 8, 16, 64, 128, 512, 48)] == [1, 2, 4, 16, 32, 32, 12]
    assert group_norm(16, num_groups=8).num_groups == 8
    with pytest.raises(ConfigError, match="num_groups"):
        group_norm(16, num_groups=5)
    model = create_model("resnet_small", width=8, norm="gn")
    assert {m.num_groups for m in model.modules() if isinstance(m, nn.GroupNorm)} == {2, 4, 8}


@pytest.mark.parametrize("norm, conv", [
    ("sandwich", "weightalign"),
    *[pytest.param(n, c, marks=pytest.mark.slow) for n in ("ubn", "sandwich", "dual", "bn")
      for c in ("standard", "weightalign") if (n, c) != ("sandwich", "weightalign")],
])
@pytest.mark.slow
def test_train_command_runs_every_norm_with_every_conv_and_exports_plain(norm, conv, tmp_path):
    write_fashion_mnist(tmp_path / "data", n_train=48, n_test=8)
    run = tmp_path / "run"
    argv = ["train", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "data"), "--arch", "resnet_small",
            "--width", "4", "--norm", norm, "--conv", conv, "--steps", "1", "--val-steps", "1", "--val-size", "16",
            "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--out-dir", str(run), "--no-progress"]
    assert main(argv) == 0
    checkpoint = load_checkpoint(run / "best.pt")
    model = build_model(checkpoint["model_spec"])
    load_weights(model, extract_state_dict(checkpoint))
    folded = fold_route(model, "adv")
    plain = build_model(fold_spec(checkpoint["model_spec"]))
    plain.load_state_dict(folded.state_dict())
    x = torch.rand(3, 1, 28, 28)
    with use_route(model.eval(), "adv"):
        assert max_diff(plain.eval()(x), model(x)) <= 1e-5


def test_converting_a_zoo_model_updates_or_drops_its_spec():
    model = convert_convs(create_model("resnet_small", width=4), "weightalign")
    assert model.model_spec["kwargs"]["conv"] == "weightalign"
    build_model(model.model_spec).load_state_dict(model.state_dict())
    assert not hasattr(convert_convs(create_model("resnet_small", width=4), eps=1e-3), "model_spec")
