"""Attacks: they lower accuracy, stay in the threat model, honour routes and BN modes, leave the model as
they found it, compute only input gradients, and agree with torchattacks' reference implementations."""
import copy
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from fake_data import pattern_task

from robust_sabn import ConfigError, RouteError, create_model, fold_route, set_route, split_routes, use_route
from robust_sabn.attacks import FGSM, PGD, TradesPGD
from robust_sabn.memory_format import channels_last_hazards
from robust_sabn.nn import routed_layers

NUM_CLASSES = 4


@pytest.fixture(scope="module")
def trained():
    """A SaBN resnet_small trained on both routes for a few steps, whose adv route affines then differ."""
    torch.manual_seed(0)
    x, y = pattern_task(256, seed=1)
    model = create_model("resnet_small", num_classes=NUM_CLASSES, norm="sandwich", in_channels=1, width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(30):
        i = torch.randint(0, len(x), (64,))
        with split_routes(model, clean=64, adv=64):
            loss = F.cross_entropy(model(torch.cat([x[i], x[i]])), torch.cat([y[i], y[i]]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        for layer in routed_layers(model):
            layer.route_weight[1].mul_(1.03)
            layer.route_bias[1].add_(0.02)
    model.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture
def data():
    return pattern_task(64, seed=2)


def accuracy(model, x, y, route=None):
    with torch.no_grad(), use_route(model, route) if route else nullcontext():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("route", ["clean", "adv"])
def test_pgd_cuts_accuracy(trained, data, route):
    x, y = data
    assert accuracy(trained, x, y, route) >= 0.9
    adv = PGD(trained, eps=0.1, alpha=0.025, steps=10, route=route)(x, y)
    assert accuracy(trained, adv, y, route) <= 0.2


def test_fgsm_lowers_accuracy(trained, data):
    x, y = data
    adv = FGSM(trained, eps=0.1, route="adv")(x, y)
    assert accuracy(trained, adv, y, "adv") <= accuracy(trained, x, y, "adv") - 0.3


def test_pgd_on_plain_model(trained, data):
    x, y = data
    plain = fold_route(trained, "adv")
    adv = PGD(plain, eps=0.1, alpha=0.025, steps=10)(x, y)
    assert accuracy(plain, x, y) >= 0.9 and accuracy(plain, adv, y) <= 0.2


@pytest.mark.parametrize("norm,eps", [("Linf", 0.1), ("L2", 0.5)])
def test_perturbation_within_ball_and_unit_box(trained, norm, eps):
    x, y = pattern_task(32, seed=3)
    x[:8] = x[:8].round()  # pixels sitting on the box edges 0 and 1
    adv = PGD(trained, eps=eps, alpha=eps / 2, steps=3, norm=norm, route="adv")(x, y)
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
    assert size.max() <= eps + 1e-6
    assert size.max() >= 0.5 * eps  # it did move
    assert adv.min() >= 0 and adv.max() <= 1


def test_route_is_honoured_and_equals_folded_model(trained, data):
    x, y = data
    advs = {}
    for route in ("clean", "adv"):
        advs[route] = PGD(trained, eps=0.1, alpha=0.01, steps=3, random_start=False, route=route)(x, y)
        folded = PGD(fold_route(trained, route), eps=0.1, alpha=0.01, steps=3, random_start=False)(x, y)
        torch.testing.assert_close(advs[route], folded, rtol=0, atol=1e-6)
    assert (advs["clean"] - advs["adv"]).abs().max() > 0.01


def running_stats(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_bn_mode_eval_keeps_and_train_updates_running_stats(trained, data):
    x, y = data
    before = running_stats(trained)
    PGD(trained, eps=0.1, alpha=0.025, steps=2, route="adv")(x, y)
    after_eval = running_stats(trained)
    assert all(torch.equal(before[k], after_eval[k]) for k in before)

    model = create_model("resnet_small", num_classes=NUM_CLASSES, norm="sandwich", in_channels=1, width=4)
    before = running_stats(model)
    PGD(model, eps=0.1, alpha=0.025, steps=2, route="adv", bn_mode="train")(x, y)
    after = running_stats(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".adv." in k for k in changed)  # only the attacked route's statistics
    assert any(".adv.running_mean" in k for k in changed)


def test_modes_and_route_restored(trained, data):
    x, y = data
    model = copy.deepcopy(trained).train()
    model.layers[0].eval()  # a frozen part: its flag must come back as it was, not as the root's
    modes = {name: m.training for name, m in model.named_modules()}
    set_route(model, "clean")
    for bn_mode in ("eval", "train"):
        PGD(model, eps=0.1, alpha=0.025, steps=1, route="adv", bn_mode=bn_mode)(x, y)
        assert {name: m.training for name, m in model.named_modules()} == modes
        assert all(layer.route == "clean" and layer.split is None for layer in routed_layers(model))
    with pytest.raises(ValueError):
        PGD(model, route="adv")(x, y[:3])  # wrong label count fails inside the attack
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(layer.route == "clean" for layer in routed_layers(model))


def test_only_input_gradients(trained, data):
    x, y = data
    model = copy.deepcopy(trained)
    calls = []
    for p in model.parameters():
        p.register_hook(lambda g: calls.append(1))
    PGD(model, eps=0.1, alpha=0.025, steps=2, route="adv")(x, y)
    FGSM(model, eps=0.1, route="clean", bn_mode="train")(x, y)
    assert not calls  # autograd never computed a weight gradient
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.channels_last
def test_attacks_on_a_channels_last_model_take_no_weight_gradient_and_agree_with_nchw(trained, data):
    """This model has a convolution whose channels_last weight gradient oneDNN gets wrong on the CPU (oneDNN issue
    6035); attacks never ask for weight gradients, so they can attack it in channels_last."""
    x, y = data
    assert channels_last_hazards(trained)
    nhwc = copy.deepcopy(trained).to(memory_format=torch.channels_last)
    calls = []
    for p in nhwc.parameters():
        p.register_hook(lambda g: calls.append(1))
    torch.manual_seed(3)
    adv = PGD(nhwc, eps=0.1, alpha=0.025, steps=5, route="adv")(x.contiguous(memory_format=torch.channels_last), y)
    torch.manual_seed(3)
    reference = PGD(trained, eps=0.1, alpha=0.025, steps=5, route="adv")(x, y)
    assert not calls
    assert torch.allclose(adv, reference, atol=1e-6)
    assert accuracy(trained, adv, y, route="adv") <= 0.3


def test_works_under_no_grad(trained, data):
    x, y = data
    with torch.no_grad():
        adv = PGD(trained, eps=0.1, alpha=0.025, steps=2, route="adv")(x, y)
    assert (adv - x).abs().max() > 0.05


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_linf_agrees_with_torchattacks(trained, data, random_start):
    x, y = data
    set_route(trained, "adv")
    try:
        torch.manual_seed(5)
        ref = torchattacks.PGD(trained, eps=0.1, alpha=0.02, steps=5, random_start=random_start)(x, y)
    finally:
        set_route(trained, None)
    torch.manual_seed(5)
    ours = PGD(trained, eps=0.1, alpha=0.02, steps=5, random_start=random_start, route="adv")(x, y)
    assert torch.equal(ours, ref)


def test_pgd_l2_and_fgsm_agree_with_torchattacks(trained, data):
    x, y = data
    set_route(trained, "adv")
    try:
        torch.manual_seed(6)
        ref_l2 = torchattacks.PGDL2(trained, eps=0.5, alpha=0.1, steps=4)(x, y)
        torch.manual_seed(7)
        ref_fgsm = torchattacks.PGD(trained, eps=0.1, alpha=0.125, steps=1)(x, y)
    finally:
        set_route(trained, None)
    torch.manual_seed(6)
    ours_l2 = PGD(trained, eps=0.5, alpha=0.1, steps=4, norm="L2", route="adv")(x, y)
    torch.manual_seed(7)
    ours_fgsm = FGSM(trained, eps=0.1, route="adv")(x, y)
    assert torch.equal(ours_l2, ref_l2)
    assert torch.equal(ours_fgsm, ref_fgsm)


def test_torchattacks_attacks_run_on_a_routed_model_with_a_fixed_route(trained, data):
    x, y = data
    model = set_route(copy.deepcopy(trained), "adv")
    attacks = (torchattacks.APGD(model, eps=0.1, steps=10, seed=0), torchattacks.MIFGSM(model, eps=0.1, alpha=0.025))
    for attack in attacks:
        adv = attack(x, y)
        assert accuracy(model, adv, y) <= 0.2, type(attack).__name__
    assert all(layer.route == "adv" for layer in routed_layers(model))


def test_torchattacks_contract(trained, data):
    """Targeted mode and torchattacks' MultiAttack work with our attacks."""
    x, y = data
    target = (y + 1) % NUM_CLASSES
    attack = PGD(trained, eps=0.2, alpha=0.05, steps=10, route="adv")
    attack.set_mode_targeted_by_label(quiet=True)
    adv = attack(x, target)
    with torch.no_grad(), use_route(trained, "adv"):
        assert (trained(adv).argmax(1) == target).float().mean() >= 0.8
    multi = torchattacks.MultiAttack([FGSM(trained, eps=0.1), PGD(trained, eps=0.1)])
    with use_route(trained, "adv"):  # MultiAttack runs the model itself to pick the successful attack
        adv = multi(x, y)
    assert (adv - x).abs().max() <= 0.1 + 1e-6


@pytest.mark.parametrize("kwargs,error", [
    ({"eps": -0.1}, ConfigError),
    ({"eps": 1.5}, ConfigError),
    ({"alpha": 0.0}, ConfigError),
    ({"alpha": -1.0}, ConfigError),
    ({"steps": 0}, ConfigError),
    ({"steps": 2.5}, ConfigError),
    ({"norm": "L1"}, ConfigError),
    ({"bn_mode": "frozen"}, ConfigError),
    ({"route": "dirty"}, RouteError),
])
def test_bad_arguments(trained, kwargs, error):
    with pytest.raises(error, match="|".join(kwargs)):
        PGD(trained, **kwargs)


def test_l2_eps_above_one_allowed_and_fgsm_validates(trained):
    assert PGD(trained, eps=2.0, norm="L2").eps == 2.0
    assert FGSM(trained, eps=0.1).alpha == pytest.approx(0.125)
    with pytest.raises(ConfigError):
        FGSM(trained, eps=-0.1)


def test_trades_pgd_raises_divergence_within_ball(trained, data):
    x, _ = data
    with torch.no_grad(), use_route(trained, "clean"):
        reference = F.softmax(trained(x), dim=1)

    def divergence(images):
        with torch.no_grad(), use_route(trained, "adv"):
            return F.kl_div(F.log_softmax(trained(images), dim=1), reference, reduction="batchmean").item()

    torch.manual_seed(0)
    adv = TradesPGD(trained, eps=0.1, alpha=0.025, steps=5, route="adv", reference_route="clean")(x)
    assert (adv - x).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert divergence(adv) > divergence(x) + 0.5
    torch.manual_seed(0)
    same_route = TradesPGD(trained, eps=0.1, alpha=0.025, steps=5, route="adv")(x)
    assert not torch.equal(adv, same_route)  # the reference route matters
    with pytest.raises(RouteError):
        TradesPGD(trained, reference_route="dirty")


def test_routed_model_without_route_names_the_fix(trained, data):
    x, y = data
    with pytest.raises(RouteError, match="use_route"):
        PGD(trained)(x, y)


def confident_net():
    """A small conv net that puts every input in class 3 with a huge margin: float32 input gradients ~1e-22."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10))
    with torch.no_grad():
        net[-1].bias[3] = 40.0
    return net.eval()


@pytest.mark.parametrize("loss", ["cross-entropy", "targeted"])
def test_float16_autocast_keeps_the_float32_ascent_directions(loss):
    """Under fp16 autocast the input gradients of confident samples underflowed to exactly zero (sign 0: PGD did
    not move them); now each sample's gradient has float32's direction, up to rounding."""
    net = confident_net()
    x = torch.rand(16, 3, 12, 12)
    adversary = PGD(net, eps=8 / 255)
    y, target = torch.full((16,), 3), torch.full((16,), 5) if loss == "targeted" else None
    with torch.no_grad():
        assert (net(x).argmax(1) == 3).all()
    reference = adversary.input_gradient(x, y, target).flatten(1)
    with torch.autocast("cpu", dtype=torch.float16):
        half = adversary.input_gradient(x, y, target).flatten(1)
    assert (half != 0).float().mean() > 0.99
    reference, half = (F.normalize(g.double(), dim=1, eps=0.0) for g in (reference, half))  # norms are ~1e-22
    assert (half * reference).sum(1).min() > 0.95


@pytest.mark.parametrize("make", [lambda net: PGD(net, eps=8 / 255, steps=2, bn_mode="train"),
                                  lambda net: TradesPGD(net, eps=8 / 255, steps=2)], ids=["bn-train", "trades"])
def test_float16_autocast_attacks_in_float32_where_float16_cannot_keep_the_directions(make):
    """BN in train mode couples the samples through the batch statistics, and TRADES' KL compares two predictions
    closer than float16's rounding: these attacks leave fp16 autocast and give float32's adversarials."""
    net = confident_net()
    x, y = torch.rand(16, 3, 12, 12), torch.full((16,), 3)
    torch.manual_seed(1)
    reference = make(net)(x, y)
    with torch.autocast("cpu", dtype=torch.float16):
        torch.manual_seed(1)
        assert torch.equal(make(net)(x, y), reference)
