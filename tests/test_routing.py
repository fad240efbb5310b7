import pytest
import torch
from helpers import assert_split_equals_separate, max_diff
from torch import nn

from robust_sabn import (
    DualBatchNorm2d,
    RouteError,
    SandwichBatchNorm2d,
    create_model,
    routes_of,
    set_route,
    split_routes,
    use_route,
)
from robust_sabn.nn import layer_metrics, routed_layers


def test_sandwich_computes_the_paper_formula():
    layer = SandwichBatchNorm2d(8).train()
    x = torch.randn(6, 8, 5, 5)
    for route, i in (("clean", 0), ("adv", 1)):
        with use_route(layer, route):
            out = layer(x)
        mean = x.mean((0, 2, 3), keepdim=True)
        var = x.var((0, 2, 3), unbiased=False, keepdim=True)
        xhat = (x - mean) / torch.sqrt(var + layer.stats[route].eps)
        shape = (1, -1, 1, 1)
        inner = layer.weight.view(shape) * xhat + layer.bias.view(shape)
        expected = layer.route_weight[i].view(shape) * inner + layer.route_bias[i].view(shape)
        assert max_diff(out, expected) < 1e-5


def test_fresh_sandwich_uses_the_official_initialization():
    layer = SandwichBatchNorm2d(20000)
    for gamma in (layer.weight, layer.route_weight):
        assert abs(gamma.mean().item() - 1) < 2e-3 and 0.015 < gamma.std().item() < 0.025
    assert layer.bias.abs().max() == 0 and layer.route_bias.abs().max() == 0


def test_routes_have_separate_statistics_unless_shared():
    per_route = SandwichBatchNorm2d(4).train()
    with use_route(per_route, "adv"):
        per_route(torch.randn(8, 4, 3, 3) + 3)
    assert per_route.stats["clean"].running_mean.abs().max() == 0
    assert per_route.stats["adv"].running_mean.min() > 0.1

    shared = SandwichBatchNorm2d(4, shared_stats=True).train()
    with use_route(shared, "adv"):
        shared(torch.randn(8, 4, 3, 3) + 3)
    assert isinstance(shared.stats, nn.BatchNorm2d) and shared.stats.running_mean.min() > 0.1


def test_gradients_reach_shared_affine_from_every_route_and_route_affine_only_from_its_own():
    layer = SandwichBatchNorm2d(4, routes=("a", "b", "c")).train()
    x = torch.randn(8, 4, 3, 3)
    target = torch.randn_like(x)
    for i, route in enumerate(layer.routes):
        layer.zero_grad()
        with use_route(layer, route):
            ((layer(x) - target) ** 2).sum().backward()
        assert layer.weight.grad.abs().min() > 0 and layer.bias.grad.abs().min() > 0
        for j in range(3):
            moved = layer.route_weight.grad[j].abs().sum() + layer.route_bias.grad[j].abs().sum()
            assert (moved > 0) == (i == j)


def test_no_route_unknown_route_and_bad_split_are_clear_errors():
    model = create_model("resnet_small", width=4, norm="sandwich")
    x = torch.rand(4, 3, 16, 16)
    with pytest.raises(RouteError, match="no route chosen.*use_route"):
        model(x)
    with pytest.raises(RouteError, match="unknown route 'robust'"):
        with use_route(model, "robust"):
            pass
    with pytest.raises(RouteError, match="add up to 3 but the batch has 4"):
        with split_routes(model, clean=1, adv=2):
            model(x)
    with pytest.raises(RouteError, match="unknown route 'other'"):
        with split_routes(model, clean=2, other=2):
            pass
    with pytest.raises(RouteError, match="non-negative int"):
        with split_routes(model, clean=-1, adv=5):
            pass


def test_route_names_are_validated():
    with pytest.raises(RouteError, match="distinct"):
        SandwichBatchNorm2d(4, routes=("a", "a"))
    with pytest.raises(RouteError, match="identifiers"):
        DualBatchNorm2d(4, routes=("a.b",))


def test_use_route_restores_the_previous_choice():
    model = set_route(create_model("resnet_small", width=4, norm="dual"), "clean")
    with use_route(model, "adv"):
        assert {layer.route for layer in routed_layers(model)} == {"adv"}
    assert {layer.route for layer in routed_layers(model)} == {"clean"}
    assert routes_of(model) == ("clean", "adv")
    assert routes_of(create_model("resnet_small", width=4)) == ()


@pytest.mark.parametrize("norm", ["sandwich", "dual"])
def test_split_routes_equals_separate_forwards(norm):
    torch.manual_seed(0)
    model = create_model("resnet_small", width=8, norm=norm).double().train()
    with torch.no_grad():  # make the routes differ
        for layer in routed_layers(model):
            for p in layer.parameters():
                p.add_(0.1 * torch.randn_like(p))
    x_clean, x_adv = torch.rand(5, 3, 16, 16, dtype=torch.double), torch.rand(3, 3, 16, 16, dtype=torch.double)
    assert_split_equals_separate(model, x_clean, x_adv, torch.randint(0, 10, (8,)))


def test_split_with_an_empty_chunk_runs_only_the_other_route():
    model = create_model("resnet_small", width=4, norm="sandwich").eval()
    x = torch.rand(3, 3, 16, 16)
    with split_routes(model, clean=0, adv=3):
        split = model(x)
    with use_route(model, "adv"):
        assert max_diff(split, model(x)) == 0


def test_sync_batchnorm_conversion_keeps_routing_working():
    layer = SandwichBatchNorm2d(4).eval()
    x = torch.randn(4, 4, 3, 3)
    with use_route(layer, "adv"):
        expected = layer(x)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(layer)
    assert isinstance(synced.stats["adv"], nn.SyncBatchNorm)
    with use_route(synced, "adv"):
        assert max_diff(synced(x), expected) < 1e-6


def test_layer_metrics_averages_what_layers_report():
    class Reporting(nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def layer_metrics(self):
            return {"condensation": self.value}

    model = nn.Sequential(Reporting(0.2), nn.Sequential(Reporting(0.6)), nn.ReLU())
    assert layer_metrics(model) == pytest.approx({"condensation": 0.4})
