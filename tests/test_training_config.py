"""The training config: flags, files, recipes, Python; precedence; fractions; every bad input is one line, exit 2."""
import dataclasses
import json
import os

import pytest
import yaml
from fake_data import write_cifar10

from robust_sabn.cli import build_parser, main
from robust_sabn.cli.train import config_from_args
from robust_sabn.errors import ConfigError
from robust_sabn.parsing import parse_number
from robust_sabn.training.config import TrainConfig, read_config_file, recipe_names


def parse(*argv):
    return config_from_args(build_parser(["train", *argv]).parse_args(["train", *argv]))


def test_fractions_and_numbers():
    assert parse_number("8/255") == 8 / 255
    assert parse_number(" 0.1 ") == 0.1
    assert parse_number(3) == 3.0
    with pytest.raises(ConfigError, match="fraction"):
        parse_number("eight")
    with pytest.raises(ConfigError):
        parse_number("1/0")


def test_flags_fill_the_config_and_accept_fractions():
    config, resume = parse("--dataset", "fashion-mnist", "--eps", "8/255", "--step-size", "2/255", "--steps", "3",
                           "--milestones", "5", "9", "--amp", "--no-progress", "--arch", "resnet_small",
                           "--width", "8", "--batch-size", "64", "--lr", "1/10")
    assert not resume
    assert (config.dataset, config.eps, config.step_size, config.steps) == ("fashion-mnist", 8 / 255, 2 / 255, 3)
    assert config.milestones == [5, 9] and config.amp == "bf16" and config.progress is False
    assert (config.arch, config.width, config.batch_size, config.lr) == ("resnet_small", 8, 64, 0.1)
    assert parse("--milestones", "50,150")[0].milestones == [50, 150]


def test_precedence_flags_over_file_over_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"eps": "4/255", "steps": 3, "lr": 0.05, "batch-size": 32}))
    config, _ = parse("--config", str(path), "--steps", "5")
    assert config.eps == 4 / 255  # from the file
    assert config.step_size == 1 / 255  # default eps / 4, from the file's eps
    assert config.steps == 5  # the flag wins
    assert config.lr == 0.05 and config.batch_size == 32
    assert config.epochs == TrainConfig().epochs  # default


def test_json_file_and_python(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"objective": "trades", "beta": 3}))
    config = TrainConfig.from_file(path, seed=7)
    assert (config.objective, config.beta, config.seed) == ("trades", 3.0, 7)
    assert TrainConfig(objective="fast", eps=0.1).step_size == pytest.approx(0.125)  # FGSM's 1.25 * eps
    with pytest.raises(ConfigError, match="unknown setting"):
        TrainConfig.from_dict({"learning_rate": 0.1})


def test_recipes_resolve_to_the_documented_settings():
    assert set(recipe_names()) >= {"sabn-paper-cifar10", "madry-cifar10", "fashion-mnist-small"}
    paper = TrainConfig.from_file("sabn-paper-cifar10")
    expected = ("preact_resnet18", "sandwich", "hybrid", "train")
    assert (paper.arch, paper.norm, paper.objective, paper.bn_mode) == expected
    assert (paper.eps, paper.step_size, paper.steps) == (8 / 255, 2 / 255, 7)
    assert (paper.lr, paper.momentum, paper.weight_decay, paper.batch_size) == (0.1, 0.9, 5e-4, 128)
    assert (paper.epochs, paper.milestones, paper.lr_gamma, paper.warmup_steps) == (200, [50, 150], 0.1, 200)
    small = TrainConfig.from_file("fashion-mnist-small")
    assert (small.dataset, small.arch, small.norm, small.objective, small.eps) == (
        "fashion-mnist", "resnet_small", "sandwich", "hybrid", 0.1)
    assert TrainConfig.from_file("madry-cifar10").objective == "madry"
    generated = TrainConfig.from_file("generated-preact-resnet18-cifar10")
    assert (generated.arch, generated.objective, generated.beta, generated.label_smoothing, generated.ema_decay,
            generated.extra_fraction, generated.lr_schedule) == ("preact_resnet18", "trades", 5.0, 0.1, 0.995, 0.7,
                                                                 "cosine")
    awp = TrainConfig.from_file("awp-trades-wrn34-cifar10")
    assert (awp.arch, awp.objective, awp.awp_gamma, awp.awp_warmup) == ("wide_resnet34_10", "trades", 0.005, 10)
    modern = TrainConfig.from_file("fashion-mnist-modern")
    assert dataclasses.replace(modern, extra_data=None, ema_decay=0.0, label_smoothing=0.0, lr_schedule="step",
                               milestones=small.milestones) == small  # fashion-mnist-small plus the techniques


def test_resolved_config_round_trips_through_yaml():
    config = TrainConfig.from_file("sabn-paper-cifar10", out_dir="x")
    assert TrainConfig.from_dict(yaml.safe_load(config.to_yaml())) == config


@pytest.mark.parametrize("values, match", [
    ({"eps": -0.1}, "eps"),
    ({"eps": 2}, "eps"),
    ({"eps": 0.1, "step_size": 0.2}, "step size"),
    ({"dataset": "mnist"}, "unknown dataset"),
    ({"arch": "vgg"}, "unknown arch"),
    ({"objective": "pgd"}, "unknown objective"),
    ({"norm": "layer"}, "unknown norm"),
    ({"steps": 0}, "steps"),
    ({"milestones": [150, 50]}, "milestones"),
    ({"batch_size": "many"}, "batch_size"),
    ({"ema_decay": 1.0}, "ema_decay"),
    ({"label_smoothing": -0.1}, "label_smoothing"),
    ({"awp_gamma": -0.01}, "awp_gamma"),
    ({"awp_warmup": -1}, "awp_warmup"),
    ({"extra_data": "x.npz", "extra_fraction": 0.0}, "extra-fraction"),
    ({"extra_data": "x.npz", "extra_fraction": 0.999}, "extra-fraction"),
])
def test_bad_values_raise_config_errors(values, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**values)


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="recipes"):
        read_config_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("eps: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_config_file(bad)
    bad.write_text("- a list")
    with pytest.raises(ConfigError, match="mapping"):
        read_config_file(bad)


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root, n_train=40, n_test=10)
    return root


@pytest.mark.parametrize("flags, match", [
    (["--eps=-1/255"], "eps"),
    (["--eps", "1.5"], "eps"),
    (["--eps", "8/255", "--step-size", "10/255"], "step size"),
    (["--dataset", "imagenet"], "unknown dataset"),
    (["--arch", "vgg16"], "unknown arch"),
    (["--objective", "free"], "unknown objective"),
    (["--norm", "instance"], "unknown norm"),
    (["--eps", "abc"], "eps"),
    (["--data-dir", "{missing}"], "not found"),
    (["--out-dir", "{unwritable}"], "cannot write"),
    (["--resume", "{empty}"], "no last.pt"),
    (["--config", "no-such-recipe"], "recipes"),
    (["--amp"], "CUDA"),
    (["--arch", "preact_resnet18", "--width", "8"], "width"),
    (["--extra-data", "{missing}.npz"], "no extra-data file"),
    (["--lr-schedule", "linear"], "unknown lr_schedule"),
])
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(flags, match, cifar_dir, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    (tmp_path / "empty").mkdir()
    places = {"missing": str(tmp_path / "nowhere"), "unwritable": str(blocker / "run"),
              "empty": str(tmp_path / "empty")}
    flags = [f.format(**places) for f in flags]
    out_dir = tmp_path / "run"
    base = ["train", "--dataset", "cifar10", "--data-dir", str(cifar_dir), "--arch", "resnet_small", "--width", "4",
            "--epochs", "1", "--batch-size", "8", "--val-size", "8", "--device", "cpu", "--out-dir", str(out_dir),
            "--no-progress"]
    before = sorted(os.listdir(tmp_path))
    assert main(base + flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("robust-sabn: error: ") and err.count("\n") == 1, err
    assert match in err
    assert sorted(os.listdir(tmp_path)) == before  # no run folder, no half-written file
    assert os.listdir(tmp_path / "empty") == []
