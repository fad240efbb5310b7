import copy
import json

import pytest
import torch
from helpers import max_diff, write_fitted_run_dir, write_run_dir
from torch import nn

from robust_sabn import (
    ConfigError,
    DualBatchNorm2d,
    RouteError,
    Threat,
    create_model,
    export,
    fold_route,
    fold_spec,
    mix_routes,
    use_route,
)
from robust_sabn.cli import main
from robust_sabn.exporting.robustbench import import_robustbench
from robust_sabn.mixing import mixture_weights, parse_tradeoffs
from robust_sabn.models.spec import build_model
from robust_sabn.nn import RoutedNorm, WeightAlignConv2d, routed_layers

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is as fast

THREE_ROUTES = ("clean", "adv", "extra")
CASES = {
    "sabn": {"norm": "sandwich"},
    "sabn_shared_stats": {"norm": "sandwich", "norm_kwargs": {"shared_stats": True}},
    "sabn_batch_stats": {"norm": "sandwich", "norm_kwargs": {"track_running_stats": False}},
    "auxbn": {"norm": "dual"},
    "auxbn_affine_free": {"norm": "dual", "norm_kwargs": {"affine": False}},
    "ubn": {"norm": "ubn", "norm_kwargs": {"calibration": False}},
    "sabn_weightalign": {"norm": "sandwich", "conv": "weightalign"},
}
INTERIOR = {("clean", "adv"): {"clean": 0.3, "adv": 0.7},
            THREE_ROUTES: {"clean": 0.2, "adv": 0.5, "extra": 0.3}}


@torch.no_grad()
def randomize_norms(model: nn.Module) -> nn.Module:
    """Random running statistics and affines in every BN and routed layer (including routed layers' own
    parameters, e.g. SaBN's route affines), so that routes differ and equality checks mean something."""
    for module in model.modules():
        if not isinstance(module, (nn.BatchNorm2d, RoutedNorm)):
            continue
        for name, param in module.named_parameters(recurse=False):
            param.uniform_(0.5, 1.5) if name.endswith("weight") else param.uniform_(-0.5, 0.5)
        if getattr(module, "running_mean", None) is not None:
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(7)
    return model


def routed_model(case: str, routes=("clean", "adv"), dtype=torch.float32) -> nn.Module:
    model = create_model("resnet_small", width=4, routes=routes, **CASES[case])
    return randomize_norms(model).to(dtype).eval()


def mixed_by_hooks(model: nn.Module, weights: dict, x: torch.Tensor) -> torch.Tensor:
    """The reference: ``model``'s logits with each routed layer's output replaced by ``sum_r w_r * (its route r
    on the layer's input)``, computed by the layers' own forwards (eval mode)."""
    def mix(layer, inputs, output):
        return sum(w * layer.forward_route(inputs[0], route) for route, w in weights.items())

    handles = [layer.register_forward_hook(mix) for layer in routed_layers(model)]
    try:
        with torch.no_grad(), use_route(model, next(iter(weights))):
            return model(x)
    finally:
        for handle in handles:
            handle.remove()


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("case", CASES)
def test_a_weight_on_one_route_gives_exactly_fold_route(case):
    model = routed_model(case)
    x = torch.rand(4, 3, 16, 16)
    for weights, route in [(mixture_weights(model, 0.0), "clean"), (mixture_weights(model, 1.0), "adv"),
                           ({"adv": 1}, "adv"), ({"clean": 1.0, "adv": 0.0}, "clean")]:
        mixed, folded = mix_routes(model, weights), fold_route(model, route)
        assert not mixed.training
        assert torch.equal(mixed(x), folded(x))
        assert_same_state(mixed, folded)


@pytest.mark.parametrize("routes", list(INTERIOR))
@pytest.mark.parametrize("case", CASES)
def test_an_interior_mixture_computes_the_mixed_normalization_of_every_layer(case, routes):
    model = routed_model(case, routes)
    weights = INTERIOR[routes]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mixed = mix_routes(model, weights)
    assert not mixed.training and not routed_layers(mixed)
    assert not any(isinstance(m, WeightAlignConv2d) for m in mixed.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model is left alone

    layers = dict(mixed.named_modules())
    for name, layer in model.named_modules():
        if isinstance(layer, RoutedNorm):
            x = 2 * torch.randn(6, layer.num_features, 5, 5) + 1
            with torch.no_grad():
                reference = sum(w * layer.forward_route(x, route) for route, w in weights.items())
                out = layers[name](x)
            assert type(layers[name]) is nn.BatchNorm2d
            assert max_diff(out, reference) <= 1e-6 * reference.abs().max(), name  # float32 rounding

    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        logits = mixed(x)
        assert max_diff(logits, mixed_by_hooks(model, weights, x)) <= 1e-5
        for route in weights:  # the mixture is none of its routes
            assert max_diff(logits, fold_route(model, route)(x)) > 1e-3


@pytest.mark.parametrize("case", ["sabn", "auxbn", "auxbn_affine_free", "ubn"])
def test_a_float64_mixture_is_exact_to_float64_rounding(case):
    model = routed_model(case, THREE_ROUTES, torch.float64)
    weights = INTERIOR[THREE_ROUTES]
    x = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        assert max_diff(mix_routes(model, weights)(x), mixed_by_hooks(model, weights, x)) <= 1e-12


@pytest.mark.parametrize("case", CASES)
def test_a_mixture_loads_strictly_into_the_folded_spec(case):
    model = routed_model(case, THREE_ROUTES)
    x = torch.rand(4, 3, 16, 16)
    for weights in ({"clean": 0.5, "extra": 0.5}, INTERIOR[THREE_ROUTES]):
        mixed = mix_routes(model, weights)
        rebuilt = build_model(fold_spec(model.model_spec))
        rebuilt.load_state_dict(mixed.state_dict())
        with torch.no_grad():
            assert torch.equal(rebuilt.eval()(x), mixed(x))


def test_routes_with_shared_statistics_mix_into_the_mixed_affine():
    model = routed_model("sabn_shared_stats")
    layer = routed_layers(model)[0]
    mixed = mix_routes(model, {"clean": 0.25, "adv": 0.75})
    bn = dict(mixed.named_modules())[next(n for n, m in model.named_modules() if m is layer)]
    clean, adv = layer.route_affine("clean"), layer.route_affine("adv")
    assert torch.allclose(bn.running_mean, layer.stats.running_mean)
    assert torch.allclose(bn.running_var, layer.stats.running_var)
    assert torch.allclose(bn.weight, 0.25 * clean[0] + 0.75 * adv[0], atol=1e-6)
    assert torch.allclose(bn.bias, 0.25 * clean[1] + 0.75 * adv[1], atol=1e-6)


def test_calibrated_ubn_folds_single_routes_but_refuses_a_mixture():
    model = routed_model("ubn")
    calibrated = randomize_norms(create_model("resnet_small", width=4, norm="ubn")).eval()
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(mix_routes(calibrated, {"adv": 1.0})(x), fold_route(calibrated, "adv")(x))
    with pytest.raises(ConfigError, match="calibration gate depends on each sample") as err:
        mix_routes(calibrated, {"clean": 0.5, "adv": 0.5})
    assert "\n" not in str(err.value)
    mix_routes(model, {"clean": 0.5, "adv": 0.5})  # without calibration it mixes


@pytest.mark.parametrize("weights, error, match", [
    ({"clean": 0.5, "adv": 0.6}, ConfigError, "add up to 1, got 1.1"),
    ({"clean": 0.5}, ConfigError, "add up to 1"),
    ({"clean": 1.5, "adv": -0.5}, ConfigError, "non-negative"),
    ({"clean": 0.5, "robust": 0.5}, RouteError, r"unknown route\(s\) \['robust'\]"),
    ({"clean": float("nan"), "adv": 1.0}, ConfigError, "finite number"),
    ({"clean": float("inf"), "adv": 0.0}, ConfigError, "finite number"),
    ({"clean": "0.5", "adv": 0.5}, ConfigError, "finite number"),
    ({"clean": True}, ConfigError, "finite number"),
    ({}, ConfigError, "non-empty mapping"),
    ([("clean", 1.0)], ConfigError, "non-empty mapping"),
])
def test_bad_weights_are_one_line_errors(weights, error, match):
    model = routed_model("sabn")
    with pytest.raises(error, match=match) as err:
        mix_routes(model, weights)
    assert "\n" not in str(err.value)


def test_weights_within_tolerance_of_one_are_accepted_and_normalized():
    model = routed_model("sabn")
    x = torch.rand(2, 3, 16, 16)
    nearly = mix_routes(model, {"clean": 0.5, "adv": 0.5 + 5e-7})
    assert max_diff(nearly(x), mix_routes(model, {"clean": 0.5, "adv": 0.5})(x)) <= 1e-5
    assert torch.equal(mix_routes(model, {"adv": 1 - 5e-7})(x), fold_route(model, "adv")(x))


def test_routes_of_one_layer_with_different_settings_are_refused():
    layer = randomize_norms(DualBatchNorm2d(3)).eval()
    layer.bns["adv"].eps = 1e-3
    with pytest.raises(ConfigError, match="differ in eps, affine or running statistics"):
        mix_routes(nn.Sequential(layer), {"clean": 0.5, "adv": 0.5})


def test_a_model_without_routed_layers_has_nothing_to_mix():
    for model in (create_model("resnet_small", width=4), create_model("resnet_small", width=4, conv="weightalign")):
        with pytest.raises(RouteError, match="no routed layers"):
            mix_routes(model, {"clean": 0.5, "adv": 0.5})


def test_mixture_weights_trade_off_two_routes():
    model = routed_model("sabn", THREE_ROUTES)
    assert mixture_weights(model, 0.25) == {"clean": 0.75, "adv": 0.25}
    assert mixture_weights(model, 1, clean="extra") == {"extra": 0.0, "adv": 1.0}
    for t in (-0.1, 1.5, float("nan"), "0.5", None):
        with pytest.raises(ConfigError, match=r"t must be a number in \[0, 1\]"):
            mixture_weights(model, t)
    with pytest.raises(RouteError, match=r"no route\(s\) \['robust'\]"):
        mixture_weights(model, 0.5, adv="robust")


def test_trade_off_grids_are_exact_decimals():
    assert parse_tradeoffs("0:1:0.1") == [i / 10 for i in range(11)]
    assert parse_tradeoffs("0:1:0.3") == [0.0, 0.3, 0.6, 0.9]
    assert parse_tradeoffs("0.2:0.35:0.05") == [0.2, 0.25, 0.3, 0.35]
    assert parse_tradeoffs("0.5") == [0.5]
    assert parse_tradeoffs("0, 0.25,1") == [0.0, 0.25, 1.0]


@pytest.mark.parametrize("text, match", [
    ("0:1", "start:stop:step"),
    ("a:1:0.1", "'a' in the trade-offs"),
    ("nan", r"must lie in \[0, 1\] .*got 'nan'"),
    ("1e999", r"must lie in \[0, 1\] .*got '1e999'"),
    ("1e-999999999", "at most 9 decimal places"),
    ("0:1:1e-9", "1000000001 points"),
    ("", "'' in the trade-offs"),
    ("0:1:0", "positive step"),
    ("1:0:0.1", "start <= stop"),
    ("0:2:0.5", r"must lie in \[0, 1\] .*got '2'"),
    ("0:1:0.0001", "10001 points"),
    ("0,1.5", r"in \[0, 1\]"),
])
def test_bad_trade_off_grids_are_one_line_errors(text, match):
    with pytest.raises(ConfigError, match=match) as err:
        parse_tradeoffs(text)
    assert "\n" not in str(err.value)


def test_an_exported_mixture_reloads_through_robustbench_with_identical_logits(tmp_path, capsys):
    """Python and the command line: the card and architecture file name the mixture."""
    model = randomize_norms(create_model("resnet_small", width=4, norm="sandwich")).eval()
    weights = {"clean": 0.3, "adv": 0.7}
    path = export(model, "MixedRoutes2026", route=weights, model_dir=tmp_path / "models")
    import_robustbench()
    from robustbench.utils import load_model

    loaded = load_model("MixedRoutes2026", model_dir=tmp_path / "models", dataset="cifar10", threat_model="Linf")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), mix_routes(model, weights)(x))
    assert json.loads(path.with_name("MixedRoutes2026.arch.json").read_text())["route"] == weights
    card = json.loads((tmp_path / "model_info" / "cifar10" / "Linf" / "MixedRoutes2026.json").read_text())
    assert "mixture 0.3 clean + 0.7 adv" in card["architecture"]

    run = write_run_dir(tmp_path / "cli")
    assert main(["export", str(run), "--name", "CliMix2026", "--route-mix", "0.25", "--model-dir",
                 str(tmp_path / "cli" / "models")]) == 0
    arch = tmp_path / "cli" / "models" / "cifar10" / "Linf" / "CliMix2026.arch.json"
    assert json.loads(arch.read_text())["route"] == {"clean": 0.75, "adv": 0.25}
    assert main(["export", str(run), "--name", "CliMix2027", "--route-mix", "0.5", "--route", "adv"]) == 2
    assert "--route and --route-mix" in capsys.readouterr().err


def test_the_mixture_front_evaluates_each_mixture_and_draws_the_pareto_plot(tmp_path):
    from robust_sabn.eval import EvalSettings, evaluate
    from robust_sabn.eval.front import dominating, mixture_front, oracle_point, write_front

    model = randomize_norms(create_model("resnet_small", width=4, norm="sandwich")).eval()
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad(), use_route(model, "clean"):
        y = model(x).argmax(1)
    settings = EvalSettings(attack="pgd-2", batch_size=4, progress=False)
    points = mixture_front(model, x, y, [0.0, 0.5, 1.0], settings, routes=("clean", "adv"))
    assert [p.t for p in points] == [0.0, 0.5, 1.0] and points[0].report.clean_acc == 1.0
    for point, route in ((points[0], "clean"), (points[2], "adv")):  # the ends are the folded routes
        end = evaluate(fold_route(model, route), x, y, settings)
        assert point.report.per_image == end.per_image and point.report.robust_acc == end.robust_acc
    routed = evaluate(model, x, y, settings, route="adv")  # the evaluation's own oracle protocol
    assert oracle_point(points) == (routed.protocols["oracle routing"].clean_acc, routed.robust_acc)
    better = [p for p in points[:2] if p.report.clean_acc > points[2].report.clean_acc
              and p.report.robust_acc >= points[2].report.robust_acc - 0.01]
    assert dominating(points) == better
    paths = write_front(points, tmp_path / "front", "clean", "adv")
    assert paths[2].read_bytes()[:4] == b"\x89PNG"
    data = json.loads(paths[0].read_text())
    assert [m["weights"] for m in data["mixtures"]][1] == {"clean": 0.5, "adv": 0.5}
    assert "oracle routing" in paths[1].read_text()


@pytest.mark.slow
def test_eval_route_mix_writes_the_front_and_resumes_after_an_interruption(tmp_path, capsys, monkeypatch):
    from robust_sabn.eval import front

    run = write_run_dir(tmp_path, n_test=8, labelled=True)
    args = ["eval", str(run), "--route-mix", "0:1:0.5", "--attack", "pgd-2", "--batch-size", "4", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole.json").read_text())
    assert [m["t"] for m in whole["mixtures"]] == [0.0, 0.5, 1.0] and (tmp_path / "whole.png").is_file()
    assert main(["eval", str(run), "--route", "adv", "--attack", "pgd-2", "--batch-size", "4", "--no-progress",
                 "--out", str(tmp_path / "adv")]) == 0
    adv = json.loads((tmp_path / "adv.json").read_text())
    mixture = whole["mixtures"][2]["report"]["per_image"]  # a plain model: no clean route to score
    assert mixture == {key: adv["per_image"][key] for key in ("correct", "robust")}
    assert whole["oracle_routing"]["robust_acc"] == adv["robust_acc"]

    real, calls = front.evaluate, []

    def interrupted(*a, **kw):  # killed while evaluating the last mixture
        calls.append(kw["state_dir"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)
    monkeypatch.setattr(front, "evaluate", interrupted)
    assert main([*args, "--out", str(tmp_path / "again")]) == 130  # Ctrl-C
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "again.state").iterdir()) == ["t-0", "t-0.5"]
    assert main([*args, "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert [m["report"]["time"]["resumed_batches"] for m in again["mixtures"]] == [2, 2, 0]
    for a, b in zip(whole["mixtures"], again["mixtures"]):
        assert a["report"]["per_image"] == b["report"]["per_image"]
    assert not (tmp_path / "again.state").exists()


@pytest.mark.parametrize("extra, match", [
    (["--eps-sweep", "0,1/255"], "drop --eps-sweep"),
    (["--route-mix", "0:2:0.5"], "must lie in [0, 1]"),
    (["--route-mix", "1e999"], "must lie in [0, 1]"),
])
def test_bad_route_mix_input_is_one_line_and_exit_two(tmp_path, capsys, extra, match):
    run = write_run_dir(tmp_path)
    args = ["eval", str(run), "--attack", "pgd-2", "--no-progress", *extra]
    if "--route-mix" not in extra:
        args += ["--route-mix", "0:1:0.5"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err


def test_route_mix_of_a_model_without_routes_is_one_line_and_exit_two(tmp_path, capsys):
    run = write_fitted_run_dir(tmp_path)
    assert main(["eval", str(run), "--route-mix", "0:1:0.5", "--attack", "pgd-2", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no routed layers, so there are no routes to mix" in err and "\n" not in err


# ----------------------------------------------------------------------------------------- recalibration
def test_recalibration_re_estimates_the_statistics_on_the_images_a_share_t_of_them_attacked(monkeypatch):
    from robust_sabn.eval import recalibration as module
    from robust_sabn.eval.recalibration import Recalibration

    model = randomize_norms(create_model("resnet_small", width=4, norm="sandwich")).eval()
    mixed = mix_routes(model, {"clean": 0.5, "adv": 0.5})
    before = copy.deepcopy(mixed.state_dict())
    x, y = torch.rand(12, 3, 32, 32), torch.randint(0, 10, (12,))
    recalibrate = Recalibration(x, y, Threat(), batch_size=12)
    seen = []
    real = module.update_bn
    monkeypatch.setattr(module, "update_bn", lambda batches, m, **kw: (seen.extend(batches), real(batches, m, **kw)))
    out = recalibrate(mixed, 0.25)
    assert len(seen) == 1 and recalibrate.attacked(0.25) == 3
    images = seen[0]
    assert not torch.equal(images[:3], x[:3]) and torch.equal(images[3:], x[3:])  # the first 3 attacked
    assert (images[:3] - x[:3]).abs().max() <= 8 / 255 + 1e-6
    assert mixed.state_dict().keys() == out.state_dict().keys() and not out.training
    for key, value in mixed.state_dict().items():  # the model given is left alone
        assert torch.equal(value, before[key]), key
    with torch.no_grad():  # the first BN sees the first convolution's output: its statistics over these images
        features = out.conv1(out.normalize(images))
    assert torch.allclose(out.bn1.running_mean, features.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(out.bn1.running_var, features.transpose(0, 1).flatten(1).var(1), rtol=1e-4)
    assert not torch.allclose(out.bn1.running_mean, mixed.bn1.running_mean)
    for name, p in out.named_parameters():  # the affine parameters stay
        assert torch.equal(p, mixed.state_dict()[name]), name
    again = recalibrate(mixed, 0.25)  # seeded: the same statistics again
    assert all(torch.equal(a, b) for a, b in zip(out.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ConfigError, match="plain model"):
        recalibrate(model, 0.5)


def test_eval_and_export_recalibrate_the_mixtures_strictly_between_the_routes(tmp_path, capsys, monkeypatch):
    from robust_sabn.eval import front
    from robust_sabn.eval.recalibration import training_recalibration
    from robust_sabn.model_files import load_trained_model

    def same_state(a: nn.Module, b: nn.Module) -> bool:
        return all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())

    run = write_run_dir(tmp_path, n_test=8, labelled=True)
    loaded = load_trained_model(run)
    expected = training_recalibration(loaded, 8, loaded.threat())(
        mix_routes(loaded.model, {"clean": 0.5, "adv": 0.5}), 0.5)
    args = ["eval", str(run), "--route-mix", "0:1:0.5", "--attack", "pgd-2", "--batch-size", "4", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    evaluated, real = [], front.evaluate
    monkeypatch.setattr(front, "evaluate", lambda model, *a, **kw: (evaluated.append(model), real(model, *a, **kw))[1])
    assert main([*args, "--recalibrate", "8", "--out", str(tmp_path / "recal")]) == 0
    monkeypatch.undo()
    assert same_state(evaluated[1], expected)  # the mixture between the routes is the recalibrated one
    for model, route in ((evaluated[0], "clean"), (evaluated[2], "adv")):  # the routes stay as trained
        assert same_state(model, fold_route(loaded.model, route))
    plain, recal = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("plain", "recal"))
    assert plain["recalibration"] is None and recal["recalibration"]["images"] == 8
    assert "0 < t < 1): BN statistics re-estimated on 8 training images" in (tmp_path / "recal.md").read_text()

    models = tmp_path / "models"
    assert main(["export", str(run), "--name", "Recal2026", "--route-mix", "0.5", "--recalibrate", "8",
                 "--model-dir", str(models)]) == 0
    weights = models / "cifar10" / "Linf" / "Recal2026.pt"
    assert "8 training images, 4 of them PGD-5" in json.loads(weights.with_name("Recal2026.arch.json").read_text())[
        "note"]
    assert same_state(load_trained_model(weights).model, expected)

    capsys.readouterr()
    torch.save(torch.load(run / "last.pt", weights_only=True)["model"], tmp_path / "bare.pt")
    bare = ["eval", str(tmp_path / "bare.pt"), "--model", "resnet_small", "--model-kwargs",
            '{"width": 4, "norm": "sandwich"}', *args[2:], "--recalibrate", "8"]
    for argv, match in ((["eval", str(run), "--attack", "pgd-2", "--recalibrate", "8"], "use it with --route-mix"),
                        (bare, "does not record the dataset it was trained on"),
                        (["export", str(run), "--name", "Recal2027", "--route-mix", "1", "--recalibrate", "8",
                          "--model-dir", str(models)], "strictly between the routes"),
                        ([*args, "--recalibrate", "0"], "--recalibrate must be an integer in [1, 100000000], got 0")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert match in err and "\n" not in err
