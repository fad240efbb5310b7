"""Nothing read from a file decides which Python code runs: architecture files and checkpoints that name a callable
are refused (one line saying how to load such a model deliberately), and the payload never runs."""
import json

import pytest
import torch

import robust_sabn
from robust_sabn import create_model
from robust_sabn.cli import main
from robust_sabn.errors import CheckpointError
from robust_sabn.io import save_checkpoint
from robust_sabn.model_files import ARCH_FORMAT, load_trained_model

SMALL = {"name": "resnet_small", "width": 4, "norm": "bn"}


def touch_payload(marker):
    """A spec whose callable would create ``marker`` if anything imported and called it."""
    return {"callable": "subprocess:run", "kwargs": {"args": ["touch", str(marker)]}}


def write_hostile_export(model_dir, name, marker):
    """``<model_dir>/cifar10/Linf/<name>.pt`` (real weights) beside an architecture file naming the payload."""
    folder = model_dir / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    torch.save(create_model("resnet_small", width=4).state_dict(), folder / f"{name}.pt")
    record = {"format": ARCH_FORMAT, "spec": touch_payload(marker)}
    (folder / f"{name}.arch.json").write_text(json.dumps(record))
    return folder / f"{name}.pt"


def write_hostile_checkpoint(path, marker):
    """A weights-only training checkpoint whose model_spec names ``os:system``."""
    model = create_model("resnet_small", width=4)
    save_checkpoint({"model": model.state_dict(), "model_spec": {"callable": "os:system",
                                                                 "kwargs": {"command": f"touch {marker}"}},
                     "config": {"dataset": "cifar10"}}, path)
    return path


def one_line_exit_two(argv, capsys, *expected):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("robust-sabn: error:") and "\n" not in err, err
    for text in expected:
        assert text in err, err


def test_robustbench_load_model_does_not_run_an_architecture_file(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    write_hostile_export(tmp_path / "models", "Hostile2026", marker)
    monkeypatch.chdir(tmp_path)  # RobustBench's default model_dir is ./models
    robust_sabn.register_robustbench()
    from robustbench.utils import load_model

    with pytest.raises(CheckpointError, match="never runs code because a file names it") as caught:
        load_model(model_name="Hostile2026", dataset="cifar10", threat_model="Linf")
    assert "\n" not in str(caught.value) and "register_robustbench" in str(caught.value)
    assert not marker.exists()


def test_eval_and_export_refuse_an_architecture_file_naming_a_callable(tmp_path, capsys):
    marker = tmp_path / "pwned"
    weights = write_hostile_export(tmp_path / "models", "Hostile2026", marker)
    one_line_exit_two(["eval", str(weights), "--attack", "pgd-2"], capsys, "--model subprocess:run")
    one_line_exit_two(["export", str(weights), "--name", "Again2026", "--model-dir", str(tmp_path / "out")], capsys,
                      "--model subprocess:run")
    assert not marker.exists()


def test_a_checkpoint_model_spec_naming_a_callable_is_refused_everywhere(tmp_path, capsys):
    marker = tmp_path / "pwned"
    checkpoint = write_hostile_checkpoint(tmp_path / "run" / "last.pt", marker)
    with pytest.raises(CheckpointError, match="'os:system'"):
        load_trained_model(checkpoint)
    one_line_exit_two(["eval", str(tmp_path / "run"), "--attack", "pgd-2"], capsys, "--model os:system")
    one_line_exit_two(["export", str(checkpoint), "--name", "Hostile2026", "--model-dir", str(tmp_path / "m")],
                      capsys, "--model os:system")
    assert not marker.exists()


def test_an_export_of_a_users_own_architecture_loads_when_the_caller_names_it(tmp_path, capsys):
    """Files written with an external architecture keep loading when the caller names the same callable: from the
    CLI (--model, the file's kwargs kept), from Python (arch=) and through RobustBench (register_robustbench)."""
    builder = "robust_sabn.models:create_model"
    model = create_model("resnet_small", width=4).eval()
    weights = robust_sabn.export(model, "OwnArch2026", model_dir=tmp_path / "models",
                                 arch={"callable": builder, "kwargs": SMALL})
    with pytest.raises(CheckpointError, match=builder):
        load_trained_model(weights)
    loaded = load_trained_model(weights, arch=builder)
    assert loaded.spec == {"callable": builder, "kwargs": SMALL} and loaded.source == "exported model"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    robust_sabn.register_robustbench(tmp_path / "models", arch=builder)
    from robustbench.utils import load_model

    reloaded = load_model("OwnArch2026", model_dir=tmp_path / "models", dataset="cifar10", threat_model="Linf")
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))


def test_a_zoo_spec_with_non_json_arguments_is_refused(tmp_path):
    model = create_model("resnet_small", width=4)
    path = tmp_path / "odd.pt"
    save_checkpoint({"model": model.state_dict(), "model_spec": {"arch": "resnet_small",
                                                                 "kwargs": {"width": torch.tensor(4)}}}, path)
    with pytest.raises(CheckpointError, match="plain JSON values"):
        load_trained_model(path)
