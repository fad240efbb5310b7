"""``robust-sabn doctor``: check the installed environment, one line per check with a fix for each failure."""
from __future__ import annotations

import argparse
import base64
import hashlib
import importlib
import importlib.metadata as metadata
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import _robust_sabn_hooks


def pinned(distribution: str) -> str:
    """``name==version`` as the set-up pins it: the one list of versions verified together, shipped in the package
    (``robust_sabn/constraints.txt``, which ``bin/setup`` installs with)."""
    text = resources.files("robust_sabn").joinpath("constraints.txt").read_text()
    return next(line.split("#")[0].strip() for line in text.splitlines()
                if re.match(rf"{re.escape(distribution)}\s*[=<>!~]", line))


def reinstall_robustbench() -> str:
    return f"pip install --no-deps --force-reinstall {pinned('robustbench')}"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def check_torch() -> Check:
    try:
        import torch
        import torchvision
        from torchvision.ops import nms

        nms(torch.zeros(1, 4), torch.zeros(1), 0.5)  # fails when torchvision's C++ ops do not match torch
    except Exception as err:  # noqa: BLE001 -- any failure here is the finding
        return Check("torch", False, f"{type(err).__name__}: {err}",
                     f"pip install {pinned('torch')} {pinned('torchvision')} (a matching pair)")
    return Check("torch", True, f"torch {torch.__version__}, torchvision {torchvision.__version__}")


def check_pkg_resources() -> Check:
    try:
        importlib.import_module("pkg_resources")
    except ImportError:
        return Check("pkg_resources", False, "missing (setuptools >= 82 dropped it; robustbench needs it)",
                     "pip install 'setuptools<82'")
    return Check("pkg_resources", True, f"setuptools {metadata.version('setuptools')}")


def changed_files(distribution: str, suffix: str = ".py") -> list[str]:
    """Files of an installed distribution whose content no longer matches its RECORD hashes."""
    dist = metadata.distribution(distribution)
    changed = []
    for file in dist.files or []:
        if not file.hash or not str(file).endswith(suffix) or file.hash.mode != "sha256":
            continue
        path = Path(file.locate())
        digest = hashlib.sha256(path.read_bytes()).digest() if path.is_file() else b""
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != file.hash.value:
            changed.append(str(file))
    return changed


def check_robustbench() -> Check:
    try:
        version = metadata.version("robustbench")
        changed = changed_files("robustbench")
    except metadata.PackageNotFoundError:
        return Check("robustbench", False, "not installed", reinstall_robustbench())
    if changed:
        return Check("robustbench", False,
                     f"{len(changed)} files overwritten (torchattacks ships an old robustbench), e.g. {changed[0]}",
                     reinstall_robustbench())
    try:
        from robustbench.eval import benchmark  # noqa: F401
        from robustbench.utils import load_model  # noqa: F401
    except Exception as err:  # noqa: BLE001
        return Check("robustbench", False, f"{version} does not import: {type(err).__name__}: {err}",
                     "pip install 'setuptools<82' pyautoattack (robustbench needs pkg_resources and autoattack)")
    return Check("robustbench", True, f"{version}, files intact, imports")


# Runs in a fresh interpreter and never imports robust_sabn. Both import orders: autoattack first (which alone must
# not import robust_sabn), then RobustBench first, with the modules of the first round dropped (torch stays).
# load_model must be robust-sabn's wrapper each time. A failing hook's warning is an error, so its message ends stderr.
IMPORT_PROBE = """\
import sys
for first in ('autoattack', 'robustbench'):
    for name in [name for name in sys.modules if name.split('.')[0] in ('autoattack', 'robustbench')]:
        del sys.modules[name]
    if first == 'autoattack':
        import autoattack, autoattack.state
        assert 'robust_sabn' not in sys.modules, 'import autoattack imported robust_sabn'
    import robustbench.utils, robustbench.eval, autoattack, autoattack.state
    assert hasattr(robustbench.utils.load_model, '__robust_sabn_original__'), f'load_model not wrapped ({first} first)'
print('adapter' if getattr(autoattack, 'IS_ROBUST_SABN_ADAPTER', False) else 'upstream')
"""
PROBE_FLAGS = ("-W", "ignore", "-W", "error:robust-sabn could not register")


def check_autoattack() -> Check:
    """``autoattack`` and RobustBench import in any process, in either order, robust_sabn imported or not."""
    if importlib.util.find_spec("autoattack") is None:
        return Check("autoattack", False, "module `autoattack` missing",
                     "pip install pyautoattack (or upstream's: pip install git+https://github.com/fra31/auto-attack)")
    probe = run_import_probe()
    if probe.returncode != 0:
        error = (probe.stderr.strip().splitlines() or [f"exit code {probe.returncode}"])[-1]
        return Check("autoattack", False, f"a process that does not import robust_sabn fails: {error}", hooks_fix())
    backend = (f"pyautoattack {metadata.version('pyautoattack')} via robust-sabn's adapter"
               if probe.stdout.strip() == "adapter" else "upstream autoattack")
    return Check("autoattack", True, f"{backend}; RobustBench imports without robust_sabn, in either order")


def run_import_probe() -> subprocess.CompletedProcess:
    """:data:`IMPORT_PROBE` in a fresh interpreter, in an empty folder (so that only installed code is found)."""
    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run([sys.executable, *PROBE_FLAGS, "-c", IMPORT_PROBE], cwd=cwd, capture_output=True,
                              text=True)


def hooks_fix() -> str:
    """How to get the import hooks back: unset the variable that turns them off, else reinstall robust-sabn as it
    was installed (the .pth that installs them at start-up is missing or broken)."""
    if _robust_sabn_hooks.disabled():
        return (f"unset {_robust_sabn_hooks.DISABLE_VARIABLE} (it turns the hooks off), "
                "or import robust_sabn before RobustBench")
    # pip's install record, not the egg-info that an editable build leaves in the source tree (found from there)
    dist = next((d for d in metadata.distributions(name="robust-sabn") if d.read_text("INSTALLER")), None)
    if dist is None:  # a source checkout on sys.path: install it
        return f"pip install --no-deps -e {Path(__file__).resolve().parents[1]}"
    origin = json.loads(dist.read_text("direct_url.json") or "{}")
    editable = "-e " if origin.get("dir_info", {}).get("editable") else ""
    source = origin.get("url", "").removeprefix("file://") or f"robust-sabn=={dist.version}"
    return f"pip install --no-deps --force-reinstall {editable}{source}"


def check_torchattacks() -> Check:
    try:
        import torchattacks
    except Exception as err:  # noqa: BLE001
        return Check("torchattacks", False, f"{type(err).__name__}: {err}", f"pip install {pinned('torchattacks')}")
    return Check("torchattacks", True, torchattacks.__version__)


def check_devices() -> Check:
    import torch

    devices = ["cpu"] + [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    return Check("devices", True, f"{', '.join(devices)}; {torch.get_num_threads()} CPU threads")


CHECKS: tuple[Callable[[], Check], ...] = (
    check_torch, check_pkg_resources, check_robustbench, check_autoattack, check_torchattacks, check_devices,
)


def run_checks() -> list[Check]:
    """Every check, in order; the autoattack check (which waits for its subprocess) runs while the others do."""
    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=1) as pool:
        warnings.simplefilter("ignore")  # robustbench's imports warn about deprecations that are not findings
        background = pool.submit(check_autoattack)
        return [background.result() if check is check_autoattack else check() for check in CHECKS]


def run(args: argparse.Namespace) -> int:
    results = run_checks()
    for result in results:
        if not args.quiet or not result.ok:
            fix = f" -> fix: {result.fix}" if not result.ok else ""
            print(f"{'ok  ' if result.ok else 'FAIL'} {result.name:<14} {result.detail}{fix}")
    return 0 if all(r.ok for r in results) else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Check the installed environment: one line per check, with the fix for each failure."
    parser.add_argument("--quiet", action="store_true", help="print failing checks only")
