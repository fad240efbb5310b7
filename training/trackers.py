"""Experiment trackers: sinks of the one metrics stream the training loop writes to ``metrics.jsonl``.

``--log tensorboard csv wandb`` picks them (:data:`TRACKERS`); ``metrics.jsonl`` and ``curves.png`` are always
written. Every sink gets the same records (a ``step`` record every ``--log-every`` steps, an ``epoch`` or ``stop``
record with validation at the end of each epoch, ``eval`` records from ``robust-sabn eval --log``), a grid of the
adversarial examples the training attack made at the end of each epoch, and the run's config as hyper-parameters.

- ``tensorboard``: event files in ``<run>/tensorboard`` (``tensorboard --logdir runs``); scalars as
  ``step/<key>``, ``epoch/<key>`` and ``eval/...``, images ``epoch/adversarial_examples`` and
  ``epoch/perturbations``, the config in the HPARAMS tab.
- ``csv``: ``<run>/metrics.csv``, one row per record and one column per key (a ``kind`` column tells step, epoch
  and eval rows apart), rewritten atomically at every record.
- ``wandb``: a Weights & Biases run in ``<run>/wandb``, offline unless an account is configured (``WANDB_API_KEY``
  or ``wandb login``) or ``WANDB_MODE`` says otherwise; its id is kept in ``<run>/wandb-run-id`` so that a resumed
  run and ``robust-sabn eval --log wandb`` continue the same W&B run.

A resumed run continues the logs where its checkpoint stopped: the CSV keeps the rows up to the checkpoint's step,
TensorBoard purges later events (``purge_step``) and W&B ignores steps it has seen.
"""
from __future__ import annotations

import csv
import importlib
import io
import netrc
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ..errors import ConfigError
from ..io import atomic_write_text
from ..registry import Registry

TENSORBOARD_DIR, CSV_FILE, WANDB_ID = "tensorboard", "metrics.csv", "wandb-run-id"
SECTIONS = {"step": "step", "epoch": "epoch", "stop": "epoch", "eval": "eval"}  # record kind -> tag prefix
IMAGES = 16  # adversarial examples in an epoch's grid


@dataclass(frozen=True)
class TrackedRun:
    """What a tracker logs into: the run folder; the step a resumed run continues from (what was logged after it
    is dropped; 0 for a new run; None to add to whatever is there, as ``robust-sabn eval --log`` does); the run's
    settings (hyper-parameters; empty for an evaluation)."""

    run_dir: Path
    resume_step: int | None = 0
    config: dict[str, Any] = field(default_factory=dict)


class Tracker:
    """A sink: :meth:`record` gets every metrics record, :meth:`adversarials` a sample of a step's clean and
    adversarial images; :meth:`close` ends the run's log. ``package`` is the module it needs, if any, and
    ``install`` how to get it."""

    package: str | None = None
    install = ""

    def __init__(self, run: TrackedRun) -> None:
        self.run = run

    @classmethod
    def library(cls) -> ModuleType | None:
        """The module the tracker writes with; a one-line error saying how to install it when it is missing."""
        if cls.package is None:
            return None
        try:
            return importlib.import_module(cls.package)
        except ImportError:
            raise ConfigError(f"--log {cls.__name__.lower()} needs the {cls.package.split('.')[-1]} package: "
                              f"{cls.install}") from None

    def record(self, record: dict[str, Any]) -> None:
        raise NotImplementedError

    def adversarials(self, x: torch.Tensor, x_adv: torch.Tensor, step: int) -> None:
        """Images the training attack made (trackers that show images draw them)."""

    def close(self) -> None:
        """Flush and let go of the files."""


TRACKERS: Registry[type[Tracker]] = Registry("tracker")


class Trackers:
    """The trackers a run logs to, by name (each once); none on processes other than the first."""

    def __init__(self, names: Iterable[str], run: TrackedRun) -> None:
        self.check(names)
        self.sinks: list[Tracker] = []
        try:
            for name in dict.fromkeys(names):
                self.sinks.append(TRACKERS[name](run))
        except BaseException:
            self.close()
            raise

    @staticmethod
    def check(names: Iterable[str]) -> None:
        """Refuse, before anything runs, trackers whose package is missing."""
        for name in names:
            TRACKERS[name].library()

    def record(self, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.record(record)

    def adversarials(self, x: torch.Tensor, x_adv: torch.Tensor, step: int) -> None:
        if not self.sinks:
            return
        x, x_adv = x[:IMAGES].detach().float().cpu(), x_adv[:IMAGES].detach().float().cpu()
        for sink in self.sinks:
            sink.adversarials(x, x_adv, step)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A record's numbers under their tags: ``<section>/<key>`` (``eval`` keys are tags already)."""
    section = SECTIONS.get(record.get("kind"), "step")
    return {key if section == "eval" else f"{section}/{key}": float(value) for key, value in record.items()
            if key not in ("kind", "step", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool)}


def grids(x: torch.Tensor, x_adv: torch.Tensor) -> dict[str, torch.Tensor]:
    """The adversarial examples and their perturbations (grey is zero, scaled to the largest), as image grids."""
    from torchvision.utils import make_grid

    delta = x_adv - x
    scale = 2 * delta.abs().max().clamp_min(1e-12)
    return {"adversarial_examples": make_grid(x_adv.clamp(0, 1), nrow=8),
            "perturbations": make_grid(0.5 + delta / scale, nrow=8)}


def hyperparameters(config: dict[str, Any]) -> dict[str, Any]:
    """The config as TensorBoard and W&B take hyper-parameters: numbers, strings and booleans."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.items()}


@TRACKERS.register("tensorboard")
class TensorBoard(Tracker):
    package, install = "torch.utils.tensorboard", "pip install 'robust-sabn[tensorboard]' (bin/setup installs it)"

    def __init__(self, run: TrackedRun) -> None:
        super().__init__(run)
        self.library()
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        # A resumed run hides what the killed one logged after the checkpoint it continues from.
        self.writer = SummaryWriter(str(run.run_dir / TENSORBOARD_DIR),
                                    purge_step=run.resume_step + 1 if run.resume_step else None)
        if run.config and not run.resume_step:
            for summary in hparams(hyperparameters(run.config), {"epoch/val_robust_acc": 0.0,
                                                                 "epoch/val_clean_acc": 0.0}):
                self.writer.file_writer.add_summary(summary)

    def record(self, record: dict[str, Any]) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, record["step"])
        self.writer.flush()

    def adversarials(self, x: torch.Tensor, x_adv: torch.Tensor, step: int) -> None:
        for name, grid in grids(x, x_adv).items():
            self.writer.add_image(f"epoch/{name}", grid, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


@TRACKERS.register("csv")
class Csv(Tracker):
    def __init__(self, run: TrackedRun) -> None:
        super().__init__(run)
        self.path = run.run_dir / CSV_FILE
        self.rows: list[dict[str, Any]] = []
        if self.path.is_file():
            with self.path.open(newline="") as f:
                self.rows = [row for row in csv.DictReader(f)
                             if run.resume_step is None or float(row.get("step") or 0) <= run.resume_step]

    def record(self, record: dict[str, Any]) -> None:
        self.rows.append({k: "" if v is None else v for k, v in record.items()})
        columns = list(dict.fromkeys(k for row in self.rows for k in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, text.getvalue())


def wandb_mode() -> str | None:
    """``offline`` unless an account is configured or ``WANDB_MODE`` chooses (None: W&B's own choice)."""
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return None
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return None
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


@TRACKERS.register("wandb")
class WandB(Tracker):
    package, install = "wandb", "pip install wandb"

    def __init__(self, run: TrackedRun) -> None:
        super().__init__(run)
        self.wandb = wandb = self.library()
        id_file = run.run_dir / WANDB_ID
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:16]
        atomic_write_text(id_file, run_id + "\n")
        self.session = wandb.init(project=os.environ.get("WANDB_PROJECT", "robust-sabn"), name=run.run_dir.name,
                                  id=run_id, resume="allow", dir=str(run.run_dir), mode=wandb_mode(),
                                  config=hyperparameters(run.config) or None)

    def record(self, record: dict[str, Any]) -> None:
        if record.get("kind") == "eval":  # an evaluation of a checkpoint: a result, not a point of the curves
            self.session.summary.update(scalars(record))
        else:
            self.session.log(scalars(record), step=record["step"])

    def adversarials(self, x: torch.Tensor, x_adv: torch.Tensor, step: int) -> None:
        self.session.log({f"epoch/{name}": self.wandb.Image(grid) for name, grid in grids(x, x_adv).items()},
                         step=step)

    def close(self) -> None:
        self.session.finish()
