import copy

import pytest
import torch
import torchvision
from helpers import max_diff, randomize_bn_state
from torch import nn

from robust_sabn import (
    ConfigError,
    SandwichBatchNorm2d,
    convert_norms,
    create_model,
    fold_route,
    list_models,
    use_route,
)
from robust_sabn.nn import RoutedNorm, routed_layers

ROUTES = ("clean", "adv", "extra")
SMALL_INPUT = {"wide_resnet28_10": 8, "wide_resnet34_10": 8}


@pytest.mark.parametrize("kind", ["sandwich", "dual"])
def test_torchvision_resnet18_conversion_is_exact_in_eval_and_train_mode(kind):
    model = randomize_bn_state(torchvision.models.resnet18(num_classes=10)).eval()
    x = torch.rand(4, 3, 32, 32)
    reference = model(x)
    converted = convert_norms(copy.deepcopy(model), kind, routes=ROUTES)
    assert sum(isinstance(m, RoutedNorm) for m in converted.modules()) == 20
    for route in ROUTES:
        with use_route(converted, route):
            assert max_diff(converted(x), reference) <= 1e-5
        assert max_diff(fold_route(converted, route)(x), reference) <= 1e-5

    for route in ROUTES:
        original = copy.deepcopy(model).train()
        routed = convert_norms(copy.deepcopy(model), kind, routes=ROUTES).train()
        out_original = original(x)
        with use_route(routed, route):
            out_routed = routed(x)
        assert max_diff(out_routed, out_original) <= 1e-5
        folded_stats = fold_route(routed, route).state_dict()
        for key, value in original.state_dict().items():
            if "running" in key or "num_batches" in key:
                assert torch.allclose(folded_stats[key], value, atol=1e-6), key


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("kind", ["sandwich", "dual"])
def test_every_zoo_model_converts_and_folds_exactly(name, kind):
    model = randomize_bn_state(create_model(name, norm="bn")).eval()
    size = SMALL_INPUT.get(name, 16)
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        reference = model(x)
        converted = convert_norms(copy.deepcopy(model), kind, routes=ROUTES)
        for route in ROUTES:
            with use_route(converted, route):
                assert max_diff(converted(x), reference) <= 1e-5
            folded = fold_route(converted, route)
            assert max_diff(folded(x), reference) <= 1e-5
            assert folded.state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize("kind", ["sandwich", "dual"])
def test_fold_matches_each_route_of_a_trained_routed_zoo_model(kind):
    model = create_model("resnet_small", width=8, norm=kind, routes=ROUTES).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for i, route in enumerate(ROUTES * 2):  # the routes drift apart
        with use_route(model, route):
            loss = model(torch.rand(8, 3, 16, 16) + 0.3 * i).logsumexp(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    x = torch.rand(4, 3, 16, 16)
    outputs = []
    for route in ROUTES:
        with use_route(model, route):
            routed = model(x)
        folded = fold_route(model, route)
        assert not routed_layers(folded) and not folded.training
        plain = create_model("resnet_small", width=8, norm="bn")
        plain.load_state_dict(folded.state_dict())
        assert max_diff(plain.eval()(x), routed) <= 1e-5
        outputs.append(routed)
    assert max_diff(outputs[0], outputs[1]) > 1e-3  # the check above compares different functions


def test_conversion_preserves_dtype_device_mode_and_existing_routed_layers():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), SandwichBatchNorm2d(4)).double().eval()
    converted = convert_norms(model, "dual")
    assert type(converted[1]).__name__ == "DualBatchNorm2d" and isinstance(converted[2], SandwichBatchNorm2d)
    assert converted[1].bns["adv"].weight.dtype == torch.double and not converted[1].training
    assert isinstance(convert_norms(nn.BatchNorm2d(3), "sandwich"), SandwichBatchNorm2d)


def test_bn_subclass_with_its_own_forward_is_refused():
    class BatchNormAct(nn.BatchNorm2d):
        def forward(self, x):
            return torch.relu(super().forward(x))

    with pytest.raises(ConfigError, match="BatchNormAct"):
        convert_norms(nn.Sequential(BatchNormAct(3)), "sandwich")
    with pytest.raises(ConfigError, match="unknown norm"):
        convert_norms(nn.Sequential(nn.BatchNorm2d(3)), "layer")


def test_affine_free_batchnorm_converts_exactly():
    bn = randomize_bn_state(nn.BatchNorm2d(5, affine=False)).eval()
    x = torch.randn(3, 5, 4, 4)
    layer = convert_norms(copy.deepcopy(bn), "sandwich")
    with use_route(layer, "clean"):
        assert max_diff(layer(x), bn(x)) <= 1e-6
