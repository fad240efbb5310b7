"""Make exported models loadable by plain RobustBench code, offline.

RobustBench has no registration API: ``load_model`` looks names up in ``robustbench.model_zoo.model_dicts``.
This module adds one entry per exported model (its constructor rebuilds the architecture from the
``<name>.arch.json`` beside the weights), never replacing RobustBench's own names. An architecture file may name
only a zoo architecture: one that names a Python callable is loaded only after the caller names that callable
(``register_robustbench(model_dir, arch="package.module:builder")``); otherwise ``load_model`` stops with a
one-line error saying so, and nothing named by the file is imported.

It stays lazy, and needs no ``import robust_sabn``: the import hooks of ``_robust_sabn_hooks`` (installed at
interpreter start-up) call two functions of this module. When ``robustbench.model_zoo`` is first imported, the
models under ``$ROBUST_SABN_MODEL_DIR`` (``os.pathsep``-separated folders; default
``./models``) and under every folder exported to or registered in this process are added; and
``robustbench.utils.load_model`` is wrapped so that a call with ``model_dir=X`` first registers the exported
model of that name found in ``X``. ``register_robustbench(model_dir)`` registers a folder explicitly.
"""
from __future__ import annotations

import functools
import importlib.metadata as metadata
import inspect
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType

from torch import nn

from ..checksums import check_manifest, manifest_path
from ..errors import ConfigError
from ..model_files import ARCH_SUFFIX, read_arch_file
from ..models.spec import build_model, resolve_spec

ENV_MODEL_DIR = "ROBUST_SABN_MODEL_DIR"
DEFAULT_MODEL_DIR = "models"
# load_model refuses entries whose gdrive_id is None, even when the file exists; the weights are local.
LOCAL_ID = "robust-sabn-local-export"

_extra_dirs: list[Path] = []
_ours: dict[tuple[str, str, str], Path] = {}  # (dataset, threat model, name) -> architecture file
_trusted: dict[Path, str] = {}  # architecture file -> the callable a caller named for it


def model_dirs() -> list[Path]:
    """Folders scanned when RobustBench is imported: ``$ROBUST_SABN_MODEL_DIR`` (else ./models) and every
    folder exported to or registered in this process."""
    env = [Path(p) for p in os.environ.get(ENV_MODEL_DIR, "").split(os.pathsep) if p]
    dirs: list[Path] = []
    for folder in (env or [Path(DEFAULT_MODEL_DIR)]) + _extra_dirs:
        if folder.resolve() not in [d.resolve() for d in dirs]:
            dirs.append(folder)
    return dirs


def remember(model_dir: str | os.PathLike) -> None:
    """Note an export folder: registered now if RobustBench is loaded, else when it is imported."""
    folder = Path(model_dir)
    if folder.resolve() not in [d.resolve() for d in _extra_dirs]:
        _extra_dirs.append(folder)
    if "robustbench.model_zoo" in sys.modules:
        _register_folder(folder)


def register_robustbench(model_dir: str | os.PathLike | None = None, arch: str | None = None) -> list[str]:
    """Register every exported model under ``model_dir`` (default: the folders of :func:`model_dirs`) in
    RobustBench's model dictionary, and remember the folder. Imports RobustBench. Returns the names.

    ``arch``: a ``"package.module:builder"`` you trust; exports in ``model_dir`` whose architecture file names
    exactly this callable are built with it (without ``arch``, loading such an export is refused)."""
    import_robustbench()
    if model_dir is None:
        return [name for folder in model_dirs() for name in _register_folder(folder)]
    remember(model_dir)
    if arch is not None:
        for arch_path in Path(model_dir).glob(f"*/*/*{ARCH_SUFFIX}"):
            if read_arch_file(arch_path)["spec"].get("callable") == arch:
                _trusted[arch_path.resolve()] = arch
    return _register_folder(Path(model_dir))


def robustbench_names(dataset: str, threat_model: str) -> set[str]:
    """RobustBench's own model names for ``dataset``/``threat_model`` (ours excluded); empty when RobustBench
    does not know the pair."""
    entries = _entries(dataset, threat_model)
    if entries is None:
        return set()
    return {name for name in entries if (dataset, threat_model, name) not in _ours}


def unreachable(dataset: str, threat_model: str) -> str | None:
    """Why RobustBench's ``load_model`` cannot reach an export filed under ``dataset``/``threat_model`` (it knows
    neither), or None when it can."""
    import_robustbench()
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    release = f"RobustBench {metadata.version('robustbench')}"
    if dataset not in {d.value for d in BenchmarkDataset}:
        return f"{release} has no {dataset} models"
    if threat_model not in {t.value for t in ThreatModel}:
        return f"{release} has no {threat_model} threat model"
    return None


def check_name_free(name: str, dataset: str, threat_model: str) -> None:
    """Refuse a name that RobustBench (or a timm model that ``load_model`` prefers) already uses."""
    if name in robustbench_names(dataset, threat_model):
        raise ConfigError(f"{name!r} is already a RobustBench model for {dataset}/{threat_model}; "
                          "choose another name (e.g. Lastname2026Keyword)")
    if _entries(dataset, threat_model) is not None:
        import timm

        timm_name = f"{name.lower().replace('-', '_')}_{dataset}_{threat_model.lower()}"
        if timm.is_model(timm_name):
            raise ConfigError(f"RobustBench's load_model would load timm's {timm_name!r} for {name!r}; "
                              "choose another name")


def import_robustbench() -> None:
    """Import RobustBench's model zoo and ``load_model`` without the deprecation warnings its own imports raise
    (pkg_resources, torch.jit, timm); the import hook registers the default folders."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import robustbench.utils  # noqa: F401  (imports robustbench.model_zoo)


def _entries(dataset: str, threat_model: str) -> dict | None:
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    try:
        return model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat_model)]
    except (ValueError, KeyError):
        return None


def build_exported(arch_path: str | os.PathLike) -> nn.Module:
    """The constructor behind every registered entry: the architecture from its JSON file, untrained, after the
    export's files are checked against its SHA-256 manifest (RobustBench reads the weights next)."""
    arch_path = Path(arch_path)
    weights = arch_path.with_name(arch_path.name[: -len(ARCH_SUFFIX)] + ".pt")
    check_manifest(manifest_path(weights), [weights, arch_path])
    hint = f", or call robust_sabn.register_robustbench({str(arch_path.parent.parent.parent)!r}, arch=...) first"
    trusted = _trusted.get(arch_path.resolve())
    spec, trusted = resolve_spec(read_arch_file(arch_path)["spec"], str(arch_path), trusted, hint=hint)
    return build_model(spec, trusted, str(arch_path) if trusted is None else None)


def _register(dataset: str, threat_model: str, name: str, arch_path: Path) -> bool:
    entries = _entries(dataset, threat_model)
    if entries is None:
        return False
    key = (dataset, threat_model, name)
    if name in entries and key not in _ours:
        warnings.warn(f"robust-sabn: not registering {arch_path}: {name!r} is a RobustBench model", stacklevel=3)
        return False
    entries[name] = {"model": functools.partial(build_exported, str(arch_path)), "gdrive_id": LOCAL_ID}
    _ours[key] = arch_path
    return True


def _register_folder(model_dir: Path, only: tuple[str, str, str] | None = None) -> list[str]:
    """Register exported models found as ``<model_dir>/<dataset>/<threat>/<name>.arch.json`` + ``<name>.pt``."""
    if only is not None:
        candidates = [model_dir / only[0] / only[1] / f"{only[2]}{ARCH_SUFFIX}"]
    else:
        candidates = sorted(model_dir.glob(f"*/*/*{ARCH_SUFFIX}")) if model_dir.is_dir() else []
    names = []
    for arch_path in candidates:
        name = arch_path.name[: -len(ARCH_SUFFIX)]
        if arch_path.is_file() and arch_path.with_name(f"{name}.pt").is_file() and \
                _register(arch_path.parent.parent.name, arch_path.parent.name, name, arch_path):
            names.append(name)
    return names


def register_model_dirs(_model_zoo: ModuleType) -> None:
    """Register the exports in :func:`model_dirs`; ``_robust_sabn_hooks`` calls it once RobustBench's model zoo
    has been imported."""
    for folder in model_dirs():
        _register_folder(folder)


def zoo_entry(name: str, spec: dict) -> str:
    """The entry of an export for ``robustbench/model_zoo/<dataset>.py``, as a RobustBench pull request adds it to
    the threat model's ``OrderedDict``: the architecture's constructor call, and the Google Drive id of the ``.pt``
    file to fill in once it is uploaded."""
    arguments = ", ".join(f"{key}={value!r}" for key, value in spec["kwargs"].items())
    if "arch" in spec:
        constructor = f"create_model({spec['arch']!r}, {arguments})"
        source = "from robust_sabn.models import create_model"
    else:
        module, _, function = spec["callable"].partition(":")
        constructor, source = f"{function}({arguments})", f"from {module} import {function.split('.')[0]}"
    return (f"    # {source}\n"
            f"    ({name!r}, {{\n"
            f"        'model': lambda: {constructor},\n"
            f"        'gdrive_id': '',  # the Google Drive id of {name}.pt once uploaded\n"
            f"    }}),")


def wrap_load_model(utils: ModuleType) -> None:
    """Wrap ``robustbench.utils.load_model``: register the exported model named in the call from the
    ``model_dir`` of the call, then load as RobustBench does. ``_robust_sabn_hooks`` calls it once
    ``robustbench.utils`` has been imported."""
    original = utils.load_model
    if getattr(original, "__robust_sabn_original__", None) is not None:
        return
    signature = inspect.signature(original)

    @functools.wraps(original)
    def load_model(*args, **kwargs):
        call = signature.bind_partial(*args, **kwargs)
        call.apply_defaults()
        try:
            from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

            dataset = BenchmarkDataset(call.arguments["dataset"]).value
            threat = ThreatModel(call.arguments.get("norm") or call.arguments["threat_model"]).value
            _register_folder(Path(call.arguments["model_dir"]), (dataset, threat, call.arguments["model_name"]))
        except (ValueError, KeyError, TypeError):
            pass  # RobustBench reports bad arguments itself
        return original(*args, **kwargs)

    load_model.__robust_sabn_original__ = original
    utils.load_model = load_model
    for name in ("robustbench", "robustbench.eval"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "load_model", None) is original:
            module.load_model = load_model
