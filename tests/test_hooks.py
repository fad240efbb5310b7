"""The import hooks of ``_robust_sabn_hooks``: installed at start-up by the package's .pth, they give every process
``autoattack`` and robust-sabn's exports in RobustBench, and change nothing else RobustBench does."""
import importlib
import importlib.metadata as metadata
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
import torch

import _robust_sabn_hooks
from robust_sabn.cli import doctor

ROOT = Path(__file__).resolve().parents[1]


def fresh_python(script: str, cwd: Path, env: dict | None = None) -> str:
    """Run ``script`` in a new interpreter of this environment, outside the repository; its stdout."""
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", textwrap.dedent(script)], cwd=cwd,
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


def test_the_pth_is_installed_recorded_and_runs_after_the_editable_finder():
    """In RECORD (so `pip uninstall` removes it), and sorted after setuptools' __editable__ .pth, whose finder
    makes `_robust_sabn_hooks` importable in an editable install (site runs .pth files in sorted order)."""
    recorded = [f for dist in metadata.distributions(name="robust-sabn") for f in dist.files or []
                if f.name == "robust_sabn_hooks.pth"]
    assert len(recorded) == 1
    path = Path(recorded[0].locate())
    assert path.read_text() == "import _robust_sabn_hooks; _robust_sabn_hooks.startup()\n"
    editable = [p.name for p in path.parent.glob("__editable__.*.pth")]
    assert sorted([path.name, *editable])[-1] == path.name


def test_install_is_idempotent():
    _robust_sabn_hooks.install()
    _robust_sabn_hooks.install()
    for finder in (_robust_sabn_hooks.AfterImportFinder, _robust_sabn_hooks.AutoAttackFinder):
        assert sum(isinstance(f, finder) for f in sys.meta_path) == 1


def test_a_failing_callback_warns_and_the_module_still_imports(monkeypatch):
    monkeypatch.setitem(_robust_sabn_hooks.AFTER_IMPORT, "colorsys", "no_such_function")
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    with pytest.warns(UserWarning, match="robust-sabn could not register .*no_such_function"):
        colorsys = importlib.import_module("colorsys")
    assert colorsys.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)


def test_robustbench_own_models_load_unchanged(tmp_path):
    """RobustBench's own entry and checkpoint format, through the wrapped load_model: its class, exactly the saved
    weights (random ones, mu and sigma included)."""
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    from robustbench.utils import load_model

    assert hasattr(load_model, "__robust_sabn_original__")  # the wrapper is on the path being tested
    entry = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf]["Wong2020Fast"]
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in entry["model"]().state_dict().items()}
    (tmp_path / "cifar10" / "Linf").mkdir(parents=True)
    torch.save({"state_dict": state}, tmp_path / "cifar10" / "Linf" / "Wong2020Fast.pt")
    loaded = load_model("Wong2020Fast", model_dir=tmp_path, dataset="cifar10", threat_model="Linf")
    assert type(loaded) is entry["model"] and type(loaded).__module__ == "robustbench.model_zoo.cifar10"
    assert loaded.state_dict().keys() == state.keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    assert model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf]["Wong2020Fast"] is entry


@pytest.mark.slow
@pytest.mark.parametrize("first", ["autoattack", "robustbench"])
def test_a_process_that_never_imports_robust_sabn_gets_autoattack_and_robustbench(first, tmp_path):
    """Start-up installs the hooks and imports nothing heavy; `import autoattack` alone imports no robust_sabn;
    RobustBench imports in either order, with the adapter and robust-sabn's load_model."""
    script = f"""
        import sys, _robust_sabn_hooks
        assert isinstance(sys.meta_path[-1], _robust_sabn_hooks.AutoAttackFinder)
        assert not {{'robust_sabn', 'torch', 'robustbench'}} & set(sys.modules)
        if {first!r} == "autoattack":
            import autoattack, autoattack.state
            assert autoattack.IS_ROBUST_SABN_ADAPTER and "robust_sabn" not in sys.modules
        from robustbench.utils import load_model
        import robustbench.eval, autoattack, autoattack.state
        assert robustbench.eval.AutoAttack is autoattack.AutoAttack and autoattack.IS_ROBUST_SABN_ADAPTER
        assert load_model.__robust_sabn_original__ and robustbench.eval.load_model is load_model
        print("ok")
    """
    assert fresh_python(script, tmp_path) == "ok"


@pytest.mark.slow
def test_with_the_hooks_turned_off_import_robust_sabn_installs_them(tmp_path):
    """ROBUST_SABN_NO_HOOKS=1 keeps start-up from installing anything (RobustBench then lacks autoattack), and
    `import robust_sabn` installs the hooks itself, as for a source checkout on PYTHONPATH: it wraps the load_model
    of the RobustBench modules already imported, and autoattack is found."""
    env = {**os.environ, _robust_sabn_hooks.DISABLE_VARIABLE: "1"}
    script = """
        import sys
        assert not any(type(f).__module__ == "_robust_sabn_hooks" for f in sys.meta_path)
        try:
            import robustbench.eval
        except ModuleNotFoundError as err:
            assert err.name == "autoattack"
        else:
            raise AssertionError("robustbench imported without the hooks")
        assert "robustbench.utils" in sys.modules
        import robust_sabn
        import robustbench.eval, autoattack
        from robustbench.utils import load_model
        assert autoattack.IS_ROBUST_SABN_ADAPTER and load_model.__robust_sabn_original__
        assert robustbench.load_model is robustbench.eval.load_model is load_model
        print("ok")
    """
    assert fresh_python(script, tmp_path, env) == "ok"


@pytest.mark.slow
def test_doctor_probe_passes_here():
    check = doctor.check_autoattack()
    assert check.ok and "robust-sabn's adapter" in check.detail and "either order" in check.detail, check


@pytest.mark.slow
@pytest.mark.parametrize("broken", ["pth not processed", "hooks turned off"])
def test_doctor_probe_fails_with_the_fix_when_the_hooks_are_missing(broken, monkeypatch):
    """`python -S` with site-packages on PYTHONPATH: everything importable, but no .pth runs, as when the .pth is
    missing. The fix reinstalls this (editable) install; with the variable set, it says to unset it."""
    if broken == "pth not processed":
        monkeypatch.setenv("PYTHONPATH", sysconfig.get_paths()["purelib"])
        monkeypatch.setattr(doctor, "PROBE_FLAGS", ("-S", *doctor.PROBE_FLAGS))
    else:
        monkeypatch.setenv(_robust_sabn_hooks.DISABLE_VARIABLE, "1")
    check = doctor.check_autoattack()
    assert not check.ok and "No module named 'autoattack'" in check.detail, check
    if broken == "pth not processed":
        assert check.fix == f"pip install --no-deps --force-reinstall -e {ROOT}"
    else:
        assert check.fix.startswith("unset ROBUST_SABN_NO_HOOKS")
