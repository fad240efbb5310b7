"""The training configuration: one dataclass, filled from defaults, a YAML/JSON file or recipe, and CLI flags.

Precedence: CLI flags > config file (``--config path.yaml`` or a shipped recipe name) > dataclass defaults.
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..constants import ADV_ROUTE, BN_MODES, CLEAN_ROUTE
from ..data import DATASETS
from ..devices import check_device_name
from ..errors import ConfigError
from ..limits import (
    ATTACK_STEPS,
    BATCH_SIZE,
    EPOCHS,
    FRACTION,
    IMAGES,
    OPTIMIZER_STEPS,
    WORKERS,
)
from ..models import MODELS
from ..models.arguments import ARGUMENT_RANGES
from ..nn import CONVS, NORMS
from ..parsing import Range, parse_number, shown, to_int
from ..registry import choose
from ..rng import SEED_RANGE
from ..threat import ATTACK_NORMS, EPS_RANGES, Threat
from .batches import extra_share
from .objectives import OBJECTIVES
from .trackers import TRACKERS

AMP_MODES = ("off", "bf16", "fp16")
LR_SCHEDULES = ("step", "cosine", "onecycle")
# Settings renamed since they were first written: old name -> new name. Files and checkpoints that use an old name
# keep working; a config file or flag that uses one gets a one-line deprecation warning.
RENAMED = {"attack_norm": "threat_model"}


def setting(default: Any, help: str, choices: Iterable[str] | None = None, limits: Range | None = None) -> Any:
    """A config field, the help text of its flag (``robust-sabn train --help`` and docs/training.md show it) and,
    for a field that names something, its allowed values (a registry, read when checked); for a number, its range
    (of each item, for a list; shown with the help and checked by :meth:`TrainConfig._check`)."""
    metadata = {"help": help, "choices": choices, "limits": limits}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def flag_name(field_name: str) -> str:
    """The flag of a config field: ``--step-size`` for ``step_size``."""
    return "--" + field_name.replace("_", "-")


def choices(f: dataclasses.Field) -> tuple[str, ...] | None:
    """The allowed values of a config field, or None for a free value."""
    known = f.metadata.get("choices")
    return None if known is None else tuple(known)


@dataclass
class TrainConfig:
    """Everything a training run depends on; written to ``<run>/config.yaml`` and into every checkpoint."""

    # data
    dataset: str = setting("cifar10", "training dataset", DATASETS)
    data_dir: str | None = setting(None, "folder holding the dataset (default: the dataset's usual place)")
    download: bool = setting(False, "download the dataset if missing (needs internet)")
    val_size: int | None = setting(None, "validation images held out of the training set (default: min(1000, 10%))",
                                   limits=IMAGES)
    train_size: int | None = setting(None, "train on a fixed random subset of this many images", limits=IMAGES)
    extra_data: str | None = setting(
        None, "extra (generated or pseudo-labelled) images mixed into every batch: an .npz with 'image' (uint8 N x H x "
              "W x C) and 'label' (int N), as the generated-data papers publish them")
    extra_fraction: float = setting(0.7, "fraction of every batch drawn from --extra-data",
                                    limits=FRACTION.but(example="0.7"))
    # model
    arch: str = setting("preact_resnet18", "architecture from the model zoo", MODELS)
    norm: str = setting("sandwich", "normalization layer", NORMS)
    conv: str = setting("standard", "convolution layer", CONVS)
    width: int | None = setting(None, "base width of resnet_small", limits=ARGUMENT_RANGES["width"])
    clean_route: str = setting(CLEAN_ROUTE, "name of the route clean inputs take (routed norms)")
    adv_route: str = setting(ADV_ROUTE, "name of the route adversarial inputs take; the one validated and exported")
    # objective and its training attack
    objective: str = setting("hybrid", "training objective", OBJECTIVES)
    threat_model: str = setting("Linf", "threat model (norm) of the training attack, and of validation, eval and "
                                "export of the run", ATTACK_NORMS)
    eps: float = setting(8 / 255, "attack radius; fractions allowed (8/255); range " + ", ".join(
        f"{EPS_RANGES[norm]} for {norm}" for norm in ATTACK_NORMS))
    step_size: float | None = setting(None, "training attack step (default eps/4; 1.25*eps for fast); range (0, eps], "
                                            "(0, 1.25*eps] for fast")
    steps: int = setting(7, "training attack steps", limits=ATTACK_STEPS.but(example="7"))
    beta: float = setting(6.0, "weight of the TRADES and MART regularizers", limits=Range(0.0, 100.0, "6"))
    label_smoothing: float = setting(0.0, "label smoothing of the training cross-entropies (e.g. 0.1)",
                                     limits=FRACTION.but(example="0.1"))
    awp_gamma: float = setting(0.0, "adversarial weight perturbation: relative size per layer (e.g. 0.005; 0: off)",
                               limits=Range(0.0, 1.0, "0.005"))
    awp_warmup: int = setting(0, "epochs before adversarial weight perturbation starts",
                              limits=EPOCHS.but(low=0, example="10"))
    bn_mode: str = setting("eval", "BN mode while crafting training attacks (train: as the official SaBN code)",
                           BN_MODES)
    val_steps: int = setting(
        10, "steps K of the per-epoch validation attack: eval's pgd-K (steps of eps/4) through the adv route",
        limits=ATTACK_STEPS)
    # optimization
    epochs: int = setting(200, "epochs; fixes the length of the learning-rate schedule", limits=EPOCHS)
    max_steps: int | None = setting(None, "stop after this many optimizer steps in total (never changes the schedule)",
                                    limits=OPTIMIZER_STEPS)
    batch_size: int = setting(128, "batch size per process", limits=BATCH_SIZE)
    lr: float = setting(0.1, "base learning rate of SGD", limits=Range(0.0, 10.0, "0.1", open_low=True))
    momentum: float = setting(0.9, "SGD momentum", limits=FRACTION.but(example="0.9"))
    weight_decay: float = setting(5e-4, "SGD weight decay", limits=Range(0.0, 1.0, "5e-4"))
    milestones: list[int] = setting(
        [100, 150], "epochs at which the learning rate is multiplied by --lr-gamma (e.g. 50 150)",
        limits=EPOCHS.but(example="150"))
    lr_gamma: float = setting(0.1, "learning-rate decay factor at each milestone", limits=Range(0.0, 1.0, "0.1"))
    lr_schedule: str = setting("step", "learning-rate schedule after the warm-up: step (--milestones), cosine, or "
                               "onecycle (linear up to --lr at --warmup-steps, default 2/5 of the run, then down to 0)",
                               LR_SCHEDULES)
    warmup_steps: int = setting(0, "linear learning-rate warm-up over this many steps",
                                limits=OPTIMIZER_STEPS.but(low=0, example="200"))
    ema_decay: float = setting(
        0.0, "exponential moving average of the weights (e.g. 0.995; 0: off); it copies the weights during the "
             "warm-up, then its decay ramps up as min(decay, (1+t)/(10+t)); validation, best.pt and eval use it",
        limits=FRACTION.but(example="0.995"))
    # run
    out_dir: str | None = setting(None, "run folder (default: runs/<dataset>-<arch>-<norm>-<objective>-<time>)")
    seed: int = setting(0, "seed of everything random", limits=SEED_RANGE)
    device: str = setting("auto", "where to train: auto (the process's GPU if CUDA is available, else the CPU), cpu, "
                          "cuda (the process's GPU) or cuda:N")
    amp: str = setting("off", "mixed precision on CUDA (--amp alone: bf16)", AMP_MODES)
    channels_last: bool | None = setting(
        None, "channels-last memory format (default: on CUDA with --amp; on CPU, where it is faster, unless oneDNN "
              "mishandles the model there: see docs/memory-format.md)")
    compile: bool = setting(
        False, "compile the model with torch.compile: training forward, backward and the attack's passes (not bit "
               "for bit the eager result; compiled code cached in $ROBUST_SABN_CACHE, default ~/.cache/robust-sabn; "
               "a model that cannot be compiled whole trains eager, with one line saying why)")
    deterministic: bool = setting(False, "deterministic algorithms only (torch.use_deterministic_algorithms)")
    sync_bn: bool = setting(False, "synchronize batch statistics across processes (SyncBatchNorm; CUDA)")
    save_every: int = setting(0, "also write last.pt every N optimizer steps (0: once per epoch)",
                              limits=OPTIMIZER_STEPS.but(low=0, example="500"))
    log_every: int | None = setting(None, "write a metrics line every N optimizer steps (default: a tenth of an epoch, "
                                    "or of a shorter --max-steps run; at least 1, at most 50)",
                                    limits=OPTIMIZER_STEPS.but(example="50"))
    log: list[str] = setting([], "experiment trackers that get the metrics too, beside metrics.jsonl and curves.png "
                             "(e.g. --log tensorboard csv; docs/training.md#experiment-tracking)", TRACKERS)
    num_workers: int = setting(0, "worker processes that gather and augment the training batches (0: this one)",
                               limits=WORKERS)
    progress: bool = setting(True, "show tqdm progress bars")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f, getattr(self, f.name)))
            known, value = choices(f), getattr(self, f.name)
            for item in (value if isinstance(value, list) else [value]) if known is not None else []:
                choose(item, known, f.name)
        check_device_name(self.device)
        objective = OBJECTIVES[self.objective]
        if self.step_size is None:
            self.step_size = objective.step_factor * self.eps
        self._check(objective)

    @property
    def threat(self) -> Threat:
        """The run's threat model: ``threat_model`` at radius ``eps``."""
        return Threat(self.threat_model, self.eps)

    def _check(self, objective: type) -> None:
        for f in dataclasses.fields(self):
            known, value = f.metadata["limits"], getattr(self, f.name)
            if known is not None and value is not None:
                for item in value if isinstance(value, list) else [value]:
                    known.check(item, f.name, flag_name(f.name))
        self.threat  # noqa: B018 -- validates norm and eps together
        if not 0 < self.step_size or (self.step_size > self.eps and not objective.step_exceeds_eps):
            raise ConfigError(f"step size {self.step_size} must be positive and at most eps ({self.eps}); "
                              f"e.g. --step-size {Fraction(self.eps / 4).limit_denominator(1000)}")
        if self.extra_data is not None:
            extra_share(self.extra_fraction, self.batch_size)
        for name in ("clean_route", "adv_route"):
            if not getattr(self, name).isidentifier():
                raise ConfigError(f"{name} must be a name like 'clean' or 'adv', got {getattr(self, name)!r}")
        if self.clean_route == self.adv_route:
            raise ConfigError(f"clean_route and adv_route must differ, both are {self.clean_route!r}")
        if self.milestones != sorted(self.milestones):
            raise ConfigError(f"milestones must be increasing epoch numbers, got {self.milestones}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def upgrade(values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """``values`` with keys spelled ``a_b`` and renamed settings (:data:`RENAMED`) under their new names; and the
        old names found."""
        values = {str(k).replace("-", "_"): v for k, v in values.items()}
        old = [name for name in RENAMED if name in values]
        for name in old:
            if RENAMED[name] in values:
                raise ConfigError(f"{name} is the old name of {RENAMED[name]}; give only {RENAMED[name]}")
            values[RENAMED[name]] = values.pop(name)
        return values, old

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config", *, warn: bool = True) -> TrainConfig:
        """Build from a mapping (keys may use ``-`` or ``_``; renamed settings under their old names too, with a
        warning unless ``warn`` is false); unknown keys are an error naming the known ones."""
        if not isinstance(values, dict):
            raise ConfigError(f"{source} must hold a mapping of settings, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        values, old = cls.upgrade(values)
        if warn:
            for name in old:
                warnings.warn(f"{source}: setting {name!r} is now called {RENAMED[name]!r}; the old name will be "
                              "refused in a later version", FutureWarning, stacklevel=2)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)

    @classmethod
    def from_file(cls, path_or_recipe: str | Path, **overrides: Any) -> TrainConfig:
        """Build from a YAML/JSON file or a recipe name, with ``overrides`` on top."""
        return cls.from_dict({**read_config_file(path_or_recipe), **overrides}, source=str(path_or_recipe))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _list_item(kind: str, value: Any, name: str) -> Any:
    if kind != "list[str]":
        return to_int(value, name)
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a list of names, got {shown(value)}")
    return value.strip()


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Convert a value read from a file or a flag to the field's type (fractions allowed for floats)."""
    kind = str(f.type)
    if value is None:
        if "None" in kind:
            return None
        raise ConfigError(f"{f.name} cannot be empty")
    if kind.startswith("list"):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{f.name} must be a list, got {shown(value)}")
        return [_list_item(kind, v, f.name) for v in items if not (isinstance(v, str) and v.strip() == "")]
    if kind.startswith("bool"):
        if isinstance(value, bool):
            return value
        text = str(value).lower() if isinstance(value, (str, int)) else None
        if text in ("true", "yes", "1", "on"):
            return True
        if text in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{f.name} must be true or false, got {shown(value)}")
    if kind.startswith("float"):
        return parse_number(value, f.name)
    if kind.startswith("int"):
        return to_int(value, f.name)
    if not isinstance(value, str):
        raise ConfigError(f"{f.name} must be a string, got {shown(value)}")
    return value


def recipe_names() -> list[str]:
    """The recipes shipped with the package (``training/recipes/*.yaml``)."""
    folder = resources.files(__package__) / "recipes"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_config_file(path_or_recipe: str | Path) -> dict[str, Any]:
    """The settings in a YAML/JSON file, or in the shipped recipe of that name."""
    path = Path(path_or_recipe)
    if not path.is_file():
        if str(path_or_recipe) not in recipe_names():
            raise ConfigError(f"no config file or recipe named {str(path_or_recipe)!r}; "
                              f"recipes: {', '.join(recipe_names())}")
        text = (resources.files(__package__) / "recipes" / f"{path_or_recipe}.yaml").read_text()
    else:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read config file {path}: {err}") from err
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{path_or_recipe} is nested too deep to be a config file") from None
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path_or_recipe} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                          f"{str(err).splitlines()[0]}") from err
    except ValueError:  # Python reads no integer of over 4300 digits
        raise ConfigError(f"{path_or_recipe} holds a number of thousands of digits, which no setting takes") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path_or_recipe} must hold a mapping of settings, got {type(values).__name__}")
    return values
