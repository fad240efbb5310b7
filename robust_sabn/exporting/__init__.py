"""Export in RobustBench's format: fold one route into a plain model, write its weights where
``robustbench.utils.load_model`` looks, its architecture beside them, and a leaderboard card.

Layout (``model_dir="models"``, RobustBench's default)::

    models/cifar10/Linf/Name2026Title.pt          state dict of tensors (what load_model reads)
    models/cifar10/Linf/Name2026Title.arch.json   architecture spec (JSON; rebuilds the model, nothing unpickled)
    model_info/cifar10/Linf/Name2026Title.json    leaderboard card with RobustBench's fields
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..constants import SINGLE_ROUTE, THREAT_MODELS
from ..convert import fold_route, fold_spec
from ..errors import ConfigError
from ..io import all_or_nothing, atomic_write_text, check_writable, load_weights, save_checkpoint
from ..mixing import check_weights, describe_mixture, mix_routes
from ..model_files import arch_file, write_arch_file
from ..models.spec import build_model, check_spec, spec_from_arch
from ..nn import check_model_route
from ..parsing import format_eps

NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
# RobustBench's load_model strips these from any key that contains them, which would break the key.
RESERVED_KEY_PARTS = ("module.", "model.")
# Image size used to check the rebuilt model against the folded one (any size the architecture accepts works).
CHECK_IMAGE_SIZE = {"imagenet": 224, "fashion-mnist": 28, "mnist": 28}
# Card fields a person fills in; re-exporting keeps them (results are replaced: the weights may have changed).
HUMAN_FIELDS = ("link", "name", "authors", "additional_data", "venue", "reported", "external")


def info_dir_for(model_dir: str | os.PathLike) -> Path:
    """Where cards go by default: ``model_info`` beside ``model_dir`` (RobustBench's repository layout)."""
    return Path(model_dir).parent / "model_info"


def weights_path(name: str, model_dir: str | os.PathLike = "models", dataset: str = "cifar10",
                 threat_model: str = "Linf") -> Path:
    """Where RobustBench's ``load_model`` looks for the weights of ``name``."""
    return Path(model_dir) / dataset / threat_model / f"{name}.pt"


def card_path(name: str, model_dir: str | os.PathLike = "models", dataset: str = "cifar10",
              threat_model: str = "Linf", info_dir: str | os.PathLike | None = None) -> Path:
    root = Path(info_dir) if info_dir is not None else info_dir_for(model_dir)
    return root / dataset / threat_model / f"{name}.json"


def check_export_name(name: str, dataset: str, threat_model: str) -> None:
    """A file-safe name that RobustBench's ``load_model`` treats like any other (no special-cased patterns)."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"export name must look like Name2026Title (letters, digits, '_' or '-'), got {name!r}")
    if "Kireev2021Effectiveness" in name or (dataset == "imagenet" and "Standard" in name):
        raise ConfigError(f"RobustBench's load_model treats names like {name!r} specially; choose another name")
    if threat_model not in THREAT_MODELS:
        raise ConfigError(f"threat model must be one of {list(THREAT_MODELS)}, got {threat_model!r}")
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", dataset or ""):
        raise ConfigError(f"dataset must be a lower-case name like 'cifar10', got {dataset!r}")


def exported_spec(model: nn.Module, arch: str | Mapping | None = None,
                  arch_kwargs: Mapping[str, Any] | None = None) -> dict:
    """The architecture spec of the folded model: ``arch`` when given, else the fold of ``model.model_spec``."""
    if isinstance(arch, Mapping):
        return check_spec(arch)
    if arch is not None:
        return spec_from_arch(arch, arch_kwargs)
    spec = getattr(model, "model_spec", None)
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"{type(model).__name__} has no model_spec (it is not from robust_sabn's zoo); pass "
            "arch='package.module:builder' (and arch_kwargs) that rebuilds the folded model")
    return fold_spec(spec)


def _check_rebuilds(spec: dict, folded: nn.Module, dataset: str) -> None:
    """Rebuild ``spec`` (the caller's own, so its callable may run), load the folded weights strictly, and require
    identical logits on a random batch."""
    rebuilt = build_model(spec, trusted=spec.get("callable"))
    load_weights(rebuilt, folded.state_dict(), "the folded model")
    first_conv = next((m for m in folded.modules() if isinstance(m, nn.Conv2d)), None)
    channels = first_conv.in_channels if first_conv is not None else 3
    size = CHECK_IMAGE_SIZE.get(dataset, 32)
    x = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (rebuilt.eval()(x) - folded(x)).abs().max().item()
    if not diff <= 1e-5:
        raise ConfigError(
            f"the architecture {spec} loads the weights but computes something else (max logit difference "
            f"{diff:.2e}); pass the arch/arch_kwargs the model was built with")


def _check_keys(state_dict: Mapping[str, torch.Tensor]) -> None:
    bad = [k for k in state_dict if any(part in k for part in RESERVED_KEY_PARTS)]
    if bad:
        raise ConfigError(
            f"state-dict keys {bad[:3]} contain 'model.' or 'module.', which RobustBench's load_model cuts "
            "out of keys; rename those submodules before exporting")


def write_card(path: str | os.PathLike, *, name: str, dataset: str, threat_model: str, eps: float,
               architecture: str) -> Path:
    """Write a leaderboard card for a fresh export. Fields a person filled in an existing card (link, authors,
    venue, ...) are kept; the accuracies are null until :func:`fill_card` records an evaluation."""
    card: dict[str, Any] = {
        "link": "", "name": name, "authors": "", "additional_data": False, "number_forward_passes": 1,
        "dataset": dataset, "venue": "", "architecture": architecture, "eps": format_eps(eps, threat_model),
        "clean_acc": None, "reported": None, "autoattack_acc": None, "footnote": "",
    }
    path = Path(path)
    if path.is_file():
        card.update({k: v for k, v in _read_card(path).items() if k in HUMAN_FIELDS})
    return atomic_write_text(path, json.dumps(card, indent=2) + "\n")


def fill_card(path: str | os.PathLike, report: Any) -> Path:
    """Record a single-route AutoAttack ``report`` (an :class:`~robust_sabn.eval.EvaluationReport`) in a card."""
    path = Path(path)
    card = _read_card(path)
    if card.get("eps") not in (None, report.eps_str):
        raise ConfigError(f"the card {path} is for eps {card['eps']} but the evaluation used {report.eps_str}")
    card.update(card_results(report))
    return atomic_write_text(path, json.dumps(card, indent=2) + "\n")


def _read_card(path: Path) -> dict[str, Any]:
    try:
        card = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read the card {path} ({err}); re-export the model") from None
    if not isinstance(card, dict):
        raise ConfigError(f"{path} is not a leaderboard card (a JSON object); re-export the model")
    return card


def card_results(report: Any) -> dict[str, Any]:
    """The card fields an evaluation report fills: accuracies as percentage strings, ``unreliable``, a footnote."""
    if report.attack != "autoattack" or report.protocol != SINGLE_ROUTE:
        raise ConfigError("a leaderboard card takes a single-route AutoAttack evaluation "
                          "(evaluate(..., attack='autoattack') on the exported model)")
    footnote = (f"AutoAttack ({report.version}, {report.backend}) on the first {report.n} test images, "
                f"seed {report.seed}, batches of {report.batch_size}; evaluated with robust-sabn {__version__}.")
    return {"clean_acc": f"{100 * report.clean_acc:.2f}", "autoattack_acc": f"{100 * report.robust_acc:.2f}",
            "unreliable": bool(report.flags), "footnote": footnote}


def export(model: nn.Module, name: str, route: str | Mapping[str, float] | None = None,
           model_dir: str | os.PathLike = "models",
           dataset: str = "cifar10", threat_model: str = "Linf", arch: str | Mapping | None = None, *,
           arch_kwargs: Mapping[str, Any] | None = None, eps: float = 8 / 255,
           info_dir: str | os.PathLike | None = None, overwrite: bool = False, trained_on: str | None = None,
           allow_dataset_mismatch: bool = False, input_shape: Sequence[int] | None = None,
           prepare: Callable[[nn.Module], nn.Module] | None = None, note: str | None = None) -> Path:
    """Fold ``route`` of ``model`` and write it in RobustBench's layout; returns the checkpoint path.

    ``route`` is required for a model with routed layers and must be None otherwise; a mapping of route weights
    (e.g. ``{"clean": 0.3, "adv": 0.7}``) exports that mixture of the routes (:func:`robust_sabn.mix_routes`), and
    the card and architecture file say which. ``arch`` (a zoo name,
    ``"module:callable"``, or a full spec dict) rebuilds the folded model when it has no ``model_spec``;
    ``arch_kwargs`` are its keyword arguments. The card records ``eps`` (the radius the model was trained
    for); ``robust-sabn export --eval`` fills its accuracies. After export,
    ``robustbench.utils.load_model(name, model_dir, dataset, threat_model)`` returns the folded model.
    A name RobustBench already uses for ``dataset``/``threat_model`` is refused.

    ``trained_on`` names the dataset the model was trained on (default: ``dataset``). A model is filed under another
    dataset only with ``allow_dataset_mismatch=True`` (a demonstration: RobustBench would feed it that dataset's
    images); its card and architecture file name the dataset it was trained on. ``input_shape`` (channels, height,
    width of the training images) goes into the architecture file, so that evaluating the export on images of
    another shape is refused. ``prepare`` changes the folded (or mixed) plain model before it is checked and
    written, e.g. a BN recalibration; ``note`` says what it did, in the card's architecture and the architecture
    file. The three files are written all or nothing, after every check, the weights last.
    """
    from . import robustbench

    check_export_name(name, dataset, threat_model)
    trained_on = trained_on or dataset
    if trained_on != dataset and not allow_dataset_mismatch:
        raise ConfigError(f"the model was trained on {trained_on} but would be filed as a {dataset} model, which "
                          f"RobustBench evaluates on {dataset} images; export it with dataset {trained_on!r} "
                          "(--dataset), or allow the mismatch for a demonstration (--allow-dataset-mismatch)")
    mixture = check_weights(model, route) if isinstance(route, Mapping) else None
    if mixture is None:
        check_model_route(model, route, "export")
    weights = weights_path(name, model_dir, dataset, threat_model)
    card = card_path(name, model_dir, dataset, threat_model, info_dir)
    for path in (weights, arch_file(weights), card):
        check_writable(path)
    if weights.exists() and not overwrite:
        raise ConfigError(f"{weights} exists; pass overwrite=True (--overwrite) to replace it")
    robustbench.check_name_free(name, dataset, threat_model)

    folded = (fold_route(model, route) if mixture is None else mix_routes(model, mixture)).cpu().eval()
    if prepare is not None:
        folded = prepare(folded).cpu().eval()
    spec = exported_spec(model, arch, arch_kwargs)
    state_dict = {k: v.detach().clone().contiguous() for k, v in folded.state_dict().items()}
    _check_keys(state_dict)
    _check_rebuilds(spec, folded, trained_on)

    architecture = spec.get("arch") or spec["callable"]
    if mixture is not None:
        route = {r: w for r, w in mixture.items() if w > 0}
        architecture += f" ({describe_mixture(route)} of the routes, folded)"
    elif route is not None:
        architecture = f"{architecture} ({route} route folded)"
    if note:
        architecture += f"; {note}"
    # Renamed into place in this order, the weights last: they are what load_model looks for, so a process killed
    # between two renames leaves no loadable model (and an overwritten one no old weights beside new files).
    with all_or_nothing():
        write_arch_file(arch_file(weights), spec, name=name, dataset=dataset, trained_on=trained_on,
                        threat_model=threat_model, route=route, source_spec=getattr(model, "model_spec", None),
                        robust_sabn=__version__, **({"input_shape": list(input_shape)} if input_shape else {}),
                        **({"note": note} if note else {}))
        write_card(card, name=name, dataset=trained_on, threat_model=threat_model, eps=eps,
                   architecture=architecture)
        save_checkpoint(state_dict, weights)
        weights.unlink(missing_ok=True)
    robustbench.remember(model_dir)
    return weights
