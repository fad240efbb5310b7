"""Each concept is one object, defined once: the threat model, the evaluation settings, the training checkpoint, the
device rule, provenance, renamed settings."""
import math
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from robust_sabn import Threat, create_model
from robust_sabn.checkpoint import TrainingCheckpoint
from robust_sabn.cli import command_parsers, main
from robust_sabn.devices import check_device_name, oversubscription, resolve_device, warn_if_oversubscribed
from robust_sabn.errors import CheckpointError, ConfigError
from robust_sabn.eval import EvalSettings, make_eval_attack
from robust_sabn.io import load_checkpoint
from robust_sabn.provenance import cpu_name, provenance
from robust_sabn.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------- threat
@pytest.mark.parametrize("norm, eps, value, label", [
    ("Linf", "8/255", 8 / 255, "Linf 8/255"), ("Linf", 0.1, 0.1, "Linf 0.1"), ("Linf", "0.2", 0.2, "Linf 0.2"),
    ("L2", "0.5", 0.5, "L2 0.5"), ("L1", 12, 12.0, "L1 12"), ("Linf", 0, 0.0, "Linf 0"),
])
def test_a_threat_is_parsed_once_and_labelled_as_people_write_it(norm, eps, value, label):
    threat = Threat(norm, eps)
    assert threat.eps == value and isinstance(threat.eps, float) and threat.label == label == str(threat)
    assert Threat.from_dict(threat.to_dict()) == threat and hash(Threat.from_dict(threat.to_dict())) == hash(threat)
    assert threat.with_eps("1/255") == Threat(norm, 1 / 255)


@pytest.mark.parametrize("norm, eps, match", [
    ("Linf", 1.5, r"Linf eps must be a number in \[0, 1\], got 1.5 \(inputs lie in \[0, 1\]\)"),
    ("L2", -1, r"L2 eps must be a number in \[0, 2000\], got -1"), ("L3", 1, "unknown threat model 'L3'"),
    ("Linf", "8/255s", "a fraction like 8/255"), ("Linf", "1e999", "finite"), ("Linf", True, "must be a number"),
])
def test_a_bad_threat_is_one_line(norm, eps, match):
    with pytest.raises(ConfigError, match=match) as caught:
        Threat(norm, eps)
    assert "\n" not in str(caught.value)


def test_a_threat_names_the_norms_an_attack_takes_and_the_standard_radii():
    assert Threat.standard("L2") == Threat("L2", 0.5) and Threat.standard() == Threat("Linf", 8 / 255)
    assert Threat("L2", 1).require(("Linf", "L2"), "PGD") == Threat("L2", 1)
    with pytest.raises(ConfigError, match="the fast objective attacks in the norm Linf, not L2"):
        Threat("L2", 1).require(("Linf",), "the fast objective")
    with pytest.raises(ConfigError, match="a threat model needs a 'norm'"):
        Threat.from_dict({"eps": 1})


# -------------------------------------------------------------------------------------------- eval settings
def test_evaluation_settings_are_checked_when_made():
    settings = EvalSettings(Threat("L2", "0.5"), "pgd-7", seed=2, batch_size=16)
    assert settings.attack.name == "pgd-7" and settings.identity() == {
        "attack": "pgd-7", "steps": 7, "loss": "pgd", "norm": "L2", "eps": 0.5, "seed": 2, "batch_size": 16,
        "numerics": "exact", "adversarials": False}
    assert EvalSettings(attack=make_eval_attack("autoattack", "plus")).identity()["version"] == "plus"
    for kwargs, match in ((dict(attack="fgsm"), "unknown attack"), (dict(batch_size=0), "batch_size"),
                          (dict(seed=-1), "seed"), (dict(numerics="fp8"), "unknown numerics 'fp8'"),
                          (dict(threat="Linf"), "must be a Threat"),
                          (dict(threat=Threat("L1", 1), attack="pgd-5"), "for L1 use autoattack")):
        with pytest.raises(ConfigError, match=match):
            EvalSettings(**kwargs)


def test_evaluation_settings_decide_the_device_by_the_one_rule():
    model = create_model("resnet_small", width=4)
    decided = EvalSettings().on(model)
    assert decided.device == torch.device("cpu") and decided.processes.world_size == 1
    assert EvalSettings(device="cpu").on(model).device == torch.device("cpu")
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        EvalSettings(device="gpu").on(model)


# ---------------------------------------------------------------------------------------------- devices
@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_every_config_takes_every_device_name(name):
    assert check_device_name(name) == name and TrainConfig(device=name).device == name


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "CUDA", "cuda:-1", "", "mps"])
def test_an_unknown_device_name_is_refused_with_the_names(name):
    with pytest.raises(ConfigError, match="use auto, cpu, cuda or cuda:N"):
        TrainConfig(device=name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_a_missing_device_is_one_line_naming_the_visible_ones(tmp_path, capsys):
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=r"no CUDA device is available \(visible: cpu\); use --device cpu"):
            resolve_device(name)
    assert main(["train", "--device", "cuda:0", "--out-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "visible: cpu" in err and not (tmp_path / "run").exists()


def test_oversubscribed_threads_are_named_with_the_fix(monkeypatch, capsys):
    assert oversubscription(2, 1, 2, 0.3) is None and oversubscription(1, 2, 2, None) is None
    assert oversubscription(2, 2, 2, None) == "2 process(es) x 2 threads on 2 cores"
    assert oversubscription(2, 1, 2, 1.8) == "2 threads per process on 2 cores already running a load of 1.8"
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    warn_if_oversubscribed()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 process(es) x 2 threads on 2 cores" in err and "OMP_NUM_THREADS=1" in err


# ------------------------------------------------------------------------------------------- checkpoint
def test_a_training_checkpoint_round_trips_and_is_checked(tmp_path):
    model = create_model("resnet_small", width=4)
    checkpoint = TrainingCheckpoint(model=model.state_dict(), model_spec=model.model_spec, config={"seed": 1},
                                    epoch=1, batch=0, step=5, optimizer={}, scheduler={}, scaler={}, rng=[{}],
                                    meters={"epoch": {}, "window": {}}, best={}, elapsed=1.5, epoch_seconds=1.5,
                                    versions=provenance())
    checkpoint.save(tmp_path / "last.pt")
    assert "ema" not in load_checkpoint(tmp_path / "last.pt")  # absent parts are not written
    again = TrainingCheckpoint.load(tmp_path / "last.pt")
    assert again.step == 5 and again.versions == provenance() and again.world_size == 1 and again.ema is None
    assert all(torch.equal(again.model[k], v) for k, v in model.state_dict().items())
    values = checkpoint.to_dict()
    for broken, match in (({k: v for k, v in values.items() if k != "step"}, "it lacks step"),
                          ({**values, "epoch": "1"}, "epoch of the wrong kind"),
                          ({**values, "epoch": True}, "epoch of the wrong kind"), ([1, 2], "it lacks model")):
        with pytest.raises(CheckpointError, match=match):
            TrainingCheckpoint.from_dict(broken, "f.pt")
    assert TrainingCheckpoint.holds_model({"model": {}, "model_spec": {}}) and not TrainingCheckpoint.holds_model([])
    with pytest.raises(CheckpointError, match="input_shape of the wrong kind"):
        TrainingCheckpoint.model_part({"model": {}, "model_spec": {}, "input_shape": "3x32x32"}, "f.pt")


# ------------------------------------------------------------------------------------------- provenance
def test_provenance_names_the_libraries_and_this_checkout():
    versions = provenance()
    assert set(versions) == {"robust_sabn", "torch", "torchvision", "torchattacks", "pyautoattack", "robustbench",
                             "git_commit"}
    assert versions["torch"].split("+")[0] == torch.__version__.split("+")[0]
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a checkout (CI's clean clone is one): its commit, and whether files differ from it
        assert versions["git_commit"].split(" ")[0] == head.stdout.strip()


def test_cpu_name_names_the_model_and_the_vector_instructions(monkeypatch):
    name = cpu_name()
    assert name.endswith(f" ({torch.backends.cpu.get_cpu_capability()})") and len(name) > len(" (DEFAULT)")
    if Path("/proc/cpuinfo").is_file() and "model name" in Path("/proc/cpuinfo").read_text():
        model = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
        assert name.startswith(model.split(":", 1)[1].strip())
    cpu_name.cache_clear()
    try:
        with monkeypatch.context() as patch:
            patch.setattr("builtins.open", lambda *args, **kwargs: (_ for _ in ()).throw(OSError("no /proc")))
            patch.setattr("platform.processor", lambda: "")
            patch.setattr("platform.machine", lambda: "x86_64")
            assert cpu_name().startswith("x86_64 (")  # without /proc/cpuinfo: the platform's word
    finally:
        cpu_name.cache_clear()  # the next call reads the real CPU again


# ------------------------------------------------------------------------------------ renamed settings
def test_the_old_name_of_a_setting_still_works_for_a_version(tmp_path, capsys):
    with pytest.warns(FutureWarning, match="'attack_norm' is now called 'threat_model'"):
        config = TrainConfig.from_dict({"attack_norm": "L2", "eps": 0.5})
    assert config.threat == Threat("L2", 0.5)
    with pytest.raises(ConfigError, match="give only threat_model"):
        TrainConfig.from_dict({"attack_norm": "L2", "threat_model": "L2"})
    (tmp_path / "c.yaml").write_text("attack_norm: Linf\neps: 2\n")
    for old in (["--config", str(tmp_path / "c.yaml")], ["--attack-norm", "Linf", "--eps", "2"]):
        assert main(["holdout", *old, "--out", str(tmp_path / "x.npz")]) == 2  # read as the threat model: Linf
        warning, error = capsys.readouterr().err.splitlines()  # one line each
        assert warning.startswith("robust-sabn: warning: ") and "threat_model" in warning.replace("-", "_")
        assert error == "robust-sabn: error: Linf eps must be a number in [0, 1], got 2 (inputs lie in [0, 1]); " \
                        "e.g. --eps 8/255"


def test_a_replaced_setting_is_checked_again():
    settings = EvalSettings()
    with pytest.raises(ConfigError, match="batch_size"):
        replace(settings, batch_size=0)
    assert math.isclose(replace(settings, threat=Threat("Linf", "4/255")).threat.eps, 4 / 255)


# ---------------------------------------------------------------------------------------------- commands
def test_no_parser_takes_an_abbreviated_flag(capsys):
    assert all(not parser.allow_abbrev for _, parser in command_parsers())
    assert main(["train", "--log-ev", "5"]) == 2  # an abbreviation of --log-every
    err = capsys.readouterr().err
    assert err == "robust-sabn: error: unrecognized arguments: --log-ev 5; see `robust-sabn train --help`\n"


def test_every_computing_command_takes_the_common_flags():
    for name, parser in command_parsers():
        if name == "doctor":
            continue
        flags = {option for action in parser._actions for option in action.option_strings}
        assert {"--device", "--seed", "--progress", "--no-progress"} <= flags, name
