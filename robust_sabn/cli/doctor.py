"""``robust-sabn doctor``: check the installed environment, one line per check with a fix for each failure."""
from __future__ import annotations

import argparse
import base64
import hashlib
import importlib
import importlib.metadata as metadata
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REINSTALL_ROBUSTBENCH = "pip install --no-deps --force-reinstall robustbench==1.1.1"


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
                     "pip install torch==2.14.1 torchvision==0.29.1 (a matching pair)")
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
        return Check("robustbench", False, "not installed", REINSTALL_ROBUSTBENCH)
    if changed:
        return Check("robustbench", False,
                     f"{len(changed)} files overwritten (torchattacks ships an old robustbench), e.g. {changed[0]}",
                     REINSTALL_ROBUSTBENCH)
    try:
        from robustbench.eval import benchmark  # noqa: F401
        from robustbench.utils import load_model  # noqa: F401
    except Exception as err:  # noqa: BLE001
        return Check("robustbench", False, f"{version} does not import: {type(err).__name__}: {err}",
                     "pip install 'setuptools<82' pyautoattack (robustbench needs pkg_resources and autoattack)")
    return Check("robustbench", True, f"{version}, files intact, imports")


def check_autoattack() -> Check:
    fix = "pip install pyautoattack (or upstream's: pip install git+https://github.com/fra31/auto-attack)"
    try:
        autoattack = importlib.import_module("autoattack")
        importlib.import_module("autoattack.state")
    except ImportError as err:
        return Check("autoattack", False, f"module `autoattack` missing ({err})", fix)
    if getattr(autoattack, "IS_ROBUST_SABN_ADAPTER", False):
        return Check("autoattack", True, f"pyautoattack {metadata.version('pyautoattack')} via robust-sabn's adapter")
    return Check("autoattack", True, "upstream autoattack")


def check_torchattacks() -> Check:
    try:
        import torchattacks
    except Exception as err:  # noqa: BLE001
        return Check("torchattacks", False, f"{type(err).__name__}: {err}", "pip install torchattacks==3.5.1")
    return Check("torchattacks", True, torchattacks.__version__)


def check_devices() -> Check:
    import torch

    devices = ["cpu"] + [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    return Check("devices", True, f"{', '.join(devices)}; {torch.get_num_threads()} CPU threads")


CHECKS: tuple[Callable[[], Check], ...] = (
    check_torch, check_pkg_resources, check_robustbench, check_autoattack, check_torchattacks, check_devices,
)


def run_checks() -> list[Check]:
    with warnings.catch_warnings():  # robustbench's imports warn about deprecations that are not findings
        warnings.simplefilter("ignore")
        return [check() for check in CHECKS]


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
