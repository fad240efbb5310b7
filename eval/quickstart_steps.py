"""The quickstart's last steps: AutoAttack on the trained model, then export and reload through RobustBench."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..exporting import export, format_eps
from ..nn import use_route
from ..robustbench_bridge import import_robustbench
from .evaluate import evaluate
from .report import write_report

if TYPE_CHECKING:
    from ..quickstart import Quickstart

# The standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square) on 100 test images: about a minute on two CPU cores for
# the quickstart's model; `robust-sabn eval RUN --n-examples 10000` runs it on the whole test set.
AA_IMAGES = 100
EXPORT_NAME = "QuickstartSabn2026"


def _images(qs: Quickstart, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    items = [qs.test[i] for i in range(min(n, len(qs.test)))]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def autoattack(qs: Quickstart) -> None:
    """The standard AutoAttack on the first test images, both protocols; the report goes to <run>/eval/."""
    config = qs.config
    x, y = _images(qs, AA_IMAGES)
    report = evaluate(qs.model, x, y, config.eps, norm=config.attack_norm, attack="autoattack", version="standard",
                      route="adv", seed=config.seed, batch_size=AA_IMAGES, device=qs.device, progress=config.progress)
    json_path, _ = write_report(report, qs.run_dir / "eval" / "quickstart-autoattack")
    label = f"AutoAttack standard ({config.attack_norm} {format_eps(config.eps, config.attack_norm)})"
    for name, protocol in report["protocols"].items():
        route = protocol["adv_route"] if name == "single route" else "clean for clean, adv for attacked"
        qs.rows.append([f"{label}, {name}", route, _pct(protocol["clean_acc"]), _pct(protocol["robust_acc"]), len(y)])
    qs.notes.append(f"AutoAttack: {report['attack_description']} ({report['backend']}, seed {report['seed']}, "
                    f"{report['time']['total_s']:.0f} s): {json_path}")
    qs.notes += [f"AutoAttack flag: {flag}" for flag in report["flags"]]


def export_and_reload(qs: Quickstart) -> None:
    """Fold the adv route, export it, load it back with ``robustbench.utils.load_model`` and compare logits.

    RobustBench 1.1.1 loads only cifar10/cifar100/imagenet models, so this Fashion-MNIST model is filed in the
    cifar10 slot of a scratch model_dir inside the run folder (``allow_dataset_mismatch``; the card names
    Fashion-MNIST): it shows the round trip, not a leaderboard entry.
    """
    import_robustbench()
    from robustbench.utils import load_model

    config = qs.config
    model_dir = qs.run_dir / "robustbench" / "models"
    path = export(qs.model, EXPORT_NAME, route="adv", model_dir=model_dir, dataset="cifar10",
                  threat_model=config.attack_norm, eps=config.eps, overwrite=True, trained_on=config.dataset,
                  allow_dataset_mismatch=True)
    loaded = load_model(EXPORT_NAME, model_dir=model_dir, dataset="cifar10", threat_model=config.attack_norm)
    loaded = loaded.to(qs.device)
    x, y = _images(qs, len(qs.test))
    with torch.no_grad():
        logits, expected = [], []
        for xb in x.split(256):
            xb = xb.to(qs.device)
            logits.append(loaded(xb).cpu())
            with use_route(qs.model, "adv"):
                expected.append(qs.model(xb).cpu())
    logits, expected = torch.cat(logits), torch.cat(expected)
    clean = (logits.argmax(1) == y).float().mean().item()
    qs.rows.append(["RobustBench load_model of the export (adv route folded into plain BN)", "-", _pct(clean), "-",
                    len(y)])
    qs.notes.append(f"export: {path} (+ .arch.json, card in {model_dir.parent / 'model_info'}); reloaded through "
                    f"robustbench.utils.load_model, max |logit difference| vs the routed model "
                    f"{(logits - expected).abs().max().item():.1e}; filed under RobustBench's cifar10 slot only "
                    "because RobustBench 1.1.1 knows no Fashion-MNIST")


STEPS = [("AutoAttack evaluation", autoattack), ("export and reload through RobustBench", export_and_reload)]
