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
from .parsing import format_eps, parse_number
from .registry import choose

# The perturbation norms. robust-sabn's own attacks (PGD, FGSM, TRADES, CW) run in Linf and L2; AutoAttack also in
# L1 (APGD-L1 in its standard L1 version).
THREAT_MODELS = ("Linf", "L2", "L1")
ATTACK_NORMS = ("Linf", "L2")
# The radius each threat model is usually evaluated at on CIFAR-10 (RobustBench's leaderboards).
STANDARD_EPS = {"Linf": 8 / 255, "L2": 0.5, "L1": 12.0}


@dataclass(frozen=True)
class Threat:
    """Perturbations of at most ``eps`` in the ``norm`` (Linf, L2 or L1) around images in [0, 1]. ``eps`` may be
    given as a string such as "8/255"; it is stored as a float. A Linf radius above 1 allows any image."""

    norm: str = "Linf"
    eps: float = 8 / 255

    def __post_init__(self) -> None:
        choose(self.norm, THREAT_MODELS, "threat model")
        eps = parse_number(self.eps, "eps")
        if eps < 0 or (self.norm == "Linf" and eps > 1):
            bound = "between 0 and 1 (inputs are in [0, 1]; e.g. 8/255)" if self.norm == "Linf" else "non-negative"
            raise ConfigError(f"eps must be {bound} for the {self.norm} threat model, got {eps:g}")
        object.__setattr__(self, "eps", eps)

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
