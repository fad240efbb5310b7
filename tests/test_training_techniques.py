"""The techniques of the RobustBench-era recipes: EMA of the weights, AWP, MART, label smoothing, cosine and one-cycle
schedules, extra data mixed into every batch; each against a from-scratch formula, and resume and the loader with
them on."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fake_data import pattern_task, write_fashion_mnist

from robust_sabn import ConfigError, Threat, create_model, use_route
from robust_sabn.cli import main
from robust_sabn.data import ImageTensors, fixed_subset, load_dataset, read_image_npz, write_image_npz
from robust_sabn.io import load_checkpoint
from robust_sabn.model_files import load_trained_model
from robust_sabn.nn import routed_layers
from robust_sabn.training import loop
from robust_sabn.training.awp import WeightPerturbation, perturbed_parameters
from robust_sabn.training.batches import BatchPlan
from robust_sabn.training.config import TrainConfig
from robust_sabn.training.ema import WeightAverage, ema_decay
from robust_sabn.training.holdout import write_heldout
from robust_sabn.training.loop import train
from robust_sabn.training.objectives import OBJECTIVES
from robust_sabn.training.optim import lr_factor
from robust_sabn.training.run_dir import resume_config

pytestmark = pytest.mark.usefixtures("one_thread")

EPS, STEP = 0.05, 0.02


def small_model(norm="sandwich"):
    torch.manual_seed(0)
    return create_model("resnet_small", num_classes=4, norm=norm, in_channels=1, width=4).train()


def sgd_steps(model, data, steps):
    """``steps`` plain SGD steps of clean CE through both routes; yields after each."""
    x, y = data
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(steps):
        with use_route(model, "clean"):
            loss = F.cross_entropy(model(x), y)
        with use_route(model, "adv"):
            loss = loss + F.cross_entropy(model(x + 0.01), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        yield


# -- EMA --------------------------------------------------------------------------------------------------------

def test_ema_decay_copies_during_warmup_then_ramps_up_to_the_decay():
    assert [ema_decay(s, 0.995, warmup_steps=3) for s in range(3)] == [0.0, 0.0, 0.0]
    assert ema_decay(3, 0.995, 3) == pytest.approx(1 / 10) and ema_decay(5, 0.995, 3) == pytest.approx(3 / 12)
    assert ema_decay(10_000, 0.995, 3) == 0.995


def test_ema_after_k_steps_is_the_closed_form_average_of_every_routes_weights():
    model, data = small_model(), pattern_task(16, seed=1)
    ema = WeightAverage(model, decay=0.8, warmup_steps=2)
    start = [p.detach().double().clone() for p in model.parameters()]
    history = []
    for step, _ in enumerate(sgd_steps(model, data, 7)):
        ema.update(model, step)
        history.append([p.detach().double().clone() for p in model.parameters()])
    # ema_k = prod(d_i) * ema_0 + sum_j (1 - d_j) prod_{i > j} d_i * w_j
    decays = [ema_decay(s, 0.8, 2) for s in range(7)]
    for index, (name, p) in enumerate(ema.model.named_parameters()):
        expected = math.prod(decays) * start[index]
        for j, weights in enumerate(history):
            expected = expected + (1 - decays[j]) * math.prod(decays[j + 1:]) * weights[index]
        torch.testing.assert_close(p.double(), expected, rtol=1e-5, atol=1e-6, msg=name)
    names = [name for name, _ in ema.model.named_parameters()]
    assert any("route_weight" in name for name in names)  # the routes' own affines are among those checked
    assert not torch.equal(ema.model.state_dict()["linear.weight"], model.state_dict()["linear.weight"])


def test_ema_copies_every_routes_running_statistics_from_the_live_model():
    model, data = small_model(), pattern_task(16, seed=1)
    ema = WeightAverage(model, decay=0.9)
    initial = {k: v.clone() for k, v in ema.model.state_dict().items() if "running" in k}
    for step, _ in enumerate(sgd_steps(model, data, 3)):
        ema.update(model, step)
    assert all(torch.equal(v, ema.model.state_dict()[k]) for k, v in initial.items())  # updates leave buffers alone
    averaged = ema.copy_buffers(model)
    live = model.state_dict()
    routes = set()
    for key, value in averaged.state_dict().items():
        if "running" in key:
            routes.add(key.split(".")[-2])
            assert torch.equal(value, live[key]) and not torch.equal(value, initial[key]), key
    assert routes == {"clean", "adv"}


# -- AWP --------------------------------------------------------------------------------------------------------

def test_awp_perturbs_the_shared_weights_only():
    model = small_model()
    routed = {id(p) for layer in routed_layers(model) for p in layer.parameters()}
    chosen = perturbed_parameters(model)
    names = [n for n, p in model.named_parameters() if any(p is q for q in chosen)]
    assert names and all(n.endswith("weight") and "norm" not in n and "bn" not in n for n in names), names
    assert not routed & {id(p) for p in chosen}
    assert {id(p) for p in chosen} == {id(m.weight) for m in model.modules()
                                       if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}


@pytest.mark.parametrize("name", ["madry", "hybrid", "trades", "mart"])
def test_awp_step_is_plain_sgd_on_the_perturbed_loss_then_the_perturbation_is_removed(name):
    x, y = pattern_task(16, seed=1)
    model = small_model()
    objective = OBJECTIVES[name](threat=Threat("Linf", EPS), step_size=STEP, steps=2)
    x_adv = objective.adversarial(model, x, y)
    reference = copy.deepcopy(model)
    buffers = [b.clone() for b in model.buffers()]

    gamma, lr, wd = 0.01, 0.1, 5e-4
    awp = WeightPerturbation(gamma)
    perturbation = awp.find(model, lambda: objective.loss(model, x, x_adv, y, log=False).loss)
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))  # the ascent forward left no trace
    awp.apply(model, perturbation)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd)
    optimizer.zero_grad()
    objective.loss(model, x, x_adv, y).loss.backward()
    optimizer.step()
    awp.apply(model, perturbation, sign=-1.0)

    # from scratch: v = gamma * ||w|| * g / ||g|| per conv/linear weight, g = grad of the loss at w; then SGD at w + v
    def layer_weights(net):
        return [m.weight for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]

    shared = layer_weights(reference)
    probe = copy.deepcopy(reference)
    grads = torch.autograd.grad(objective.loss(probe, x, x_adv, y).loss, layer_weights(probe))
    v = [gamma * w.detach().norm() * g / g.norm() for w, g in zip(shared, grads)]
    with torch.no_grad():
        for w, d in zip(shared, v):
            w.add_(d)
    reference.zero_grad()
    objective.loss(reference, x, x_adv, y).loss.backward()
    with torch.no_grad():
        for p in reference.parameters():
            if p.grad is not None:  # madry: the clean route's own parameters get no gradient, SGD skips them
                p.sub_(lr * (p.grad + wd * p))
        for w, d in zip(shared, v):
            w.sub_(d)
    for (key, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=key)


# -- MART and label smoothing -------------------------------------------------------------------------------------

def test_mart_matches_its_formula_with_the_clean_route_for_natural_logits():
    x, y = pattern_task(16, seed=1)
    model, beta, smoothing = small_model(), 5.0, 0.1
    mart = OBJECTIVES["mart"](threat=Threat("Linf", EPS), step_size=STEP, steps=2, beta=beta, label_smoothing=smoothing)
    x_adv = mart.adversarial(model, x, y)
    reference = copy.deepcopy(model)
    out = mart.loss(model, x, x_adv, y)

    with use_route(reference, "clean"):
        natural = reference(x)
    with use_route(reference, "adv"):
        adversarial = reference(x_adv)
    p_adv, p_nat = adversarial.softmax(1), natural.softmax(1)
    ranked = p_adv.argsort(1)
    wrong = torch.where(ranked[:, -1] == y, ranked[:, -2], ranked[:, -1])
    target = torch.full_like(p_adv, smoothing / 4).scatter_(1, y[:, None], 1 - smoothing + smoothing / 4)
    smoothed_ce = -(target * adversarial.log_softmax(1)).sum(1).mean()
    boosted = smoothed_ce - torch.log(1.0001 - p_adv.gather(1, wrong[:, None]) + 1e-12).mean()
    kl = (p_nat * (torch.log(p_nat) - torch.log(p_adv + 1e-12))).sum(1)
    loss = boosted + beta * (kl * (1.0000001 - p_nat.gather(1, y[:, None]).squeeze(1))).mean()
    torch.testing.assert_close(out.loss, loss, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["madry", "hybrid", "trades"])
def test_label_smoothing_smooths_the_training_cross_entropies(name):
    x, y = pattern_task(16, seed=1)
    model, s = small_model("bn"), 0.2
    plain = OBJECTIVES[name](threat=Threat("Linf", EPS), step_size=STEP, steps=2)
    smooth = OBJECTIVES[name](threat=Threat("Linf", EPS), step_size=STEP, steps=2, label_smoothing=s)
    x_adv = plain.adversarial(model, x, y)
    model.eval()  # fixed statistics: both losses see the logits computed here
    with torch.no_grad():
        clean_logits, adv_logits = model(x), model(x_adv)

    def smoothed(logits):  # -sum_c q_c log p_c, q = (1 - s) one-hot + s / C
        q = (1 - s) * F.one_hot(y, 4) + s / 4
        return -(q * logits.log_softmax(1)).sum(1).mean()

    difference = smooth.loss(model, x, x_adv, y).loss - plain.loss(model, x, x_adv, y).loss
    ce = {"madry": [adv_logits], "hybrid": [clean_logits, adv_logits], "trades": [clean_logits]}[name]
    expected = sum(smoothed(z) - F.cross_entropy(z, y) for z in ce) / (2 if name == "hybrid" else 1)
    torch.testing.assert_close(difference, expected, rtol=1e-5, atol=1e-6)


# -- schedules ----------------------------------------------------------------------------------------------------

def test_cosine_and_onecycle_schedules():
    f = dict(steps_per_epoch=10, milestones=[], gamma=0.1, total_steps=100)
    cosine = [lr_factor(s, schedule="cosine", warmup_steps=4, **f) for s in range(100)]
    assert cosine[:4] == [0.25, 0.5, 0.75, 1.0]
    assert cosine[52] == pytest.approx(0.5) and cosine[99] == pytest.approx((1 + math.cos(math.pi * 95 / 96)) / 2)
    assert all(a >= b for a, b in zip(cosine[3:], cosine[4:]))
    peak = [lr_factor(s, schedule="onecycle", warmup_steps=0, **f) for s in range(100)]
    assert peak[39] == 1.0 and peak[0] == pytest.approx(1 / 40) and peak[70] == pytest.approx(0.5)
    assert lr_factor(9, schedule="onecycle", warmup_steps=10, **f) == 1.0


# -- extra data ---------------------------------------------------------------------------------------------------

def tensors(n, value, label0=0, size=2, channels=1):
    images = torch.full((n, channels, size, size), value, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return ImageTensors(images, torch.arange(n) + label0)


@pytest.mark.parametrize("fraction, extra_per_batch", [(0.7, 6), (0.25, 2), (0.5, 4)])
def test_every_batch_mixes_in_the_requested_fraction_of_extra_images(fraction, extra_per_batch):
    labeled, extra = tensors(40, 1), tensors(30, 200, label0=100)
    seen = []
    for epoch in range(3):
        batches = list(BatchPlan(labeled, 8, seed=3, drop_last=True, extra=extra, extra_fraction=fraction)
                       .epoch(epoch))
        assert len(batches) == 5  # the labeled set alone fills 5 batches of 8: an epoch keeps that length
        for x, y in batches:
            assert len(y) == 8 and (y >= 100).sum() == extra_per_batch and (y[-extra_per_batch:] >= 100).all()
            assert torch.equal(x[:, 0, 1, 1] == 200 / 255, y >= 100)
            seen += y[y < 100].tolist()
    first_pass = seen[:40]
    assert len(set(first_pass)) == len(first_pass)  # the labeled images come in passes: each once per pass
    assert len(seen) < 40 or sorted(first_pass) == list(range(40))


def test_mixed_batches_resume_exactly_and_shard_the_labeled_stream():
    labeled, extra = tensors(40, 1), tensors(30, 200, label0=100)
    plan = BatchPlan(labeled, 4, seed=5, drop_last=True, extra=extra, extra_fraction=0.5)
    whole = list(plan.epoch(2))
    resumed = list(plan.epoch(2, start_batch=6))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(whole[6:], resumed))
    ranks = [list(plan.epoch(2, rank=r, world_size=2)) for r in range(2)]
    labels = [set(y[y < 100].tolist()) for batches in ranks for _, y in batches]
    assert not (set().union(*labels[:5]) & set().union(*labels[5:]))  # ranks take disjoint labeled images


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


class Boom:
    """Unpickling this runs code: it creates a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("arrays, match", [
    (dict(images=np.zeros((4, 8, 8, 1), np.uint8), labels=np.zeros(4, np.int64)), "not 'image' and 'label'"),
    (dict(image=np.zeros((4, 8, 8, 1), np.float32), label=np.zeros(4, np.int64)), "not uint8"),
    (dict(image=np.zeros((4, 8, 8, 3), np.uint8), label=np.zeros(4, np.int64)), "N x 8 x 8 x 1"),
    (dict(image=np.zeros((4, 1, 8, 8), np.uint8), label=np.zeros(4, np.int64)), "N x H x W x C"),
    (dict(image=np.zeros((4, 8, 8, 1), np.uint8), label=np.zeros(3, np.int64)), "4 images and 3 labels"),
    (dict(image=np.zeros((4, 8, 8, 1), np.uint8), label=np.zeros(4, np.float32)), "integers"),
    (dict(image=np.zeros((4, 8, 8, 1), np.uint8), label=np.full(4, 7)), "classes 0 to 3"),
])
def test_malformed_extra_data_is_a_one_line_error(tmp_path, arrays, match):
    path = write_npz(tmp_path / "extra.npz", **arrays)
    with pytest.raises(ConfigError, match=match) as error:
        read_image_npz(path, num_classes=4, in_channels=1, image_size=8)
    assert "\n" not in str(error.value)


def test_extra_data_is_read_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    label = np.empty(4, dtype=object)
    label[:] = [Boom(str(marker))] * 4
    path = write_npz(tmp_path / "extra.npz", image=np.zeros((4, 8, 8, 1), np.uint8), label=label)
    with pytest.raises(ConfigError, match="plain arrays"):
        read_image_npz(path, num_classes=4, in_channels=1, image_size=8)
    assert not marker.exists()
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    np.save(tmp_path / "one.npy", np.zeros((4, 8, 8, 1), np.uint8))
    for name in ("junk.npz", "one.npy"):
        with pytest.raises(ConfigError, match="plain arrays|single array"):
            read_image_npz(tmp_path / name, num_classes=4, in_channels=1, image_size=8)


def test_written_npz_reads_back_and_gray_3d_arrays_are_accepted(tmp_path):
    data = ImageTensors(torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8), torch.tensor([0, 1, 2, 3, 0]))
    with np.load(write_image_npz(tmp_path / "x.npz", data)) as npz:
        assert npz["image"].shape == (5, 8, 8, 1) and npz["image"].dtype == np.uint8
    back = read_image_npz(tmp_path / "x.npz", num_classes=4, in_channels=1, image_size=8)
    assert torch.equal(back.images, data.images) and torch.equal(back.labels, data.labels)
    write_npz(tmp_path / "gray.npz", image=data.images[:, 0].numpy(), label=data.labels.numpy().astype(np.uint8))
    assert torch.equal(read_image_npz(tmp_path / "gray.npz", num_classes=4, in_channels=1, image_size=8).images,
                       data.images)


def test_holdout_writes_the_training_images_the_config_leaves_out(tmp_path, capsys):
    write_fashion_mnist(tmp_path / "data", n_train=60, n_test=4)
    assert main(["holdout", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "data"), "--train-size", "20",
                 "--val-size", "10", "--seed", "4", "--out", str(tmp_path / "rest.npz")]) == 0
    assert "30 fashion-mnist training images" in capsys.readouterr().out
    rest = read_image_npz(tmp_path / "rest.npz", num_classes=10, in_channels=1, image_size=28)
    splits = load_dataset("fashion-mnist", tmp_path / "data", val_size=10, seed=4)
    labeled = fixed_subset(splits.train, 20, 4)
    rows = {bytes(image.numpy()) for image in torch.cat([rest.images, labeled.images, splits.val.images])}
    assert len(rest) == 30 and len(rows) == 60  # held out, labeled and validation images: disjoint, all of them
    with pytest.raises(ConfigError, match="--train-size"):
        write_heldout(TrainConfig(dataset="fashion-mnist", data_dir=str(tmp_path / "data")), tmp_path / "all.npz")


# -- in the training loop -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist")
    write_fashion_mnist(root, n_train=112, n_test=16)
    config = TrainConfig(dataset="fashion-mnist", data_dir=str(root), train_size=48, val_size=32)
    write_heldout(config, root / "extra.npz")
    return root


def modern(data_dir, out_dir, **overrides) -> TrainConfig:
    """Every technique on: resnet_small width 4 on 48 labeled images and 32 held-out ones, 3 steps per epoch."""
    values = dict(dataset="fashion-mnist", data_dir=str(data_dir), arch="resnet_small", width=4, eps=0.1, steps=2,
                  val_steps=2, val_size=32, train_size=48, epochs=4, batch_size=16, lr=0.05, warmup_steps=2,
                  lr_schedule="cosine", ema_decay=0.9, awp_gamma=0.01, awp_warmup=1, label_smoothing=0.1,
                  extra_data=str(data_dir / "extra.npz"), extra_fraction=0.5, objective="mart",
                  out_dir=str(out_dir), device="cpu", log_every=2, progress=False)
    return TrainConfig(**{**values, **overrides})


@pytest.mark.slow
def test_resume_with_ema_awp_and_extra_data_continues_bit_for_bit(fmnist, tmp_path):
    train(modern(fmnist, tmp_path / "a", max_steps=10))
    train(modern(fmnist, tmp_path / "b", max_steps=4))  # cut inside the second epoch, the first with AWP
    train(resume_config(tmp_path / "b", max_steps=10), resume=True)
    a, b = (load_checkpoint(tmp_path / run / "last.pt") for run in ("a", "b"))
    assert a["step"] == b["step"] == 10
    for part in ("model", "ema"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)
    assert not torch.equal(a["ema"]["linear.weight"], a["model"]["linear.weight"])


@pytest.mark.slow
def test_validation_best_pt_and_the_loader_use_the_ema_model(fmnist, tmp_path, monkeypatch):
    scored = []
    real_validate = loop.Trainer.validate

    def spy(self):
        scored.append(self.scored_model().state_dict()["linear.weight"].clone())
        return real_validate(self)

    monkeypatch.setattr(loop.Trainer, "validate", spy)
    result = train(modern(fmnist, tmp_path / "run", epochs=2, awp_gamma=0.0))
    best, last = (load_checkpoint(tmp_path / "run" / name) for name in ("best.pt", "last.pt"))
    assert torch.equal(scored[-1], last["ema"]["linear.weight"])  # what was validated is the average
    assert not torch.equal(last["ema"]["linear.weight"], last["model"]["linear.weight"])
    assert set(best) >= {"model", "ema"} and best["step"] == result.best["step"]
    loaded = load_trained_model(tmp_path / "run")
    assert loaded.source == "training checkpoint (EMA weights)" and loaded.path.name == "best.pt"
    assert torch.equal(loaded.model.state_dict()["linear.weight"], best["ema"]["linear.weight"])
    live = load_trained_model(tmp_path / "run", ema=False)
    assert live.source == "training checkpoint"
    assert torch.equal(live.model.state_dict()["linear.weight"], best["model"]["linear.weight"])
