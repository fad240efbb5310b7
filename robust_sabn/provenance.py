"""What a file was made with: the versions of robust-sabn and the libraries that decide its numbers, and the git
commit when robust-sabn runs from a checkout. Checkpoints, ``config.yaml``, export cards and evaluation reports
record it; evaluation reports and benchmark tables also name the CPU (:func:`cpu_name`)."""
from __future__ import annotations

import functools
import importlib.metadata as metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

from .version import __version__

LIBRARIES = ("torch", "torchvision", "torchattacks", "pyautoattack", "robustbench")


@functools.lru_cache(maxsize=1)
def provenance() -> dict[str, Any]:
    """``{"robust_sabn": __version__, "torch": "2.14.1", ..., "git_commit": "ab12...(+ local changes)" or None}``; a
    library that is not installed is None."""
    versions: dict[str, Any] = {"robust_sabn": __version__}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["git_commit"] = git_commit(Path(__file__).resolve().parent.parent)
    return versions


def git_commit(folder: Path) -> str | None:
    """The commit checked out in ``folder`` when it is robust-sabn's own git work tree ("+ local changes" when files
    differ from it); None for an installed package or when git is unavailable."""
    if not (folder / ".git").exists() or not (folder / "robust_sabn" / "provenance.py").is_file():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        changed = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + (" + local changes" if changed.returncode == 0 and changed.stdout.strip() else "")


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else the platform's word for it) and the widest vector
    instructions PyTorch's CPU kernels use here, e.g. ``"Intel(R) Xeon(R) Processor (AVX512)"``: speed records from
    two machines compare only when these agree."""
    import torch

    name = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            name = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{name or platform.processor() or platform.machine() or 'unknown CPU'} " \
           f"({torch.backends.cpu.get_cpu_capability()})"
