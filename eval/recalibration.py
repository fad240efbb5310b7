"""Re-estimating a mixed model's BatchNorm statistics on its own features (``--recalibrate N``).

A mixture of routes (:func:`robust_sabn.mix_routes`) keeps, in every BN layer, the weighted means of the routes'
running statistics, but the features that reach a layer are those of the mixed network, whose earlier layers are
mixed too. :class:`Recalibration` runs the mixed model over training images, a share ``t`` of them attacked (as the
mixture weighs the adversarial route), and replaces every BN layer's running statistics by what it sees; the affine
parameters stay. As for a weight average (Izmailov et al. 2018, ``torch.optim.swa_utils.update_bn``) the
statistics are plain averages over all the images. See docs/route-mixing.md for what it does to the front.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from ..attacks import PGD
from ..batching import batch_slices
from ..data import as_tensors, fixed_subset, load_dataset
from ..errors import ConfigError
from ..model_files import LoadedModel
from ..nn import routes_of
from ..rng import preserved_rng
from ..threat import Threat


@dataclass(frozen=True)
class Recalibration:
    """Re-estimate the BN statistics of plain models on ``images`` (training images, never the test ones): for a
    mixture of trade-off ``t`` the first ``round(t * n)`` become PGD adversarials in ``threat`` against the model
    itself (``steps`` steps of ``step_size``, default ``eps / 4``, random start seeded by ``seed``)."""

    images: torch.Tensor
    labels: torch.Tensor
    threat: Threat
    steps: int = 5
    step_size: float | None = None
    batch_size: int = 250
    seed: int = 0

    def __call__(self, model: nn.Module, t: float, device: torch.device | str = "cpu") -> nn.Module:
        """A copy of ``model`` (eval mode) with re-estimated running statistics."""
        if routes_of(model):
            raise ConfigError("recalibrate a plain model (a mixture or a folded route), not a routed one")
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not any(m.track_running_stats for m in norms):
            raise ConfigError("this model has no BatchNorm layers with running statistics to re-estimate; "
                              "drop --recalibrate")
        model = copy.deepcopy(model).to(device).eval()
        attacked = self.attacked(t)
        batches = []
        with preserved_rng():
            torch.manual_seed(self.seed)
            attack = PGD(model, eps=self.threat.eps, alpha=self.alpha, steps=self.steps, norm=self.threat.norm)
            for part in batch_slices(len(self.labels), self.batch_size):
                x = self.images[part].to(device)
                k = max(0, min(len(x), attacked - part.start))
                if k:
                    x = torch.cat([attack(x[:k], self.labels[part][:k].to(device)), x[k:]])
                batches.append(x.cpu())  # all attacked first: update_bn puts the model in train mode
        with torch.no_grad():
            update_bn(batches, model, device=torch.device(device))
        return model.eval()

    @property
    def alpha(self) -> float:
        """The PGD step: ``step_size``, else ``eps / 4``."""
        return self.step_size or self.threat.eps / 4

    def attacked(self, t: float) -> int:
        """How many of the images are attacked for trade-off ``t``."""
        return round(t * len(self.labels))

    def describe(self, t: float | None = None) -> str:
        """What was done to the mixture of trade-off ``t`` (to each mixture, without ``t``)."""
        share = "a share t" if t is None else str(self.attacked(t))
        return (f"BN statistics re-estimated on {len(self.labels)} training images, {share} of them "
                f"PGD-{self.steps} adversarials")

    def to_dict(self) -> dict[str, Any]:
        return {"images": len(self.labels), "threat": self.threat.to_dict(), "steps": self.steps,
                "step_size": self.alpha, "seed": self.seed}


def training_recalibration(loaded: LoadedModel, n: int, threat: Threat, data_dir: str | None = None,
                           seed: int = 0) -> Recalibration:
    """``--recalibrate N``: a :class:`Recalibration` on ``n`` images drawn by ``seed`` from the training split of the
    dataset ``loaded`` was trained on (the test images it is evaluated on are never among them)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"--recalibrate takes a positive number of training images, got {n!r}")
    dataset = loaded.trained_on()
    if dataset is None:
        raise ConfigError(f"{loaded.path} does not record the dataset it was trained on, so --recalibrate cannot "
                          "draw training images; recalibrate a training checkpoint or a robust-sabn export")
    config = loaded.config
    splits = load_dataset(dataset, data_dir or config.get("data_dir"), val_size=config.get("val_size"),
                          seed=config.get("seed", 0))
    images, labels = as_tensors(fixed_subset(splits.train, min(n, len(splits.train)), seed))
    return Recalibration(images, labels, threat, seed=seed)
