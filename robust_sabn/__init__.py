"""robust-sabn: dual-path Sandwich Batch Normalization for adversarial training, AutoAttack evaluation,
and export to RobustBench."""
from .convert import convert_norms, fold_route
from .errors import CheckpointError, ConfigError, RouteError, UserError
from .models import create_model, list_models, register_model
from .nn import DualBatchNorm2d, SandwichBatchNorm2d, routes_of, set_route, split_routes, use_route

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "ConfigError", "DualBatchNorm2d", "RouteError", "SandwichBatchNorm2d", "UserError",
    "convert_norms", "create_model", "fold_route", "list_models", "register_model", "routes_of", "set_route",
    "split_routes", "use_route",
]
