"""Export in RobustBench's format: fold one route into a plain model, write its weights where
``robustbench.utils.load_model`` looks, its architecture beside them, and a leaderboard card.

Layout (``model_dir="models"``, RobustBench's default)::

    models/cifar10/Linf/Name2026Title.pt          state dict of tensors (what load_model reads)
    models/cifar10/Linf/Name2026Title.safetensors the same tensors as safetensors (for sharing)
    models/cifar10/Linf/Name2026Title.arch.json   architecture spec (JSON; rebuilds the model, nothing unpickled)
    models/cifar10/Linf/Name2026Title.sha256      SHA-256 of the three files above (sha256sum -c), checked on load
    model_info/cifar10/Linf/Name2026Title.json    leaderboard card with RobustBench's fields
    eval/cifar10/Linf/Name2026Title-*.json        evaluation reports (``export --eval``, ``eval`` of the export):
                                                  beside, never inside, the folder RobustBench reads
"""
from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checksums import manifest_path, write_manifest
from ..constants import SINGLE_ROUTE
from ..convert import fold_route, fold_spec
from ..errors import ConfigError
from ..io import all_or_nothing, atomic_write_text, check_writable, load_weights, save_checkpoint, save_safetensors
from ..mixing import check_weights, describe_mixture, mix_routes
from ..model_files import TrainedFor, arch_file, safetensors_file, write_arch_file
from ..models.spec import build_model, check_spec, spec_from_arch
from ..nn import check_model_route
from ..parsing import parse_number
from ..provenance import provenance
from ..threat import Threat
from ..version import __version__

NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
# RobustBench's load_model strips these from any key that contains them, which would break the key.
RESERVED_KEY_PARTS = ("module.", "model.")
# Card fields a person fills in; re-exporting keeps them (results are replaced: the weights may have changed).
HUMAN_FIELDS = ("link", "name", "authors", "additional_data", "venue", "reported", "external")


def info_dir_for(model_dir: str | os.PathLike) -> Path:
    """Where cards go by default: ``model_info`` beside ``model_dir`` (RobustBench's repository layout)."""
    return Path(model_dir).parent / "model_info"


def reports_dir(weights: str | os.PathLike) -> Path:
    """Where evaluation reports of the export whose weights are ``weights`` go: ``eval/<dataset>/<threat model>``
    beside its ``model_dir``, outside the folders RobustBench reads."""
    weights = Path(weights)
    return weights.parent.parent.parent.parent / "eval" / weights.parent.parent.name / weights.parent.name


def weights_path(name: str, model_dir: str | os.PathLike = "models", dataset: str = "cifar10",
                 threat_model: str = "Linf") -> Path:
    """Where RobustBench's ``load_model`` looks for the weights of ``name``."""
    return Path(model_dir) / dataset / threat_model / f"{name}.pt"


def card_path(name: str, model_dir: str | os.PathLike = "models", dataset: str = "cifar10",
              threat_model: str = "Linf", info_dir: str | os.PathLike | None = None) -> Path:
    root = Path(info_dir) if info_dir is not None else info_dir_for(model_dir)
    return root / dataset / threat_model / f"{name}.json"


def check_export_name(name: str, dataset: str) -> None:
    """A file-safe name that RobustBench's ``load_model`` treats like any other (no special-cased patterns)."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"export name must look like Name2026Title (letters, digits, '_' or '-'), got {name!r}")
    if "Kireev2021Effectiveness" in name or (dataset == "imagenet" and "Standard" in name):
        raise ConfigError(f"RobustBench's load_model treats names like {name!r} specially; choose another name")
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", dataset or ""):
        raise ConfigError(f"dataset must be a lower-case name like 'cifar10', got {dataset!r}")


def exported_spec(model: nn.Module, arch: str | Mapping | None = None) -> dict:
    """The architecture spec of the folded model: ``arch`` when given (a name, or a spec dict with ``kwargs``), else
    the fold of ``model.model_spec``."""
    if isinstance(arch, Mapping):
        return check_spec(arch)
    if arch is not None:
        return spec_from_arch(arch)
    spec = getattr(model, "model_spec", None)
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"{type(model).__name__} has no model_spec (it is not from robust_sabn's zoo); pass "
            "arch={'callable': 'package.module:builder', 'kwargs': {...}} that rebuilds the folded model")
    return fold_spec(spec)


def _check_rebuilds(spec: dict, folded: nn.Module, input_shape: tuple[int, int, int] | None) -> None:
    """Rebuild ``spec`` (the caller's own, so its callable may run), load the folded weights strictly, and require
    identical logits on a random batch of images of ``input_shape`` (where unknown, 32x32 with the first
    convolution's channels: any size the architecture accepts shows a difference)."""
    rebuilt = build_model(spec, trusted=spec.get("callable"))
    load_weights(rebuilt, folded.state_dict(), "the folded model")
    if input_shape is None:
        first_conv = next((m for m in folded.modules() if isinstance(m, nn.Conv2d)), None)
        input_shape = (first_conv.in_channels if first_conv is not None else 3, 32, 32)
    x = torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (rebuilt.eval()(x) - folded(x)).abs().max().item()
    if not diff <= 1e-5:
        raise ConfigError(
            f"the architecture {spec} loads the weights but computes something else (max logit difference "
            f"{diff:.2e}); pass the arch (and its kwargs) the model was built with")


def _check_keys(state_dict: Mapping[str, torch.Tensor]) -> None:
    bad = [k for k in state_dict if any(part in k for part in RESERVED_KEY_PARTS)]
    if bad:
        raise ConfigError(
            f"state-dict keys {bad[:3]} contain 'model.' or 'module.', which RobustBench's load_model cuts "
            "out of keys; rename those submodules before exporting")


def write_card(path: str | os.PathLike, *, name: str, dataset: str, threat: Threat, architecture: str) -> Path:
    """Write a leaderboard card for a fresh export. Fields a person filled in an existing card (link, authors,
    venue, ...) are kept; the accuracies are null until :func:`fill_card` records an evaluation."""
    card: dict[str, Any] = {
        "link": "", "name": name, "authors": "", "additional_data": False, "number_forward_passes": 1,
        "dataset": dataset, "venue": "", "architecture": architecture, "eps": threat.eps_str,
        "clean_acc": None, "reported": None, "autoattack_acc": None, "versions": provenance(),
    }  # "footnote" and "unreliable" come with an evaluation (fill_card)
    path = Path(path)
    if path.is_file():
        card.update({k: v for k, v in _read_card(path).items() if k in HUMAN_FIELDS})
    return atomic_write_text(path, json.dumps(card, indent=2) + "\n")


def fill_card(path: str | os.PathLike, report: Any, audit: Any = None) -> Path:
    """Record a single-route AutoAttack ``report`` (an :class:`~robust_sabn.eval.EvaluationReport`) in a card, with
    the verdict of the gradient-masking ``audit`` of that evaluation (an :class:`~robust_sabn.eval.audit.AuditReport`)
    where given."""
    path = Path(path)
    card = _read_card(path)
    if card.get("eps") is not None and not _same_radius(card["eps"], report.threat.eps):
        raise ConfigError(f"the card {path} is for eps {card['eps']} but the evaluation used {report.threat.eps_str}")
    card.update(card_results(report, audit))
    return atomic_write_text(path, json.dumps(card, indent=2) + "\n")


def _same_radius(card_eps: Any, eps: float) -> bool:
    try:
        return math.isclose(parse_number(card_eps, "the card's eps"), eps, rel_tol=1e-6)
    except ConfigError:
        return False


def _read_card(path: Path) -> dict[str, Any]:
    try:
        card = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read the card {path} ({err}); re-export the model") from None
    if not isinstance(card, dict):
        raise ConfigError(f"{path} is not a leaderboard card (a JSON object); re-export the model")
    return card


def card_results(report: Any, audit: Any = None) -> dict[str, Any]:
    """The card fields an evaluation report fills: accuracies as percentage strings, ``unreliable`` (AutoAttack
    flagged, or the ``audit`` of the same evaluation failed a check), a footnote (naming the failed checks)."""
    if report.attack != "autoattack" or report.protocol != SINGLE_ROUTE:
        raise ConfigError("a leaderboard card takes a single-route AutoAttack evaluation "
                          "(evaluate(..., attack='autoattack') on the exported model)")
    footnote = (f"AutoAttack ({report.version}, {report.backend}) on the first {report.n} test images, "
                f"seed {report.seed}, batches of {report.batch_size}; evaluated with robust-sabn {__version__}.")
    unreliable = bool(report.flags)
    if audit is not None:
        audited = audit.standard
        if (audited.threat, audited.n, audited.seed) != (report.threat, report.n, report.seed):
            raise ConfigError(f"the audit is of another evaluation ({audited.threat.label}, {audited.n} images, seed "
                              f"{audited.seed}); audit the evaluation recorded in the card")
        unreliable = unreliable or not audit.reliable
        footnote += (f" robust-sabn's gradient-masking audit of this evaluation (level {audit.level} per comparison): "
                     + ("every check passed." if audit.reliable else f"failed the {', '.join(audit.failed)} check"
                        f"{'s' if len(audit.failed) > 1 else ''}."))
    return {"clean_acc": f"{100 * report.clean_acc:.2f}", "autoattack_acc": f"{100 * report.robust_acc:.2f}",
            "unreliable": unreliable, "footnote": footnote, "versions": provenance()}


@dataclass(frozen=True)
class ExportOptions:
    """How an export is written. ``overwrite`` replaces an earlier export of the name; ``info_dir`` is the card's
    folder (default: ``model_info`` beside ``model_dir``); ``allow_dataset_mismatch`` files a model under another
    dataset than it was trained on (a demonstration: RobustBench would feed it that dataset's images; the card and
    architecture file name the dataset it was trained on); ``prepare`` changes the folded (or mixed) plain model
    before it is checked and written, e.g. a BN recalibration, and ``note`` says what it did, in the card's
    architecture and the architecture file."""

    overwrite: bool = False
    info_dir: str | os.PathLike | None = None
    allow_dataset_mismatch: bool = False
    prepare: Callable[[nn.Module], nn.Module] | None = None
    note: str | None = None


def export(model: nn.Module, name: str, route: str | Mapping[str, float] | None = None,
           model_dir: str | os.PathLike = "models", *, trained: TrainedFor = TrainedFor(), dataset: str | None = None,
           arch: str | Mapping | None = None, options: ExportOptions = ExportOptions()) -> Path:
    """Fold ``route`` of ``model`` and write it in RobustBench's layout; returns the checkpoint path.

    ``route`` is required for a model with routed layers and must be None otherwise; a mapping of route weights
    (e.g. ``{"clean": 0.3, "adv": 0.7}``) exports that mixture of the routes (:func:`robust_sabn.mix_routes`), and
    the card and architecture file say which. ``arch`` (a zoo name, ``"module:callable"``, or a spec dict with
    ``kwargs``) rebuilds the folded model when it has no ``model_spec``.

    ``trained`` is what the model was trained for: its threat model (default Linf 8/255) files the export under
    RobustBench's threat-model folder, and the card's ``eps``; the dataset it was trained on (``dataset``, the
    RobustBench slot, defaults to it, else cifar10); the shape of its images, so that evaluating the export on
    images of another shape is refused. All three go into the architecture file, so ``robust-sabn eval`` of the
    export evaluates at the radius it was trained for. ``robust-sabn export --eval`` fills the card's accuracies.
    After export, ``robustbench.utils.load_model(name, model_dir, dataset, threat_model)`` returns the folded model;
    a name RobustBench already uses there is refused. The files are written all or nothing, after every check: the
    weights in both formats, the architecture file and their SHA-256 manifest beside them, and the card.
    """
    from . import robustbench

    threat = trained.threat or Threat()
    trained_on = trained.dataset or dataset or "cifar10"
    dataset = dataset or trained_on
    check_export_name(name, dataset)
    if trained_on != dataset and not options.allow_dataset_mismatch:
        raise ConfigError(f"the model was trained on {trained_on} but would be filed as a {dataset} model, which "
                          f"RobustBench evaluates on {dataset} images; export it with dataset {trained_on!r} "
                          "(--dataset), or allow the mismatch for a demonstration (--allow-dataset-mismatch)")
    mixture = check_weights(model, route) if isinstance(route, Mapping) else None
    if mixture is None:
        check_model_route(model, route, "export")
    weights = weights_path(name, model_dir, dataset, threat.norm)
    card = card_path(name, model_dir, dataset, threat.norm, options.info_dir)
    shared = safetensors_file(weights)
    for path in (weights, shared, arch_file(weights), manifest_path(weights), card):
        check_writable(path)
    if weights.exists() and not options.overwrite:
        raise ConfigError(f"{weights} exists; pass overwrite=True (--overwrite) to replace it")
    robustbench.check_name_free(name, dataset, threat.norm)

    folded = (fold_route(model, route) if mixture is None else mix_routes(model, mixture)).cpu().eval()
    if options.prepare is not None:
        folded = options.prepare(folded).cpu().eval()
    spec = exported_spec(model, arch)
    state_dict = {k: v.detach().clone().contiguous() for k, v in folded.state_dict().items()}
    _check_keys(state_dict)
    _check_rebuilds(spec, folded, trained.input_shape)

    architecture = spec.get("arch") or spec["callable"]
    if mixture is not None:
        route = {r: w for r, w in mixture.items() if w > 0}
        architecture += f" ({describe_mixture(route)} of the routes, folded)"
    elif route is not None:
        architecture = f"{architecture} ({route} route folded)"
    if options.note:
        architecture += f"; {options.note}"
    record = TrainedFor(threat, trained_on, trained.input_shape)
    # Renamed into place in this order, the .pt weights (what load_model looks for) and their manifest last, so a
    # process killed between two renames leaves no loadable model, or one whose files fail the manifest's check
    # (and an overwritten one no old weights beside new files).
    with all_or_nothing():
        write_arch_file(arch_file(weights), spec, name=name, dataset=dataset, trained_on=trained_on,
                        threat_model=threat.norm, threat=threat.to_dict(), route=route,
                        source_spec=getattr(model, "model_spec", None), versions=provenance(),
                        **({"input_shape": list(record.input_shape)} if record.input_shape else {}),
                        **({"note": options.note} if options.note else {}))
        write_card(card, name=name, dataset=trained_on, threat=threat, architecture=architecture)
        save_safetensors(state_dict, shared)
        save_checkpoint(state_dict, weights)
        write_manifest(manifest_path(weights), [weights, shared, arch_file(weights)])
        weights.unlink(missing_ok=True)
    robustbench.remember(model_dir)
    return weights
