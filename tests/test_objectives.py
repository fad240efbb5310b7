"""Training objectives: hybrid's fused forward equals two separate forwards, every objective lowers its loss,
routes are used as documented, TRADES matches its reference formulation, the model stays in train mode."""
import copy

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from fake_data import pattern_task

from robust_sabn import ConfigError, create_model, use_route
from robust_sabn.attacks import PGD
from robust_sabn.nn import routed_layers
from robust_sabn.threat import Threat
from robust_sabn.training.objectives import OBJECTIVES, StepOutput

EPS, STEP, STEPS = 0.05, 0.02, 3


def make_model(norm="sandwich", width=4):
    torch.manual_seed(0)
    return create_model("resnet_small", num_classes=4, norm=norm, in_channels=1, width=width).train()


def objective(name, eps=EPS, norm="Linf", **kwargs):
    settings = dict(step_size=0.0625 if name == "fast" else STEP, steps=STEPS) | kwargs
    return OBJECTIVES[name](threat=Threat(norm, eps), **settings)


@pytest.fixture
def data():
    return pattern_task(32, seed=1)


def stats(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}


def test_registry():
    assert set(OBJECTIVES) == {"madry", "hybrid", "trades", "fast", "mart"}
    with pytest.raises(ConfigError, match="registered already"):
        OBJECTIVES.register("madry", OBJECTIVES["hybrid"])


def test_hybrid_equals_two_separate_forwards(data):
    x, y = data
    model, reference = make_model(), make_model()
    calls = []
    model.conv1.register_forward_hook(lambda *_: calls.append(1))
    torch.manual_seed(1)
    out = objective("hybrid")(model, x, y)
    out.loss.backward()
    assert len(calls) == STEPS + 1  # the attack's steps, then ONE forward for both halves

    torch.manual_seed(1)
    x_adv = PGD(reference, EPS, STEP, STEPS, route="adv")(x, y)
    with use_route(reference, "clean"):
        clean_logits = reference(x)
    with use_route(reference, "adv"):
        adv_logits = reference(x_adv)
    loss = (F.cross_entropy(clean_logits, y) + F.cross_entropy(adv_logits, y)) / 2
    loss.backward()

    torch.testing.assert_close(out.loss, loss, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.clean_logits, clean_logits.detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.adv_logits, adv_logits.detach(), rtol=0, atol=1e-5)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    ref_stats = stats(reference)
    for key, value in stats(model).items():
        torch.testing.assert_close(value, ref_stats[key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.parametrize("name", ["madry", "hybrid", "trades", "fast", "mart"])
def test_loss_decreases(data, name):
    x, y = data
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = objective(name)
    losses = []
    for _ in range(10):
        out = loss_fn(model, x, y)
        assert isinstance(out, StepOutput) and out.loss.dim() == 0 and out.loss.requires_grad
        assert out.adv_logits.shape == out.clean_logits.shape == (len(x), 4)
        assert not out.adv_logits.requires_grad and not out.clean_logits.requires_grad
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert sum(losses[-3:]) < 0.85 * sum(losses[:3]), losses


@pytest.mark.parametrize("name,trains_clean", [("madry", False), ("fast", False), ("hybrid", True), ("trades", True),
                                               ("mart", True)])
def test_routes_used_as_documented(data, name, trains_clean):
    x, y = data
    model = make_model()
    before = stats(model)
    objective(name)(model, x, y).loss.backward()
    for layer in routed_layers(model):
        clean, adv = layer.route_weight.grad.abs().sum(1)
        assert adv > 0
        assert (clean > 0) == trains_clean
    changed = {k.split(".")[-2] for k, v in stats(model).items() if not torch.equal(v, before[k])}
    assert changed == ({"clean", "adv"} if trains_clean else {"adv"})  # madry/fast's logging forward is eval-mode


@pytest.mark.parametrize("name", ["madry", "hybrid", "trades", "fast", "mart"])
@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_model_left_in_train_mode_without_route(data, name, bn_mode):
    x, y = data
    model = make_model()
    model.layers[1].eval()  # a frozen part stays frozen
    modes = {n: m.training for n, m in model.named_modules()}
    objective(name, bn_mode=bn_mode)(model, x, y)
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(layer.route is None and layer.split is None for layer in routed_layers(model))


def test_madry_clean_logits_are_an_eval_forward_through_the_adv_route(data):
    x, y = data
    model = make_model()
    out = objective("madry")(model, x, y)
    with torch.no_grad(), use_route(model, "adv"):
        expected = copy.deepcopy(model).eval()(x)
    torch.testing.assert_close(out.clean_logits, expected, rtol=0, atol=1e-6)


def test_trades_matches_reference_on_plain_model(data):
    """TRADES as Zhang et al. wrote it: KL-PGD from x + 0.001 N(0,1) in eval mode, then two train-mode forwards."""
    x, y = data
    x = x.clamp(0.01, 0.99)
    beta = 3.0
    model, reference = make_model("bn"), make_model("bn")
    torch.manual_seed(2)
    out = objective("trades", beta=beta)(model, x, y)

    torch.manual_seed(2)
    reference.eval()
    with torch.no_grad():
        p_natural = F.softmax(reference(x), dim=1)
    x_adv = x + 0.001 * torch.randn_like(x)
    for _ in range(STEPS):
        x_adv.requires_grad_(True)
        kl = F.kl_div(F.log_softmax(reference(x_adv), dim=1), p_natural, reduction="sum")
        grad = torch.autograd.grad(kl, x_adv)[0]
        x_adv = torch.min(torch.max(x_adv.detach() + STEP * grad.sign(), x - EPS), x + EPS).clamp(0, 1)
    reference.train()
    logits = reference(x)
    robust = F.kl_div(F.log_softmax(reference(x_adv), dim=1), F.softmax(logits, dim=1), reduction="batchmean")
    loss = F.cross_entropy(logits, y) + beta * robust
    torch.testing.assert_close(out.loss, loss, rtol=1e-5, atol=1e-6)


def test_objectives_through_ddp(data, tmp_path):
    """One-process gloo DDP: attacks run on the inner module, the loss forward(s) through the wrapper."""
    x, y = data
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        for norm in ("sandwich", "bn"):
            model = torch.nn.parallel.DistributedDataParallel(make_model(norm))
            for name in ("hybrid", "madry", "trades"):
                model.zero_grad()
                objective(name)(model, x, y).loss.backward()
                assert all(p.grad is not None for p in model.parameters())
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name,kwargs,match", [
    ("pgd", {}, "madry"),
    ("madry", {"eps": 2.0}, "eps"),
    ("madry", {"step_size": 0.0}, "step_size"),
    ("hybrid", {"steps": 0}, "steps"),
    ("hybrid", {"norm": "L3"}, "threat model"),
    ("trades", {"beta": -1.0}, "beta"),
    ("fast", {"norm": "L2"}, "Linf"),
    ("madry", {"bn_mode": "frozen"}, "bn_mode"),
])
def test_bad_settings(name, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        objective(name, **kwargs)
