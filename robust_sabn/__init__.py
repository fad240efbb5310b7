"""robust-sabn: dual-path Sandwich Batch Normalization for adversarial training, AutoAttack evaluation,
and export to RobustBench."""
import _robust_sabn_hooks

from .convert import convert_convs, convert_norms, fold_route, fold_spec
from .errors import CheckpointError, ConfigError, DiskFullError, RouteError, UserError
from .exporting import export
from .exporting.robustbench import register_robustbench
from .mixing import mix_routes
from .models import create_model, list_models, register_model
from .nn import (
    CalibratedBatchNorm2d,
    DualBatchNorm2d,
    SandwichBatchNorm2d,
    UnifiedBatchNorm2d,
    WeightAlignConv2d,
    routes_of,
    set_route,
    split_routes,
    use_route,
)
from .threat import Threat
from .version import __version__

# The .pth of the installed package did this at start-up; again for a source checkout on PYTHONPATH or `python -S`.
_robust_sabn_hooks.install()

__all__ = [
    "CalibratedBatchNorm2d", "CheckpointError", "ConfigError", "DiskFullError", "DualBatchNorm2d", "RouteError",
    "SandwichBatchNorm2d", "Threat", "UnifiedBatchNorm2d", "UserError", "WeightAlignConv2d",
    "convert_convs", "convert_norms", "create_model", "export", "fold_route", "fold_spec", "list_models",
    "mix_routes", "register_model", "register_robustbench", "routes_of", "set_route", "split_routes", "use_route",
    "__version__",
]


def __getattr__(name: str):
    """``robust_sabn.audit`` (:func:`robust_sabn.eval.audit.audit`), imported on first use: it needs the evaluation
    layer (torchattacks, AutoAttack), which ``import robust_sabn`` does not load."""
    if name == "audit":
        import importlib

        return importlib.import_module(f"{__name__}.eval.audit").audit
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
