"""What ``eval`` and ``audit`` evaluate, read once from the model flags they share (:func:`add_model_arguments`):
the loaded model, its route, threat model, dataset and clean route, where its reports go, and its test images."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from ..constants import CLEAN_ROUTE
from ..data import test_images
from ..eval.evaluate import EvaluationReport
from ..eval.report import report_stem
from ..eval.settings import EvalSettings
from ..exporting import reports_dir
from ..io import check_writable
from ..model_files import HF_FOLDER, LoadedModel, load_trained_model
from ..parsing import parse_json_object
from ..threat import Threat


def output_stem(out: str) -> Path:
    """``--out`` without a report suffix."""
    path = Path(out)
    return path.with_suffix("") if path.suffix in (".json", ".md", ".png") else path


@dataclass
class EvaluatedModel:
    """The model of ``RUN_DIR_OR_CHECKPOINT`` (with ``--model``), the route it is folded on (``--route``, else the
    route training attacked), its threat model (``--threat-model``, ``--eps``, else what it was trained for), its
    dataset (``--dataset``, else the one it was trained on, else cifar10) and clean route (``--clean-route``)."""

    loaded: LoadedModel
    route: str | None
    threat: Threat
    dataset: str
    clean_route: str

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EvaluatedModel:
        loaded = load_trained_model(args.checkpoint, args.model, parse_json_object(args.model_kwargs))
        return cls(loaded, loaded.route(args.route), loaded.threat(args.threat_model, args.eps),
                   args.dataset or loaded.trained_on() or "cifar10",
                   args.clean_route or loaded.config.get("clean_route", CLEAN_ROUTE))

    def report_path(self, out: str | None, settings: EvalSettings, label: str, suffixes: list[str], *,
                    kind: str = "", radius: str | None = None) -> Path:
        """``--out``, else ``<reports folder>/<checkpoint><kind>-<settings>`` (:meth:`reports_folder`), after checking
        that each of its ``suffixes`` can be written."""
        stem = output_stem(out) if out else report_stem(self.reports_folder(), self.loaded.path.stem + kind, settings,
                                                        label, radius)
        for suffix in suffixes:
            check_writable(stem.with_name(stem.name + suffix))  # before the attack, not after it
        return stem

    def reports_folder(self) -> Path:
        """Where reports go without ``--out``: beside an export's model folder (:func:`reports_dir`); for a Hugging
        Face folder ``eval/<folder>`` here (never inside it, which an upload would publish, nor in the Hugging Face
        cache, where it is named by its repository's folder); else ``<checkpoint folder>/eval``."""
        if self.loaded.is_export:
            return reports_dir(self.loaded.path)
        if self.loaded.source == HF_FOLDER:
            folder = self.loaded.path.parent
            return Path("eval") / (folder.parent.parent.name if folder.parent.name == "snapshots" else folder.name)
        return self.loaded.path.parent / "eval"

    def images(self, data_dir: str | None, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` test images of the dataset and their labels, refused when of another shape than the
        model's training images."""
        x, y = test_images(self.dataset, data_dir or self.loaded.config.get("data_dir"), n)
        self.loaded.check_images(x, f"{self.dataset} test images")
        return x, y

    def describe_threat(self) -> str:
        """"Linf 8/255", with where it came from: the model's training, or the flags ("trained at X")."""
        trained, threat = self.loaded.trained.threat, self.threat
        if trained == threat:
            return f"{threat.label} (the radius it was trained for)"
        if trained is None:
            return f"{threat.label} (the model's files do not record the radius it was trained for)"
        return f"{threat.label} (trained at {trained.label})"

    def describe(self, n: int) -> str:
        """"runs/x/best.pt (training checkpoint) on 500 fashion-mnist test images, route adv, Linf 0.1 (...)"."""
        return (f"{self.loaded.path} ({self.loaded.source}) on {n} {self.dataset} test images, route "
                f"{self.route or '-'}, {self.describe_threat()}")

    def label(self, report: EvaluationReport) -> None:
        """Name in ``report`` where the model came from, its dataset and the threat model it was trained for."""
        report.checkpoint, report.source, report.dataset = str(self.loaded.path), self.loaded.source, self.dataset
        report.trained_threat = self.loaded.trained.threat
