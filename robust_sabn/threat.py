"""The threat model: a norm and a radius, parsed and validated once, then carried whole by configs, checkpoints,
exports, attacks and reports.

``Threat("Linf", "8/255")`` accepts the spellings people use (fractions, ``1e-3``); its ``label`` is what reports
print ("Linf 8/255") and ``eps_str`` RobustBench's spelling of the radius.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .errors import ConfigError
from .parsing import Range, format_eps, parse_number
from .registry import choose

# The perturbation norms. robust-sabn's own attacks (PGD, FGSM, TRADES, CW) run in Linf and L2; AutoAttack also in
# L1 (APGD-L1 in its standard L1 version).
THREAT_MODELS = ("Linf", "L2", "L1")
ATTACK_NORMS = ("Linf", "L2")
# The radius each threat model is usually evaluated at on CIFAR-10 (RobustBench's leaderboards).
STANDARD_EPS = {"Linf": 8 / 255, "L2": 0.5, "L1": 12.0}
_BEYOND = "beyond it every image in [0, 1] of up to 1000x1000 RGB pixels reaches every other"
EPS_RANGES = {  # the radii of each threat model, for images in [0, 1]
    "Linf": Range(0.0, 1.0, "8/255", why="inputs lie in [0, 1]"),
    "L2": Range(0.0, 2000.0, "0.5", why=_BEYOND),
    "L1": Range(0.0, 3e6, "12", why=_BEYOND),
}


@dataclass(frozen=True)
class Threat:
    """Perturbations of at most ``eps`` in the ``norm`` (Linf, L2 or L1) around images in [0, 1]. ``eps`` may be
    given as a string such as "8/255"; it is stored as a float, and must lie in the norm's range
    (:data:`EPS_RANGES`: beyond it every image reaches every other)."""

    norm: str = "Linf"
    eps: float = 8 / 255

    def __post_init__(self) -> None:
        choose(self.norm, THREAT_MODELS, "threat model")
        eps = EPS_RANGES[self.norm].check(parse_number(self.eps, "eps"), f"{self.norm} eps", "--eps")
        object.__setattr__(self, "eps", eps)

    @classmethod
    def parse(cls, norm: str, text: float | str, name: str = "eps", flag: str = "--eps") -> Threat:
        """``norm`` at the radius ``text``, a refusal naming ``name`` and ``flag`` (e.g. "--eps-sweep value")."""
        range_ = EPS_RANGES[choose(norm, THREAT_MODELS, "threat model")]
        return cls(norm, range_.check(parse_number(text, name), name, flag))

    @classmethod
    def standard(cls, norm: str = "Linf") -> Threat:
        """``norm`` at its usual CIFAR-10 radius (:data:`STANDARD_EPS`): Linf 8/255, L2 0.5, L1 12."""
        return cls(norm, STANDARD_EPS[choose(norm, THREAT_MODELS, "threat model")])

    @property
    def eps_str(self) -> str:
        """The radius as RobustBench's cards spell it: "8/255", "0.5"."""
        return format_eps(self.eps, self.norm)

    @property
    def label(self) -> str:
        """"Linf 8/255"."""
        return f"{self.norm} {self.eps_str}"

    def with_eps(self, eps: float | str) -> Threat:
        """The same norm at another radius."""
        return replace(self, eps=eps)

    def require(self, norms: tuple[str, ...], who: str) -> Threat:
        """This threat, when ``who`` (an attack, an objective) runs in its norm; else a one-line error."""
        if self.norm not in norms:
            raise ConfigError(f"{who} attacks in the norm {' or '.join(norms)}, not {self.norm}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"norm": self.norm, "eps": self.eps, "label": self.label}

    @classmethod
    def from_dict(cls, values: Any, source: str = "threat") -> Threat:
        """A threat written by :meth:`to_dict`; a malformed one is a one-line error naming ``source``."""
        if not isinstance(values, Mapping) or not isinstance(values.get("norm"), str) or "eps" not in values:
            raise ConfigError(f"{source}: a threat model needs a 'norm' (Linf, L2, L1) and an 'eps', got {values!r}")
        return cls(values["norm"], values["eps"])

    def __str__(self) -> str:
        return self.label
