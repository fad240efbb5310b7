"""The installed environment: RobustBench intact and importable, AutoAttack reachable, the doctor command."""
import subprocess
import sys
from functools import partial

import pytest
import torch

from robust_sabn import create_model, fold_route, use_route
from robust_sabn.cli import doctor, main
from robust_sabn.cli.doctor import changed_files, check_robustbench, run_checks
from robust_sabn.io import save_checkpoint


@pytest.mark.slow
def test_robustbench_and_autoattack_import_in_a_fresh_interpreter():
    """With robust_sabn imported first, RobustBench imports with the adapter as `autoattack`; robust_sabn loads no
    RobustBench itself. (Without `import robust_sabn`: tests/test_hooks.py.)"""
    code = ("import sys, robust_sabn; assert 'robustbench' not in sys.modules; "
            "import robustbench.eval, robustbench.utils, autoattack, autoattack.state; "
            "assert autoattack.IS_ROBUST_SABN_ADAPTER; print('ok')")
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_an_installed_upstream_autoattack_wins_over_the_adapter(tmp_path, monkeypatch):
    (tmp_path / "autoattack").mkdir()
    (tmp_path / "autoattack" / "__init__.py").write_text("UPSTREAM = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "autoattack", raising=False)
    import autoattack

    assert getattr(autoattack, "UPSTREAM", False) and not hasattr(autoattack, "IS_ROBUST_SABN_ADAPTER")
    del sys.modules["autoattack"]  # monkeypatch puts back whatever was imported before


@pytest.fixture
def import_probe_passes(monkeypatch):
    """The doctor's subprocess, answered as it is here (tests/test_hooks.py runs the real one)."""
    monkeypatch.setattr(doctor, "run_import_probe", lambda: subprocess.CompletedProcess([], 0, "adapter\n", ""))


@pytest.mark.usefixtures("import_probe_passes")
def test_doctor_passes_here_and_exits_zero(capsys):
    assert all(check.ok for check in run_checks())
    assert main(["doctor"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6 and all(line.startswith("ok") for line in lines)


@pytest.mark.usefixtures("import_probe_passes")
def test_doctor_detects_robustbench_files_overwritten_by_torchattacks(monkeypatch, capsys):
    assert changed_files("robustbench") == []
    monkeypatch.setattr("robust_sabn.cli.doctor.changed_files", lambda dist: ["robustbench/eval.py"])
    result = check_robustbench()
    assert not result.ok and "force-reinstall robustbench==1.1.1" in result.fix
    assert main(["doctor", "--quiet"]) == 1
    assert capsys.readouterr().out.startswith("FAIL robustbench")


def test_changed_files_compares_content_against_the_record(tmp_path, monkeypatch):
    import importlib.metadata as metadata

    dist = metadata.distribution("tqdm")
    target = next(f for f in dist.files if str(f).endswith("tqdm/version.py"))
    original = target.locate().read_bytes()
    monkeypatch.setattr(type(target), "locate", lambda self: tmp_path / "copy.py")
    (tmp_path / "copy.py").write_bytes(original + b"# edited\n")
    assert "tqdm/version.py" in changed_files("tqdm")


def test_robustbench_load_model_reads_a_folded_zoo_model_from_its_layout(tmp_path):
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    from robustbench.utils import load_model

    model = create_model("resnet_small", width=8, norm="sandwich").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_checkpoint(fold_route(model, "adv").state_dict(), tmp_path / "cifar10" / "Linf" / "RobustSabnTest.pt")
    entries = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf]
    entries["RobustSabnTest"] = {"model": partial(create_model, "resnet_small", width=8), "gdrive_id": ""}
    try:
        loaded = load_model("RobustSabnTest", model_dir=tmp_path, dataset="cifar10", threat_model="Linf")
    finally:
        del entries["RobustSabnTest"]
    x = torch.rand(4, 3, 32, 32)
    with use_route(model, "adv"):
        assert (loaded(x) - model(x)).abs().max() <= 1e-5
    assert not loaded.training


@pytest.mark.slow
@pytest.mark.parametrize("argv, help_of", [(["doctor", "--bogus"], "robust-sabn doctor"),
                                           (["no-such-command"], "robust-sabn"),
                                           (["bench", "norms", "--bogus"], "robust-sabn bench norms"),
                                           (["eval"], "robust-sabn eval")])
def test_cli_usage_errors_exit_two_in_one_line_naming_the_commands_help(argv, help_of):
    result = subprocess.run([sys.executable, "-m", "robust_sabn", *argv], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "error: " in result.stderr and result.stderr.endswith(f"see `{help_of} --help`\n")


@pytest.mark.slow
@pytest.mark.parametrize("broken", ["torchattacks", "robustbench"])
def test_doctor_works_and_names_a_broken_dependency_other_commands_say_to_run_it(broken):
    """Commands are imported only when they run: the doctor starts with torchattacks or RobustBench broken, and a
    command that needs the broken package ends in one line pointing to the doctor."""
    def cli(*argv):
        code = (f"import sys; sys.modules[{broken!r}] = None\n"
                f"from robust_sabn.cli import main\nraise SystemExit(main({list(argv)!r}))")
        return subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True)

    doctor = cli("doctor")
    assert doctor.returncode == 1 and "Traceback" not in doctor.stderr, doctor.stderr
    assert [line.split()[1] for line in doctor.stdout.splitlines() if line.startswith("FAIL")] == [broken]
    command = cli("eval", "nowhere.pt") if broken == "torchattacks" else cli("export", "nowhere.pt", "--name", "X")
    assert command.returncode == 2 and command.stderr.count("\n") == 1, command.stderr
    assert "robust-sabn doctor" in command.stderr or "no checkpoint" in command.stderr


def test_the_pins_live_in_one_file_that_the_set_up_installed_and_the_doctor_names():
    import importlib.metadata as metadata
    from importlib import resources

    pins = [line.split("#")[0].strip() for line in
            resources.files("robust_sabn").joinpath("constraints.txt").read_text().splitlines()]
    exact = dict(pin.split("==") for pin in pins if "==" in pin)
    assert {"torch", "torchvision", "torchattacks", "pyautoattack", "robustbench"} <= set(exact)
    for name, version in exact.items():  # what bin/setup installed here
        assert metadata.version(name).split("+")[0] == version, name
        assert doctor.pinned(name) == f"{name}=={version}"
