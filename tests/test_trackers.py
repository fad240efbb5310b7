"""Experiment trackers: TensorBoard and CSV read back with their own readers, W&B through a stand-in module, the
step lines of a short run, and a resumed run that logs no step twice."""
import csv
import json
import shutil
import sys
import types

import pytest
from fake_data import write_fashion_mnist
from helpers import write_run_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from robust_sabn.cli import main
from robust_sabn.errors import ConfigError
from robust_sabn.training import TrainConfig, train
from robust_sabn.training.metrics import log_interval
from robust_sabn.training.trackers import TrackedRun, Trackers, wandb_mode

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(data_dir, out_dir, **overrides) -> TrainConfig:
    """resnet_small width 4 on 80 training images: 5 steps of 16 per epoch, logged to TensorBoard and CSV."""
    values = dict(dataset="fashion-mnist", data_dir=str(data_dir), arch="resnet_small", width=4, eps=0.1, steps=1,
                  val_steps=1, val_size=32, epochs=3, batch_size=16, out_dir=str(out_dir), device="cpu",
                  log_every=1, progress=False, log=["tensorboard", "csv"], ema_decay=0.9, awp_gamma=0.01)
    return TrainConfig(**{**values, **overrides})


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def events(run_dir) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


@pytest.mark.parametrize("steps_per_epoch, max_steps, every", [(30, None, 3), (390, None, 39), (2000, None, 50),
                                                                (5, None, 1), (390, 30, 3)])
def test_the_default_log_interval_is_a_tenth_of_an_epoch_or_of_a_shorter_run(steps_per_epoch, max_steps, every):
    assert log_interval(steps_per_epoch, max_steps) == every


def test_a_resumed_run_logs_every_step_once_in_tensorboard_and_csv(tmp_path):
    """Cut at step 5 (last.pt), continued to step 8 and killed before its checkpoint (the logs of steps 6-8 stay),
    then resumed from step 5 to the end: TensorBoard and the CSV hold what metrics.jsonl holds, no step twice."""
    write_fashion_mnist(tmp_path / "data", n_train=112, n_test=8)
    run = tmp_path / "run"
    train(tiny(tmp_path / "data", run, max_steps=5))
    shutil.copy(run / "last.pt", tmp_path / "step5.pt")
    train(tiny(tmp_path / "data", run, max_steps=8), resume=True)
    assert events(run).Scalars("step/train_loss")[-1].step == 8
    shutil.copy(tmp_path / "step5.pt", run / "last.pt")
    train(tiny(tmp_path / "data", run), resume=True)

    logged = records(run)
    steps = [r for r in logged if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 16))
    scalars = events(run).Scalars("step/train_loss")
    assert [e.step for e in scalars] == list(range(1, 16))  # steps 6-8 of the killed run purged
    assert [e.value for e in scalars] == pytest.approx([r["train_loss"] for r in steps], rel=1e-6)
    epochs = events(run).Scalars("epoch/val_robust_acc")
    assert [e.step for e in epochs] == [r["step"] for r in logged if r["kind"] == "epoch"] == [5, 10, 15]
    assert [e.value for e in epochs] == pytest.approx([r["val_robust_acc"] for r in logged if r["kind"] == "epoch"])
    for tag in ("step/train_adv_acc", "step/train_clean_ce", "step/train_attack_success", "step/lr",
                "step/ema_decay", "step/awp_applied", "epoch/val_clean_acc"):
        assert events(run).Scalars(tag), tag
    with (run / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(row["kind"], int(row["step"])) for row in rows] == [(r["kind"], r["step"]) for r in logged]
    assert [float(row["train_loss"]) for row in rows] == [r["train_loss"] for r in logged]
    images = events(run).Images("epoch/adversarial_examples")
    assert [i.step for i in images] == [5, 10, 15] and images[0].width > images[0].height  # a grid of 16 in 2 rows
    hparams = plugin_data_pb2.HParamsPluginData.FromString(
        events(run).PluginTagToContent("hparams")["_hparams_/session_start_info"])
    assert hparams.session_start_info.hparams["lr"].number_value == 0.1
    assert hparams.session_start_info.hparams["norm"].string_value == "sandwich"


def test_a_short_run_writes_step_lines_by_default(tmp_path):
    write_fashion_mnist(tmp_path / "data", n_train=112, n_test=8)
    result = train(tiny(tmp_path / "data", tmp_path / "run", epochs=1, log_every=None, log=[]))
    assert [r["step"] for r in result.records if r["kind"] == "step"] == [1, 2, 3, 4, 5]  # 5 steps: every step


def test_eval_logs_its_accuracies_with_intervals_to_the_run(tmp_path, capsys):
    run = write_run_dir(tmp_path)
    assert main(["eval", str(run), "--attack", "pgd-2", "--n-examples", "6", "--device", "cpu", "--no-progress",
                 "--log", "tensorboard", "csv"]) == 0
    report = json.loads(next((run / "eval").glob("*.json")).read_text())
    label = "last-pgd-2-adv-Linf-8_255/single_route"
    accumulator = events(run)
    robust, = accumulator.Scalars(f"eval/{label}/robust_acc")
    assert robust.step == 2 and robust.value == pytest.approx(report["robust_acc"])  # at last.pt's step
    assert accumulator.Scalars(f"eval/{label}/robust_acc_ci_high")[0].value == pytest.approx(
        report["robust_acc_ci"][1])
    with (run / "metrics.csv").open(newline="") as f:
        row, = csv.DictReader(f)
    assert row["kind"] == "eval" and float(row[f"eval/{label}/clean_acc"]) == report["clean_acc"]
    assert main(["eval", str(run / "last.pt"), "--attack", "pgd-2", "--n-examples", "6", "--device", "cpu",
                 "--no-progress", "--log", "csv", "--out", str(tmp_path / "again")]) == 0
    with (run / "metrics.csv").open(newline="") as f:
        assert len(list(csv.DictReader(f))) == 2  # the second evaluation is added to the first


class FakeWandb(types.ModuleType):
    """The part of wandb the tracker uses, recording the calls."""

    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logged, self.summary, self.finished = [], [], {}, 0
        self.Image = lambda data: ("image", tuple(data.shape))

    def init(self, **kwargs):
        self.inits.append(kwargs)
        fake = self
        return types.SimpleNamespace(log=lambda values, step: fake.logged.append((step, values)),
                                     summary=self.summary, finish=lambda: setattr(fake, "finished", fake.finished + 1))


def test_wandb_runs_offline_without_an_account_and_continues_the_same_run(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    for name in ("WANDB_MODE", "WANDB_API_KEY", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    assert wandb_mode() == "offline"
    trackers = Trackers(["wandb"], TrackedRun(tmp_path, 0, {"lr": 0.1, "milestones": [2]}))
    trackers.record({"kind": "step", "epoch": 1, "step": 3, "train_loss": 2.5, "lr": 0.1})
    trackers.close()
    Trackers(["wandb"], TrackedRun(tmp_path, None)).record({"kind": "eval", "step": 3, "eval/x/robust_acc": 0.5})
    first, second = fake.inits
    assert first["mode"] == "offline" and first["config"] == {"lr": 0.1, "milestones": "[2]"}
    assert first["id"] == second["id"] and first["resume"] == "allow"  # robust-sabn eval --log adds to the run
    assert fake.logged == [(3, {"step/train_loss": 2.5, "step/lr": 0.1})] and fake.finished == 1
    assert fake.summary == {"eval/x/robust_acc": 0.5}
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode() is None  # an account: W&B decides


def test_a_missing_tracker_package_is_one_line_naming_the_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb fails
    with pytest.raises(ConfigError, match=r"--log wandb needs the wandb package: pip install wandb"):
        Trackers(["wandb"], TrackedRun(tmp_path))
    write_fashion_mnist(tmp_path / "data", n_train=112, n_test=8)
    argv = ["train", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "data"), "--arch", "resnet_small",
            "--width", "4", "--device", "cpu", "--out-dir", str(tmp_path / "run"), "--log", "csv", "wandb"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == "robust-sabn: error: --log wandb needs the wandb package: pip install wandb"
    assert main(argv[:-3] + ["--log", "mlflow"]) == 2
    assert "unknown log 'mlflow'; choose one of: tensorboard, csv, wandb" in capsys.readouterr().err


def test_eval_of_an_export_needs_the_run_named_to_log_to(tmp_path, capsys):
    from robust_sabn import create_model
    from robust_sabn.exporting import export

    weights = export(create_model("resnet_small", width=4).eval(), "Logged2026", model_dir=tmp_path / "models")
    argv = ["eval", str(weights), "--attack", "pgd-2", "--n-examples", "2", "--log", "csv"]
    assert main(argv) == 2
    assert "is not a training checkpoint, so --log has no run to add to; name one with --log-dir" in \
        capsys.readouterr().err
    assert not (tmp_path / "eval").exists()  # refused before the evaluation
