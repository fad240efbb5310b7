"""The training loop on generated files in the real on-disk formats: run folder, schedule, resume, best.pt, NaN."""
import dataclasses
import json
import shutil

import pytest
import torch
import yaml
from fake_data import write_cifar10, write_fashion_mnist
from torch import nn

import robust_sabn.checkpoint as checkpoint_file
from robust_sabn import SandwichBatchNorm2d, Threat, use_route
from robust_sabn.cli import main
from robust_sabn.data import as_tensors, load_dataset
from robust_sabn.errors import ConfigError
from robust_sabn.eval import EvalSettings, evaluate
from robust_sabn.io import extract_state_dict, load_checkpoint, load_weights
from robust_sabn.model_files import load_trained_model
from robust_sabn.models import build_model
from robust_sabn.nn import CONVS
from robust_sabn.training.config import TrainConfig
from robust_sabn.training.loop import TrainingDiverged, train
from robust_sabn.training.optim import lr_factor
from robust_sabn.training.run_dir import resume_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist")
    write_fashion_mnist(root, n_train=112, n_test=16)
    return root


def tiny(data_dir, out_dir, **overrides) -> TrainConfig:
    """resnet_small width 4 on 80 training images: 5 steps of 16 per epoch."""
    values = dict(dataset="fashion-mnist", data_dir=str(data_dir), arch="resnet_small", width=4, eps=0.1, steps=2,
                  val_steps=2, val_size=32, epochs=3, batch_size=16, lr=0.05, milestones=[2], warmup_steps=3,
                  out_dir=str(out_dir), device="cpu", log_every=2, progress=False)
    return TrainConfig(**{**values, **overrides})


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_times(rows):
    return [{k: v for k, v in r.items() if not k.endswith("time")} for r in rows]


def assert_same_state(a, b):
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"] and a["batch"] == b["batch"]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])


@pytest.mark.slow
@pytest.mark.channels_last  # the default memory format, on a model that oneDNN mishandles in channels_last
def test_short_cifar_run_writes_the_whole_run_folder(tmp_path):
    write_cifar10(tmp_path / "data", n_train=60, n_test=10)
    config = TrainConfig(dataset="cifar10", data_dir=str(tmp_path / "data"), arch="resnet_small", width=4,
                         val_size=12, epochs=2, batch_size=16, steps=2, val_steps=2, out_dir=str(tmp_path / "run"),
                         device="cpu", log_every=1, save_every=2, progress=False)
    result = train(config)
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.yaml", "curves.png", "last.pt", "metrics.jsonl"]
    assert TrainConfig.from_dict(yaml.safe_load((run / "config.yaml").read_text())) == config
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (result.epoch, result.step) == (2, 2 * 3)

    rows = records(run)
    assert [r["kind"] for r in rows] == ["step"] * 3 + ["epoch"] + ["step"] * 3 + ["epoch"]
    epoch = rows[3]
    for key in ("lr", "train_loss", "train_clean_acc", "train_adv_acc", "val_clean_acc", "val_robust_acc",
                "val_clean_acc_clean_route", "epoch_time", "time"):
        assert isinstance(epoch[key], float), key
    assert all(0 <= epoch[k] <= 1 for k in ("train_clean_acc", "train_adv_acc", "val_clean_acc", "val_robust_acc"))

    last = load_checkpoint(run / "last.pt")  # weights_only=True
    for key in ("model", "model_spec", "config", "epoch", "step", "batch", "optimizer", "scheduler", "scaler", "rng"):
        assert key in last
    assert (last["epoch"], last["step"], last["batch"]) == (2, 6, 0)
    assert last["input_shape"] == [3, 32, 32]  # so that eval refuses images of another shape
    assert set(last["rng"][0]) == {"torch", "cuda", "python", "numpy"}
    assert last["config"] == config.to_dict()
    model = load_weights(build_model(last["model_spec"]), extract_state_dict(last)).eval()
    with torch.no_grad(), use_route(model, "adv"):
        assert model(torch.rand(4, 3, 32, 32)).shape == (4, 10)


@pytest.mark.slow
def test_existing_run_is_not_overwritten(fmnist, tmp_path):
    config = tiny(fmnist, tmp_path / "run", max_steps=2)
    train(config)
    with pytest.raises(ConfigError, match="--resume"):
        train(config)


def test_lr_schedule_warmup_and_milestones():
    f = dict(steps_per_epoch=10, milestones=[2, 3], gamma=0.1, warmup_steps=4)
    assert [lr_factor(s, **f) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(19, **f) == 1.0
    assert lr_factor(20, **f) == pytest.approx(0.1) and lr_factor(30, **f) == pytest.approx(0.01)


@pytest.mark.slow
def test_max_steps_cuts_the_run_without_changing_the_schedule(fmnist, tmp_path):
    full = train(tiny(fmnist, tmp_path / "full", save_every=1, log_every=1))
    cut = train(tiny(fmnist, tmp_path / "cut", max_steps=7, log_every=1))
    assert (cut.step, cut.epoch) == (7, 1)
    lrs = {r["step"]: r["lr"] for r in cut.records if r["kind"] == "step"}
    assert lrs == {r["step"]: r["lr"] for r in full.records if r["kind"] == "step" and r["step"] <= 7}
    assert lrs == {s: pytest.approx(0.05 * lr_factor(s - 1, steps_per_epoch=5, milestones=[2], gamma=0.1,
                                                     warmup_steps=3)) for s in range(1, 8)}
    assert cut.records[-1]["kind"] == "stop" and "val_robust_acc" in cut.records[-1]
    assert (tmp_path / "cut" / "curves.png").is_file()
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.05)


@pytest.mark.slow
def test_resume_continues_bit_for_bit(fmnist, tmp_path, monkeypatch):
    """12 steps in one go == 6 steps, then resumed to 12 == killed after the mid-epoch checkpoint at step 8."""
    train(tiny(fmnist, tmp_path / "a", max_steps=12))
    train(tiny(fmnist, tmp_path / "b", max_steps=6))
    assert load_checkpoint(tmp_path / "b" / "last.pt")["batch"] == 1  # cut mid-epoch
    train(resume_config(tmp_path / "b", max_steps=12), resume=True)

    saved = {}
    real_save = checkpoint_file.save_checkpoint

    def save_and_copy(payload, path):
        real_save(payload, path)
        if path.name == "last.pt":
            saved[payload["step"]] = path.with_name(f"step{payload['step']}.pt")
            shutil.copy(path, saved[payload["step"]])

    monkeypatch.setattr(checkpoint_file, "save_checkpoint", save_and_copy)
    train(tiny(fmnist, tmp_path / "c", max_steps=12, save_every=4))
    monkeypatch.undo()
    assert load_checkpoint(saved[8])["batch"] == 3  # written by --save-every inside epoch 2
    shutil.copy(saved[8], tmp_path / "c" / "last.pt")  # as if killed (kill -9) right after step 8
    train(resume_config(tmp_path / "c", max_steps=12), resume=True)

    a = load_checkpoint(tmp_path / "a" / "last.pt")
    for run in ("b", "c"):
        assert_same_state(a, load_checkpoint(tmp_path / run / "last.pt"))
    steps_a = [r for r in records(tmp_path / "a") if r["kind"] != "stop"]
    assert without_times([r for r in records(tmp_path / "c") if r["kind"] != "stop"]) == without_times(steps_a)


@pytest.mark.slow
def test_resume_refuses_to_change_what_the_run_computes(fmnist, tmp_path):
    train(tiny(fmnist, tmp_path / "run", max_steps=2))
    with pytest.raises(ConfigError, match="eps"):
        resume_config(tmp_path / "run", eps=0.2)
    assert resume_config(tmp_path / "run", eps=0.1, max_steps=4).max_steps == 4  # same value: allowed


@pytest.mark.slow
def test_best_checkpoint_holds_the_best_robust_validation_accuracy(fmnist, tmp_path):
    config = tiny(fmnist, tmp_path / "run", epochs=4, lr=0.2, channels_last=False)
    result = train(config)
    epochs = [r for r in result.records if r["kind"] == "epoch"]
    best = max(epochs, key=lambda r: r["val_robust_acc"])  # the first of equals
    assert result.best == {"val_robust_acc": best["val_robust_acc"], "epoch": best["epoch"], "step": best["step"]}
    checkpoint = load_checkpoint(tmp_path / "run" / "best.pt")
    assert (checkpoint["epoch"], checkpoint["step"]) == (best["epoch"], best["step"])
    model = load_trained_model(tmp_path / "run" / "best.pt").model
    x, y = as_tensors(load_dataset("fashion-mnist", fmnist, val_size=32, seed=0).val)
    # validation is `robust-sabn eval --attack pgd-K` on the validation images, batches of twice the training batch
    settings = EvalSettings(Threat("Linf", 0.1), f"pgd-{config.val_steps}", seed=0, batch_size=32, progress=False)
    report = evaluate(model, x, y, settings, route="adv", clean_route=None)
    assert report.robust_acc == best["val_robust_acc"] and report.clean_acc == best["val_clean_acc"]


@pytest.mark.slow
def test_nan_loss_is_one_clear_error(fmnist, tmp_path, capsys):
    """The largest --lr (10) with SGD's momentum 0.9 blows this tiny model up within a few steps."""
    with pytest.raises(TrainingDiverged, match="lower --lr"):
        train(tiny(fmnist, tmp_path / "run", lr=10, warmup_steps=0))
    argv = ["train", "--dataset", "fashion-mnist", "--data-dir", str(fmnist), "--arch", "resnet_small", "--width", "4",
            "--eps", "0.1", "--steps", "1", "--batch-size", "16", "--val-size", "32", "--lr", "10", "--epochs", "3",
            "--milestones", "2", "--out-dir", str(tmp_path / "cli"), "--device", "cpu", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("robust-sabn: error: the loss became") and err.count("\n") == 1
    assert not list((tmp_path / "cli").glob("*.tmp")) and not list((tmp_path / "cli").glob(".*"))


class ProbeConv(nn.Conv2d):
    """A convolution reporting a per-layer metric, as UBN layers do."""

    def layer_metrics(self):
        return {"probe": float(self.out_channels)}


@pytest.mark.slow
def test_layer_metrics_are_logged_and_plotted(fmnist, tmp_path, monkeypatch):
    monkeypatch.setitem(CONVS._entries, "probe", ProbeConv)
    result = train(tiny(fmnist, tmp_path / "run", conv="probe", epochs=1))
    widths = [m.out_channels for m in build_model({"arch": "resnet_small", "kwargs": {
        "width": 4, "in_channels": 1, "conv": "probe"}}).modules() if isinstance(m, ProbeConv)]
    assert result.records[-1]["layer/probe"] == pytest.approx(sum(widths) / len(widths))
    assert (tmp_path / "run" / "curves.png").is_file()


@pytest.mark.slow
def test_sync_bn_conversion_keeps_routed_layers_working(fmnist, tmp_path):
    result = train(tiny(fmnist, tmp_path / "run", sync_bn=True, max_steps=3))
    assert result.step == 3
    saved = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    model = load_trained_model(tmp_path / "run" / "last.pt").model  # SyncBatchNorm stats load into plain BN
    layers = [m for m in model.modules() if isinstance(m, SandwichBatchNorm2d)]
    assert layers and not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    for name, layer in model.named_modules():
        if isinstance(layer, SandwichBatchNorm2d):  # every route's statistics: trained, and those of the checkpoint
            for route in ("clean", "adv"):
                stats = layer.stats[route]
                assert type(stats) is nn.BatchNorm2d and int(stats.num_batches_tracked) == 3
                assert torch.equal(stats.running_mean, saved[f"{name}.stats.{route}.running_mean"])


@pytest.mark.slow
@pytest.mark.channels_last
@pytest.mark.parametrize("objective, norm", [("madry", "dual"), ("trades", "bn"), ("fast", "sandwich")])
def test_every_objective_trains(fmnist, tmp_path, objective, norm):
    config = tiny(fmnist, tmp_path / "run", objective=objective, norm=norm, max_steps=2)
    before = build_model({"arch": "resnet_small", "kwargs": {"width": 4, "in_channels": 1, "norm": norm}})
    train(config)
    after = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert not torch.equal(after["linear.weight"], before.state_dict()["linear.weight"])


@pytest.mark.slow
def test_same_seed_same_weights_and_deterministic_mode_is_restored(fmnist, tmp_path):
    runs = {name: tiny(fmnist, tmp_path / name, max_steps=3, seed=seed, deterministic=name == "b")
            for name, seed in (("a", 1), ("b", 1), ("c", 2))}
    flags = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    seen = []
    for config in runs.values():
        train(config)
        seen.append((torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark))
    assert not torch.are_deterministic_algorithms_enabled() and seen == [flags] * 3  # as they were before
    weights = {name: load_checkpoint(tmp_path / name / "last.pt")["model"] for name in runs}
    assert all(torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"])
    assert not torch.equal(weights["a"]["linear.weight"], weights["c"]["linear.weight"])


@pytest.mark.slow
def test_resume_after_kill_9_matches_the_uninterrupted_run(fmnist, tmp_path):
    """A real SIGKILL of the CLI process at whatever point it has reached after a few checkpoints."""
    import os
    import signal
    import subprocess
    import sys
    import time

    config = tiny(fmnist, tmp_path / "killed", max_steps=12, save_every=1)
    flags = ["--dataset", "fashion-mnist", "--data-dir", str(fmnist), "--arch", "resnet_small", "--width", "4",
             "--eps", "0.1", "--steps", "2", "--val-steps", "2", "--val-size", "32", "--epochs", "3",
             "--batch-size", "16", "--lr", "0.05", "--milestones", "2", "--warmup-steps", "3", "--device", "cpu",
             "--log-every", "2", "--no-progress", "--max-steps", "12", "--save-every", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "robust_sabn", "train", *flags, "--out-dir", str(tmp_path / "killed")]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        last = tmp_path / "killed" / "last.pt"
        if last.is_file() and load_checkpoint(last)["step"] >= 4:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = load_checkpoint(tmp_path / "killed" / "last.pt")["step"]
    assert 4 <= killed_at < 12
    resumed = subprocess.run([sys.executable, "-m", "robust_sabn", "train", "--resume", str(tmp_path / "killed"),
                              "--max-steps", "12", "--no-progress"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    train(dataclasses.replace(config, out_dir=str(tmp_path / "straight")))
    assert_same_state(load_checkpoint(tmp_path / "straight" / "last.pt"),
                      load_checkpoint(tmp_path / "killed" / "last.pt"))


def test_determinism_settings_cover_cudnn():
    """--deterministic makes cuDNN deterministic (what bit-for-bit resume on a GPU needs); without it cuDNN may pick
    the fastest algorithm per shape."""
    from robust_sabn.training.loop import set_determinism

    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    try:
        set_determinism(True)
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark
        set_determinism(False)
        assert not torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1:]
