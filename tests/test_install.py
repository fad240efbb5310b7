"""robust-sabn installs like any plugin: the wheel alone, into a fresh virtual environment, without bin/setup; its
.pth makes plain RobustBench code work there without `import robust_sabn`."""
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*argv, cwd=None):
    result = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (argv, result.stdout[-2000:], result.stderr[-3000:])
    return result.stdout


@pytest.mark.slow
def test_the_wheel_in_a_fresh_venv_exports_and_loads_through_robustbench(tmp_path):
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the repository

    def skip(folder, names):
        top = ("tests", "docs", "runs", "models", "model_info", "data", "build", "site") if folder == str(ROOT) else ()
        return [n for n in names if n in top or n.startswith(".") or n == "__pycache__" or n.endswith(".egg-info")]

    shutil.copytree(ROOT, source, ignore=skip)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", source)
    wheel = next((tmp_path / "dist").glob("robust_sabn-*.whl"))
    assert "robust_sabn/py.typed" in zipfile.ZipFile(wheel).namelist()  # type checkers read the annotations
    run(sys.executable, "-m", "venv", tmp_path / "venv")
    python = tmp_path / "venv" / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", "-c", ROOT / "robust_sabn" / "constraints.txt", wheel)
    doctor = subprocess.run([tmp_path / "venv" / "bin" / "robust-sabn", "doctor"], capture_output=True, text=True)
    for line in doctor.stdout.splitlines():  # every fix the doctor names is a command a pip user can run
        if line.startswith("FAIL"):
            fix = line.split("-> fix: ", 1)[1]
            assert fix.startswith("pip install "), line
            run(python, "-m", *fix.split()[:2], *[a.strip("'") for a in fix.split()[2:]])
    run(tmp_path / "venv" / "bin" / "robust-sabn", "doctor")
    script = textwrap.dedent("""
        import torch, robust_sabn
        from robustbench.utils import load_model
        model = robust_sabn.create_model("resnet_small", width=4, norm="sandwich").eval()
        robust_sabn.export(model, "FreshVenv2026", route="adv", model_dir="exports")
        loaded = load_model("FreshVenv2026", model_dir="exports", dataset="cifar10", threat_model="Linf")
        x = torch.rand(2, 3, 32, 32)
        with torch.no_grad(), robust_sabn.use_route(model, "adv"):
            assert (loaded(x) - model(x)).abs().max() <= 1e-5
            torch.save({"x": x, "logits": model(x)}, "expected.pt")
        print("ok")
    """)
    assert run(python, "-W", "ignore", "-c", script, cwd=tmp_path).strip() == "ok"
    plain = textwrap.dedent("""
        import sys, torch
        import autoattack
        assert autoattack.IS_ROBUST_SABN_ADAPTER and "robust_sabn" not in sys.modules
        from robustbench.utils import load_model
        loaded = load_model("FreshVenv2026", model_dir="exports", dataset="cifar10", threat_model="Linf")
        expected = torch.load("expected.pt")
        with torch.no_grad():
            assert (loaded(expected["x"]) - expected["logits"]).abs().max() <= 1e-5
        print("ok")
    """)  # a process that never imports robust_sabn: the wheel's .pth installed the hooks
    assert run(python, "-W", "ignore", "-c", plain, cwd=tmp_path).strip() == "ok"
