import copy
import json

import pytest
import torch
import torch.nn.functional as F
import torchvision
from fake_data import write_fashion_mnist
from helpers import assert_split_equals_separate, max_diff, randomize_bn_state
from torch import nn

from robust_sabn import (
    CalibratedBatchNorm2d,
    ConfigError,
    UnifiedBatchNorm2d,
    convert_norms,
    create_model,
    fold_route,
    fold_spec,
    use_route,
)
from robust_sabn.cli import main
from robust_sabn.models import build_model
from robust_sabn.nn import layer_metrics, routed_layers
from robust_sabn.nn.unified import feature_condensation

INF = float("inf")


def running_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k or "num_batches" in k}


def perturb_calibration(model: nn.Module, scale: float = 0.3) -> nn.Module:
    """Move every UBN's calibration and affine away from the identity so that checks compare real work."""
    with torch.no_grad():
        for layer in routed_layers(model):
            for p in layer.parameters():
                p.add_(scale * torch.randn_like(p))
    return model


@pytest.mark.channels_last
@pytest.mark.parametrize("features", ["map", "channel_mean"])
def test_condensation_is_the_mean_pairwise_cosine(features):
    x = torch.randn(7, 5, 4, 3) + 0.5
    x[3] = 0
    f = (x - x.mean((0, 2, 3), keepdim=True)).flatten(1) if features == "map" else x.mean((2, 3))
    cos = F.cosine_similarity(f[:, None], f[None], dim=2, eps=1e-30)
    cos.fill_diagonal_(0)
    if features == "channel_mean":  # an all-zero vector counts as orthogonal to everything
        cos[3, :] = cos[:, 3] = 0
    expected = cos.sum() / (7 * 6)
    assert abs(feature_condensation(x, features).item() - expected.item()) < 1e-5
    channels_last = x.contiguous(memory_format=torch.channels_last)
    assert abs(feature_condensation(channels_last, features).item() - expected.item()) < 1e-5
    assert abs(feature_condensation(x[:1].repeat(6, 1, 1, 1), features).item() - 1) < 1e-5


@pytest.mark.parametrize("fresh", [True, False])
def test_ubn_without_threshold_and_calibration_is_batchnorm_bit_for_bit(fresh):
    bn = nn.BatchNorm2d(6) if fresh else randomize_bn_state(nn.BatchNorm2d(6))
    if fresh:
        ubn = UnifiedBatchNorm2d(6, tau=INF, calibration=False)
    else:
        ubn = UnifiedBatchNorm2d.from_batchnorm(bn, tau=INF, calibration=False)
    ubn.train()
    bn.train()
    for step in range(4):
        x = torch.randn(5, 6, 4, 4) * (1 + step) + step
        x[:] = x[0] if step == 2 else x  # a fully condensed batch: still updated with tau = inf
        xb, xu = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_bn = bn(xb)
        with use_route(ubn, "adv"):
            out_ubn = ubn(xu)
        assert torch.equal(out_bn, out_ubn)
        out_bn.pow(2).sum().backward()
        out_ubn.pow(2).sum().backward()
        assert torch.equal(xb.grad, xu.grad)
        assert torch.equal(bn.weight.grad, ubn.weight.grad) and torch.equal(bn.bias.grad, ubn.bias.grad)
        for key, value in running_state(bn).items():
            assert torch.equal(ubn.stats["adv"].state_dict()[key], value), key
    bn.eval()
    ubn.eval()
    x = torch.randn(3, 6, 4, 4)
    with use_route(ubn, "adv"):
        assert torch.equal(bn(x), ubn(x))


def test_fresh_calibrated_ubn_equals_batchnorm():
    bn, ubn = nn.BatchNorm2d(6).train(), UnifiedBatchNorm2d(6, tau=INF).train()
    x = torch.randn(8, 6, 5, 5) + 1
    with use_route(ubn, "clean"):
        assert max_diff(ubn(x), bn(x)) < 1e-5
    assert max_diff(ubn.stats["clean"].running_var, bn.running_var) < 1e-6
    assert ubn.stats["adv"].num_batches_tracked == 0


def test_calibration_computes_the_documented_formula():
    layer = perturb_calibration(UnifiedBatchNorm2d(4, tau=INF)).train()
    x = torch.randn(6, 4, 3, 3)
    with use_route(layer, "adv"):
        out = layer(x)
    v = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
    centered = x + v(layer.center_weight) * x.mean((2, 3), keepdim=True)
    mean, var = centered.mean((0, 2, 3), keepdim=True), centered.var((0, 2, 3), unbiased=False, keepdim=True)
    x_hat = (centered - mean) / torch.sqrt(var + 1e-5)
    gate = 2 * torch.sigmoid(v(layer.scale_weight) * x_hat.mean((2, 3), keepdim=True) + v(layer.scale_bias))
    assert max_diff(out, v(layer.weight) * x_hat * gate + v(layer.bias)) < 1e-5


@pytest.mark.parametrize("momentum", [0.1, None])
def test_closed_form_calibration_equals_calibrating_around_the_stats_module(momentum):
    class OtherStats(nn.BatchNorm2d):  # any non-plain statistics module (e.g. SyncBatchNorm) takes the module path
        pass

    fast = perturb_calibration(UnifiedBatchNorm2d(4, tau=INF, momentum=momentum)).double()
    generic = copy.deepcopy(fast)
    generic.stats["adv"] = OtherStats(4, momentum=momentum, affine=False).double()
    for mode in ("train", "train", "eval"):
        x = torch.randn(5, 4, 3, 3, dtype=torch.double) * 2 + 1
        outputs, grads = [], []
        for layer in (fast, generic):
            xi = x.clone().requires_grad_()
            with use_route(getattr(layer, mode)(), "adv"):
                out = layer(xi)
            out.pow(3).sum().backward()
            outputs.append(out)
            grads.append([xi.grad] + [p.grad.clone() for p in layer.parameters()])
            layer.zero_grad()
        assert max_diff(*outputs) < 1e-10
        for a, b in zip(*grads):
            assert max_diff(a, b) < 1e-9
        for key, value in running_state(fast.stats["adv"]).items():
            assert torch.allclose(generic.stats["adv"].state_dict()[key], value, atol=1e-12), key


@pytest.mark.parametrize("calibration", [True, False])
def test_condensed_batch_leaves_running_stats_unchanged_and_diverse_batch_updates_them(calibration):
    layer = UnifiedBatchNorm2d(4, calibration=calibration).train()
    reference = UnifiedBatchNorm2d(4, tau=INF, calibration=calibration).train()
    before = running_state(layer.stats["adv"])
    condensed = torch.randn(1, 4, 5, 5).repeat(8, 1, 1, 1)
    with use_route(layer, "adv"), use_route(reference, "adv"):
        out = layer(condensed)
        assert torch.equal(out, reference(condensed))  # the batch itself is normalized as usual
        for key, value in running_state(layer.stats["adv"]).items():
            assert torch.equal(value, before[key]), key
        assert layer.last_condensation[1] > 0.999

        layer(torch.randn(8, 4, 5, 5) + 2)
    after = running_state(layer.stats["adv"])
    assert after["running_mean"].min() > 0.1 and after["num_batches_tracked"] == 1
    assert layer.layer_metrics(reset=False)["ubn_skip_rate"] == 0.5
    assert layer.layer_metrics()["ubn_skipped"] == 1


def test_layer_metrics_per_route_and_reset_on_read():
    layer = UnifiedBatchNorm2d(3, routes=("clean", "adv", "extra")).train()
    copies = torch.randn(1, 3, 4, 4).repeat(4, 1, 1, 1)
    with use_route(layer, "adv"):
        layer(copies)
        layer(torch.randn(4, 3, 4, 4))
    with use_route(layer, "clean"):
        layer(torch.randn(4, 3, 4, 4))
        layer(torch.randn(1, 3, 4, 4))  # one sample: not measured
    layer.eval()
    with use_route(layer, "clean"):
        layer(copies)  # eval mode: not measured
    metrics = layer.layer_metrics()
    assert metrics["ubn_skipped"] == 1 and metrics["ubn_skip_rate"] == pytest.approx(1 / 3)
    assert metrics["ubn_skip_rate_adv"] == 0.5 and metrics["ubn_skip_rate_clean"] == 0
    assert "ubn_skip_rate_extra" not in metrics
    weighted = (2 * metrics["ubn_condensation_adv"] + metrics["ubn_condensation_clean"]) / 3
    assert metrics["ubn_condensation"] == pytest.approx(weighted)
    assert layer.layer_metrics() == {}  # counters were reset by the first read


def test_model_layer_metrics_average_over_ubn_layers():
    model = create_model("resnet_small", width=4, norm="ubn").train()
    with use_route(model, "adv"):
        model(torch.rand(1, 3, 16, 16).repeat(4, 1, 1, 1))
    metrics = layer_metrics(model)
    assert metrics["ubn_skip_rate"] == 1 and metrics["ubn_condensation_adv"] > 0.999
    assert layer_metrics(model) == {}


def test_routes_keep_separate_statistics():
    layer = UnifiedBatchNorm2d(4).train()
    with use_route(layer, "adv"):
        layer(torch.randn(8, 4, 3, 3) + 3)
    assert layer.stats["clean"].running_mean.abs().max() == 0
    assert layer.stats["adv"].running_mean.min() > 0.1


def test_gradients_reach_affine_and_calibration():
    layer = perturb_calibration(UnifiedBatchNorm2d(4)).train()
    with use_route(layer, "clean"):
        layer(torch.randn(6, 4, 3, 3)).pow(3).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().min() > 0, name


def test_split_routes_equals_separate_forwards_including_skips():
    torch.manual_seed(0)
    model = perturb_calibration(create_model("resnet_small", width=8, norm="ubn").double().train(), 0.1)
    x_clean = torch.rand(5, 3, 16, 16, dtype=torch.double)
    x_adv = torch.rand(1, 3, 16, 16, dtype=torch.double).repeat(3, 1, 1, 1)  # condensed: adv stats skip
    separate = assert_split_equals_separate(model, x_clean, x_adv, torch.randint(0, 10, (8,)))
    split_metrics, separate_metrics = layer_metrics(model), layer_metrics(separate)
    assert split_metrics == pytest.approx(separate_metrics)
    assert split_metrics["ubn_skip_rate_adv"] == 1 and split_metrics["ubn_skip_rate_clean"] == 0


@pytest.mark.parametrize("calibration", [True, False])
def test_convert_norms_to_ubn_is_exact_in_eval_and_train_mode(calibration):
    model = randomize_bn_state(torchvision.models.resnet18(num_classes=10)).eval()
    x = torch.rand(4, 3, 32, 32)
    reference = model(x)
    converted = convert_norms(copy.deepcopy(model), "ubn", calibration=calibration)
    assert sum(isinstance(m, UnifiedBatchNorm2d) for m in converted.modules()) == 20
    for route in ("clean", "adv"):
        with use_route(converted, route):
            assert max_diff(converted(x), reference) <= 1e-5
        assert max_diff(fold_route(converted, route)(x), reference) <= 1e-5

    # train mode amplifies float32 rounding through 20 batch-normalized layers: compare in double precision
    original = copy.deepcopy(model).double().train()
    routed = convert_norms(copy.deepcopy(model), "ubn", tau=INF, calibration=calibration).double().train()
    with use_route(routed, "adv"):
        assert max_diff(routed(x.double()), original(x.double())) <= 1e-10
    folded_stats = fold_route(routed, "adv").state_dict()
    for key, value in running_state(original).items():
        folded_key = key.replace("running", "stats.running").replace("num_batches", "stats.num_batches") \
            if calibration else key
        assert torch.allclose(folded_stats[folded_key], value, atol=1e-12), key


@pytest.mark.parametrize("calibration", [True, False])
def test_fold_is_exact_and_loads_into_the_folded_spec(calibration):
    model = create_model("resnet_small", width=8, norm="ubn", norm_kwargs={"calibration": calibration}).train()
    perturb_calibration(model, 0.1)
    with use_route(model, "adv"):
        model(torch.rand(8, 3, 16, 16))  # non-trivial running statistics
    model.eval()
    x = torch.rand(3, 3, 16, 16)
    with use_route(model, "adv"):
        routed = model(x)
    folded = fold_route(model, "adv")
    plain_type = CalibratedBatchNorm2d if calibration else nn.BatchNorm2d
    assert not routed_layers(folded) and any(type(m) is plain_type for m in folded.modules())
    assert max_diff(folded(x), routed) <= 1e-5

    spec = fold_spec(model.model_spec)
    assert spec["kwargs"]["norm"] == ("calibrated_bn" if calibration else "bn")
    rebuilt = build_model(spec)
    rebuilt.load_state_dict(folded.state_dict())
    assert max_diff(rebuilt.eval()(x), routed) <= 1e-5


@pytest.mark.parametrize("batch_size", [1, 2])
@pytest.mark.parametrize("norm", ["ubn", "calibrated_bn"])
def test_tiny_batch_training_steps_run(batch_size, norm):
    model = create_model("resnet_small", width=4, norm=norm).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with use_route(model, "adv"):
        loss = F.cross_entropy(model(torch.rand(batch_size, 3, 16, 16)), torch.zeros(batch_size, dtype=torch.long))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)


def test_bad_condensation_features_is_a_config_error():
    with pytest.raises(ConfigError, match="condensation features"):
        UnifiedBatchNorm2d(4, features="pixels")


@pytest.mark.slow
def test_train_command_logs_condensation_and_skips_per_epoch(tmp_path):
    write_fashion_mnist(tmp_path / "data", n_train=64, n_test=8)
    run = tmp_path / "run"
    argv = ["train", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "data"), "--arch", "resnet_small",
            "--width", "4", "--norm", "ubn", "--conv", "weightalign", "--objective", "hybrid", "--eps", "0.1",
            "--steps", "1", "--val-steps", "1", "--val-size", "16", "--epochs", "2", "--batch-size", "16",
            "--device", "cpu", "--out-dir", str(run), "--no-progress"]
    assert main(argv) == 0
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in epochs if r["kind"] == "epoch"]
    assert len(epochs) == 2
    for record in epochs:
        assert 0 <= record["layer/ubn_skip_rate"] <= 1 and "layer/ubn_skipped" in record
        assert -1 <= record["layer/ubn_condensation_clean"] <= 1 and -1 <= record["layer/ubn_condensation_adv"] <= 1
    assert (run / "curves.png").is_file()


def test_calibrated_ubn_weightalign_model_exports_and_loads_through_robustbench(tmp_path):
    import robust_sabn

    model = create_model("resnet_small", width=4, norm="ubn", conv="weightalign").train()
    perturb_calibration(model, 0.1)
    with use_route(model, "adv"):
        model(torch.rand(8, 3, 16, 16))
    model.eval()
    robust_sabn.export(model, "RobustSabnUbnWeightAlign2026", route="adv", model_dir=tmp_path / "models")
    from robustbench.utils import load_model  # imported by the export, without RobustBench's own warnings

    loaded = load_model(model_name="RobustSabnUbnWeightAlign2026", model_dir=tmp_path / "models",
                        dataset="cifar10", threat_model="Linf")
    assert any(isinstance(m, CalibratedBatchNorm2d) for m in loaded.modules()) and not routed_layers(loaded)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad(), use_route(model, "adv"):
        assert max_diff(loaded(x), model(x)) <= 1e-5


def test_converting_a_zoo_model_updates_its_spec():
    model = create_model("resnet_small", width=4, norm_kwargs={"eps": 1e-3}).eval()
    convert_norms(model, "ubn", routes=("clean", "adv", "extra"), tau=0.5)
    rebuilt = build_model(model.model_spec)
    rebuilt.load_state_dict(model.state_dict())
    assert model.model_spec["kwargs"]["norm_kwargs"] == {"eps": 1e-3, "tau": 0.5}
    x = torch.rand(2, 3, 16, 16)
    with use_route(model, "extra"), use_route(rebuilt.eval(), "extra"):
        assert torch.equal(rebuilt(x), model(x))
